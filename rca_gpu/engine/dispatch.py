"""The one place that picks CPU or GPU: from an algorithm's implementations, the adapter for this device.

A card (:mod:`rca_gpu.engine.cards`) or the kNN table (:mod:`rca_gpu.engine.knn`) lists its implementations
as :class:`Implementation` rows that name each adapter class by import path; :func:`build` imports the one it
picks, so nothing of cuML, FAISS or umap-learn loads before a stage runs. Stage code never asks which device
it runs on. An adapter converts nothing itself: it declares the array kind it consumes
(``Implementation.arrays``) and the stage hands it data through :func:`rca_gpu.engine.device.to_kind`.

Fallback policy: a GPU adapter that cannot honour a setting raises UnsupportedOnGPU in its ``__init__`` or,
for limits that depend on the data's shape, in ``check_limits`` (:mod:`rca_gpu.engine.limits`).
Under ``--device auto`` :func:`build` then falls back to the CPU twin and logs why; under ``--device gpu``
it raises. A GPU fit that fails while it runs (out of memory, a CUDA or library error: :func:`gpu_failure`)
is handled by :func:`run`: under ``--device auto`` the CPU twin fits again, the reason is logged and kept
in ``Device.fallbacks`` (run.json, "device"); under ``--device gpu`` it raises DeviceError, one line.
Every adapter that ran is recorded in ``Device.backends`` (run.json, "device": stage and algorithm ->
backend and library), which benchmarks/gpu_check.sh asserts.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rca_gpu.engine.device import Device
from rca_gpu.errors import DeviceError, SpecError, UnsupportedOnGPU

log = logging.getLogger("rca_gpu")


@dataclass(frozen=True)
class Implementation:
    """One implementation of an algorithm: its adapter class by import path and what it needs.

    ``requires`` names the :class:`~rca_gpu.engine.device.Device` flag a GPU adapter needs ("cuml",
    "cuml_knn", "cuda", "faiss_gpu", "cuvs"; "" = always available), or "faiss" for a CPU adapter that needs
    faiss-cpu. ``always_refuses``: the adapter exists only to say why the library cannot run the algorithm
    (it raises UnsupportedOnGPU for every setting); ``rca-gpu doctor`` does not plan it.
    """

    stage: str  # "knn" | "reduce" | "cluster"
    algorithm: str
    backend: str  # "gpu" | "cpu"
    target: str  # "package.module:Class"
    arrays: str  # array kind the adapter consumes and returns: "numpy" | "torch" | "cupy"
    requires: str = ""
    library: str = ""
    always_refuses: bool = False

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


class KnnAdapter(Adapter):
    """A neighbour search: ``search(x, k)`` -> (indices (n, k), distances (n, k)), each point first."""

    def search(self, x: Any, k: int) -> tuple[Any, Any]:
        raise NotImplementedError


class ReduceAdapter(Adapter):
    """A reducer: ``fit_transform(x, knn)`` -> (n, c) embedding; ``uses_knn``: it reads the shared kNN graph
    (``knn`` = (indices, distances) in its array kind)."""

    uses_knn: bool = False

    def fit_transform(self, x: Any, knn: tuple[Any, Any] | None = None) -> Any:
        raise NotImplementedError


class ClusterAdapter(Adapter):
    """A clusterer: ``fit_predict(x)`` -> (n,) labels, -1 = noise."""

    def fit_predict(self, x: Any) -> Any:
        raise NotImplementedError


def load_target(target: str) -> Any:
    """Import ``package.module:Name`` and return the object."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def build(candidates: Sequence[Implementation], device: Device, *, data: dict[str, int] | None = None,
          **params: Any) -> Adapter:
    """The adapter for one algorithm on ``device``: the first usable GPU one, else the CPU one (see module doc).

    ``candidates`` are the algorithm's implementations (one stage, one algorithm). ``data`` ({"n_samples",
    "n_features"} and, for kNN, "k") lets GPU adapters check the limits of their library now
    (:meth:`Adapter.check_limits`) instead of failing halfway through a fit.

    Raises
    ------
    UnsupportedOnGPU
        ``--device gpu`` and no GPU implementation can run this setting (with every reason), or the
        algorithm has no CPU implementation.
    SpecError
        The CPU implementation's library is not installed (with the package to install).
    """
    if not candidates:
        raise KeyError("no implementation given")
    stage, algorithm = candidates[0].stage, candidates[0].algorithm
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


def planned_backend(candidates: Sequence[Implementation], device: Device) -> tuple[str, str]:
    """(backend, library) that :func:`build` would pick for default settings, without building anything.

    For ``rca-gpu doctor``: a setting beyond a GPU library's limits can still move one call to the CPU.
    """
    for impl in candidates:
        if impl.backend == "gpu" and device.on_gpu and impl.available(device) and not impl.always_refuses:
            return impl.backend, impl.library
    cpu = next((i for i in candidates if i.backend == "cpu"), None)
    if cpu is None or not cpu.available(device):
        return "unavailable", cpu.library if cpu else "-"
    return cpu.backend, cpu.library


def _instantiate(impl: Implementation, params: dict[str, Any]) -> Adapter:
    adapter = load_target(impl.target)(**params)
    adapter.implementation = impl
    return adapter


# --------------------------------------------------------------------------------------------------
# Running an adapter, with a CPU fall-back for GPU failures during the fit
# --------------------------------------------------------------------------------------------------

#: Words of an error message that say a GPU library or the CUDA runtime failed (cuML and RAFT raise
#: RuntimeError "RAFT failure at file=...", "CUDA error encountered at ..."; RMM MemoryError
#: "std::bad_alloc: out_of_memory: RMM failure ..."; torch torch.OutOfMemoryError "CUDA out of memory").
GPU_ERROR_WORDS = re.compile(r"cuda|cublas|cusolver|cusparse|cudnn|nccl|raft failure|rmm|cuml|cuvs|out of memory"
                             r"|out_of_memory|illegal memory access|device-side assert", re.IGNORECASE)


def gpu_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a GPU adapter during a fit, is a failure of the GPU rather than of the data.

    True for memory errors (RMM's std::bad_alloc surfaces as MemoryError, CuPy's OutOfMemoryError is one),
    errors whose class names CUDA or out-of-memory (cupy_backends.cuda.api.runtime.CUDARuntimeError,
    torch.OutOfMemoryError), a late UnsupportedOnGPU, and RuntimeErrors whose message names CUDA or a RAPIDS
    library (:data:`GPU_ERROR_WORDS`). Anything else (a ValueError of the data) would fail on the CPU as well
    and is raised as it is.
    """
    if isinstance(exc, (MemoryError, UnsupportedOnGPU)):
        return True
    name = type(exc).__name__
    if "CUDA" in name.upper() or "OUTOFMEMORY" in name.upper():
        return True
    return isinstance(exc, RuntimeError) and bool(GPU_ERROR_WORDS.search(str(exc)))


def record(device: Device, adapter: Adapter) -> None:
    """Note in ``device.backends`` that ``adapter`` ran (run.json, "device", "backends")."""
    impl = adapter.implementation
    ran = device.backends.setdefault(f"{impl.stage} {impl.algorithm}", [])
    label = f"{impl.backend} {impl.library}"
    if label not in ran:
        ran.append(label)


def run(candidates: Sequence[Implementation], device: Device, work: Callable[[Adapter], Any], *,
        data: dict[str, int] | None = None, **params: Any) -> tuple[Adapter, Any]:
    """Build the adapter (:func:`build`) and return ``(adapter, work(adapter))``; fall back when the GPU fails.

    ``work`` does the stage's call on the adapter it is given, converting its inputs to
    ``adapter.implementation.arrays`` itself (it runs again on the CPU adapter after a GPU failure).

    Raises
    ------
    DeviceError
        ``--device gpu`` and the GPU fit failed (:func:`gpu_failure`): one line with the stage, the library
        and the error, and the fix.
    """
    adapter = build(candidates, device, data=data, **params)
    impl = adapter.implementation
    if impl.backend != "gpu":
        record(device, adapter)
        return adapter, work(adapter)
    if impl.arrays == "cupy":
        from rca_gpu.engine.device import release_torch_cache

        release_torch_cache()  # torch's idle blocks back to the driver, for cuML's memory pool
    try:
        result = work(adapter)
    except Exception as exc:
        if not gpu_failure(exc):
            raise
        what = f"{impl.stage} '{impl.algorithm}' failed on the GPU ({impl.library}): {type(exc).__name__}: " + \
            " ".join(str(exc).split())[:300]
        if device.strict:
            raise DeviceError(f"{what}. Use --device auto to run such a step on the CPU instead.") from exc
        cpu = next((i for i in candidates if i.backend == "cpu"), None)
        if cpu is None or not cpu.available(device):
            raise DeviceError(f"{what}; it has no CPU implementation to fall back to.") from exc
        log.warning("%s; running it on the CPU (%s) instead", what, cpu.library)
        device.fallbacks.append(f"{what}; ran on the CPU ({cpu.library})")
        adapter = _instantiate(cpu, params)
        record(device, adapter)
        return adapter, work(adapter)
    record(device, adapter)
    return adapter, result
