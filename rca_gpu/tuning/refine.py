"""After the choice: exact duplicates united, the merge and noise steps of the 'merged' rule, the notes.

:func:`refine` turns the chosen candidate of a :class:`~rca_gpu.tuning.search.Search` into a
:class:`~rca_gpu.tuning.selection.Selection` of the searched rows. The merge and noise steps read the kNN graph
of the features (:mod:`rca_gpu.tuning.graph`). When they decided the number of clusters of a clusterer whose
granularity is that number (K-means, Ward), the clusterer's own partition with that number replaces the merged
one when the two agree (OWN_PARTITION_AGREEMENT), so that the resolved pipeline states the value that ran.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from rca_gpu.engine.device import rows_on_host
from rca_gpu.tuning import graph as graph_rules
from rca_gpu.tuning.search import Search
from rca_gpu.tuning.selection import Selection

log = logging.getLogger("rca_gpu")

#: K-means / Ward: the clusterer's own partition with the merged number of clusters replaces the merged
#: partition when the two agree at least this well (adjusted Rand index).
OWN_PARTITION_AGREEMENT = 0.9


@dataclass
class Choice:
    """The chosen candidate: its index among the search's candidates (None when no trial stands for it, as
    with the "knee" rule's cut), its embedding's index, the clusterer setting and the clusterer's labels."""

    index: int | None
    embedding: int
    params: dict[str, Any]
    labels: np.ndarray


def refine(found: Search, choice: Choice, *, rule: str, merge: bool,
           fixed: dict[str, Any]) -> tuple[Selection, np.ndarray]:
    """(the selection of the searched rows, the clusterer's own labels of them): the choice with duplicates
    united and, when ``merge``, the merge and noise steps (``fixed``: the clusterer parameters the pipeline
    sets). The clusterer's labels are what an extension to more rows starts from."""
    clusterer = found.clusterer
    raw = unite_duplicates(choice.labels, rows_on_host(found.rows, np.arange(found.n_rows, dtype=np.int64)))
    merges: list[dict[str, Any]] = []
    final, attached = raw, 0
    if merge:
        final, merges = graph_rules.merge_unseparated(raw, found.neighbours)
        before = int((final < 0).sum())
        final = graph_rules.attach_noise(final, found.neighbours)
        attached = before - int((final < 0).sum())
        if merges and clusterer.counts_clusters and clusterer.granularity not in fixed:
            own = _own_partition(found, choice.embedding, final)
            if own is not None:
                _mark_chosen(found, own)
                choice = Choice(own, choice.embedding, found.candidates[own].params, found.candidates[own].labels)
                raw = final = choice.labels
    note = warning = ""
    if len(final) and not (final >= 0).any():
        if merge:  # no setting found any structure: nothing separates the images, as in a single-cause set
            final = np.zeros_like(final)
            warning = (f"no candidate setting found a cluster among the {found.n_rows} images (too few or too "
                       "uniform for the clusterer): one cluster of all of them, as for a single cause")
        else:
            warning = (f"every one of the {found.n_rows} images is noise under the rule {rule!r} with these "
                       f"settings; leave {clusterer.granularity} and select out to get one cluster instead")
        log.warning("%s", warning)
    ids = np.unique(raw[raw >= 0])
    if merge and same_partition(final, raw) and np.array_equal(ids, np.arange(len(ids))):
        final = raw  # only renumbered: the clusterer's own labels (0..m-1) stand
    embedding = found.embeddings[choice.embedding]
    selection = Selection(
        dict(embedding.params), dict(choice.params), final, embedding.points, embedding.info, found.trials,
        criterion=rule, merges=merges, noise_attached=attached,
        knn={**found.graph.describe(), "rows": found.n_rows}, merge_step=merge,
        relabelled=merge and not np.array_equal(final, raw),
    )
    if rule == "merged" and not merge:
        note = (f"{clusterer.granularity} set in the pipeline: {clusterer.name}'s own partition, no clusters "
                "merged and no noise attached")
    selection.note = "; ".join(filter(None, (note, warning)))
    selection.warning = warning
    return selection, raw


def _mark_chosen(found: Search, index: int | None) -> None:
    for i, trial in enumerate(found.trials):
        trial.chosen = i == index


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two (n,) int label arrays (-1 = noise) group the points alike, whatever the cluster ids."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or not np.array_equal(a < 0, b < 0):
        return False
    pairs = np.unique(np.stack([a[a >= 0], b[b >= 0]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[a >= 0])) == len(np.unique(b[b >= 0]))


def _own_partition(found: Search, embedding: int, merged: np.ndarray) -> int | None:
    """Index of the candidate on the same embedding whose granularity equals the merged number of clusters and
    whose labels agree with the merged partition (OWN_PARTITION_AGREEMENT), or None."""
    from sklearn.metrics import adjusted_rand_score

    key = found.clusterer.granularity
    m = len(np.unique(merged[merged >= 0]))
    for index, candidate in enumerate(found.candidates):
        if candidate.embedding == embedding and candidate.params.get(key) == m:
            if adjusted_rand_score(merged, candidate.labels) >= OWN_PARTITION_AGREEMENT:
                return index
    return None


def unite_duplicates(labels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Identical rows of ``points`` get one label: the most common clustered label of the group (noise only
    when every copy is noise)."""
    _, group = np.unique(np.ascontiguousarray(points), axis=0, return_inverse=True)
    group = group.ravel()
    if group.max(initial=-1) + 1 == len(labels):
        return labels
    order = np.lexsort((labels, group))
    out = labels.copy()
    for members in np.split(order, np.flatnonzero(np.diff(group[order])) + 1):
        if len(members) < 2:
            continue
        values = labels[members]
        clustered = values[values >= 0]
        out[members] = np.bincount(clustered).argmax() if clustered.size else -1
    return out
