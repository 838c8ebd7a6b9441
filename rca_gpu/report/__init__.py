"""The report of a run: static HTML page, thumbnails, the 2-D map, explanations of clusters, exports.

Everything here reads a finished run folder through :func:`rca_gpu.runfolder.open_run`; heavy imports
(plotly, scikit-learn, jinja2) happen inside the functions that need them.
"""

from __future__ import annotations

__all__ = ["build_report", "export_run", "explain_clusters"]


def __getattr__(name: str):
    if name == "build_report":
        from rca_gpu.report.build import build_report

        return build_report
    if name == "export_run":
        from rca_gpu.report.export import export_run

        return export_run
    if name == "explain_clusters":
        from rca_gpu.report.explain import explain_clusters

        return explain_clusters
    raise AttributeError(name)
