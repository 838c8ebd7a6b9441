"""The ``rca-gpu`` command line. Each command is a thin shell: parse -> spec -> library call -> print.

Only typer and the plain-data spec module are imported at start-up, so ``rca-gpu --help`` is instant;
torch, CuPy, cuML and friends load inside the commands that need them.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from rca_gpu.commands.options import QuietOpt, build_spec
from rca_gpu.errors import RcaError, printable
from rca_gpu.progress import WIDE_TERMINAL, reporter_for
from rca_gpu.spec import KNN_BACKENDS


class _OneLineErrors(TyperGroup):
    """The top-level command group: usage errors (a bad option value, an unknown option) print one line
    ``error: ...`` and exit 2, like every other input error, instead of a boxed usage message."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except Exception as exc:  # Typer vendors click: its exceptions are matched by class name
            kinds = {cls.__name__ for cls in type(exc).__mro__}
            context = getattr(exc, "ctx", None)
            if "NoArgsIsHelpError" in kinds:  # bare `rca-gpu`: the help, as before
                typer.echo(context.get_help() if context else str(exc))
                sys.exit(2)
            if "UsageError" in kinds:
                where = f" (see `{context.command_path} --help`)" if context else ""
                _err(f"{exc.format_message()}{where}")
                sys.exit(2)
            if "ClickException" in kinds:
                _err(exc.format_message())
                sys.exit(getattr(exc, "exit_code", 1))
            if "Abort" in kinds:
                _err("aborted")
                sys.exit(1)
            raise
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="rca-gpu",
    help="Cluster the images on which a DNN fails so that each cluster shows one root cause.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


#: --knn-backend choices: made from the spec's list, so the help, the check and the registry agree.
KnnBackend = Enum("KnnBackend", {name.replace("-", "_"): name for name in KNN_BACKENDS}, type=str)  # type: ignore[misc]


def _err(message: str) -> None:
    typer.echo(f"error: {printable(message)}", err=True)


@app.callback()
def plugins_option(
    plugin: Annotated[list[str] | None, typer.Option(
        "--plugin", metavar="MODULE", help="Import MODULE first and register the extractors, reducers and "
        "clusterers it defines (docs/plugins.md); repeatable. Installed plug-ins need no option.")] = None,
) -> None:
    """Options before the command: plug-ins to load."""
    for module in plugin or ():
        from rca_gpu.plugins import load_plugin

        try:
            load_plugin(module)
        except RcaError as exc:
            _err(str(exc))
            raise typer.Exit(exc.exit_code) from None


def friendly_errors(command: Callable) -> Callable:
    """Turn RcaError into one line on stderr and exit code 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RcaError as exc:
            _err(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # a full disk or read-only folder outside rca_gpu.outputs: one line as well
            from rca_gpu.outputs import as_output_error

            refused = as_output_error(exc)
            if refused is None:
                raise
            _err(str(refused))
            raise typer.Exit(refused.exit_code) from None
        except UnicodeError as exc:  # a path (or value) whose bytes are not UTF-8 reached a place that needs text
            _err(_not_utf8(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _err("interrupted; with the feature cache on (--cache, the default) the feature shards finished so far "
                 "are kept and reused by the next run into the same folder")
            raise typer.Exit(130) from None

    return wrapper


def _not_utf8(exc: UnicodeError) -> str:
    """The one line for a value whose bytes are not UTF-8 where rca-gpu needs UTF-8 text."""
    value = getattr(exc, "object", b"")
    shown = printable(value if isinstance(value, str) else bytes(value).decode("utf-8", "backslashreplace"))
    return (f"The value {shown[:200]!r} holds bytes that are not UTF-8 ({getattr(exc, 'reason', exc)}), and this "
            "command writes it where only UTF-8 text fits. Rename the file or folder with UTF-8 characters, or pass "
            "another path; nothing more was written.")


# --------------------------------------------------------------------------------------------------
# Shared options
# --------------------------------------------------------------------------------------------------

PipelineOpt = Annotated[str | None, typer.Option("--pipeline", "-p", help="FEATURES[@LAYER]+REDUCER+CLUSTERER, "
                        "e.g. mobilenet_v2+umap+dbscan (see `rca-gpu pipelines`). "
                        "Default: mobilenet_v2(center=auto,pool=grid2)+umap+dbscan.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML run configuration; "
                      "command-line options override it.")]
DeviceOpt = Annotated[DeviceChoice | None, typer.Option("--device", help="auto: GPU when CUDA and the GPU "
                      "libraries import; gpu: fail without them; cpu.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed for UMAP, K-means and sampling.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Images per batch during extraction.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="DataLoader worker processes for decoding.")]
PrecisionOpt = Annotated[Precision | None, typer.Option("--precision", help="fp32, or bf16 autocast "
                         "for extraction.")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="The DNN under test: TorchScript .pt, "
                     "torch.export .pt2, ONNX .onnx, or package.module:factory=weights.pt.")]
WeightsOpt = Annotated[str | None, typer.Option("--weights", help="Backbone weights: a state_dict file, "
                       "a torchvision weights name (IMAGENET1K_V1), or none.")]
KnnOpt = Annotated[KnnBackend | None, typer.Option("--knn-backend", help="Neighbour search backend.")]
RootOpt = Annotated[Path | None, typer.Option("--image-root", help="Manifests: image paths must resolve "
                    "inside this folder (default: the manifest's folder).")]
ReportOpt = Annotated[bool, typer.Option("--report/--no-report", help="Write OUT/report.html (clusters, map, "
                      "explanations; opens offline).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug log lines.")]
MemoryOpt = Annotated[str | None, typer.Option("--max-image-memory", metavar="SIZE", help="Memory that "
                     "decoding images may use at once, e.g. 4GiB (default: a quarter of the machine's). Larger "
                     "images are decoded reduced (JPEG) or rejected with the reason.")]


def print_clusters(clusters, console=None, explanations=None, stability=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from rca_gpu.pipeline import cluster_summary

    console = console or Console()
    summary = cluster_summary(clusters, explanations, stability)
    described = [c for c in summary.columns if c not in ("cluster", "size", "stability", "explanation")]
    if console.width < WIDE_TERMINAL:  # a narrow terminal shows the first metadata column only
        described = described[:1]
    columns = [c for c in ("cluster", "size", "stability") if c in summary.columns] + described
    table = Table(title="Clusters (-1 = noise)")
    for column in columns:
        numeric = column in ("cluster", "size")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=numeric,
                         max_width=None if numeric else 28)
    if "explanation" in summary.columns:  # last, taking the width that is left
        columns.append("explanation")
        table.add_column("explanation", ratio=1)
    for row in summary[columns].itertuples(index=False):  # values are data: shown literally, never as markup
        table.add_row(*[escape(printable(v)) for v in row])
    console.print(table)


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


@app.command("run")
@friendly_errors
def run_command(
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder (an earlier run in it is replaced; "
                                     "the feature cache under OUT/cache is kept).")],
    source: Annotated[Path | None, typer.Argument(help="Folder of images (recursive) or manifest .csv/.parquet "
                                                     "with a 'path' column (or --features instead).")] = None,
    pipeline: PipelineOpt = None,
    config: ConfigOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    precision: PrecisionOpt = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    knn_backend: KnnOpt = None,
    image_root: RootOpt = None,
    cache: Annotated[bool | None, typer.Option("--cache/--no-cache", help="Keep extracted features as "
                     "Parquet shards under OUT/cache and reuse them.")] = None,
    plot_umap: Annotated[bool | None, typer.Option("--plot-umap/--no-plot-umap", help="2-D UMAP for "
                         "embedding.parquet when the chosen embedding is not 2-D (else PCA).")] = None,
    stability: Annotated[int | None, typer.Option("--stability", "--stability-resamples",
                         help="Resamples for each cluster's stability (subsample Jaccard); 0 = off. "
                         "Default: 10-20 resamples of the chosen embedding.")] = None,
    features: Annotated[Path | None, typer.Option("--features", help="Your own features instead of SOURCE: "
                        ".parquet (id, optional path and metadata columns, one list column or f0..fN) or 2-D .npy; "
                        "the pipeline then has no feature stage (default umap+dbscan).")] = None,
    metadata: Annotated[Path | None, typer.Option("--metadata", help="With --features: .csv/.parquet with one "
                        "row per feature row, same order (id, path, root_cause, ...).")] = None,
    dask: Annotated[str | None, typer.Option("--dask", help="local, or a scheduler address tcp://HOST:8786: "
                    "extraction on Dask workers (kNN graph too on dask-cuda workers).")] = None,
    sample_size: Annotated[int | None, typer.Option("--sample-size", help="Above this many usable images, "
                           "hyper-parameters are chosen on a seeded sample of this size and extended to the "
                           "rest (default 5000).")] = None,
    max_image_memory: MemoryOpt = None,
    report: ReportOpt = True,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Cluster the failing images in SOURCE (or the features in --features FILE); write clusters.parquet,
    embedding.parquet, run.json to OUT."""
    from rca_gpu.data.paths import check_output_path
    from rca_gpu.runfolder import check_run_out_folder

    # before the spec, the source or any model is read
    check_output_path(out, "--out")
    check_run_out_folder(out, {"SOURCE": source, "--features": features, "--metadata": metadata,
                               "--config": config, "--weights": weights})
    reporter = reporter_for(quiet, verbose)
    from rca_gpu.launch import pipeline_for_features, run_inputs

    if features is not None:
        pipeline = pipeline_for_features(pipeline, config)
    spec = build_spec(
        pipeline, config, device=device, seed=seed, batch_size=batch_size, workers=workers,
        precision=precision, model=model, weights=weights, knn_backend=knn_backend, image_root=image_root,
        cache_features=cache, plot_embedding=plot_umap, stability=stability, sample_size=sample_size,
        max_image_memory=max_image_memory,
    )
    result = run_inputs(spec, source, out, features=features, metadata=metadata, dask=dask, reporter=reporter,
                        report=report)
    _echo_result(result, show_clusters=not quiet, images="images")


def _echo_result(result, *, show_clusters: bool, images: str) -> None:
    """What ``run`` and ``demo`` print at the end: the clusters, the counts, the ground truth, where."""
    if show_clusters:
        print_clusters(result.clusters, explanations=result.explanations, stability=result.stability)
    counts = result.run_info["counts"]
    typer.echo(
        f"{counts['clusters']} cluster{'' if counts['clusters'] == 1 else 's'}, {counts['noise']} noise, "
        f"{counts['rejected']} rejected of "
        f"{counts['input_rows']} {images}; pipeline {result.run_info['resolved_pipeline']}"
    )
    _echo_ground_truth(result.metrics, result.metrics_table)
    typer.echo(f"results: {printable(result.out.resolve())}")
    if result.report is not None:
        typer.echo(f"report: {printable(result.report.resolve())}")


def _echo_ground_truth(metrics: dict | None, per_cause=None) -> None:
    """One line of the ground-truth metrics (docs/metrics.md), when the source knows the root causes. The
    coverage of the injected causes is shown when ``per_cause`` (``RunResult.metrics_table``) has the cause
    ``none``: without it, it is the coverage itself."""
    if not metrics:
        return
    from rca_gpu.metrics import NO_CAUSE

    def fmt(key: str) -> str:  # None where undefined, e.g. purity when every image is noise
        value = metrics.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    has_none = per_cause is not None and (per_cause["root_cause"].astype(str) == NO_CAUSE).any()
    injected = f"; injected causes {fmt('coverage_injected')}" if has_none else ""
    typer.echo(
        f"against the known root causes: weighted purity {fmt('weighted_purity')}, coverage {fmt('coverage')} "
        f"({metrics['n_causes_covered']} of {metrics['n_causes']} causes{injected}), ARI "
        f"{fmt('ari_with_noise')}; details in metrics.json"
    )


@app.command("pipelines")
def pipelines_command(quiet: QuietOpt = False) -> None:
    """List the feature extractors, reducers and clusterers, with their parameters.

    With --quiet, one line per stage instead of the table: the stage and the names of its choices.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from rca_gpu.engine import registry
    from rca_gpu.spec import extractors

    reducers, clusterers = registry.reducers(), registry.clusterers()
    if quiet:
        for stage, choices in (("features", extractors()), ("reduce", reducers), ("cluster", clusterers)):
            typer.echo(f"{stage}: {', '.join(choices)}")
        return

    def names(params) -> str:  # a parameter with a fixed set of values lists them: "select (merged, ...)"
        return ", ".join(f"{key} ({', '.join(p.choices)})" if p.rule == "choice" else key for key, p in params.items())

    table = Table(title=escape("Pipeline stages: FEATURES[@LAYER]+REDUCER+CLUSTERER"),
                  caption="Parameters left out are chosen automatically.")
    for column in ("stage", "name", "parameters", "about"):
        table.add_column(column)
    for name, info in extractors().items():
        about = info.summary + (" (needs --model)" if info.needs_dut else "")
        table.add_row("features", escape(name + ("[@layer]" if info.has_layers else "")), names(info.params),
                      escape(about))
    for name, reducer in reducers.items():
        table.add_row("reduce", name, names(reducer.params), escape(reducer.summary))
    for name, clusterer in clusterers.items():
        table.add_row("cluster", name, names(clusterer.all_params), escape(clusterer.summary))
    Console().print(table)


@app.command("demo")
@friendly_errors
def demo_command(
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder.")] = "runs/demo",
    n: Annotated[int | None, typer.Option("--n", min=1, help="Failures in the embedded benchmark "
                                             "(default: the dataset's default n).")] = None,
    pipeline: PipelineOpt = None,
    device: DeviceOpt = None,
    seed: SeedOpt = None,
    max_image_memory: MemoryOpt = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write OUT/run/report.html (clusters, "
                                         "map, explanations; opens offline).")] = True,
    quiet: QuietOpt = False,
) -> None:
    """Make the embedded mnist-rc benchmark (offline) and run the default pipeline on it.

    The benchmark in OUT/data is reused when it was made with the same --n and --seed; otherwise it is made
    again (as `rca-gpu datasets make` does), and the line printed says why."""
    from rca_gpu.data.paths import check_output_path
    from rca_gpu.outputs import writing
    from rca_gpu.runfolder import check_out_folder

    check_output_path(out, "--out")
    folder = check_out_folder(out)
    spec = build_spec(pipeline, None, device=device, seed=seed, max_image_memory=max_image_memory)
    with writing(folder, "rca-gpu demo"):  # the benchmark and its run: one demo at a time in OUT
        _demo(folder, spec, n=n, seed=seed, report=report, quiet=quiet)


def _demo(out: Path, spec, *, n: int | None, seed: int | None, report: bool, quiet: bool) -> None:
    reporter = reporter_for(quiet)
    from rca_gpu.datasets import dataset_differences, make_dataset
    from rca_gpu.runfiles import DATASET_MANIFEST, DEMO_DATA, DEMO_RUN

    data_dir = out / DEMO_DATA
    manifest = data_dir / DATASET_MANIFEST
    differences = dataset_differences(data_dir, "mnist-rc", n=n, seed=seed or 0)
    if differences:
        why = "" if differences == ["no benchmark"] else f" again (the earlier one has {', '.join(differences)})"
        if why or not quiet:  # a changed value is never replaced silently
            typer.echo(f"making the mnist-rc benchmark{why} in {printable(data_dir.resolve())} ...")
        manifest = make_dataset("mnist-rc", data_dir, n=n, seed=seed or 0, reporter=reporter)
    from rca_gpu.pipeline import run

    result = run(spec, manifest, out / DEMO_RUN, reporter=reporter, report=report)
    _echo_result(result, show_clusters=not quiet, images="failing images")


def _mount_subcommands() -> None:
    """Command groups living in their own modules (each imports its heavy libraries lazily)."""
    from rca_gpu.commands import assign, causes, compare, select, verify
    from rca_gpu.commands.datasets import app as datasets_app
    from rca_gpu.commands.doctor import doctor_command
    from rca_gpu.commands.evaluate import evaluate_command
    from rca_gpu.commands.report import export_command, report_command
    from rca_gpu.commands.study import study_command

    app.add_typer(datasets_app, name="datasets")
    app.command("evaluate")(friendly_errors(evaluate_command))
    app.command("study")(friendly_errors(study_command))
    app.command("doctor")(doctor_command)
    app.command("report")(friendly_errors(report_command))
    app.command("export")(friendly_errors(export_command))
    for name, command in (("causes", causes.causes_command), ("assign", assign.assign_command),
                          ("compare", compare.compare_command), ("select", select.select_command),
                          ("verify", verify.verify_command)):
        app.command(name)(friendly_errors(command))


_mount_subcommands()


def main() -> None:
    try:
        app()
    except RcaError as exc:  # raised outside a wrapped command (e.g. while mounting)
        _err(str(exc))
        sys.exit(exc.exit_code)
    except OSError as exc:  # a full disk or read-only folder in a command without friendly_errors
        from rca_gpu.outputs import as_output_error

        refused = as_output_error(exc)
        if refused is None:
            raise
        _err(str(refused))
        sys.exit(refused.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
