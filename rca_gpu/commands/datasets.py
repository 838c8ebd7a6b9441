"""``rca-gpu datasets``: list and generate the offline ground-truth failure benchmarks."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from rca_gpu.commands.options import QuietOpt
from rca_gpu.datasets import DATASETS

app = typer.Typer(
    help="Offline failure benchmarks with known root causes (images, manifest, DNN under test).",
    no_args_is_help=True,
)

#: Dataset names as a Typer choice, so `--help` lists them and a typo is caught before any work starts.
DatasetName = Enum("DatasetName", {name: name for name in DATASETS}, type=str)  # type: ignore[misc]


@app.command("list")
def list_command(quiet: QuietOpt = False) -> None:
    """Show each benchmark with its root causes, default share of failures and parameter ranges.

    With --quiet, one line per benchmark instead of the table: its name and root causes.
    """
    from rich.console import Console
    from rich.table import Table

    from rca_gpu.datasets import list_datasets

    if quiet:
        for info in list_datasets():
            typer.echo(f"{info.name}: {', '.join(cause.name for cause in info.causes)}")
        return
    table = Table(title="rca-gpu benchmarks (default share of the failures per root cause)")
    table.add_column("dataset", no_wrap=True)
    table.add_column("cause", no_wrap=True)
    table.add_column("share", justify="right")
    table.add_column("what it looks like", ratio=3, overflow="fold")
    table.add_column("parameter ranges", ratio=2, overflow="fold")
    for info in list_datasets():
        for position, cause in enumerate(info.causes):
            ranges = ", ".join(f"{k} {_range(v)}" for k, v in cause.ranges.items())
            table.add_row(
                f"{info.name}\n[dim]default n={info.default_n}[/dim]" if position == 0 else "",
                cause.name,
                f"{cause.default_proportion:.0%}",
                cause.summary,
                ranges or "-",
                end_section=position == len(info.causes) - 1,
            )
    Console().print(table)


@app.command("make")
def make_command(
    name: Annotated[DatasetName, typer.Argument(help="Benchmark to generate (see 'rca-gpu datasets list').")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (new, empty, or an earlier benchmark).")
    ],
    n: Annotated[
        int | None,
        typer.Option("--n", min=1, help="Number of failures; default: the dataset's default n (see list)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of split, DUT and drawn parameters.")] = 0,
    proportions: Annotated[
        str | None,
        typer.Option(
            "--proportions", help="Shares of the failures, e.g. 'rotation=2,blur=1' (replaces defaults)."
        ),
    ] = None,
    include_passing: Annotated[
        bool,
        typer.Option("--include-passing", help="Also write passing inputs to passing/ and passing.parquet."),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate a benchmark: PNGs, manifest.parquet with root causes, the DUT and dataset.json."""
    from rich.console import Console
    from rich.table import Table

    from rca_gpu.data.paths import check_output_path
    from rca_gpu.datasets import make_dataset
    from rca_gpu.progress import reporter_for
    from rca_gpu.runfiles import DATASET_DUT, DATASET_DUT_STATE, DATASET_INFO, DATASET_PASSING
    from rca_gpu.runfolder import check_out_folder

    check_output_path(out, "--out")
    check_out_folder(out)  # before a DUT is trained
    manifest = make_dataset(
        name.value,
        out,
        n=n,
        seed=seed,
        proportions=_parse_proportions(proportions),
        include_passing=include_passing,
        reporter=reporter_for(quiet),
    )
    manifest = manifest.resolve()  # printed absolute, like every command's outputs
    summary = json.loads((manifest.parent / DATASET_INFO).read_text())
    console = Console()
    # paths are data (no markup), kept on one line so that they can be copied
    console.print(f"Wrote {summary['n_failures']} failures: {manifest}", markup=False, soft_wrap=True)
    if include_passing:
        console.print(f"Passing inputs: {manifest.parent / DATASET_PASSING}", markup=False, soft_wrap=True)
    if quiet:
        return
    console.print(
        f"DUT: {summary['dut']['architecture']} (weights {manifest.parent / DATASET_DUT_STATE}, TorchScript "
        f"{manifest.parent / DATASET_DUT}), clean accuracy {summary['dut']['clean_accuracy']:.2%}", markup=False
    )
    table = Table(title=f"{summary['name']} failures per root cause")
    table.add_column("cause", no_wrap=True)
    for column in ("failures", "share", "asked", "DUT failure rate"):
        table.add_column(column, justify="right")
    for cause, info in summary["causes"].items():
        if info["target"] == 0 and info["failures"] == 0:
            continue  # a cause left out of --proportions
        rate = info["dut_failure_rate"]
        table.add_row(
            cause,
            str(info["failures"]),
            f"{summary['observed_proportions'][cause]:.1%}",
            f"{summary['proportions'][cause]:.1%}",
            "-" if rate is None else f"{rate:.1%}",
        )
    console.print(table)


def _parse_proportions(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    shares: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        cause, sep, value = item.partition("=")
        try:
            shares[cause.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise typer.BadParameter(
                f"{item!r} is not cause=share. Write e.g. 'rotation=2,blur=1'.", param_hint="--proportions"
            )
    return shares


def _range(bounds: tuple[float, float]) -> str:
    low, high = bounds
    return f"[{low:g}, {high:g}]"
