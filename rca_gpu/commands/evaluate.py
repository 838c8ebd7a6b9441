"""``rca-gpu evaluate DIR``: score a finished run against the true root causes of its images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

# Summary lines printed under the per-cause table, in this order: (key, label).
_SUMMARY_ROWS = (
    ("study_score", "study score"),
    ("n_images", "images evaluated"),
    ("n_causes", "root causes"),
    ("n_clusters", "clusters (noise excluded)"),
    ("noise_share", "noise share"),
    ("weighted_purity", "purity, weighted by size"),
    ("mean_purity", "purity, mean over clusters"),
    ("coverage", "coverage"),
    ("mean_recall", "recall, mean over causes"),
    ("ari_with_noise", "ARI, noise as one label"),
    ("ari_without_noise", "ARI, noise excluded"),
    ("nmi_with_noise", "NMI, noise as one label"),
    ("nmi_without_noise", "NMI, noise excluded"),
)


def evaluate_command(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="Output folder of `rca-gpu run` (holds clusters.parquet).",
            metavar="RUN_DIR",
            show_default=False,
        ),
    ],
    min_purity: Annotated[
        float,
        typer.Option(help="Purity a cluster needs to count for coverage and recall, in [0, 1]."),
    ] = 0.5,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No tables: only where the metrics were written."),
    ] = False,
) -> None:
    """Score a run against the true root causes: purity, coverage, recall, ARI, NMI, noise share.

    Needs a source with a root_cause column. Writes metrics.json and per_cause.csv into RUN_DIR.
    """
    # Imported here so that `rca-gpu --help` does not pay for pandas and scikit-learn.
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from rca_gpu.metrics import METRICS_FILE, PER_CAUSE_FILE, evaluate_run

    result = evaluate_run(run_dir, min_purity=min_purity)
    console = Console()

    table = Table(title=f"Per root cause (clusters count if purity >= {min_purity:g})")
    for name, justify in (
        ("root cause", "left"),
        ("images", "right"),
        ("recall", "right"),
        ("clusters dominated", "right"),
        ("best purity", "right"),
        ("noise share", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in result.per_cause.itertuples(index=False):
        table.add_row(
            escape(str(row.root_cause)),  # cause names are data, not markup
            str(row.n_images),
            _fmt(row.recall),
            str(row.n_clusters_dominated),
            _fmt(row.best_purity),
            _fmt(row.share_noise),
        )
    if not quiet:
        console.print(table)

    summary = Table(title="Summary", show_header=False)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for key, label in _SUMMARY_ROWS:
        summary.add_row(label, _fmt(result.summary.get(key)))
    if not quiet:
        console.print(summary)

    counts = result.counts
    if not quiet and (counts.get("n_rejected") or counts.get("n_without_root_cause")):
        console.print(
            f"Left out: {counts['n_rejected']} rejected image(s), "
            f"{counts['n_without_root_cause']} without a root cause."
        )
    console.print(
        f"Metrics written to {Path(run_dir).resolve() / METRICS_FILE} and {Path(run_dir).resolve() / PER_CAUSE_FILE}",
        markup=False,
        highlight=False,
        soft_wrap=True,  # keep paths on one line so they can be copied
    )


def _fmt(value: Any) -> str:
    """Integers as they are, fractions with three decimals, undefined values as a dash."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
