"""Merge suggestions: pairs of causes that may be one, with the evidence and a confidence.

A run often splits one root cause into several clusters (digits rotated left and right, or rotated 3s and rotated
1s). For every pair of active causes of the run's (edited) catalogue three kinds of evidence are measured, each in
[0, 1]:

``metadata`` (weight :data:`WEIGHTS`)
    Do the two causes differ from the other images in the same way? Per usable column (metadata; image properties
    only when the run has no metadata), each cause's distribution of values is compared with that of every other
    usable image (:mod:`rca_gpu.report.columns`: levels, deciles, missing values); the deviations of all columns
    form one vector per cause, and the evidence is the cosine of the two vectors, clipped at 0. Two fragments of
    "rotation" both have ``rotation_deg`` present far more often than the rest: cosine near 1. The DNN's outcome
    columns (:data:`~rca_gpu.report.columns.OUTCOME_COLUMNS`: label, prediction, confidence) are left out: one
    cause makes the DNN fail on many classes, and fragments of a cause often split by class.
``rules``
    How much the explanations overlap: the share of the pair's images that the other cause's top rules match
    (the rank-1 rule of each of its clusters in explanations.parquet, only where that rule qualified: a best
    candidate that did not reach the precision and coverage of an explanation is no evidence). No evidence for
    a pair of which neither cause has a qualified rule.
``links``
    Share of kNN links between them in the features: the 10 nearest neighbours of every image of the reference set
    (reference.safetensors: up to 256 seeded-random members of each cluster, the run's own features), as the
    share of the links leaving either cause that join the two, divided by the share a random split of one cause
    into these two sizes would give (2 a b / (a + b)^2), capped at 1.

``confidence`` is their weighted mean (an evidence that cannot be measured, e.g. no metadata column, drops out and
the others are reweighted). Pairs at :data:`LIKELY` or above are suggested as merges (``rca-gpu causes RUN
--suggest`` prints the ``--merge`` command, joining pairs that share a cause); pairs at :data:`POSSIBLE` or above
are listed as possible. Why metadata weighs most: on mnist-rc the features' kNN links follow the digit, not the
cause (rotated 3s link with warped 3s), while the metadata of the fragments of one cause agree
(docs/report.md, "Maybe the same cause").
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rca_gpu.report import columns as _columns
from rca_gpu.report import explain as _explain
from rca_gpu.runfiles import EXPLANATIONS_FILE

if TYPE_CHECKING:  # pragma: no cover
    from rca_gpu.catalogue.causes import Catalogue

#: Weights of the evidence in the confidence.
WEIGHTS = {"metadata": 0.6, "rules": 0.2, "links": 0.2}
#: Confidence from which a pair is suggested as a merge, and from which it is listed as possible.
LIKELY = 0.45
POSSIBLE = 0.25
#: Neighbours per reference image for the kNN links.
K_LINKS = 10


@dataclass(frozen=True)
class Suggestion:
    """Two causes that may be one (``a`` < ``b``), the evidence (each in [0, 1], None when not measurable) and
    the confidence; ``links_share`` is the raw share of kNN links joining them; ``why`` says it in words."""

    a: int
    b: int
    metadata: float | None
    rules: float | None
    links: float | None
    links_share: float | None
    confidence: float
    why: str

    @property
    def level(self) -> str:
        return "likely" if self.confidence >= LIKELY else "possible"

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "confidence": round(self.confidence, 3), "level": self.level,
                "metadata": _round(self.metadata), "rules": _round(self.rules), "links": _round(self.links),
                "links_share": _round(self.links_share), "why": self.why}


def suggest_merges(catalogue: Catalogue, *, explanations: pd.DataFrame | None = None,
                   reference=None, floor: float = POSSIBLE) -> list[Suggestion]:
    """Every pair of active causes of ``catalogue`` with confidence >= ``floor`` (:data:`POSSIBLE`), most
    confident first.

    Parameters
    ----------
    catalogue:
        The run's catalogue (:func:`rca_gpu.catalogue.load_catalogue`), edits applied.
    explanations:
        explanations.parquet of the run (None: read from the run folder when present).
    reference:
        The run's reference set (:func:`rca_gpu.catalogue.reference.read_reference`; None: read it, and leave the
        links out when the run has none).
    """
    run = catalogue.run
    clusters = run.clusters().reset_index(drop=True)
    keep = (clusters["status"] != "rejected").to_numpy()
    usable = clusters[keep].reset_index(drop=True)
    cause = catalogue.cause_of(usable["id"].to_numpy())
    active = [c for c in catalogue.active if (cause == c).any()]
    if len(active) < 2:
        return []
    if explanations is None and run.has(EXPLANATIONS_FILE):
        explanations = run.table(EXPLANATIONS_FILE)
    metadata, shared = _metadata_evidence(usable, cause, active)
    rules = _rule_evidence(usable, cause, active, catalogue, explanations)
    links, shares = _link_evidence(catalogue, active, reference)
    out = []
    for i, a in enumerate(active):
        for j in range(i + 1, len(active)):
            b = active[j]
            evidence = {"metadata": _at(metadata, i, j), "rules": _at(rules, i, j), "links": _at(links, i, j)}
            present = {key: value for key, value in evidence.items() if value is not None}
            if not present:
                continue
            weight = sum(WEIGHTS[key] for key in present)
            confidence = sum(WEIGHTS[key] * value for key, value in present.items()) / weight
            if confidence < floor:
                continue
            why = _words(a, b, evidence, shared.get((i, j), []), _at(shares, i, j))
            out.append(Suggestion(a, b, evidence["metadata"], evidence["rules"], evidence["links"],
                                  _at(shares, i, j), float(confidence), why))
    return sorted(out, key=lambda s: (-s.confidence, s.a, s.b))


def merge_groups(suggestions: list[Suggestion], *, at: float = LIKELY) -> list[list[int]]:
    """The causes to merge: pairs at confidence >= ``at`` joined into groups when they share a cause
    (connected components), each group ascending, groups by their smallest id."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for s in suggestions:
        if s.confidence >= at:
            parent[root(s.b)] = root(s.a)
    groups: dict[int, list[int]] = {}
    for x in parent:
        groups.setdefault(root(x), []).append(x)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def merge_command(run_path: Any, groups: list[list[int]]) -> str | None:
    """``rca-gpu causes RUN --merge 3,6,9 --merge 4,8`` for the groups, None when there is nothing to merge."""
    if not groups:
        return None
    merges = " ".join(f"--merge {','.join(map(str, g))}" for g in groups)
    return f"rca-gpu causes {shlex.quote(str(run_path))} {merges}"


# --------------------------------------------------------------------------------------------------
# The evidence
# --------------------------------------------------------------------------------------------------


def _metadata_evidence(usable: pd.DataFrame, cause: np.ndarray, active: list[int]):
    """(causes x causes cosine of the deviation vectors, clipped at 0, or None without a usable column;
    {(i, j): the columns that agree most, for the words})."""
    candidates = [c for c in usable.columns if c not in _columns.OUTCOME_COLUMNS]
    found = _columns.profiles(usable, candidates)
    chosen = [p for p in found if not p.image_property] or found
    if not chosen:
        return None, {}
    blocks, names = [], []
    for profile in chosen:
        inside, rest = _columns.distributions(profile, cause, active)
        blocks.append(inside - rest)
        names.append(_explain.display_name(profile.column))
    deviation = np.concatenate(blocks, axis=1)  # (causes, all levels)
    norms = np.linalg.norm(deviation, axis=1)
    similarity = (deviation @ deviation.T) / np.maximum(np.outer(norms, norms), 1e-12)
    shared = {}
    for i in range(len(active)):
        for j in range(i + 1, len(active)):
            agree = sorted(((float((block[i] * block[j]).sum()), name)
                            for block, name in zip(blocks, names, strict=True)), reverse=True)
            top = agree[0][0] if agree else 0.0
            shared[(i, j)] = [name for value, name in agree[:2] if value > 0 and value >= 0.25 * top]
    return np.clip(similarity, 0.0, 1.0), shared


def _rule_evidence(usable: pd.DataFrame, cause: np.ndarray, active: list[int], catalogue,
                   explanations: pd.DataFrame | None):
    """(causes x causes) share of the pair's images matched by the other cause's top rules, or None without
    explanations."""
    if explanations is None or explanations.empty:
        return None
    masks = _explain.rule_masks(explanations[explanations["found"].astype(bool)], usable)
    if not masks:
        return None
    n = len(active)
    matched = np.zeros((n, len(usable)), dtype=bool)  # images matched by a qualified top rule of each cause
    has_rule = np.zeros(n, dtype=bool)
    for i, c in enumerate(active):
        for cluster in catalogue.causes[c].clusters:
            if cluster in masks:
                matched[i] |= masks[cluster]
                has_rule[i] = True
    members = np.stack([cause == c for c in active])
    sizes = members.sum(axis=1)
    covered = matched.astype(float) @ members.T.astype(float)  # [i, j]: images of j matched by i's rules
    out = np.full((n, n), np.nan)  # NaN: neither cause has a qualified rule, so the rules say nothing
    for i in range(n):
        for j in range(n):
            if has_rule[i] or has_rule[j]:
                out[i, j] = (covered[i, j] + covered[j, i]) / max(sizes[i] + sizes[j], 1)
    return out


def _link_evidence(catalogue, active: list[int], reference):
    """((causes x causes) link evidence in [0, 1], raw link shares), or (None, None) without a reference set."""
    if reference is None:
        from rca_gpu.catalogue.reference import CatalogueError, read_reference

        try:
            reference = read_reference(catalogue.run)
        except CatalogueError:
            return None, None
    cause = catalogue.cause_of(reference.ids)
    index = {c: i for i, c in enumerate(active)}
    keep = np.isin(cause, active)
    if keep.sum() < 2:
        return None, None
    features, codes = reference.features[keep], np.array([index[c] for c in cause[keep]])
    neighbours = _neighbours(features, min(K_LINKS, len(features) - 1))
    n = len(active)
    links = np.zeros((n, n))
    np.add.at(links, (np.repeat(codes, neighbours.shape[1]), codes[neighbours].ravel()), 1.0)
    out_links = links.sum(axis=1)
    counts = np.bincount(codes, minlength=n).astype(float)
    share = (links + links.T) / np.maximum(out_links[:, None] + out_links[None, :], 1e-12)
    expected = 2 * np.outer(counts, counts) / np.maximum((counts[:, None] + counts[None, :]) ** 2, 1e-12)
    return np.clip(share / np.maximum(expected, 1e-12), 0.0, 1.0), share


def _neighbours(features: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """(n, k) int64: the k nearest other rows of each row (exact, Euclidean, float64 matrix products in blocks).

    numpy rather than :func:`rca_gpu.neighbors.nearest_rows`: the reference set holds a few thousand rows at
    most (256 per cluster), and ``rca-gpu report`` would otherwise import torch for it."""
    x = np.asarray(features, dtype=np.float64)
    squares = np.einsum("ij,ij->i", x, x)
    out = np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(x), block):
        rows = slice(start, min(len(x), start + block))
        d2 = squares[rows, None] + squares[None, :] - 2.0 * (x[rows] @ x.T)
        d2[np.arange(d2.shape[0]), np.arange(start, rows.stop)] = np.inf  # never its own neighbour
        nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(d2, nearest, axis=1).argsort(axis=1, kind="stable")
        out[rows] = np.take_along_axis(nearest, order, axis=1)
    return out


def _words(a: int, b: int, evidence: dict[str, float | None], shared: list[str], share: float | None) -> str:
    parts = []
    if evidence["metadata"] is not None:
        alike = f" ({', '.join(shared)})" if shared and evidence["metadata"] >= 0.2 else ""
        parts.append(f"metadata alike {evidence['metadata']:.2f}{alike}")
    if evidence["rules"] is not None:
        parts.append(f"their rules match {evidence['rules']:.0%} of each other's images")
    if evidence["links"] is not None and share is not None:
        parts.append(f"{share:.0%} of their kNN links join them ({evidence['links']:.2f} of a random split)")
    return f"causes {a} and {b}: " + "; ".join(parts)


def _at(matrix, i: int, j: int) -> float | None:
    """The evidence of pair (i, j), None where there is none (no matrix, or NaN in it)."""
    if matrix is None or np.isnan(matrix[i, j]):
        return None
    return float(matrix[i, j])


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)
