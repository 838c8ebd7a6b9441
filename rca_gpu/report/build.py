"""The static HTML report of a finished run: ``RUN_DIR/report.html`` plus ``RUN_DIR/report_files/``, and the flat
``RUN_DIR/clusters.csv`` beside it (:mod:`rca_gpu.report.interop`).

The page works from ``file://`` with no network: plotly.js is copied beside it from the plotly package's
bundled resources, thumbnails are files beside it, and everything else is inline. Every value taken from
the data (file names, metadata, explanations, names of causes, other commands' files) passes through Jinja's
autoescaping or, in the page's script, through ``textContent``; the script's data is embedded as JSON with
``<``, ``>`` and ``&`` escaped; a Content-Security-Policy forbids every script but the page's own
(:mod:`rca_gpu.report.page`).

Sections: a summary with links (and, once ``rca-gpu verify`` ran, each cause's verified lift), the pairs of
causes that may be one (:mod:`rca_gpu.report.suggest`), the 2-D map (colour by cluster, cause, explanation or
any column; filter by any column; lasso or box selection listing the images with a manifest to download), one
section per cluster (largest first: explanations, medoids and border cases with ``label -> prediction``
captions, heatmaps for runs whose features are heatmaps of the DNN, the columns in which it differs most from
the rest), the noise, the rejected images with their reasons, the ground truth when root causes are known, then
the optional sections registered in :mod:`rca_gpu.report.sections`.

When the run's catalogue of causes was edited (``causes.toml``, :func:`rca_gpu.catalogue.causes.load_catalogue`)
the summary shows the causes first (names, merged clusters as one cause, split clusters as their parts, dropped
causes marked "not a cause"), then the run's clusters, each with its cause; the map offers colouring by cause.
The run's clusters stay as they are: edits never change the run's outputs.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu import outputs
from rca_gpu.data.paths import real_paths
from rca_gpu.progress import no_progress, set_total
from rca_gpu.report import explain as _explain
from rca_gpu.report.columns import dominant_values
from rca_gpu.report.page import content_security_policy, environment, file_url
from rca_gpu.report.representatives import (
    Chosen,
    anchor,
    caption,
    caption_columns,
    clustering_space,
    embedding_positions,
    map_sample,
    representatives,
    section_order,
)
from rca_gpu.report.thumbnails import THUMB_SIZE, ImageLoader, make_thumbnails
from rca_gpu.runfiles import EXPLANATIONS_FILE, METRICS_FILE, REPORT_FILE, REPORT_FILES_DIR
from rca_gpu.runfolder import RUN_OUTPUT_FOLDERS, RUN_OUTPUTS, RunFolder, open_run

#: Steps of build_report a progress bar counts: read, representatives, thumbnails, sections, galleries, render.
REPORT_STEPS = 6

log = logging.getLogger("rca_gpu")

FILES_DIR = REPORT_FILES_DIR
#: Points drawn on the map at most; above this a per-cluster sample is drawn and the page says so.
MAP_POINTS = 20_000
#: Columns of clusters.parquet that are not metadata.
OWN_COLUMNS = ("id", "path", "path_bytes", "cluster", "status", "reason", "input_path")
#: Merge suggestions listed on the page (most confident first).
SUGGESTIONS_SHOWN = 20


@dataclass
class ReportResult:
    path: Path
    seconds: dict[str, float] = field(default_factory=dict)
    n_thumbnails: int = 0
    map_points: int = 0
    bytes: int = 0


def write_explanations(run: RunFolder, clusters: pd.DataFrame | None = None, *, seed: int = 0) -> pd.DataFrame:
    """Compute the explanations of a run's clusters and write ``explanations.parquet`` with its run id."""
    clusters = run.clusters() if clusters is None else clusters
    explanations = _explain.explain_clusters(clusters, seed=seed)
    outputs.write_parquet(run.file(EXPLANATIONS_FILE), explanations, run_id=run.run_id,
                          metadata={b"rca_gpu.precision_floor": str(_explain.PRECISION_FLOOR).encode()})
    return explanations


def read_explanations(run: RunFolder) -> pd.DataFrame:
    """``explanations.parquet`` of the run, computed and written first when the run has none."""
    if run.has(EXPLANATIONS_FILE):
        return run.table(EXPLANATIONS_FILE)
    return write_explanations(run, seed=int(run.info.get("seed", 0) or 0))


@outputs.writes_to("run_dir", "rca-gpu report", create=False)
def build_report(
    run_dir: str | Path | RunFolder,
    *,
    map_points: int = MAP_POINTS,
    thumb_size: int = THUMB_SIZE,
    loader: ImageLoader | None = None,
    seed: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReportResult:
    """Write ``report.html`` (and ``report_files/``, ``clusters.csv``) into a finished run folder.

    Parameters
    ----------
    run_dir:
        The run folder (or an opened :class:`~rca_gpu.runfolder.RunFolder`).
    map_points:
        Most points drawn on the map (>= 1); larger runs draw a seeded sample that keeps every cluster.
    thumb_size:
        Largest side of a thumbnail in pixels.
    loader:
        position -> PIL image, for runs over in-memory arrays (their paths are not files).
    seed:
        Seed of the samples (default: the run's seed).
    progress:
        Called with 1 after each of the REPORT_STEPS steps (read, representatives, thumbnails, sections,
        galleries, render); told their number first (:func:`rca_gpu.progress.set_total`).

    Returns
    -------
    ReportResult
        The page's path, seconds per step, thumbnails and points drawn, size in bytes (page + files).

    Raises
    ------
    rca_gpu.runfolder.RunFolderError
        The folder is not a finished run, or mixes runs.
    rca_gpu.catalogue.CatalogueError
        The run's causes.toml cannot be read or belongs to another run.
    ValueError
        ``map_points`` or ``thumb_size`` below 1.
    """
    if map_points < 1 or thumb_size < 1:
        raise ValueError(f"map_points and thumb_size must be >= 1; got {map_points} and {thumb_size}.")
    from rca_gpu.report import catalogue_sections as _catalogue
    from rca_gpu.report import heatmaps as _heatmaps
    from rca_gpu.report import interop as _interop
    from rca_gpu.report import mapdata as _map
    from rca_gpu.report import sections as _sections
    from rca_gpu.report.gallery import write_galleries

    seconds: dict[str, float] = {}
    set_total(progress, REPORT_STEPS)
    tick = progress or no_progress
    t = time.perf_counter()
    run = run_dir if isinstance(run_dir, RunFolder) else open_run(run_dir)
    seed = int(run.info.get("seed", 0) or 0) if seed is None else seed
    clusters = _text_columns(run.clusters().reset_index(drop=True))
    embedding = run.embedding()
    explanations = read_explanations(run)
    seconds["read"] = _since(t)
    tick(1)

    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    positions = embedding_positions(clusters, embedding)
    space, space_note = clustering_space(embedding)
    reps = representatives(embedding["cluster"].to_numpy(), space, positions, rng)
    drawn = map_sample(embedding["cluster"].to_numpy(), map_points, rng)
    seconds["representatives"] = _since(t)
    tick(1)

    t = time.perf_counter()
    files = run.file(FILES_DIR)
    wanted = set(positions[drawn].tolist())
    for chosen in reps.values():
        wanted.update(chosen.medoids + chosen.border)
    thumbs = make_thumbnails(files / "thumbs", wanted, run.image_files(real_paths(clusters)),
                             run_id=run.run_id, size=thumb_size, loader=loader)
    heat = _heatmaps.heatmap_views(run, clusters, reps, files / "heatmaps", thumb_size=thumb_size, loader=loader)
    seconds["thumbnails"] = _since(t)
    tick(1)

    t = time.perf_counter()
    meta_columns = [c for c in clusters.columns if c not in OWN_COLUMNS]
    usable = clusters[clusters["status"] != "rejected"]
    n_total = len(clusters)
    catalogue = _catalogue.catalogue_summary(run, clusters, n_total)
    verified = _catalogue.verified_causes(run)
    tiles = _Tiles(clusters, thumbs, meta_columns, heat, FILES_DIR)
    truth = _ground_truth(clusters, run)
    cluster_sections = _cluster_sections(run, clusters, usable, explanations, reps, tiles, meta_columns, heat,
                                         catalogue, verified, truth)
    rejected = clusters[clusters["status"] == "rejected"]
    reasons = rejected["reason"].value_counts().items() if len(rejected) else []
    map_data, colour_columns = _map.map_data(clusters, embedding, positions, drawn, thumbs, meta_columns)
    rows = positions[drawn]
    if catalogue:
        map_data["cause"] = _catalogue.cause_codes(catalogue, rows)
    map_data["explanation"] = _map.explanation_codes(explanations, usable, rows)
    map_data["caption"] = [caption(clusters.iloc[p], tiles.captions) for p in rows] if tiles.captions else None
    suggestions = _suggestions(run)
    seconds["sections"] = _since(t)
    tick(1)

    t = time.perf_counter()
    write_galleries(files / "gallery", clusters, thumbs, run.run_id,
                    {label: chosen.order for label, chosen in reps.items()
                     if label in {s["label"] for s in cluster_sections}})
    plotly_file = _write_plotly(files)
    csv_path = _interop.write_clusters_csv(run, clusters)
    seconds["galleries"] = _since(t)
    tick(1)

    t = time.perf_counter()
    nonce = secrets.token_urlsafe(18)
    context = {
        "csp": content_security_policy(nonce),
        "nonce": nonce,
        "run": run.info,
        "run_id": run.run_id,
        "run_path": str(run.path),
        "made_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "counts": run.info.get("counts", {}),
        "n_total": n_total,
        "clusters": cluster_sections,
        "rejected": {"n": len(rejected), "share": len(rejected) / n_total if n_total else 0.0,
                     "reasons": list(reasons),
                     "rows": rejected[["id", "path", "reason"]].head(200).to_dict("records"),
                     "gallery": f"{FILES_DIR}/gallery/rejected-p001.html"},
        "truth": truth,
        "catalogue": catalogue,
        "verified": verified,
        "suggestions": suggestions,
        "space_note": space_note,
        "heat_note": heat.note if heat else "",
        "map": {"data": map_data, "drawn": len(drawn), "total": len(embedding),
                "columns": colour_columns, "plotly": f"{FILES_DIR}/{plotly_file}",
                "source": run.info.get("plot_embedding", "")},
        "tiles": tiles.data,
        "precision_floor": _explain.PRECISION_FLOOR,
        "min_recall": _explain.MIN_RECALL,
        "extra_sections": _sections.available_sections(run),
        "thumbs_dir": f"{FILES_DIR}/thumbs/",
        "thumb_size": thumb_size,
        "run_files": _run_files(run),
        "clusters_csv": csv_path.name,
    }
    html = environment().get_template("report.html").render(**context)
    path = outputs.write_text(run.file(REPORT_FILE), html)
    seconds["render"] = _since(t)
    tick(1)
    size = path.stat().st_size + sum(p.stat().st_size for p in files.rglob("*") if p.is_file())
    log.debug("report: %s (%d thumbnails, %d map points)", path, len(thumbs), len(drawn))
    return ReportResult(path, seconds, len(thumbs), len(drawn), size)


# --------------------------------------------------------------------------------------------------
# The sections of the clusters
# --------------------------------------------------------------------------------------------------


class _Tiles:
    """The images shown in the montages, each once: its tile (for the template) and its entry in the page's
    ``tiles`` JSON (what the enlarged view shows: the original file, caption, every metadata value)."""

    def __init__(self, clusters: pd.DataFrame, thumbs: dict[int, str], meta_columns: list[str], heat,
                 files_dir: str) -> None:
        self.clusters, self.thumbs, self.meta_columns, self.heat = clusters, thumbs, meta_columns, heat
        self.files_dir = files_dir
        self.captions = caption_columns(list(clusters.columns))
        self.data: list[dict[str, Any]] = []

    def tile(self, position: int, borders: int | None = None) -> dict[str, Any]:
        row = self.clusters.iloc[position]
        path = str(row["path"])
        thumb = self.thumbs.get(position)
        heat = self.heat.per_position.get(position) if self.heat else None
        label = int(row["cluster"]) if row["status"] != "rejected" else None
        fields = [(_explain.display_name(c), _plain(row[c])) for c in self.meta_columns if _present(row[c])]
        self.data.append({
            "id": str(row["id"]), "path": path, "cluster": label, "caption": caption(row, self.captions),
            "src": file_url(path) or (f"{self.files_dir}/thumbs/{thumb}" if thumb else None),
            "heat": f"{self.files_dir}/heatmaps/{heat}" if heat else None, "fields": fields,
        })
        return {"key": len(self.data) - 1, "id": str(row["id"]), "path": path, "name": Path(path).name,
                "thumb": thumb, "caption": self.data[-1]["caption"], "borders": borders,
                "heat": self.data[-1]["heat"]}


def _cluster_sections(run: RunFolder, clusters: pd.DataFrame, usable: pd.DataFrame, explanations: pd.DataFrame,
                      reps: dict[int, Chosen], tiles: _Tiles, meta_columns: list[str], heat, catalogue,
                      verified, truth) -> list[dict[str, Any]]:
    from rca_gpu.report import sections as _sections

    facts = _sections.cluster_facts(run)
    labels = usable["cluster"].to_numpy()
    order = section_order(labels)
    elsewhere = _elsewhere(explanations, usable)
    tops = _explanations_by_cluster(explanations, elsewhere)
    dominant = dominant_values(usable, labels, order, meta_columns)
    out = []
    for label in order:
        size = int((labels == label).sum())
        chosen = reps.get(label, Chosen())
        causes = catalogue["by_cluster"].get(label, []) if catalogue else []
        out.append({
            "label": label,
            "anchor": anchor(label),
            "title": f"Cluster {label}" if label >= 0 else "Noise",
            "size": size,
            "share": size / len(clusters),
            "medoids": [tiles.tile(p) for p in chosen.medoids],
            "border": [tiles.tile(p, b)
                       for p, b in zip(chosen.border, chosen.borders or [None] * len(chosen.border), strict=True)],
            "sample_kind": chosen.kind,
            "explanations": tops.get(label, []),
            "dominant": dominant.get(label, []),
            "truth": truth["per_cluster"].get(label) if truth else None,
            "facts": [(fact.label, texts[label]) for fact, texts in facts if label in texts],
            "gallery": f"{FILES_DIR}/gallery/{anchor(label)}-p001.html",
            "mean_heat": (f"{FILES_DIR}/heatmaps/{heat.mean[label]}" if heat and label in heat.mean else None),
            "causes": causes,
            "verified": verified["by_cause"].get(label) if verified and not catalogue else None,
        })
    return out


def _elsewhere(explanations: pd.DataFrame, usable: pd.DataFrame) -> dict[int, str]:
    """cluster -> where the other images its best rule matches lie ("72 in cluster 6, 18 in cluster 10, 20
    noise"), for clusters whose top rule is not found."""
    missing = explanations[(explanations["rank"] == 1) & ~explanations["found"].astype(bool)]
    if missing.empty:
        return {}
    masks = _explain.rule_masks(missing, usable)
    labels = usable["cluster"].to_numpy()
    out = {}
    for cluster, mask in masks.items():
        others = pd.Series(labels[mask & (labels != cluster)]).value_counts()
        parts = [f"{n} {'noise' if c < 0 else f'in cluster {c}'}" for c, n in others.head(3).items()]
        if len(others) > 3:
            parts.append(f"{int(others.iloc[3:].sum())} elsewhere")
        out[cluster] = ", ".join(parts)
    return out


def _explanations_by_cluster(explanations: pd.DataFrame, elsewhere: dict[int, str]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for row in explanations.sort_values(["cluster", "rank"]).itertuples(index=False):
        where = elsewhere.get(int(row.cluster), "")
        out.setdefault(int(row.cluster), []).append({
            "found": bool(row.found), "rule": row.rule, "precision": float(row.precision),
            "recall": float(row.recall), "uses": row.uses, "text": _explain.describe(row, elsewhere=where),
            "short": _explain.describe(row, short=True),
        })
    return out


def _suggestions(run: RunFolder) -> dict[str, Any] | None:
    """The merge suggestions for the page: rows (most confident first, at most SUGGESTIONS_SHOWN), the
    ``--merge`` command of the likely ones, the thresholds; None when the run has fewer than two causes."""
    from rca_gpu.catalogue.causes import load_catalogue
    from rca_gpu.report import suggest

    catalogue = load_catalogue(run)
    if len(catalogue.active) < 2:
        return None
    found = suggest.suggest_merges(catalogue)
    rows = []
    for s in found[:SUGGESTIONS_SHOWN]:
        rows.append({**s.to_dict(), "anchors": [_cause_anchor(catalogue, c) for c in (s.a, s.b)],
                     "names": [catalogue.name(c) for c in (s.a, s.b)]})
    return {"rows": rows, "more": max(len(found) - SUGGESTIONS_SHOWN, 0), "likely": suggest.LIKELY,
            "possible": suggest.POSSIBLE, "weights": suggest.WEIGHTS,
            "command": suggest.merge_command(run.path, suggest.merge_groups(found))}


def _cause_anchor(catalogue, cause: int) -> str:
    """The page anchor of a cause: its cluster's section while unedited, its row in the causes table after edits."""
    return f"cause-{cause}" if catalogue.history else anchor(cause)


def _ground_truth(clusters: pd.DataFrame, run: RunFolder) -> dict[str, Any] | None:
    """Cluster x cause counts, purity and dominant cause per cluster, recall per cause (rca_gpu.metrics)."""
    if "root_cause" not in clusters.columns:
        return None
    known = clusters[(clusters["status"] != "rejected") & clusters["root_cause"].notna()]
    if known.empty:
        return None
    from rca_gpu.metrics import COUNT_PREFIX, evaluate

    min_purity = 0.5
    if run.has(METRICS_FILE):
        summary = run.json(METRICS_FILE).get("summary", run.json(METRICS_FILE))
        min_purity = float(summary.get("min_purity", 0.5) or 0.5) if isinstance(summary, dict) else 0.5
    result = evaluate(known["cluster"].to_numpy(), known["root_cause"].astype(str).to_numpy(), min_purity=min_purity)
    causes = [c[len(COUNT_PREFIX):] for c in result.per_cluster.columns if c.startswith(COUNT_PREFIX)]
    per_cluster: dict[int, dict[str, Any]] = {}
    table = []
    for row in result.per_cluster.to_dict("records"):
        per_cluster[int(row["cluster"])] = {"purity": row["purity"], "dominant": row["dominant_cause"]}
        table.append({"label": f"cluster {int(row['cluster'])}", "anchor": anchor(int(row["cluster"])),
                      "counts": [int(row[COUNT_PREFIX + c]) for c in causes]})
    noise = known[known["cluster"] < 0]["root_cause"].astype(str).value_counts()
    if len(noise):
        table.append({"label": "noise", "anchor": "noise", "counts": [int(noise.get(c, 0)) for c in causes]})
    return {"causes": causes, "table": table, "per_cluster": per_cluster,
            "per_cause": result.per_cause.to_dict("records"), "summary": result.summary,
            "n_known": len(known), "min_purity": min_purity}


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _run_files(run: RunFolder) -> list[str]:
    """The run's output files present in its folder (:data:`rca_gpu.runfolder.RUN_OUTPUTS`, this page and
    clusters.csv included) and its output folders present, with a trailing ``/``."""
    from rca_gpu.report.interop import CLUSTERS_CSV

    files = [name for name in RUN_OUTPUTS if run.has(name) or name in (REPORT_FILE, CLUSTERS_CSV)]
    return files + [f"{name}/" for name in RUN_OUTPUT_FOLDERS if run.file(name).is_dir()]


def _write_plotly(files: Path) -> str:
    """Copy plotly.js from the plotly package's bundled resources beside the page; its file name."""
    try:
        import plotly
        from plotly.offline import get_plotlyjs
    except ImportError:  # pragma: no cover - plotly is a dependency
        from rca_gpu.errors import RcaError

        raise RcaError("The report's map needs plotly: pip install plotly") from None
    name = f"plotly-{plotly.__version__}.min.js"
    target = files / name
    if not target.is_file():
        outputs.write_text(target, get_plotlyjs())
    return name


def _text_columns(clusters: pd.DataFrame) -> pd.DataFrame:
    """``path`` and ``reason`` as text, "" where missing (a run from ``--features`` without metadata has no
    image paths: its report has no thumbnails and no links to files)."""
    out = clusters.copy()
    for column in ("path", "reason"):
        if column in out.columns:
            values = out[column]
            out[column] = ["" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
                           for value in values.to_numpy(dtype=object)]
    return out


def _present(value: Any) -> bool:
    try:
        return not bool(pd.isna(value))
    except (TypeError, ValueError):
        return True


def _plain(value: Any) -> Any:
    """A value for the page's JSON: numpy scalars as Python numbers, integral floats as integers, the rest
    as text."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if not math.isfinite(number):
            return str(number)
        return int(number) if number.is_integer() and abs(number) < 2**53 else float(f"{number:.6g}")
    return str(value)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)
