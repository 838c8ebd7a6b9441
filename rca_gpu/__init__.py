"""rca_gpu: cluster the images on which a DNN fails so that each cluster shows one root cause.

The commands of ``rca-gpu`` as functions (docs/api.md); nothing heavy is imported until one runs::

    import rca_gpu

    result = rca_gpu.run("failures/", "runs/x")                        # default pipeline, report.html
    result = rca_gpu.run("failures/", "runs/y", pipeline="pixels+pca+kmeans", device="cpu", seed=1)
    result = rca_gpu.run(out="runs/f", features="embeddings.parquet")   # your own features
    rca_gpu.evaluate("runs/y").summary                                  # needs a root_cause column
    rca_gpu.study("bench/manifest.parquet", "runs/study", reducers=["umap", "pca"])
    rca_gpu.assign("runs/x", "new_failures/", "runs/x-new")
    rca_gpu.compare("runs/x", "runs/y")
    rca_gpu.select("runs/x", "pool/", "retrain/", budget=500)

    labels = rca_gpu.FailureClusterer("umap+dbscan").fit(X).labels_    # scikit-learn estimator
"""

from __future__ import annotations

from typing import Any

from rca_gpu import cpu_target as _cpu_target

_cpu_target.apply()  # before numba compiles anything: the same clusters on any x86-64 CPU

from rca_gpu.errors import RcaError, SourceError, SpecError, TooFewImagesError, UnsupportedOnGPU  # noqa: E402

__version__ = "0.1.0"

#: Public name -> the module that defines it, imported on first use.
_LAZY = {
    "run": "rca_gpu.api", "run_spec": "rca_gpu.api", "evaluate": "rca_gpu.api", "study": "rca_gpu.api",
    "assign": "rca_gpu.api", "compare": "rca_gpu.api", "select": "rca_gpu.api", "verify": "rca_gpu.api",
    "export": "rca_gpu.api", "write_report": "rca_gpu.api",
    "FailureClusterer": "rca_gpu.estimator",
    "PipelineSpec": "rca_gpu.spec", "RunSpec": "rca_gpu.spec", "build_run_spec": "rca_gpu.spec",
    "parse_pipeline": "rca_gpu.spec",
    "load_plugin": "rca_gpu.plugins",
}

__all__ = [
    "FailureClusterer", "PipelineSpec", "RcaError", "RunSpec", "SourceError", "SpecError", "TooFewImagesError",
    "UnsupportedOnGPU", "__version__", "assign", "build_run_spec", "compare", "evaluate", "load_plugin",
    "parse_pipeline", "run", "run_spec", "select", "study", "verify", "export", "write_report",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rca_gpu' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
