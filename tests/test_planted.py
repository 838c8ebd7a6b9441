"""The planted-feature generator: shapes, exact sizes, determinism, and that its grouping is the right answer."""

from __future__ import annotations

import numpy as np
import pytest

from rca_gpu.datasets.planted import planted_features, planted_sizes
from rca_gpu.errors import SpecError


def _knn_purity(x: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    sims = x @ x.T
    np.fill_diagonal(sims, -2.0)
    nearest = np.argpartition(-sims, k, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean())


@pytest.mark.parametrize("dims", [1280, 256])
def test_planted_rows_sizes_and_grouping(dims):
    x, labels = planted_features(3000, dims=dims, seed=1)
    assert x.shape == (3000, dims) and x.dtype == np.float32 and labels.dtype == np.int64
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    counts = np.bincount(labels, minlength=20)
    assert counts.tolist() == planted_sizes(3000).tolist()
    assert counts[-3:].tolist() == [30, 45, 60]  # the rare clusters: exactly 1 %, 1.5 %, 2 %
    assert counts[:17].min() < counts[:17].max() / 3  # unequal sizes
    assert _knn_purity(x, labels) > 0.999


def test_planted_is_deterministic_and_seeded():
    a, la = planted_features(500, dims=64, seed=3)
    b, lb = planted_features(500, dims=64, seed=3)
    c, _ = planted_features(500, dims=64, seed=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


def test_look_alike_pairs_are_closer_than_other_clusters():
    x, labels = planted_features(4000, dims=256, look_alike=2, seed=0)
    centres = np.stack([x[labels == j].mean(0) for j in range(20)])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cos = centres @ centres.T
    assert cos[0, 16] > cos[1, 2] + 0.3 and cos[1, 15] > cos[3, 4] + 0.3
    assert _knn_purity(x, labels) > 0.99


def test_planted_rejects_bad_parameters():
    with pytest.raises(SpecError, match="rare shares"):
        planted_sizes(1000, rare=(0.6, 0.5))
    with pytest.raises(SpecError, match="n >= n_clusters"):
        planted_features(10, n_clusters=20)
    with pytest.raises(SpecError, match="'look_alike' parameter"):
        planted_features(1000, dims=16, look_alike=9)
