"""PCA: its card, its CPU implementation (scikit-learn) and GPU twin (torch).

- candidates: ``n_components`` left open is the fewest components that explain PCA_VARIANCE of the variance
  (on a seeded sample), capped at PCA_MAX_COMPONENTS;
- cheap: fitted on every image even when the search runs on a sample, so nothing is extended;
- transfer to a resample: the setting is carried over unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rca_gpu.engine.cards import ReducerCard, Twin
from rca_gpu.engine.device import rows_on_host
from rca_gpu.engine.dispatch import ReduceAdapter
from rca_gpu.engine.params import Param
from rca_gpu.engine.sample import draw_sample

PCA_VARIANCE = 0.9
PCA_MAX_COMPONENTS = 50
#: Rows of the seeded sample on which the explained variance is measured.
PCA_SAMPLE = 5000


class PCACard(ReducerCard):
    name = "pca"
    summary = "principal components (randomised SVD for large inputs)"
    params = {"n_components": Param(int, "at_least_1", high=10_000)}
    limits = {"n_components": lambda n: n}
    limits_use_dims = True
    cheap = True
    cpu = Twin("SklearnPCA", "numpy", "scikit-learn")
    gpu = (Twin("TorchPCA", "torch", "torch", requires="cuda"),)

    def data_limit(self, key: str, n: int, dims: int | None = None) -> int | None:
        high = super().data_limit(key, n, dims)
        if key == "n_components" and high is not None and dims is not None:
            high = min(high, dims)
        return high

    def candidates(self, fixed: Mapping[str, Any], features: Any, *, seed: int = 0,
                   grid: Mapping[str, tuple[Any, ...]] | None = None) -> list[dict[str, Any]]:
        if "n_components" in fixed:
            return [dict(fixed)]
        return [{**fixed, "n_components": pca_components(features, seed=seed)}]


def pca_components(features: Any, *, seed: int = 0) -> int:
    """Fewest principal components that explain PCA_VARIANCE of the variance (on a sample), capped."""
    from sklearn.decomposition import PCA

    sample = rows_on_host(features, draw_sample(int(features.shape[0]), PCA_SAMPLE, seed))
    limit = min(PCA_MAX_COMPONENTS, *sample.shape)
    pca = PCA(n_components=limit, random_state=seed).fit(sample)
    total = float(np.var(sample, axis=0, ddof=1).sum())
    cumulative = np.cumsum(pca.explained_variance_) / total if total > 0 else np.ones(limit)
    return int(min(limit, max(2, np.searchsorted(cumulative, PCA_VARIANCE) + 1)))


class SklearnPCA(ReduceAdapter):
    """scikit-learn PCA (randomised SVD for large inputs)."""

    def __init__(self, *, n_components: int = 50, seed: int = 0) -> None:
        self.n_components, self.seed = n_components, seed

    def fit_transform(self, x, knn=None):
        from sklearn.decomposition import PCA

        k = min(self.n_components, x.shape[0], x.shape[1])
        return PCA(n_components=k, random_state=self.seed).fit_transform(np.asarray(x, dtype=np.float32))


class TorchPCA(ReduceAdapter):
    """PCA by SVD of the centred data in torch, on the GPU (used when cuML is absent, and by default).

    ``torch.pca_lowrank`` draws its random projection from torch's global generator of the data's device;
    it runs inside ``torch.random.fork_rng`` so that seeding it leaves the caller's CPU and CUDA random
    streams as they were.
    """

    def __init__(self, *, n_components: int = 50, seed: int = 0) -> None:
        self.n_components, self.seed = n_components, seed

    def fit_transform(self, x, knn=None):
        import torch

        x = x.float()
        centred = x - x.mean(dim=0, keepdim=True)
        k = min(self.n_components, x.shape[0], x.shape[1])
        # manual_seed seeds every CUDA device, so every one of them is forked and restored
        devices = list(range(torch.cuda.device_count())) if x.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            _, _, v = torch.pca_lowrank(centred, q=min(k + 10, min(x.shape)), center=False, niter=4)
        return centred @ v[:, :k]



CARD = PCACard()
