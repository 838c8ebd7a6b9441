"""HDBSCAN: its card, its CPU implementation (fast_hdbscan) and GPU twin (cuML).

``min_samples`` counts the point itself, as in scikit-learn and as for DBSCAN (docs/gpu.md,
"min_samples"); fast_hdbscan and cuML HDBSCAN count only the other points and are handed
:func:`rca_gpu.engine.limits.hdbscan_library_min_samples`.

- candidates: ``min_cluster_size`` from HDBSCAN_MIN_CLUSTER_SIZES up to n / 2;
- extension to new points: the nearest clustered sample point gives the cluster when the point lies within
  that sample point's core distance (its distance to its min_samples-th neighbour), else noise: a point that
  close belongs to the cluster at the density where that point does (what ``approximate_predict`` decides
  in hdbscan);
- transfer to a resample: the sizes are carried over unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rca_gpu import jit_cache
from rca_gpu.engine import limits
from rca_gpu.engine.cards import ClusterCard, Twin, nearest_within
from rca_gpu.engine.device import Device
from rca_gpu.engine.dispatch import ClusterAdapter
from rca_gpu.engine.knn import KnnGraph
from rca_gpu.engine.params import Param

HDBSCAN_MIN_CLUSTER_SIZES = (5, 10, 15, 25, 40, 60)
#: Above this many dimensions fast_hdbscan builds its tree from pynndescent's approximate kNN graph
#: (fast_hdbscan/hdbscan.py), unseeded, so two fits of one data set could differ, and compiled again in every
#: process (numba cannot cache functions handed a distance function); scikit-learn's exact HDBSCAN runs there
#: instead, as good and faster (benchmarks/hdbscan_backends.py, benchmarks/RESULTS.md).
FAST_HDBSCAN_MAX_DIMS = 30


class HDBSCANCard(ClusterCard):
    name = "hdbscan"
    summary = "density-based clusters over every density (a hierarchy of DBSCANs); sparse points are noise"
    params = {"min_cluster_size": Param(int, "at_least_2"), "min_samples": Param(int, "at_least_1")}
    limits = {"min_samples": lambda n: n - 1, "min_cluster_size": lambda n: n}
    min_images = 4
    granularity = "min_cluster_size"
    cpu = Twin("FastHDBSCAN", "numpy", "fast_hdbscan")
    gpu = (Twin("CumlHDBSCAN", "cupy", "cuml", requires="cuml"),)

    def candidates(self, fixed: Mapping[str, Any], embedding_graph: Callable[[int], KnnGraph], n: int, *,
                   distinct: int | None = None) -> list[dict[str, Any]]:
        if "min_cluster_size" in fixed:
            return [dict(fixed)]
        sizes = [s for s in HDBSCAN_MIN_CLUSTER_SIZES if s <= max(2, n // 2)] or [2]
        return [{**fixed, "min_cluster_size": s} for s in sizes]

    def core_neighbours(self, params: Mapping[str, Any]) -> int | None:
        return int(params.get("min_samples") or params.get("min_cluster_size", 5))

    def extend(self, params: Mapping[str, Any], sample_points: np.ndarray, raw_labels: np.ndarray,
               final_labels: np.ndarray, points: np.ndarray, device: Device,
               core_distances: np.ndarray | None = None) -> tuple[np.ndarray, str]:
        if len(points) == 0:
            return np.empty(0, dtype=np.int64), "nothing to assign"
        if core_distances is None:
            raise ValueError("HDBSCAN's extension needs the sample's core distances")
        base = np.flatnonzero(final_labels >= 0)
        labels = nearest_within(sample_points, base, core_distances[base], final_labels, points, device)
        return labels, "nearest clustered sample point, within its core distance, else noise"


class FastHDBSCAN(ClusterAdapter):
    """fast_hdbscan: parallel Boruvka on a KD-tree (numba); scikit-learn's above FAST_HDBSCAN_MAX_DIMS."""

    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        self.seed = seed
        self.params = params

    def fit_predict(self, x):
        size = self.params["min_cluster_size"]
        min_samples = limits.hdbscan_library_min_samples(self.params.get("min_samples"), size)
        x = np.asarray(x, dtype=np.float64)
        if x.shape[1] > FAST_HDBSCAN_MAX_DIMS:
            from sklearn.cluster import HDBSCAN  # counts the point itself, as rca_gpu does; at most n

            return HDBSCAN(min_cluster_size=size, min_samples=min(min_samples + 1, len(x)), copy=True).fit_predict(x)
        fast_hdbscan = jit_cache.load("fast_hdbscan")  # compiled once per machine, not per process
        return fast_hdbscan.HDBSCAN(min_cluster_size=size, min_samples=min_samples).fit_predict(x)


class CumlHDBSCAN(ClusterAdapter):
    """cuML HDBSCAN, handed the same neighbour count as fast_hdbscan (see the module doc)."""

    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        self.seed = seed
        self.params = params
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


CARD = HDBSCANCard()
