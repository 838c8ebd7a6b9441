"""Device policy and the registry's CPU/GPU choice, checked without a GPU by describing one."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from rca_gpu.engine import registry
from rca_gpu.engine.device import Device, as_numpy, as_torch, kind_of, resolve_device, to_kind
from rca_gpu.errors import DeviceError, UnsupportedOnGPU


def _gpu(requested: str, cuml: bool) -> Device:
    return Device(requested, "cuda", cuml, False, "described for a test", "Test GPU")


def test_cpu_request_and_auto_without_cuda(caplog):
    assert resolve_device("cpu").torch_device == "cpu"
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with caplog.at_level(logging.INFO, logger="rca_gpu"):
        device = resolve_device("auto")
    assert device.torch_device == "cpu" and "no CUDA" in device.reason
    assert any("no CUDA" in r.message for r in caplog.records)


def test_gpu_request_without_cuda_names_the_fix():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match=r"needs a CUDA GPU.*pip install 'rca-gpu\[gpu\]'"):
        resolve_device("gpu")


def test_cpu_device_builds_cpu_adapters():
    device = resolve_device("cpu")
    assert registry.build("reduce", "umap", device).implementation.library == "umap-learn"
    assert registry.build("cluster", "hdbscan", device, min_cluster_size=5).implementation.backend == "cpu"


def test_auto_without_cuml_falls_back_and_logs(caplog):
    device = _gpu("auto", cuml=False)
    with caplog.at_level(logging.INFO, logger="rca_gpu"):
        adapter = registry.build("cluster", "hdbscan", device, min_cluster_size=5)
    assert adapter.implementation.backend == "cpu"
    assert "runs on the CPU: cuml is not installed" in caplog.text
    # kNN, PCA, UMAP, DBSCAN and K-means stay on the GPU in torch without cuML
    assert registry.build("knn", "torch", device).implementation.backend == "gpu"
    assert registry.build("reduce", "pca", device).implementation.library == "torch"
    assert registry.build("reduce", "umap", device).implementation.library == "torch"
    assert registry.build("cluster", "dbscan", device, eps=0.5).implementation.library == "torch"
    assert registry.build("cluster", "kmeans", device, k=3).implementation.library == "torch"


def test_strict_gpu_refuses_cpu_fallback():
    with pytest.raises(UnsupportedOnGPU, match="cannot run on the GPU: cuml is not installed"):
        registry.build("cluster", "hdbscan", _gpu("gpu", cuml=False), min_cluster_size=5)


def test_unsupported_setting_falls_back_under_auto_only(caplog):
    with caplog.at_level(logging.INFO, logger="rca_gpu"):
        adapter = registry.build("cluster", "ward", _gpu("auto", cuml=True), k=3)
    assert adapter.implementation.backend == "cpu"
    assert "single linkage only" in caplog.text
    with pytest.raises(UnsupportedOnGPU, match="single linkage only.*--device auto"):
        registry.build("cluster", "ward", _gpu("gpu", cuml=True), k=3)


def test_array_hand_off_on_the_cpu():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = as_torch(x)
    assert kind_of(t) == "torch" and kind_of(x) == "numpy"
    assert np.shares_memory(as_numpy(t), x)  # torch.from_numpy shares host memory
    assert to_kind(t, "torch") is t
    np.testing.assert_array_equal(as_numpy(t), x)
