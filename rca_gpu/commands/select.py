"""``rca-gpu select RUN_DIR POOL_SOURCE --budget N --out DIR``: pick retraining images from an unlabelled pool."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from rca_gpu.commands.assign import AlphaOpt, BatchOpt, Device, DeviceOpt, ModelOpt, RootOpt, RunDirArg, WorkersOpt
from rca_gpu.commands.options import QuietOpt
from rca_gpu.progress import reporter_for


class Spread(str, Enum):
    proportional = "proportional"
    equal = "equal"


def select_command(
    run_dir: RunDirArg,
    pool: Annotated[Path, typer.Argument(help="Unlabelled images: a folder (recursive) or a manifest .csv/.parquet.",
                                         metavar="POOL_SOURCE", show_default=False)],
    budget: Annotated[int, typer.Option("--budget", "-n", min=1, help="Number of images to select.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for selection.csv (the manifest), "
                                      "selection.parquet, assignments.parquet and select.json.")],
    spread: Annotated[Spread, typer.Option("--spread", help="proportional: a floor per cause, the rest by cause "
                                           "size in the run; equal: the same number per cause.")] = Spread.proportional,
    floor: Annotated[int | None, typer.Option("--floor", min=0, help="proportional: images per cause before the "
                                              "rest is shared by size (default: budget / (2 x causes)).")] = None,
    device: DeviceOpt = Device.auto,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    image_root: RootOpt = None,
    model: ModelOpt = None,
    alpha: AlphaOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Pick BUDGET pool images that fall in the run's causes, spread over causes; write a manifest.

    Images are assigned like `rca-gpu assign`; only those assigned to an active cause are candidates, taken
    most confident first within each cause.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from rca_gpu.catalogue.retraining import SELECTION_FILE, select_from_pool
    from rca_gpu.data.paths import check_output_path

    check_output_path(out, "--out")

    reporter = reporter_for(quiet)
    chosen, info = select_from_pool(run_dir, pool, out, budget=budget, spread=spread.value, floor=floor,
                                    device=device.value, batch_size=batch_size, workers=workers,
                                    image_root=str(image_root) if image_root else None, model=model,
                                    alpha=alpha, reporter=reporter)
    if not quiet:
        view = Table(title=f"Selection from the pool, by cause of run {info['catalogue_run_id'][:8]}")
        for column in ("cause", "status", "name", "size in run", "candidates", "selected"):
            view.add_column(column, justify="left" if column in ("status", "name") else "right")
        for cause, row in info["per_cause"].items():
            status = "dropped: not a cause" if row["status"] == "dropped" else "cause"
            view.add_row(cause, status, escape(row["name"]), str(row["size_in_run"]), str(row["candidates"]),
                         str(row["selected"]))
        Console().print(view)
    for line in info.get("notes", []):
        typer.echo(line)
    note = "" if info["selected"] >= budget else f" (only {info['candidates']} pool images fall in a known cause)"
    typer.echo(f"selected {info['selected']} of {info['pool_rows']} pool images{note}; manifest: "
               f"{(Path(out) / SELECTION_FILE).resolve()}")
