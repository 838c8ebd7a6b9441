"""GPU checks. Skipped as a group without CUDA; on a GPU they cannot pass by running on the CPU.

- The device is strict (``requested="gpu"``): a stage that cannot run on the GPU raises instead of falling
  back, and every test asserts the backend that ran.
- A GPU library that is installed but broken fails its tests. One that is not installed skips them,
  unless RCA_GPU_EXPECT names it (comma-separated: cupy, cuml, cuvs, faiss), as benchmarks/gpu_check.sh
  does for the stack it expects: then its absence fails too.
- Each GPU adapter is compared with its CPU twin: ARI >= 0.95 on planted clusters, DBSCAN core points
  identical, kNN recall >= 0.99.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import numpy as np
import pytest
from conftest import planted_blobs
from sklearn.metrics import adjusted_rand_score

from rca_gpu.engine import registry
from rca_gpu.engine.device import Device, as_cupy, as_numpy, as_torch, cpu_device

pytestmark = pytest.mark.gpu

EXPECTED = {name.strip() for name in os.environ.get("RCA_GPU_EXPECT", "").split(",") if name.strip()}


def need(module: str) -> None:
    """Skip when ``module`` is not installed, unless RCA_GPU_EXPECT names it (then fail)."""
    if importlib.util.find_spec(module) is not None:
        return
    message = f"{module} is not installed"
    if module in EXPECTED:
        pytest.fail(f"{message}, and RCA_GPU_EXPECT says it should be")
    pytest.skip(message)


@pytest.fixture(scope="module")
def gpu() -> Device:
    """The device of this GPU, strict: nothing falls back to the CPU silently."""
    from rca_gpu.engine.device import resolve_device

    device = resolve_device("auto")
    assert device.on_gpu, f"torch sees CUDA but the device resolved to the CPU: {device.reason}"
    return dataclasses.replace(device, requested="gpu")


@pytest.fixture(scope="module")
def rapids(gpu) -> Device:
    need("cuml")
    assert gpu.cuml, f"cuML is installed but not usable: {gpu.reason}"
    return gpu


def _recall(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True)]))


# --------------------------------------------------------------------------------------------------
# torch on CUDA and the hand-off
# --------------------------------------------------------------------------------------------------


def test_torch_to_cupy_is_zero_copy():
    need("cupy")
    import cupy
    import torch

    t = torch.arange(1024, dtype=torch.float32, device="cuda").reshape(32, 32)
    c = as_cupy(t)
    assert isinstance(c, cupy.ndarray)
    assert c.data.ptr == t.data_ptr()  # same device memory
    back = as_torch(c, "cuda")
    assert back.data_ptr() == t.data_ptr()
    c[0, 0] = -1
    torch.cuda.synchronize()
    assert float(t[0, 0]) == -1.0


def test_torch_knn_on_cuda_matches_cpu(gpu):
    from rca_gpu.engine.knn import knn_graph

    x, _ = planted_blobs(n_per=300, centers=5, dim=64)
    on_gpu = knn_graph(as_torch(x, "cuda"), 15, gpu, "torch")
    assert on_gpu.backend == "torch-gpu" and on_gpu.indices.device.type == "cuda"
    on_cpu = knn_graph(x, 15, cpu_device(), "torch")
    gi, gd = on_gpu.numpy()
    ci, cd = on_cpu.numpy()
    assert _recall(gi, ci) >= 0.99
    np.testing.assert_allclose(gd, cd, rtol=1e-3, atol=1e-3)


def test_torch_knn_blocks_follow_free_memory(gpu):
    import torch

    from rca_gpu.engine.knn import GPU_BLOCK_MEMORY_SHARE, GPU_BYTES_PER_ENTRY, torch_block_rows

    free, _ = torch.cuda.mem_get_info()
    n = 1_000_000
    expected = max(1, min(n, int(free * GPU_BLOCK_MEMORY_SHARE) // GPU_BYTES_PER_ENTRY // n))
    assert abs(torch_block_rows(n, "cuda") - expected) <= max(1, expected // 50)  # free memory moves a little
    if free > 8 * 2**30:
        assert torch_block_rows(n, "cuda") > (1 << 26) // n  # more than the fixed CPU budget's 67 rows


def test_torch_pca_on_cuda_matches_sklearn_and_keeps_the_rng(gpu):
    import torch

    from rca_gpu.engine.registry import reduce

    x, _ = planted_blobs(n_per=200, centers=4, dim=32)
    cuda_state, cpu_state = torch.cuda.get_rng_state(), torch.random.get_rng_state()
    embedding, info = reduce(as_torch(x, "cuda"), "pca", {"n_components": 3}, gpu)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_state)
    assert torch.equal(torch.random.get_rng_state(), cpu_state)
    assert (info["backend"], info["library"]) == ("gpu", "torch")
    reference, _ = reduce(x, "pca", {"n_components": 3}, cpu_device())
    got = as_numpy(embedding)
    for j in range(3):  # components agree up to sign
        assert abs(np.corrcoef(got[:, j], reference[:, j])[0, 1]) > 0.99


# --------------------------------------------------------------------------------------------------
# GPU kNN libraries: FAISS-GPU, cuVS, cuML
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend, module, flag", [("cuvs", "cuvs", "cuvs"), ("faiss", "faiss", "faiss_gpu"),
                                                  ("cuml", "cuml", "cuml_knn")])
def test_gpu_knn_library_matches_exact_cpu_search(gpu, backend, module, flag):
    from rca_gpu.engine.device import probe_knn_backends
    from rca_gpu.engine.knn import knn_graph

    need(module)
    if module == "faiss":
        import faiss

        if not hasattr(faiss, "StandardGpuResources"):
            if "faiss" in EXPECTED:
                pytest.fail("the installed FAISS is a CPU-only build, and RCA_GPU_EXPECT says faiss")
            pytest.skip("the installed FAISS is a CPU-only build")
    worked, why_not = probe_knn_backends()[backend]
    assert worked and getattr(gpu, flag), f"{module} is installed but its test search fails on this GPU: {why_not}"
    x, _ = planted_blobs(n_per=400, centers=5, dim=48, seed=1)
    graph = knn_graph(as_torch(x, "cuda"), 20, gpu, backend)
    assert graph.backend == f"{backend}-gpu"
    reference = knn_graph(x, 20, cpu_device(), "torch")
    gi, gd = graph.numpy()
    ci, cd = reference.numpy()
    assert (gi[:, 0] == np.arange(len(x))).all()
    assert _recall(gi, ci) >= 0.99
    np.testing.assert_allclose(gd, cd, rtol=1e-3, atol=1e-3)


def test_auto_knn_uses_the_probed_library(gpu):
    from rca_gpu.engine.knn import choose_backend, knn_graph

    x, _ = planted_blobs(n_per=100, centers=3, dim=16)
    expected = "cuvs" if gpu.cuvs else "faiss" if gpu.faiss_gpu else "torch"
    assert choose_backend(len(x), 16, gpu) == expected
    assert knn_graph(as_torch(x, "cuda"), 10, gpu).backend == f"{expected}-gpu"


# --------------------------------------------------------------------------------------------------
# cuML against the CPU twins
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algorithm, params",
    [
        ("dbscan", {"eps": 1.5, "min_samples": 5}),
        ("hdbscan", {"min_cluster_size": 10}),
        ("kmeans", {"k": 4}),
    ],
)
def test_cuml_clusterers_agree_with_cpu(rapids, algorithm, params):
    from rca_gpu.engine.registry import cluster

    x, planted = planted_blobs(n_per=100, centers=4, dim=8, spread=0.4, seed=3)
    data = {"n_samples": len(x), "n_features": x.shape[1]}
    assert registry.build("cluster", algorithm, rapids, data=data, **params).implementation.library == "cuml"
    on_gpu = cluster(as_torch(x, "cuda"), algorithm, params, rapids)  # strict device: cannot fall back
    on_cpu = cluster(x, algorithm, params, cpu_device())
    assert adjusted_rand_score(on_cpu, on_gpu) >= 0.95
    assert adjusted_rand_score(planted, on_gpu) >= 0.95


def test_dbscan_core_points_identical_and_min_samples_counts_the_point(rapids):
    """Both libraries under rca_gpu's convention, against core points counted by hand (self included)."""
    from cuml.cluster import DBSCAN as CumlDBSCAN
    from scipy.spatial.distance import cdist
    from sklearn.cluster import DBSCAN

    x, _ = planted_blobs(n_per=120, centers=4, dim=6, spread=0.6, seed=8)
    distances = cdist(x, x)
    eps, min_samples = 1.1, 8
    # no pair may sit at eps within float32 rounding, or the two libraries could honestly differ (the
    # closest pair is 2.8e-4 from eps here)
    assert np.abs(distances - eps).min() > 1e-4
    counts = (distances <= eps).sum(axis=1)
    by_hand = np.flatnonzero(counts >= min_samples)
    # the data tells the convention apart: counting without the point itself (or twice) changes the core points
    assert len(np.setxor1d(by_hand, np.flatnonzero(counts - 1 >= min_samples))) >= 10
    assert len(np.setxor1d(by_hand, np.flatnonzero(counts + 1 >= min_samples))) >= 10
    cpu = DBSCAN(eps=eps, min_samples=min_samples).fit(x)
    gpu = CumlDBSCAN(eps=eps, min_samples=min_samples, output_type="numpy").fit(as_cupy(as_torch(x, "cuda")))
    assert 0 < len(by_hand) < len(x)
    np.testing.assert_array_equal(np.sort(cpu.core_sample_indices_), by_hand)
    np.testing.assert_array_equal(np.sort(np.asarray(gpu.core_sample_indices_)), by_hand)


def hdbscan_off_by_one_data() -> np.ndarray:
    """Three blobs of different spread and uniform noise, in 2-D: HDBSCAN(min_cluster_size=10) with
    min_samples 6 differs from 5 and from 7 (ARI <= 0.82 between them on the CPU, asserted in the test), so a
    min_samples handed to cuML one off would show. The planted blobs of test_cuml_clusterers_agree_with_cpu
    gave ARI 1.0 for every min_samples from 1 to 20."""
    rng = np.random.default_rng(18)
    parts = [rng.normal(0, 0.3, (60, 2)), rng.normal((3, 0), 0.6, (60, 2)), rng.normal((1.5, 3), 1.0, (60, 2)),
             rng.uniform(-2, 5, (40, 2))]
    return np.concatenate(parts).astype(np.float32)


def test_cuml_hdbscan_min_samples_is_translated_without_off_by_one(rapids):
    from rca_gpu.engine.registry import cluster

    x = hdbscan_off_by_one_data()
    params = {"min_cluster_size": 10, "min_samples": 6}
    on_cpu = {m: cluster(x, "hdbscan", {**params, "min_samples": m}, cpu_device()) for m in (5, 6, 7)}
    assert max(adjusted_rand_score(on_cpu[6], on_cpu[m]) for m in (5, 7)) <= 0.85  # the data can tell
    data = {"n_samples": len(x), "n_features": x.shape[1]}
    assert registry.build("cluster", "hdbscan", rapids, data=data, **params).implementation.library == "cuml"
    on_gpu = cluster(as_torch(x, "cuda"), "hdbscan", params, rapids)
    assert adjusted_rand_score(on_cpu[6], on_gpu) >= 0.95


def test_cuml_umap_with_shared_graph_agrees_with_cpu(rapids):
    from rca_gpu.engine.knn import knn_graph
    from rca_gpu.engine.registry import cluster, reduce

    x, planted = planted_blobs(n_per=150, centers=4, dim=32, spread=0.5, seed=4)
    params = {"n_neighbors": 15, "n_components": 2, "min_dist": 0.0}
    labels = {}
    for name, device, data in (("gpu", rapids, as_torch(x, "cuda")), ("cpu", cpu_device(), x)):
        graph = knn_graph(data, 30, device)
        embedding, info = reduce(data, "umap", params, device, knn=graph, seed=0)
        assert info["used_precomputed_knn"] and info["backend"] == name
        labels[name] = cluster(embedding, "kmeans", {"k": 4}, cpu_device())
    assert adjusted_rand_score(labels["cpu"], labels["gpu"]) >= 0.95
    assert adjusted_rand_score(planted, labels["gpu"]) >= 0.95


def test_cuml_umap_on_fewer_images_than_components(rapids):
    """Spectral initialisation needs n > n_components in cuML: tiny sets get the CPU twin's choices."""
    from rca_gpu.engine.registry import reduce

    x, _ = planted_blobs(n_per=3, centers=3, dim=16)
    on_gpu, info = reduce(as_torch(x, "cuda"), "umap", {"n_components": 10, "n_neighbors": 5}, rapids)
    on_cpu, _ = reduce(x, "umap", {"n_components": 10, "n_neighbors": 5}, cpu_device())
    assert info["backend"] == "gpu"
    assert on_gpu.shape == on_cpu.shape == (9, 7)
    assert np.isfinite(as_numpy(on_gpu)).all()
