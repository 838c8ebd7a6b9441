"""UMAP in torch, on CPU or CUDA tensors: the steps of umap-learn 0.5 (McInnes, Healy and Melville 2018),
each a plain function, vectorised over all points and edges as GPU UMAPs run them.

1. :func:`smooth_knn_dist`: each point's rho (distance to its nearest other point) and sigma (the bandwidth
   whose memberships sum to log2(k)), a binary search run for all points at once (umap/umap_.py,
   ``smooth_knn_dist``);
2. :func:`fuzzy_union`: membership strengths exp(-(d - rho) / sigma) of the kNN edges, symmetrised by the
   fuzzy union w + w' - w w' (``compute_membership_strengths``, ``fuzzy_simplicial_set``);
3. :func:`spectral_layout`: the eigenvectors of the graph's normalised Laplacian for its 2nd to (c+1)-th
   smallest eigenvalues, one connected component at a time, the components placed as umap-learn places them
   (umap/spectral.py, ``spectral_layout``, ``multi_component_layout``, ``component_layout``); random when the
   eigensolver fails, as in umap-learn;
4. :func:`optimize_layout`: epochs of edge-sampled attraction and negative-sampled repulsion with umap-learn's
   schedule (an edge of weight w is due every w_max / w epochs and draws 5 negative samples each time it is
   due), its gradients, clipping (4.0) and linearly decaying learning rate, and the move of both ends of an
   edge (umap/layouts.py, ``optimize_layout_euclidean``, ``move_other=True``). Unlike umap-learn, which
   moves the points edge after edge, all edges due in one epoch are applied together (``index_add_``), as
   cuML's GPU UMAP applies them in parallel: their attractions from the positions at the start of the epoch,
   then their negative samples from the positions after the attractions.

Randomness comes from one ``torch.Generator`` seeded with the seed: on the CPU a fit is repeatable bit for
bit; on CUDA up to the order of the floating-point additions of ``index_add_``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

#: umap-learn's constants (umap/umap_.py, umap/layouts.py).
SMOOTH_K_TOLERANCE = 1e-5
MIN_K_DIST_SCALE = 1e-3
BINARY_SEARCH_STEPS = 64
NEGATIVE_SAMPLE_RATE = 5
REPULSION_STRENGTH = 1.0
GRADIENT_CLIP = 4.0
INITIAL_ALPHA = 1.0
#: A component of at most this many points is solved by a dense eigendecomposition, a larger one by LOBPCG.
DENSE_EIGEN_LIMIT = 2048
#: LOBPCG iterations at most (torch.lobpcg) and its tolerance (umap-learn's for its eigensolvers).
LOBPCG_STEPS = 300
LOBPCG_TOLERANCE = 1e-4
#: Due edges handled per block (bounds the memory of one epoch: about 100 bytes per edge and negative sample).
EDGE_BLOCK = 1 << 21


@functools.lru_cache(maxsize=64)
def find_ab_params(spread: float, min_dist: float) -> tuple[float, float]:
    """(a, b) of the low-dimensional similarity 1 / (1 + a d^(2b)) fitted by least squares to 1 below
    ``min_dist`` and exp(-(d - min_dist) / spread) above, on 300 points of [0, 3 spread] (umap-learn's
    ``find_ab_params``, with scipy's ``curve_fit``)."""
    import numpy as np
    from scipy.optimize import curve_fit

    def curve(x, a, b):
        return 1.0 / (1.0 + a * x ** (2 * b))

    xv = np.linspace(0, spread * 3, 300)
    yv = np.where(xv < min_dist, 1.0, np.exp(-(xv - min_dist) / spread))
    params, _ = curve_fit(curve, xv, yv)
    return float(params[0]), float(params[1])


def default_epochs(n: int) -> int:
    """umap-learn's epochs of layout optimisation for n points: 500 up to 10,000 points, else 200."""
    return 500 if n <= 10_000 else 200


def smooth_knn_dist(distances, k: float, *, n_iter: int = BINARY_SEARCH_STEPS):
    """(sigmas (n,), rhos (n,)) float32 tensors for a kNN graph's ``distances`` (n, k') float32, each row
    ascending with the point itself first (distance 0).

    rho: the smallest positive distance of the row (local connectivity 1). sigma: the bandwidth at which
    sum_{j >= 1} exp(-max(0, d_j - rho) / sigma) = log2(``k``), found by ``n_iter`` steps of bisection (doubling
    while unbounded) for all rows at once, stopping a row within 1e-5 of the target; at least 1e-3 x the row's
    mean distance (the mean of all distances where rho is 0). umap-learn's ``smooth_knn_dist``, in float64.
    """
    import torch

    d = distances.to(torch.float64)
    n = d.shape[0]
    target = math.log2(k)
    positive = torch.where(d > 0, d, torch.inf)
    rho = positive.amin(dim=1)
    rho = torch.where(torch.isinf(rho), torch.zeros_like(rho), rho)
    rest = d[:, 1:] - rho[:, None]
    lo = torch.zeros(n, dtype=torch.float64, device=d.device)
    hi = torch.full((n,), torch.inf, dtype=torch.float64, device=d.device)
    mid = torch.ones(n, dtype=torch.float64, device=d.device)
    active = torch.ones(n, dtype=torch.bool, device=d.device)
    for _ in range(n_iter):
        psum = torch.where(rest > 0, torch.exp(-(rest / mid[:, None])), 1.0).sum(dim=1)
        active &= (psum - target).abs() >= SMOOTH_K_TOLERANCE
        if not bool(active.any()):
            break
        above = active & (psum > target)
        below = active & ~(psum > target)
        hi = torch.where(above, mid, hi)
        lo = torch.where(below, mid, lo)
        mid = torch.where(above | (below & torch.isfinite(hi)), (lo + hi) / 2.0, torch.where(below, mid * 2.0, mid))
    floor = torch.where(rho > 0, MIN_K_DIST_SCALE * d.mean(dim=1), MIN_K_DIST_SCALE * d.mean())
    sigma = torch.maximum(mid, floor)
    return sigma.to(torch.float32), rho.to(torch.float32)


def fuzzy_union(indices, distances, sigmas, rhos):
    """The symmetric fuzzy graph of a kNN graph as (rows, cols, weights): int64, int64, float32 tensors of
    its edges with positive weight, sorted by row then column.

    ``indices``/``distances`` (n, k): neighbours of each point (int64, -1 where a row is short; float32).
    Membership of edge i -> j: 0 for j = i, 1 where d <= rho_i or sigma_i = 0, else exp(-(d - rho_i) /
    sigma_i); the graph is the fuzzy union W + W^T - W o W^T (umap-learn's ``compute_membership_strengths`` and
    ``fuzzy_simplicial_set`` with set_op_mix_ratio 1), computed by sorting the edges of both directions on the
    key i n + j.
    """
    import torch

    n, k = indices.shape
    device = indices.device
    rows = torch.arange(n, device=device).repeat_interleave(k)
    cols = indices.reshape(-1).to(torch.int64)
    gap = distances.reshape(-1) - rhos.repeat_interleave(k)
    scale = sigmas.repeat_interleave(k)
    vals = torch.where((gap <= 0) | (scale == 0), torch.ones_like(gap), torch.exp(-gap / scale.clamp_min(1e-38)))
    keep = (cols >= 0) & (cols != rows) & (vals > 0)
    rows, cols, vals = rows[keep], cols[keep], vals[keep].to(torch.float32)
    keys = torch.cat([rows * n + cols, cols * n + rows])
    both = torch.cat([vals, vals])
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    total = torch.zeros(len(unique), dtype=torch.float32, device=device).index_add_(0, inverse, both)
    count = torch.zeros(len(unique), dtype=torch.int64, device=device).index_add_(
        0, inverse, torch.ones_like(inverse))
    product = torch.ones(len(unique), dtype=torch.float32, device=device).scatter_reduce_(
        0, inverse, both, reduce="prod", include_self=True)
    # key (p, q) holds W[p, q] (edge p -> q) and W[q, p] (edge q -> p, transposed) when both exist
    weights = torch.where(count == 2, total - product, total)
    return unique // n, unique % n, weights


def laplacian_eigenvectors(rows, cols, weights, n: int, dim: int, generator):
    """(n, dim) float32: the eigenvectors of the normalised Laplacian I - D^-1/2 W D^-1/2 of a connected graph
    for its 2nd to (dim+1)-th smallest eigenvalues, or None when the eigensolver fails.

    Up to DENSE_EIGEN_LIMIT points, a dense ``torch.linalg.eigh`` in float64; above, ``torch.lobpcg`` on the
    sparse matrix D^-1/2 W D^-1/2 (largest eigenvalues, the same eigenvectors), started as umap-learn starts
    its LOBPCG: the known first eigenvector sqrt(D) beside Gaussian columns.
    """
    import torch

    device = weights.device
    degree = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, rows, weights.to(torch.float64))
    sqrt_deg = degree.sqrt()
    normed = weights.to(torch.float64) / (sqrt_deg[rows] * sqrt_deg[cols])
    k = dim + 1
    try:
        if n <= DENSE_EIGEN_LIMIT:
            laplacian = torch.zeros((n, n), dtype=torch.float64, device=device).index_put_(
                (rows, cols), -normed, accumulate=True)
            laplacian.diagonal().add_(1.0)
            values, vectors = torch.linalg.eigh(laplacian)
            order = torch.argsort(values)[1:k]
        else:
            matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), normed, (n, n),
                                             check_invariants=True).coalesce()
            start = torch.randn((n, k), dtype=torch.float64, device=device, generator=generator)
            start[:, 0] = sqrt_deg / sqrt_deg.norm()
            values, vectors = torch.lobpcg(matrix, k=k, X=start, niter=LOBPCG_STEPS, tol=LOBPCG_TOLERANCE,
                                           largest=True)
            order = torch.argsort(values, descending=True)[1:k]
    except (RuntimeError, ValueError):  # torch.linalg.LinAlgError is a RuntimeError
        return None
    out = vectors[:, order]
    if not bool(torch.isfinite(out).all()):
        return None
    return out.to(torch.float32)


def spectral_layout(x, rows, cols, weights, n: int, dim: int, generator):
    """(n, dim) float32 initial positions: the spectral embedding of the fuzzy graph (umap-learn's
    ``spectral_layout``), or None when an eigensolver fails (the caller then starts at random, as umap-learn).

    A graph of several connected components is laid out as umap-learn's ``multi_component_layout`` lays it
    out: each component's own spectral embedding (uniform random for components of fewer than 2 dim or at
    most dim + 1 points), scaled to half the distance to the nearest other component and centred on the
    component's place: the corners +-e_i for at most 2 dim components, else the spectral embedding of the
    components' centroids in ``x`` (n, d) under the affinity exp(-distance^2) (uniform random places in
    [0, 10]^dim when that affinity underflows and leaves two components in one place).
    """
    import torch

    from rca_gpu.engine.cluster.dbscan import connected_components

    components = connected_components(n, rows, cols)
    ids, labels = torch.unique(components, return_inverse=True)
    count = len(ids)
    if count == 1:
        return laplacian_eigenvectors(rows, cols, weights, n, dim, generator)
    device = weights.device
    if count > 2 * dim:
        meta = component_layout(x, labels, count, dim)
        apart = torch.cdist(meta, meta) + torch.eye(count, dtype=meta.dtype, device=device)
        if not bool(torch.isfinite(meta).all()) or float(apart.min()) < 1e-3:
            # centroids too far apart for the affinity exp(-d^2) (it underflows to 0) put components in one
            # place: random places instead, as umap-learn's component_layout without data
            meta = torch.rand((count, dim), dtype=torch.float64, device=device, generator=generator) * 10.0
    else:
        half = math.ceil(count / 2.0)
        base = torch.cat([torch.eye(half, dtype=torch.float64, device=device),
                          torch.zeros((half, dim - half), dtype=torch.float64, device=device)], dim=1)
        meta = torch.cat([base, -base])[:count]
    gaps = torch.cdist(meta, meta)
    out = torch.empty((n, dim), dtype=torch.float32, device=device)
    position = torch.full((n,), -1, dtype=torch.int64, device=device)
    edge_label = labels[rows]
    for label in range(count):
        members = (labels == label).nonzero().squeeze(1)
        size = len(members)
        others = gaps[label][gaps[label] > 0]
        data_range = float(others.min()) / 2.0 if len(others) else 1.0
        if size < 2 * dim or size <= dim + 1:
            noise = torch.rand((size, dim), dtype=torch.float64, device=device, generator=generator)
            out[members] = ((noise * 2.0 - 1.0) * data_range + meta[label]).to(torch.float32)
            continue
        position[members] = torch.arange(size, device=device)
        inside = edge_label == label
        vectors = laplacian_eigenvectors(position[rows[inside]], position[cols[inside]], weights[inside], size,
                                         dim, generator)
        if vectors is None:
            return None
        vectors = vectors.to(torch.float64)
        vectors *= data_range / vectors.abs().max().clamp_min(1e-30)
        out[members] = (vectors + meta[label]).to(torch.float32)
    return out


def component_layout(x, labels, count: int, dim: int):
    """(count, dim) float64 places of the connected components: the spectral embedding (normalised Laplacian,
    first eigenvector dropped, rows divided by sqrt(degree), as scikit-learn's ``SpectralEmbedding``) of their
    centroids in ``x`` under the affinity exp(-distance^2), scaled to a largest coordinate of 1 (umap-learn's
    ``component_layout``)."""
    import torch

    x = x.to(torch.float64)
    sums = torch.zeros((count, x.shape[1]), dtype=torch.float64, device=x.device).index_add_(0, labels, x)
    sizes = torch.bincount(labels, minlength=count).to(torch.float64)
    centroids = sums / sizes[:, None]
    affinity = torch.exp(-torch.cdist(centroids, centroids) ** 2)
    affinity.fill_diagonal_(0.0)  # scikit-learn's laplacian(normed=True) ignores the diagonal
    sqrt_deg = affinity.sum(dim=1).clamp_min(1e-300).sqrt()
    laplacian = -affinity / (sqrt_deg[:, None] * sqrt_deg[None, :])
    laplacian.diagonal().add_(1.0)
    values, vectors = torch.linalg.eigh(laplacian)
    embedding = vectors[:, torch.argsort(values)[1:dim + 1]] / sqrt_deg[:, None]
    if embedding.shape[1] < dim:  # fewer components than dim + 1: pad as a spectral embedding cannot
        embedding = torch.cat([embedding, torch.zeros((count, dim - embedding.shape[1]), dtype=torch.float64,
                                                      device=x.device)], dim=1)
    return embedding / embedding.max()


def make_epochs_per_sample(weights, n_epochs: int):
    """(e,) float64: every how many epochs each edge is sampled, w_max / w; -1 for an edge of weight 0
    (umap-learn's ``make_epochs_per_sample``)."""
    import torch

    samples = n_epochs * (weights.to(torch.float64) / weights.max())
    return torch.where(samples > 0, float(n_epochs) / samples.clamp_min(1e-300), -1.0)


def optimize_layout(embedding, head, tail, epochs_per_sample, n_epochs: int, a: float, b: float, generator, *,
                    gamma: float = REPULSION_STRENGTH, initial_alpha: float = INITIAL_ALPHA,
                    negative_sample_rate: int = NEGATIVE_SAMPLE_RATE):
    """``embedding`` (n, c) float32, optimised in place for ``n_epochs`` epochs and returned.

    Edge i (``head[i]`` -> ``tail[i]``, int64) is due in epoch t when its next epoch (first
    ``epochs_per_sample[i]``) is <= t. A due edge pulls its ends together with umap-learn's attraction
    -2ab d^(2(b-1)) / (1 + a d^2b) (x_head - x_tail), each coordinate clipped to +-4 and scaled by the learning
    rate (``initial_alpha`` (1 - t'/n_epochs), t' the previous epoch), added to the head and subtracted from the
    tail; then it draws floor((t - next negative epoch) / (epochs_per_sample / rate)) uniform negative
    samples, each pushing the head away with 2 gamma b / ((0.001 + d^2) (1 + a d^2b)) (x_head - x_other),
    clipped. The attractions of all of an epoch's due edges are computed from the positions at its start and
    added together, then its negative samples from the positions after them (umap-learn moves edge after
    edge, each negative sample after its edge's attraction): the result does not depend on EDGE_BLOCK.
    """
    import torch

    device = embedding.device
    n = embedding.shape[0]
    epochs_per_negative = epochs_per_sample / float(negative_sample_rate)
    next_sample = epochs_per_sample.clone()
    next_negative = epochs_per_negative.clone()
    alpha = initial_alpha
    for epoch in range(n_epochs):
        due = ((next_sample <= epoch) & (epochs_per_sample > 0)).nonzero().squeeze(1)
        if len(due):
            blocks = [due[first:first + EDGE_BLOCK] for first in range(0, len(due), EDGE_BLOCK)]
            start = embedding.clone()
            for edges in blocks:
                _attract(embedding, start, head[edges], tail[edges], a, b, alpha)
            attracted = embedding.clone()
            for edges in blocks:
                samples = ((epoch - next_negative[edges]) / epochs_per_negative[edges]).floor().clamp_min(0)
                next_negative[edges] += samples * epochs_per_negative[edges]
                counts = samples.to(torch.int64)
                total = int(counts.sum())
                if total:
                    others = torch.randint(n, (total,), device=device, generator=generator)
                    _repel(embedding, attracted, head[edges].repeat_interleave(counts), others, a, b, gamma, alpha)
            next_sample[due] += epochs_per_sample[due]
        alpha = initial_alpha * (1.0 - float(epoch) / float(n_epochs))
    return embedding


def _attract(embedding, positions, j, k, a: float, b: float, alpha: float) -> None:
    """Add to ``embedding`` the attraction of the edges j -> k (int64) at ``positions``: to j, and its
    opposite to k."""
    import torch

    diff = positions[j] - positions[k]
    d2 = (diff * diff).sum(dim=1)
    safe = d2.clamp_min(1e-30)
    coeff = torch.where(d2 > 0, -2.0 * a * b * safe.pow(b - 1.0) / (a * safe.pow(b) + 1.0), 0.0)
    grad = (coeff[:, None] * diff).clamp_(-GRADIENT_CLIP, GRADIENT_CLIP) * alpha
    embedding.index_add_(0, j, grad)
    embedding.index_add_(0, k, -grad)


def _repel(embedding, positions, heads, others, a: float, b: float, gamma: float, alpha: float) -> None:
    """Add to ``embedding`` the repulsion of each of ``heads`` from its negative sample ``others`` (int64) at
    ``positions``, to the head only (none between identical positions)."""
    import torch

    diff = positions[heads] - positions[others]
    d2 = (diff * diff).sum(dim=1)
    coeff = torch.where(d2 > 0, 2.0 * gamma * b / ((0.001 + d2) * (a * d2.pow(b) + 1.0)), 0.0)
    grad = (coeff[:, None] * diff).clamp_(-GRADIENT_CLIP, GRADIENT_CLIP) * alpha
    embedding.index_add_(0, heads, grad)


def torch_umap(x, indices, distances, *, n_neighbors: int, n_components: int, min_dist: float, seed: int,
               init: Any = None, n_epochs: int | None = None, spread: float = 1.0):
    """(n, n_components) float32 UMAP embedding of ``x`` (n, d) torch tensor, on ``x``'s device.

    ``indices``/``distances`` (n, >= n_neighbors) int64 / float32 tensors: the kNN graph of ``x``, each row
    ascending and starting with the point itself; the first ``n_neighbors`` columns are read. ``init``: None
    (spectral initialisation, random when the eigensolver fails), "random", or an (n, n_components) tensor of
    starting positions; ``n_epochs``: None for umap-learn's default (:func:`default_epochs`). As umap-learn's
    ``simplicial_set_embedding``: edges lighter than w_max / n_epochs are dropped, the start is scaled to a
    largest coordinate of 10 with Gaussian noise of 1e-4 (spectral), identical starting rows are jittered,
    and every coordinate is rescaled to [0, 10] before the optimisation.
    """
    import torch

    device = x.device
    n = int(x.shape[0])
    generator = torch.Generator(device=device).manual_seed(int(seed))
    indices = indices[:, :n_neighbors].to(torch.int64)
    distances = distances[:, :n_neighbors].to(torch.float32)
    sigmas, rhos = smooth_knn_dist(distances, float(n_neighbors))
    rows, cols, weights = fuzzy_union(indices, distances, sigmas, rhos)
    epochs = default_epochs(n) if n_epochs is None else int(n_epochs)
    if len(weights):
        keep = weights >= weights.max() / float(epochs if epochs > 10 else default_epochs(n))
        rows, cols, weights = rows[keep], cols[keep], weights[keep]
    embedding = None
    if init is None:
        embedding = spectral_layout(x, rows, cols, weights, n, n_components, generator) if len(weights) else None
        if embedding is not None:
            embedding = embedding * (10.0 / embedding.abs().max().clamp_min(1e-30))
            embedding += 1e-4 * torch.randn(embedding.shape, device=device, generator=generator)
    elif not isinstance(init, str):
        embedding = jitter_duplicates(torch.as_tensor(init, dtype=torch.float32, device=device).clone(), generator)
    if embedding is None:  # "random", or the eigensolver failed
        embedding = torch.rand((n, n_components), device=device, generator=generator) * 20.0 - 10.0
    low, high = embedding.amin(dim=0), embedding.amax(dim=0)
    embedding = (10.0 * (embedding - low) / (high - low).clamp_min(1e-30)).to(torch.float32).contiguous()
    if epochs <= 0 or not len(weights):
        return embedding
    a, b = find_ab_params(spread, min_dist)
    return optimize_layout(embedding, rows, cols, make_epochs_per_sample(weights, epochs), epochs, a, b, generator)


def jitter_duplicates(start, generator):
    """``start`` (n, c) float32 with Gaussian noise of 0.001 x the mean nearest-neighbour distance added when
    two rows are identical (umap-learn's treatment of a given initialisation), else unchanged."""
    import torch

    from rca_gpu.engine.knn import TorchExact

    if len(torch.unique(start, dim=0)) == len(start) or len(start) < 2:
        return start
    _, distances = TorchExact().search(start, 2)
    scale = 0.001 * float(distances[:, 1].mean())
    return start + scale * torch.randn(start.shape, device=start.device, generator=generator)
