"""The automatic selection: search -> choose -> refine -> extend.

``select(features, graph, reduce_spec, cluster_spec, device, *, seed, progress, reduce_cache, criterion=None,
sample_size=SAMPLE_SIZE) -> Selection``: labels for every row, the chosen setting and every trial.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rca_gpu.engine.cards import check_fixed_count
from rca_gpu.engine.device import Device
from rca_gpu.engine.knn import KnnGraph
from rca_gpu.errors import SpecError
from rca_gpu.progress import no_progress
from rca_gpu.spec import SELECT_FIX, ClusterSpec, ReduceSpec
from rca_gpu.tuning.criteria import DEFAULT_CRITERION, choose, choose_base, choose_max, knee_k
from rca_gpu.tuning.extend import extend
from rca_gpu.tuning.refine import Choice, refine
from rca_gpu.tuning.search import MIN_DISTINCT, SAMPLE_SIZE, Search, distinct_rows, search
from rca_gpu.tuning.selection import Selection

log = logging.getLogger("rca_gpu")

#: The rule -> the function that picks a trial (rca_gpu.tuning.criteria); "knee" picks a trial to cut its
#: embedding's tree again at the knee.
_PICK = {"merged": choose_base, "finest-peak": choose, "max": choose_max, "knee": choose}


def select(
    features: Any,
    graph: KnnGraph | None,
    reduce_spec: ReduceSpec,
    cluster_spec: ClusterSpec,
    device: Device,
    *,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    reduce_cache: dict | None = None,
    criterion: str | None = None,
    sample_size: int = SAMPLE_SIZE,
    grid: Mapping[str, tuple[Any, ...]] | None = None,
) -> Selection:
    """Search the open hyper-parameters and return the chosen setting with labels for every row.

    Parameters
    ----------
    features : (n, d) float array (NumPy, torch or CuPy) of the usable images.
    graph : the kNN graph of all n rows (self first), or None. It is used when the search runs on all rows
        (n <= ``sample_size``); above that the search computes the graph of its sample and the full graph
        is not needed (pass None and save its cost).
    reduce_spec, cluster_spec : the stages; parameters they fix are not searched.
    device : where the stages run.
    seed : seeds the sample, UMAP, K-means and the silhouette sample.
    progress : called with 1 after each step of the search and once after the choice (see
        :func:`rca_gpu.tuning.search.search`, which tells it the number of steps first).
    reduce_cache : a dict kept by the caller that shares embeddings between searches over the same features
        (the study's clusterers on one UMAP embedding).
    criterion : the selection rule ("merged", "finest-peak", "max"; cards may add "knee"); default: the spec's
        ``select`` parameter, else "merged" (see :mod:`rca_gpu.tuning`).
    sample_size : above this many rows the search runs on a seeded sample of this many and the chosen
        setting is extended to the others (:mod:`rca_gpu.tuning.extend`).
    grid : the reducer's search grid (see :func:`rca_gpu.tuning.search.search`).

    Returns
    -------
    Selection, with ``labels`` (n,) int64 and ``embedding`` (n, c).

    Raises
    ------
    SpecError
        An unknown ``select`` rule, a fixed number of clusters above the number of distinct images, or a
        clusterer asked to run on more images than it can (Ward above 50,000: lower ``sample_size``).
    """
    rule = criterion_of(cluster_spec, criterion)
    card = cluster_spec.card
    # the merge step runs unless the user fixed the granularity and left the rule at its default
    explicit = criterion is not None or "select" in cluster_spec.params
    merge = rule == "merged" and (explicit or card.granularity not in cluster_spec.params)
    n = int(features.shape[0])
    started = time.perf_counter()
    distinct = distinct_rows(features, n, seed)
    if distinct < MIN_DISTINCT:
        return _one_cluster(n, distinct)
    check_fixed_count(card, cluster_spec.fixed, distinct, n)
    found = search(features, graph, reduce_spec, cluster_spec, device, seed=seed, sample_size=sample_size,
                   progress=progress, reduce_cache=reduce_cache, grid=grid, distinct=distinct,
                   within=rule == "knee")
    t = time.perf_counter()
    choice = choose_candidate(found, rule, device, seed=seed)
    selection, raw = refine(found, choice, rule=rule, merge=merge, fixed=cluster_spec.fixed)
    timings = {**found.timings, "merge": time.perf_counter() - t, "extend": 0.0}
    if found.sample is not None:
        t = time.perf_counter()
        extend(selection, found, choice.embedding, raw, merge=merge, device=device, seed=seed,
               progress=progress or no_progress)
        timings["extend"] = time.perf_counter() - t
    if progress:
        progress(1)
    selection.seconds = {k: round(v, 3) for k, v in timings.items()}
    selection.seconds["total"] = round(time.perf_counter() - started, 3)
    return selection


def choose_candidate(found: Search, rule: str, device: Device, *, seed: int = 0) -> Choice:
    """The candidate ``rule`` picks, marked ``chosen`` among the trials. The "knee" rule takes the embedding
    of the trial :func:`~rca_gpu.tuning.criteria.choose` picks and cuts it again at the knee of the
    within-cluster distance over the number of clusters (no trial is marked: the cut may be one no trial
    tried)."""
    index = _PICK[rule](found.trials)
    candidate = found.candidates[index]
    choice = Choice(index, candidate.embedding, dict(candidate.params), candidate.labels)
    if rule == "knee":
        choice = _knee(found, candidate.embedding, device, seed=seed)
    for i, trial in enumerate(found.trials):
        trial.chosen = i == choice.index
    return choice


def _knee(found: Search, embedding: int, device: Device, *, seed: int = 0) -> Choice:
    """The knee of the within-cluster distance over the granularity on one embedding (its trials' values are
    written into the trials, for run.json)."""
    key = found.clusterer.granularity
    on_it = [i for i, c in enumerate(found.candidates) if c.embedding == embedding]
    ks = [found.candidates[i].params[key] for i in on_it]
    curve = [found.within[i] for i in on_it]
    for i, value in zip(on_it, curve, strict=True):
        found.trials[i].cluster["within_cluster_distance"] = round(value, 6)
    params = {key: knee_k(ks, curve), "select": "knee"}
    chosen = found.embeddings[embedding]
    labels = found.clusterer.relabel(chosen.state, chosen.points, params, device, seed=seed)
    return Choice(None, embedding, params, labels)


def criterion_of(cluster_spec: ClusterSpec, criterion: str | None = None) -> str:
    """The selection rule: ``criterion`` if given, else the spec's ``select`` parameter, else the default.

    A value is never replaced by another: one outside the clusterer card's ``select_rules`` is refused.

    Raises
    ------
    SpecError
        Naming the clusterer, its valid rules and the value.
    """
    chosen = criterion or cluster_spec.params.get("select") or DEFAULT_CRITERION
    allowed = cluster_spec.card.select_rules
    if chosen not in allowed:
        raise SpecError(f"The 'select' parameter of clusterer '{cluster_spec.name}' must be one of "
                        f"{', '.join(repr(a) for a in allowed)}. Got {chosen!r} instead.{SELECT_FIX}")
    return chosen


def _one_cluster(n: int, distinct: int) -> Selection:
    """One cluster of every image: what a set of fewer than MIN_DISTINCT distinct feature vectors gets."""
    note = (f"the {n} images hold {distinct} distinct feature vector(s), fewer than {MIN_DISTINCT}: one "
            "cluster of all of them, nothing searched")
    log.warning("%s", note)
    return Selection({}, {}, np.zeros(n, dtype=np.int64), np.zeros((n, 2), dtype=np.float32),
                     {"algorithm": "none", "note": note}, [], criterion="none", note=note, warning=note,
                     searched=False)
