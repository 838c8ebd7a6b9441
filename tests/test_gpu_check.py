"""benchmarks/gpu_check.sh cannot pass vacuously: on this CPU machine every GPU test skips, so it must fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check_summary import count_tests  # noqa: E402
from gpu_check_summary import verdict  # noqa: E402


def test_gpu_check_fails_when_every_gpu_test_skips(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the GPU tests would run")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0, result.stdout + result.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "FAILED: CUDA is missing" in summary
    assert "every GPU test skipped" in summary
    counts = count_tests(tmp_path / "gpu_tests.xml")
    assert counts["passed"] == 0 and counts["skipped"] >= 10  # the GPU tests ran and were forced to skip
    assert "GPU tests: 0 passed, 0 failed, 0 errors" in summary
    assert (tmp_path / "doctor.json").is_file()
    assert not (tmp_path / "knn.md").exists()  # no benchmark without CUDA


def test_verdict():
    ran = {"passed": 12, "failed": 0, "errors": 0, "skipped": 4}
    assert verdict(cuda=True, counts=ran, benchmarks_failed=False) == []
    skipped = {"passed": 0, "failed": 0, "errors": 0, "skipped": 16}
    assert verdict(cuda=True, counts=skipped, benchmarks_failed=False) == [
        "every GPU test skipped (16 skipped, none passed)"
    ]
    failed = {**ran, "failed": 1}
    assert verdict(cuda=True, counts=failed, benchmarks_failed=False) == ["1 GPU test(s) failed and 0 errored"]
    assert verdict(cuda=True, counts=ran, benchmarks_failed=True)[0].startswith("a throughput benchmark failed")
    assert verdict(cuda=False, counts=ran, benchmarks_failed=False) == ["CUDA is missing: torch sees no GPU"]
