"""The same command on the same input gives the same clusters in a new process, at any thread count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from helpers import pattern_images, write_pngs

ROOT = Path(__file__).resolve().parents[1]


def _run(folder: Path, out: Path, threads: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if threads is None:
        env.pop("OMP_NUM_THREADS", None)
    else:
        env["OMP_NUM_THREADS"] = threads
    return subprocess.run(
        [sys.executable, "-m", "rca_gpu.cli", "run", str(folder), "--out", str(out), "--pipeline",
         "pixels+umap+dbscan", "--device", "cpu", "--workers", "0", "--no-report", "--no-cache", "-q"],
        capture_output=True, text=True, env=env, timeout=900,
    )


def test_two_fresh_processes_and_thread_counts_give_the_same_clusters(tmp_path):
    images, labels = pattern_images(n_per=30, groups=4, seed=7)
    write_pngs(tmp_path / "imgs", images, labels)
    first = _run(tmp_path / "imgs", tmp_path / "a", None)
    second = _run(tmp_path / "imgs", tmp_path / "b", "1")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    a = pd.read_parquet(tmp_path / "a" / "clusters.parquet")
    b = pd.read_parquet(tmp_path / "b" / "clusters.parquet")
    assert a[["id", "cluster", "status"]].equals(b[["id", "cluster", "status"]])
    info_a = json.loads((tmp_path / "a" / "run.json").read_text())
    info_b = json.loads((tmp_path / "b" / "run.json").read_text())
    assert info_a["resolved_pipeline"] == info_b["resolved_pipeline"]
    assert info_b["threads"]["OMP_NUM_THREADS"] == "1" and "OMP_NUM_THREADS" not in info_a["threads"]
    # library warnings go to the log, not onto the terminal
    assert "Warning" not in first.stderr and "Warning" not in second.stderr
