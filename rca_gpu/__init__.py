"""rca_gpu: cluster the images on which a DNN fails so that each cluster shows one root cause.

Public API (heavy libraries are imported only when a function runs)::

    from rca_gpu import run, parse_pipeline, build_run_spec
    result = run(build_run_spec(pipeline="mobilenet_v2+umap+dbscan"), "failures/", out="runs/x")

    from rca_gpu import FailureClusterer          # scikit-learn estimator over features you already have
    labels = FailureClusterer("umap+dbscan").fit(X).labels_
"""

from __future__ import annotations

from rca_gpu import cpu_target as _cpu_target

_cpu_target.apply()  # before numba compiles anything: the same clusters on any x86-64 CPU

from rca_gpu.errors import RcaError, SpecError, SourceError, UnsupportedOnGPU
from rca_gpu.spec import PipelineSpec, RunSpec, build_run_spec, parse_pipeline

__version__ = "0.1.0"

__all__ = [
    "FailureClusterer",
    "PipelineSpec",
    "RcaError",
    "RunSpec",
    "SourceError",
    "SpecError",
    "UnsupportedOnGPU",
    "build_run_spec",
    "parse_pipeline",
    "run",
    "__version__",
]


def run(spec, source, out):  # noqa: D401 - thin lazy re-export
    """Run one pipeline on a source and write its outputs to ``out``. See rca_gpu.pipeline.run."""
    from rca_gpu.pipeline import run as _run

    return _run(spec, source, out)


def __getattr__(name: str):
    if name == "FailureClusterer":  # imported on first use: scikit-learn stays out of `rca-gpu --help`
        from rca_gpu.estimator import FailureClusterer

        return FailureClusterer
    raise AttributeError(f"module 'rca_gpu' has no attribute {name!r}")
