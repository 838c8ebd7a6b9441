"""Ward: hierarchical clustering with Ward linkage, its card and its CPU implementation (SciPy / scikit-learn).

cuML's agglomerative clustering implements single linkage only, so the GPU twin refuses every setting and
Ward runs on the CPU (with the reason logged; ``--device gpu`` stops with it).

- candidates: k as for K-means (:func:`rca_gpu.engine.cluster.kmeans.k_candidates`), all cut from one merge
  tree per embedding; ``select=knee`` cuts it again at the knee of the within-cluster distance;
- at most WARD_MAX_POINTS images: the search runs it on its sample, and a larger sample is refused;
- extension to new points: the nearest centroid of the sample's clusters;
- transfer to a resample: k is carried over unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np

from rca_gpu.engine import dispatch
from rca_gpu.engine.cards import SELECT_RULES, ClusterCard, Twin
from rca_gpu.engine.cluster.kmeans import k_candidates
from rca_gpu.engine.device import Device, to_kind
from rca_gpu.engine.dispatch import ClusterAdapter
from rca_gpu.engine.knn import KnnGraph
from rca_gpu.engine.params import Param
from rca_gpu.errors import SpecError, UnsupportedOnGPU

#: Above this many points, exact Ward (quadratic memory) is replaced by Ward restricted to the kNN graph.
WARD_EXACT_MAX = 20_000
#: Ward never runs on more points than this; the search runs it on its sample (rca_gpu.tuning), and raising
#: the sample size above this is refused with a message.
WARD_MAX_POINTS = 50_000


class WardCard(ClusterCard):
    name = "ward"
    summary = "agglomerative clustering with Ward linkage, k clusters cut from one merge tree; no noise"
    params = {"k": Param(int, "at_least_2")}
    limits = {"k": lambda n: n - 1}
    min_images = 3
    granularity = "k"
    counts_clusters = True
    select_rules = SELECT_RULES + ("knee",)
    cpu = Twin("SklearnWard", "numpy", "scikit-learn")
    gpu = (Twin("CumlWard", "cupy", "cuml", requires="cuml", always_refuses=True),)

    def check_points(self, n: int) -> None:
        if n > WARD_MAX_POINTS:
            raise SpecError(
                f"Ward clustering needs memory and time quadratic in the images it clusters; the search would "
                f"run it on {n} images, more than {WARD_MAX_POINTS}. Set --sample-size (the config key "
                f"sample_size) to at most {WARD_MAX_POINTS}, or use kmeans."
            )

    def candidates(self, fixed: Mapping[str, Any], embedding_graph: Callable[[int], KnnGraph], n: int, *,
                   distinct: int | None = None) -> list[dict[str, Any]]:
        return k_candidates(fixed, n, distinct)

    def label_candidates(self, embedding: Any, candidates: list[dict[str, Any]], device: Device, *,
                         seed: int = 0) -> tuple[list[tuple[dict[str, Any], np.ndarray]], Any]:
        """One merge tree for the embedding, cut at every candidate's k; the tree is the state that
        :meth:`relabel` (``select=knee``) cuts again without rebuilding it."""
        tree = cast(SklearnWard, self.build(
            device, {"n_samples": int(embedding.shape[0]), "n_features": int(embedding.shape[1])}, seed=seed, k=2))
        dispatch.record(device, tree)
        tree.fit_tree(to_kind(embedding, tree.implementation.arrays))
        return [(params, tree.labels_for(params["k"])) for params in candidates], tree

    def relabel(self, state: Any, embedding: Any, params: Mapping[str, Any], device: Device, *,
                seed: int = 0) -> np.ndarray:
        if state is None:
            return super().relabel(state, embedding, params, device, seed=seed)
        return state.labels_for(int(params["k"]))


class SklearnWard(ClusterAdapter):
    """Agglomerative clustering with Ward linkage.

    The merge tree is built once and cut at any number of clusters, so a search over k costs one tree:
    SciPy's exact tree up to WARD_EXACT_MAX points, above that scikit-learn's Ward tree restricted to a kNN
    connectivity graph (linear memory), cut by undoing its last k - 1 merges.
    """

    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        self.seed = seed
        self.params = params
        self._tree: tuple | None = None

    def fit_tree(self, x) -> SklearnWard:
        x = np.asarray(x, dtype=np.float64)
        if len(x) <= WARD_EXACT_MAX:
            from scipy.cluster.hierarchy import ward

            self._tree = ("scipy", ward(x))
        else:
            from sklearn.cluster import ward_tree
            from sklearn.neighbors import kneighbors_graph

            connectivity = kneighbors_graph(x, n_neighbors=15, include_self=False)
            children = ward_tree(x, connectivity=connectivity)[0]
            self._tree = ("children", children, len(x))
        return self

    def labels_for(self, k: int) -> np.ndarray:
        if self._tree is None:
            raise ValueError("labels_for needs a tree: call fit_tree first")
        if self._tree[0] == "scipy":
            from scipy.cluster.hierarchy import fcluster

            return fcluster(self._tree[1], t=k, criterion="maxclust").astype(np.int64) - 1
        _, children, n = self._tree
        return cut_merges(children, n, k)

    def merge_heights(self) -> np.ndarray | None:
        """Linkage heights, largest merge last (exact tree only)."""
        return self._tree[1][:, 2] if self._tree and self._tree[0] == "scipy" else None

    def fit_predict(self, x):
        return self.fit_tree(x).labels_for(self.params["k"])


def cut_merges(children: np.ndarray, n: int, k: int) -> np.ndarray:
    """Labels (n,) int64 of ``k`` clusters from a merge list in scikit-learn's ``children_`` form (merge i
    joins nodes children[i] into node n + i): the first n - k merges applied, by pointer doubling."""
    k = max(1, min(k, n))
    parent = np.arange(2 * n - 1, dtype=np.int64)
    applied = n - k
    parent[np.asarray(children[:applied], dtype=np.int64).ravel()] = np.repeat(n + np.arange(applied), 2)
    while True:
        jumped = parent[parent]
        if np.array_equal(jumped, parent):
            break
        parent = jumped
    _, labels = np.unique(parent[:n], return_inverse=True)
    return labels.astype(np.int64).ravel()


class CumlWard(ClusterAdapter):
    """cuML's agglomerative clustering implements single linkage only."""

    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        raise UnsupportedOnGPU("cuML agglomerative clustering supports single linkage only, not Ward")


CARD = WardCard()
