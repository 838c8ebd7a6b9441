"""kNN graphs from every CPU backend against exact neighbours."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from rca_gpu.engine.device import cpu_device
from rca_gpu.engine.knn import choose_backend, knn_graph
from rca_gpu.errors import TooFewImagesError

EXACT = ["torch", "faiss", "kdtree"]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def points():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1500, 48)).astype(np.float32)
    x[7] = x[8]  # an exact duplicate: self must still come first
    return x


@pytest.fixture(scope="module")
def truth(points):
    return NearestNeighbors(n_neighbors=20).fit(points).kneighbors(points)


@pytest.mark.quality
@pytest.mark.parametrize("backend", EXACT + ["faiss-hnsw"])
def test_backend_matches_exact_neighbours(points, truth, backend):
    graph = knn_graph(points, 20, cpu_device(), backend)
    indices, distances = graph.numpy()
    assert indices.shape == (1500, 20) and distances.dtype == np.float32
    assert (indices[:, 0] == np.arange(1500)).all() and (distances[:, 0] == 0).all()
    true_d, true_i = truth
    recall = _recall(indices[:, 1:], true_i[:, 1:]) if backend != "faiss-hnsw" else _recall(indices, true_i)
    if backend in EXACT:
        # exact backends: same neighbour sets (ties aside) and distances
        assert recall >= 0.99
        np.testing.assert_allclose(np.sort(distances[:, 1:], axis=1), np.sort(true_d[:, 1:], axis=1), rtol=1e-3,
                                   atol=1e-3)
    else:
        assert recall >= 0.95
    assert np.all(np.diff(distances, axis=1) >= -1e-5)  # sorted by distance


def test_torch_backend_in_small_blocks_is_exact(points, truth):
    import torch

    from rca_gpu.engine.knn import TorchExact

    indices, _ = TorchExact(block_elements=1500 * 7).search(torch.from_numpy(points), 20)
    assert _recall(indices.numpy()[:, 1:], truth[1][:, 1:]) >= 0.99


def test_graph_prefix_and_too_few_points(points):
    graph = knn_graph(points[:50], 10, cpu_device(), "torch")
    sub = graph.first(5)
    assert sub.k == 5 and np.array_equal(sub.numpy()[0], graph.numpy()[0][:, :5])
    with pytest.raises(TooFewImagesError, match="at least 2 images"):
        knn_graph(points[:1], 5, cpu_device())


def test_auto_backend_policy():
    cpu = cpu_device()
    assert choose_backend(10_000, 1280, cpu) == "faiss"
    assert choose_backend(10_000, 2, cpu) == "faiss"
    assert choose_backend(50_000, 1280, cpu) == "faiss"
    assert choose_backend(50_001, 1280, cpu) == "faiss-hnsw"
    assert choose_backend(500_000, 10, cpu) == "faiss"  # cheap in low dimension
