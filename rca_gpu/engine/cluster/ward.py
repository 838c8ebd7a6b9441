"""Clustering: DBSCAN, HDBSCAN, K-means and Ward, each with a CPU and a GPU adapter.

Adapters return labels with -1 for noise. Labels always come back to the host: they are small, and the
selection criteria, evaluation and outputs need them there.

``min_samples`` means the same on both devices and for both density clusterers, as in scikit-learn: it
counts the point itself (docs/gpu.md, "min_samples"). scikit-learn's and cuML's DBSCAN count it the same
way; fast_hdbscan and cuML HDBSCAN count only the other points and are handed
:func:`rca_gpu.engine.limits.hdbscan_library_min_samples`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rca_gpu.engine import dispatch as registry, limits
from rca_gpu.engine.device import Device, as_numpy, to_kind
from rca_gpu.errors import UnsupportedOnGPU
from rca_gpu.engine.dispatch import Adapter

#: Above this many points, exact Ward (quadratic memory) is replaced by Ward restricted to the kNN graph.
WARD_EXACT_MAX = 20_000
#: Ward never runs on more points than this; the search runs it on its sample (rca_gpu.tuning), and raising
#: the sample size above this is refused with a message.
WARD_MAX_POINTS = 50_000


def cluster(x: Any, algorithm: str, params: dict[str, Any], device: Device, *, seed: int = 0) -> np.ndarray:
    """Labels (int64 numpy, -1 = noise) for the rows of ``x``."""
    adapter = registry.build("cluster", algorithm, device, seed=seed,
                             data={"n_samples": int(x.shape[0]), "n_features": int(x.shape[1])}, **params)
    data = to_kind(x, adapter.implementation.arrays, torch_device=device.torch_device)
    return np.asarray(as_numpy(adapter.fit_predict(data)), dtype=np.int64)


class _Base(Adapter):
    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        self.seed = seed
        self.params = params


class SklearnDBSCAN(_Base):
    def fit_predict(self, x):
        from sklearn.cluster import DBSCAN

        return DBSCAN(eps=self.params["eps"], min_samples=self.params.get("min_samples", 5)).fit_predict(x)


class CumlDBSCAN(_Base):
    """cuML DBSCAN; its ``min_samples`` counts the point itself, like scikit-learn's (python/cuml/cuml/cluster/
    dbscan.pyx; core points: vertex degree >= min_samples, cpp/src/dbscan/corepoints/compute.cuh)."""

    def fit_predict(self, x):
        from cuml.cluster import DBSCAN

        model = DBSCAN(eps=self.params["eps"], min_samples=self.params.get("min_samples", 5), output_type="cupy")
        return model.fit_predict(x.astype("float32", copy=False))


class FastHDBSCAN(_Base):
    """fast_hdbscan: parallel Boruvka on a KD-tree (numba)."""

    def fit_predict(self, x):
        import fast_hdbscan

        size = self.params["min_cluster_size"]
        min_samples = limits.hdbscan_library_min_samples(self.params.get("min_samples"), size)
        model = fast_hdbscan.HDBSCAN(min_cluster_size=size, min_samples=min_samples)
        return model.fit_predict(np.asarray(x, dtype=np.float64))


class CumlHDBSCAN(_Base):
    """cuML HDBSCAN, handed the same neighbour count as fast_hdbscan (see the module doc)."""

    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        super().__init__(seed=seed, **params)
        self.library_min_samples = limits.hdbscan_library_min_samples(
            params.get("min_samples"), params["min_cluster_size"]
        )
        limits.check_cuml_hdbscan(self.library_min_samples)

    def fit_predict(self, x):
        from cuml.cluster.hdbscan import HDBSCAN

        model = HDBSCAN(
            min_cluster_size=self.params["min_cluster_size"],
            min_samples=self.library_min_samples,
            output_type="cupy",
        )
        return model.fit_predict(x.astype("float32", copy=False))


class SklearnKMeans(_Base):
    def fit_predict(self, x):
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=self.params["k"], n_init=4, random_state=self.seed).fit_predict(x)


class CumlKMeans(_Base):
    def fit_predict(self, x):
        from cuml.cluster import KMeans

        model = KMeans(n_clusters=self.params["k"], n_init=4, random_state=self.seed, output_type="cupy")
        return model.fit_predict(x.astype("float32", copy=False))


class SklearnWard(_Base):
    """Agglomerative clustering with Ward linkage.

    The merge tree is built once and cut at any number of clusters, so a search over k costs one tree:
    SciPy's exact tree up to WARD_EXACT_MAX points, above that scikit-learn's Ward tree restricted to a kNN
    connectivity graph (linear memory), cut by undoing its last k - 1 merges.
    """

    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        super().__init__(seed=seed, **params)
        self._tree = None

    def fit_tree(self, x) -> "SklearnWard":
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
        kind = self._tree[0]
        if kind == "scipy":
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


class CumlWard(_Base):
    """cuML's agglomerative clustering implements single linkage only."""

    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        raise UnsupportedOnGPU("cuML agglomerative clustering supports single linkage only, not Ward")
