"""UMAP: its card, its CPU implementation (umap-learn) and GPU twins (cuML; torch where cuML is absent), and
the placement of new points.

Every implementation reuses the feature set's kNN graph (``precomputed_knn``) instead of searching neighbours
again.

- candidates: each combination of UMAP_GRID (n_neighbors x n_components x min_dist) for what the pipeline
  leaves open (a clusterer card may ask for another grid: DBSCAN searches two settings);
- extension to new points (:func:`umap_place`): each new point is placed as umap-learn's ``transform`` places
  new points (fuzzy membership strengths to its sample neighbours, weighted mean of their positions, then
  ``REFINE_EPOCHS`` epochs of the layout optimisation with the sample fixed);
- transfer to a resample: the setting is carried over unchanged, fitted on the resample's part of the kNN
  graph.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from rca_gpu import jit_cache
from rca_gpu.engine import limits
from rca_gpu.engine.cards import ReducerCard, Twin
from rca_gpu.engine.dispatch import ReduceAdapter
from rca_gpu.engine.params import Param

#: UMAP settings tried when the pipeline leaves them open.
UMAP_GRID = {"n_neighbors": (15, 30), "n_components": (2, 10), "min_dist": (0.0, 0.1)}
#: Epochs of layout optimisation for placed points (0: the weighted mean only). umap-learn's ``transform``
#: runs 30 above 10,000 images; placed images move in a fixed sample embedding, so few suffice.
REFINE_EPOCHS = 0
#: Points placed per block (bounds the memory of the bipartite graph).
BLOCK = 100_000


class UMAPCard(ReducerCard):
    name = "umap"
    summary = "UMAP (uniform manifold approximation), fed the shared kNN graph"
    params = {
        "n_components": Param(int, "at_least_1", high=100),
        "n_neighbors": Param(int, "at_least_2", high=1000),
        "min_dist": Param(float, "fraction"),  # umap-learn needs min_dist <= spread (1.0)
    }
    limits = {"n_neighbors": lambda n: n - 1, "n_components": lambda n: n - 2}
    grid = UMAP_GRID
    cpu = Twin("UmapLearn", "numpy", "umap-learn")
    gpu = (Twin("CumlUMAP", "cupy", "cuml", requires="cuml"), Twin("TorchUMAP", "torch", "torch", requires="cuda"))

    def fit_to(self, params: dict[str, Any], n: int) -> dict[str, Any]:
        params["n_neighbors"] = max(2, min(params["n_neighbors"], n - 1))
        params["n_components"] = max(1, min(params["n_components"], n - 2))
        return params

    def search_graph_k(self, fixed: Mapping[str, Any]) -> int:
        return max(int(max(self.grid["n_neighbors"])), int(fixed.get("n_neighbors", 0)))

    def graph_k(self, params: Mapping[str, Any]) -> int:
        return int(params.get("n_neighbors", 15))

    def place(self, sample_points: np.ndarray, indices: np.ndarray, distances: np.ndarray,
              params: Mapping[str, Any], seed: int) -> np.ndarray:
        return umap_place(sample_points, indices, distances, n_neighbors=int(params.get("n_neighbors", 15)),
                          min_dist=float(params.get("min_dist", 0.1)), seed=seed)


def umap_place(sample_embedding: np.ndarray, indices: np.ndarray, distances: np.ndarray, *, n_neighbors: int,
               min_dist: float, seed: int, epochs: int = REFINE_EPOCHS) -> np.ndarray:
    """Positions (m, c) float32 of new points in a fitted UMAP embedding of the sample.

    ``indices``/``distances`` (m, >= n_neighbors): each new point's nearest sample points in the features.
    Follows umap-learn's ``UMAP.transform`` (umap/umap_.py): membership strengths by ``smooth_knn_dist`` with
    local connectivity 0, the strength-weighted mean of the neighbours' positions (a point identical to a
    sample point takes its position), then ``epochs`` epochs of ``optimize_layout_euclidean`` with the sample
    fixed (0: none).
    """
    jit_cache.load("umap")  # compiled once per machine, not per process
    from umap.umap_ import compute_membership_strengths, smooth_knn_dist

    k = min(n_neighbors, indices.shape[1])
    out = np.empty((len(indices), sample_embedding.shape[1]), dtype=np.float32)
    for start in range(0, len(indices), BLOCK):  # copies of one block only: memory beyond ``out`` stays flat
        idx = np.ascontiguousarray(indices[start:start + BLOCK, :k], dtype=np.int64)
        dist = np.ascontiguousarray(distances[start:start + BLOCK, :k], dtype=np.float32)
        sigmas, rhos = smooth_knn_dist(dist, float(k), local_connectivity=0.0)
        _, _, vals, _ = compute_membership_strengths(idx.astype(np.int32), dist, sigmas, rhos, bipartite=True)
        weights = vals.reshape(idx.shape).astype(np.float64)
        total = weights.sum(axis=1, keepdims=True)
        weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), 1.0 / k)
        placed = np.einsum("ij,ijc->ic", weights, sample_embedding[idx].astype(np.float64)).astype(np.float32)
        same = dist[:, 0] == 0.0  # identical to a sample point: exactly its position
        placed[same] = sample_embedding[idx[same, 0]]
        if epochs > 0:
            placed = _refine(placed, sample_embedding, idx, vals, epochs, min_dist, seed)
        out[start:start + len(idx)] = placed
    return out


def _refine(placed, sample_embedding, idx, vals, epochs, min_dist, seed):
    import scipy.sparse
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import find_ab_params, make_epochs_per_sample

    m, k = idx.shape
    graph = scipy.sparse.coo_matrix((vals, (np.repeat(np.arange(m), k), idx.ravel())),
                                    shape=(m, len(sample_embedding)))
    graph.data[graph.data < graph.data.max() / float(epochs)] = 0.0
    graph.eliminate_zeros()
    a, b = find_ab_params(1.0, min_dist)
    rng_state = np.random.RandomState(seed).randint(np.iinfo(np.int32).min, np.iinfo(np.int32).max, 3)
    return optimize_layout_euclidean(
        placed, sample_embedding.astype(np.float32, copy=True), graph.row, graph.col, epochs, graph.shape[1],
        make_epochs_per_sample(graph.data, epochs), a, b, rng_state.astype(np.int64), 1.0, 0.25, 5.0,
        parallel=False, move_other=False,
    )


class UmapLearn(ReduceAdapter):
    """umap-learn on the CPU, fed the shared kNN graph."""

    uses_knn = True

    def __init__(self, *, n_neighbors: int = 15, n_components: int = 2, min_dist: float = 0.1, seed: int = 0,
                 init: Any = None, n_epochs: int | None = None):
        """``init`` ((n, n_components) float array) and ``n_epochs``: a warm start from known positions with
        fewer epochs of layout optimisation (the stability step's resamples); default: spectral
        initialisation and umap-learn's epochs."""
        self.n_neighbors, self.n_components, self.min_dist, self.seed = n_neighbors, n_components, min_dist, seed
        self.init, self.n_epochs = init, n_epochs

    def fit_transform(self, x, knn=None):
        umap = jit_cache.load("umap")  # compiled once per machine, not per process

        n = x.shape[0]
        n_neighbors = max(2, min(self.n_neighbors, n - 1))
        precomputed = None
        if knn is not None and knn[0].shape[1] >= n_neighbors:
            # umap-learn does not prune a wider graph for small sets: hand it exactly n_neighbors columns
            precomputed = (np.ascontiguousarray(knn[0][:, :n_neighbors]),
                           np.ascontiguousarray(knn[1][:, :n_neighbors]), None)
        model = umap.UMAP(
            n_neighbors=n_neighbors,
            n_components=min(self.n_components, max(1, n - 2)),
            min_dist=self.min_dist,
            random_state=self.seed,
            precomputed_knn=precomputed or (None, None, None),
            init=(np.asarray(self.init, dtype=np.float32) if self.init is not None
                  else "spectral" if n > self.n_components + 2 else "random"),
            n_epochs=self.n_epochs,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*knn_search_index.*")
            warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
            warnings.filterwarnings("ignore", message=".*Graph is not fully connected.*")
            return model.fit_transform(np.asarray(x, dtype=np.float32)).astype(np.float32)


class CumlUMAP(ReduceAdapter):
    """cuML UMAP on CuPy arrays, fed the shared kNN graph.

    Output size and initialisation follow the CPU twin (:class:`UmapLearn`) for tiny sets: at most n - 2
    components, spectral initialisation only above n_components + 2 images, random below; cuML's spectral
    initialisation asserts n_samples > n_components mid-fit (:func:`rca_gpu.engine.limits.check_umap_init`).
    """

    uses_knn = True

    def __init__(self, *, n_neighbors: int = 15, n_components: int = 2, min_dist: float = 0.1, seed: int = 0,
                 init: Any = None, n_epochs: int | None = None):
        """``init`` and ``n_epochs`` (the CPU twin's warm start) are accepted and not used: cuML initialises
        spectrally or at random only, so a GPU resample is a full fit with cuML's own epochs."""
        self.n_neighbors, self.n_components, self.min_dist, self.seed = n_neighbors, n_components, min_dist, seed

    def _settings(self, n: int) -> tuple[int, int, str]:
        """(n_neighbors, n_components, init) for n images, as the CPU twin chooses them."""
        n_neighbors = max(2, min(self.n_neighbors, n - 1))
        n_components = min(self.n_components, max(1, n - 2))
        return n_neighbors, n_components, "spectral" if n > self.n_components + 2 else "random"

    def check_limits(self, *, n_samples: int, n_features: int, k: int | None = None) -> None:
        _, n_components, init = self._settings(n_samples)
        limits.check_umap_init(n_samples, n_components, init)

    def fit_transform(self, x, knn=None):
        from cuml.manifold import UMAP

        n_neighbors, n_components, init = self._settings(int(x.shape[0]))
        limits.check_umap_init(int(x.shape[0]), n_components, init)
        precomputed = None
        if knn is not None and knn[0].shape[1] >= n_neighbors:
            precomputed = (knn[0][:, :n_neighbors], knn[1][:, :n_neighbors])
        model = UMAP(
            n_neighbors=n_neighbors,
            n_components=n_components,
            min_dist=self.min_dist,
            init=init,
            random_state=self.seed,
            precomputed_knn=precomputed,
            output_type="cupy",
        )
        return model.fit_transform(x.astype("float32", copy=False))


class TorchUMAP(UmapLearn):
    """UMAP in torch (CPU or CUDA tensors), fed the shared kNN graph: the GPU backend where cuML is not
    installed (:func:`rca_gpu.engine.reduce.torch_umap.torch_umap`, umap-learn's steps vectorised).

    Sizes and initialisation as the CPU twin (:class:`UmapLearn`) chooses them: at most n - 1 neighbours and
    n - 2 components, spectral initialisation above n_components + 2 images, random below, ``init`` and
    ``n_epochs`` as a warm start. Without a kNN graph of ``n_neighbors`` columns it searches one itself
    (:class:`rca_gpu.engine.knn.TorchExact`). Its own random stream (``torch.Generator`` seeded with ``seed``),
    so it agrees with umap-learn as an embedding whose clusters agree (tests/test_gpu_umap.py,
    benchmarks/RESULTS.md), not point by point.
    """

    def fit_transform(self, x, knn=None):
        import torch

        from rca_gpu.engine.device import as_torch
        from rca_gpu.engine.knn import TorchExact
        from rca_gpu.engine.reduce.torch_umap import torch_umap

        x = x.float()
        n = int(x.shape[0])
        n_neighbors = max(2, min(self.n_neighbors, n - 1))
        n_components = min(self.n_components, max(1, n - 2))
        if knn is not None and knn[0].shape[1] >= n_neighbors:
            indices, distances = knn[0].to(torch.int64), knn[1].float()
        else:
            indices, distances = TorchExact().search(x, n_neighbors)
        if self.init is not None:
            init: Any = as_torch(self.init, str(x.device)).float()
        else:
            init = None if n > self.n_components + 2 else "random"
        return torch_umap(x, indices, distances, n_neighbors=n_neighbors, n_components=n_components,
                          min_dist=self.min_dist, seed=self.seed, init=init, n_epochs=self.n_epochs)


CARD = UMAPCard()
