"""numba's on-disk cache for every jitted function of the libraries rca_gpu calls, so no process compiles twice.

umap-learn marks one of its numba functions ``cache=True``, pynndescent and fast_hdbscan most but not all;
the others were compiled again in every new process: a first UMAP fit cost tens of seconds more than the
second (benchmarks/compile_stall.py, benchmarks/RESULTS.md). (fast_hdbscan's path for data of more than 30
dimensions, pynndescent's NN-descent, cannot be cached at all; rca_gpu.engine.cluster.hdbscan runs
scikit-learn's HDBSCAN there.)

:func:`load` imports such a library and switches numba's cache on for each of its module-level dispatchers
that has none, through numba's own switch (``Dispatcher.enable_caching()``), before they compile. numba keys
each entry on the function's bytecode, its signature and the code-generation target (LLVM triple, CPU name
and features), so the generic and the host target (:mod:`rca_gpu.cpu_target`) never share an entry. The
cache lies in ``NUMBA_CACHE_DIR`` when set, else where numba puts it (the package's ``__pycache__`` when
writable, else the user's cache folder). Set ``RCA_GPU_JIT_CACHE=0`` to leave the libraries as they are.

A function compiled for a jitted function as an argument (pynndescent's NN-descent takes its distance so)
cannot be found in the cache again: numba types such an argument by its address in the process, so each
process would add an entry. Caching is switched off again for those before their first entry is written.
"""

from __future__ import annotations

import importlib
import os
import sys
import weakref
from types import ModuleType

#: The packages whose jitted functions rca_gpu's stages call.
PACKAGES = ("umap", "pynndescent", "fast_hdbscan")
#: The dispatchers this module switched the cache on for.
_enabled: weakref.WeakSet = weakref.WeakSet()
_listening = False


def load(name: str) -> ModuleType:
    """Import ``name`` (one of :data:`PACKAGES` or a module of one) with numba's disk cache on for the functions
    of the loaded modules of :data:`PACKAGES`.

    Returns the module, as ``import name`` would. Cheap after the first call (one scan of the loaded
    modules of :data:`PACKAGES`).

    Raises
    ------
    ImportError : the library is not installed (as ``import name``).
    """
    module = importlib.import_module(name)
    if os.environ.get("RCA_GPU_JIT_CACHE", "1") != "0":
        enable_loaded()
    return module


def enable_loaded(packages: tuple[str, ...] = PACKAGES) -> int:
    """Switch the disk cache on for every numba dispatcher defined at module level in the loaded modules of
    ``packages`` that has none. Returns how many were switched on.

    Functions already compiled keep their compiled code (only later compilations are cached); functions
    numba cannot cache (defined inside other functions, using dynamic globals) compile as before, with
    numba's own warning in the log.
    """
    from numba.core.dispatcher import Dispatcher

    _listen()
    switched = 0
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name.split(".")[0] not in packages:
            continue
        for value in list(vars(module).values()):
            if (isinstance(value, Dispatcher) and value.stats.cache_path is None
                    and getattr(value.py_func, "__module__", None) == module_name):
                try:
                    value.enable_caching()
                except RuntimeError:  # no place to write a cache for this function's file
                    continue
                _enabled.add(value)
                switched += 1
    return switched


def _listen() -> None:
    """Watch numba's compilations (once per process) for functions that cannot be cached (module doc)."""
    global _listening
    if _listening:
        return
    from numba.core import event, types
    from numba.core.caching import NullCache

    unfindable = (types.Dispatcher, types.FunctionType, types.WrapperAddressProtocol)

    def by_address(kind) -> bool:  # a function type, also inside a tuple or named tuple
        return isinstance(kind, unfindable) or any(map(by_address, getattr(kind, "types", ())))

    class _Uncachable(event.Listener):
        def on_start(self, ev: event.Event) -> None:
            dispatcher = ev.data["dispatcher"]
            if dispatcher in _enabled and any(map(by_address, ev.data["args"])):
                dispatcher._cache = NullCache()  # numba has no public switch back; the compile saves after this
                _enabled.discard(dispatcher)

        def on_end(self, ev: event.Event) -> None:
            pass

    event.register("numba:compile", _Uncachable())
    _listening = True
