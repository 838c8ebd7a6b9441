"""No reduction: the clusterer sees the features themselves.

- identity: the feature kNN graph is the embedding's kNN graph (DBSCAN's eps candidates read it);
- cheap: nothing to fit, nothing to extend, nothing to carry to a resample.
"""

from __future__ import annotations

from rca_gpu.engine.cards import ReducerCard, Twin
from rca_gpu.engine.dispatch import ReduceAdapter


class NoneCard(ReducerCard):
    name = "none"
    summary = "no reduction: the clusterer sees the features"
    cheap = True
    identity = True
    cpu = Twin("Identity", "numpy", "-")
    gpu = (Twin("Identity", "torch", "-", requires="cuda"),)


class Identity(ReduceAdapter):
    """No reduction: clustering sees the features themselves."""

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    def fit_transform(self, x, knn=None):
        return x


CARD = NoneCard()
