"""k-nearest-neighbour graphs, computed once per feature set and reused downstream.

Backends (:data:`KNN_IMPLEMENTATIONS`, one row per backend and device): exact FAISS (CPU or GPU), exact cuVS brute force
(GPU), exact torch matmul + top-k in blocks (CPU or CUDA), approximate FAISS HNSW (CPU, for very large sets),
exact cuML, and a scikit-learn KD-tree. ``backend="auto"`` picks by device and size, following
benchmarks/knn_backends.py (benchmarks/RESULTS.md): on the CPU exact FAISS while n^2 d stays within
CPU_EXACT_BUDGET, HNSW beyond, and torch when FAISS is not installed; on the GPU cuVS, else FAISS-GPU, each
only when its test search passed on this GPU (:func:`rca_gpu.engine.device.probe_knn_backends`), else torch.

Every graph lists each point as its own first neighbour at distance 0 (what UMAP's ``precomputed_knn``
expects), then its k - 1 nearest other points, by Euclidean distance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from rca_gpu.engine import limits
from rca_gpu.engine.device import Device, as_numpy, as_torch, gpu_torch_device, to_kind
from rca_gpu.engine.dispatch import Adapter, Implementation, KnnAdapter, run
from rca_gpu.errors import TooFewImagesError

_I = Implementation
#: Every kNN backend on each device, with the adapter class by import path (what rca_gpu.engine.dispatch picks
#: from). The cards of the reducers and clusterers add their own rows (rca_gpu.engine.registry).
KNN_IMPLEMENTATIONS: tuple[Implementation, ...] = (
    _I("knn", "faiss", "gpu", "rca_gpu.engine.knn:FaissGpuExact", "torch", "faiss_gpu", "faiss-gpu"),
    _I("knn", "cuvs", "gpu", "rca_gpu.engine.knn:CuvsExact", "cupy", "cuvs", "cuvs"),
    _I("knn", "torch", "gpu", "rca_gpu.engine.knn:TorchExact", "torch", "cuda", "torch"),
    _I("knn", "cuml", "gpu", "rca_gpu.engine.knn:CumlExact", "cupy", "cuml_knn", "cuml"),
    _I("knn", "torch", "cpu", "rca_gpu.engine.knn:TorchExact", "torch", "", "torch"),
    _I("knn", "faiss", "cpu", "rca_gpu.engine.knn:FaissExact", "numpy", "faiss", "faiss-cpu"),
    _I("knn", "faiss-hnsw", "cpu", "rca_gpu.engine.knn:FaissHNSW", "numpy", "faiss", "faiss-cpu"),
    _I("knn", "kdtree", "cpu", "rca_gpu.engine.knn:SklearnKDTree", "numpy", "", "scikit-learn"),
)
#: Every --knn-backend value, in the order the help lists them: "auto" (:func:`choose_backend`), then the
#: backends of KNN_IMPLEMENTATIONS (checked by tests/test_cli.py).
KNN_BACKENDS = ("auto", "torch", "faiss", "faiss-hnsw", "kdtree", "cuvs", "cuml")
#: kNN backends with no CPU implementation: backend -> (flag of rca_gpu.engine.device.Device that says it
#: works here, the library it needs).
GPU_ONLY_KNN_BACKENDS = {"cuvs": ("cuvs", "cuVS"), "cuml": ("cuml_knn", "cuML")}

#: Exact search on the CPU costs n * n * d; above this (50,000 points at d = 1280, where FAISS HNSW caught up
#: with exact FAISS in benchmarks/knn_backends.py) the approximate HNSW graph is used.
CPU_EXACT_BUDGET = 50_000 * 50_000 * 1280
#: Neighbours searched beyond k on the host, so that exact distances, not the rounding of the BLAS kernel the
#: CPU gets (OpenBLAS picks Haswell, Zen or SkylakeX code by CPU), decide which near-tied points are the k
#: nearest: the kernel swapped k-th neighbours and changed labels between CPUs (benchmarks/RESULTS.md,
#: "Code-generation target").
RERANK_MARGIN = 8


@dataclass
class KnnGraph:
    """Indices (n, k) int64 and Euclidean distances (n, k) float32; column 0 is the point itself."""

    indices: Any
    distances: Any
    backend: str
    seconds: float = 0.0
    _numpy: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """Host copies (made once)."""
        if self._numpy is None:
            self._numpy = (as_numpy(self.indices).astype(np.int64), as_numpy(self.distances).astype(np.float32))
        return self._numpy

    def first(self, k: int) -> KnnGraph:
        """The graph restricted to each point's k nearest (including itself)."""
        if k > self.k:
            raise ValueError(f"the graph has {self.k} neighbours per point, {k} were asked for")
        sub = KnnGraph(self.indices[:, :k], self.distances[:, :k], self.backend, self.seconds)
        if self._numpy is not None:
            sub._numpy = (self._numpy[0][:, :k], self._numpy[1][:, :k])
        return sub

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "k": self.k, "seconds": round(self.seconds, 3)}


#: With ``low_dims_tree``, points of at most this many dimensions are searched with scikit-learn's KD-tree
#: on the CPU (benchmarks/knn_backends.py: fastest there for low-dimensional embeddings).
KDTREE_MAX_DIMS = 16


def choose_backend(n: int, dim: int, device: Device, *, low_dims_tree: bool = False) -> str:
    """The backend ``auto`` resolves to (measured: benchmarks/knn_backends.py).

    ``low_dims_tree``: the caller searches a low-dimensional embedding, where a KD-tree is fastest on the
    CPU; on a GPU the device's own backend is used all the same. Stage code states this preference and never
    names a backend: a CPU-only backend asked for under a GPU device fails under ``--device gpu``.
    """
    if device.on_gpu:
        return "cuvs" if device.cuvs else "faiss" if device.faiss_gpu else "torch"
    if low_dims_tree and dim <= KDTREE_MAX_DIMS:
        return "kdtree"
    if not device.faiss_cpu:
        return "torch"  # installs without FAISS (the GPU extras): exact search in torch
    return "faiss" if n * n * dim <= CPU_EXACT_BUDGET else "faiss-hnsw"


def backend_implementations(name: str) -> list[Implementation]:
    """The rows of KNN_IMPLEMENTATIONS for backend ``name`` (KeyError when there are none)."""
    found = [i for i in KNN_IMPLEMENTATIONS if i.algorithm == name]
    if not found:
        raise KeyError(f"no implementation registered for knn {name!r}")
    return found


def knn_graph(x: Any, k: int, device: Device, backend: str = "auto", *, low_dims_tree: bool = False) -> KnnGraph:
    """The k-nearest-neighbour graph of the rows of ``x`` (self included as neighbour 0).

    ``backend``: the user's choice (``--knn-backend``), or "auto" (:func:`choose_backend`, which also reads
    ``low_dims_tree``). Stage code passes "auto".
    """
    n, dim = int(x.shape[0]), int(x.shape[1])
    if n < 2:
        raise TooFewImagesError(f"A neighbour graph needs at least 2 images; {n} usable image(s) remain.")
    k = min(k, n)
    name = choose_backend(n, dim, device, low_dims_tree=low_dims_tree) if backend == "auto" else backend
    started = time.perf_counter()
    fetch = k if device.on_gpu else min(n, k + RERANK_MARGIN)

    def search(adapter: Adapter) -> tuple[Any, Any]:
        data = to_kind(x, adapter.implementation.arrays, torch_device=device.torch_device)
        return cast(KnnAdapter, adapter).search(data, fetch)

    adapter, (indices, distances) = run(backend_implementations(name), device, search,
                                        data={"n_samples": n, "n_features": dim, "k": k})
    if not device.on_gpu:  # host results: the same graph whatever the thread count or CPU (see exact_distances)
        indices, distances = (a[:, :k] for a in exact_distances(x, as_numpy(indices)))
    seconds = time.perf_counter() - started
    return KnnGraph(indices, distances, f"{name}-{adapter.implementation.backend}", seconds)


def exact_distances(x: Any, indices: np.ndarray, *, keep_first: bool = True,
                    queries: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Recompute the distances of a kNN result exactly and order each row by (distance, index).

    Matrix-product searches (FAISS, torch) compute ``|a|^2 + |b|^2 - 2 a.b`` in float32, whose rounding
    depends on how the BLAS library splits the work across threads: the same data gave different distances
    (not different neighbours) under ``OMP_NUM_THREADS=1`` and 2, hence different UMAP weights and clusters.
    Here each distance is ``sqrt(sum((a - b)^2))`` of the float32 differences, summed by NumPy's einsum
    (single-threaded, one fixed order), and ties are broken by the lower index: a result that depends on the
    data only. Cost O(n k d), a small fraction of the search itself.

    Parameters
    ----------
    x : (n, d) host array of the points (float32 or float64).
    indices : (n, k) int array of neighbour rows of ``x``; with ``keep_first`` column 0 stays in place (the
        point itself in a self-graph).
    queries : (n, d) host array whose neighbours in ``x`` the rows of ``indices`` are; default ``x`` itself.

    Returns
    -------
    (indices int64 (n, k), distances float32 (n, k)).
    """
    x = np.asarray(as_numpy(x)).astype(np.float32, copy=False)
    queries = x if queries is None else np.asarray(as_numpy(queries)).astype(np.float32, copy=False)
    indices = np.asarray(indices, dtype=np.int64)
    n, k = indices.shape
    distances = np.empty((n, k), dtype=np.float32)
    block = max(1, (1 << 22) // max(1, k * x.shape[1]))
    for start in range(0, n, block):
        stop = min(n, start + block)
        diff = x[indices[start:stop]] - queries[start:stop, None, :]
        distances[start:stop] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    first = 1 if keep_first and k > 0 else 0
    order = np.lexsort((indices[:, first:], distances[:, first:]), axis=1)
    indices[:, first:] = np.take_along_axis(indices[:, first:], order, axis=1)
    distances[:, first:] = np.take_along_axis(distances[:, first:], order, axis=1)
    if first:
        distances[:, 0] = 0.0
    return indices, distances


def nearest_rows(base: Any, queries: Any, k: int, device: Device, *,
                 low_dims_tree: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``base`` for every row of ``queries`` (exact, Euclidean).

    With ``low_dims_tree`` a base of at most KDTREE_MAX_DIMS dimensions is searched with scikit-learn's
    KD-tree on the CPU device (O(m log n) instead of O(m n)), then reranked exactly as below; on a GPU the
    torch search runs all the same.

    Blocked matrix products and top-k in torch on ``device`` (CPU or CUDA). On the CPU ``RERANK_MARGIN``
    more than ``k`` are searched and their distances recomputed exactly decide the ``k`` nearest (ties: the
    lower index), so that the result does not depend on the BLAS kernel's rounding; on a GPU the nearest
    distance is recomputed exactly. Either way a row identical to a base row is at distance 0. Cost
    O(len(queries) x len(base) x d): linear in the number of queries for a fixed base (the seeded sample of
    :mod:`rca_gpu.tuning`).

    Returns
    -------
    (indices int64 (m, k) into ``base``, distances float32 (m, k)) on the host, nearest first.
    """
    import torch

    k = min(k, int(base.shape[0]))
    fetch = k if device.on_gpu else min(k + RERANK_MARGIN, int(base.shape[0]))
    if low_dims_tree and not device.on_gpu and int(base.shape[1]) <= KDTREE_MAX_DIMS:
        from sklearn.neighbors import KDTree

        host = np.ascontiguousarray(as_numpy(base), dtype=np.float32)
        found = KDTree(host).query(np.asarray(as_numpy(queries), dtype=np.float32), k=fetch,
                                   return_distance=False)
        out_i, out_d = exact_distances(host, np.asarray(found, dtype=np.int64), keep_first=False, queries=queries)
        return out_i[:, :k], out_d[:, :k]
    b = as_torch(base, device.torch_device).float()
    q_all = as_torch(queries, device.torch_device)
    m = int(q_all.shape[0])
    base_sq = (b * b).sum(dim=1)
    block = torch_block_rows(int(b.shape[0]), b.device)
    out_i = np.empty((m, fetch), dtype=np.int64)
    out_d = np.empty((m, fetch), dtype=np.float32)
    for start in range(0, m, block):
        stop = min(m, start + block)
        q = q_all[start:stop].float()
        values, idx = torch.topk(partial_squared_distances(q, b, base_sq), fetch, dim=1, largest=False, sorted=True)
        values += (q * q).sum(dim=1)[:, None]
        out_i[start:stop] = as_numpy(idx)
        out_d[start:stop] = as_numpy(values.clamp_min_(0.0).sqrt_())
    # exact distances (float32 differences): an identical row is at distance 0, not at the rounding error of
    # the matrix product; on the host they also decide the k nearest, the same on every CPU
    if device.on_gpu:
        out_d[:, :1] = exact_distances(base, out_i[:, :1], keep_first=False, queries=queries)[1]
        return out_i, out_d
    out_i, out_d = exact_distances(base, out_i, keep_first=False, queries=queries)
    return out_i[:, :k], out_d[:, :k]


# --------------------------------------------------------------------------------------------------
# Adapters
# --------------------------------------------------------------------------------------------------


def _self_first_numpy(indices: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make each row start with the point itself (duplicates can push it out of column 0)."""
    n, k = indices.shape
    rows = np.arange(n)
    # keep the first k - 1 neighbours that are not the point itself, in order (stable sort)
    order = np.argsort(indices == rows[:, None], axis=1, kind="stable")[:, : k - 1]
    out_i = np.concatenate([rows[:, None], np.take_along_axis(indices, order, axis=1)], axis=1)
    out_d = np.concatenate([np.zeros((n, 1), distances.dtype), np.take_along_axis(distances, order, axis=1)], axis=1)
    return out_i, out_d


def _self_first_torch(indices, distances):
    """Torch twin of _self_first_numpy, so GPU results stay on the GPU."""
    import torch

    n, k = indices.shape
    rows = torch.arange(n, device=indices.device)
    order = torch.argsort((indices == rows[:, None]).to(torch.int8), dim=1, stable=True)[:, : k - 1]
    out_i = torch.cat([rows[:, None], indices.gather(1, order)], dim=1)
    zeros = torch.zeros((n, 1), dtype=distances.dtype, device=distances.device)
    return out_i, torch.cat([zeros, distances.gather(1, order)], dim=1)


#: Share of the GPU's free memory one block of the torch search may use (distances, top-k workspace).
GPU_BLOCK_MEMORY_SHARE = 0.5
#: Bytes per entry of one block: the distance expression below holds up to three float32 temporaries of
#: the block's size at once (the matmul product, its scaled copy, the sum) plus top-k's workspace; counted
#: from the code, not measured on a GPU.
GPU_BYTES_PER_ENTRY = 16


def partial_squared_distances(queries, base, base_squared):
    """``|b|^2 - 2 q.b`` (m, n) float32 torch tensor for queries (m, d) against base (n, d): the squared
    Euclidean distances less each query row's constant ``|q|^2``, which a row's ranking does not need.

    One fused matrix product (``torch.addmm``) instead of the product and two full passes over the (m, n)
    block: 1.6-2.7x faster on 8,192 x 5,000 x 256 on the CPU, with the same top-k (add ``|q|^2`` to the k
    values kept). ``base_squared``: (n,) ``|b|^2``.
    """
    import torch

    return torch.addmm(base_squared[None, :], queries, base.T, alpha=-2.0)


def torch_block_rows(n: int, device, *, block_elements: int = 1 << 26) -> int:
    """Rows per block of the torch kNN search over ``n`` points.

    On the CPU a fixed budget of ``block_elements`` distances (256 MB). On a GPU the block fills
    GPU_BLOCK_MEMORY_SHARE of the free memory (``torch.cuda.mem_get_info``): at n = 1,000,000 on a GPU with
    130 GB free that is about 4,000 rows per block instead of the 67 a fixed budget allows, so the search is
    a few hundred large matrix products rather than 15,000 small ones.

    Returns at least 1 and at most ``n``.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * GPU_BLOCK_MEMORY_SHARE) // GPU_BYTES_PER_ENTRY
    else:
        budget = block_elements
    return max(1, min(n, budget // max(n, 1)))


class TorchExact(KnnAdapter):
    """Exact Euclidean kNN by blocked matrix products and top-k, on CPU or CUDA tensors.

    Blocks of query rows are sized by :func:`torch_block_rows` (by free memory on a GPU).
    """

    def __init__(self, *, block_elements: int = 1 << 26) -> None:
        self.block_elements = block_elements

    def search(self, x, k: int):
        import torch

        x = x.float()
        n = x.shape[0]
        squared = (x * x).sum(dim=1)
        block = torch_block_rows(n, x.device, block_elements=self.block_elements)
        indices = torch.empty((n, k), dtype=torch.long, device=x.device)
        distances = torch.empty((n, k), dtype=torch.float32, device=x.device)
        for start in range(0, n, block):
            stop = min(n, start + block)
            d2 = partial_squared_distances(x[start:stop], x, squared)
            rows = torch.arange(stop - start, device=x.device)
            d2[rows, rows + start] = -float("inf")  # the point itself always comes first
            values, idx = torch.topk(d2, k, dim=1, largest=False, sorted=True)
            values += squared[start:stop, None]
            indices[start:stop] = idx
            distances[start:stop] = values.clamp_min_(0.0).sqrt_()
        return indices, distances


class FaissExact(KnnAdapter):
    """Exact L2 search with FAISS on the CPU (IndexFlatL2)."""

    def search(self, x, k: int):
        import faiss

        x = np.ascontiguousarray(x, dtype=np.float32)
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x)
        d2, idx = index.search(x, k)
        return _self_first_numpy(idx.astype(np.int64), np.sqrt(np.maximum(d2, 0)).astype(np.float32))


class FaissHNSW(KnnAdapter):
    """Approximate search with a FAISS HNSW graph (for sets too large for exact search on the CPU)."""

    def __init__(self, *, m: int = 32, ef_construction: int = 200, ef_search: int = 128) -> None:
        self.m, self.ef_construction, self.ef_search = m, ef_construction, ef_search

    def search(self, x, k: int):
        import faiss

        x = np.ascontiguousarray(x, dtype=np.float32)
        index = faiss.IndexHNSWFlat(x.shape[1], self.m)
        index.hnsw.efConstruction = self.ef_construction
        index.add(x)
        index.hnsw.efSearch = max(self.ef_search, 2 * k)
        d2, idx = index.search(x, k)
        idx = np.where(idx < 0, np.arange(len(x))[:, None], idx)  # unfilled slots (tiny sets): self
        return _self_first_numpy(idx.astype(np.int64), np.sqrt(np.maximum(d2, 0)).astype(np.float32))


class SklearnKDTree(KnnAdapter):
    """Exact search with scikit-learn's KD-tree: fastest on the CPU for low-dimensional embeddings."""

    def search(self, x, k: int):
        from sklearn.neighbors import NearestNeighbors

        x = np.asarray(x, dtype=np.float32)
        nn = NearestNeighbors(n_neighbors=k, algorithm="kd_tree").fit(x)
        distances, indices = nn.kneighbors(x)
        return _self_first_numpy(indices.astype(np.int64), distances.astype(np.float32))


class FaissGpuExact(KnnAdapter):
    """Exact L2 search with FAISS-GPU (GpuIndexFlatL2) on torch CUDA tensors, which FAISS reads in place.

    Used only when the device probe's tiny search passed on this GPU (a FAISS build without machine code for
    the GPU aborts the process). k is limited to :data:`rca_gpu.engine.limits.FAISS_GPU_MAX_K`.
    """

    def check_limits(self, *, n_samples: int, n_features: int, k: int | None = None) -> None:
        limits.check_faiss_gpu_k(int(k or 0))

    def search(self, x, k: int):
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401  (registers torch tensor support)

        limits.check_faiss_gpu_k(k)
        resources = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatL2(resources, int(x.shape[1]))
        x = x.float().contiguous()
        index.add(x)
        d2, idx = index.search(x, k)
        return _self_first_torch(idx.long(), d2.clamp_min(0).sqrt())


class CuvsExact(KnnAdapter):
    """Exact brute-force search with RAPIDS cuVS (the library cuML's own neighbour searches use) on CuPy
    arrays. Used only when the device probe's tiny search passed on this GPU."""

    def check_limits(self, *, n_samples: int, n_features: int, k: int | None = None) -> None:
        limits.check_cuvs_queries(n_samples)

    def search(self, x, k: int):
        import cupy
        from cuvs.neighbors import brute_force

        x = cupy.ascontiguousarray(x.astype(cupy.float32, copy=False))
        d2, idx = brute_force.search(brute_force.build(x, metric="sqeuclidean"), x, k)
        where = gpu_torch_device()
        indices = as_torch(cupy.asarray(idx), where).long()
        distances = as_torch(cupy.asarray(d2), where).float().clamp_min(0).sqrt()
        return _self_first_torch(indices, distances)


class CumlExact(KnnAdapter):
    """Exact brute-force search with cuML on CuPy arrays."""

    def search(self, x, k: int):
        from cuml.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k, algorithm="brute", output_type="cupy")
        distances, indices = nn.fit(x.astype("float32", copy=False)).kneighbors(x.astype("float32", copy=False))
        where = gpu_torch_device()
        return _self_first_torch(as_torch(indices, where).long(), as_torch(distances, where).float())
