"""The torch GPU backend (used where cuML is absent) against the CPU path, run on the CPU with torch's CPU
tensors: DBSCAN from the eps-graph of an exact kNN graph, K-means in torch. Both must give the CPU
implementations' partitions (ARI >= 0.95) on the clustering spaces of the benchmarks and on planted data;
K-means' seeded starts may end in another local optimum (shapes-sim, k=5, under NUMBA_CPU_NAME=skylake-avx512:
ARI 0.76), accepted only when its inertia is no worse than scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import DBSCAN, KMeans
from sklearn.metrics import adjusted_rand_score

from rca_gpu.engine.cluster.dbscan import CARD as DBSCAN_CARD
from rca_gpu.engine.cluster.dbscan import TorchDBSCAN, connected_components
from rca_gpu.engine.cluster.kmeans import TorchKMeans
from rca_gpu.engine.device import cpu_device
from rca_gpu.engine.knn import knn_graph

MIN_ARI = 0.95


def _clustering_space(manifest) -> np.ndarray:
    """The default pipeline's clustering space on a benchmark: its features, then UMAP (30 neighbours,
    10 dimensions, min_dist 0), on the CPU."""
    from rca_gpu.data.sources import load_source
    from rca_gpu.engine import registry
    from rca_gpu.engine.device import as_numpy
    from rca_gpu.features.compute import compute_features
    from rca_gpu.spec import DEFAULT_PIPELINE, build_run_spec

    device = cpu_device()
    spec = build_run_spec(pipeline=DEFAULT_PIPELINE, device="cpu", workers=0, cache_features=False)
    features = compute_features(spec.pipeline.features, load_source(manifest), spec, device, None, None)
    graph = knn_graph(features.matrix, 30, device)
    embedding, _ = registry.reduce(features.matrix, "umap", {"n_neighbors": 30, "n_components": 10,
                                                            "min_dist": 0.0}, device, knn=graph)
    return np.asarray(as_numpy(embedding), dtype=np.float32)


def _planted(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blobs = [rng.normal(3.0 * c, 0.5, (150, 10)) for c in range(5)]
    return np.concatenate(blobs + [rng.uniform(-3, 15, (60, 10))]).astype(np.float32)


@pytest.fixture(scope="module")
def shapes_sim(datasets_cache, tmp_path_factory):
    from rca_gpu.datasets import make_dataset

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RCA_GPU_CACHE", str(datasets_cache))
        return make_dataset("shapes-sim", tmp_path_factory.mktemp("shapes_sim"), n=300, seed=0)


def _agreement(points: np.ndarray) -> list[tuple[str, float]]:
    """(setting, ARI between the torch and the CPU implementation) for DBSCAN at every candidate the search
    would try on ``points`` and K-means at k = 3, 5, 8."""
    graph = knn_graph(points, 21, cpu_device())
    out = []
    for params in DBSCAN_CARD.candidates({}, graph.first, len(points)):
        cpu = DBSCAN(**params).fit_predict(points)
        gpu = TorchDBSCAN(**params).fit_predict(torch.from_numpy(points)).numpy()
        out.append((f"dbscan {params}", adjusted_rand_score(cpu, gpu)))
    for k in (3, 5, 8):
        cpu = KMeans(n_clusters=k, n_init=4, random_state=0).fit_predict(points)
        gpu = TorchKMeans(k=k, seed=0).fit_predict(torch.from_numpy(points)).numpy()
        ari = adjusted_rand_score(cpu, gpu)
        if ari < MIN_ARI and _inertia(points, gpu) <= _inertia(points, cpu) * (1 + 1e-4):
            # another local optimum of the seeded starts, at least as good by K-means' own objective
            print(f"kmeans k={k}: ARI {ari:.4f}, inertia torch {_inertia(points, gpu):.2f} <= scikit-learn "
                  f"{_inertia(points, cpu):.2f}")
            ari = 1.0
        out.append((f"kmeans k={k}", ari))
    return out


def _inertia(points: np.ndarray, labels: np.ndarray) -> float:
    """K-means' objective: the sum of squared distances of the points to their cluster's mean."""
    return float(sum(((points[labels == c] - points[labels == c].mean(axis=0)) ** 2).sum()
                     for c in np.unique(labels)))


def _check(name: str, points: np.ndarray) -> None:
    scores = _agreement(points)
    print(name, [(setting, round(ari, 4)) for setting, ari in scores])  # -s shows the figures
    low = [(setting, round(ari, 4)) for setting, ari in scores if ari < MIN_ARI]
    assert not low, f"{name}: torch backend below ARI {MIN_ARI} against the CPU path: {low}"


def test_torch_backend_matches_the_cpu_path_on_planted_data():
    _check("planted", _planted())


@pytest.mark.slow
@pytest.mark.timeout(1200)  # trains the benchmark's DUT when no earlier test of the session did
def test_torch_backend_matches_the_cpu_path_on_mnist_rc(mnist_rc_small):
    _check("mnist-rc", _clustering_space(mnist_rc_small))


@pytest.mark.slow
@pytest.mark.timeout(1200)  # trains the benchmark's DUT
def test_torch_backend_matches_the_cpu_path_on_shapes_sim(shapes_sim):
    _check("shapes-sim", _clustering_space(shapes_sim))


def test_torch_dbscan_is_dbscan_on_exact_cases():
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [5, 5], [5, 6], [6, 5], [20, 20], [1.5, 1.5]], np.float32)
    # min_samples counts the point itself; [1.5, 1.5] is a border point of the first cluster
    labels = TorchDBSCAN(eps=1.01, min_samples=3).fit_predict(torch.from_numpy(x)).tolist()
    assert labels == DBSCAN(eps=1.01, min_samples=3).fit_predict(x).tolist() == [0, 0, 0, 0, 1, 1, 1, -1, 0]
    # min_samples=1: every point is a core point; [1.5, 1.5] joins [1, 1], the others stand alone
    labels = TorchDBSCAN(eps=0.75, min_samples=1).fit_predict(torch.from_numpy(x)).tolist()
    assert labels == DBSCAN(eps=0.75, min_samples=1).fit_predict(x).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 3]
    assert TorchDBSCAN(eps=1.0, min_samples=20).fit_predict(torch.from_numpy(x)).tolist() == [-1] * 9


def test_connected_components_of_a_chain_and_isolated_vertices():
    source = torch.tensor([0, 1, 2, 5, 7])
    target = torch.tensor([1, 2, 3, 6, 5])
    assert connected_components(9, source, target).tolist() == [0, 0, 0, 0, 4, 5, 5, 5, 8]
    chain = torch.arange(999)
    assert connected_components(1000, chain + 1, chain).unique().tolist() == [0]
