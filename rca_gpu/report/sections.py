"""Extension points of the report: optional sections and per-cluster facts from other run-folder files.

A module that writes its own files into a run folder (stability, comparison with another run...) registers
here what the report should show; the report renders an entry only when every file it names exists in the
run folder, so a run without those files gets a report without them::

    from rca_gpu.report.sections import ExtraSection, register_section

    register_section(ExtraSection(key="stability", title="Stability", files=("stability.parquet",),
                                  render=lambda run: "<p>...</p>"))

``render`` returns HTML that is inserted as is: escape every value taken from data (``markupsafe.escape``).
Registration happens at import; the report imports :data:`PLUGIN_MODULES` (missing ones are skipped), so a
registering module needs only its name added there.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from rca_gpu.runfolder import RunFolder

log = logging.getLogger("rca_gpu")

#: Modules imported before a report is built, so their sections register themselves.
PLUGIN_MODULES: list[str] = ["rca_gpu.catalogue.report"]


@dataclass(frozen=True)
class ExtraSection:
    """A section after the clusters. ``render(run) -> str`` (safe HTML) or None to skip it."""

    key: str
    title: str
    files: tuple[str, ...]
    render: Callable[["RunFolder"], "str | None"]
    order: int = 100


@dataclass(frozen=True)
class ClusterFact:
    """One line in every cluster's section: ``compute(run) -> {cluster id: text}`` (plain text, escaped
    by the page)."""

    key: str
    label: str
    files: tuple[str, ...]
    compute: Callable[["RunFolder"], "dict[int, str]"]
    order: int = 100


EXTRA_SECTIONS: list[ExtraSection] = []
CLUSTER_FACTS: list[ClusterFact] = []


def register_section(section: ExtraSection) -> None:
    """Add (or replace, by key) an optional section."""
    EXTRA_SECTIONS[:] = [s for s in EXTRA_SECTIONS if s.key != section.key] + [section]


def register_cluster_fact(fact: ClusterFact) -> None:
    """Add (or replace, by key) a per-cluster fact."""
    CLUSTER_FACTS[:] = [f for f in CLUSTER_FACTS if f.key != fact.key] + [fact]


def load_plugins() -> None:
    for name in PLUGIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise  # the module exists but one of its own imports failed
            log.debug("report plugin %s not installed", name)


def available_sections(run: "RunFolder") -> list[tuple[ExtraSection, str]]:
    """(section, html) for the registered sections whose files exist and that render something."""
    out = []
    for section in sorted(EXTRA_SECTIONS, key=lambda s: (s.order, s.key)):
        if all(run.has(name) for name in section.files):
            html = section.render(run)
            if html:
                out.append((section, html))
    return out


def cluster_facts(run: "RunFolder") -> list[tuple[ClusterFact, dict[int, str]]]:
    """(fact, {cluster: text}) for the registered facts whose files exist."""
    return [(fact, fact.compute(run)) for fact in sorted(CLUSTER_FACTS, key=lambda f: (f.order, f.key))
            if all(run.has(name) for name in fact.files)]
