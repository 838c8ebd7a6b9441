"""Where computation runs, and the ONLY module that moves arrays between libraries or devices.

``resolve_device("auto" | "cpu" | "gpu")`` decides once per run. Arrays cross between torch, CuPy and NumPy
only through :func:`to_kind` (and its shorthands): on the GPU by DLPack, zero-copy, after synchronising
torch's stream so that the consumer sees finished data.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass, field
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
    cuml: cuML and CuPy import, so UMAP / DBSCAN / HDBSCAN / K-means can run on the GPU.
    faiss_gpu: FAISS was built with GPU support and a tiny search on this GPU succeeded (in a subprocess).
    reason: one line saying why, for the log and run.json.
    gpu_name: the GPU's name, when one is used.
    cuvs: cuVS imports and a tiny brute-force search on this GPU succeeded (in a subprocess).
    cuml_knn: cuML's NearestNeighbors ran a tiny search on this GPU (in a subprocess).
    compute_capability: (major, minor) of the GPU, e.g. (9, 0) for an H100 / H200.
    notes: why a GPU library is installed but not used (failed probes, memory pool), for run.json.
    simulated: the simulated GPU of CI (:mod:`rca_gpu.engine.simgpu`): GPU adapters run on the CPU behind
        stand-ins of CuPy, cuML and cuVS, torch on CPU tensors.
    fallbacks: the GPU fits that failed under ``--device auto`` and ran again on the CPU, one line each
        (appended by :func:`rca_gpu.engine.dispatch.run`; recorded in run.json).
    backends: "stage algorithm" -> the "backend library" of every adapter that ran, e.g. "cluster dbscan" ->
        ["gpu cuml"] (:func:`rca_gpu.engine.dispatch.record`; benchmarks/gpu_check.sh asserts it).
    """

    requested: str
    torch_device: str
    cuml: bool
    faiss_gpu: bool
    reason: str
    gpu_name: str | None = None
    cuvs: bool = False
    cuml_knn: bool = False
    compute_capability: tuple[int, int] | None = None
    notes: tuple[str, ...] = ()
    simulated: bool = False
    fallbacks: list[str] = field(default_factory=list, compare=False)
    backends: dict[str, list[str]] = field(default_factory=dict, compare=False)

    @property
    def on_gpu(self) -> bool:
        return self.torch_device == "cuda" or self.simulated

    @property
    def strict(self) -> bool:
        """The user demanded the GPU: no silent CPU fallback."""
        return self.requested == "gpu"

    @property
    def faiss_cpu(self) -> bool:
        """A FAISS build is installed (the CPU index types work with any build)."""
        return faiss_installed()

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "torch_device": self.torch_device,
            "cuml": self.cuml,
            "faiss_gpu": self.faiss_gpu,
            "cuvs": self.cuvs,
            "cuml_knn": self.cuml_knn,
            "gpu_name": self.gpu_name,
            "compute_capability": list(self.compute_capability) if self.compute_capability else None,
            "reason": self.reason,
            "notes": list(self.notes),
            "simulated": self.simulated,
            "fallbacks": list(self.fallbacks),
            "backends": {key: list(value) for key, value in self.backends.items()},
        }


def own_record(device: Device) -> Device:
    """The same device with its own copy of what it records (``backends``, ``fallbacks``): each run of a study
    records the stages it ran, starting from what the shared stages (features, kNN graph) ran on, not what
    the study's earlier pipelines ran."""
    import dataclasses

    return dataclasses.replace(device, fallbacks=list(device.fallbacks),
                               backends={key: list(value) for key, value in device.backends.items()})


@functools.lru_cache(maxsize=1)
def faiss_installed() -> bool:
    """Whether ``import faiss`` can find a module (nothing is imported)."""
    return importlib.util.find_spec("faiss") is not None


def _cuml_importable() -> tuple[bool, str]:
    if importlib.util.find_spec("cuml") is None or importlib.util.find_spec("cupy") is None:
        return False, "cuML/CuPy are not installed"
    try:
        import cuml  # noqa: F401
        import cupy  # noqa: F401
    except Exception as exc:  # a broken CUDA install raises many kinds of errors
        return False, f"cuML failed to import ({type(exc).__name__}: {exc})"
    return True, ""


# --------------------------------------------------------------------------------------------------
# Probing the GPU kNN backends
# --------------------------------------------------------------------------------------------------

#: Seconds one probe may take (importing cuML on a cold cache takes tens of seconds).
PROBE_TIMEOUT = 180

#: A tiny exact search per backend, run in a child process: a library without machine code for this GPU
#: can abort() the process (FAISS does), which no ``try`` in this process could catch. Each script prints
#: "ok" only when the search found every point as its own nearest neighbour.
_PROBE_SETUP = (
    "import numpy as np\n"
    "x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)\n"
)
_PROBE_CHECK = "assert (np.asarray(idx)[:, 0] == np.arange(64)).all(), 'wrong neighbours'\nprint('ok')\n"
PROBES: dict[str, tuple[str, str]] = {
    # backend: (module that must be installed, script)
    "faiss": (
        "faiss",
        _PROBE_SETUP
        + "import faiss\n"
        "assert faiss.get_num_gpus() > 0, 'FAISS sees no GPU (a CPU-only build?)'\n"
        "index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), 8)\n"
        "index.add(x)\n"
        "_, idx = index.search(x, 4)\n"
        + _PROBE_CHECK,
    ),
    "cuvs": (
        "cuvs",
        _PROBE_SETUP
        + "import cupy as cp\n"
        "from cuvs.neighbors import brute_force\n"
        "d = cp.asarray(x)\n"
        "_, idx = brute_force.search(brute_force.build(d), d, 4)\n"
        "idx = cp.asnumpy(cp.asarray(idx))\n"
        + _PROBE_CHECK,
    ),
    "cuml": (
        "cuml",
        _PROBE_SETUP
        + "import cupy as cp\n"
        "from cuml.neighbors import NearestNeighbors\n"
        "d = cp.asarray(x)\n"
        "_, idx = NearestNeighbors(n_neighbors=4, algorithm='brute', output_type='cupy').fit(d).kneighbors(d)\n"
        "idx = cp.asnumpy(idx)\n"
        + _PROBE_CHECK,
    ),
}


def _describe_failure(returncode: int, output: str) -> str:
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    last = lines[-1][:300] if lines else "no output"
    if returncode < 0:
        signal_name = {6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV"}.get(-returncode, f"signal {-returncode}")
        return f"the process died with {signal_name} ({last})"
    return last


@functools.lru_cache(maxsize=1)
def probe_knn_backends(timeout: float = PROBE_TIMEOUT) -> dict[str, tuple[bool, str]]:
    """Run a tiny GPU search with every installed GPU kNN library, each in its own child process.

    Returns ``{backend: (worked, why_not)}`` for "faiss", "cuvs" and "cuml"; a library that is not installed
    reports ``(False, "not installed")`` without starting a process. The probes run in parallel and their
    result is kept for the life of the process.
    """
    import subprocess
    import sys

    results: dict[str, tuple[bool, str]] = {}
    running = {}
    for backend, (module, script) in PROBES.items():
        if importlib.util.find_spec(module) is None:
            results[backend] = (False, "not installed")
            continue
        running[backend] = subprocess.Popen(  # noqa: S603 - our own fixed script, run by this interpreter
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    for backend, process in running.items():
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            results[backend] = (False, f"a tiny search did not finish within {timeout:.0f} s")
            continue
        if process.returncode == 0 and output.strip().endswith("ok"):
            results[backend] = (True, "")
        else:
            results[backend] = (False, "a tiny search failed: " + _describe_failure(process.returncode, output))
    return results


# --------------------------------------------------------------------------------------------------
# One memory pool
# --------------------------------------------------------------------------------------------------

#: Set to "0" to keep torch's and CuPy's own caching allocators instead of one RMM pool.
MEMORY_POOL_ENV = "RCA_GPU_RMM_POOL"
#: Bytes the RMM pool takes when it is set up; it grows as the libraries ask for more (a multiple of 256).
RMM_INITIAL_POOL_BYTES = 256 << 20


@functools.lru_cache(maxsize=1)
def share_memory_pool() -> str:
    """Route CuPy's and torch's CUDA allocations through one RMM pool (where RMM is installed, as with cuML).

    Done once per process (later calls return the first outcome).

    Three caching allocators (torch, CuPy, RMM for cuML) each keep the memory they once used, so a large run
    can fail for want of memory that another library holds idle. torch's allocator can only be swapped
    before torch initialises CUDA: ``torch.cuda.memory.change_current_allocator`` refuses an allocator that
    was initialised, and any call that reaches ``torch.cuda._lazy_init`` (``get_device_name``,
    ``mem_get_info``, a tensor on the GPU) initialises it. :func:`resolve_device` therefore calls this before
    any such call; when torch was initialised earlier anyway (a caller's own CUDA work) the pools stay
    separate and :func:`release_torch_cache` hands torch's idle blocks back before each cuML fit. Returns a
    line for the log saying what happened.
    """
    import os

    if os.environ.get(MEMORY_POOL_ENV, "1") == "0":
        return f"memory pools: separate ({MEMORY_POOL_ENV}=0)"
    if importlib.util.find_spec("rmm") is None:
        return "memory pools: separate (RMM is not installed)"
    try:
        import cupy
        import rmm
        from rmm.allocators.cupy import rmm_cupy_allocator

        # a small pool that grows on demand: RMM's Python pool otherwise reserves half the free GPU memory
        # up front (PoolMemoryResource with initial_pool_size=None; rapidsai/cudf#14760)
        rmm.reinitialize(pool_allocator=True, initial_pool_size=RMM_INITIAL_POOL_BYTES)
        cupy.cuda.set_allocator(rmm_cupy_allocator)
    except Exception as exc:  # noqa: BLE001 - any failure leaves the libraries' own allocators in place
        return f"memory pools: separate (RMM pool not set up: {type(exc).__name__}: {exc})"
    try:
        import torch
        from rmm.allocators.torch import rmm_torch_allocator

        torch.cuda.memory.change_current_allocator(rmm_torch_allocator)
    except Exception as exc:  # noqa: BLE001 - e.g. torch already allocated on the GPU
        return f"memory pools: RMM for cuML and CuPy; torch keeps its own ({type(exc).__name__}: {exc})"
    return "memory pools: one RMM pool for cuML, CuPy and torch"


def resolve_device(requested: str = "auto") -> Device:
    """Decide where the run computes. Logs one line with the reason.

    - ``cpu``: everything on the CPU.
    - ``gpu``: CUDA must be usable, else DeviceError with the install hint; strict: a stage with no GPU
      implementation here (HDBSCAN and Ward without cuML) stops the run with the reason.
    - ``auto``: the GPU when torch sees CUDA; cuML stages on the GPU when cuML imports, otherwise the torch
      backend runs kNN, PCA, UMAP, DBSCAN and K-means on the GPU and HDBSCAN and Ward run on the CPU.

    GPU kNN libraries (FAISS-GPU, cuVS, cuML) are trusted only after a tiny search on this GPU succeeded in a
    child process (:func:`probe_knn_backends`); a failed probe is logged with its reason and that backend is
    not used.
    """
    if requested not in ("auto", "cpu", "gpu"):
        raise DeviceError(f"The --device option must be auto, cpu or gpu. Got {requested!r} instead.")
    if requested == "cpu":
        device = Device("cpu", "cpu", False, False, "--device cpu requested")
        log.info("device: cpu (requested)")
        return device
    from rca_gpu.engine import simgpu

    mode = simgpu.requested()
    if mode:
        return simulated_device(requested, rapids=mode == "rapids")

    import torch

    if not torch.cuda.is_available():
        if requested == "gpu":
            raise DeviceError(f"--device gpu needs a CUDA GPU, and torch sees none; {GPU_INSTALL_HINT}.")
        device = Device("auto", "cpu", False, False, "no CUDA device visible to torch, running on the CPU")
        log.info("device: cpu (%s)", device.reason)
        return device

    # the memory pool first: torch.cuda.get_device_name() below initialises torch's allocator, after which
    # torch refuses to swap it (see share_memory_pool); is_available() does not initialise it
    cuml_ok, why_not = _cuml_importable()
    notes = []
    if cuml_ok:
        notes.append(share_memory_pool())
        log.info("%s", notes[-1])
    name = torch.cuda.get_device_name()
    capability = tuple(torch.cuda.get_device_capability())
    probes = probe_knn_backends()
    for backend, (worked, why_not_knn) in probes.items():
        if not worked and why_not_knn != "not installed":
            notes.append(f"{backend} kNN is not used on this GPU: {why_not_knn}")
            log.warning("%s kNN is not used on this GPU: %s", backend, why_not_knn)
    faiss_ok, cuvs_ok, cuml_knn_ok = (probes[b][0] for b in ("faiss", "cuvs", "cuml"))
    knn = [label for label, ok in (("cuVS", cuvs_ok), ("FAISS-GPU", faiss_ok)) if ok]
    if cuml_ok:
        reason = f"CUDA GPU {name} with cuML" + "".join(f" and {label}" for label in knn)
    else:
        reason = (
            f"CUDA GPU {name}; {why_not}, so features, kNN, PCA, UMAP, DBSCAN and K-means run on the GPU in "
            "torch and HDBSCAN and Ward on the CPU" + (" (refused under --device gpu)" if requested == "gpu" else "")
        )
    device = Device(requested, "cuda", cuml_ok, faiss_ok, reason, name, cuvs_ok, cuml_knn_ok and cuml_ok,
                    (int(capability[0]), int(capability[1])), tuple(notes))
    log.info("device: gpu (%s)", reason)
    return device


def simulated_device(requested: str = "gpu", *, rapids: bool = True) -> Device:
    """The simulated GPU of CI (:mod:`rca_gpu.engine.simgpu`): every stage dispatched to its GPU adapter
    (cuML, cuVS, torch), the GPU libraries replaced by stand-ins that compute on the CPU; ``requested``
    "gpu" is strict (no CPU fall-back), "auto" falls back as on a real GPU. ``rapids=False``: a machine with
    CUDA torch and CuPy but no cuML or cuVS (the torch backend)."""
    from rca_gpu.engine import simgpu

    simgpu.install()
    if rapids:
        reason = f"simulated GPU (stand-ins of CuPy, cuML and cuVS on the CPU; {simgpu.SIMULATE_ENV}=1)"
    else:
        reason = (f"simulated GPU without RAPIDS (torch backend; {simgpu.SIMULATE_ENV}=torch): HDBSCAN and Ward "
                  "run on the CPU")
    device = Device(requested, "cpu", rapids, False, reason, "simulated GPU", cuvs=rapids, cuml_knn=rapids,
                    simulated=True)
    log.info("device: gpu (%s)", device.reason)
    return device


def gpu_torch_device() -> str:
    """Where torch puts data that a GPU library handed over: "cuda", or "cpu" under the simulated GPU."""
    from rca_gpu.engine import simgpu

    return "cpu" if simgpu.active() else "cuda"


def release_torch_cache() -> None:
    """Hand torch's idle cached GPU blocks back to the driver (``torch.cuda.empty_cache``) so that cuML's
    pool can take them; nothing happens when torch never initialised CUDA (or shares the RMM pool)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


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


def take_rows(x: Any, index: Any, torch_device: str | None = None) -> Any:
    """Rows ``index`` (int64 NumPy positions) of ``x``, in x's own array kind and on its own device.

    ``torch_device`` is where a torch ``x`` lives ("cpu" | "cuda"; read from ``x`` when None).
    """
    kind = kind_of(x)
    if kind == "numpy":
        return x[index]
    where = torch_device or ("cuda" if "cuda" in str(getattr(x, "device", "cpu")) else "cpu")
    return x[to_kind(index, kind, torch_device=where)]


def rows_on_host(x: Any, index: Any) -> Any:
    """Rows ``index`` of ``x`` as a float32 NumPy array (only those rows leave the device)."""
    import numpy as np

    return np.asarray(as_numpy(take_rows(x, index)), dtype=np.float32)
