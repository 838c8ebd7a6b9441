"""``rca-gpu report RUN_DIR`` and ``rca-gpu export RUN_DIR --to DIR``: see a run's clusters, take them away."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

RunDirArg = Annotated[Path, typer.Argument(help="Output folder of a finished `rca-gpu run`.", metavar="RUN_DIR",
                                           show_default=False)]


class ExportMode(str, Enum):
    link = "link"
    copy = "copy"


class ExportFormat(str, Enum):
    folders = "folders"
    fiftyone = "fiftyone"


def report_command(
    run_dir: RunDirArg,
    map_points: Annotated[int, typer.Option("--map-points", min=1, help="Most points drawn on the map; "
                          "larger runs draw a sample of every cluster (the page says so).")] = 20_000,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only print the report's path.")] = False,
) -> None:
    """Write RUN_DIR/report.html: clusters with medoids, explanations, the map, ground truth (works offline)."""
    from rca_gpu.progress import reporter_for
    from rca_gpu.report.build import build_report

    reporter = reporter_for(quiet)  # the log lines (warnings only with --quiet) and the progress bar
    with reporter.task("report", total=None) as advance:
        result = build_report(run_dir, map_points=map_points, progress=advance)
    typer.echo(f"report: {result.path}")


def export_command(
    run_dir: RunDirArg,
    to: Annotated[Path, typer.Option("--to", help="Export folder: one sub-folder per cluster, plus noise and "
                  "rejected, each with a manifest.csv.", show_default=False)],
    clusters: Annotated[str | None, typer.Option("--clusters", help="Which ones, e.g. 3,5,noise,rejected "
                        "(default: all).")] = None,
    mode: Annotated[ExportMode, typer.Option("--mode", help="link: symbolic links to the images; copy: "
                    "copies.")] = ExportMode.link,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No line per group: only notes and the "
                                        "last line (files and folder).")] = False,
    layout: Annotated[ExportFormat, typer.Option("--format", help="folders: a folder per cluster with "
                      "manifest.csv; fiftyone: data/ and labels.csv, FiftyOne's CSVDataset layout (see "
                      "docs/report.md for the FiftyOne call).")] = ExportFormat.folders,
    ids: Annotated[Path | None, typer.Option("--ids", help="Only the images whose id a CSV file lists in its "
                   "'id' column, e.g. the selection.csv the report's map downloads.")] = None,
) -> None:
    """Export clusters to folders (images + manifest.csv each) for any image viewer or for retraining, or in
    FiftyOne's CSVDataset layout."""
    from rca_gpu.data.paths import check_output_path
    from rca_gpu.report.export import export_run, parse_selection

    check_output_path(to, "--to")
    result = export_run(run_dir, to, clusters=parse_selection(clusters), mode=mode.value, layout=layout.value,
                        ids=ids)
    for name, n in ({} if quiet else result.groups).items():
        typer.echo(f"{name}: {n} images")
    for name in result.empty:
        typer.echo(f"note: the run has no {name} images; no {name}/ folder made")
    missing = f" ({result.missing} listed without a file: see their reason)" if result.missing else ""
    typer.echo(f"exported {result.files} files{missing} to {result.folder}")
