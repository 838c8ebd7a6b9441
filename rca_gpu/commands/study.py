"""``rca-gpu study``: run a matrix of pipelines over one source and rank them against the root causes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rca_gpu.commands.options import QuietOpt
from rca_gpu.progress import reporter_for
from rca_gpu.spec import STUDY_DUT_FEATURES, STUDY_FEATURES


def _split(values: list[str] | None) -> list[str] | None:
    """Accept repeated options and comma-separated lists (commas inside parentheses stay)."""
    if not values:
        return None
    from rca_gpu.spec import split_outside_parens

    out: list[str] = []
    for value in values:
        out.extend(part for part in split_outside_parens(value, ",") if part)
    return out


def study_command(
    source: Annotated[Path, typer.Argument(help="Folder or manifest with a root_cause column.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder (re-running resumes it).")],
    features: Annotated[list[str] | None, typer.Option("--features", "-f", help="Feature specs, e.g. "
                        f"pixels,mobilenet_v2,lrp@conv2 (default: {', '.join(STUDY_FEATURES)}, and "
                        f"{', '.join(STUDY_DUT_FEATURES)} when the DNN under test is known).")] = None,
    reducers: Annotated[list[str] | None, typer.Option("--reducers", "-r", help="umap,pca,none: names only, "
                        "the study tunes their parameters (default: all).")] = None,
    clusterers: Annotated[list[str] | None, typer.Option("--clusterers", "-k", help="dbscan,hdbscan,kmeans,"
                          "ward: names only, the study tunes their parameters (default: all).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="The DNN under test (else the manifest's).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | gpu")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    workers: Annotated[int | None, typer.Option("--workers")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="fp32 | bf16")] = None,
    max_image_memory: Annotated[str | None, typer.Option("--max-image-memory", metavar="SIZE",
                                help="Memory that decoding images may use at once, e.g. 4GiB (default: a "
                                "quarter of the machine's).")] = None,
    quiet: QuietOpt = False,
    top: Annotated[int, typer.Option("--top", help="Rows of the ranking to print.")] = 15,
) -> None:
    """Run every FEATURES x REDUCERS x CLUSTERERS pipeline on SOURCE; write study.parquet and study.md."""
    from rich.console import Console

    from rca_gpu.commands.options import build_spec
    from rca_gpu.studies import prepare_study, run_study, to_rich

    reporter = reporter_for(quiet)
    base = build_spec(None, None, device=device, seed=seed, batch_size=batch_size, workers=workers,
                      precision=precision, model=model, max_image_memory=max_image_memory)
    base, failures, plan = prepare_study(source, out, _split(features), _split(reducers), _split(clusterers), base)
    if not quiet:
        typer.echo(f"study: {len(plan.pipelines())} pipelines ({len(plan.features)} feature sets x "
                   f"{len(plan.reducers)} reducers x {len(plan.clusterers)} clusterers)")
    from rca_gpu.runfiles import STUDY_MARKDOWN
    table = run_study(base, failures, out, plan, reporter=reporter)
    if not quiet:
        console = Console()
        console.print(to_rich(table, source=str(source), top=top, width=console.width))
    typer.echo(f"results: {(out / STUDY_MARKDOWN).resolve()} and study.parquet")
