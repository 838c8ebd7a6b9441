"""``rca-gpu assign RUN_DIR NEW_SOURCE --out DIR``: assign new images to the known causes of a run."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from rca_gpu.commands.options import QuietOpt
from rca_gpu.progress import reporter_for


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


RunDirArg = Annotated[Path, typer.Argument(help="Output folder of a finished `rca-gpu run`.", metavar="RUN_DIR",
                                           show_default=False)]
DeviceOpt = Annotated[Device, typer.Option("--device", help="auto: GPU when CUDA and the GPU libraries import; "
                                           "gpu: fail without them; cpu.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per batch during extraction "
                                                 "(default: the run's).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=0, help="DataLoader worker processes "
                                                   "(default: the run's).")]
RootOpt = Annotated[Path | None, typer.Option("--image-root", help="Manifests: image paths must resolve inside "
                                                 "this folder (default: the manifest's folder).")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="The DNN under test, for runs whose features "
                                                 "come from it (default: the run's --model).")]
AlphaOpt = Annotated[float | None, typer.Option("--alpha", help="Open-set strictness: share of the run's own "
                                                "reference images allowed beyond the radius, in [0, 0.5); larger = "
                                                "more 'unknown' (default 0.01).")]


def assign_command(
    run_dir: RunDirArg,
    source: Annotated[Path, typer.Argument(help="New images: a folder (recursive) or a manifest .csv/.parquet "
                                           "with a 'path' column.", metavar="NEW_SOURCE", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for assignments.parquet and assign.json.")],
    device: DeviceOpt = Device.auto,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    image_root: RootOpt = None,
    model: ModelOpt = None,
    alpha: AlphaOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Assign each new image to a known cause of RUN_DIR or to 'unknown', with a distance and a confidence.

    The run's own extractor encodes the images; each is compared with the run's reference images in that
    feature space (vote of the 10 nearest; 'unknown' beyond the radius calibrated on them). Writes one row per input row
    to OUT/assignments.parquet (status assigned | unknown | not_a_cause | rejected, with the reason).
    """
    from rca_gpu.catalogue.assign import assign_run
    from rca_gpu.data.paths import check_output_path

    check_output_path(out, "--out")
    from rca_gpu.catalogue.reference import ALPHA
    from rca_gpu.runfiles import ASSIGNMENTS_FILE

    reporter = reporter_for(quiet)
    table, summary = assign_run(run_dir, source, out, device=device.value, batch_size=batch_size, workers=workers,
                                image_root=str(image_root) if image_root else None, model=model,
                                alpha=ALPHA if alpha is None else alpha, reporter=reporter)
    counts = summary["counts"]
    if not quiet and summary.get("note") is None:
        print_assignment_counts(summary)
    if summary.get("note"):
        typer.echo(summary["note"])
    typer.echo(
        f"{counts['assigned']} assigned, {counts['unknown']} unknown, {counts['not_a_cause']} not a cause, "
        f"{counts['rejected']} rejected of {summary['rows']} images; "
        f"results: {(Path(out) / ASSIGNMENTS_FILE).resolve()}"
    )


def print_assignment_counts(summary, console=None) -> None:
    """The images per cause, with the status of each cause: ``cause``, or ``dropped: not a cause`` for a cause
    dropped from the catalogue (its images have status not_a_cause)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    view = Table(title=f"Assigned to the causes of run {summary['catalogue_run_id']}")
    for column, justify in (("cause", "right"), ("status", "left"), ("name", "left"), ("images", "right"),
                            ("mean confidence", "right")):
        view.add_column(column, justify=justify, min_width=len(column) if justify == "right" else None)  # type: ignore[arg-type]
    for cause, row in summary["per_cause"].items():  # the rows of assign.json
        label = "dropped: not a cause" if row["status"] == "dropped" else "cause"
        view.add_row(cause, label, escape(str(row["name"])), str(row["images"]), f"{row['mean_confidence']:.2f}")
    (console or Console()).print(view)
