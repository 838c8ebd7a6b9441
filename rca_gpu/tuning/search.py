"""The search: every candidate setting (reducer grid x clusterer grid), its labels and its score.

:func:`search` fits the reducer once per setting the reducer card proposes, asks the clusterer card for its
candidates on each embedding and for their labels, and scores each (:func:`rca_gpu.tuning.criteria.validity`).
It chooses nothing: :mod:`rca_gpu.tuning.select` chooses by a rule, refines the choice
(:mod:`rca_gpu.tuning.refine`) and extends it to every image (:mod:`rca_gpu.tuning.extend`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rca_gpu.engine import registry
from rca_gpu.engine.cards import ClusterCard, ReducerCard
from rca_gpu.engine.device import Device, as_numpy, rows_on_host, take_rows
from rca_gpu.engine.knn import KnnGraph, knn_graph
from rca_gpu.engine.sample import draw_sample, extension_blocks
from rca_gpu.progress import set_total
from rca_gpu.spec import ClusterSpec, ReduceSpec
from rca_gpu.tuning import graph as graph_rules
from rca_gpu.tuning.criteria import Trial, validity

#: Above this many images the search runs on a seeded sample of this size and the chosen setting is
#: extended to the rest (rca_gpu.tuning.extend); RunSpec.sample_size / --sample-size change it.
SAMPLE_SIZE = 5000
#: Progress steps per reducer setting: its fit, then its clusterings and their scores.
SEARCH_STEPS = 2
#: Fewest distinct images worth searching; fewer give one cluster of everything (see rca_gpu.tuning.select).
MIN_DISTINCT = 3
#: Rows looked at first when counting distinct rows, and rows compared per block after that.
DISTINCT_PROBE = 20_000
DISTINCT_BLOCK = 50_000


@dataclass
class Embedding:
    """One reducer setting of the search.

    ``points``: the embedding of the searched rows; ``full``: of every image when the reducer is cheap (fitted
    on all images even when the search runs on a sample), else None; ``info``: its description for run.json;
    ``state``: what the clusterer card keeps to relabel it (Ward's merge tree); ``graph(k)``: its kNN graph.
    """

    params: dict[str, Any]
    points: Any
    full: Any
    info: dict[str, Any]
    state: Any
    graph: Callable[[int], KnnGraph]


@dataclass
class Candidate:
    """One clusterer setting on one embedding (``embedding`` indexes Search.embeddings) and its labels."""

    embedding: int
    params: dict[str, Any]
    labels: np.ndarray


@dataclass
class Search:
    """Everything the search tried. ``candidates[i]`` and ``trials[i]`` describe the same setting."""

    reducer: ReducerCard
    clusterer: ClusterCard
    features: Any
    #: the searched rows of the features (all of them, or the sample's)
    rows: Any
    #: (s,) sorted positions of the sample, or None when every image was searched
    sample: np.ndarray | None
    #: the kNN graph of the searched rows (self first), and their LINK_NEIGHBOURS nearest others
    graph: KnnGraph
    neighbours: np.ndarray
    embeddings: list[Embedding] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    #: trial index -> mean within-cluster distance (the "knee" rule only)
    within: dict[int, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return int(self.rows.shape[0])


def search(features: Any, graph: KnnGraph | None, reduce_spec: ReduceSpec, cluster_spec: ClusterSpec,
           device: Device, *, seed: int = 0, sample_size: int = SAMPLE_SIZE,
           progress: Callable[[int], None] | None = None, reduce_cache: dict | None = None,
           grid: Mapping[str, tuple[Any, ...]] | None = None, distinct: int | None = None,
           within: bool = False) -> Search:
    """Label and score every candidate setting the cards propose for what the specs leave open.

    Parameters
    ----------
    features : (n, d) float array (NumPy, torch or CuPy).
    graph : the kNN graph of all n rows (self first), or None; used when the search runs on all rows and is
        wide enough (:func:`effective_k`), else the graph of the searched rows is computed.
    reduce_spec, cluster_spec : the stages; parameters they fix are not searched.
    device : where the stages run.
    seed : seeds the sample, the reducer, the clusterer and the silhouette sample.
    sample_size : above this many rows the search runs on a seeded sample of this many.
    progress : called with 1 after each reducer fit and after each setting's clustering and scores; told the
        number of steps first (:func:`rca_gpu.progress.set_total`: SEARCH_STEPS per reducer setting, + 1 for
        the choice and extension :func:`rca_gpu.tuning.select.select` makes after the search).
    reduce_cache : shares embeddings between searches over the same features (see :func:`cached_reduce`).
    grid : the reducer's grid for its open parameters (default: the clusterer card's ``reducer_grids``
        entry for the reducer, else the reducer card's own grid).
    distinct : the number of distinct rows (at most this many clusters are tried by cards that count them).
    within : record each trial's mean within-cluster distance (for the "knee" rule).

    Raises
    ------
    SpecError
        The clusterer cannot run on that many rows (its card's ``check_points``, e.g. Ward above 50,000).
    """
    reducer, clusterer = reduce_spec.card, cluster_spec.card
    n = int(features.shape[0])
    timings = {"knn": 0.0, "reduce": 0.0, "cluster": 0.0, "score": 0.0}
    sample = draw_sample(n, sample_size, seed) if n > sample_size else None
    rows = features if sample is None else take_rows(features, sample, device.torch_device)
    clusterer.check_points(int(rows.shape[0]))
    t = time.perf_counter()
    widest = effective_k(2, reduce_spec)
    if graph is None or sample is not None or graph.k < min(widest, n):
        graph = knn_graph(rows, widest, device)
    timings["knn"] += time.perf_counter() - t
    found = Search(reducer, clusterer, features, rows, sample, graph,
                   graph.numpy()[0][:, 1:graph_rules.LINK_NEIGHBOURS + 1], timings=timings)
    if grid is None:
        grid = clusterer.reducer_grids.get(reducer.name)
    rows_key = None if sample is None else (n, len(sample))
    settings_of_reducer = reducer.candidates(reduce_spec.params, features, seed=seed, grid=grid)
    # + 1: choose and refine; then one step per block of the other images extended (select)
    extension = 0 if sample is None else len(extension_blocks(n, len(sample)))
    set_total(progress, SEARCH_STEPS * len(settings_of_reducer) + 1 + extension)
    for index, reduce_params in enumerate(settings_of_reducer):
        t = time.perf_counter()
        if reducer.cheap or sample is None:  # fitted on every image; the search reads its sample's rows
            full, info = cached_reduce(features, reducer, reduce_params, device, graph if sample is None else None,
                                       seed, reduce_cache)
            points = full if sample is None else take_rows(full, sample, device.torch_device)
        else:
            points, info = cached_reduce(rows, reducer, reduce_params, device, graph, seed, reduce_cache,
                                         rows=rows_key)
            full = None
        timings["reduce"] += time.perf_counter() - t
        if progress:
            progress(1)
        embedding_graph = embedding_graph_source(points, graph if reducer.identity else None, device)
        t = time.perf_counter()
        settings = clusterer.candidates(cluster_spec.fixed, embedding_graph, found.n_rows, distinct=distinct)
        labelled, state = clusterer.label_candidates(points, settings, device, seed=seed)
        timings["cluster"] += time.perf_counter() - t
        host_points = np.asarray(as_numpy(points), dtype=np.float64) if within else None
        for cluster_params, labels in labelled:
            t = time.perf_counter()
            score, silhouette = validity(points, labels, seed=seed)
            timings["score"] += time.perf_counter() - t
            n_clusters, noise = _summary(labels)
            found.trials.append(Trial(dict(reduce_params), dict(cluster_params), n_clusters, noise, silhouette,
                                      score))
            found.candidates.append(Candidate(index, cluster_params, labels))
            if host_points is not None:
                found.within[len(found.trials) - 1] = within_cluster_distance(host_points, labels)
        found.embeddings.append(Embedding(dict(reduce_params), points, full, info, state, embedding_graph))
        if progress:
            progress(1)
    return found


def _summary(labels: np.ndarray) -> tuple[int, float]:
    clustered = labels >= 0
    return len(np.unique(labels[clustered])), float(1.0 - clustered.mean()) if len(labels) else 1.0


def within_cluster_distance(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean over clusters of the mean distance of members to their centroid (falls as k grows)."""
    per_cluster = [
        float(np.linalg.norm(points[labels == c] - points[labels == c].mean(axis=0), axis=1).mean())
        for c in np.unique(labels[labels >= 0])
    ]
    return float(np.mean(per_cluster)) if per_cluster else 0.0


def effective_k(graph_k: int, reduce_spec: ReduceSpec) -> int:
    """The neighbour count the shared feature graph needs so that every stage can reuse it: the widest the
    reducer's search reads, the widest any registered clusterer's candidates read (with the 'none' reducer the
    feature graph is the embedding's), and the merge step's LINK_NEIGHBOURS + 1."""
    widest = max([reduce_spec.card.search_graph_k(reduce_spec.params), graph_rules.LINK_NEIGHBOURS + 1,
                  *(card.graph_k for card in registry.clusterers().values())])
    return max(graph_k, widest)


def embedding_graph_source(embedding: Any, feature_graph: KnnGraph | None,
                           device: Device) -> Callable[[int], KnnGraph]:
    """k -> kNN graph of the embedding, computed once at the widest k asked (the feature graph when the
    embedding is the features)."""
    cache: dict[str, KnnGraph] = {}

    def graph_for(k: int) -> KnnGraph:
        if feature_graph is not None and k <= feature_graph.k:
            return feature_graph.first(k)
        if "graph" not in cache or cache["graph"].k < k:
            cache["graph"] = knn_graph(embedding, max(k, 21), device)
        return cache["graph"].first(min(k, cache["graph"].k))

    return graph_for


def cached_reduce(features: Any, reducer: ReducerCard, params: Mapping[str, Any], device: Device,
                  graph: KnnGraph | None, seed: int, cache: dict | None, *,
                  rows: tuple[int, int] | None = None) -> tuple[Any, dict[str, Any]]:
    """The reducer card's fit, remembered in ``cache`` (when given) under the reducer's name, parameters, seed
    and the rows it ran on (``rows`` = (n of all images, sample size) for a sample; None for all images)."""
    key = (reducer.name, tuple(sorted(params.items())), seed, rows)
    if cache is not None and key in cache:
        return cache[key]
    result = reducer.reduce(features, dict(params), device, knn=graph, seed=seed)
    if cache is not None:
        cache[key] = result
    return result


def distinct_rows(features: Any, n: int, seed: int) -> int:
    """The number of distinct rows, or a lower bound of MIN_DISTINCT above DISTINCT_PROBE rows: a seeded sample
    of DISTINCT_PROBE rows is looked at first; when that holds fewer than MIN_DISTINCT distinct rows, every row
    is compared with them."""
    probe = rows_on_host(features, draw_sample(n, DISTINCT_PROBE, seed))
    distinct = np.unique(probe, axis=0)
    if len(distinct) >= MIN_DISTINCT or len(probe) == n:
        return len(distinct)
    for start in range(0, n, DISTINCT_BLOCK):
        block = rows_on_host(features, np.arange(start, min(n, start + DISTINCT_BLOCK), dtype=np.int64))
        known = (block[:, None, :] == distinct[None, :, :]).all(axis=2).any(axis=1)
        if not known.all():
            return MIN_DISTINCT  # at least one more distinct row: enough to search
    return len(distinct)
