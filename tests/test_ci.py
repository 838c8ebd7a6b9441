"""The CI entry point's summary: an empty test run fails, failures are listed, a clean run passes."""

from __future__ import annotations

import ast
import re
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


@pytest.mark.parametrize("cases, code",
                         [("", 5), ('<testcase classname="t" name="a"><skipped message="no"/></testcase>', 0)])
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


def test_the_stage_is_named_in_every_verdict(tmp_path):
    done = subprocess.run([sys.executable, str(SUMMARY), str(_report(tmp_path / "r.xml", "")), "5", "host"],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "CI: FAILED (stage host) - no test ran" in done.stdout
    good = _report(tmp_path / "g.xml", '<testcase classname="t" name="good" time="1"/>')
    done = subprocess.run([sys.executable, str(SUMMARY), str(good), "0", "generic"], capture_output=True, text=True)
    assert done.returncode == 0 and "CI summary (stage generic): 1 passed" in done.stdout
    assert "CI: PASSED (stage generic)" in done.stdout


# --- the quality marker: every test that asserts the quality of a clustering carries it -----------------

#: Test files whose quality-looking assertions are about something else, and why.
NOT_QUALITY_FILES = {
    "test_evaluate.py": "the metrics' formulas on hand-made labels",
    "test_gpu.py": "GPU against CPU agreement (marker gpu)",
    "test_planted.py": "the planted generator's own exact-kNN purity",
    "test_ci.py": "this check's own examples",
}
#: Single tests of that kind, and why.
NOT_QUALITY_TESTS = {
    "test_the_run_keeps_a_bounded_reference_set": "counts of a stored reference set",
    "test_dask_extraction_gives_the_single_process_clusters": "two ways to one result agree exactly",
    "test_torch_backend_in_small_blocks_is_exact": "an exact search against an exact search",
    "test_ward_connectivity_tree_is_built_once_and_cut_per_k": "two exact computations agree",
    "test_warnings_of_the_stability_step_go_to_the_log_not_the_terminal": "the step ran",
    "test_stability_is_not_scored_below_the_minimum_of_images_and_run_json_says_why": "the step was skipped",
    "test_mnist_spread_has_one_cause_over_every_class_and_one_class_causes": "the digits a generated cause reaches",
    "test_default_pipeline_stability_report_and_catalogue_run_on_the_gpu_adapters": "the steps ran on the GPU "
    "adapters of the simulated GPU",
    "test_without_rapids_the_torch_backend_takes_the_gpu_stages": "the steps ran on the torch backend",
}
_QUALITY_WORDS = re.compile(r"adjusted_rand_score\(|homogeneity|purity|coverage|_n_clusters\(|\[\"clusters\"\]|"
                            r"n_clusters_|\[\"stability\"\]|stability\[|_recall\(|\.nunique\(\)")


def test_every_test_asserting_clustering_quality_is_marked_quality():
    """.ci/run runs the `quality` tests under every CPU code-generation target; an unmarked one would run
    under the generic target only."""
    unmarked = []
    for path in sorted(SUMMARY.parents[1].joinpath("tests").glob("test_*.py")):
        if path.name in NOT_QUALITY_FILES:
            continue
        source = path.read_text()
        for node in ast.parse(source).body:
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            marks = " ".join(ast.unparse(d) for d in node.decorator_list)
            asserts = [line for line in ast.get_source_segment(source, node).splitlines()
                       if line.strip().startswith("assert") and _QUALITY_WORDS.search(line)]
            if asserts and "mark.quality" not in marks and node.name not in NOT_QUALITY_TESTS:
                unmarked.append(f"{path.name}::{node.name}")
    assert not unmarked, f"mark these @pytest.mark.quality (or list them here with the reason): {unmarked}"
