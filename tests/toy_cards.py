"""A clusterer in one file: k-centres by farthest-first traversal (Gonzalez 1985), as a plug-in card.

Register it with ``rca-gpu --plugin toy_cards ...`` (the module must be importable), or declare it in your
package's metadata::

    [project.entry-points."rca_gpu.clusterers"]
    kcenters = "toy_cards:CARD"
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rca_gpu.engine.cards import ClusterCard, Twin
from rca_gpu.engine.dispatch import ClusterAdapter
from rca_gpu.engine.params import Param


class KCentersCard(ClusterCard):
    name = "kcenters"
    summary = "k centres picked farthest-first; each image joins its nearest centre (no noise)"
    params = {"k": Param(int, "at_least_2", high=64)}
    limits = {"k": lambda n: n - 1}
    min_images = 3
    granularity = "k"
    counts_clusters = True
    cpu = Twin("FarthestFirst", "numpy", "numpy")

    def candidates(self, fixed, embedding_graph, n, *, distinct=None):
        if "k" in fixed:
            return [dict(fixed)]
        top = min(12, n // 5, distinct or n)
        return [{"k": k} for k in range(2, max(3, top + 1)) if k < n]


class FarthestFirst(ClusterAdapter):
    """Labels (n,) int64 of the nearest of k centres chosen farthest-first from a seeded first centre."""

    def __init__(self, *, k: int, seed: int = 0) -> None:
        self.k, self.seed = k, seed

    def fit_predict(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        centres = [int(np.random.default_rng(self.seed).integers(len(x)))]
        nearest = np.linalg.norm(x - x[centres[0]], axis=1)
        while len(centres) < min(self.k, len(x)):
            centres.append(int(np.argmax(nearest)))
            nearest = np.minimum(nearest, np.linalg.norm(x - x[centres[-1]], axis=1))
        distances = np.linalg.norm(x[:, None, :] - x[centres][None, :, :], axis=2)
        return distances.argmin(axis=1).astype(np.int64)


CARD = KCentersCard()
