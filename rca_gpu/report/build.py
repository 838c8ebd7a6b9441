"""The static HTML report of a finished run: ``RUN_DIR/report.html`` plus ``RUN_DIR/report_files/``.

The page works from ``file://`` with no network: plotly.js is copied beside it from the plotly package's
bundled resources, thumbnails are files beside it, and everything else is inline. Every value taken from
the data (file names, metadata, explanations) passes through Jinja's autoescaping or, in the map, through
``textContent``; the map's data is embedded as JSON with ``<``, ``>`` and ``&`` escaped.

Sections: a summary with links, the 2-D map, one section per cluster (largest first), the noise, the
rejected images with their reasons, the ground truth when root causes are known, then the optional
sections registered in :mod:`rca_gpu.report.sections`.

When the run's catalogue of causes was edited (``causes.toml``, :func:`rca_gpu.catalogue.causes.load_catalogue`)
the summary shows the causes first (names, merged clusters as one cause, split clusters as their parts, dropped
causes marked "not a cause"), then the run's clusters, each with its cause; the map offers colouring by cause.
The run's clusters stay as they are: edits never change the run's outputs.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu import outputs
from rca_gpu.report import explain as _explain
from rca_gpu.report.thumbnails import THUMB_SIZE, ImageLoader, make_thumbnails
from rca_gpu.runfiles import EXPLANATIONS_FILE, METRICS_FILE, REPORT_FILE, REPORT_FILES_DIR, json_object
from rca_gpu.runfolder import RUN_OUTPUT_FOLDERS, RUN_OUTPUTS, RunFolder, open_run

log = logging.getLogger("rca_gpu")

FILES_DIR = REPORT_FILES_DIR
#: Points drawn on the map at most; above this a per-cluster sample is drawn and the page says so.
MAP_POINTS = 20_000
MAP_MIN_PER_CLUSTER = 50
#: Medoids and border cases shown per cluster.
REPRESENTATIVES = 8
BORDER_CASES = 4
#: Images per gallery page (the "open all images" link of a cluster).
GALLERY_PAGE = 500
#: Columns of clusters.parquet that are not metadata.
OWN_COLUMNS = ("id", "path", "path_bytes", "cluster", "status", "reason", "input_path")
#: A text column with more levels than this is shown on hover but not offered for colouring.
COLOUR_LEVELS = 50
MAP_LEVELS = 30  # levels shown in the legend; the rest are drawn as "other"


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
) -> ReportResult:
    """Write ``report.html`` (and ``report_files/``) into a finished run folder.

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

    Returns
    -------
    ReportResult
        The page's path, seconds per step, thumbnails and points drawn, size in bytes (page + files).

    Raises
    ------
    rca_gpu.runfolder.RunFolderError
        The folder is not a finished run, or mixes runs.
    ValueError
        ``map_points`` or ``thumb_size`` below 1.
    """
    if map_points < 1 or thumb_size < 1:
        raise ValueError(f"map_points and thumb_size must be >= 1; got {map_points} and {thumb_size}.")
    from rca_gpu.report import sections as _sections

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    run = run_dir if isinstance(run_dir, RunFolder) else open_run(run_dir)
    seed = int(run.info.get("seed", 0) or 0) if seed is None else seed
    clusters = _text_columns(run.clusters().reset_index(drop=True))
    embedding = run.embedding()
    explanations = read_explanations(run)
    seconds["read"] = _since(t)

    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    positions = _embedding_positions(clusters, embedding)
    space, space_note = _clustering_space(embedding, run.info)
    reps = _representatives(embedding["cluster"].to_numpy(), space, positions, rng)
    drawn = _map_sample(embedding["cluster"].to_numpy(), map_points, rng)
    seconds["representatives"] = _since(t)

    t = time.perf_counter()
    files = run.file(FILES_DIR)
    wanted = set(positions[drawn].tolist())
    for chosen in reps.values():
        wanted.update(chosen["medoids"] + chosen["border"])
    from rca_gpu.data.paths import real_paths

    thumbs = make_thumbnails(files / "thumbs", wanted, run.image_files(real_paths(clusters)), run_id=run.run_id,
                             size=thumb_size, loader=loader)
    seconds["thumbnails"] = _since(t)

    t = time.perf_counter()
    _sections.load_plugins()
    meta_columns = [c for c in clusters.columns if c not in OWN_COLUMNS]
    truth = _ground_truth(clusters, run)
    facts = _sections.cluster_facts(run)
    tops = _explanations_by_cluster(explanations)
    usable = clusters[clusters["status"] != "rejected"]
    views = _column_views(usable, meta_columns)
    n_total = len(clusters)
    cluster_sections = []
    for label in _section_order(usable["cluster"].to_numpy()):
        members = usable[usable["cluster"] == label]
        chosen = reps.get(label, {"medoids": [], "border": []})
        cluster_sections.append({
            "label": label,
            "anchor": _anchor(label),
            "title": f"Cluster {label}" if label >= 0 else "Noise",
            "size": len(members),
            "share": len(members) / n_total,
            "medoids": [_tile(clusters, p, thumbs) for p in chosen["medoids"]],
            "border": [_tile(clusters, p, thumbs) for p in chosen["border"]],
            "sample_kind": chosen.get("kind", "medoids"),
            "explanations": tops.get(label, []),
            "dominant": _dominant_values(members.index, views),
            "truth": truth["per_cluster"].get(label) if truth else None,
            "facts": [(fact.label, texts[label]) for fact, texts in facts if label in texts],
            "gallery": f"{FILES_DIR}/gallery/{_anchor(label)}-p001.html",
        })
    rejected = clusters[clusters["status"] == "rejected"]
    reasons = rejected["reason"].value_counts().items() if len(rejected) else []
    catalogue = _catalogue_summary(run, clusters, n_total)
    for section in cluster_sections:
        section["causes"] = catalogue["by_cluster"].get(section["label"], []) if catalogue else []
    map_data, colour_columns = _map_data(clusters, embedding, positions, drawn, thumbs, meta_columns)
    if catalogue:
        map_data["cause"] = _cause_codes(catalogue, positions[drawn])
    seconds["sections"] = _since(t)

    t = time.perf_counter()
    _write_galleries(files / "gallery", clusters, thumbs, run)
    plotly_file = _write_plotly(files)
    seconds["galleries"] = _since(t)

    t = time.perf_counter()
    counts = run.info.get("counts", {})
    context = {
        "run": run.info,
        "run_id": run.run_id,
        "made_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "counts": counts,
        "n_total": n_total,
        "clusters": cluster_sections,
        "rejected": {"n": len(rejected), "share": len(rejected) / n_total if n_total else 0.0,
                     "reasons": list(reasons),
                     "rows": rejected[["id", "path", "reason"]].head(200).to_dict("records"),
                     "gallery": f"{FILES_DIR}/gallery/rejected-p001.html"},
        "truth": truth,
        "catalogue": catalogue,
        "space_note": space_note,
        "map": {"data": map_data, "drawn": int(len(drawn)), "total": int(len(embedding)),
                "columns": colour_columns, "plotly": f"{FILES_DIR}/{plotly_file}",
                "source": run.info.get("plot_embedding", "")},
        "precision_floor": _explain.PRECISION_FLOOR,
        "extra_sections": _sections.available_sections(run),
        "thumbs_dir": f"{FILES_DIR}/thumbs/",
        "thumb_size": thumb_size,
        "run_files": _run_files(run),
    }
    html = _environment().get_template("report.html").render(**context)
    path = outputs.write_text(run.file(REPORT_FILE), html)
    seconds["render"] = _since(t)
    size = path.stat().st_size + sum(p.stat().st_size for p in files.rglob("*") if p.is_file())
    log.debug("report: %s (%d thumbnails, %d map points)", path, len(thumbs), len(drawn))
    return ReportResult(path, seconds, len(thumbs), int(len(drawn)), size)


# --------------------------------------------------------------------------------------------------
# Choosing images
# --------------------------------------------------------------------------------------------------


def _embedding_positions(clusters: pd.DataFrame, embedding: pd.DataFrame) -> np.ndarray:
    """Row position in clusters.parquet of each embedding row (matched by id)."""
    lookup = pd.Series(np.arange(len(clusters)), index=clusters["id"].to_numpy())
    return lookup.loc[embedding["id"].to_numpy()].to_numpy(dtype=np.int64)


def _clustering_space(embedding: pd.DataFrame, info: dict[str, Any]) -> tuple[np.ndarray, str]:
    """The embedding the clusterer used (e0..ek) when stored, else the 2-D map coordinates, with a note."""
    columns = [c for c in embedding.columns if c.startswith("e") and c[1:].isdigit()]
    if columns:
        columns.sort(key=lambda c: int(c[1:]))
        return embedding[columns].to_numpy(dtype=np.float64), (
            f"Medoids and border cases are chosen in the space the clusterer used ({len(columns)} dimensions).")
    return embedding[["x", "y"]].to_numpy(dtype=np.float64), (
        "The clustering space has more than 64 dimensions and is not stored in embedding.parquet, so medoids "
        "and border cases are chosen in the 2-D map's coordinates.")


def _representatives(labels: np.ndarray, space: np.ndarray, positions: np.ndarray,
                     rng: np.random.Generator) -> dict[int, dict[str, Any]]:
    """Per cluster: medoids (closest to the centre) and border cases (closest to another cluster's centre,
    relative to their own); for the noise a seeded random sample."""
    out: dict[int, dict[str, Any]] = {}
    ids = [int(c) for c in np.unique(labels) if c >= 0]
    centres = np.stack([space[labels == c].mean(axis=0) for c in ids]) if ids else np.zeros((0, space.shape[1]))
    for k, label in enumerate(ids):
        rows = np.flatnonzero(labels == label)
        distances = np.linalg.norm(space[rows][:, None, :] - centres[None, :, :], axis=2)  # (m, n_clusters)
        own = distances[:, k]
        medoids = rows[np.argsort(own, kind="stable")[:REPRESENTATIVES]]
        border: np.ndarray = np.array([], dtype=np.int64)
        if len(rows) > REPRESENTATIVES:
            if len(ids) > 1:
                others = np.delete(distances, k, axis=1).min(axis=1)
                score = own / np.maximum(others, 1e-12)  # near 1: between two clusters
            else:
                score = own  # a single cluster: its outermost members
            candidates = np.argsort(-score, kind="stable")
            border = np.array([r for r in rows[candidates] if r not in set(medoids)][:BORDER_CASES], dtype=np.int64)
        out[label] = {"medoids": positions[medoids].tolist(), "border": positions[border].tolist(),
                      "kind": "medoids"}
    noise = np.flatnonzero(labels < 0)
    if len(noise):
        sample = np.sort(rng.choice(noise, min(len(noise), REPRESENTATIVES + BORDER_CASES), replace=False))
        out[-1] = {"medoids": positions[sample].tolist(), "border": [], "kind": "sample"}
    return out


def _map_sample(labels: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the embedding rows drawn: all of them up to ``limit``, else at most ``limit`` drawn per
    cluster in proportion to size, every cluster keeping at least min(size, 50, limit / clusters) points."""
    n = len(labels)
    if n <= limit:
        return np.arange(n)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    least = max(1, min(MAP_MIN_PER_CLUSTER, limit // len(groups)))
    floor = [min(len(g), least) for g in groups]
    budget = max(limit - sum(floor), 0)
    rest = max(n - sum(floor), 1)
    chosen = [rng.choice(g, min(len(g), keep + budget * (len(g) - keep) // rest), replace=False)
              for g, keep in zip(groups, floor)]
    return np.sort(np.concatenate(chosen))


def _section_order(labels: np.ndarray) -> list[int]:
    """Clusters largest first (ties by id), then the noise."""
    ids, counts = np.unique(labels, return_counts=True)
    clusters = sorted(((int(c), int(n)) for c, n in zip(ids, counts) if c >= 0), key=lambda cn: (-cn[1], cn[0]))
    return [c for c, _ in clusters] + ([-1] if (labels < 0).any() else [])


def _anchor(label: int) -> str:
    return f"cluster-{label}" if label >= 0 else "noise"


def _tile(clusters: pd.DataFrame, position: int, thumbs: dict[int, str]) -> dict[str, Any]:
    row = clusters.iloc[position]
    return {"id": str(row["id"]), "path": str(row["path"]), "name": Path(str(row["path"])).name,
            "thumb": thumbs.get(position)}


# --------------------------------------------------------------------------------------------------
# Per-cluster text
# --------------------------------------------------------------------------------------------------


def _explanations_by_cluster(explanations: pd.DataFrame) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for row in explanations.sort_values(["cluster", "rank"]).itertuples(index=False):
        out.setdefault(int(row.cluster), []).append({
            "found": bool(row.found), "rule": row.rule, "precision": float(row.precision),
            "recall": float(row.recall), "uses": row.uses, "text": _explain.describe(row),
            "short": _explain.describe(row, short=True),
        })
    return out


def _is_categorical(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return True
    finite = pd.to_numeric(values, errors="coerce").dropna()
    integral = bool(len(finite)) and bool(np.all(finite == np.round(finite)))
    return integral and finite.nunique() <= _explain.INTEGER_AS_CATEGORY


def _column_views(usable: pd.DataFrame, columns: list[str]) -> dict[str, tuple[str, pd.Series, str]]:
    """Per metadata column, converted once: (kind "text" | "number", values, summary over all usable images)."""
    views = {}
    for column in columns:
        if _is_categorical(usable[column]):
            text = pd.Series(_explain._as_text(usable[column]), index=usable.index, dtype=object)
            text = text.where(usable[column].notna(), "(missing)")
            views[column] = ("text", text, _top_values(text))
        else:
            numbers = pd.to_numeric(usable[column], errors="coerce")
            views[column] = ("number", numbers, _spread(numbers))
    return views


def _dominant_values(index: pd.Index, views: dict[str, tuple[str, pd.Series, str]]) -> list[dict[str, str]]:
    """Per metadata column: its dominant values among the rows ``index`` and over all usable images."""
    rows = []
    for column, (kind, values, overall) in views.items():
        inside = _top_values(values.loc[index]) if kind == "text" else _spread(values.loc[index])
        rows.append({"column": _explain.display_name(column), "inside": inside, "overall": overall})
    return rows


def _top_values(text: pd.Series, k: int = 3) -> str:
    counts = text.value_counts()
    if counts.empty:
        return "-"
    parts = [f"{v} ({share_text(n / len(text), 0)})" for v, n in counts.head(k).items()]
    if len(counts) > k:
        parts.append(f"{len(counts) - k} more")
    return ", ".join(parts)


def share_text(share: float | None, decimals: int = 1) -> str:
    """A share as a percentage with ``decimals`` decimals that never reads 0 % for a present value nor 100 % for
    one short of all: ``"<1%"``, ``">99%"`` (decimals 0), ``"<0.1%"`` (decimals 1); ``"-"`` for None/NaN."""
    if share is None or share != share:
        return "-"
    text = f"{share:.{decimals}%}"
    step = 10.0 ** -(decimals + 2)  # the smallest share the format shows, as a fraction
    if share > 0 and text == f"{0:.{decimals}%}":
        return f"<{step:.{decimals}%}"
    if share < 1 and text == f"{1:.{decimals}%}":
        return f">{1 - step:.{decimals}%}"
    return text


def _spread(values: pd.Series) -> str:
    numbers = pd.to_numeric(values, errors="coerce").dropna()
    if numbers.empty:
        return "-"
    q1, median, q3 = np.percentile(numbers, [25, 50, 75])
    return f"median {_fmt(median)} (IQR {_fmt(q1)} to {_fmt(q3)})"


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


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
        table.append({"label": f"cluster {int(row['cluster'])}", "anchor": _anchor(int(row["cluster"])),
                      "counts": [int(row[COUNT_PREFIX + c]) for c in causes]})
    noise = known[known["cluster"] < 0]["root_cause"].astype(str).value_counts()
    if len(noise):
        table.append({"label": "noise", "anchor": "noise", "counts": [int(noise.get(c, 0)) for c in causes]})
    return {"causes": causes, "table": table, "per_cluster": per_cluster,
            "per_cause": result.per_cause.to_dict("records"), "summary": result.summary,
            "n_known": len(known), "min_purity": min_purity}


# --------------------------------------------------------------------------------------------------
# The edited catalogue of causes
# --------------------------------------------------------------------------------------------------


def _catalogue_summary(run: RunFolder, clusters: pd.DataFrame, n_total: int) -> dict[str, Any] | None:
    """The causes of the run's edited catalogue for the summary and the map, or None when ``causes.toml`` holds
    no edit. ``rows``: one per cause, active ones largest first, then the dropped; ``by_cluster``: cluster ->
    the causes its images belong to, most images first (Catalogue.causes_by_cluster); ``cause``: (n,) int64
    cause of each row of clusters.parquet (-1: noise, rejected).

    Raises
    ------
    rca_gpu.catalogue.reference.CatalogueError
        causes.toml is unreadable or belongs to another run (as for every command that reads the catalogue).
    """
    from rca_gpu.catalogue.causes import CAUSES_FILE, load_catalogue

    if not run.has(CAUSES_FILE):
        return None
    catalogue = load_catalogue(run)
    if not catalogue.history:
        return None
    sizes = catalogue.sizes()
    cause = catalogue.cause_of(clusters["id"].to_numpy())
    rows = []
    for cause_id in sorted(catalogue.causes, key=lambda c: (catalogue.causes[c].dropped, -sizes.get(c, 0), c)):
        item = catalogue.causes[cause_id]
        rows.append({"id": cause_id, "anchor": f"cause-{cause_id}", "name": item.name, "label": item.label,
                     "origin": item.origin, "dropped": item.dropped, "size": sizes.get(cause_id, 0),
                     "share": sizes.get(cause_id, 0) / n_total if n_total else 0.0,
                     "clusters": [(f"cluster {c}", _anchor(c)) for c in sorted(item.clusters)]})
    by_id = {row["id"]: row for row in rows}
    by_cluster = {cluster: [dict(by_id[c], images=k) for c, k in causes]
                  for cluster, causes in catalogue.causes_by_cluster().items()}
    return {"rows": rows, "by_cluster": by_cluster, "cause": cause, "history": list(catalogue.history)}


def _cause_codes(catalogue: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    """The map's cause column for the clusters.parquet rows ``rows``: ``codes`` index ``levels`` (-1: no cause),
    ``ids`` and ``dropped`` per level, in the summary's order."""
    levels = catalogue["rows"]
    position = {row["id"]: k for k, row in enumerate(levels)}
    codes = [position.get(int(c), -1) for c in catalogue["cause"][rows]]
    return {"codes": codes, "ids": [row["id"] for row in levels], "dropped": [row["dropped"] for row in levels],
            "levels": [(f"{row['id']}: {row['name']}" if row["name"] else row["label"])
                       + (" (not a cause)" if row["dropped"] else "") for row in levels]}


# --------------------------------------------------------------------------------------------------
# The map
# --------------------------------------------------------------------------------------------------


def _map_data(clusters: pd.DataFrame, embedding: pd.DataFrame, positions: np.ndarray, drawn: np.ndarray,
              thumbs: dict[int, str], meta_columns: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Columns of the drawn points for the page's script: coordinates, cluster, thumbnail, id, path, and
    every metadata column (text dictionary-encoded, numbers as floats)."""
    rows = positions[drawn]
    picked = clusters.iloc[rows]
    data: dict[str, Any] = {
        "x": _round_list(embedding["x"].to_numpy()[drawn]),
        "y": _round_list(embedding["y"].to_numpy()[drawn]),
        "cluster": embedding["cluster"].to_numpy()[drawn].astype(int).tolist(),
        "thumb": [thumbs.get(int(p)) for p in rows],
        "id": picked["id"].astype(str).tolist(),
        "path": picked["path"].astype(str).tolist(),
        "columns": {},
    }
    colourable = []
    for column in meta_columns:
        values = picked[column]
        name = _explain.display_name(column)
        if _is_categorical(clusters[column]):
            text = pd.Series(_explain._as_text(values), index=values.index).where(values.notna(), None)
            codes, levels = pd.factorize(text, use_na_sentinel=True)
            data["columns"][name] = {"kind": "text", "levels": [str(v) for v in levels], "codes": codes.tolist()}
            if 1 < len(levels) <= COLOUR_LEVELS:
                colourable.append(name)
        else:
            data["columns"][name] = _number_column(values)
            if sum(v is not None for v in data["columns"][name]["values"]) > 1:
                colourable.append(name)
    data["max_levels"] = MAP_LEVELS
    data["column_order"] = list(data["columns"])  # the JSON's keys come sorted
    return data, colourable


#: Integers beyond this lose digits as JavaScript numbers; the map also carries them as text.
_JS_SAFE_INTEGER = 2**53 - 1


def _number_column(values: pd.Series) -> dict[str, Any]:
    """A numeric metadata column for the map: ``values`` (colour scale and tooltip) and, when some integer is
    beyond JavaScript's exact range, ``text`` (the tooltip's exact digits). Integers stay exact (a seed
    1788123457 is not shown as 1788000000); other numbers keep 4 significant digits but every digit of their
    integer part."""
    numbers = pd.to_numeric(values, errors="coerce")
    floats = numbers.to_numpy(dtype=float, na_value=np.nan)
    finite = floats[np.isfinite(floats)]
    if pd.api.types.is_integer_dtype(numbers.dtype) or (len(finite) and bool(np.all(finite == np.round(finite)))):
        exact = [None if pd.isna(v) or not math.isfinite(float(v)) else int(v) for v in numbers.tolist()]
        column: dict[str, Any] = {"kind": "number", "values": exact}
        if any(v is not None and abs(v) > _JS_SAFE_INTEGER for v in exact):
            column["values"] = [None if v is None else float(v) for v in exact]
            column["text"] = [None if v is None else str(v) for v in exact]
        return column
    return {"kind": "number", "values": _round_list(floats, digits=4)}


def _round_list(values: np.ndarray, digits: int = 4) -> list[float | None]:
    """Floats with ``digits`` significant digits, but never fewer than their integer part has (12345.678 ->
    12345.68 with 4), for compact JSON; NaN/inf -> None."""
    values = np.asarray(values, dtype=float)
    out: list[float | None] = []
    for v in values.tolist():
        if not math.isfinite(v):
            out.append(None)
            continue
        whole = int(math.floor(math.log10(abs(v)))) + 1 if v else 0
        out.append(float(f"{v:.{max(digits, whole + 2)}g}"))
    return out


def _run_files(run: RunFolder) -> list[str]:
    """The run's output files present in its folder (:data:`rca_gpu.runfolder.RUN_OUTPUTS`, this page included)
    and its output folders present, with a trailing ``/``."""
    files = [name for name in RUN_OUTPUTS if run.has(name) or name == REPORT_FILE]
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


# --------------------------------------------------------------------------------------------------
# Galleries: every image of a cluster, in pages
# --------------------------------------------------------------------------------------------------


def _write_galleries(folder: Path, clusters: pd.DataFrame, thumbs: dict[int, str], run: RunFolder) -> None:
    """Every image of each cluster (then noise, then the rejected), GALLERY_PAGE per page. Pages depend on the
    run and on which thumbnails exist only, so a later report of the same run keeps them."""
    import os
    import urllib.parse

    if folder.is_symlink():
        raise OSError(f"{folder} is a symbolic link; refusing to write through it.")
    stamp = {"run_id": run.run_id, "thumbnails": sorted(thumbs)[:1] + [len(thumbs)], "page": GALLERY_PAGE}
    index = folder / "index.json"
    if json_object(index) == stamp:
        return
    if folder.exists():
        for old in folder.glob("*.html"):
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    template = _environment().get_template("gallery.html")
    groups: list[tuple[str, str, pd.DataFrame]] = []
    usable = clusters[clusters["status"] != "rejected"]
    for label in _section_order(usable["cluster"].to_numpy()):
        title = f"Cluster {label}" if label >= 0 else "Noise"
        groups.append((_anchor(label), title, usable[usable["cluster"] == label]))
    groups.append(("rejected", "Rejected images", clusters[clusters["status"] == "rejected"]))
    for anchor, title, members in groups:
        positions = members.index.to_numpy()
        ids = members["id"].astype(str).tolist()
        paths = members["path"].astype(str).tolist()
        reasons = members["reason"].astype(str).tolist()
        pages = max(1, math.ceil(len(members) / GALLERY_PAGE))
        for page in range(pages):
            items = []
            for k in range(page * GALLERY_PAGE, min(len(members), (page + 1) * GALLERY_PAGE)):
                path = paths[k]
                thumb = thumbs.get(int(positions[k]))
                url = None
                if anchor != "rejected" and os.path.isabs(path):  # the original file, percent-encoded
                    url = "file://" + urllib.parse.quote_from_bytes(os.fsencode(path))
                items.append({"id": ids[k], "path": path, "reason": reasons[k],
                              "src": url or (f"../thumbs/{thumb}" if thumb else None)})
            html = template.render(
                title=title, run_id=run.run_id, items=items, page=page + 1, pages=pages, total=len(members),
                prev=f"{anchor}-p{page:03d}.html" if page > 0 else None,
                next=f"{anchor}-p{page + 2:03d}.html" if page + 1 < pages else None,
                rejected=anchor == "rejected",
            )
            outputs.write_text(folder / f"{anchor}-p{page + 1:03d}.html", html)
    outputs.write_json(index, stamp)


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


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("rca_gpu.report", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["pct"] = share_text
    environment.filters["num"] = lambda v, d=2: "-" if v is None or (isinstance(v, float) and v != v) else f"{v:.{d}f}"
    return environment


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)

