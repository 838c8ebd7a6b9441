"""The Python API: the commands of ``rca-gpu`` as functions, with the same options and the same outputs.

Reached through the package (``rca_gpu.run``, ``rca_gpu.evaluate``, ...), which imports this module only when
one of them is first used; the heavy libraries load inside the functions. docs/api.md shows each with an example.
Every function writes the files its command writes and returns what it computed; errors are
:class:`rca_gpu.RcaError` subclasses whose message is the one line the command prints.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from rca_gpu.catalogue.compare import Comparison
    from rca_gpu.metrics import Evaluation
    from rca_gpu.pipeline import RunResult
    from rca_gpu.report.build import ReportResult
    from rca_gpu.report.export import ExportResult
    from rca_gpu.spec import RunSpec

PathLike = str | os.PathLike


def run(source: PathLike | None = None, out: PathLike | None = None, *, pipeline: str | None = None,
        config: PathLike | None = None, spec: RunSpec | None = None, features: PathLike | None = None,
        metadata: PathLike | None = None, dask: str | None = None, weights: str | None = None,
        report: bool = True, progress: bool = False, **options: Any) -> RunResult:
    """Cluster the failing images of ``source`` (or the features in ``features``) and write the run to ``out``,
    as ``rca-gpu run`` does.

    Parameters
    ----------
    source : a folder of images or a manifest .csv / .parquet with a ``path`` column (None with ``features``).
    out : the run folder (clusters.parquet, embedding.parquet, run.json, report.html, ...).
    pipeline : FEATURES+REDUCER+CLUSTERER, e.g. ``"mobilenet_v2+umap+dbscan"`` (default), or REDUCER+CLUSTERER
        with ``features`` (default ``"umap+dbscan"``).
    config : a TOML run configuration; the arguments here override it.
    spec : a whole :class:`rca_gpu.RunSpec` instead of ``pipeline``, ``config``, ``weights`` and ``options``.
    features, metadata : your own features (.parquet or .npy) and, for .npy, their rows' metadata.
    dask : ``"local"`` or a scheduler address: extraction on Dask workers.
    weights : the backbone's weights (a state_dict file, a torchvision weights name, or ``"none"``).
    report : write report.html.
    progress : show progress bars on the terminal.
    **options : any other run option, named as in the TOML config: device, seed, batch_size, workers, precision,
        model, knn_backend, knn_k, image_root, cache_features, plot_embedding, stability, sample_size,
        max_image_memory (bytes, or a size such as "4GiB": what decoding images may use at once).

    Returns
    -------
    rca_gpu.pipeline.RunResult: ``clusters`` (the clusters.parquet table), ``run_info`` (run.json), ``metrics``
    (when root causes are known), ``report`` (the path of report.html).

    Raises
    ------
    SpecError
        An unknown option or a value outside its rule (naming the option, the rule and the value).
    SourceError, TooFewImagesError
        The source cannot be read, or too few images are usable (clusters.parquet still says why per row).
    """
    from rca_gpu.launch import pipeline_for_features, run_inputs
    from rca_gpu.progress import reporter_for
    from rca_gpu.runfolder import check_run_out_folder

    if out is None:
        raise _missing("run", "out", "the run folder to write, e.g. out='runs/first'")
    out = Path(out)
    check_run_out_folder(out, {"SOURCE": source, "--features": features, "--metadata": metadata,
                               "--config": config, "--weights": weights})
    if spec is None:
        if features is not None:
            pipeline = pipeline_for_features(pipeline, config)
        spec = run_spec(pipeline, config, weights=weights, **options)
    elif pipeline is not None or config is not None or weights is not None or options:
        raise _both("run", "spec", "pipeline, config, weights or run options")
    return run_inputs(spec, source, out, features=features, metadata=metadata, dask=dask,
                      reporter=reporter_for(not progress), report=report)


def run_spec(pipeline: str | None = None, config: PathLike | None = None, *, weights: str | None = None,
             **options: Any) -> RunSpec:
    """The RunSpec of a TOML file (``config``) with ``pipeline``, ``weights`` and run ``options`` over it (None =
    not given), every value checked.

    Raises
    ------
    SpecError
        An option that is not a run option, or a value outside its rule.
    """
    from rca_gpu.errors import SpecError
    from rca_gpu.spec import RUN_OPTIONS, build_run_spec, load_config

    unknown = sorted(set(options) - set(RUN_OPTIONS))
    if unknown:
        raise SpecError(f"Unknown run option(s) {', '.join(map(repr, unknown))}. Allowed: "
                        f"{', '.join(o for o in RUN_OPTIONS if o != 'pipeline')}, and weights.")
    options = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in options.items()}
    data = load_config(config) if config else {}
    _sizes_in_bytes(options, data)
    if weights is not None:
        data.setdefault("features", {})["weights"] = str(weights)
    return build_run_spec(data, pipeline=pipeline, **options)


def _sizes_in_bytes(*sources: dict[str, Any]) -> None:
    """``max_image_memory`` given as text (``--max-image-memory 4GiB``, ``max_image_memory = "4GiB"`` in a
    config) becomes bytes, in place; SpecError when it is no size."""
    from rca_gpu.data.decoding import parse_size

    for values in sources:
        if isinstance(values.get("max_image_memory"), str):
            values["max_image_memory"] = parse_size(values["max_image_memory"])


def evaluate(run_dir: PathLike, *, min_purity: float = 0.5) -> Evaluation:
    """Score a finished run against its true root causes (``rca-gpu evaluate``); writes metrics.json and
    per_cause.csv into ``run_dir``. Returns the evaluation (``summary``: purity, coverage, ARI, NMI, noise share,
    ...; ``per_cause``: a table). See docs/metrics.md."""
    from rca_gpu.metrics import evaluate_run

    return evaluate_run(run_dir, min_purity=min_purity)


def study(source: PathLike, out: PathLike, *, features: Iterable[str] | None = None,
          reducers: Iterable[str] | None = None, clusterers: Iterable[str] | None = None, progress: bool = False,
          **options: Any) -> pd.DataFrame:
    """Run every FEATURES x REDUCERS x CLUSTERERS pipeline on ``source`` and rank them (``rca-gpu study``);
    writes study.parquet, study.md and one run folder per pipeline under ``out``, and resumes an interrupted
    study there. ``features``: feature specs (default: the study's feature sets); ``reducers``, ``clusterers``:
    names (default: every registered one); ``options``: run options (device, seed, batch_size, workers,
    precision, model). Returns the ranked table (one row per pipeline).

    Raises
    ------
    SpecError
        An unknown name, a reducer or clusterer given with parameters, a source without ``root_cause``.
    """
    from rca_gpu.progress import reporter_for
    from rca_gpu.studies import prepare_study, run_study

    base, failures, plan = prepare_study(Path(source), Path(out), features, reducers, clusterers,
                                         run_spec(None, None, **options))
    return run_study(base, failures, Path(out), plan, reporter=reporter_for(not progress))


def assign(run_dir: PathLike, source: PathLike, out: PathLike, *, progress: bool = False,
           **options: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Assign each image of ``source`` to a known cause of the run in ``run_dir`` or to ``unknown``
    (``rca-gpu assign``); writes assignments.parquet and assign.json to ``out``. ``options``: device,
    batch_size, workers, image_root, model, alpha. Returns (the assignments table, the summary). See
    docs/catalogue.md."""
    from rca_gpu.catalogue.assign import assign_run
    from rca_gpu.progress import reporter_for

    return assign_run(run_dir, source, out, reporter=reporter_for(not progress), **_paths_as_text(options))


def compare(run_a: PathLike, run_b: PathLike, *, progress: bool = False, **options: Any) -> Comparison:
    """Compare the causes of two runs (``rca-gpu compare``): persists, grew, shrank, vanished, new; writes
    comparison.parquet and comparison.json into ``run_b``. ``options``: by, basis, device, batch_size,
    workers. See docs/catalogue.md."""
    from rca_gpu.catalogue.compare import compare_runs
    from rca_gpu.progress import reporter_for

    return compare_runs(run_a, run_b, reporter=reporter_for(not progress), **options)


def select(run_dir: PathLike, pool: PathLike, out: PathLike, *, budget: int, progress: bool = False,
           **options: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Pick ``budget`` images of ``pool`` that fall in the run's causes, spread over causes, for retraining
    (``rca-gpu select``); writes the manifest selection.csv (and selection.parquet, assignments.parquet,
    select.json) to ``out``. ``options``: spread, floor, device, batch_size, workers, image_root, model, alpha.
    Returns (the selected rows, the summary). See docs/catalogue.md."""
    from rca_gpu.catalogue.retraining import select_from_pool
    from rca_gpu.progress import reporter_for

    return select_from_pool(run_dir, pool, out, budget=budget, reporter=reporter_for(not progress),
                            **_paths_as_text(options))


def verify(run_dir: PathLike, pool: PathLike, *, progress: bool = False, **options: Any) -> dict[str, Any]:
    """Check that each cause of the run in ``run_dir`` is a real failure mode of the DNN (``rca-gpu verify``):
    the pool's images (a manifest with ``path``, ``label`` and ``prediction``, passing and failing) are assigned
    to the run's causes, and each cause's failure rate is set against the pool's (lift, with a Wilson
    interval); writes verify.json into ``run_dir``. ``options``: device, batch_size, workers, image_root, model,
    alpha. Returns verify.json's content (``per_cause``: lift, interval, verdict). See docs/catalogue.md."""
    from rca_gpu.catalogue.verify import verify_run
    from rca_gpu.progress import reporter_for

    return verify_run(run_dir, pool, reporter=reporter_for(not progress), **_paths_as_text(options))


def export(run_dir: PathLike, to: PathLike, *, clusters: str | None = None, mode: str = "link",
           layout: str = "folders", ids: PathLike | None = None) -> ExportResult:
    """Export the run's clusters (``rca-gpu export``): a folder per cluster (and noise, rejected) with the
    images, linked or copied, and a manifest.csv, or FiftyOne's CSVDataset layout (``layout="fiftyone"``).
    ``clusters``: ``"3,5,noise"`` (default: every group); ``ids``: a CSV whose ``id`` column picks the images
    (e.g. the report map's selection.csv). Returns the folder, the images per group and the files made.
    See docs/report.md."""
    from rca_gpu.data.paths import check_output_path
    from rca_gpu.report.export import export_run, parse_selection

    check_output_path(to, "to")
    return export_run(run_dir, to, clusters=parse_selection(clusters), mode=mode, layout=layout, ids=ids)


def write_report(run_dir: PathLike, **options: Any) -> ReportResult:
    """(Re)write report.html, report_files/ and clusters.csv of a finished run (``rca-gpu report``); it opens
    offline. ``options``: map_points (most points drawn on the map). Returns the report's path and what it
    holds. See docs/report.md."""
    from rca_gpu.report.build import build_report

    return build_report(run_dir, **options)


def _paths_as_text(options: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}


def _missing(function: str, name: str, what: str) -> Exception:
    from rca_gpu.errors import SpecError

    return SpecError(f"rca_gpu.{function} needs '{name}': {what}.")


def _both(function: str, one: str, other: str) -> Exception:
    from rca_gpu.errors import SpecError

    return SpecError(f"rca_gpu.{function} takes either '{one}' or {other}, not both.")
