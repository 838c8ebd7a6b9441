"""benchmarks/gpu_check.sh cannot pass vacuously: on this CPU machine every GPU test skips, so it must fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check_backends import unexpected  # noqa: E402
from gpu_check_summary import count_tests, verdict  # noqa: E402


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


def _device(backends, **extra):
    return {"backends": backends, "fallbacks": [], "simulated": False, **extra}


def test_backend_check_passes_only_the_stack_it_expects(tmp_path):
    """benchmarks/gpu_check_backends.py on fake run.json device sections: any stage on another backend fails."""
    import json

    rapids = {"knn cuvs": ["gpu cuvs"], "reduce umap": ["gpu cuml"], "cluster dbscan": ["gpu cuml"]}
    torch_stack = {"knn torch": ["gpu torch"], "reduce umap": ["gpu torch"], "cluster dbscan": ["gpu torch"]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"device": _device(rapids)}))
    assert unexpected(json.loads(path.read_text())["device"], "rapids") == []
    assert unexpected(_device(torch_stack), "torch") == []
    # cuML installed but DBSCAN ran in torch or on the CPU: the check fails and names the stage
    assert unexpected(_device({**rapids, "cluster dbscan": ["gpu torch"]}), "rapids") == [
        "cluster dbscan: ran on gpu torch; expected gpu cuml (rapids stack)"]
    assert unexpected(_device({**torch_stack, "cluster dbscan": ["cpu scikit-learn"]}), "torch") == [
        "cluster dbscan: ran on cpu scikit-learn; expected gpu torch (torch stack)"]
    assert unexpected(_device({**rapids, "knn kdtree": ["cpu scikit-learn"]}), "rapids") == [
        "knn kdtree: ran on cpu scikit-learn; expected gpu cuvs or gpu faiss-gpu or gpu torch (rapids stack)"]
    assert unexpected(_device({**rapids, "cluster ward": ["cpu scikit-learn"]}), "rapids")[0].startswith(
        "cluster ward: no backend expected")
    assert unexpected(_device({}), "rapids") == ["run.json records no backend (device.backends is empty)"]
    fell_back = _device(rapids, fallbacks=["cluster 'dbscan' failed on the GPU (cuml): MemoryError: ..."])
    assert unexpected(fell_back, "rapids") == [
        "a GPU fit fell back: cluster 'dbscan' failed on the GPU (cuml): MemoryError: ..."]
    assert unexpected(_device(rapids, simulated=True), "rapids") == ["the device was the simulated GPU, not this GPU"]
    assert verdict(cuda=True, counts={"passed": 3, "failed": 0, "errors": 0, "skipped": 0},
                   benchmarks_failed=False, backends_failed=True)[0].startswith("a stage ran on an unexpected")


def test_backend_check_exits_non_zero_on_the_simulated_gpu(tmp_path):
    """End to end on this CPU: the simulated GPU without RAPIDS runs the torch backend, and the check still
    refuses it (a simulated device proves nothing about this machine's GPU)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RCA_GPU_SIMULATE_GPU": "torch"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check_backends.py"), str(tmp_path),
                             "--expect", "torch", "--images", "40"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 1, result.stdout + result.stderr
    table = (tmp_path / "backends.md").read_text()
    assert "cluster dbscan: gpu torch" in table and "cluster kmeans: gpu torch" in table
    assert table.count("FAILED: the device was the simulated GPU, not this GPU") == 3
