"""The CPU code-generation target: the same seed gives the same clusters on any x86-64 CPU.

numba compiles the loops of umap-learn, pynndescent and fast_hdbscan for the CPU it runs on (LLVM's host
target). Their fast-math reductions are then vectorised to the host's widths and fused multiply-adds, which
round differently: the same seed gave different UMAP embeddings, and different clusters, on an AMD Zen 4 and
on an Intel AVX-512 CPU (benchmarks/RESULTS.md, "Code-generation target"). So rca_gpu pins numba to LLVM's
``generic`` x86-64 target, whose code every x86-64 CPU runs and rounds alike, unless the user opts in to
host-specific code:

- ``RCA_GPU_CPU_TARGET=generic`` (default): numba compiles for the generic target (``NUMBA_CPU_NAME=generic``).
- ``RCA_GPU_CPU_TARGET=host``: numba's own default, code for this CPU (results may differ between CPU
  families; no faster for rca_gpu's stages, benchmarks/cpu_target_cost.py).
- ``NUMBA_CPU_NAME`` set by the user (e.g. ``skylake-avx512`` to reproduce an Intel AVX-512 machine's results on
  another AVX-512 CPU) is honoured as it is, whatever ``RCA_GPU_CPU_TARGET`` says.

numba reads its target when its CPU code generator is created (the first compilation, which importing
umap-learn triggers), so :func:`apply` runs when ``rca_gpu`` is imported. When the caller compiled something
with numba before importing rca_gpu, the target is already fixed: it is left as it is, a warning says so, and
run.json records it (``cpu_target.set_by == "caller"``).

The kernels of the BLAS libraries (OpenBLAS in NumPy, SciPy and faiss-cpu; MKL in torch) and torch's own
vector code are chosen at run time too; run.json records them (:func:`describe`). Their choice does not change
rca_gpu's clusters: the kNN graph's distances are recomputed exactly after the search (rca_gpu.engine.knn), and
the measurements behind this are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

#: The environment variable that selects the target: ``generic`` (default) or ``host``.
ENV = "RCA_GPU_CPU_TARGET"
TARGETS = ("generic", "host")
#: Environment variables that choose a numeric library's kernels; run.json records those that are set.
KERNEL_VARIABLES = (
    "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "OPENBLAS_CORETYPE", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS",
    "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "FAISS_SIMD_LEVEL", "FAISS_OPT_LEVEL", "NPY_DISABLE_CPU_FEATURES",
)

#: How the target was decided at import: "rca_gpu" (pinned to generic here), "host" (the user opted in),
#: "NUMBA_CPU_NAME" (the user's own setting), or "caller" (numba had compiled before rca_gpu was imported).
_set_by = ""


def requested() -> str:
    """The target ``RCA_GPU_CPU_TARGET`` asks for: "generic" (also when unset or invalid) or "host"."""
    value = os.environ.get(ENV, "generic").strip().lower() or "generic"
    return value if value in TARGETS else "generic"


def _numba_compiled_already() -> bool:
    """Whether numba's CPU code generator exists (its target machine is then fixed for the process)."""
    numba = sys.modules.get("numba")
    if numba is None:
        return False
    try:
        from numba.core.registry import cpu_target
    except ImportError:  # pragma: no cover - numba without its registry: assume the worst
        return True
    # the code generator is made with the target context, a lazily cached property of the CPU target
    return "_toplevel_target_context" in vars(cpu_target)


def apply() -> str:
    """Pin numba's code generation to the generic x86-64 target unless the user chose otherwise.

    Runs when ``rca_gpu`` is imported (before numba compiles anything). Sets ``NUMBA_CPU_NAME=generic`` in
    ``os.environ`` (also seen by child processes: DataLoader and Dask workers) and, when numba is imported but
    has not compiled yet, reloads numba's configuration.

    Returns
    -------
    str : how the target was decided (see ``set_by`` in :func:`describe`).

    Warns
    -----
    RuntimeWarning : ``RCA_GPU_CPU_TARGET`` holds an unknown value (generic is used), or numba compiled code
        before rca_gpu was imported with a target other than generic (left as it is).
    """
    global _set_by
    raw = os.environ.get(ENV, "").strip().lower()
    if raw and raw not in TARGETS:
        warnings.warn(f"{ENV}={raw!r} is not one of {', '.join(TARGETS)}; numba compiles for the generic "
                      f"x86-64 target. Set {ENV}=host for code specific to this CPU.", RuntimeWarning, stacklevel=2)
    if "NUMBA_CPU_NAME" in os.environ:
        _set_by = "NUMBA_CPU_NAME"
    elif _numba_compiled_already():
        _set_by = "caller"
        if requested() == "generic":
            warnings.warn("numba compiled code before rca_gpu was imported, for this CPU's own target: "
                          "clusters may differ between CPU families. Import rca_gpu before numba, umap and "
                          f"fast_hdbscan, or set NUMBA_CPU_NAME=generic (or {ENV}=host to accept it).",
                          RuntimeWarning, stacklevel=2)
    elif requested() == "host":
        _set_by = "host"
    else:
        os.environ["NUMBA_CPU_NAME"] = "generic"
        _set_by = "rca_gpu"
        if "numba" in sys.modules:  # imported, nothing compiled yet: make numba read the variable now
            from numba.core import config

            config.reload_config()
    return _set_by


def describe() -> dict[str, Any]:
    """The code-generation target and numeric kernels of this process, for run.json (``cpu_target``).

    Returns
    -------
    dict with ``requested`` (``RCA_GPU_CPU_TARGET``: generic or host), ``set_by`` (see :func:`apply`),
    ``numba_cpu_name`` (the LLVM CPU numba compiles for: "generic" or a CPU name such as "znver4"),
    ``numba_cpu_features`` ("" for generic, "host" for the host's own), ``host_cpu`` (LLVM's name of this CPU),
    ``blas`` (each loaded BLAS library: file name, kernel architecture, version; from threadpoolctl),
    ``torch_cpu_capability`` (the vector code torch dispatches to, when torch is loaded) and ``environment``
    (those of :data:`KERNEL_VARIABLES` that are set).
    """
    info: dict[str, Any] = {"requested": requested(), "set_by": _set_by or "not applied"}
    try:
        import llvmlite.binding as llvm
        from numba.core import config

        # numba's config module sets its settings at import from the environment (config._EnvReloader), so
        # they have no declaration a type checker can see
        cpu_name, cpu_features = config.CPU_NAME, config.CPU_FEATURES  # type: ignore[attr-defined]
        info["numba_cpu_name"] = cpu_name or llvm.get_host_cpu_name()
        info["numba_cpu_features"] = "host" if cpu_features is None else cpu_features
        info["host_cpu"] = llvm.get_host_cpu_name()
    except ImportError:  # pragma: no cover - numba is a dependency
        pass
    try:
        from threadpoolctl import threadpool_info

        blas = [{"library": os.path.basename(lib["filepath"]), "architecture": lib.get("architecture"),
                 "version": lib.get("version")}
                for lib in threadpool_info() if lib.get("user_api") == "blas"]
        # by name: threadpoolctl lists libraries in the order they were loaded, which varies between processes
        info["blas"] = sorted(blas, key=lambda lib: (lib["library"], str(lib["architecture"]), str(lib["version"])))
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    if "torch" in sys.modules:
        info["torch_cpu_capability"] = sys.modules["torch"].backends.cpu.get_cpu_capability()
    info["environment"] = {name: os.environ[name] for name in KERNEL_VARIABLES if name in os.environ}
    return info
