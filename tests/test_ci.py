"""The CI entry point's summary: an empty test run fails, failures are listed, a clean run passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SUMMARY = Path(__file__).resolve().parents[1] / ".ci" / "summary.py"


def _report(path: Path, cases: str) -> Path:
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" time="3.5">{cases}'
                    "</testsuite></testsuites>")
    return path


def _summary(report: Path, code: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SUMMARY), str(report), str(code)], capture_output=True, text=True)


@pytest.mark.parametrize("cases, code", [("", 5), ('<testcase classname="t" name="a"><skipped message="no"/></testcase>', 0)])
def test_no_test_run_fails(tmp_path, cases, code):
    done = _summary(_report(tmp_path / "r.xml", cases), code)
    assert done.returncode != 0
    assert "no test ran" in done.stdout


def test_failures_are_listed_and_fail(tmp_path):
    cases = ('<testcase classname="t" name="good" time="1"/>'
             '<testcase classname="t" name="bad" time="2"><failure message="x"/></testcase>')
    done = _summary(_report(tmp_path / "r.xml", cases), 1)
    assert done.returncode == 1
    assert "1 passed, 1 failed" in done.stdout and "FAILED t::bad" in done.stdout


def test_clean_run_passes_and_missing_report_fails(tmp_path):
    done = _summary(_report(tmp_path / "r.xml", '<testcase classname="t" name="good" time="1"/>'), 0)
    assert done.returncode == 0 and "CI: PASSED" in done.stdout
    assert _summary(tmp_path / "absent.xml", 0).returncode != 0
