"""``rca-gpu compare RUN_A RUN_B``: which causes of run A persist in run B, shrank, vanished, and which are new."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from rca_gpu.commands.assign import BatchOpt, DeviceOpt, Device, QuietOpt, WorkersOpt, reporter_for


class By(str, Enum):
    auto = "auto"
    images = "images"
    assign = "assign"


def compare_command(
    run_a: Annotated[Path, typer.Argument(help="The earlier run folder (e.g. before retraining).", metavar="RUN_A",
                                          show_default=False)],
    run_b: Annotated[Path, typer.Argument(help="The later run folder; comparison.parquet is written into it.",
                                          metavar="RUN_B", show_default=False)],
    by: Annotated[By, typer.Option("--by", help="images: match clusters by the images both runs hold; assign: "
                                   "assign B's images to A's causes; auto: shared images where there are, "
                                   "assignment for the rest.")] = By.auto,
    device: DeviceOpt = Device.auto,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Compare the causes of two runs (their edited catalogues): persists, shrank, vanished, new, with sizes.

    Writes RUN_B/comparison.parquet and RUN_B/comparison.json.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from rca_gpu.catalogue.compare import COMPARISON_FILE, compare_runs

    reporter = reporter_for(quiet)
    result = compare_runs(run_a, run_b, by=by.value, device=device.value, batch_size=batch_size,
                          workers=workers, reporter=reporter)
    info = result.info
    view = Table(title=f"Causes of run A {info['run_a'][:8]} in run B {info['run_b'][:8]} (by {info['mode']})")
    for column in ("status", "cause A", "name A", "size A", "size B", "cause B", "name B", "B causes"):
        view.add_column(column, justify="right" if column.startswith(("size", "cause")) else "left")
    for row in result.table.itertuples(index=False):
        view.add_row(row.status, "" if row.cause_a < 0 else str(row.cause_a), escape(row.name_a), str(row.size_a),
                     str(row.size_b), "" if row.cause_b < 0 else str(row.cause_b), escape(row.name_b),
                     escape(row.b_causes))
    Console().print(view)
    statuses = ", ".join(f"{n} {s}" for s, n in info["statuses"].items())
    images = info["images"]
    typer.echo(f"{statuses}; B's {images['b_images']} images: {images['shared']} shared with A, "
               f"{images['assigned']} assigned to A's causes; results: {Path(run_b).resolve() / COMPARISON_FILE}")
