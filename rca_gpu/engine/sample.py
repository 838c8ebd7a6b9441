"""Seeded samples of rows: what the search, the candidate grids and the stability step draw."""

from __future__ import annotations

import numpy as np


def draw_sample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted int64 row indices of a seeded uniform sample of ``size`` of ``n`` rows (all rows if n <= size)."""
    if n <= size:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng([seed, n, size]).choice(n, size, replace=False)).astype(np.int64)


#: Rows of the other images extended to a sample's clusters per block (rca_gpu.tuning.extend): bounds the
#: memory of their feature rows and neighbour lists (65,536 x 1,280 float32 = 320 MiB per block).
EXTEND_BLOCK = 65_536


def extension_blocks(n: int, sample_size: int) -> list[slice]:
    """The blocks (slices of the rows outside the sample, in order) in which the other ``n - sample_size``
    images are extended; none when the sample holds every row."""
    rest = max(0, n - sample_size)
    return [slice(start, min(rest, start + EXTEND_BLOCK)) for start in range(0, rest, EXTEND_BLOCK)]
