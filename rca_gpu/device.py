"""Where computation runs, and the ONLY module that moves arrays between libraries or devices.

``resolve_device("auto" | "cpu" | "gpu")`` decides once per run. Arrays cross between torch, CuPy and NumPy
only through :func:`to_kind` (and its shorthands): on the GPU by DLPack, zero-copy, after synchronising
torch's stream so that the consumer sees finished data.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

from rca_gpu.errors import GPU_INSTALL_HINT, DeviceError

log = logging.getLogger("rca_gpu")

ARRAY_KINDS = ("numpy", "torch", "cupy")


@dataclass(frozen=True)
class Device:
    """The resolved device policy of one run.

    Attributes
    ----------
    requested: what the user asked for ("auto" | "cpu" | "gpu").
    torch_device: "cuda" or "cpu": where features, exact kNN and torch PCA run.
    cuml: cuML and CuPy import, so UMAP / DBSCAN / HDBSCAN / K-means / PCA can run on the GPU.
    faiss_gpu: FAISS was built with GPU support.
    reason: one line saying why, for the log and run.json.
    """

    requested: str
    torch_device: str
    cuml: bool
    faiss_gpu: bool
    reason: str
    gpu_name: str | None = None

    @property
    def on_gpu(self) -> bool:
        return self.torch_device == "cuda"

    @property
    def strict(self) -> bool:
        """The user demanded the GPU: no silent CPU fallback."""
        return self.requested == "gpu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "torch_device": self.torch_device,
            "cuml": self.cuml,
            "faiss_gpu": self.faiss_gpu,
            "gpu_name": self.gpu_name,
            "reason": self.reason,
        }


def _cuml_importable() -> tuple[bool, str]:
    if importlib.util.find_spec("cuml") is None or importlib.util.find_spec("cupy") is None:
        return False, "cuML/CuPy are not installed"
    try:
        import cupy  # noqa: F401
        import cuml  # noqa: F401
    except Exception as exc:  # a broken CUDA install raises many kinds of errors
        return False, f"cuML failed to import ({type(exc).__name__}: {exc})"
    return True, ""


def _faiss_gpu() -> bool:
    if importlib.util.find_spec("faiss") is None:
        return False
    try:
        import faiss

        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:
        return False


def resolve_device(requested: str = "auto") -> Device:
    """Decide where the run computes. Logs one line with the reason.

    - ``cpu``: everything on the CPU.
    - ``gpu``: CUDA and cuML must be usable, else DeviceError with the install hint.
    - ``auto``: the GPU when torch sees CUDA; cuML stages on the GPU when cuML imports, otherwise they run
      on the CPU while kNN and PCA stay on the GPU in torch.
    """
    if requested not in ("auto", "cpu", "gpu"):
        raise DeviceError(f"The --device option must be auto, cpu or gpu. Got {requested!r} instead.")
    if requested == "cpu":
        device = Device("cpu", "cpu", False, False, "--device cpu requested")
        log.info("device: cpu (requested)")
        return device

    import torch

    if not torch.cuda.is_available():
        if requested == "gpu":
            raise DeviceError(f"--device gpu needs a CUDA GPU, and torch sees none; {GPU_INSTALL_HINT}.")
        device = Device("auto", "cpu", False, False, "no CUDA device visible to torch, running on the CPU")
        log.info("device: cpu (%s)", device.reason)
        return device

    name = torch.cuda.get_device_name()
    cuml_ok, why_not = _cuml_importable()
    faiss_ok = _faiss_gpu()
    if requested == "gpu" and not cuml_ok:
        raise DeviceError(f"--device gpu needs cuML on the GPU, but {why_not}; {GPU_INSTALL_HINT}.")
    if cuml_ok:
        reason = f"CUDA GPU {name} with cuML" + (" and FAISS-GPU" if faiss_ok else "")
    else:
        reason = (
            f"CUDA GPU {name}; {why_not}, so UMAP and clustering run on the CPU while features, kNN and PCA "
            "run on the GPU in torch"
        )
    device = Device(requested, "cuda", cuml_ok, faiss_ok, reason, name)
    log.info("device: gpu (%s)", reason)
    return device


def cpu_device(reason: str = "CPU") -> Device:
    """A CPU-only Device without probing anything (tests, tools)."""
    return Device("cpu", "cpu", False, False, reason)


# --------------------------------------------------------------------------------------------------
# Array hand-off
# --------------------------------------------------------------------------------------------------


def kind_of(x: Any) -> str:
    """'numpy' | 'torch' | 'cupy' for an array, by its module (no import of torch or cupy needed)."""
    module = type(x).__module__.split(".")[0]
    if module == "torch":
        return "torch"
    if module == "cupy":
        return "cupy"
    return "numpy"


def to_kind(x: Any, kind: str, *, torch_device: str = "cpu") -> Any:
    """Convert ``x`` to the array library ``kind``; zero-copy via DLPack between torch and CuPy on the GPU.

    - to "numpy": copies device data to the host (the only device->host transfer point).
    - to "cupy": torch CUDA tensors are shared by DLPack; host data is uploaded.
    - to "torch": CuPy arrays are shared by DLPack; NumPy arrays are wrapped, then moved to torch_device.
    """
    source = kind_of(x)
    if kind not in ARRAY_KINDS:
        raise ValueError(f"unknown array kind {kind!r}")
    if source == kind:
        if kind == "torch" and x.device.type != torch_device:
            return x.to(torch_device)
        return x
    if kind == "numpy":
        if source == "torch":
            return x.detach().cpu().numpy()
        import cupy

        return cupy.asnumpy(x)
    if kind == "cupy":
        import cupy

        if source == "torch":
            if x.device.type == "cuda":
                import torch

                torch.cuda.current_stream(x.device).synchronize()
                return cupy.from_dlpack(x.detach().contiguous())
            return cupy.asarray(x.detach().numpy())
        return cupy.asarray(x)
    # kind == "torch"
    import torch

    if source == "cupy":
        return torch.from_dlpack(x).to(torch_device)
    import numpy as np

    return torch.from_numpy(np.ascontiguousarray(x)).to(torch_device)


def as_numpy(x: Any):
    return to_kind(x, "numpy")


def as_torch(x: Any, torch_device: str = "cpu"):
    return to_kind(x, "torch", torch_device=torch_device)


def as_cupy(x: Any):
    return to_kind(x, "cupy")
