"""K-means: its card, its CPU implementation (scikit-learn) and GPU twin (cuML).

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
    gpu = (Twin("CumlKMeans", "cupy", "cuml", requires="cuml"),)

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


CARD = KMeansCard()
