"""DBSCAN: its card, its CPU implementation (scikit-learn) and GPU twin (cuML).

``min_samples`` counts the point itself, on both devices, as in scikit-learn (docs/gpu.md, "min_samples"):
scikit-learn's and cuML's DBSCAN count it the same way.

- candidates: ``eps`` from the quantiles DBSCAN_EPS_QUANTILES of each point's distance to its
  ``min_samples``-th neighbour in the embedding, for each ``min_samples`` of DBSCAN_MIN_SAMPLES below n;
- search grid for UMAP: the two settings of UMAP_GRID_DBSCAN (benchmarks/RESULTS.md, "Automatic selection");
- extension to new points: the nearest core point of the sample within eps gives the cluster, else noise
  (a core point has at least min_samples sample points within eps, itself included);
- transfer to a resample: ``eps`` is a distance whose meaning depends on the density of the points, and a
  subset is less dense, so it is carried over as a quantile: the share of the run's points whose
  ``min_samples``-th neighbour lies within ``eps`` in the clustering space is kept, and each resample's
  ``eps`` is that quantile of its own ``min_samples``-th neighbour distances.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rca_gpu.engine import limits
from rca_gpu.engine.cards import ClusterCard, Twin, nearest_within
from rca_gpu.engine.device import Device, take_rows
from rca_gpu.engine.dispatch import ClusterAdapter
from rca_gpu.engine.knn import KnnGraph, knn_graph, nearest_rows
from rca_gpu.engine.params import Param

DBSCAN_MIN_SAMPLES = (5, 10, 20)
DBSCAN_EPS_QUANTILES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
#: UMAP settings DBSCAN searches: its choice was the same on every benchmark with these two as with all eight
#: of the UMAP card's grid (benchmarks/RESULTS.md, selection), so the default pipeline fits two UMAPs.
UMAP_GRID_DBSCAN = {"n_neighbors": (30,), "n_components": (10,), "min_dist": (0.0, 0.1)}


class DBSCANCard(ClusterCard):
    name = "dbscan"
    summary = "density-based clusters at one radius eps; points in no dense region are noise"
    params = {"eps": Param(float, "positive"), "min_samples": Param(int, "at_least_1")}
    limits = {"min_samples": lambda n: n - 1}
    min_images = 3
    granularity = "eps"
    reducer_grids = {"umap": UMAP_GRID_DBSCAN}
    graph_k = max(DBSCAN_MIN_SAMPLES) + 1
    cpu = Twin("SklearnDBSCAN", "numpy", "scikit-learn")
    gpu = (Twin("CumlDBSCAN", "cupy", "cuml", requires="cuml"),)

    def candidates(self, fixed: Mapping[str, Any], embedding_graph: Callable[[int], KnnGraph], n: int, *,
                   distinct: int | None = None) -> list[dict[str, Any]]:
        if "eps" in fixed and "min_samples" in fixed:
            return [dict(fixed)]
        if "min_samples" in fixed:
            sample_sizes: tuple[int, ...] = (fixed["min_samples"],)
        else:  # a set smaller than every default still gets eps from its own distances (n - 1 neighbours)
            sample_sizes = tuple(m for m in DBSCAN_MIN_SAMPLES if m < n) or (max(1, n - 1),)
        out: list[dict[str, Any]] = []
        for min_samples in sample_sizes:
            if min_samples >= n:
                continue
            if "eps" in fixed:
                out.append({"eps": fixed["eps"], "min_samples": min_samples})
                continue
            # eps from the distribution of each point's distance to its min_samples-th neighbour
            _, distances = embedding_graph(min_samples + 1).numpy()
            kth = distances[:, min_samples]
            for q in DBSCAN_EPS_QUANTILES:
                eps = float(np.quantile(kth, q))
                if eps > 0:
                    candidate = {"eps": round(eps, 6), "min_samples": min_samples}
                    if candidate not in out:
                        out.append(candidate)
        # nothing to tune from (tiny or duplicate data): values the user fixed are kept, never replaced
        return out or [{"eps": fixed.get("eps", 0.5), "min_samples": fixed.get("min_samples", max(1, min(5, n - 1)))}]

    def core_neighbours(self, params: Mapping[str, Any]) -> int | None:
        return int(params.get("min_samples") or 5)

    def extend(self, params: Mapping[str, Any], sample_points: np.ndarray, raw_labels: np.ndarray,
               final_labels: np.ndarray, points: np.ndarray, device: Device,
               core_distances: np.ndarray | None = None) -> tuple[np.ndarray, str]:
        if len(points) == 0:
            return np.empty(0, dtype=np.int64), "nothing to assign"
        if core_distances is None:
            raise ValueError("DBSCAN's extension needs the sample's core distances")
        eps = float(params["eps"])
        base = np.flatnonzero((core_distances <= eps) & (raw_labels >= 0))
        radius = np.full(len(base), eps, dtype=np.float32)
        labels = nearest_within(sample_points, base, radius, final_labels, points, device)
        return labels, "nearest core point of the sample within eps, else noise"

    def resample_state(self, params: Mapping[str, Any], embedding: Any, device: Device, *,
                       feature_graph: KnnGraph | None = None, rows: np.ndarray | None = None) -> float | None:
        """The share of the run's points whose ``min_samples``-th neighbour lies within ``eps`` (None without
        eps): in the feature graph when the clustering space is the features and the graph is wide enough,
        else in ``embedding`` (estimated on ``rows`` when given)."""
        if "eps" not in params:
            return None
        eps, min_samples = float(params["eps"]), int(params.get("min_samples", 5))
        if feature_graph is not None and feature_graph.k > min_samples:
            kth = feature_graph.numpy()[1][:, min_samples]
            return float(np.mean(kth <= eps))
        return eps_quantile(embedding, eps, min_samples, device, rows=rows)

    def transfer(self, params: Mapping[str, Any], embedding: Any, device: Device, state: Any) -> dict[str, Any]:
        out = super().transfer(params, embedding, device, state)
        if state is not None:
            min_samples = int(out.get("min_samples", 5))
            kth = kth_distance(embedding, min_samples, device)
            eps = float(np.quantile(kth, min(1.0, max(0.0, state))))
            out["eps"] = eps if eps > 0 else float(out["eps"])
        return out


def eps_quantile(points: Any, eps: float, min_samples: int, device: Device, rows: np.ndarray | None = None) -> float:
    """Share of ``points`` (n, d) whose ``min_samples``-th neighbour (self excluded) lies within ``eps``.

    With ``rows`` (int64 positions) only those points are looked at, each against all n points: an unbiased
    estimate of the share that costs O(len(rows)) queries instead of a kNN graph of all n points (a run of
    1,000,000 images spent minutes on that graph).
    """
    n = int(points.shape[0])
    if rows is None or len(rows) >= n:
        kth = kth_distance(points, min_samples, device)
    else:
        k = min(min_samples + 1, n)
        queries = take_rows(points, rows, device.torch_device)
        _, distances = nearest_rows(points, queries, k, device, low_dims_tree=True)
        kth = np.asarray(distances)[:, k - 1]
    return float(np.mean(kth <= eps)) if kth.size else 1.0


def kth_distance(points: Any, min_samples: int, device: Device) -> np.ndarray:
    """(n,) each point's distance to its ``min_samples``-th neighbour (self excluded; fewer when n is small)."""
    n = int(points.shape[0])
    k = min(min_samples + 1, n)
    # the registry picks the backend: a KD-tree for low dimensions on the CPU, the device's own on a GPU
    _, distances = knn_graph(points, k, device, low_dims_tree=True).numpy()
    return distances[:, k - 1]


class SklearnDBSCAN(ClusterAdapter):
    def __init__(self, *, seed: int = 0, **params: Any) -> None:
        self.seed = seed
        self.params = params

    def fit_predict(self, x):
        from sklearn.cluster import DBSCAN

        return DBSCAN(eps=self.params["eps"], min_samples=self.params.get("min_samples", 5)).fit_predict(x)


class CumlDBSCAN(SklearnDBSCAN):
    """cuML DBSCAN; its ``min_samples`` counts the point itself, like scikit-learn's (python/cuml/cuml/cluster/
    dbscan.pyx; core points: vertex degree >= min_samples, cpp/src/dbscan/corepoints/compute.cuh). Its batch
    size comes from the free GPU memory (:func:`rca_gpu.engine.limits.dbscan_batch_mbytes`)."""

    def fit_predict(self, x):
        import cupy
        from cuml.cluster import DBSCAN

        free, _ = cupy.cuda.runtime.memGetInfo()
        batch = limits.dbscan_batch_mbytes(free, int(x.shape[0]), int(x.shape[1]))
        model = DBSCAN(eps=self.params["eps"], min_samples=self.params.get("min_samples", 5), output_type="cupy",
                       max_mbytes_per_batch=batch)
        return model.fit_predict(x.astype("float32", copy=False))


CARD = DBSCANCard()
