"""GPU checks: run only where CUDA is visible (skipped cleanly otherwise).

Zero-copy hand-off torch -> CuPy, torch kNN and PCA on CUDA against the CPU, and, where cuML is installed,
each algorithm's GPU adapter against its CPU twin by ARI >= 0.95 on planted clusters.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from conftest import planted_blobs
from rca_gpu.device import Device, as_cupy, as_numpy, as_torch, cpu_device

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu() -> Device:
    from rca_gpu.device import resolve_device

    return resolve_device("auto")


def test_torch_to_cupy_is_zero_copy():
    cupy = pytest.importorskip("cupy")
    import torch

    t = torch.arange(1024, dtype=torch.float32, device="cuda").reshape(32, 32)
    c = as_cupy(t)
    assert c.data.ptr == t.data_ptr()  # same device memory
    back = as_torch(c, "cuda")
    assert back.data_ptr() == t.data_ptr()
    c[0, 0] = -1
    torch.cuda.synchronize()
    assert float(t[0, 0]) == -1.0
    assert isinstance(c, cupy.ndarray)


def test_torch_knn_on_cuda_matches_cpu(gpu):
    from rca_gpu.neighbors import knn_graph

    x, _ = planted_blobs(n_per=300, centers=5, dim=64)
    on_gpu = knn_graph(as_torch(x, "cuda"), 15, gpu, "torch")
    assert on_gpu.backend == "torch-gpu"
    on_cpu = knn_graph(x, 15, cpu_device(), "torch")
    gi, gd = on_gpu.numpy()
    ci, cd = on_cpu.numpy()
    recall = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(gi, ci)])
    assert recall >= 0.99
    np.testing.assert_allclose(gd, cd, rtol=1e-3, atol=1e-3)


def test_torch_pca_on_cuda_matches_sklearn(gpu):
    from rca_gpu.reduce import reduce

    x, planted = planted_blobs(n_per=200, centers=4, dim=32)
    embedding, info = reduce(as_torch(x, "cuda"), "pca", {"n_components": 3}, gpu)
    assert info["backend"] == "gpu"
    reference, _ = reduce(x, "pca", {"n_components": 3}, cpu_device())
    # components agree up to sign: compare absolute correlations per component
    got = as_numpy(embedding)
    for j in range(3):
        assert abs(np.corrcoef(got[:, j], reference[:, j])[0, 1]) > 0.99


@pytest.mark.parametrize(
    "algorithm, params",
    [("dbscan", {"eps": 1.5, "min_samples": 5}), ("hdbscan", {"min_cluster_size": 10}), ("kmeans", {"k": 4})],
)
def test_cuml_clusterers_agree_with_cpu(gpu, algorithm, params):
    pytest.importorskip("cuml")
    from rca_gpu.cluster import cluster

    x, planted = planted_blobs(n_per=100, centers=4, dim=8, spread=0.4, seed=3)
    on_gpu = cluster(as_torch(x, "cuda"), algorithm, params, gpu)
    on_cpu = cluster(x, algorithm, params, cpu_device())
    assert adjusted_rand_score(on_cpu, on_gpu) >= 0.95
    assert adjusted_rand_score(planted, on_gpu) >= 0.95


def test_cuml_umap_with_shared_graph_agrees_with_cpu(gpu):
    pytest.importorskip("cuml")
    from rca_gpu.cluster import cluster
    from rca_gpu.neighbors import knn_graph
    from rca_gpu.reduce import reduce

    x, planted = planted_blobs(n_per=150, centers=4, dim=32, spread=0.5, seed=4)
    params = {"n_neighbors": 15, "n_components": 2, "min_dist": 0.0}
    labels = {}
    for name, device, data in (("gpu", gpu, as_torch(x, "cuda")), ("cpu", cpu_device(), x)):
        graph = knn_graph(data, 30, device)
        embedding, info = reduce(data, "umap", params, device, knn=graph, seed=0)
        assert info["used_precomputed_knn"]
        labels[name] = cluster(embedding, "kmeans", {"k": 4}, cpu_device())
    assert adjusted_rand_score(labels["cpu"], labels["gpu"]) >= 0.95
