"""Planted feature vectors: Gaussian clusters of unequal sizes, with rare ones, for quality and scaling tests.

Real failure features (a CNN's pooled activations) are what rca_gpu clusters; this generator makes vectors
of the same shape whose true grouping is known, so selection and scaling can be scored against it without
images::

    from rca_gpu.datasets.planted import planted_features
    x, labels = planted_features(20_000)          # (20000, 1280) float32 unit rows, int64 labels 0..19

The model (all draws from one seed, so the same call gives the same array on every machine):

- ``n_clusters`` centres ``c_j = normalise(sqrt(overlap) g_0 + sqrt(1 - overlap) g_j)`` with ``g`` standard
  Gaussian directions: every pair of centres has cosine ~ ``overlap`` (a shared component, as activations
  of one network share one), so clusters are not trivially orthogonal.
- ``look_alike`` pairs: the last clusters before the rare ones are re-drawn as a twin of another cluster,
  with centre cosine ~ ``look_alike_cosine`` to it (two causes that differ only in one direction, such as
  rotated left vs right).
- a point of cluster ``j`` is ``normalise(c_j + spread_j z / sqrt(dims))``, ``z`` standard Gaussian, with
  ``spread_j`` drawn uniformly in ``spread x [0.8, 1.2]``: unit rows, as rca_gpu's extractors give.
- sizes: the ``rare`` clusters take exactly the given shares of ``n`` (default 1 %, 1.5 %, 2 %: the
  three rare causes); the others share the rest with weights spaced evenly from 1 to ``imbalance``.
  Counts are exact (largest remainder), rows are shuffled.

With the defaults (overlap 0.3, spread 1.0), each point's nearest neighbours lie in its own cluster in
1280 and in 256 dimensions (checked by tests/test_planted.py): the planted grouping is the right answer,
and a method that does not find it has a selection problem, not a data problem.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rca_gpu.errors import SpecError

__all__ = ["planted_features", "planted_sizes"]

#: Rows drawn per block: memory while generating stays at the output array plus one block.
_BLOCK = 65_536


def planted_sizes(n: int, *, n_clusters: int = 20, rare: Sequence[float] = (0.01, 0.015, 0.02),
                  imbalance: float = 4.0) -> np.ndarray:
    """Exact cluster sizes (int64, shape (n_clusters,), summing to ``n``): rare clusters last.

    Raises SpecError when the rare shares leave no room for the others or a cluster would be empty.
    """
    rare = [float(r) for r in rare]
    n_common = n_clusters - len(rare)
    if n_common < 1 or any(r <= 0 for r in rare) or sum(rare) >= 1:
        raise SpecError(
            f"planted_features needs fewer rare clusters than n_clusters and rare shares in (0, 1) summing "
            f"below 1. Got n_clusters={n_clusters}, rare={tuple(rare)} instead."
        )
    if imbalance < 1:
        raise SpecError(f"The 'imbalance' parameter must be >= 1. Got {imbalance} instead.")
    weights = np.linspace(1.0, imbalance, n_common) if n_common > 1 else np.ones(1)
    shares = np.concatenate([weights / weights.sum() * (1.0 - sum(rare)), rare])
    exact = shares * n
    sizes = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - sizes), kind="stable")
    sizes[order[: n - int(sizes.sum())]] += 1
    if (sizes < 1).any():
        raise SpecError(f"planted_features: n={n} is too small for {n_clusters} clusters with rare shares "
                        f"{tuple(rare)}; raise n.")
    return sizes


def planted_features(
    n: int,
    *,
    n_clusters: int = 20,
    dims: int = 1280,
    rare: Sequence[float] = (0.01, 0.015, 0.02),
    look_alike: int = 0,
    look_alike_cosine: float = 0.8,
    overlap: float = 0.3,
    spread: float = 1.0,
    imbalance: float = 4.0,
    seed: int = 0,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Planted clusters in ``dims`` dimensions (see the module docstring for the model).

    Parameters
    ----------
    n : number of rows (>= n_clusters).
    n_clusters : clusters planted, rare ones included.
    dims : feature dimension.
    rare : shares of ``n`` of the rare clusters (labels ``n_clusters - len(rare)`` ... ``n_clusters - 1``).
    look_alike : number of common clusters re-drawn as a close twin of another common cluster.
    look_alike_cosine : cosine between a look-alike centre and its twin's centre.
    overlap : cosine between any two other centres (shared component), in [0, 1).
    spread : within-cluster noise norm relative to the centre norm (1.0: noise as large as the centre).
    imbalance : size ratio of the largest to the smallest common cluster.
    seed : the one seed of every draw.
    out : a float32 (n, dims) array to write the rows into (e.g. a ``numpy.lib.format.open_memmap``, so that
        10 million rows need not fit in memory); default: a new array. The rows are the same either way.

    Returns
    -------
    x : float32 array of shape (n, dims), rows of unit L2 norm (``out`` when given).
    labels : int64 array of shape (n,), the planted cluster of each row, in 0 .. n_clusters - 1.

    Raises
    ------
    SpecError when a parameter is out of range.
    """
    if n < n_clusters or dims < 2:
        raise SpecError(f"planted_features needs n >= n_clusters and dims >= 2. Got n={n}, "
                        f"n_clusters={n_clusters}, dims={dims} instead.")
    if not 0 <= overlap < 1 or not 0 < look_alike_cosine < 1 or spread <= 0:
        raise SpecError(f"planted_features needs 0 <= overlap < 1, 0 < look_alike_cosine < 1, spread > 0. Got "
                        f"overlap={overlap}, look_alike_cosine={look_alike_cosine}, spread={spread} instead.")
    sizes = planted_sizes(n, n_clusters=n_clusters, rare=rare, imbalance=imbalance)
    n_common = n_clusters - len(rare)
    if not 0 <= 2 * look_alike <= n_common:
        raise SpecError(f"The 'look_alike' parameter must be between 0 and {n_common // 2} (pairs among the "
                        f"common clusters). Got {look_alike} instead.")
    seeds = np.random.SeedSequence(seed).spawn(3)
    rng = np.random.default_rng(seeds[0])
    shared = _unit(rng.standard_normal(dims))
    own = _unit(rng.standard_normal((n_clusters, dims)))
    centres = np.sqrt(overlap) * shared + np.sqrt(1.0 - overlap) * own
    for pair in range(look_alike):
        twin, source = n_common - 1 - pair, pair
        # the twin keeps look_alike_cosine of its source's centre and adds an orthogonal-ish direction
        centres[twin] = look_alike_cosine * _unit(centres[source]) + np.sqrt(1 - look_alike_cosine**2) * own[twin]
    centres = _unit(centres)
    spreads = spread * rng.uniform(0.8, 1.2, n_clusters)

    labels = np.repeat(np.arange(n_clusters, dtype=np.int64), sizes)
    np.random.default_rng(seeds[1]).shuffle(labels)
    if out is not None and (out.shape != (n, dims) or out.dtype != np.float32):
        raise SpecError(f"planted_features writes into a float32 array of shape {(n, dims)}. Got "
                        f"{out.dtype} {tuple(out.shape)} instead.")
    x = np.empty((n, dims), dtype=np.float32) if out is None else out
    block_seeds = seeds[2].spawn((n + _BLOCK - 1) // _BLOCK)
    scale = (spreads / np.sqrt(dims)).astype(np.float32)
    centres32 = centres.astype(np.float32)
    for b, start in enumerate(range(0, n, _BLOCK)):
        stop = min(n, start + _BLOCK)
        block = np.random.default_rng(block_seeds[b]).standard_normal((stop - start, dims), dtype=np.float32)
        rows = labels[start:stop]
        block *= scale[rows, None]
        block += centres32[rows]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[start:stop] = block
    return x, labels


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)
