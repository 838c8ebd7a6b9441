"""Extension points of the report: optional sections and per-cluster facts from other run-folder files.

A section or a fact names the run-folder files it reads; the report renders it only when every one of them
exists, so a run without those files gets a report without them::

    from rca_gpu.report.sections import Content, ExtraSection, register_section

    register_section(ExtraSection(key="drift", title="Drift", files=("drift.json",),
                                  render=lambda run: Content(paragraphs=(Paragraph(run.json("drift.json")["text"]),))))

A section returns :class:`Content` (paragraphs and a table of plain values), never HTML: the page's template
writes every value with Jinja's autoescaping, so a value read from a file is text whatever it holds. The
report's own sections (stability, causes, the comparison with an earlier run) are registered by
:mod:`rca_gpu.report.catalogue_sections`, which the report imports; nothing here imports the catalogue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from rca_gpu.runfolder import RunFolder


@dataclass(frozen=True)
class Paragraph:
    """One paragraph of plain text; ``lead`` is shown in bold before it, ``kind`` is a CSS class (``note``,
    ``note stale``) chosen by the code, never by data."""

    text: str
    lead: str = ""
    kind: str = ""


@dataclass(frozen=True)
class Table:
    """A table of plain values: ``head`` (column titles) and ``rows`` (one tuple of values per row, each shown
    as text)."""

    head: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class Content:
    """What a section shows: paragraphs, then an optional table. Every value is escaped by the page."""

    paragraphs: tuple[Paragraph, ...] = ()
    table: Table | None = None

    def text(self) -> str:
        """Everything the section says, as plain text (paragraphs, then the table's rows tab-separated)."""
        lines = [f"{p.lead} {p.text}".strip() for p in self.paragraphs]
        if self.table is not None:
            lines += ["\t".join(map(str, self.table.head))] + ["\t".join(map(str, row)) for row in self.table.rows]
        return "\n".join(lines)


@dataclass(frozen=True)
class ExtraSection:
    """A section after the clusters. ``render(run) -> Content`` or None to skip it."""

    key: str
    title: str
    files: tuple[str, ...]
    render: Callable[[RunFolder], Content | None]
    order: int = 100


@dataclass(frozen=True)
class ClusterFact:
    """One line in every cluster's section: ``compute(run) -> {cluster id: text}`` (plain text, escaped
    by the page)."""

    key: str
    label: str
    files: tuple[str, ...]
    compute: Callable[[RunFolder], dict[int, str]]
    order: int = 100


EXTRA_SECTIONS: list[ExtraSection] = []
CLUSTER_FACTS: list[ClusterFact] = []


def register_section(section: ExtraSection) -> None:
    """Add (or replace, by key) an optional section."""
    EXTRA_SECTIONS[:] = [s for s in EXTRA_SECTIONS if s.key != section.key] + [section]


def register_cluster_fact(fact: ClusterFact) -> None:
    """Add (or replace, by key) a per-cluster fact."""
    CLUSTER_FACTS[:] = [f for f in CLUSTER_FACTS if f.key != fact.key] + [fact]


def available_sections(run: RunFolder) -> list[tuple[ExtraSection, Content]]:
    """(section, content) for the registered sections whose files exist and that render something.

    Raises
    ------
    TypeError
        A section returned something other than :class:`Content` (HTML text is refused: the page escapes
        values itself).
    """
    out = []
    for section in sorted(EXTRA_SECTIONS, key=lambda s: (s.order, s.key)):
        if all(run.has(name) for name in section.files):
            content = section.render(run)
            if content is None:
                continue
            if not isinstance(content, Content):
                raise TypeError(f"The report section {section.key!r} returned {type(content).__name__}; a section "
                                "returns rca_gpu.report.sections.Content (plain values), never HTML.")
            out.append((section, content))
    return out


def cluster_facts(run: RunFolder) -> list[tuple[ClusterFact, dict[int, str]]]:
    """(fact, {cluster: text}) for the registered facts whose files exist."""
    return [(fact, fact.compute(run)) for fact in sorted(CLUSTER_FACTS, key=lambda f: (f.order, f.key))
            if all(run.has(name) for name in fact.files)]
