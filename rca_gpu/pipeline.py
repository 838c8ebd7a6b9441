"""The orchestrator: source -> features -> kNN graph -> reduce + cluster (tuned) -> outputs -> evaluation.

:func:`run` is the whole job for one pipeline. The study reuses the steps below it, so features and kNN
graphs are computed once per feature set.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu import cpu_target, outputs
from rca_gpu.catalogue.run_hook import keep_for_catalogue
from rca_gpu.data.sources import FailureSet, load_source
from rca_gpu.describe import common_values
from rca_gpu.engine import registry
from rca_gpu.engine.device import Device, as_numpy, resolve_device
from rca_gpu.engine.knn import KnnGraph, knn_graph
from rca_gpu.errors import TooFewImagesError
from rca_gpu.features.compute import compute_features
from rca_gpu.features.represent import describe as describe_representation
from rca_gpu.progress import Reporter
from rca_gpu.runfiles import CACHE_DIR, CLUSTERS_FILE, EMBEDDING_FILE, EXPLANATIONS_FILE, RUN_FILE
from rca_gpu.runfolder import RUN_FORMAT, check_run_out_folder, keep_dut, new_run_id, start_run_folder, writes_run
from rca_gpu.spec import (
    ClusterSpec,
    FeatureSpec,
    PipelineSpec,
    ReduceSpec,
    RunSpec,
    check_backends,
    check_data_limits,
    check_dut_known,
    check_memory,
    check_paths,
)
from rca_gpu.tuning import Selection, cached_reduce, effective_k, place_all, select

log = logging.getLogger("rca_gpu")

#: The 2-D map of embedding.parquet when the chosen embedding is not 2-D: this reducer with PLOT_UMAP, or the
#: first two components of PLOT_FALLBACK when --no-plot-umap.
PLOT_REDUCER, PLOT_FALLBACK = "umap", "pca"
PLOT_UMAP = {"n_neighbors": 15, "n_components": 2, "min_dist": 0.1}
#: Epochs of the plot's UMAP when it starts from the chosen embedding's principal plane (umap-learn runs 500
#: from a spectral start up to 10,000 images), used above PLOT_EPOCHS_FROM images (below, a fit costs little).
PLOT_EPOCHS, PLOT_EPOCHS_FROM = 100, 1000
LIBRARIES = (
    "rca-gpu", "torch", "torchvision", "numpy", "scipy", "scikit-learn", "umap-learn", "fast-hdbscan",
    "faiss-cpu", "faiss-gpu-cu12", "pyarrow", "pandas", "zennit", "captum", "cuml-cu12", "cuml-cu13", "cupy-cuda12x",
    "cupy-cuda13x",
)


@dataclass
class RunResult:
    out: Path
    clusters: pd.DataFrame
    run_info: dict[str, Any]
    metrics: dict[str, Any] | None = None
    metrics_table: pd.DataFrame | None = None  # per root cause, when root causes are known
    explanations: pd.DataFrame | None = None  # explanations.parquet: rules per cluster
    report: Path | None = None  # report.html, when written
    stability: pd.DataFrame | None = None  # per cluster (cluster_summary.parquet), None when switched off

    @property
    def n_clusters(self) -> int:
        return int(self.run_info["counts"]["clusters"])


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, started: float) -> None:
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - started, 3)


@contextlib.contextmanager
def warnings_to_log():
    """Warnings raised by the libraries inside go to the log (shown with -v), not raw onto the terminal."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen = set()
    for item in caught:
        text = f"{item.category.__name__}: {item.message}"
        if text not in seen:
            seen.add(text)
            log.debug("library warning (%s:%d) %s", Path(item.filename).name, item.lineno, text)


def thread_counts() -> dict[str, Any]:
    """Threads the numeric libraries use (run.json): results of the same spec on the same data are identical
    across thread counts on the CPU, and this records what ran (docs/pipelines.md, "Reproducibility")."""
    import os

    import torch

    out: dict[str, Any] = {"torch": torch.get_num_threads(), "cpus": os.cpu_count()}
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        if name in os.environ:
            out[name] = os.environ[name]
    return out


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


# --------------------------------------------------------------------------------------------------
# Steps (shared with the study)
# --------------------------------------------------------------------------------------------------


def rejection_summary(rejected: dict[int, str], top: int = 2) -> str:
    """" 75 row(s) were rejected: 75 x <reason>. <what to check>" for the ``top`` most common kinds of reason
    of ``rejected`` (row position -> reason), one example value each
    (:func:`rca_gpu.data.sources.summarize_reasons`), and the hint for those reasons
    (:func:`rca_gpu.data.sources.rejection_hint`); "" when nothing was rejected: what a too-few-images error
    shows."""
    if not rejected:
        return ""
    from rca_gpu.data.sources import rejection_hint, summarize_reasons

    shown, kinds = summarize_reasons(rejected.values(), top)
    more = f" | {kinds - top} other kind(s) of reason" if kinds > top else ""
    hint = rejection_hint(rejected.values())
    return f" {len(rejected)} row(s) were rejected: {shown}{more}." + (f" {hint}" if hint else "")


def feature_graph(features, spec: RunSpec, reduce_spec: ReduceSpec, device: Device) -> KnnGraph | None:
    """The kNN graph of all usable images, or None above ``spec.sample_size`` images: the search then runs on
    a seeded sample and computes the (much smaller) graph of that sample itself (rca_gpu.tuning)."""
    if features.n > spec.sample_size:
        return None
    return knn_graph(features.matrix, effective_k(spec.knn_k, reduce_spec), device, spec.knn_backend)


def plot_embedding(features, chosen: np.ndarray, graph: KnnGraph | None, device: Device, seed: int,
                   use_umap: bool, reduce_cache: dict | None = None,
                   selection: Selection | None = None) -> tuple[np.ndarray, str]:
    """A 2-D embedding for plots: the chosen embedding when it is 2-D, else a 2-D UMAP of the features
    (from the same kNN graph; fitted on the search's sample and extended when the search ran on a sample),
    or the first two principal components when UMAP plots are off."""
    if chosen.shape[1] == 2:
        return chosen, "chosen embedding"
    if use_umap and features.n > 3:
        plot = registry.reducer_card(PLOT_REDUCER)
        extension = selection.extension if selection is not None else None
        rows = extension.sample if extension is not None else None
        key = (plot.name, tuple(sorted(PLOT_UMAP.items())), seed,
               None if rows is None else (features.n, len(rows)))
        start = None
        if (reduce_cache is None or key not in reduce_cache) and len(chosen) > PLOT_EPOCHS_FROM:
            # warm start from the chosen embedding's first two principal components: fewer epochs
            start = _principal_plane(chosen if rows is None else chosen[rows])
        params = PLOT_UMAP if start is None else {**PLOT_UMAP, "init": start, "n_epochs": PLOT_EPOCHS}
        where = " (fitted on the search's sample, others placed)" if rows is not None else ""
        how = "" if start is None else f", started from the chosen embedding's principal plane ({PLOT_EPOCHS} epochs)"
        if start is not None:  # not remembered in reduce_cache: its key would not say how it was started
            reduce_cache = None
        if extension is not None and selection is not None:
            embedding = place_all(selection, features.matrix, plot, params, device, seed, reduce_cache)
            return embedding, f"umap 2-D of the features{where}{how}"
        embedding, _ = cached_reduce(features.matrix, plot, params, device, graph, seed, reduce_cache)
        return np.asarray(as_numpy(embedding), dtype=np.float32), f"umap 2-D of the features{how}"
    embedding, _ = cached_reduce(features.matrix, registry.reducer_card(PLOT_FALLBACK), {"n_components": 2}, device,
                                 graph, seed, reduce_cache)
    out = np.asarray(as_numpy(embedding), dtype=np.float32)
    if out.shape[1] < 2:
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out, "pca 2-D of the features"


def _principal_plane(points: np.ndarray) -> np.ndarray:
    """(n, 2) float32: the first two principal components of ``points`` (n, c), by SVD of the centred rows."""
    centred = np.asarray(points, dtype=np.float64) - np.asarray(points, dtype=np.float64).mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    plane = centred @ vt[:2].T
    return np.pad(plane, ((0, 0), (0, 2 - plane.shape[1]))).astype(np.float32)


def order_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters by size, largest = 0 (ties by first appearance); noise stays -1."""
    out = np.full_like(labels, -1)
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return out
    ids, first, counts = np.unique(clustered, return_index=True, return_counts=True)
    ranking = sorted(zip(-counts, first, ids, strict=True))
    mapping = {old: new for new, (_, _, old) in enumerate(ranking)}
    mask = labels >= 0
    out[mask] = np.vectorize(mapping.get)(labels[mask])
    return out


def resolved_pipeline(spec: PipelineSpec, features_info: dict[str, Any], selection: Selection) -> PipelineSpec:
    """The pipeline with every automatically chosen value written in: reproduces the clustering. A ``select``
    rule the user wrote is kept as written (it is the rule that ran)."""
    layer = features_info.get("layer") or spec.features.layer
    allowed = spec.cluster.card.all_params
    cluster_params = {k: v for k, v in selection.cluster_params.items() if k in allowed and v is not None}
    if "select" in spec.cluster.params:
        cluster_params["select"] = spec.cluster.params["select"]
    if getattr(selection, "relabelled", False):  # the merge step changed the labels: it must run again
        cluster_params["select"] = "merged"
    return PipelineSpec(
        FeatureSpec(spec.features.name, layer if spec.features.info.has_layers else None, spec.features.params),
        ReduceSpec(spec.reduce.name, selection.reduce_params),
        ClusterSpec(spec.cluster.name, cluster_params),
    )


def clusters_table(failures: FailureSet, features, labels: np.ndarray) -> pd.DataFrame:
    """One row per input row: id, path, cluster, status, reason, the pass-through metadata, then the image
    properties (``img_*``, see rca_gpu.data.properties) when the features were extracted from images."""
    n = len(failures)
    cluster = np.full(n, -1, dtype=np.int64)
    cluster[features.positions] = labels
    status = np.full(n, "rejected", dtype=object)
    status[features.positions] = np.where(labels >= 0, "clustered", "noise")
    reason = np.full(n, "", dtype=object)
    for position, note in getattr(features, "notes", {}).items():  # how a usable image was read
        reason[position] = note
    for position, why in features.rejected.items():
        reason[position] = why
    table = failures.table
    front = pd.DataFrame({"id": table["id"], "path": table["path"], "cluster": cluster, "status": status,
                          "reason": reason})
    parts = [front, table.drop(columns=["id", "path"])]
    if getattr(features, "properties", None) is not None:  # image properties, NaN for rejected rows
        from rca_gpu.data.properties import INTEGER_PROPERTIES, PROPERTY_COLUMNS

        values = np.full((n, len(PROPERTY_COLUMNS)), np.nan, dtype=np.float32)
        values[features.positions] = features.properties
        names = [c for c in PROPERTY_COLUMNS if c not in table.columns]  # a manifest's own column wins
        properties = pd.DataFrame(values, columns=list(PROPERTY_COLUMNS))[names]
        for name in set(INTEGER_PROPERTIES) & set(names):  # 28, not 28.0, also in CSV exports; <NA> if rejected
            properties[name] = properties[name].round().astype("Int64")
        parts.append(properties)
    return pd.concat(parts, axis=1)


def embedding_table(failures: FailureSet, features, labels: np.ndarray, plot: np.ndarray,
                    chosen: np.ndarray) -> pd.DataFrame:
    """One row per clustered-or-noise image: id, cluster, x, y (plot), e0..ek (the clustering space)."""
    frame = pd.DataFrame({"id": failures.table["id"].to_numpy()[features.positions], "cluster": labels,
                          "x": plot[:, 0], "y": plot[:, 1]})
    if chosen.shape[1] <= 64:
        extra = pd.DataFrame(chosen, columns=[f"e{i}" for i in range(chosen.shape[1])])
        frame = pd.concat([frame, extra], axis=1)
    return frame


def cluster_summary(clusters: pd.DataFrame, explanations: pd.DataFrame | None = None,
                    stability: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per cluster: size, stability (when ``stability`` is given: cluster_summary.parquet), its top
    explanation (when ``explanations`` is given) and its most common labels / root causes (what the demo
    prints)."""
    from rca_gpu.report.explain import top_explanations

    tops = top_explanations(explanations, short=True)
    rows = []
    for label, group in clusters[clusters["status"] != "rejected"].groupby("cluster", sort=True):
        row: dict[str, Any] = {"cluster": int(label), "size": len(group)}
        if stability is not None:
            row["stability"] = stability_text(stability, int(label))
        if explanations is not None:
            row["explanation"] = tops.get(int(label), "")
        row.update(common_values(group))
        rows.append(row)
    return pd.DataFrame(rows)


def stability_text(stability: pd.DataFrame, cluster: int) -> str:
    """"0.93", "0.41 unstable", or "" (noise, or no value)."""
    match = stability[stability["cluster"] == cluster]
    if cluster < 0 or match.empty or not np.isfinite(match["stability"].iloc[0]):
        return ""
    return f"{match['stability'].iloc[0]:.2f}" + (" unstable" if bool(match["unstable"].iloc[0]) else "")


# --------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------


@writes_run("out")
def run(
    spec: RunSpec,
    source: str | Path | FailureSet,
    out: str | Path,
    *,
    reporter: Reporter | None = None,
    cache_dir: str | Path | None = None,
    report: bool = True,
    extract: Callable[..., Any] | None = None,
    knn: Callable[..., KnnGraph | None] | None = None,
) -> RunResult:
    """Run one pipeline on ``source`` and write clusters.parquet, embedding.parquet, explanations.parquet,
    run.json (and metrics.json when root causes are known) to ``out``, then report.html unless ``report`` is
    False.

    ``extract`` replaces :func:`compute_features` (same arguments and result) and ``knn(features, spec,
    device)`` may supply the kNN graph (None: computed here): rca_gpu.distributed runs extraction and, on GPU
    workers, the graph on Dask this way, behind the same checks and outputs.

    Everything that can be checked before work starts is checked first (the output folder, the values the
    spec fixes against the number of input rows, memory, the kNN backend); only then is an earlier run in
    ``out`` removed. When too few images turn out usable, clusters.parquet is still written with every
    row's reason, beside a run.json with ``"status": "failed"`` (which readers refuse), and the error is
    raised.
    """
    reporter = reporter or Reporter(enabled=False)
    timer = Timer()
    started_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    out = check_run_out_folder(out, {} if isinstance(source, FailureSet) else {"SOURCE": source})
    check_paths(spec)

    t = time.perf_counter()
    failures = (source if isinstance(source, FailureSet)
                else load_source(source, image_root=spec.image_root, skip=[out]))  # never its own outputs
    timer.add("load_source", t)
    run_id = new_run_id()
    with too_few_images_fail_the_run(spec, failures, out, run_id, started_at):
        check_data_limits(spec.pipeline, len(failures.usable_positions),
                          images="input rows (no image was read yet)")
    check_dut_known(spec, failures.dut)
    check_memory(spec, len(failures))
    device = resolve_device(spec.device)
    check_backends(spec, device)
    start_run_folder(out)

    with too_few_images_fail_the_run(spec, failures, out, run_id, started_at):
        t = time.perf_counter()
        cache = Path(cache_dir) if cache_dir else (out / CACHE_DIR if spec.cache_features else None)
        features = (extract or compute_features)(spec.pipeline.features, failures, spec, device, cache, reporter)
        timer.add("features", t)
    graph = None
    if knn is not None and 2 <= features.n <= spec.sample_size:  # above it the search needs no full graph
        t = time.perf_counter()
        graph = knn(features, spec, device)
        if graph is not None:
            timer.add("knn", t)
    return run_on_features(spec, failures, features, device, out, timer=timer, reporter=reporter,
                           started_at=started_at, run_id=run_id, graph=graph, report=report, release_matrix=True)


@writes_run("out")
def run_on_features(
    spec: RunSpec,
    failures: FailureSet,
    features,
    device: Device,
    out: str | Path,
    *,
    timer: Timer | None = None,
    reporter: Reporter | None = None,
    started_at: str | None = None,
    run_id: str | None = None,
    graph: KnnGraph | None = None,
    report: bool = True,
    release_matrix: bool = False,
) -> RunResult:
    """Everything after extraction: kNN graph (unless ``graph`` is given), reduce + cluster, outputs, and
    report.html unless ``report`` is False. ``release_matrix``: see :func:`cluster_and_write`.

    Also the entry point for features that were not extracted by :func:`run`: ``--features FILE``
    (rca_gpu.launch, rca_gpu.features.precomputed). When too few images are usable, clusters.parquet is written
    with every row's reason beside a failed run.json, and TooFewImagesError is raised.
    """
    timer = timer or Timer()
    started_at = started_at or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    run_id = run_id or new_run_id()
    out = Path(out)
    with too_few_images_fail_the_run(spec, failures, out, run_id, started_at, features):
        check_data_limits(spec.pipeline, features.n, dims=int(features.info.get("dims") or 0) or None,
                          images="usable images", error=TooFewImagesError)
        if graph is None:
            t = time.perf_counter()
            graph = feature_graph(features, spec, spec.pipeline.reduce, device)
            timer.add("knn", t)
    result = cluster_and_write(spec, failures, features, graph, device, out, timer=timer, reporter=reporter,
                               started_at=started_at, run_id=run_id, release_matrix=release_matrix)
    if report:
        result.report = write_report(result, failures, reporter)
    return result


def write_report(result: RunResult, failures: FailureSet, reporter: Reporter | None = None) -> Path | None:
    """report.html of a finished run (a progress bar of its steps on ``reporter``). A failure is logged, not
    raised: the run itself is complete."""
    from rca_gpu.report.build import build_report

    images = failures.images
    loader = (lambda position: images[position]) if images is not None else None
    reporter = reporter or Reporter(enabled=False)
    try:
        with reporter.task("report", total=None) as advance:
            return build_report(result.out, loader=loader, progress=advance).path
    except Exception as exc:  # the run's results are written; the report can be made again later
        log.error("the report could not be written (%s: %s); the run is complete: run `rca-gpu report %s`",
                  type(exc).__name__, exc, result.out)
        return None


@contextlib.contextmanager
def too_few_images_fail_the_run(spec: RunSpec, failures: FailureSet, out: Path, run_id: str, started_at: str,
                                features: Any = None) -> Iterator[None]:
    """The one failure path of a run: when the body raises TooFewImagesError, ``out`` gets clusters.parquet
    with every row rejected and its reason, beside a run.json with ``"status": "failed"`` (which readers
    refuse), and the error is raised again with the most common reasons rows were rejected for."""
    try:
        yield
    except TooFewImagesError as exc:
        start_run_folder(out)
        write_failed_run(spec, failures, features, out, run_id, exc, started_at)
        rejected = {**failures.rejected, **(getattr(features, "rejected", None) or {})}
        raise TooFewImagesError(f"{exc}{rejection_summary(rejected)} Every row's reason is in "
                                f"{out / CLUSTERS_FILE}.") from None


def write_failed_run(spec: RunSpec, failures: FailureSet, features, out: Path, run_id: str, error: Exception,
                     started_at: str) -> None:
    """clusters.parquet with every row rejected and its reason, and run.json with ``"status": "failed"``."""
    n = len(failures)
    stopped = "not read" if features is None else "not clustered"  # None: stopped before any image was read
    reason = np.full(n, f"{stopped}: the run stopped ({error})", dtype=object)
    rejected = dict(failures.rejected)
    if features is not None:
        rejected.update(features.rejected)
    for position, why in rejected.items():
        reason[position] = why
    table = failures.table
    front = pd.DataFrame({"id": table["id"], "path": table["path"], "cluster": np.full(n, -1, dtype=np.int64),
                          "status": np.full(n, "rejected", dtype=object), "reason": reason})
    outputs.write_parquet(out / CLUSTERS_FILE, pd.concat([front, table.drop(columns=["id", "path"])], axis=1),
                          run_id=run_id)
    counts = {"input_rows": n, "usable": 0 if features is None else features.n, "rejected": len(rejected)}
    outputs.write_json(out / RUN_FILE, run_record(spec, failures, run_id, started_at, counts, status="failed",
                                                    error=str(error)))


def run_record(spec: RunSpec, failures: FailureSet, run_id: str, started_at: str, counts: dict[str, int], *,
               status: str, **sections: Any) -> dict[str, Any]:
    """run.json: what every run records (format, id, status, start, source, spec, counts, versions, platform)
    and the ``sections`` of a finished run (resolved pipeline, device, tuning, seconds...) or a failed one
    (error), in that order."""
    return {
        "rca_gpu_run": RUN_FORMAT,
        "run_id": run_id,
        "status": status,
        "started_at": started_at,
        "source": failures.describe(),
        "spec": spec.to_dict(),
        **sections,
        "counts": counts,
        "versions": library_versions(),
        "cpu_target": cpu_target.describe(),
        "platform": {"machine": platform.machine(), "system": platform.system(), "argv": sys.argv[1:]},
    }


@writes_run("out")
def cluster_and_write(
    spec: RunSpec,
    failures: FailureSet,
    features,
    graph: KnnGraph | None,
    device: Device,
    out: Path,
    *,
    timer: Timer | None = None,
    reporter: Reporter | None = None,
    started_at: str | None = None,
    reduce_cache: dict | None = None,
    run_id: str | None = None,
    release_matrix: bool = False,
) -> RunResult:
    """Reduce + cluster (tuned) the extracted features, write the outputs, evaluate when possible.

    ``release_matrix``: the caller needs ``features.matrix`` no more, so it is released
    (:meth:`~rca_gpu.features.extract.Features.release_matrix`) once the plot embedding is made: the outputs,
    the evaluation, the explanations and the report, which do not read it, then run without it (at 10M x 256
    their tables would otherwise come on top of the 9.5 GiB matrix).
    """
    timer = timer or Timer()
    reporter = reporter or Reporter(enabled=False)
    run_id = run_id or new_run_id()
    start_run_folder(out)  # an earlier run's files go before this one writes any
    started_at = started_at or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    out = Path(out)
    t = time.perf_counter()
    reduce_cache = {} if reduce_cache is None else reduce_cache  # the plot may reuse an embedding of the search
    stages = f"{spec.pipeline.reduce.name}+{spec.pipeline.cluster.name}"
    with reporter.task(f"reduce + cluster {stages}", total=None) as advance, \
            warnings_to_log():
        selection = select(features.matrix, graph, spec.pipeline.reduce, spec.pipeline.cluster, device,
                           seed=spec.seed, progress=advance, reduce_cache=reduce_cache,
                           sample_size=spec.sample_size)
    timer.add("reduce_cluster", t)
    labels = order_labels(selection.labels)
    with warnings_to_log():  # the stability step's re-clustering warns like the search (e.g. umap on few images)
        catalogue = keep_for_catalogue(spec, failures, features, graph, selection, labels, device, out, run_id,
                                       timer=timer, reporter=reporter)

    chosen = np.asarray(as_numpy(selection.embedding), dtype=np.float32)

    t = time.perf_counter()
    with warnings_to_log():
        plot, plot_source = plot_embedding(features, chosen, graph, device, spec.seed, spec.plot_embedding,
                                           reduce_cache, selection)
    timer.add("plot_embedding", t)
    from rca_gpu.report.heatmaps import has_heatmaps, keep_heatmaps

    if release_matrix and not has_heatmaps(features):  # heatmap runs keep it for keep_heatmaps below
        features.release_matrix()

    t = time.perf_counter()
    clusters = clusters_table(failures, features, labels)
    outputs.write_parquet(out / CLUSTERS_FILE, clusters, run_id=run_id)
    outputs.write_parquet(out / EMBEDDING_FILE, embedding_table(failures, features, labels, plot, chosen),
                          run_id=run_id)
    keep_heatmaps(out, run_id, features)  # heatmap runs: what the report shows of the DNN's heatmaps
    if release_matrix:
        features.release_matrix()
    metrics = per_cause = None
    if failures.has_root_cause and failures.table["root_cause"].iloc[features.positions].notna().any():
        from rca_gpu.metrics import evaluate_clusters

        evaluation = evaluate_clusters(clusters, out, run_id=run_id)
        metrics, per_cause = evaluation.summary, evaluation.per_cause
    timer.add("write", t)

    t = time.perf_counter()
    from rca_gpu.report.explain import explain_clusters

    explanations = explain_clusters(clusters, seed=spec.seed)
    outputs.write_parquet(out / EXPLANATIONS_FILE, explanations, run_id=run_id)
    timer.add("explain", t)

    resolved = resolved_pipeline(spec.pipeline, features.info, selection)
    counts = {
        "input_rows": len(failures),
        "usable": features.n,
        "rejected": len(failures) - features.n,
        "clustered": int((labels >= 0).sum()),
        "noise": int((labels < 0).sum()),
        "clusters": int(len(np.unique(labels[labels >= 0]))),
    }
    run_info = run_record(
        spec, failures, run_id, started_at, counts, status="finished",
        resolved_pipeline=str(resolved),
        seed=spec.seed,
        device=device.to_dict(),
        features=features.info,
        representation=describe_representation(spec.pipeline.features, features.info),
        knn=graph.describe() if graph is not None else selection.knn,
        threads=thread_counts(),
        reduce=selection.reduce_info,
        tuning={**selection.to_dict(), "seconds": selection.seconds},
        plot_embedding=plot_source,
        seconds={**timer.seconds, "total": round(sum(timer.seconds.values()), 3)},
        metrics=metrics,
        catalogue=catalogue.info,
        warnings=[w for w in (selection.warning,) if w],
        dut=keep_dut(out, spec.model or failures.dut) if spec.pipeline.features.info.needs_dut else None,
    )
    outputs.write_json(out / RUN_FILE, run_info)
    log.info("run complete: %d clusters, %d noise, %d rejected -> %s", counts["clusters"], counts["noise"],
             counts["rejected"], out)
    return RunResult(out, clusters, run_info, metrics, per_cause, explanations, stability=catalogue.summary)
