"""The GPU side checked on the CPU: library limits raise before any GPU work, the min_samples convention,
the kNN probe's child processes, RNG isolation, block sizing, and installs without FAISS."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import planted_blobs
from sklearn.metrics import adjusted_rand_score

from rca_gpu.engine import limits, registry
from rca_gpu.engine.device import Device
from rca_gpu.errors import SpecError, UnsupportedOnGPU


def _gpu(requested: str, **libraries) -> Device:
    return Device(requested, "cuda", libraries.get("cuml", True), libraries.get("faiss_gpu", False),
                  "described for a test", "Test GPU", libraries.get("cuvs", False))


# --------------------------------------------------------------------------------------------------
# min_samples: one convention (counts the point itself), as scikit-learn
# --------------------------------------------------------------------------------------------------


def test_hdbscan_translation():
    assert limits.hdbscan_library_min_samples(None, 10) == 10  # the libraries' own default
    assert limits.hdbscan_library_min_samples(6, 10) == 5
    assert limits.hdbscan_library_min_samples(2, 10) == 1
    assert limits.hdbscan_library_min_samples(1, 10) == 1  # same tree as 0 other points, which they refuse


@pytest.mark.parametrize("min_samples", [1, 2, 4, 9])
def test_hdbscan_core_distance_counts_the_point(min_samples):
    """Our min_samples m: core distance = distance to the m-th nearest point, the point itself (at 0) first."""
    import fast_hdbscan
    from scipy.spatial.distance import cdist

    x, _ = planted_blobs(n_per=40, centers=4, dim=4, spread=1.2, seed=0)
    x = x.astype(np.float64)
    sorted_distances = np.sort(cdist(x, x), axis=1)  # column 0: the point itself
    expected = sorted_distances[:, min_samples - 1]
    library = limits.hdbscan_library_min_samples(min_samples, 8)
    got = fast_hdbscan.HDBSCAN(min_cluster_size=8, min_samples=library).fit(x)._core_distances
    if library == 1:  # fast_hdbscan's shortcut: core distances 0, the same tree (limits.hdbscan_library_min_samples)
        np.testing.assert_array_equal(got, 0.0)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        untranslated = fast_hdbscan.HDBSCAN(min_cluster_size=8, min_samples=min_samples).fit(x)._core_distances
        assert not np.allclose(untranslated, expected)  # the translation is what makes them agree


@pytest.mark.quality
def test_hdbscan_adapter_close_to_scikit_learn():
    """scikit-learn's HDBSCAN counts the point itself too; its cluster selection differs in details."""
    from sklearn.cluster import HDBSCAN

    from rca_gpu.engine.device import cpu_device
    from rca_gpu.engine.registry import cluster

    x, _ = planted_blobs(n_per=40, centers=4, dim=4, spread=1.2, seed=1)
    noise = np.random.default_rng(1).uniform(x.min(0), x.max(0), size=(30, 4)).astype(np.float32)
    x = np.vstack([x, noise]).astype(np.float64)
    for min_samples in (4, 9):
        ours = cluster(x, "hdbscan", {"min_cluster_size": 8, "min_samples": min_samples}, cpu_device())
        reference = HDBSCAN(min_cluster_size=8, min_samples=min_samples, copy=True).fit_predict(x)
        np.testing.assert_array_equal(ours < 0, reference < 0)
        assert adjusted_rand_score(reference, ours) >= 0.99


def test_dbscan_min_samples_counts_the_point():
    from scipy.spatial.distance import cdist

    from rca_gpu.engine.cluster.dbscan import SklearnDBSCAN

    x, _ = planted_blobs(n_per=50, centers=3, dim=3, spread=0.8, seed=2)
    eps, min_samples = 0.9, 6
    core_by_hand = (cdist(x, x) <= eps).sum(axis=1) >= min_samples  # the point itself is within eps
    labels = SklearnDBSCAN(eps=eps, min_samples=min_samples).fit_predict(x)
    assert (labels[core_by_hand] >= 0).all()  # core points are never noise
    from sklearn.cluster import DBSCAN

    np.testing.assert_array_equal(
        np.flatnonzero(core_by_hand), DBSCAN(eps=eps, min_samples=min_samples).fit(x).core_sample_indices_
    )


# --------------------------------------------------------------------------------------------------
# limits raise where the adapter is built: fall back under auto, refuse under gpu
# --------------------------------------------------------------------------------------------------


def test_hdbscan_min_samples_beyond_cuml(caplog):
    params = {"min_cluster_size": 10, "min_samples": 1025}  # 1024 other points: cuML allows 1023
    with caplog.at_level(logging.INFO, logger="rca_gpu"):
        adapter = registry.build("cluster", "hdbscan", _gpu("auto"), **params)
    assert adapter.implementation.library == "fast_hdbscan"
    assert "1 <= min_samples <= 1023" in caplog.text
    with pytest.raises(UnsupportedOnGPU, match=r"hdbscan' cannot run on the GPU: cuML HDBSCAN needs 1 <= min_s"):
        registry.build("cluster", "hdbscan", _gpu("gpu"), **params)
    assert registry.build("cluster", "hdbscan", _gpu("gpu"), min_cluster_size=10, min_samples=1024) is not None


def test_faiss_gpu_k_limit(caplog):
    data = {"n_samples": 5000, "n_features": 8, "k": 2049}
    device = _gpu("auto", faiss_gpu=True)
    with caplog.at_level(logging.INFO, logger="rca_gpu"):
        adapter = registry.build("knn", "faiss", device, data=data)
    assert adapter.implementation.backend == "cpu"
    assert "at most 2048 neighbours per point, 2049 were asked for" in caplog.text
    with pytest.raises(UnsupportedOnGPU, match="at most 2048 neighbours"):
        registry.build("knn", "faiss", _gpu("gpu", faiss_gpu=True), data=data)
    ok = registry.build("knn", "faiss", device, data={**data, "k": 2048})
    assert ok.implementation.backend == "gpu"


def test_gpu_knn_library_that_failed_its_probe_is_not_used():
    assert registry.build("knn", "cuvs", _gpu("auto", cuvs=True)).implementation.library == "cuvs"
    with pytest.raises(UnsupportedOnGPU, match="runs only on a GPU: cuvs is not installed or failed its test search"):
        registry.build("knn", "cuvs", _gpu("auto", cuvs=False))


def test_umap_spectral_limit_and_tiny_sets():
    from rca_gpu.engine.reduce.umap import CumlUMAP

    with pytest.raises(UnsupportedOnGPU, match="n_samples > n_components"):
        limits.check_umap_init(10, 10, "spectral")
    limits.check_umap_init(10, 10, "random")
    umap = CumlUMAP(n_components=10, n_neighbors=15)
    assert umap._settings(9) == (8, 7, "random")  # what the CPU twin does for 9 images
    assert umap._settings(13) == (12, 10, "spectral")
    for n in range(3, 40):
        _, components, init = umap._settings(n)
        umap.check_limits(n_samples=n, n_features=16)  # never asks cuML for what it asserts against
        assert init == "random" or n > components


def test_cuvs_query_limit():
    with pytest.raises(UnsupportedOnGPU, match="at most 4294967295 queries"):
        limits.check_cuvs_queries(2**32)


# --------------------------------------------------------------------------------------------------
# the kNN probe runs in child processes
# --------------------------------------------------------------------------------------------------


def test_probe_survives_a_library_that_aborts(monkeypatch):
    from rca_gpu.engine import device

    monkeypatch.setattr(device, "PROBES", {
        "faiss": ("numpy", "import os\nprint('about to abort', flush=True)\nos.abort()\n"),
        "cuvs": ("numpy", "print('ok')\n"),
        "cuml": ("a_module_that_is_not_installed", "print('ok')\n"),
    })
    device.probe_knn_backends.cache_clear()
    try:
        results = device.probe_knn_backends(timeout=60)
    finally:
        device.probe_knn_backends.cache_clear()
    worked, why = results["faiss"]
    assert not worked and "SIGABRT" in why and "about to abort" in why
    assert results["cuvs"] == (True, "")
    assert results["cuml"] == (False, "not installed")


def test_probe_scripts_are_valid_python():
    from rca_gpu.engine.device import PROBES

    for _, script in PROBES.values():
        compile(script, "<probe>", "exec")


# --------------------------------------------------------------------------------------------------
# torch pieces, installs without FAISS, memory pool
# --------------------------------------------------------------------------------------------------


def test_torch_pca_leaves_the_random_stream_alone():
    import torch

    from rca_gpu.engine.reduce.pca import TorchPCA

    x = torch.from_numpy(planted_blobs(n_per=50, centers=3, dim=20)[0])
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = TorchPCA(n_components=4, seed=0).fit_transform(x)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's stream continues where it was
    second = TorchPCA(n_components=4, seed=0).fit_transform(x)
    torch.testing.assert_close(first, second)  # and the result depends on the seed only


def test_torch_block_rows_on_the_cpu():
    from rca_gpu.engine.knn import torch_block_rows

    assert torch_block_rows(1_000_000, "cpu") == 67  # 2^26 distances per block
    assert torch_block_rows(10, "cpu") == 10
    assert torch_block_rows(1, "cpu") == 1


def test_installs_without_faiss_search_in_torch(monkeypatch):
    from rca_gpu.engine import device as device_module
    from rca_gpu.engine.device import cpu_device
    from rca_gpu.engine.knn import choose_backend, knn_graph

    monkeypatch.setattr(device_module, "faiss_installed", lambda: False)
    cpu = cpu_device()
    assert choose_backend(10_000, 1280, cpu) == "torch"
    assert choose_backend(10**6, 1280, cpu) == "torch"
    x, _ = planted_blobs(n_per=30, centers=3, dim=8)
    assert knn_graph(x, 5, cpu).backend == "torch-cpu"
    with pytest.raises(SpecError, match=r"needs faiss-cpu, which is not installed.*pip install 'rca-gpu\[cpu\]'"):
        knn_graph(x, 5, cpu, "faiss")


def test_memory_pool_stays_separate_without_rmm(monkeypatch):
    from rca_gpu.engine.device import MEMORY_POOL_ENV, share_memory_pool

    monkeypatch.setenv(MEMORY_POOL_ENV, "0")
    share_memory_pool.cache_clear()
    assert share_memory_pool() == f"memory pools: separate ({MEMORY_POOL_ENV}=0)"
    monkeypatch.delenv(MEMORY_POOL_ENV)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "rmm" else object())
    share_memory_pool.cache_clear()
    assert share_memory_pool() == "memory pools: separate (RMM is not installed)"
    share_memory_pool.cache_clear()
