"""One writer per output folder: a second writer is refused with one line naming the holder's pid and command,
two concurrent catalogue edits both land or one is refused (never lost), and nothing is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rca_gpu.outputs import FolderBusyError, writing

HOLD = """
import sys, time
from pathlib import Path
from rca_gpu.outputs import writing
with writing(sys.argv[1], "rca-gpu run imgs --out x"):
    print("held", flush=True)
    while not Path(sys.argv[2]).exists():
        time.sleep(0.02)
"""


def _cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rca_gpu.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=300)
    return process.returncode, err


def _hold(folder: Path, release: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(release)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def _leftovers(folder: Path) -> list[str]:
    """rca-gpu's temporary and bookkeeping files left in ``folder`` (none once every command ended)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith(".tmp") or p.name.startswith((".rca-gpu", ".rca-gpu-")))


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    folder, release = tmp_path / "out", tmp_path / "release"
    holder = _hold(folder, release)
    try:
        with pytest.raises(FolderBusyError, match=rf"^The output folder '.*out' is being written by another rca-gpu "
                                                  rf"process \(pid {holder.pid}, `rca-gpu run imgs --out x`, since "
                                                  r"[0-9T:+-]+\); .* Wait for it to finish"), \
                writing(folder, "rca-gpu export"):
            pass
    finally:
        release.touch()
        holder.wait(timeout=60)
    with writing(folder, "rca-gpu export"):  # free again
        pass
    assert not folder.exists()  # made by the holder for nothing: removed again, lock files and all


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    holder = _hold(folder, tmp_path / "never")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    with writing(folder, "rca-gpu run"):  # the system released the lock with the process
        assert json.loads((folder / ".rca-gpu.lock.json").read_text())["pid"] == os.getpid()
    assert _leftovers(folder) == []


def test_locks_are_reentrant_in_one_process_and_leave_no_trace(tmp_path):
    folder = tmp_path / "out"
    (folder / "keep").mkdir(parents=True)
    with writing(folder, "rca-gpu run"), writing(folder, "rca-gpu report"):  # run -> report in one process
        (folder / "result.txt").write_text("x")
    assert sorted(p.name for p in folder.iterdir()) == ["keep", "result.txt"]
    fresh = tmp_path / "a" / "b"
    with writing(fresh, "rca-gpu run"):
        pass
    assert not (tmp_path / "a").exists()  # nothing written: the folders made for the lock go again


def test_a_command_refused_by_the_lock_says_so_in_one_line(catalogue_run, tmp_path):
    release = tmp_path / "release"
    holder = _hold(catalogue_run, release)
    try:
        code, err = _finish(_cli("report", catalogue_run, "-q"))
    finally:
        release.touch()
        holder.wait(timeout=60)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: The output folder") and f"(pid {holder.pid}, `rca-gpu run imgs --out x`" in err


def test_two_exports_at_once_one_wins_with_a_clean_folder(catalogue_run, tmp_path):
    """Started together, many times: exactly one export writes the folder; the other is refused by the lock
    (or, when it comes after the first finished, by the groups now there), in one line."""
    for round_ in range(4):
        target = tmp_path / f"exported{round_}"
        processes = [_cli("export", catalogue_run, "--to", target, "--mode", "copy", "-q") for _ in range(2)]
        results = [_finish(p) for p in processes]
        codes = sorted(code for code, _ in results)
        assert codes == [0, 2], results
        err = next(err for code, err in results if code == 2)
        assert err.count("\n") == 1 and ("being written by another rca-gpu process" in err
                                         or "already holds cluster-0" in err), err
        assert _leftovers(target) == []
        groups = sorted(p.name for p in target.iterdir() if p.is_dir())
        assert groups == ["cluster-0", "cluster-1", "cluster-2"]
        assert sum(len(list((target / g).glob("*.png"))) for g in groups) == 90
        assert json.loads((target / "export.json").read_text())["files"] == 90


def test_two_runs_into_one_folder_at_once_one_wins(tmp_path):
    """Two runs started together into one --out: one finishes, the other is refused naming it; the folder
    holds one whole run (every file of its id)."""
    from sklearn.datasets import make_blobs

    from rca_gpu.runfolder import open_run

    x, _ = make_blobs(200, n_features=8, centers=3, random_state=0)
    np.save(tmp_path / "features.npy", x.astype(np.float32))
    args = ["run", "--features", tmp_path / "features.npy", "-p", "pca(n_components=2)+kmeans(k=3)",
            "--stability", "0", "--no-report", "--no-plot-umap", "--device", "cpu", "-q"]
    for round_ in range(1):  # a run costs seconds of CPU: the rounds of the lock itself are the exports' above
        out = tmp_path / f"out{round_}"
        processes = [_cli(*args, "--out", out) for _ in range(2)]
        results = [_finish(p) for p in processes]
        assert sorted(code for code, _ in results) == [0, 2], results
        err = next(err for code, err in results if code == 2)
        assert err.count("\n") == 1 and "is being written by another rca-gpu process (pid " in err, err
        run = open_run(out)
        run.clusters(), run.embedding(), run.table("reference.parquet")  # every file of the one run
        assert _leftovers(out) == []


def test_two_catalogue_edits_at_once_both_land_or_one_is_refused(catalogue_run, tmp_path):
    """Never lost: a command that exits 0 has its edit in causes.toml; one that is refused says so."""
    import shutil

    from rca_gpu.catalogue.causes import load_catalogue

    for round_ in range(4):
        run = tmp_path / f"run{round_}"
        shutil.copytree(catalogue_run, run)
        edits = {"0": "top bar", "1": "middle bar"}
        processes = {cause: _cli("causes", run, "--name", f"{cause}={name}", "-q") for cause, name in edits.items()}
        results = {cause: _finish(p) for cause, p in processes.items()}
        names = {str(c): cause.name for c, cause in load_catalogue(run).causes.items()}
        assert any(code == 0 for code, _ in results.values()), results
        for cause, (code, err) in results.items():
            if code == 0:
                assert names[cause] == edits[cause], (results, names)
            else:
                assert code == 2 and err.count("\n") == 1, err
                assert "changed by another `rca-gpu causes`" in err or "being written by another" in err, err
                assert names[cause] == ""
        assert _leftovers(run) == []


def test_a_run_waits_for_no_catalogue_edit_to_replace_the_catalogue(catalogue_run, tmp_path, monkeypatch):
    """A new run into a folder takes the catalogue's lock too: an edit of the old catalogue meanwhile is
    refused (its causes.toml would belong to no run), naming the run."""
    import shutil

    from rca_gpu.catalogue import causes

    monkeypatch.setattr(causes, "LOCK_WAIT", 0.5)
    run = tmp_path / "run"
    shutil.copytree(catalogue_run, run)
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLD.replace(
        'writing(sys.argv[1], "rca-gpu run imgs --out x")',
        'writing(sys.argv[1], "rca-gpu run imgs --out x", lock_file=".rca-gpu-causes.lock", '
        'holder_file=".rca-gpu-causes.lock.json")'), str(run), str(release)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    try:
        started = time.monotonic()
        busy = rf"catalogue of the run folder .* \(pid {holder.pid}, `rca-gpu run"
        with pytest.raises(FolderBusyError, match=busy), causes.catalogue_lock(run):
            pass
        assert time.monotonic() - started >= 0.45  # an edit waits a moment before refusing
    finally:
        release.touch()
        holder.wait(timeout=60)
