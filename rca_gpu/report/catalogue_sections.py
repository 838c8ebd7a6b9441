"""What the report shows of the catalogue (:mod:`rca_gpu.catalogue`): the edited causes for the summary and the
map, each cluster's stability and causes, and the comparison with an earlier run.

The report imports the catalogue, never the reverse. Everything here returns plain values (text, numbers,
:class:`~rca_gpu.report.sections.Content`); the page's template escapes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rca_gpu.catalogue.causes import CAUSES_FILE, load_catalogue
from rca_gpu.catalogue.compare import COMPARISON_FILE, COMPARISON_INFO_FILE, stale_note
from rca_gpu.catalogue.stability import SUMMARY_FILE, UNSTABLE_BELOW
from rca_gpu.report.sections import (
    ClusterFact,
    Content,
    ExtraSection,
    Paragraph,
    Table,
    register_cluster_fact,
    register_section,
)

if TYPE_CHECKING:  # pragma: no cover
    from rca_gpu.runfolder import RunFolder


def anchor(label: int) -> str:
    """The page anchor of a cluster (``cluster-3``) or of the noise."""
    return f"cluster-{label}" if label >= 0 else "noise"


def stability_facts(run: RunFolder) -> dict[int, str]:
    """cluster -> "0.93 (stable)" / "0.41 (unstable: below 0.6)": mean best-match Jaccard over resamples."""
    summary = run.table(SUMMARY_FILE)
    out = {}
    for row in summary.itertuples(index=False):
        if row.stability != row.stability:  # NaN: no resample held a member
            continue
        word = f"unstable: below {UNSTABLE_BELOW:g}" if row.unstable else "stable"
        out[int(row.cluster)] = f"{float(row.stability):.2f} ({word}, {int(row.resamples)} resamples)"
    return out


def cause_facts(run: RunFolder) -> dict[int, str]:
    """cluster -> the causes its images belong to in the edited catalogue (one, or a split cluster's parts with
    their image counts, largest first), each with its name and origin."""
    catalogue = load_catalogue(run)
    out = {}
    for cluster, causes in catalogue.causes_by_cluster().items():
        parts = []
        for cause, images in causes:  # a split cluster: every part, largest first
            item = catalogue.causes[cause]
            text = f"cause {cause}" + (f" \u201c{item.name}\u201d" if item.name else "")
            if item.dropped:
                text += ", dropped (not a cause)"
            if item.origin != f"cluster {cause}":
                text += f", {item.origin}"
            parts.append(text + (f" ({images} images)" if len(causes) > 1 else ""))
        out[cluster] = "; ".join(parts)
    return out


def comparison_section(run: RunFolder) -> Content | None:
    """The comparison with an earlier run (comparison.parquet, written by ``rca-gpu compare A THIS_RUN``),
    marked out of date with the command to run again when either catalogue was edited since
    (:func:`rca_gpu.catalogue.compare.stale_note`). Every value is read as data: numbers that are not numbers
    are shown as the text they hold."""
    table = run.table(COMPARISON_FILE)
    info = run.json(COMPARISON_INFO_FILE) if run.has(COMPARISON_INFO_FILE) else {}
    if table.empty:
        return None
    shares = "share_a" in table.columns  # comparisons written before shares were recorded have counts only

    def cause(value: Any) -> Any:
        number = _number(value)
        return "" if number is not None and number < 0 else value

    def size(value: Any, share: Any, blank: bool) -> str:
        fraction = _number(share)
        if blank or not shares or fraction is None:
            return str(value)
        return f"{value} ({fraction:.1%})"

    rows = []
    for record in table.to_dict("records"):
        missing_a = (_number(record.get("cause_a")) or 0) < 0
        rows.append((record.get("status", ""), cause(record.get("cause_a")), record.get("name_a", ""),
                     size(record.get("size_a"), record.get("share_a"), missing_a),
                     size(record.get("size_b"), record.get("share_b"), False),
                     cause(record.get("cause_b")), record.get("name_b", "")))
    paragraphs = []
    stale = stale_note(run)
    if stale:
        paragraphs.append(Paragraph(stale, lead="Out of date.", kind="note stale"))
    source = info.get("run_a_folder", table["run_a"].iloc[0])
    basis = ""
    if info.get("basis"):
        words = "shares of each run's images" if info["basis"] == "shares" else "image counts"
        basis = (f" Statuses compare {words} (A {info.get('images_a')} images, this run {info.get('images_b')}); "
                 "shares in brackets.")
    paragraphs.append(Paragraph(f"Compared with run {table['run_a'].iloc[0]} ({source}), matched by "
                                f"{info.get('mode', '')}.{basis}"))
    head = ("status", "cause in A", "name in A", "images in A", "images here", "cause here", "name here")
    return Content(tuple(paragraphs), Table(head, tuple(rows)))


def verified_causes(run: RunFolder) -> dict[str, Any] | None:
    """What ``rca-gpu verify`` found (verify.json), for the summary: ``by_cause`` cause -> {``text`` ("lift 3.2
    [2.1, 4.8]"), ``verdict``, ``images``, ``failures``}, the pool's ``images``, ``failure_rate``, the
    ``interval`` used, and ``stale`` (a sentence) when the catalogue was edited after the verification; None
    when the run was not verified. Values are read as data: a field of the wrong type shows as "-"."""
    from rca_gpu.catalogue.verify import VERIFY_FILE

    if not run.has(VERIFY_FILE):
        return None
    info = run.json(VERIFY_FILE)
    rows = info.get("per_cause")
    if not isinstance(rows, dict):
        rows = {}
    by_cause: dict[int, dict[str, Any]] = {}
    for key, row in rows.items():
        if not isinstance(row, dict) or not str(key).lstrip("-").isdigit():
            continue
        lift, low, high = (_number(row.get(k)) for k in ("lift", "low", "high"))
        text = "-" if lift is None else f"lift {lift:.2f}" + (f" [{low:.2f}, {high:.2f}]"
                                                                if low is not None and high is not None else "")
        by_cause[int(key)] = {"text": text, "verdict": str(row.get("verdict", "")), "images": row.get("images"),
                              "failures": row.get("failures"), "lift": lift, "low": low, "high": high}
    stale = None
    recorded = info.get("catalogue")
    if not isinstance(recorded, dict):
        recorded = {}
    if recorded.get("digest") != load_catalogue(run).state()["digest"]:
        stale = (f"The catalogue was edited after the verification: run `rca-gpu verify {run.path} POOL` again to "
                 "verify the causes as they are now.")
    return {"by_cause": by_cause, "images": info.get("images"), "failure_rate": _number(info.get("failure_rate")),
            "interval": str(info.get("interval", "")), "pool": str((info.get("pool") or {}).get("given", ""))
            if isinstance(info.get("pool"), dict) else "", "stale": stale}


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (not text, not a bool), else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    number = float(value)
    return number if number == number else None


# --------------------------------------------------------------------------------------------------
# The edited causes: the summary's causes table and the map's colouring
# --------------------------------------------------------------------------------------------------


def catalogue_summary(run: RunFolder, clusters: pd.DataFrame, n_total: int) -> dict[str, Any] | None:
    """The causes of the run's edited catalogue for the summary and the map, or None when ``causes.toml`` holds
    no edit. ``rows``: one per cause, active ones largest first, then the dropped; ``by_cluster``: cluster ->
    the causes its images belong to, most images first (Catalogue.causes_by_cluster); ``cause``: (n,) int64
    cause of each row of clusters.parquet (-1: noise, rejected).

    Raises
    ------
    rca_gpu.catalogue.reference.CatalogueError
        causes.toml is unreadable or belongs to another run (as for every command that reads the catalogue).
    """
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
                     "clusters": [(f"cluster {c}", anchor(c)) for c in sorted(item.clusters)]})
    by_id = {row["id"]: row for row in rows}
    by_cluster = {cluster: [dict(by_id[c], images=k) for c, k in causes]
                  for cluster, causes in catalogue.causes_by_cluster().items()}
    return {"rows": rows, "by_cluster": by_cluster, "cause": cause, "history": list(catalogue.history)}


def cause_codes(catalogue: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    """The map's cause column for the clusters.parquet rows ``rows``: ``codes`` index ``levels`` (-1: no cause),
    ``ids`` and ``dropped`` per level, in the summary's order."""
    levels = catalogue["rows"]
    position = {row["id"]: k for k, row in enumerate(levels)}
    codes = [position.get(int(c), -1) for c in catalogue["cause"][rows]]
    return {"codes": codes, "ids": [row["id"] for row in levels], "dropped": [row["dropped"] for row in levels],
            "levels": [(f"{row['id']}: {row['name']}" if row["name"] else row["label"])
                       + (" (not a cause)" if row["dropped"] else "") for row in levels]}


register_cluster_fact(ClusterFact("stability", "stability", (SUMMARY_FILE,), stability_facts, order=10))
register_cluster_fact(ClusterFact("cause", "cause", (CAUSES_FILE,), cause_facts, order=20))
register_section(ExtraSection("comparison", "Comparison with an earlier run", (COMPARISON_FILE,),
                              comparison_section, order=20))
