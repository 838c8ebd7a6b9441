"""Dimensionality reduction: UMAP, PCA, or none, each with a CPU and a GPU adapter.

UMAP reuses the feature set's kNN graph (``precomputed_knn``) instead of searching neighbours again.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from rca_gpu.engine import dispatch as registry, limits
from rca_gpu.engine.device import Device, to_kind
from rca_gpu.engine.knn import KnnGraph
from rca_gpu.engine.dispatch import Adapter


def reduce(
    x: Any,
    algorithm: str,
    params: dict[str, Any],
    device: Device,
    *,
    knn: KnnGraph | None = None,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Embed the rows of ``x``. Returns (embedding in the adapter's array kind, description for run.json)."""
    adapter = registry.build("reduce", algorithm, device, seed=seed,
                             data={"n_samples": int(x.shape[0]), "n_features": int(x.shape[1])}, **params)
    kind = adapter.implementation.arrays
    started = time.perf_counter()
    data = to_kind(x, kind, torch_device=device.torch_device)
    graph = None
    if knn is not None and getattr(adapter, "uses_knn", False):
        graph = (
            to_kind(knn.indices, kind, torch_device=device.torch_device),
            to_kind(knn.distances, kind, torch_device=device.torch_device),
        )
    embedding = adapter.fit_transform(data, knn=graph)
    info = {**adapter.describe(), "params": dict(params), "seconds": round(time.perf_counter() - started, 3),
            "dims": int(embedding.shape[1]), "used_precomputed_knn": graph is not None}
    return embedding, info


class Identity(Adapter):
    """No reduction: clustering sees the features themselves."""

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    def fit_transform(self, x, knn=None):
        return x


class UmapLearn(Adapter):
    """umap-learn on the CPU, fed the shared kNN graph."""

    uses_knn = True

    def __init__(self, *, n_neighbors: int = 15, n_components: int = 2, min_dist: float = 0.1, seed: int = 0):
        self.n_neighbors, self.n_components, self.min_dist, self.seed = n_neighbors, n_components, min_dist, seed

    def fit_transform(self, x, knn=None):
        import umap

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
            init="spectral" if n > self.n_components + 2 else "random",
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*knn_search_index.*")
            warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
            warnings.filterwarnings("ignore", message=".*Graph is not fully connected.*")
            return model.fit_transform(np.asarray(x, dtype=np.float32)).astype(np.float32)


class CumlUMAP(Adapter):
    """cuML UMAP on CuPy arrays, fed the shared kNN graph.

    Output size and initialisation follow the CPU twin (:class:`UmapLearn`) for tiny sets: at most n - 2
    components, spectral initialisation only above n_components + 2 images, random below; cuML's spectral
    initialisation asserts n_samples > n_components mid-fit (:func:`rca_gpu.engine.limits.check_umap_init`).
    """

    uses_knn = True

    def __init__(self, *, n_neighbors: int = 15, n_components: int = 2, min_dist: float = 0.1, seed: int = 0):
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


class SklearnPCA(Adapter):
    """scikit-learn PCA (randomised SVD for large inputs)."""

    def __init__(self, *, n_components: int = 50, seed: int = 0) -> None:
        self.n_components, self.seed = n_components, seed

    def fit_transform(self, x, knn=None):
        from sklearn.decomposition import PCA

        k = min(self.n_components, x.shape[0], x.shape[1])
        return PCA(n_components=k, random_state=self.seed).fit_transform(np.asarray(x, dtype=np.float32))


class TorchPCA(Adapter):
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

