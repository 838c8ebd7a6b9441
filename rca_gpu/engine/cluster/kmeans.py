"""K-means: its card, its CPU implementation (scikit-learn) and GPU twins (cuML; torch where cuML is absent).

- candidates: k from 2 to MAX_CLUSTERS (rca_gpu.engine.cards), keeping at least MIN_MEAN_CLUSTER_SIZE images
  per cluster on average and at most the number of distinct images;
- extension to new points: the nearest centroid of the sample's clusters (``predict``);
- transfer to a resample: k is carried over unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rca_gpu.engine.cards import MAX_CLUSTERS, ClusterCard, Twin
from rca_gpu.engine.dispatch import ClusterAdapter
from rca_gpu.engine.knn import KnnGraph
from rca_gpu.engine.params import Param

#: K-means / Ward search k only up to n / MIN_MEAN_CLUSTER_SIZE: clusters of a handful of images name no cause.
MIN_MEAN_CLUSTER_SIZE = 5


def k_candidates(fixed: Mapping[str, Any], n: int, distinct: int | None) -> list[dict[str, Any]]:
    """Settings of a clusterer whose granularity is k: the fixed one, else k in [2, min(MAX_CLUSTERS, n /
    MIN_MEAN_CLUSTER_SIZE)] below n and at most ``distinct``."""
    if "k" in fixed:
        return [dict(fixed)]
    ks = range(2, max(3, min(MAX_CLUSTERS, n // MIN_MEAN_CLUSTER_SIZE) + 1))
    return [{**fixed, "k": k} for k in ks if k < n and (distinct is None or k <= distinct)]


class KMeansCard(ClusterCard):
    name = "kmeans"
    summary = "k clusters around centroids (Lloyd's algorithm, 4 seeded starts); no noise"
    params = {"k": Param(int, "at_least_2")}
    limits = {"k": lambda n: n - 1}
    min_images = 3
    granularity = "k"
    counts_clusters = True
    cpu = Twin("SklearnKMeans", "numpy", "scikit-learn")
    gpu = (Twin("CumlKMeans", "cupy", "cuml", requires="cuml"), Twin("TorchKMeans", "torch", "torch", requires="cuda"))

    def candidates(self, fixed: Mapping[str, Any], embedding_graph: Callable[[int], KnnGraph], n: int, *,
                   distinct: int | None = None) -> list[dict[str, Any]]:
        return k_candidates(fixed, n, distinct)


class SklearnKMeans(ClusterAdapter):
    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        self.seed = seed
        self.params = params

    def fit_predict(self, x):
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=self.params["k"], n_init=4, random_state=self.seed).fit_predict(x)


class CumlKMeans(SklearnKMeans):
    def fit_predict(self, x):
        from cuml.cluster import KMeans

        model = KMeans(n_clusters=self.params["k"], n_init=4, random_state=self.seed, output_type="cupy")
        return model.fit_predict(x.astype("float32", copy=False))


class TorchKMeans(SklearnKMeans):
    """K-means in torch (CPU or CUDA tensors), as scikit-learn runs it: greedy k-means++ seeding with
    2 + ln(k) candidates per centre, Lloyd iterations until the centres move less than 1e-4 x the mean
    feature variance (squared, summed) or MAX_ITER, the best of N_INIT seeded starts by inertia
    (sklearn/cluster/_kmeans.py: ``_kmeans_plusplus``, ``_tolerance``, ``n_init``). The GPU backend where cuML
    is not installed; its own random stream (``torch.Generator`` seeded with ``seed``), so labels agree with
    scikit-learn's as a partition, not number by number (tests/test_gpu_backend.py).
    """

    N_INIT = 4
    MAX_ITER = 300

    def fit_predict(self, x):
        import torch

        x = x.float()
        k = int(self.params["k"])
        generator = torch.Generator(device=x.device).manual_seed(int(self.seed))
        tolerance = 1e-4 * float(x.var(dim=0).mean()) if x.shape[0] > 1 else 0.0
        best_labels, best_inertia = None, float("inf")
        for _ in range(self.N_INIT):
            labels, inertia = lloyd(x, plus_plus(x, k, generator), tolerance, self.MAX_ITER)
            if inertia < best_inertia:
                best_labels, best_inertia = labels, inertia
        return best_labels


def squared_distances(x, centres):
    """(n, c) squared Euclidean distances, clamped at 0 (matrix-product form)."""
    return ((x * x).sum(1)[:, None] + (centres * centres).sum(1)[None, :] - 2.0 * (x @ centres.T)).clamp_min_(0.0)


def plus_plus(x, k: int, generator):
    """(k, d) initial centres by greedy k-means++ (Arthur and Vassilvitskii 2007; scikit-learn's variant)."""
    import math

    import torch

    n = int(x.shape[0])
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator, device=x.device))
    centres = [x[first]]
    closest = squared_distances(x, x[first][None, :])[:, 0]
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # fewer distinct points than k: repeat a point (as scikit-learn would)
            candidates = torch.randint(n, (trials,), generator=generator, device=x.device)
        else:
            candidates = torch.multinomial(closest / total, trials, replacement=True, generator=generator)
        with_candidate = torch.minimum(closest[None, :], squared_distances(x, x[candidates]).T)
        best = int(with_candidate.sum(dim=1).argmin())
        centres.append(x[candidates[best]])
        closest = with_candidate[best]
    return torch.stack(centres)


def lloyd(x, centres, tolerance: float, max_iter: int):
    """Lloyd iterations from ``centres``: (labels (n,) int64, inertia). An empty cluster keeps its centre."""
    import torch

    k = int(centres.shape[0])
    for _ in range(max_iter):
        labels = squared_distances(x, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        shift = float(((moved - centres) ** 2).sum())
        centres = moved
        if shift <= tolerance:
            break
    distances = squared_distances(x, centres)
    labels = distances.argmin(dim=1)
    return labels, float(distances.gather(1, labels[:, None]).sum())


CARD = KMeansCard()
