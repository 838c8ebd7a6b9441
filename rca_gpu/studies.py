"""The pipeline study: many (features x reducer x clusterer) pipelines over one source, ranked.

Each feature set is extracted once (and cached), its kNN graph computed once, and each reducer setting
computed once per feature set and shared by the clusterers. Every pipeline writes its own run folder
under ``OUT/pipelines/``; a pipeline whose run.json exists is skipped on a re-run, so an interrupted
study resumes where it stopped. ``study.parquet`` has one row per pipeline, ``study.md`` the ranking.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rca_gpu import outputs
from rca_gpu.data.sources import FailureSet, load_source
from rca_gpu.engine import registry
from rca_gpu.engine.device import own_record, resolve_device
from rca_gpu.errors import RcaError, SpecError, TooFewImagesError
from rca_gpu.progress import Reporter
from rca_gpu.runfiles import CACHE_DIR
from rca_gpu.runfolder import STUDY_FILE, STUDY_MARKDOWN, STUDY_PIPELINES, is_finished, open_run
from rca_gpu.spec import (
    STUDY_DUT_FEATURES,
    STUDY_FEATURES,
    PipelineSpec,
    RunSpec,
    check_data_limits,
    make_cluster,
    make_reduce,
    parse_pipeline,
    split_outside_parens,
)
from rca_gpu.spec.grammar import parse_feature_stage

log = logging.getLogger("rca_gpu")

METRIC_COLUMNS = (
    "study_score", "weighted_purity", "mean_purity", "coverage", "coverage_injected", "mean_recall", "noise_share",
    "n_clusters",
    "n_causes", "ari_with_noise", "ari_without_noise", "nmi_with_noise", "nmi_without_noise",
)


#: How the ranking's score is computed, said under every ranking (rca_gpu.metrics.study_score).
SCORE_TEXT = ("Score = ARI (noise as a label of its own) x coverage of the injected causes: over-splitting and "
              "mixing cost alike (docs/metrics.md).")


@dataclass(frozen=True)
class StudyPlan:
    features: tuple[str, ...]
    reducers: tuple[str, ...]
    clusterers: tuple[str, ...]

    def pipelines(self) -> list[PipelineSpec]:
        out = []
        for features in self.features:
            for reducer in self.reducers:
                for clusterer in self.clusterers:
                    out.append(parse_pipeline(f"{features}+{reducer}+{clusterer}"))
        return out


def default_features(has_dut: bool) -> tuple[str, ...]:
    return STUDY_FEATURES + (STUDY_DUT_FEATURES if has_dut else ())


def make_plan(features: Iterable[str] | None, reducers: Iterable[str] | None, clusterers: Iterable[str] | None,
              has_dut: bool) -> StudyPlan:
    """The study's matrix: each feature spec (with parameters, e.g. ``pixels(image_size=16)``) x each reducer
    name x each clusterer name; None = the defaults (every registered reducer and clusterer card).

    Raises
    ------
    SpecError
        An unknown name, or a reducer or clusterer given with parameters (``ward(k=3)``): the study tunes
        those itself; the message names ``rca-gpu run --pipeline`` for one fixed setting.
    """
    known_reducers, known_clusterers = registry.reducers(), registry.clusterers()
    features = tuple(features or default_features(has_dut))
    reducers = tuple(reducers or known_reducers)
    clusterers = tuple(clusterers or known_clusterers)
    for option, kind, names, known in (("--reducers", "reducer", reducers, known_reducers),
                                       ("--clusterers", "clusterer", clusterers, known_clusterers)):
        for name in names:
            if any(mark in str(name) for mark in "()=+@"):
                parts = str(name).split("+")
                if len(parts) > 1:  # a whole pipeline
                    example, stage = str(name), parts[-1] if kind == "clusterer" else parts[-2]
                elif kind == "clusterer":
                    reducer = reducers[0] if reducers[0] in known_reducers else next(iter(known_reducers))
                    example, stage = f"{features[0]}+{reducer}+{name}", str(name)
                else:
                    clusterer = clusterers[0] if clusterers[0] in known_clusterers else next(iter(known_clusterers))
                    example, stage = f"{features[0]}+{name}+{clusterer}", str(name)
                bare = re.split(r"[(=@]", stage, maxsplit=1)[0].strip()
                raise SpecError(
                    f"{option} takes {kind} names only ({', '.join(sorted(known))}), not {name!r}: the study "
                    f"searches each {kind}'s parameters itself (only --features takes parameters). Pass "
                    f"{option} {bare if bare in known else ','.join(sorted(known))}; to run one fixed setting, use "
                    f"`rca-gpu run SOURCE --out runs/first --pipeline '{example}'`."
                )
    for name in reducers:
        make_reduce(name)
    for name in clusterers:
        make_cluster(name)
    for text in features:  # validate each feature spec on its own
        parse_feature_stage(text)
    return StudyPlan(features, reducers, clusterers)


def prepare_study(source: str | Path, out: str | Path, features: Iterable[str] | None,
                  reducers: Iterable[str] | None, clusterers: Iterable[str] | None,
                  base: RunSpec) -> tuple[RunSpec, FailureSet, StudyPlan]:
    """(run options, failures, plan) of a study, every check made before any image is read: the output folder
    (a study's, never its own inputs), the names of the plan, then the source's root causes.

    Raises
    ------
    SpecError
        An unusable output folder, an unknown name, a reducer or clusterer given with parameters, or a source
        without a ``root_cause`` column.
    """
    from rca_gpu.data.paths import check_output_path
    from rca_gpu.runfolder import (
        STUDY_COMMAND,
        STUDY_OUTPUT_FOLDERS,
        STUDY_OUTPUTS,
        check_inputs_kept,
        check_out_folder,
    )

    features, reducers, clusterers = (None if v is None else list(v) for v in (features, reducers, clusterers))
    check_output_path(out, "--out")
    check_out_folder(out, command=STUDY_COMMAND, example="studies/first")  # before any feature is extracted
    check_inputs_kept(out, {"SOURCE": source, "--model": base.model}, files=STUDY_OUTPUTS,
                      folders=STUDY_OUTPUT_FOLDERS)
    make_plan(features, reducers, clusterers, False)  # names checked before any image is read
    failures = load_source(source, image_root=base.image_root, skip=[out])  # never the study's own outputs
    check_study_source(failures)
    return base, failures, make_plan(features, reducers, clusterers, bool(base.model or failures.dut))


def slug(pipeline: PipelineSpec | str) -> str:
    """A folder name for a pipeline: letters, digits, '.', '_', '-' only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(pipeline)).strip("_")


@outputs.writes_to("out", "rca-gpu study")
def run_study(
    base: RunSpec,
    source: str | Path | FailureSet,
    out: str | Path,
    plan: StudyPlan,
    *,
    reporter: Reporter | None = None,
) -> pd.DataFrame:
    """Run every pipeline of ``plan``; write study.parquet and study.md; return the table."""
    from rca_gpu.features.compute import compute_features
    from rca_gpu.pipeline import Timer, cluster_and_write, feature_graph
    from rca_gpu.tuning import effective_k

    reporter = reporter or Reporter(enabled=False)
    out = Path(out)
    failures = source if isinstance(source, FailureSet) else load_source(source, image_root=base.image_root)
    device = resolve_device(base.device)
    cache = out / CACHE_DIR
    rows: list[dict[str, Any]] = []
    pipelines = plan.pipelines()
    by_features: dict[str, list[PipelineSpec]] = {}
    for pipeline in pipelines:
        by_features.setdefault(str(pipeline.features), []).append(pipeline)

    for feature_text, group in by_features.items():
        todo = [p for p in group if not is_finished(out / STUDY_PIPELINES / slug(p))]
        for pipeline in group:
            if pipeline not in todo:
                rows.append(_row_from_disk(pipeline, out / STUDY_PIPELINES / slug(pipeline)))
        if not todo:
            continue
        try:
            started = time.perf_counter()
            features = compute_features(group[0].features, failures, base, device, cache, reporter)
            feature_seconds = time.perf_counter() - started
            started = time.perf_counter()
            # one graph for every pipeline of the feature set: as wide as the widest reducer's search reads
            widest_reducer = max((p.reduce for p in todo), key=lambda r: effective_k(base.knn_k, r))
            graph = feature_graph(features, base, widest_reducer, device)
            knn_seconds = time.perf_counter() - started
        except RcaError as exc:
            log.warning("features %s failed: %s", feature_text, exc)
            rows.extend(_failed_row(p, str(exc)) for p in todo)
            continue
        reduce_cache: dict = {}
        shared = own_record(device)  # what the shared features and kNN graph ran on
        for pipeline in todo:
            run_dir = out / STUDY_PIPELINES / slug(pipeline)
            spec = base.replace(pipeline=pipeline)
            timer = Timer({"features (shared)": round(feature_seconds, 3), "knn (shared)": round(knn_seconds, 3)})
            try:
                check_data_limits(pipeline, features.n, images="usable images", error=TooFewImagesError)
                result = cluster_and_write(spec, failures, features, graph, own_record(shared), run_dir,
                                           timer=timer, reporter=reporter, reduce_cache=reduce_cache)
            except RcaError as exc:
                log.warning("pipeline %s failed: %s", pipeline, exc)
                rows.append(_failed_row(pipeline, str(exc)))
                continue
            rows.append(_row(pipeline, result.run_info))
            log.info("study: %s done (%d/%d)", pipeline, len(rows), len(pipelines))

    table = pd.DataFrame(rows)
    table = rank(table)
    with outputs.together():  # study.md never ranks another table than study.parquet's
        outputs.write_parquet(out / STUDY_FILE, table)
        outputs.write_text(out / STUDY_MARKDOWN, to_markdown(table, source=str(failures.source)))
    return table


def _row(pipeline: PipelineSpec, info: dict[str, Any]) -> dict[str, Any]:
    metrics = info.get("metrics") or {}
    seconds = info.get("seconds", {})
    return {
        **_identity(pipeline),
        "status": "ok",
        "error": "",
        "resolved_pipeline": info.get("resolved_pipeline", ""),
        "chosen": json.dumps(info.get("tuning", {}).get("chosen", {}), sort_keys=True),
        "n_trials": info.get("tuning", {}).get("n_trials", 0),
        **{m: metrics.get(m) for m in METRIC_COLUMNS},
        "n_clusters_found": info.get("counts", {}).get("clusters"),
        "noise": info.get("counts", {}).get("noise"),
        "seconds_features_shared": seconds.get("features (shared)"),
        "seconds_knn_shared": seconds.get("knn (shared)"),
        "seconds_reduce_cluster": seconds.get("reduce_cluster"),
        "seconds_total_own": round(sum(v for k, v in seconds.items() if "shared" not in k and k != "total"), 3),
    }


def _row_from_disk(pipeline: PipelineSpec, run_dir: Path) -> dict[str, Any]:
    return _row(pipeline, open_run(run_dir).info)


def _failed_row(pipeline: PipelineSpec, error: str) -> dict[str, Any]:
    return {**_identity(pipeline), "status": "failed", "error": error}


def _identity(pipeline: PipelineSpec) -> dict[str, str]:
    """The columns that name a pipeline in study.parquet."""
    return {"pipeline": str(pipeline), "features": str(pipeline.features), "reducer": pipeline.reduce.name,
            "clusterer": pipeline.cluster.name}


def rank(table: pd.DataFrame) -> pd.DataFrame:
    """Best first: study_score, then weighted purity, then fewer clusters (ties), failed last."""
    if table.empty:
        return table
    for column in METRIC_COLUMNS:
        if column not in table:
            table[column] = None
    ordered = table.assign(_ok=(table["status"] == "ok"))
    ordered = ordered.sort_values(
        ["_ok", "study_score", "weighted_purity", "n_clusters"], ascending=[False, False, False, True],
        na_position="last", kind="stable",
    ).drop(columns="_ok")
    ordered.insert(0, "rank", range(1, len(ordered) + 1))
    return ordered.reset_index(drop=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def to_markdown(table: pd.DataFrame, *, source: str = "", top: int | None = None) -> str:
    """The ranked table as Markdown (score, purity, coverage, clusters, noise, ARI, chosen setting)."""
    lines = [f"# Pipeline study{f' on {source}' if source else ''}", ""]
    if table.empty:
        return "\n".join(lines + ["No pipelines ran.", ""])
    ok = table[table["status"] == "ok"]
    lines.append(
        f"{len(ok)} of {len(table)} pipelines ran. {SCORE_TEXT}"
    )
    lines.append("")
    header = ["rank", "pipeline", "score", "purity (w)", "coverage", "cov. injected", "clusters", "noise", "ARI",
              "recall (mean)", "chosen"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    shown = table if top is None else table.head(top)
    for row in shown.itertuples(index=False):
        values = row._asdict()
        if values["status"] != "ok":
            lines.append(f"| {values['rank']} | {values['pipeline']} | failed: {values['error'][:80]} |"
                         + " |" * (len(header) - 3))
            continue
        lines.append("| " + " | ".join([
            str(values["rank"]), f"`{values['pipeline']}`", _fmt(values["study_score"]),
            _fmt(values["weighted_purity"]), _fmt(values["coverage"]), _fmt(values["coverage_injected"]),
            _fmt(values["n_clusters"], 0),
            _fmt(values["noise_share"]), _fmt(values["ari_with_noise"]), _fmt(values["mean_recall"]),
            f"`{values['resolved_pipeline'].split('+', 1)[1] if values['resolved_pipeline'] else ''}`",
        ]) + " |")
    lines.append("")
    return "\n".join(lines)


#: Below this terminal width the ranking printed by ``rca-gpu study`` drops the columns after "noise"
#: (coverage of injected causes, ARI, mean recall); study.md keeps every column.
WIDE_TERMINAL = 120


def _stage_lines(text: str, width: int | None = None) -> list[str]:
    """A pipeline string as lines: one stage per line ("pixels+" / "pca(n_components=2)+" / "kmeans(k=2)");
    a stage longer than ``width`` is broken after ',', '(' or '@' only (never inside a name or a value)."""
    stages = split_outside_parens(text, "+") if text else []
    lines: list[str] = []
    for i, stage in enumerate(stages):
        stage += "+" if i < len(stages) - 1 else ""
        if width is None or len(stage) <= width:
            lines.append(stage)
            continue
        current = ""
        for piece in re.split(r"(?<=[,(@])", stage):
            if current and len(current) + len(piece) > width:
                lines.append(current)
                current = ""
            current += piece
        lines.append(current)
    return lines


def _stages(text: str, width: int | None = None) -> str:
    """:func:`_stage_lines` joined by newlines, escaped for rich markup."""
    from rich.markup import escape

    return escape("\n".join(_stage_lines(text, width)))


def _min_width(texts: Iterable[str]) -> int:
    """The narrowest column that shows ``texts`` broken at '+', ',', '(' and '@' only."""
    return max((len(piece) for text in texts for line in _stage_lines(text)
                for piece in re.split(r"(?<=[,(@])", line)), default=0)


def to_rich(table: pd.DataFrame, *, source: str = "", top: int | None = None, width: int = 80):
    """The ranking for a terminal of ``width`` columns, as a rich renderable: whole pipeline names and chosen
    settings (broken between stages, and inside a stage wider than its column after "," "(" or "@" only), fewer
    metric columns below :data:`WIDE_TERMINAL`.

    The same rows as :func:`to_markdown`, which study.md holds with every column.
    """
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    title = Text(f"Pipeline study{f' on {source}' if source else ''}", style="bold")
    if table.empty:
        return Group(title, Text("No pipelines ran."))
    ok = table[table["status"] == "ok"]
    wide = width >= WIDE_TERMINAL
    metrics = [("score", "study_score"), ("purity (w)" if wide else "purity", "weighted_purity"),
               ("coverage" if wide else "cover", "coverage")]
    if wide:
        metrics.append(("cov. injected", "coverage_injected"))
    metrics += [("clusters" if wide else "clus", "n_clusters"), ("noise", "noise_share")]
    if wide:
        metrics += [("ARI", "ari_with_noise"), ("recall (mean)", "mean_recall")]
    shown = table if top is None else table.head(top)
    rows = list(shown.itertuples(index=False))
    pipelines = [row._asdict()["pipeline"] for row in rows]
    chosen = []
    for row in rows:
        resolved = (row._asdict().get("resolved_pipeline") or "") if row._asdict()["status"] == "ok" else ""
        chosen.append(resolved.split("+", 1)[1] if "+" in str(resolved) else str(resolved))
    # The two text columns share what the rank and metric columns leave (2 columns between any two); each is
    # broken at '+' (between stages) and, only when a stage alone is wider than its column, at ',' '(' '@'.
    fixed = len("rank") + sum(max(len(header), 5) for header, _ in metrics)
    free = width - fixed - 2 * (len(metrics) + 2)
    pipe_natural = max([len("pipeline")] + [len(line) for text in pipelines for line in _stage_lines(text)])
    pipe_narrow = max(len("pipeline"), _min_width(pipelines))
    chosen_narrow = max(len("chosen"), _min_width(chosen), 10)
    pipe_width = max(pipe_narrow, min(pipe_natural, free - chosen_narrow))
    chosen_width = max(chosen_narrow, free - pipe_width)
    out = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    out.add_column("rank", justify="right", no_wrap=True)
    out.add_column("pipeline", overflow="fold", width=pipe_width)
    for header, _ in metrics:
        out.add_column(header, justify="right", no_wrap=True)
    out.add_column("chosen", overflow="fold", width=chosen_width)
    for row, pipeline, setting in zip(rows, pipelines, chosen, strict=True):
        values = row._asdict()
        if values["status"] != "ok":
            out.add_row(str(values["rank"]), _stages(pipeline, pipe_width), *["-"] * len(metrics),
                        Text(f"failed: {values['error'][:200]}"))
            continue
        out.add_row(str(values["rank"]), _stages(pipeline, pipe_width),
                    *[_fmt(values[column], 0 if column == "n_clusters" else 3) for _, column in metrics],
                    _stages(setting, chosen_width))
    note = Text(f"{len(ok)} of {len(table)} pipelines ran. {SCORE_TEXT}" + ("" if wide else
                " Every column: study.md."))
    return Group(title, note, out)


def check_study_source(failures: FailureSet) -> None:
    if not failures.has_root_cause:
        raise SpecError(
            "A study ranks pipelines against known root causes: the source needs a 'root_cause' column "
            "(e.g. a benchmark from `rca-gpu datasets make`)."
        )
