"""The catalogue commands: --help, and one-line exit-2 errors for bad run folders and options."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

COMMANDS = ("causes", "assign", "compare", "select")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "rca_gpu.cli", *map(str, args)], capture_output=True, text=True)


def _args(command: str, run_dir, other, tmp_path) -> list:
    """Arguments that make ``command`` read ``run_dir`` (and ``other`` as its second input)."""
    return {
        "causes": [run_dir],
        "assign": [run_dir, other, "--out", tmp_path / "out"],
        "compare": [other, run_dir],
        "select": [run_dir, other, "--budget", "3", "--out", tmp_path / "out"],
    }[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    done = _cli(command, "--help")
    assert done.returncode == 0 and "Usage" in done.stdout


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("problem,message", [
    ("missing", "does not exist or is not a folder"),
    ("other_version", "written by another version of rca-gpu"),
    ("unfinished", "holds no run.json"),
])
def test_bad_run_folders_are_one_line_errors(command, problem, message, catalogue_run, catalogue_images, tmp_path):
    target = tmp_path / "run"
    if problem != "missing":
        shutil.copytree(catalogue_run, target)
        if problem == "other_version":
            info = json.loads((target / "run.json").read_text())
            (target / "run.json").write_text(json.dumps({**info, "rca_gpu_run": 1}))
        else:
            (target / "run.json").unlink()
    other = catalogue_run if command == "compare" else catalogue_images / "new"
    done = _cli(command, *_args(command, target, other, tmp_path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["assign", "select"])
def test_a_missing_source_is_a_one_line_error(command, catalogue_run, tmp_path):
    done = _cli(command, *_args(command, catalogue_run, tmp_path / "nowhere", tmp_path))
    assert done.returncode == 2 and done.stderr.startswith("error: The source") and "does not exist" in done.stderr


def test_a_run_without_reference_set_is_refused(catalogue_run, catalogue_images, tmp_path):
    target = shutil.copytree(catalogue_run, tmp_path / "run")
    (target / "reference.parquet").unlink()
    done = _cli("assign", target, catalogue_images / "new", "--out", tmp_path / "out")
    assert done.returncode == 2 and "kept no reference set" in done.stderr


def test_select_refuses_a_zero_budget(catalogue_run, catalogue_images, tmp_path):
    done = _cli("select", catalogue_run, catalogue_images / "new", "--budget", "0", "--out", tmp_path / "out")
    assert done.returncode == 2 and "--budget" in done.stderr
