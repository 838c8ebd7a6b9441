"""``rca-gpu compare RUN_A RUN_B``: which causes of run A persist in run B, grew, shrank, vanished, and which
are new."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from rca_gpu.commands.assign import BatchOpt, Device, DeviceOpt, WorkersOpt
from rca_gpu.commands.options import QuietOpt
from rca_gpu.progress import WIDE_TERMINAL, reporter_for


class Basis(str, Enum):
    auto = "auto"
    counts = "counts"
    shares = "shares"


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
    basis: Annotated[Basis, typer.Option("--basis", help="shares: compare each cause's share of its run's "
                                         "images; counts: its number of images; auto: counts when both runs "
                                         "hold as many images, else shares.")] = Basis.auto,
    device: DeviceOpt = Device.auto,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Compare the causes of two runs (their edited catalogues): persists, grew, shrank, vanished, new.

    Each cause's images in A and in B are shown as counts and as shares of the run's images; the status
    compares shares when the runs hold different numbers of images (--basis). Writes RUN_B/comparison.parquet
    and RUN_B/comparison.json.
    """
    from rich.console import Console

    from rca_gpu.catalogue.compare import COMPARISON_FILE, compare_runs

    reporter = reporter_for(quiet)
    result = compare_runs(run_a, run_b, by=by.value, basis=basis.value, device=device.value,
                          batch_size=batch_size, workers=workers, reporter=reporter)
    info = result.info
    if not quiet:
        print_comparison(result, Console())
    statuses = ", ".join(f"{n} {s}" for s, n in info["statuses"].items())
    images = info["images"]
    if info["run_a"] == info["run_b"] and not quiet:
        typer.echo("note: run A and run B are the same run (one run id): every cause persists by construction")
    split = [] if quiet else spread_causes(result.table)
    if split:
        typer.echo(f"note: {len(split)} of A's causes are spread over several of B's causes (B's main cause holds "
                   f"less than {KEPT_TOGETHER:.0%} of them: {', '.join(split)}); column b_causes of "
                   "comparison.parquet has every count")
    typer.echo(f"{statuses} (status by {basis_words(info)}); of B's {images['b_images']} images "
               f"{images['shared']} are shared with A and {images['assigned']} were assigned to A's causes"
               + (f" ({images['unreadable']} could not be read now and count as no cause)"
                  if images.get("unreadable") else "") + "; "
               f"results: {Path(run_b).resolve() / COMPARISON_FILE}")




#: A cause of A counts as kept together in B when B's main cause holds at least this share of its images.
KEPT_TOGETHER = 0.9


def main_share(b_causes: str, size_a: int) -> float | None:
    """The share of an A cause's images that fall in its main B cause, from ``b_causes`` ("4 (21), 7 (13), ...",
    largest first), or None when the cause has no image in B."""
    counts = [int(part.rsplit("(", 1)[1].rstrip(")")) for part in b_causes.split(", ") if "(" in part]
    return max(counts) / size_a if counts and size_a else None


def spread_causes(table) -> list[str]:
    """'<cause A> <name> <share>%' of every cause of A whose main B cause holds less than KEPT_TOGETHER of it."""
    out = []
    for row in table.itertuples(index=False):
        share = None if row.cause_a < 0 else main_share(row.b_causes, row.size_a)
        if share is not None and share < KEPT_TOGETHER:
            out.append(f"{row.cause_a}" + (f" {row.name_a}" if row.name_a else "") + f" {share:.0%}")
    return out


#: The name column of the narrow comparison table: run A's name of the cause, run B's for a new cause.
NARROW_NAME = "name (A; new: B)"


def print_comparison(result, console) -> None:
    """The comparison table at the console's width: all columns in wide terminals; below WIDE_TERMINAL,
    status, the causes, "size (share)" in A and in B, and the cause's name last, labelled whose it is (A's;
    B's for new causes),
    wrapped in the width that is left. Column names are never cut."""
    from rich.markup import escape
    from rich.table import Table

    info = result.info
    view = Table(title=f"Causes of run A {info['run_a'][:8]} in run B {info['run_b'][:8]} (matched by "
                       f"{info['mode']}; status by {basis_words(info)})")
    narrow = console.width < WIDE_TERMINAL
    columns: tuple[str, ...]
    if narrow:
        columns = ("status", "cause A", "in A", "in B", "cause B", NARROW_NAME)
    else:
        columns = ("status", "cause A", "name A", "size A", "share A", "size B", "share B", "cause B", "name B",
                   "B causes")
    for column in columns:
        numeric = column.startswith(("size", "share", "cause", "in "))
        view.add_column(column, justify="right" if numeric else "left", no_wrap=numeric or column == "status",
                        min_width=len(column), overflow="fold", ratio=1 if column == columns[-1] else None)
    for row in result.table.itertuples(index=False):
        new = row.cause_a < 0
        share_a = "" if new else f"{row.share_a:.1%}"
        cause_a = "" if new else str(row.cause_a)
        cause_b = "" if row.cause_b < 0 else str(row.cause_b)
        if narrow:
            view.add_row(row.status, cause_a, "" if new else f"{row.size_a} ({share_a})",
                         f"{row.size_b} ({row.share_b:.1%})", cause_b, escape(row.name_b if new else row.name_a))
        else:
            view.add_row(row.status, cause_a, escape(row.name_a), str(row.size_a), share_a, str(row.size_b),
                         f"{row.share_b:.1%}", cause_b, escape(row.name_b), escape(row.b_causes))
    console.print(view)


def basis_words(info: dict) -> str:
    """How the statuses were decided, in words, e.g. "shares of each run's images (A 1500, B 300)"."""
    if info.get("basis") == "shares":
        return f"shares of each run's images (A {info['images_a']}, B {info['images_b']})"
    return f"image counts (A {info['images_a']}, B {info['images_b']})"
