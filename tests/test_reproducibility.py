"""The same command on the same input gives the same clusters in a new process, at any thread count and for
any CPU (numba's code-generation target); a new process compiles nothing an earlier one compiled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import pattern_images, write_pngs

ROOT = Path(__file__).resolve().parents[1]


def _run(folder: Path, out: Path, threads: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if threads is None:
        env.pop("OMP_NUM_THREADS", None)
    else:
        env["OMP_NUM_THREADS"] = threads
    return subprocess.run(
        [sys.executable, "-m", "rca_gpu.cli", "run", str(folder), "--out", str(out), "--pipeline",
         "pixels+umap+dbscan", "--device", "cpu", "--workers", "0", "--no-report", "--no-cache", "-q"],
        capture_output=True, text=True, env=env, timeout=900,
    )


def test_two_fresh_processes_and_thread_counts_give_the_same_clusters(tmp_path):
    images, labels = pattern_images(n_per=30, groups=4, seed=7)
    write_pngs(tmp_path / "imgs", images, labels)
    first = _run(tmp_path / "imgs", tmp_path / "a", None)
    second = _run(tmp_path / "imgs", tmp_path / "b", "1")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    a = pd.read_parquet(tmp_path / "a" / "clusters.parquet")
    b = pd.read_parquet(tmp_path / "b" / "clusters.parquet")
    assert a[["id", "cluster", "status"]].equals(b[["id", "cluster", "status"]])
    info_a = json.loads((tmp_path / "a" / "run.json").read_text())
    info_b = json.loads((tmp_path / "b" / "run.json").read_text())
    assert info_a["resolved_pipeline"] == info_b["resolved_pipeline"]
    assert info_b["threads"]["OMP_NUM_THREADS"] == "1" and "OMP_NUM_THREADS" not in info_a["threads"]
    # run.json says which code numba made and which BLAS kernels ran (rca_gpu.cpu_target)
    import numba

    assert info_a["cpu_target"]["numba_cpu_name"] == (numba.config.CPU_NAME or info_a["cpu_target"]["host_cpu"])
    assert info_a["cpu_target"]["blas"] and info_a["cpu_target"] == info_b["cpu_target"]
    # library warnings go to the log, not onto the terminal
    assert "Warning" not in first.stderr and "Warning" not in second.stderr


# --- the code-generation target (rca_gpu.cpu_target) ----------------------------------------------------

_REPORT = ("import json, numba\nfrom rca_gpu import cpu_target\n"
           "print(json.dumps([numba.config.CPU_NAME, cpu_target.describe()]))")


def _python(code: str, timeout: int = 600, **env_vars: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter whose environment holds none of the target variables but ``env_vars``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for name in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "RCA_GPU_CPU_TARGET"):
        env.pop(name, None)
    env.update(env_vars)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)


@pytest.mark.parametrize("before, env_vars, cpu_name, set_by, warning", [
    ("import rca_gpu", {}, "generic", "rca_gpu", ""),
    ("import rca_gpu", {"RCA_GPU_CPU_TARGET": "host"}, None, "host", ""),
    ("import rca_gpu", {"NUMBA_CPU_NAME": "skylake-avx512"}, "skylake-avx512", "NUMBA_CPU_NAME", ""),
    ("import rca_gpu", {"RCA_GPU_CPU_TARGET": "hots"}, "generic", "rca_gpu", "'hots' is not one of generic, host"),
    ("import numba; import rca_gpu", {}, "generic", "rca_gpu", ""),  # imported, nothing compiled yet
    ("import numba; numba.njit(lambda: 1)(); import rca_gpu", {}, None, "caller",
     "numba compiled code before rca_gpu was imported"),
])
def test_numba_compiles_for_the_generic_target_unless_told_otherwise(before, env_vars, cpu_name, set_by, warning):
    done = _python(f"{before}\n{_REPORT}", **env_vars)
    assert done.returncode == 0, done.stderr
    name, info = json.loads(done.stdout.splitlines()[-1])
    assert (name, info["set_by"]) == (cpu_name, set_by)
    assert info["numba_cpu_name"] == (cpu_name or info["host_cpu"])
    assert info["numba_cpu_features"] == ("" if cpu_name == "generic" else "host")
    assert info["requested"] == ("host" if env_vars.get("RCA_GPU_CPU_TARGET") == "host" else "generic")
    assert [blas["architecture"] for blas in info["blas"]], "no BLAS library recorded"
    assert (warning in done.stderr) if warning else "Warning" not in done.stderr


def test_the_generic_target_is_what_numba_compiles_for():
    """Not only the configuration: the code generator numba builds targets the generic CPU."""
    done = _python("import rca_gpu, numba\nnumba.njit(lambda x: x + 1)(1)\n"
                   "from numba.core.registry import cpu_target\n"
                   "print(cpu_target.target_context.codegen().magic_tuple())")
    assert done.returncode == 0, done.stderr
    assert "'generic', ''" in done.stdout.splitlines()[-1]


# --- numba's disk cache for the libraries (rca_gpu.jit_cache) ---------------------------------------------

_TINY = """import numba, numpy as np

@numba.njit
def total(x):
    return np.sum(x * 2.0)

@numba.njit
def apply(f, x):
    return f(x)
"""
_COUNT = """
import json, sys, numpy as np
import rca_gpu
from numba.core import event
from rca_gpu import jit_cache
import tinypkg
jit_cache.enable_loaded(("tinypkg",))
with event.install_recorder("numba:compile") as recorded:
    assert tinypkg.total(np.ones(3)) == 6.0
    assert tinypkg.apply(tinypkg.total, np.ones(2)) == 4.0
names = [e.data["dispatcher"].py_func.__name__ for _, e in recorded.buffer if e.is_start]
print(json.dumps([names.count("total"), names.count("apply")]))
"""


def _tiny_package(tmp_path) -> str:
    (tmp_path / "tinypkg").mkdir()
    (tmp_path / "tinypkg" / "__init__.py").write_text(_TINY)
    return os.pathsep.join([str(ROOT), str(tmp_path), os.environ.get("PYTHONPATH", "")])


def test_cached_library_functions_compile_once_per_target(tmp_path):
    """The second process loads what the first compiled; the host target gets an entry of its own, and the
    generic entry is still there after it. A function handed a jitted function is compiled in every process
    (numba cannot find it again) and writes no entry."""
    paths, cache = _tiny_package(tmp_path), tmp_path / "numba"

    def compiles(**target: str) -> list[int]:
        done = _python(_COUNT, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=paths, **target)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    assert compiles() == [1, 1]  # an empty cache: compiled, total written
    assert compiles() == [0, 1]  # total loaded from the cache
    assert compiles(RCA_GPU_CPU_TARGET="host") == [1, 1]  # another target: never the generic code
    assert compiles(RCA_GPU_CPU_TARGET="host") == [0, 1]
    assert compiles() == [0, 1]
    written = sorted(p.name.split("-")[0].rsplit(".", 1)[-1] for p in cache.rglob("*.nbc"))
    assert written == ["total", "total"], written  # one entry per target, none for apply


def test_off_switch_leaves_the_libraries_as_they_are():
    code = ("import rca_gpu\nfrom rca_gpu import jit_cache\njit_cache.load('umap')\n"
            "from umap.umap_ import smooth_knn_dist\nprint(smooth_knn_dist.stats.cache_path is None)")
    on = _python(code)  # the session's numba cache: importing pynndescent compiles no more than in other tests
    off = _python(code, RCA_GPU_JIT_CACHE="0")
    assert (on.stdout.split()[-1:], off.stdout.split()[-1:]) == (["False"], ["True"]), on.stderr + off.stderr


_STAGES = """
import json
import rca_gpu
from numba.core import event
from rca_gpu.engine.registry import cluster
from rca_gpu.datasets.planted import planted_features
from rca_gpu.engine.device import cpu_device
from rca_gpu.engine.knn import knn_graph
from rca_gpu.engine.registry import reduce
from rca_gpu.engine.reduce.umap import umap_place

device = cpu_device()
x, _ = planted_features(300, n_clusters=3, dims=40, rare=(), seed=0)
graph = knn_graph(x, 15, device)
low = x[:, :10].copy()  # the shape a UMAP pipeline hands its clusterer
embedded = {}
stages = {
    "umap": lambda: embedded.setdefault("umap", reduce(x, "umap", {"n_neighbors": 15, "n_components": 5,
                                                                    "min_dist": 0.0}, device, knn=graph)[0]),
    "umap placement": lambda: umap_place(embedded["umap"], *graph.numpy(), n_neighbors=15, min_dist=0.0, seed=0),
    "pca": lambda: reduce(x, "pca", {"n_components": 5}, device),
    "none": lambda: reduce(x, "none", {}, device),
    "dbscan": lambda: cluster(low, "dbscan", {"eps": 0.5, "min_samples": 5}, device),
    "hdbscan": lambda: cluster(low, "hdbscan", {"min_cluster_size": 10}, device),
    "hdbscan above 30 dimensions": lambda: cluster(x, "hdbscan", {"min_cluster_size": 10}, device),
    "kmeans": lambda: cluster(low, "kmeans", {"k": 3}, device),
    "ward": lambda: cluster(low, "ward", {"k": 3}, device),
}
compiled = {}
for name, call in stages.items():
    with event.install_recorder("numba:compile") as recorded:
        call()
    compiled[name] = sorted({e.data["dispatcher"].py_func.__qualname__ for _, e in recorded.buffer if e.is_start})
print(json.dumps(compiled))
"""
#: umap-learn compiles these two at its import (their signatures are given in the decorator, before anything
#: can switch a cache on); together well under a second.
_COMPILED_AT_IMPORT = {"tau_rand_int", "tau_rand"}


@pytest.mark.timeout(1800)
def test_a_new_process_compiles_nothing_an_earlier_one_compiled():
    """The compile stall: a first UMAP or HDBSCAN call in a new process compiled for tens of seconds to
    minutes (benchmarks/compile_stall.py). Counted, not timed: after one process filled the numba cache, the
    next compiles nothing for any reducer or clusterer (nor for the UMAP placement of new points)."""
    first = _python(_STAGES, timeout=1500)  # the session's cache: fills what other tests did not
    assert first.returncode == 0, first.stderr
    second = _python(_STAGES, timeout=1500)
    assert second.returncode == 0, second.stderr
    compiled = json.loads(second.stdout.splitlines()[-1])
    assert set(compiled) >= {"umap", "pca", "none", "dbscan", "hdbscan", "kmeans", "ward"}
    leftover = {stage: sorted(set(names) - _COMPILED_AT_IMPORT) for stage, names in compiled.items()}
    assert not any(leftover.values()), leftover


def test_hdbscan_above_30_dimensions_is_exact_and_repeatable():
    """fast_hdbscan would take pynndescent's unseeded approximate graph there: scikit-learn's exact HDBSCAN
    runs instead, the same labels on every call, with rca_gpu's min_samples (the point counts itself)."""
    import numpy as np

    from rca_gpu.datasets.planted import planted_features
    from rca_gpu.engine.device import cpu_device
    from rca_gpu.engine.registry import cluster

    x, _ = planted_features(1000, n_clusters=6, dims=64, rare=(), seed=3)
    params = {"min_cluster_size": 15, "min_samples": 10}
    first, second = (cluster(x, "hdbscan", params, cpu_device()) for _ in range(2))
    assert np.array_equal(first, second) and len(set(first[first >= 0])) >= 2
    from sklearn.cluster import HDBSCAN

    assert np.array_equal(first, HDBSCAN(min_cluster_size=15, min_samples=10, copy=True).fit_predict(
        x.astype(np.float64)))
