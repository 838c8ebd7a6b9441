"""DBSCAN: its card, its CPU implementation (scikit-learn) and GPU twins (cuML; torch where cuML is absent).

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
    gpu = (Twin("CumlDBSCAN", "cupy", "cuml", requires="cuml"), Twin("TorchDBSCAN", "torch", "torch", requires="cuda"))

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


#: Neighbours per point of the kNN graph TorchDBSCAN reads its eps-graph from (at least min_samples).
TORCH_DBSCAN_GRAPH_K = 32


class TorchDBSCAN(SklearnDBSCAN):
    """DBSCAN in torch (CPU or CUDA tensors) from the eps-graph of an exact kNN graph: the GPU backend where
    cuML is not installed.

    1. the exact k-nearest-neighbour graph, k = max(min_samples, TORCH_DBSCAN_GRAPH_K), self first
       (:class:`rca_gpu.engine.knn.TorchExact`), distances recomputed from the differences;
    2. core points: at least ``min_samples`` points within ``eps``, the point itself included (scikit-learn's
       and cuML's rule), read from the ``min_samples``-th column: exact;
    3. clusters: connected components of the core points joined by graph edges of length <= eps
       (:func:`connected_components`, on the tensors' device);
    4. border points: a non-core point takes the lowest-numbered cluster among its core points within eps,
       as scikit-learn's expansion assigns it, else noise. A non-core point has fewer than min_samples <= k
       points within eps, so all of them are in its row of the graph: exact.

    Step 3 is exact as well: an edge between two core points within eps is missing from the graph only when
    both rows are full (their k-th neighbour within eps: "saturated"), since a row that is not full holds
    every point within eps. :func:`join_saturated` searches the saturated core points against each other
    (blocked matrix products, a few rounds) and joins their components. So the result is scikit-learn's
    DBSCAN up to the float32 rounding of distances at eps (clusters numbered by their lowest core point, as
    scikit-learn numbers them). Measured against scikit-learn in tests/test_gpu_backend.py.
    """

    graph_k = TORCH_DBSCAN_GRAPH_K

    def fit_predict(self, x):
        import torch

        from rca_gpu.engine.knn import TorchExact

        eps, min_samples = float(self.params["eps"]), int(self.params.get("min_samples", 5))
        x = x.float()
        n = int(x.shape[0])
        k = min(n, max(min_samples, self.graph_k))
        indices, _ = TorchExact().search(x, k)
        distances = row_distances(x, indices)
        if min_samples > n:
            return torch.full((n,), -1, dtype=torch.long, device=x.device)
        core = distances[:, min_samples - 1] <= eps
        near = distances <= eps
        rows = torch.arange(n, device=x.device)[:, None].expand(n, k)
        joined = near & core[:, None] & core[indices]
        components = connected_components(n, rows[joined], indices[joined])
        if k < n:
            saturated = core & (distances[:, k - 1] <= eps)
            if bool(saturated.any()):
                components = join_saturated(x, saturated.nonzero().squeeze(1), components, eps)
        labels = torch.full((n,), -1, dtype=torch.long, device=x.device)
        ids, numbered = torch.unique(components[core], return_inverse=True)
        labels[core] = numbered
        # border points: the lowest cluster among their core neighbours within eps, the one scikit-learn's
        # expansion (cluster by cluster, in order, never relabelling a point) reaches first
        reach = near & core[indices] & ~core[:, None]
        reached = torch.where(reach, labels[indices], n).amin(dim=1)
        border = reached < n
        labels[border] = reached[border]
        return labels


def join_saturated(x, rows, components, eps: float):
    """``components`` (n,) after joining every two of the points ``rows`` (int64 positions into ``x``) that lie
    within ``eps`` of each other: rounds of a blocked search of those points against each other, each joining
    every point's component with the lowest component within eps, until a round joins nothing."""
    import torch

    from rca_gpu.engine.knn import torch_block_rows

    points = x[rows]
    squared = (points * points).sum(dim=1)
    block = torch_block_rows(int(rows.shape[0]), points.device)
    n = int(components.shape[0])
    limit = eps * eps
    while True:
        mine = components[rows]
        lowest = mine.clone()
        for start in range(0, int(rows.shape[0]), block):
            stop = min(int(rows.shape[0]), start + block)
            d2 = squared[start:stop, None] + squared[None, :] - 2.0 * (points[start:stop] @ points.T)
            near = torch.where(d2 <= limit, mine[None, :], n).amin(dim=1)
            lowest[start:stop] = torch.minimum(lowest[start:stop], near)
        if torch.equal(lowest, mine):
            return components
        components = connected_components(n, mine, lowest)[components]


def row_distances(x, indices, *, block_bytes: int = 1 << 28):
    """(n, k) float32 Euclidean distances from each row of ``x`` (n, d) to the rows ``indices`` (n, k) names,
    computed from the differences (no rounding of a matrix product), in blocks of about ``block_bytes``."""
    import torch

    n, k = indices.shape
    out = torch.empty((n, k), dtype=torch.float32, device=x.device)
    block = max(1, block_bytes // max(1, k * int(x.shape[1]) * 4))
    for start in range(0, n, block):
        stop = min(n, start + block)
        out[start:stop] = (x[indices[start:stop]] - x[start:stop, None, :]).norm(dim=2)
    return out


def connected_components(n: int, source, target):
    """(n,) int64 tensor: each vertex's component, named by its lowest vertex, of the undirected graph with
    edges ``source[i]`` - ``target[i]`` (int64 tensors on one device).

    Min-label propagation over the edges with pointer jumping (each round also replaces a label by its own
    label), the scheme of Shiloach-Vishkin-style GPU connected components; O(edges) per round, a few dozen
    rounds on kNN graphs.
    """
    import torch

    labels = torch.arange(n, device=source.device)
    while True:
        new = labels.clone()
        new.scatter_reduce_(0, source, labels[target], reduce="amin")
        new.scatter_reduce_(0, target, labels[source], reduce="amin")
        new = new[new]
        if torch.equal(new, labels):
            return labels
        labels = new


CARD = DBSCANCard()
