"""(stage, algorithm, backend) -> adapter class, imported lazily; the one place that picks CPU or GPU.

Stage code asks ``build("cluster", "dbscan", device, eps=0.5)`` and gets an adapter; it never asks which
device it runs on. An adapter converts nothing itself: it declares the array kind it consumes
(``Implementation.arrays``) and the stage hands it data through :func:`rca_gpu.device.to_kind`.

Fallback policy: a GPU adapter that cannot honour a setting raises UnsupportedOnGPU in its ``__init__``.
Under ``--device auto`` the registry then falls back to the CPU twin and logs why; under ``--device gpu``
it raises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from rca_gpu.device import Device
from rca_gpu.errors import UnsupportedOnGPU
from rca_gpu.features import load_target

log = logging.getLogger("rca_gpu")


@dataclass(frozen=True)
class Implementation:
    stage: str  # "knn" | "reduce" | "cluster"
    algorithm: str
    backend: str  # "gpu" | "cpu"
    target: str  # "package.module:Class"
    arrays: str  # array kind the adapter consumes and returns: "numpy" | "torch" | "cupy"
    requires: str = ""  # "cuml" | "cuda" | "faiss_gpu" | "" (always available)
    library: str = ""

    def available(self, device: Device) -> bool:
        if self.backend == "cpu":
            return True
        if not device.on_gpu:
            return False
        return {"cuml": device.cuml, "faiss_gpu": device.faiss_gpu, "cuda": True, "": True}[self.requires]


_I = Implementation
IMPLEMENTATIONS: tuple[Implementation, ...] = (
    # exact and approximate nearest neighbours
    _I("knn", "faiss", "gpu", "rca_gpu.neighbors:FaissExact", "torch", "faiss_gpu", "faiss-gpu"),
    _I("knn", "torch", "gpu", "rca_gpu.neighbors:TorchExact", "torch", "cuda", "torch"),
    _I("knn", "cuml", "gpu", "rca_gpu.neighbors:CumlExact", "cupy", "cuml", "cuml"),
    _I("knn", "torch", "cpu", "rca_gpu.neighbors:TorchExact", "torch", "", "torch"),
    _I("knn", "faiss", "cpu", "rca_gpu.neighbors:FaissExact", "numpy", "", "faiss-cpu"),
    _I("knn", "faiss-hnsw", "cpu", "rca_gpu.neighbors:FaissHNSW", "numpy", "", "faiss-cpu"),
    _I("knn", "kdtree", "cpu", "rca_gpu.neighbors:SklearnKDTree", "numpy", "", "scikit-learn"),
    # reduction
    _I("reduce", "umap", "gpu", "rca_gpu.reduce:CumlUMAP", "cupy", "cuml", "cuml"),
    _I("reduce", "umap", "cpu", "rca_gpu.reduce:UmapLearn", "numpy", "", "umap-learn"),
    _I("reduce", "pca", "gpu", "rca_gpu.reduce:TorchPCA", "torch", "cuda", "torch"),
    _I("reduce", "pca", "cpu", "rca_gpu.reduce:SklearnPCA", "numpy", "", "scikit-learn"),
    _I("reduce", "none", "gpu", "rca_gpu.reduce:Identity", "torch", "cuda", "-"),
    _I("reduce", "none", "cpu", "rca_gpu.reduce:Identity", "numpy", "", "-"),
    # clustering
    _I("cluster", "dbscan", "gpu", "rca_gpu.cluster:CumlDBSCAN", "cupy", "cuml", "cuml"),
    _I("cluster", "dbscan", "cpu", "rca_gpu.cluster:SklearnDBSCAN", "numpy", "", "scikit-learn"),
    _I("cluster", "hdbscan", "gpu", "rca_gpu.cluster:CumlHDBSCAN", "cupy", "cuml", "cuml"),
    _I("cluster", "hdbscan", "cpu", "rca_gpu.cluster:FastHDBSCAN", "numpy", "", "fast_hdbscan"),
    _I("cluster", "kmeans", "gpu", "rca_gpu.cluster:CumlKMeans", "cupy", "cuml", "cuml"),
    _I("cluster", "kmeans", "cpu", "rca_gpu.cluster:SklearnKMeans", "numpy", "", "scikit-learn"),
    _I("cluster", "ward", "gpu", "rca_gpu.cluster:CumlWard", "cupy", "cuml", "cuml"),
    _I("cluster", "ward", "cpu", "rca_gpu.cluster:SklearnWard", "numpy", "", "scikit-learn"),
)


class Adapter:
    """Base of every stage adapter: ``__init__`` stores keyword arguments; work happens in the stage call."""

    implementation: Implementation

    def describe(self) -> dict[str, Any]:
        impl = self.implementation
        return {"algorithm": impl.algorithm, "backend": impl.backend, "library": impl.library}


def implementations(stage: str, algorithm: str) -> list[Implementation]:
    found = [i for i in IMPLEMENTATIONS if i.stage == stage and i.algorithm == algorithm]
    if not found:
        raise KeyError(f"no implementation registered for {stage} {algorithm!r}")
    return found


def build(stage: str, algorithm: str, device: Device, **params: Any) -> Adapter:
    """The adapter for ``algorithm`` on ``device``: the first usable GPU one, else the CPU one (see module doc)."""
    candidates = implementations(stage, algorithm)
    reasons = []
    if device.on_gpu:
        for impl in candidates:
            if impl.backend != "gpu":
                continue
            if not impl.available(device):
                reasons.append(f"{impl.library} is not installed")
                continue
            try:
                return _instantiate(impl, params)
            except UnsupportedOnGPU as exc:
                reasons.append(str(exc))
        why = "; ".join(dict.fromkeys(reasons)) or "it has no GPU implementation"
        if device.strict:
            raise UnsupportedOnGPU(
                f"{stage} '{algorithm}' cannot run on the GPU: {why}. Use --device auto to run it on the CPU."
            )
        log.info("%s '%s' runs on the CPU: %s", stage, algorithm, why)
    cpu = next(i for i in candidates if i.backend == "cpu")
    return _instantiate(cpu, params)


def _instantiate(impl: Implementation, params: dict[str, Any]) -> Adapter:
    adapter = load_target(impl.target)(**params)
    adapter.implementation = impl
    return adapter
