"""A simulated GPU for CI: the GPU adapters run on the CPU behind the interfaces of CuPy, cuML and cuVS.

Machines without a GPU cannot run the GPU path, so without this it would only be read, never run. With
``RCA_GPU_SIMULATE_GPU=1`` in the environment, :func:`rca_gpu.engine.device.resolve_device` answers
``--device gpu`` (strict) and ``--device auto`` (with fall-backs) with a simulated GPU device: the registry
then dispatches every stage to its GPU adapter, exactly as on a GPU with cuML and cuVS, and this module's
stand-ins for ``cupy``, ``cuml`` and ``cuvs`` (installed in ``sys.modules`` under those names, as
:func:`install` does) compute the results on the CPU. Torch runs on its CPU tensors (``torch_device`` stays
"cpu").

What it proves: that no stage asks for a CPU-only backend under a GPU device (the registry raises
UnsupportedOnGPU under ``--device gpu``), that the arrays handed between stages are those the adapters
declare, and that no code converts a GPU array to a NumPy array except :func:`rca_gpu.engine.device.to_kind`.
A stand-in array (:class:`SimArray`) refuses implicit conversion to NumPy with the TypeError CuPy raises
(``cupy/_core/core.pyx``, ``ndarray.__array__``: "Implicit conversion to a NumPy array is not allowed"), and
a stand-in library refuses host arrays where its real one would silently upload them. The libraries' own
conventions are kept where results depend on them: cuML HDBSCAN's ``min_samples`` counts the other points
and must lie in 1..1023, cuML UMAP's spectral initialisation needs n_samples > n_components.

What it cannot prove: speed, GPU memory, CUDA errors, and numerical agreement of cuML with the CPU
libraries (the stand-ins *are* the CPU libraries); benchmarks/gpu_check.sh does that on a GPU.

Never used unless asked for: the environment variable is for tests and CI only, and not a ``--device``
value users see.
"""

from __future__ import annotations

import importlib.machinery
import operator
import os
import sys
import types
from typing import Any

import numpy as np

#: Set to "1" to answer --device gpu / auto with the simulated GPU (tests and CI only).
SIMULATE_ENV = "RCA_GPU_SIMULATE_GPU"
#: The modules this installs; each is removed again by :func:`uninstall`.
MODULES = ("cupy", "cuml", "cuml.cluster", "cuml.cluster.hdbscan", "cuml.manifold", "cuml.neighbors",
           "cuvs", "cuvs.neighbors", "cuvs.neighbors.brute_force")
_SAVED: dict[str, Any] = {}


#: Values of SIMULATE_ENV: the GPU machine each simulates.
MODES = {"1": "rapids", "rapids": "rapids", "torch": "torch"}


def requested() -> str:
    """The simulated machine the environment asks for: "rapids" (``RCA_GPU_SIMULATE_GPU=1``: CuPy, cuML
    and cuVS), "torch" (``=torch``: CUDA torch without RAPIDS, so the torch backend runs), or "" (none)."""
    return MODES.get(os.environ.get(SIMULATE_ENV, ""), "")


def active() -> bool:
    """Whether the stand-ins are installed in this process."""
    return getattr(sys.modules.get("cupy"), "SIMULATED", False)


# --------------------------------------------------------------------------------------------------
# The array
# --------------------------------------------------------------------------------------------------

IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy "
            "array explicitly. (simulated GPU: only rca_gpu.engine.device.to_kind may copy to the host)")


def _unwrap(value: Any, where: str) -> Any:
    if isinstance(value, SimArray):
        return value._data
    if isinstance(value, np.ndarray) and value.ndim > 0:
        raise TypeError(f"{where}: a NumPy array was mixed with a GPU array (simulated GPU); "
                        "convert it with rca_gpu.engine.device.to_kind")
    return value


def _wrap(value: Any) -> Any:
    return SimArray(value) if isinstance(value, np.ndarray) else value


class SimArray:
    """A CuPy ndarray stand-in: NumPy data behind CuPy's interface, which refuses implicit host copies."""

    __array_priority__ = 100

    def __init__(self, data: np.ndarray) -> None:
        self._data = data

    # what CuPy refuses
    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT)

    def __iter__(self):
        raise TypeError("iterating a GPU array element by element copies each one to the host (simulated GPU)")

    def __neg__(self) -> SimArray:
        return SimArray(-self._data)

    def tolist(self):
        raise TypeError(IMPLICIT)

    # explicit copies to the host (CuPy's own spelling); rca_gpu goes through to_kind -> cupy.asnumpy
    def get(self) -> np.ndarray:
        return self._data.copy()

    # DLPack, as CuPy exports it (torch.from_dlpack reads it; the data stays on the CPU here)
    def __dlpack__(self, *args, **kwargs):
        return self._data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._data.__dlpack_device__()

    # shape and type
    shape = property(lambda self: self._data.shape)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    dtype = property(lambda self: self._data.dtype)
    T = property(lambda self: SimArray(self._data.T))

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"SimArray(shape={self.shape}, dtype={self.dtype})"

    def astype(self, dtype, copy: bool = True) -> SimArray:
        return SimArray(self._data.astype(dtype, copy=copy))

    def copy(self) -> SimArray:
        return SimArray(self._data.copy())

    def reshape(self, *shape) -> SimArray:
        return SimArray(self._data.reshape(*shape))

    def ravel(self) -> SimArray:
        return SimArray(self._data.ravel())

    def __getitem__(self, key):
        if isinstance(key, tuple):
            key = tuple(_unwrap(k, "indexing") for k in key)
        else:
            key = _unwrap(key, "indexing")
        return _wrap(self._data[key])

    def __setitem__(self, key, value) -> None:
        self._data[_unwrap(key, "indexing")] = _unwrap(value, "assignment")

    # a scalar read synchronises and copies one value, as in CuPy
    def __float__(self) -> float:
        return float(self._data)

    def __int__(self) -> int:
        return int(self._data)

    def __bool__(self) -> bool:
        return bool(self._data)

    def sum(self, *args, **kwargs):
        return _wrap(np.asarray(self._data.sum(*args, **kwargs)))

    def max(self, *args, **kwargs):
        return _wrap(np.asarray(self._data.max(*args, **kwargs)))

    def min(self, *args, **kwargs):
        return _wrap(np.asarray(self._data.min(*args, **kwargs)))

    def mean(self, *args, **kwargs):
        return _wrap(np.asarray(self._data.mean(*args, **kwargs)))


def _binary(op):
    def method(self, other):
        return _wrap(np.asarray(op(self._data, _unwrap(other, op.__name__))))

    def reflected(self, other):
        return _wrap(np.asarray(op(_unwrap(other, op.__name__), self._data)))

    return method, reflected


for _name in ("add", "sub", "mul", "truediv", "floordiv", "pow", "eq", "ne", "lt", "le", "gt", "ge", "and",
              "or", "matmul"):
    _op = getattr(operator, f"{_name}_" if _name in ("and", "or") else _name)
    _forward, _reflected = _binary(_op)
    setattr(SimArray, f"__{_name}__", _forward)
    if _name not in ("eq", "ne", "lt", "le", "gt", "ge"):
        setattr(SimArray, f"__r{_name}__", _reflected)
SimArray.__hash__ = None  # type: ignore[assignment]
# kind_of() and every library that checks the module of an array see a CuPy array
SimArray.__module__ = "cupy"
SimArray.__qualname__ = SimArray.__name__ = "ndarray"


def _device_input(x: Any, library: str) -> np.ndarray:
    """The data of a GPU array handed to a stand-in library; host data is refused (see the module doc)."""
    if not isinstance(x, SimArray):
        raise TypeError(f"{library} was handed a {type(x).__module__}.{type(x).__name__}, not a GPU array "
                        "(simulated GPU: a GPU adapter must receive the array kind it declares)")
    return x._data


# --------------------------------------------------------------------------------------------------
# cupy
# --------------------------------------------------------------------------------------------------


def _cupy() -> types.ModuleType:
    cupy: Any = types.ModuleType("cupy")
    cupy.SIMULATED = True
    cupy.ndarray = SimArray
    for name in ("float32", "float64", "int32", "int64", "bool_", "uint8"):
        setattr(cupy, name, getattr(np, name))

    def asarray(x, dtype=None):
        if isinstance(x, SimArray):
            return x if dtype is None else x.astype(dtype, copy=False)
        if type(x).__module__.split(".")[0] == "torch":
            raise TypeError("cupy.asarray of a torch tensor: hand it over by DLPack (rca_gpu.engine.device.to_kind)")
        return SimArray(np.array(x, dtype=dtype))  # an upload copies

    def asnumpy(x):
        return x._data.copy() if isinstance(x, SimArray) else np.asarray(x)

    def from_dlpack(x):
        return SimArray(np.from_dlpack(x))

    def ascontiguousarray(x, dtype=None):
        return SimArray(np.ascontiguousarray(_device_input(x, "cupy.ascontiguousarray"), dtype=dtype))

    cupy.asarray, cupy.array, cupy.asnumpy = asarray, asarray, asnumpy
    cupy.from_dlpack, cupy.ascontiguousarray = from_dlpack, ascontiguousarray
    cupy.arange = lambda *a, **k: SimArray(np.arange(*a, **k))
    cupy.zeros = lambda *a, **k: SimArray(np.zeros(*a, **k))
    cupy.unique = lambda x, **k: _wrap(np.unique(_device_input(x, "cupy.unique"), **k))
    # memory: a fixed 16 GiB free of 24 GiB (nothing is allocated on a GPU)
    runtime = types.SimpleNamespace(memGetInfo=lambda: (16 << 30, 24 << 30))
    cupy.cuda = types.SimpleNamespace(runtime=runtime)
    return cupy


# --------------------------------------------------------------------------------------------------
# cuml and cuvs: the CPU libraries behind cuML's and cuVS's calls
# --------------------------------------------------------------------------------------------------


class _Estimator:
    def __init__(self, **params: Any) -> None:
        output_type = params.pop("output_type", "cupy")
        if output_type != "cupy":
            raise ValueError(f"simulated cuML returns CuPy arrays only; output_type={output_type!r}")
        batch = params.pop("max_mbytes_per_batch", None)  # memory: nothing to simulate, but cuML's rule holds
        if batch is not None and not (isinstance(batch, int) and batch > 0):
            raise ValueError(f"max_mbytes_per_batch must be a positive int, got {batch!r} (simulated cuML)")
        params.pop("verbose", None)
        self.params = params


class DBSCAN(_Estimator):
    """cuML DBSCAN: min_samples counts the point itself, as scikit-learn's (cpp/src/dbscan/corepoints)."""

    def fit_predict(self, x):
        from sklearn.cluster import DBSCAN as Sk

        data = _device_input(x, "cuml DBSCAN")
        return SimArray(Sk(eps=self.params["eps"], min_samples=self.params.get("min_samples", 5))
                        .fit_predict(data).astype(np.int32))


class HDBSCAN(_Estimator):
    """cuML HDBSCAN: ``min_samples`` counts the other points and lies in 1..1023 (cuml/cluster/hdbscan)."""

    def fit_predict(self, x):
        from sklearn.cluster import HDBSCAN as Sk

        data = _device_input(x, "cuml HDBSCAN")
        size = int(self.params["min_cluster_size"])
        others = self.params.get("min_samples") or size
        if not 1 <= others <= 1023:
            raise ValueError("'min_samples' must be between 1 and 1023 (simulated cuML HDBSCAN)")
        return SimArray(Sk(min_cluster_size=size, min_samples=min(int(others) + 1, len(data)), copy=True)
                        .fit_predict(data.astype(np.float64)).astype(np.int32))


class KMeans(_Estimator):
    def fit_predict(self, x):
        from sklearn.cluster import KMeans as Sk

        data = _device_input(x, "cuml KMeans")
        model = Sk(n_clusters=self.params["n_clusters"], n_init=self.params.get("n_init", 1),
                   random_state=self.params.get("random_state"))
        return SimArray(model.fit_predict(data).astype(np.int32))


class UMAP(_Estimator):
    """cuML UMAP: ``precomputed_knn`` = (indices, distances) GPU arrays; spectral init asserts n > c."""

    def fit_transform(self, x):
        import warnings

        from rca_gpu import jit_cache

        data = _device_input(x, "cuml UMAP")
        p = self.params
        if p.get("init", "spectral") == "spectral" and not len(data) > p["n_components"]:
            raise RuntimeError("simulated cuML UMAP: spectral initialisation needs n_samples > n_components")
        knn = p.get("precomputed_knn")
        precomputed = (None, None, None)
        if knn is not None:
            indices, distances = (_device_input(a, "cuml UMAP precomputed_knn") for a in knn)
            precomputed = (np.ascontiguousarray(indices), np.ascontiguousarray(distances), None)
        model = jit_cache.load("umap").UMAP(
            n_neighbors=p["n_neighbors"], n_components=p["n_components"], min_dist=p["min_dist"],
            init=p.get("init", "spectral"), random_state=p.get("random_state"), precomputed_knn=precomputed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SimArray(model.fit_transform(data.astype(np.float32)).astype(np.float32))


class NearestNeighbors(_Estimator):
    def fit(self, x):
        self._base = _device_input(x, "cuml NearestNeighbors")
        return self

    def kneighbors(self, x):
        from sklearn.neighbors import NearestNeighbors as Sk

        queries = _device_input(x, "cuml NearestNeighbors")
        distances, indices = Sk(n_neighbors=self.params["n_neighbors"], algorithm="brute").fit(
            self._base).kneighbors(queries)
        return SimArray(distances.astype(np.float32)), SimArray(indices.astype(np.int64))


def _brute_force() -> types.ModuleType:
    module: Any = types.ModuleType("cuvs.neighbors.brute_force")

    def build(dataset, metric: str = "sqeuclidean"):
        if metric != "sqeuclidean":
            raise ValueError(f"simulated cuVS supports metric='sqeuclidean' only, got {metric!r}")
        return _device_input(dataset, "cuvs brute_force.build")

    def search(index, queries, k: int):
        from sklearn.neighbors import NearestNeighbors as Sk

        q = _device_input(queries, "cuvs brute_force.search")
        distances, indices = Sk(n_neighbors=k, algorithm="brute").fit(index).kneighbors(q)
        return SimArray((distances**2).astype(np.float32)), SimArray(indices.astype(np.int64))

    module.build, module.search = build, search
    return module


# --------------------------------------------------------------------------------------------------
# Installing the stand-ins
# --------------------------------------------------------------------------------------------------


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module: Any = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # importlib.util.find_spec answers
    module.__path__ = []  # a package: its submodules import
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def install() -> None:
    """Put the stand-ins in ``sys.modules`` as cupy, cuml and cuvs (once; :func:`uninstall` restores)."""
    if active():
        return
    for name in MODULES:
        _SAVED[name] = sys.modules.get(name)
    cupy = _cupy()
    cupy.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    hdbscan = _module("cuml.cluster.hdbscan", HDBSCAN=HDBSCAN)
    cluster = _module("cuml.cluster", DBSCAN=DBSCAN, KMeans=KMeans, HDBSCAN=HDBSCAN, hdbscan=hdbscan)
    manifold = _module("cuml.manifold", UMAP=UMAP)
    neighbors = _module("cuml.neighbors", NearestNeighbors=NearestNeighbors)
    cuml = _module("cuml", cluster=cluster, manifold=manifold, neighbors=neighbors, SIMULATED=True)
    brute_force = _brute_force()
    brute_force.__spec__ = importlib.machinery.ModuleSpec("cuvs.neighbors.brute_force", None)
    cuvs_neighbors = _module("cuvs.neighbors", brute_force=brute_force)
    cuvs = _module("cuvs", neighbors=cuvs_neighbors, SIMULATED=True)
    sys.modules.update({
        "cupy": cupy, "cuml": cuml, "cuml.cluster": cluster, "cuml.cluster.hdbscan": hdbscan,
        "cuml.manifold": manifold, "cuml.neighbors": neighbors, "cuvs": cuvs, "cuvs.neighbors": cuvs_neighbors,
        "cuvs.neighbors.brute_force": brute_force,
    })


def uninstall() -> None:
    """Remove the stand-ins and put back whatever those names held before :func:`install`."""
    if not active():
        return
    for name in MODULES:
        saved = _SAVED.pop(name, None)
        if saved is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved
