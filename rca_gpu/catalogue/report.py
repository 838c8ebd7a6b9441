"""What the HTML report shows of the catalogue: each cluster's stability and cause name, and the comparison
with an earlier run (the edited causes themselves are the report summary's causes table, rca_gpu.report.build).

Imported by the report (:data:`rca_gpu.report.sections.PLUGIN_MODULES`), it registers itself through the
report's extension points; every value taken from data is escaped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rca_gpu.catalogue.causes import CAUSES_FILE
from rca_gpu.catalogue.compare import COMPARISON_FILE, COMPARISON_INFO_FILE
from rca_gpu.catalogue.stability import SUMMARY_FILE, UNSTABLE_BELOW

if TYPE_CHECKING:  # pragma: no cover
    from rca_gpu.runfolder import RunFolder


def stability_facts(run: "RunFolder") -> dict[int, str]:
    """cluster -> "0.93 (stable)" / "0.41 (unstable: below 0.6)": mean best-match Jaccard over resamples."""
    summary = run.table(SUMMARY_FILE)
    out = {}
    for row in summary.itertuples(index=False):
        if row.stability != row.stability:  # NaN: no resample held a member
            continue
        word = f"unstable: below {UNSTABLE_BELOW:g}" if row.unstable else "stable"
        out[int(row.cluster)] = f"{row.stability:.2f} ({word}, {int(row.resamples)} resamples)"
    return out


def cause_facts(run: "RunFolder") -> dict[int, str]:
    """cluster -> the causes its images belong to in the edited catalogue (one, or a split cluster's parts with
    their image counts, largest first), each with its name and origin."""
    from rca_gpu.catalogue.causes import load_catalogue

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


def comparison_section(run: "RunFolder") -> str | None:
    """The comparison with an earlier run (comparison.parquet, written by ``rca-gpu compare A THIS_RUN``),
    marked out of date with the command to run again when either catalogue was edited since
    (:func:`rca_gpu.catalogue.compare.stale_note`)."""
    from markupsafe import escape

    from rca_gpu.catalogue.compare import stale_note

    table = run.table(COMPARISON_FILE)
    info = run.json(COMPARISON_INFO_FILE) if run.has(COMPARISON_INFO_FILE) else {}
    if table.empty:
        return None
    shares = "share_a" in table.columns  # comparisons written before shares were recorded have counts only

    def share(value, blank: bool) -> str:
        return "" if blank or not shares else f" ({value:.1%})"

    head = ("<tr><th>status</th><th>cause in A</th><th>name in A</th><th>images in A</th><th>images here</th>"
            "<th>cause here</th><th>name here</th></tr>")
    rows = "".join(
        f"<tr><td>{escape(r.status)}</td><td>{'' if r.cause_a < 0 else r.cause_a}</td><td>{escape(r.name_a)}</td>"
        f"<td>{r.size_a}{share(getattr(r, 'share_a', 0), r.cause_a < 0)}</td>"
        f"<td>{r.size_b}{share(getattr(r, 'share_b', 0), False)}</td><td>{'' if r.cause_b < 0 else r.cause_b}</td>"
        f"<td>{escape(r.name_b)}</td></tr>"
        for r in table.itertuples(index=False)
    )
    source = escape(str(info.get("run_a_folder", table["run_a"].iloc[0])))
    mode = escape(str(info.get("mode", "")))
    basis = ""
    if info.get("basis"):
        words = "shares of each run's images" if info["basis"] == "shares" else "image counts"
        basis = (f" Statuses compare {words} (A {escape(str(info.get('images_a')))} images, this run "
                 f"{escape(str(info.get('images_b')))}); shares in brackets.")
    stale = stale_note(run)
    warning = f'<p class="note stale"><strong>Out of date.</strong> {escape(stale)}</p>' if stale else ""
    return (f"{warning}<p>Compared with run {escape(str(table['run_a'].iloc[0]))} ({source}), matched by "
            f"{mode}.{basis}</p><table><thead>{head}</thead><tbody>{rows}</tbody></table>")


def register() -> bool:
    """Register the facts and sections with the report's extension points; False when this installation has
    no report."""
    try:
        from rca_gpu.report.sections import ClusterFact, ExtraSection, register_cluster_fact, register_section
    except ModuleNotFoundError as exc:
        if exc.name and "rca_gpu.report".startswith(exc.name):
            return False
        raise

    register_cluster_fact(ClusterFact("stability", "stability", (SUMMARY_FILE,), stability_facts, order=10))
    register_cluster_fact(ClusterFact("cause", "cause", (CAUSES_FILE,), cause_facts, order=20))
    register_section(ExtraSection("comparison", "Comparison with an earlier run", (COMPARISON_FILE,),
                                  comparison_section, order=20))
    return True


register()
