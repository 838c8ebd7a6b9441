"""(stage, algorithm, backend) -> adapter class, imported lazily; the one place that picks CPU or GPU.

Stage code asks ``build("cluster", "dbscan", device, eps=0.5)`` and gets an adapter; it never asks which
device it runs on. An adapter converts nothing itself: it declares the array kind it consumes
(``Implementation.arrays``) and the stage hands it data through :func:`rca_gpu.engine.device.to_kind`.

Fallback policy: a GPU adapter that cannot honour a setting raises UnsupportedOnGPU in its ``__init__`` or,
for limits that depend on the data's shape, in ``check_limits`` (:mod:`rca_gpu.engine.limits`).
Under ``--device auto`` the registry then falls back to the CPU twin and logs why; under ``--device gpu``
it raises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from rca_gpu.engine.device import Device
from rca_gpu.errors import SpecError, UnsupportedOnGPU
from rca_gpu.features import load_target

log = logging.getLogger("rca_gpu")


@dataclass(frozen=True)
class Implementation:
    stage: str  # "knn" | "reduce" | "cluster"
    algorithm: str
    backend: str  # "gpu" | "cpu"
    target: str  # "package.module:Class"
    arrays: str  # array kind the adapter consumes and returns: "numpy" | "torch" | "cupy"
    requires: str = ""  # "cuml" | "cuml_knn" | "cuda" | "faiss_gpu" | "cuvs" | "faiss" | "" (always available)
    library: str = ""

    def available(self, device: Device) -> bool:
        if self.backend == "cpu":
            return self.requires != "faiss" or device.faiss_cpu
        if not device.on_gpu:
            return False
        return {
            "cuml": device.cuml,
            "cuml_knn": device.cuml_knn,
            "faiss_gpu": device.faiss_gpu,
            "cuvs": device.cuvs,
            "cuda": True,
            "": True,
        }[self.requires]

    def why_unavailable(self, device: Device) -> str:
        """One clause for the log: why this implementation cannot be used on ``device``."""
        if self.requires in ("faiss_gpu", "cuvs", "cuml_knn") and device.on_gpu:
            return f"{self.library} is not installed or failed its test search on this GPU"
        return f"{self.library} is not installed"


_I = Implementation
IMPLEMENTATIONS: tuple[Implementation, ...] = (
    # exact and approximate nearest neighbours
    _I("knn", "faiss", "gpu", "rca_gpu.engine.knn:FaissGpuExact", "torch", "faiss_gpu", "faiss-gpu"),
    _I("knn", "cuvs", "gpu", "rca_gpu.engine.knn:CuvsExact", "cupy", "cuvs", "cuvs"),
    _I("knn", "torch", "gpu", "rca_gpu.engine.knn:TorchExact", "torch", "cuda", "torch"),
    _I("knn", "cuml", "gpu", "rca_gpu.engine.knn:CumlExact", "cupy", "cuml_knn", "cuml"),
    _I("knn", "torch", "cpu", "rca_gpu.engine.knn:TorchExact", "torch", "", "torch"),
    _I("knn", "faiss", "cpu", "rca_gpu.engine.knn:FaissExact", "numpy", "faiss", "faiss-cpu"),
    _I("knn", "faiss-hnsw", "cpu", "rca_gpu.engine.knn:FaissHNSW", "numpy", "faiss", "faiss-cpu"),
    _I("knn", "kdtree", "cpu", "rca_gpu.engine.knn:SklearnKDTree", "numpy", "", "scikit-learn"),
    # reduction
    _I("reduce", "umap", "gpu", "rca_gpu.engine.reduce.umap:CumlUMAP", "cupy", "cuml", "cuml"),
    _I("reduce", "umap", "cpu", "rca_gpu.engine.reduce.umap:UmapLearn", "numpy", "", "umap-learn"),
    _I("reduce", "pca", "gpu", "rca_gpu.engine.reduce.umap:TorchPCA", "torch", "cuda", "torch"),
    _I("reduce", "pca", "cpu", "rca_gpu.engine.reduce.umap:SklearnPCA", "numpy", "", "scikit-learn"),
    _I("reduce", "none", "gpu", "rca_gpu.engine.reduce.umap:Identity", "torch", "cuda", "-"),
    _I("reduce", "none", "cpu", "rca_gpu.engine.reduce.umap:Identity", "numpy", "", "-"),
    # clustering
    _I("cluster", "dbscan", "gpu", "rca_gpu.engine.cluster.ward:CumlDBSCAN", "cupy", "cuml", "cuml"),
    _I("cluster", "dbscan", "cpu", "rca_gpu.engine.cluster.ward:SklearnDBSCAN", "numpy", "", "scikit-learn"),
    _I("cluster", "hdbscan", "gpu", "rca_gpu.engine.cluster.ward:CumlHDBSCAN", "cupy", "cuml", "cuml"),
    _I("cluster", "hdbscan", "cpu", "rca_gpu.engine.cluster.ward:FastHDBSCAN", "numpy", "", "fast_hdbscan"),
    _I("cluster", "kmeans", "gpu", "rca_gpu.engine.cluster.ward:CumlKMeans", "cupy", "cuml", "cuml"),
    _I("cluster", "kmeans", "cpu", "rca_gpu.engine.cluster.ward:SklearnKMeans", "numpy", "", "scikit-learn"),
    _I("cluster", "ward", "gpu", "rca_gpu.engine.cluster.ward:CumlWard", "cupy", "cuml", "cuml"),
    _I("cluster", "ward", "cpu", "rca_gpu.engine.cluster.ward:SklearnWard", "numpy", "", "scikit-learn"),
)


class Adapter:
    """Base of every stage adapter: ``__init__`` stores keyword arguments; work happens in the stage call."""

    implementation: Implementation

    def check_limits(self, *, n_samples: int, n_features: int, k: int | None = None) -> None:
        """Raise UnsupportedOnGPU when the library cannot handle this data with these settings.

        ``n_samples`` x ``n_features`` is the shape of the data the adapter will see; ``k`` the neighbours
        per point a kNN adapter will be asked for.

        Called by :func:`build` before any work, so that ``--device auto`` can still fall back to the CPU
        (GPU adapters override it; see :mod:`rca_gpu.engine.limits`).
        """

    def describe(self) -> dict[str, Any]:
        impl = self.implementation
        return {"algorithm": impl.algorithm, "backend": impl.backend, "library": impl.library}


def implementations(stage: str, algorithm: str) -> list[Implementation]:
    found = [i for i in IMPLEMENTATIONS if i.stage == stage and i.algorithm == algorithm]
    if not found:
        raise KeyError(f"no implementation registered for {stage} {algorithm!r}")
    return found


def build(stage: str, algorithm: str, device: Device, *, data: dict[str, int] | None = None,
          **params: Any) -> Adapter:
    """The adapter for ``algorithm`` on ``device``: the first usable GPU one, else the CPU one (see module doc).

    ``data`` ({"n_samples", "n_features"} and, for kNN, "k") lets GPU adapters check the limits of their
    library now (:meth:`Adapter.check_limits`) instead of failing halfway through a fit.
    """
    candidates = implementations(stage, algorithm)
    reasons = []
    if device.on_gpu:
        for impl in candidates:
            if impl.backend != "gpu":
                continue
            if not impl.available(device):
                reasons.append(impl.why_unavailable(device))
                continue
            try:
                adapter = _instantiate(impl, params)
                if data is not None:
                    adapter.check_limits(**data)
                return adapter
            except UnsupportedOnGPU as exc:
                reasons.append(str(exc))
        why = "; ".join(dict.fromkeys(reasons)) or "it has no GPU implementation"
        if device.strict:
            raise UnsupportedOnGPU(
                f"{stage} '{algorithm}' cannot run on the GPU: {why}. Use --device auto to run it on the CPU."
            )
        log.info("%s '%s' runs on the CPU: %s", stage, algorithm, why)
    cpu = next((i for i in candidates if i.backend == "cpu"), None)
    if cpu is None:
        raise UnsupportedOnGPU(f"{stage} '{algorithm}' runs only on a GPU: {'; '.join(reasons) or 'no GPU'}")
    if not cpu.available(device):
        raise SpecError(
            f"The {stage} backend '{algorithm}' needs {cpu.library}, which is not installed. Install it with "
            "pip install 'rca-gpu[cpu]', or choose another backend (auto picks one that is installed)."
        )
    return _instantiate(cpu, params)


def planned_backend(stage: str, algorithm: str, device: Device) -> tuple[str, str]:
    """(backend, library) that :func:`build` would pick for default settings, without building anything.

    For ``rca-gpu doctor``: a setting beyond a GPU library's limits can still move one call to the CPU.
    """
    for impl in implementations(stage, algorithm):
        if impl.backend == "gpu" and device.on_gpu and impl.available(device):
            if impl.target == "rca_gpu.engine.cluster.ward:CumlWard":
                continue  # cuML implements single linkage only: Ward always runs on the CPU
            return impl.backend, impl.library
    cpu = next((i for i in implementations(stage, algorithm) if i.backend == "cpu"), None)
    if cpu is None or not cpu.available(device):
        return "unavailable", cpu.library if cpu else "-"
    return cpu.backend, cpu.library


def _instantiate(impl: Implementation, params: dict[str, Any]) -> Adapter:
    adapter = load_target(impl.target)(**params)
    adapter.implementation = impl
    return adapter
