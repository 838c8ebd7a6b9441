"""Each CPU clusterer recovers planted clusters, with fixed and with automatically chosen parameters."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import planted_blobs
from sklearn.metrics import adjusted_rand_score

from rca_gpu.engine.device import cpu_device
from rca_gpu.engine.knn import knn_graph
from rca_gpu.engine.registry import cluster
from rca_gpu.spec import make_cluster, make_reduce
from rca_gpu.tuning import BAND, NOISE_CAP, select, validity

FIXED = {
    "dbscan": {"eps": 1.5, "min_samples": 5},
    "hdbscan": {"min_cluster_size": 10},
    "kmeans": {"k": 4},
    "ward": {"k": 4},
}


@pytest.fixture(scope="module")
def blobs():
    return planted_blobs(n_per=60, centers=4, dim=8, spread=0.4, seed=3)


@pytest.mark.quality
@pytest.mark.parametrize("algorithm", sorted(FIXED))
def test_fixed_parameters_recover_planted_clusters(blobs, algorithm):
    x, planted = blobs
    labels = cluster(x, algorithm, FIXED[algorithm], cpu_device(), seed=0)
    assert adjusted_rand_score(planted, labels) >= 0.95


@pytest.mark.quality
@pytest.mark.parametrize("algorithm", sorted(FIXED))
def test_tuned_parameters_recover_planted_clusters(blobs, algorithm):
    x, planted = blobs
    device = cpu_device()
    graph = knn_graph(x, 30, device)
    selection = select(x, graph, make_reduce("none"), make_cluster(algorithm), device, seed=0)
    assert adjusted_rand_score(planted, selection.labels) >= 0.95
    assert len(np.unique(selection.labels[selection.labels >= 0])) == 4
    assert len(selection.trials) > 1  # something was searched
    chosen = [t for t in selection.trials if t.chosen]
    assert len(chosen) == 1 and chosen[0].cluster == selection.cluster_params
    # the default rule starts from the finest trial scoring within BAND of the best (low-noise trials); when
    # merging changed the count, K-means and Ward report their own trial with the merged number of clusters
    eligible = [t for t in selection.trials if t.noise_share <= NOISE_CAP and t.score > -1]
    best = max(t.score for t in eligible)
    finest = max(t.n_clusters for t in eligible if t.score >= BAND * best)
    if algorithm in ("kmeans", "ward") and selection.merges:
        assert chosen[0].cluster["k"] == 4
    else:
        assert chosen[0].score >= BAND * best and chosen[0].n_clusters == finest


@pytest.mark.quality
def test_ward_knee_selection_finds_planted_k(blobs):
    x, planted = blobs
    device = cpu_device()
    selection = select(x, knn_graph(x, 30, device), make_reduce("none"), make_cluster("ward", select="knee"),
                       device)
    assert selection.cluster_params["k"] == 4
    assert adjusted_rand_score(planted, selection.labels) >= 0.95


def test_validity_penalises_noise_and_single_cluster(blobs):
    x, planted = blobs
    good, _ = validity(x, planted)
    noisy_labels = planted.copy()
    noisy_labels[::2] = -1
    noisy, _ = validity(x, noisy_labels)
    assert noisy < good
    assert validity(x, np.zeros(len(x), dtype=int))[0] == -1.0
    assert validity(x, np.full(len(x), -1))[0] == -1.0


def test_hdbscan_min_cluster_size_above_n_gives_all_noise(blobs):
    x, _ = blobs
    labels = cluster(x[:20], "hdbscan", {"min_cluster_size": 50}, cpu_device())
    assert (labels == -1).all()


def _trials(curve: dict[int, float]):
    from rca_gpu.tuning import Trial

    return [Trial({}, {"k": k}, k, 0.0, s, s) for k, s in curve.items()]


def test_choose_keeps_a_single_sharp_peak():
    from rca_gpu.tuning import choose

    trials = _trials({2: 0.47, 3: 0.71, 4: 0.95, 5: 0.88, 6: 0.80, 7: 0.71, 8: 0.62, 9: 0.63, 10: 0.62})
    assert trials[choose(trials)].n_clusters == 4  # k=9 is a peak too, but far below the best


def test_choose_prefers_the_finer_of_two_close_peaks():
    from rca_gpu.tuning import choose

    # two super-groups (k=2) score best; the finer structure (k=6) is a peak within 70 % of it
    trials = _trials({2: 0.90, 3: 0.60, 4: 0.62, 5: 0.66, 6: 0.70, 7: 0.65, 8: 0.50})
    assert trials[choose(trials)].n_clusters == 6
    # below the band the coarse peak stays
    trials = _trials({2: 0.90, 3: 0.50, 4: 0.55, 5: 0.58, 6: 0.60, 7: 0.50})
    assert trials[choose(trials)].n_clusters == 2


def test_choose_ignores_invalid_and_oversized_candidates():
    from rca_gpu.tuning import MAX_CLUSTERS_SOFT, choose

    trials = _trials({1: -1.0, 3: 0.5, 4: 0.4, MAX_CLUSTERS_SOFT + 5: 0.45})
    assert trials[choose(trials)].n_clusters == 3
    assert choose(_trials({1: -1.0})) == 0  # nothing valid: the best (only) candidate
