"""``rca-gpu verify RUN_DIR POOL``: is each cause a real failure mode of the DNN? Its failure rate on a pool of
images the DNN was run on, against the pool's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rca_gpu.commands.assign import (
    AlphaOpt,
    BatchOpt,
    Device,
    DeviceOpt,
    ModelOpt,
    RootOpt,
    RunDirArg,
    WorkersOpt,
)
from rca_gpu.commands.options import QuietOpt
from rca_gpu.progress import reporter_for


def verify_command(
    run_dir: RunDirArg,
    pool: Annotated[Path, typer.Argument(help="A manifest .csv/.parquet of images the DNN was run on, passing and "
                                         "failing, with columns path, label and prediction.", metavar="POOL",
                                         show_default=False)],
    device: DeviceOpt = Device.auto,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    image_root: RootOpt = None,
    model: ModelOpt = None,
    alpha: AlphaOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Assign POOL to the causes of RUN_DIR (as `rca-gpu assign` does) and compare each cause's failure rate
    with the pool's: lift = failure rate among the pool images assigned to the cause / the pool's failure rate,
    with a 95 % interval (Katz log interval of the risk ratio, Biometrics 1978). Writes RUN_DIR/verify.json; the
    report shows it once written again (rca-gpu report RUN_DIR)."""
    from rca_gpu.catalogue.reference import ALPHA
    from rca_gpu.catalogue.verify import VERIFY_FILE, verify_run
    from rca_gpu.runfiles import REPORT_FILE

    reporter = reporter_for(quiet)
    summary = verify_run(run_dir, pool, device=device.value, batch_size=batch_size, workers=workers,
                         image_root=str(image_root) if image_root else None, model=model,
                         alpha=ALPHA if alpha is None else alpha, reporter=reporter)
    if not quiet:
        print_verification(summary)
    real = sum(1 for row in summary["per_cause"].values() if row["verdict"] == "real failure mode")
    active = sum(1 for row in summary["per_cause"].values() if row["status"] == "cause")
    folder = Path(summary["run_folder"])
    typer.echo(f"{real} of {active} causes are real failure modes on {summary['images']} pool images (failure rate "
               f"{summary['failure_rate']:.1%}); results: {folder / VERIFY_FILE}")
    if (folder / REPORT_FILE).is_file():
        typer.echo(f"report.html shows them once rewritten: rca-gpu report {folder}")


def print_verification(summary, console=None) -> None:
    """Per cause: pool images assigned, failures, failure rate, lift with its interval, verdict."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Causes verified on {summary['images']} pool images (failure rate "
                        f"{summary['failure_rate']:.1%}); 95% interval of the lift")
    for column in ("cause", "name", "images", "failures", "rate", "lift", "interval", "verdict"):
        table.add_column(column, justify="right" if column in ("cause", "images", "failures", "rate", "lift")
                         else "left", overflow="fold")
    for cause, row in summary["per_cause"].items():
        rate = "-" if row["failure_rate"] is None else f"{row['failure_rate']:.1%}"
        lift = "-" if row["lift"] is None else f"{row['lift']:.2f}"
        interval = "-" if row["low"] is None else f"{row['low']:.2f} to {row['high']:.2f}"
        verdict = row["verdict"] + (" (dropped)" if row["status"] == "dropped" else "")
        table.add_row(cause, escape(str(row["name"])), str(row["images"]), str(row["failures"]), rate, lift,
                      interval, escape(verdict))
    (console or Console()).print(table)
