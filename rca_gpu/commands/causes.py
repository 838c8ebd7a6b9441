"""``rca-gpu causes RUN_DIR``: show the causes of a run; name, merge, split and drop them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rca_gpu.progress import WIDE_TERMINAL


def causes_command(
    run_dir: Annotated[Path, typer.Argument(help="Output folder of a finished `rca-gpu run`.", metavar="RUN_DIR",
                                            show_default=False)],
    name: Annotated[list[str] | None, typer.Option("--name", metavar="ID=NAME",
                    help='Name a cause, e.g. --name 3="rotated left"; --name 3= clears the name '
                    '(repeatable).')] = None,
    merge: Annotated[list[str] | None, typer.Option("--merge", metavar="ID,ID[,...]",
                     help="Merge causes into the one with the smallest id, e.g. --merge 4,7 (repeatable).")] = None,
    split: Annotated[list[str] | None, typer.Option("--split", metavar="ID[=PARTS]",
                     help="Re-cluster one cause into PARTS new causes (default: 2-6 by silhouette), e.g. "
                     "--split 5 or --split 5=3 (repeatable).")] = None,
    drop: Annotated[list[int] | None, typer.Option("--drop", metavar="ID",
                    help="Mark a cause as not a cause; later commands skip it (repeatable).")] = None,
    restore: Annotated[list[int] | None, typer.Option("--restore", metavar="ID",
                       help="Undo --drop for a cause (repeatable).")] = None,
    reset: Annotated[bool, typer.Option("--reset", help="Forget every edit (removes causes.toml and "
                                        "causes.parquet) before applying the options given with it.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table: only where the edits went, and "
                                        "edits that changed nothing.")] = False,
    suggest: Annotated[bool, typer.Option("--suggest", help="List pairs of causes that may be one (evidence: "
                                          "metadata, rules, kNN links; a confidence) and print the --merge command "
                                          "that accepts the likely ones; after the edits given with it.")] = False,
) -> None:
    """Show the causes of a run with stable ids; edits go to RUN_DIR/causes.toml, never into the run's outputs.

    Edits apply in this order: reset, merges, splits, drops, restores, names. Every later command (report,
    assign, compare, select) uses the edited catalogue.
    """
    from rich.console import Console

    from rca_gpu.catalogue.causes import CAUSES_FILE, load_catalogue, parse_edit, parse_ids
    from rca_gpu.catalogue.folders import check_run_dir
    from rca_gpu.runfiles import REPORT_FILE

    check_run_dir(run_dir)
    catalogue = load_catalogue(run_dir)
    # parse everything before changing anything, so a bad value leaves the catalogue as it was
    merges = [parse_ids("--merge", text) for text in merge or []]
    splits = []
    for text in split or []:
        cause, parts = parse_edit("--split", text)
        splits.append((cause, _parts(cause, parts)))
    names = [parse_edit("--name", text) for text in name or []]
    edits = bool(reset or merges or splits or drop or restore or names)
    before = len(catalogue.history)
    unchanged = []  # edits that change nothing are reported, not recorded
    if reset and catalogue.history:
        catalogue.reset()
    elif reset:
        unchanged.append("--reset: the catalogue has no edits")
    for ids in merges:
        catalogue.merge(ids)
    for cause, count in splits:
        catalogue.split(cause, count)
    for cause in drop or []:
        if not catalogue.drop(cause):
            unchanged.append(f"--drop {cause}: cause {cause} is dropped already")
    for cause in restore or []:
        if not catalogue.restore(cause):
            unchanged.append(f"--restore {cause}: cause {cause} is not dropped")
    for cause, new_name in names:
        if not catalogue.rename(cause, new_name or ""):
            unchanged.append(f"--name {cause}={new_name}: cause {cause} has that name already"
                             if (new_name or "").strip() else f"--name {cause}=: cause {cause} has no name")
    changed = (reset and before > 0) or len(catalogue.history) != before
    written = catalogue.save() if changed else []

    console = Console()
    if not quiet:
        print_causes(catalogue, console)
    for note in unchanged:
        console.print(f"nothing to change for {note}", markup=False, highlight=False, soft_wrap=True)
    if changed:
        target = Path(run_dir).resolve() / CAUSES_FILE
        console.print(f"edits written to {target}" if written else f"no edits left; removed {target}",
                      markup=False, highlight=False, soft_wrap=True)
        if (Path(run_dir) / REPORT_FILE).is_file():
            console.print(f"report.html shows them once rewritten: rca-gpu report {target.parent}", markup=False,
                          highlight=False, soft_wrap=True)
    elif edits:
        console.print("nothing to change; causes.toml was not written", markup=False, highlight=False,
                      soft_wrap=True)
    if suggest:
        print_suggestions(catalogue, console, quiet=quiet)


def print_suggestions(catalogue, console, *, quiet: bool = False) -> None:
    """The merge suggestions of a catalogue (rca_gpu.report.suggest): a table of the pairs with their evidence
    (unless ``quiet``), then the exact ``rca-gpu causes RUN --merge ...`` command for the likely ones."""
    from rich.markup import escape
    from rich.table import Table

    from rca_gpu.report.suggest import LIKELY, POSSIBLE, merge_command, merge_groups, suggest_merges

    suggestions = suggest_merges(catalogue)
    if not quiet and suggestions:
        table = Table(title="Maybe the same cause")
        for column in ("causes", "confidence", "metadata", "rules", "links"):
            table.add_column(column, justify="left" if column == "causes" else "right", no_wrap=True)
        table.add_column("evidence", overflow="fold", ratio=1)
        for s in suggestions:
            cells = [f"{s.a} + {s.b}", f"{s.confidence:.2f} {s.level}"]
            cells += ["-" if v is None else f"{v:.2f}" for v in (s.metadata, s.rules, s.links)]
            table.add_row(*cells, escape(s.why.split(": ", 1)[1]))  # column names are data, not markup
        console.print(table)
    command = merge_command(catalogue.run.path, merge_groups(suggestions, at=LIKELY))
    if command is None:
        console.print(f"no pair of causes reaches confidence {LIKELY:g}: no merge to suggest"
                      + (f" ({len(suggestions)} possible above {POSSIBLE:g})" if suggestions else ""),
                      markup=False, highlight=False, soft_wrap=True)
    else:
        console.print(f"to merge the likely ones (confidence >= {LIKELY:g}): {command}", markup=False,
                      highlight=False, soft_wrap=True)

_NUMERIC = ("cause", "size", "stability")


def print_causes(catalogue, console) -> None:
    """The causes table, readable at the console's width: headers never cut, numbers on one line, text
    wrapped. Below WIDE_TERMINAL columns only the first metadata column (root_cause, label...) is shown; the
    last text column takes the width that is left."""
    from rich.markup import escape
    from rich.table import Table

    frame = catalogue.table()
    fixed = [c for c in ("cause", "size", "stability", "status", "origin", "name") if c in frame.columns]
    described = [c for c in frame.columns if c not in fixed]
    if console.width < WIDE_TERMINAL:
        described = described[:1]
    columns = fixed + described
    table = Table(title=f"Causes of run {catalogue.run_id}" + (" (edited)" if catalogue.history else ""))
    for column in columns:
        numeric = column in _NUMERIC
        table.add_column(column, justify="right" if numeric else "left", no_wrap=column in ("cause", "size"),
                         min_width=len(column), overflow="fold", ratio=1 if column == columns[-1] else None)
    for row in frame[columns].to_dict("records"):
        cells = []
        for column, value in row.items():
            if column == "stability":
                value = "" if value != value else f"{value:.2f}" + (" unstable" if value < 0.6 else "")
            cells.append(escape(str(value)))  # names and labels are data, not markup
        table.add_row(*cells)
    console.print(table)


def _parts(cause: int, raw: str | None) -> int | None:
    from rca_gpu.catalogue.reference import CatalogueError

    if raw is None or not raw.strip():
        return None
    try:
        return int(raw)
    except ValueError:
        raise CatalogueError(f"The --split value {cause}={raw!r} must give the number of parts, e.g. "
                             f"--split {cause}=3.") from None
