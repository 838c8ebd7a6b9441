"""Seeded samples of rows: what the search, the candidate grids and the stability step draw."""

from __future__ import annotations

import numpy as np


def draw_sample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted int64 row indices of a seeded uniform sample of ``size`` of ``n`` rows (all rows if n <= size)."""
    if n <= size:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng([seed, n, size]).choice(n, size, replace=False)).astype(np.int64)
