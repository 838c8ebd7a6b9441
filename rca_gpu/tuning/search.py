"""The search: candidate settings, their labels and scores, the chosen one, and its extension to all images."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from rca_gpu.engine import dispatch as registry
from rca_gpu.engine.cluster.ward import WARD_MAX_POINTS, cluster as run_clusterer
from rca_gpu.engine.device import Device, as_numpy, kind_of, to_kind
from rca_gpu.errors import SpecError
from rca_gpu.engine.knn import KnnGraph, knn_graph, nearest_rows
from rca_gpu.engine.reduce.umap import reduce as run_reducer
from rca_gpu.spec import SELECT_FIX, SELECT_RULES_OF, ClusterSpec, ReduceSpec
from rca_gpu.tuning import criteria, extend, graph as graph_rules
from rca_gpu.tuning.criteria import DEFAULT_CRITERION, Trial, choose, choose_base, choose_max, validity

log = logging.getLogger("rca_gpu")

#: Above this many images the search runs on a seeded sample of this size and the chosen setting is
#: extended to the rest (rca_gpu.tuning.extend); RunSpec.sample_size / --sample-size change it.
SAMPLE_SIZE = 5000

#: UMAP settings tried when the spec leaves them open. DBSCAN's choice was the same on every benchmark with
#: only the two settings of UMAP_GRID_DBSCAN as with all eight (benchmarks/RESULTS.md, selection), so the
#: default pipeline fits two UMAPs; the other clusterers keep the full grid.
UMAP_GRID = {"n_neighbors": (15, 30), "n_components": (2, 10), "min_dist": (0.0, 0.1)}
UMAP_GRID_DBSCAN = {"n_neighbors": (30,), "n_components": (10,), "min_dist": (0.0, 0.1)}
DBSCAN_MIN_SAMPLES = (5, 10, 20)
DBSCAN_EPS_QUANTILES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
HDBSCAN_MIN_CLUSTER_SIZES = (5, 10, 15, 25, 40, 60)
#: K-means / Ward search k only up to n / MIN_MEAN_CLUSTER_SIZE: clusters of a handful of images name no cause.
MIN_MEAN_CLUSTER_SIZE = 5
PCA_VARIANCE = 0.9
PCA_MAX_COMPONENTS = 50
#: Fewest distinct images worth searching; fewer give one cluster of everything (see select).
MIN_DISTINCT = 3
#: The parameter that sets each clusterer's granularity. When the user fixes it, the 'merged' rule neither
#: merges clusters nor attaches noise: the clusterer's own partition at the value set is what runs.
GRANULARITY_PARAMETER = {"kmeans": "k", "ward": "k", "dbscan": "eps", "hdbscan": "min_cluster_size"}


@dataclass
class Selection:
    """The chosen setting, the labels of every image, its embedding, and every trial.

    ``labels`` (n,) int64 (-1 = noise) and ``embedding`` (n, c) cover every input row. When the search ran
    on a sample, ``sample`` describes it (size, how the other images were assigned) and ``extension``
    holds what placing more points needs (see :func:`place_in_umap`).
    """

    reduce_params: dict[str, Any]
    cluster_params: dict[str, Any]
    labels: np.ndarray
    embedding: Any
    reduce_info: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)
    criterion: str = DEFAULT_CRITERION
    seconds: dict[str, float] = field(default_factory=dict)
    merges: list[dict[str, Any]] = field(default_factory=list)
    noise_attached: int = 0
    sample: dict[str, Any] | None = None
    knn: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    #: said on the terminal and in run.json's "warnings": the clustering is not what the search normally gives
    #: (no cluster found; one cluster without a search)
    warning: str = ""
    #: the merge and noise steps of the 'merged' rule ran on the clusterer's labels
    merge_step: bool = False
    #: the merge step changed the clusterer's labels (the resolved pipeline then names select=merged)
    relabelled: bool = False
    extension: "Extension | None" = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion,
            "chosen": {"reduce": self.reduce_params, "cluster": self.cluster_params},
            "merges": self.merges,
            "noise_attached": self.noise_attached,
            "sample": self.sample,
            "note": self.note,
            "n_trials": len(self.trials),
            "trials": [t.to_dict() for t in self.trials],
        }


@dataclass
class Extension:
    """The sample and each other image's nearest sample images in the features (sample-and-extend)."""

    sample: np.ndarray  # (s,) rows of the sample
    rest: np.ndarray  # (n - s,) the other rows
    indices: np.ndarray  # (n - s, k) nearest sample rows (positions within the sample)
    distances: np.ndarray  # (n - s, k)
    graph: KnnGraph  # of the sample


# --------------------------------------------------------------------------------------------------
# Candidate grids
# --------------------------------------------------------------------------------------------------


def reducer_candidates(spec: ReduceSpec, features: Any, *, seed: int = 0,
                       clusterer: str | None = None) -> list[dict[str, Any]]:
    """Settings to try for the reducer: the spec's fixed values, the grid for what it leaves open (UMAP:
    UMAP_GRID_DBSCAN for DBSCAN, UMAP_GRID otherwise; PCA's open n_components: the fewest components that
    explain PCA_VARIANCE)."""
    n = int(features.shape[0])
    if spec.name == "pca" and "n_components" not in spec.params:
        return [{**spec.params, "n_components": pca_components(features, seed=seed)}]
    if spec.name != "umap":
        return [dict(spec.params)]
    grid = UMAP_GRID_DBSCAN if clusterer == "dbscan" else UMAP_GRID
    axes = {key: (spec.params[key],) if key in spec.params else values for key, values in grid.items()}
    out = []
    for combo in itertools.product(*axes.values()):
        params = dict(zip(axes, combo))
        params["n_neighbors"] = max(2, min(params["n_neighbors"], n - 1))
        # what the UMAP adapters can run on n points (values the user set were checked against n before)
        params["n_components"] = max(1, min(params["n_components"], n - 2))
        if params not in out:
            out.append(params)
    return out


def pca_components(features: Any, *, seed: int = 0) -> int:
    """Fewest principal components that explain PCA_VARIANCE of the variance (on a sample), capped."""
    from sklearn.decomposition import PCA

    sample = _rows_on_host(features, extend.draw_sample(int(features.shape[0]), 5000, seed))
    limit = min(PCA_MAX_COMPONENTS, *sample.shape)
    pca = PCA(n_components=limit, random_state=seed).fit(sample)
    total = float(np.var(sample, axis=0, ddof=1).sum())
    cumulative = np.cumsum(pca.explained_variance_) / total if total > 0 else np.ones(limit)
    return int(min(limit, max(2, np.searchsorted(cumulative, PCA_VARIANCE) + 1)))


def _k_range(n: int) -> range:
    """k from 2 to MAX_CLUSTERS_SOFT, keeping at least MIN_MEAN_CLUSTER_SIZE images per cluster on average."""
    return range(2, max(3, min(criteria.MAX_CLUSTERS_SOFT, n // MIN_MEAN_CLUSTER_SIZE) + 1))


def cluster_candidates(spec: ClusterSpec, embedding_graph: Callable[[int], KnnGraph], n: int, *,
                       distinct: int | None = None) -> list[dict[str, Any]]:
    """Settings to try for the clusterer on one embedding of ``n`` images (K-means / Ward: k at most the
    number of ``distinct`` images when given)."""
    fixed = {k: v for k, v in spec.params.items() if k != "select"}
    if spec.name == "dbscan":
        if "eps" in fixed and "min_samples" in fixed:
            return [fixed]
        if "min_samples" in fixed:
            sample_sizes = (fixed["min_samples"],)
        else:  # a set smaller than every default still gets eps from its own distances (n - 1 neighbours)
            sample_sizes = tuple(m for m in DBSCAN_MIN_SAMPLES if m < n) or (max(1, n - 1),)
        out = []
        for min_samples in sample_sizes:
            if min_samples >= n:
                continue
            if "eps" in fixed:
                out.append({"eps": fixed["eps"], "min_samples": min_samples})
                continue
            # eps from the distribution of each point's distance to its min_samples-th neighbour
            _, distances = embedding_graph(min_samples + 1).numpy()
            kth = distances[:, min_samples]
            for q in DBSCAN_EPS_QUANTILES:
                eps = float(np.quantile(kth, q))
                if eps > 0:
                    candidate = {"eps": round(eps, 6), "min_samples": min_samples}
                    if candidate not in out:
                        out.append(candidate)
        # nothing to tune from (tiny or duplicate data): values the user fixed are kept, never replaced
        return out or [{"eps": fixed.get("eps", 0.5), "min_samples": fixed.get("min_samples", max(1, min(5, n - 1)))}]
    if spec.name == "hdbscan":
        if "min_cluster_size" in fixed:
            return [fixed]
        sizes = [s for s in HDBSCAN_MIN_CLUSTER_SIZES if s <= max(2, n // 2)] or [2]
        return [{**fixed, "min_cluster_size": s} for s in sizes]
    if spec.name in ("kmeans", "ward"):
        if "k" in fixed:
            return [fixed]
        return [{**fixed, "k": k} for k in _k_range(n) if k < n and (distinct is None or k <= distinct)]
    raise KeyError(spec.name)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _rows(x: Any, index: np.ndarray, device: Device | None = None) -> Any:
    """Rows ``index`` of ``x``, in x's own array kind (on its device)."""
    kind = kind_of(x)
    if kind == "numpy":
        return x[index]
    torch_device = device.torch_device if device is not None else ("cuda" if "cuda" in str(x.device) else "cpu")
    return x[to_kind(index, kind, torch_device=torch_device)]


def _rows_on_host(x: Any, index: np.ndarray) -> np.ndarray:
    return np.asarray(as_numpy(_rows(x, index)), dtype=np.float32)


def _summary(labels: np.ndarray) -> tuple[int, float]:
    clustered = labels >= 0
    return len(np.unique(labels[clustered])), float(1.0 - clustered.mean()) if len(labels) else 1.0


def embedding_graph_source(embedding: Any, feature_graph: KnnGraph | None,
                           device: Device) -> Callable[[int], KnnGraph]:
    """k -> kNN graph of the embedding, computed once at the widest k asked (the feature graph for 'none')."""
    cache: dict[str, KnnGraph] = {}

    def graph_for(k: int) -> KnnGraph:
        if feature_graph is not None and k <= feature_graph.k:
            return feature_graph.first(k)
        if "graph" not in cache or cache["graph"].k < k:
            cache["graph"] = knn_graph(embedding, max(k, 21), device)
        return cache["graph"].first(min(k, cache["graph"].k))

    return graph_for


def cached_reduce(features, name: str, params: dict[str, Any], device: Device, graph: KnnGraph, seed: int,
                  cache: dict | None, *, rows: tuple[int, int] | None = None):
    """run_reducer, remembered in ``cache`` (when given) under the reducer's name, parameters, seed and the
    rows it ran on (``rows`` = (n of all images, sample size) for a sample; None for all images)."""
    key = (name, tuple(sorted(params.items())), seed, rows)
    if cache is not None and key in cache:
        return cache[key]
    result = run_reducer(features, name, params, device, knn=graph, seed=seed)
    if cache is not None:
        cache[key] = result
    return result


def label_candidates(embedding, cluster_spec: ClusterSpec, embedding_graph: Callable[[int], KnnGraph], n: int,
                     device: Device, seed: int, *,
                     distinct: int | None = None) -> tuple[list[tuple[dict[str, Any], np.ndarray]], Any]:
    """([(params, labels)] for every clusterer candidate on one embedding, the Ward merge tree or None).

    Ward builds one merge tree and cuts it at every k; the tree is returned so that ``select=knee`` can cut
    it again without rebuilding it.
    """
    fixed_select = {k: v for k, v in cluster_spec.params.items() if k == "select"}
    candidates = cluster_candidates(cluster_spec, embedding_graph, n, distinct=distinct)
    if cluster_spec.name == "ward":
        tree = registry.build("cluster", "ward", device, seed=seed, k=2,
                              data={"n_samples": n, "n_features": int(embedding.shape[1])})
        tree.fit_tree(to_kind(embedding, tree.implementation.arrays))
        return [({**params, **fixed_select}, tree.labels_for(params["k"])) for params in candidates], tree
    return [(params, run_clusterer(embedding, cluster_spec.name, params, device, seed=seed))
            for params in candidates], None


def within_cluster_distance(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean over clusters of the mean distance of members to their centroid (falls as k grows)."""
    per_cluster = [
        float(np.linalg.norm(points[labels == c] - points[labels == c].mean(axis=0), axis=1).mean())
        for c in np.unique(labels[labels >= 0])
    ]
    return float(np.mean(per_cluster)) if per_cluster else 0.0


def effective_k(graph_k: int, reduce_spec: ReduceSpec) -> int:
    """The neighbour count the shared feature graph needs so every stage can reuse it."""
    widest = max(UMAP_GRID["n_neighbors"]) if reduce_spec.name == "umap" else 0
    widest = max(widest, int(reduce_spec.params.get("n_neighbors", 0)), max(DBSCAN_MIN_SAMPLES) + 1,
                 graph_rules.LINK_NEIGHBOURS + 1)
    return max(graph_k, widest)


def criterion_of(cluster_spec: ClusterSpec, criterion: str | None = None) -> str:
    """The selection rule: ``criterion`` if given, else the spec's ``select`` parameter, else the default.

    A value is never replaced by another: one outside the clusterer's list
    (:data:`rca_gpu.spec.SELECT_RULES_OF`) is refused.

    Raises
    ------
    SpecError
        Naming the clusterer, its valid rules and the value.
    """
    chosen = criterion or cluster_spec.params.get("select") or DEFAULT_CRITERION
    allowed = SELECT_RULES_OF[cluster_spec.name]
    if chosen not in allowed:
        raise SpecError(f"The 'select' parameter of clusterer '{cluster_spec.name}' must be one of "
                        f"{', '.join(repr(a) for a in allowed)}. Got {chosen!r} instead.{SELECT_FIX}")
    return chosen


# --------------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------------


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
    progress : called with 1 after each reducer setting.
    reduce_cache : a dict kept by the caller that shares embeddings between searches over the same features
        (the study's clusterers on one UMAP embedding).
    criterion : the selection rule ("merged", "finest-peak", "max"; Ward also "knee"); default: the spec's
        ``select`` parameter, else "merged" (see :mod:`rca_gpu.tuning`).
    sample_size : above this many rows the search runs on a seeded sample of this many and the chosen
        setting is extended to the others (:mod:`rca_gpu.tuning.extend`).

    Returns
    -------
    Selection, with ``labels`` (n,) int64 and ``embedding`` (n, c).

    Raises
    ------
    SpecError
        An unknown ``select`` rule, or Ward asked to run on more than ``rca_gpu.engine.cluster.ward.WARD_MAX_POINTS``
        images (raise ``sample_size`` no higher than that).
    """
    rule = criterion_of(cluster_spec, criterion)
    # the merge step runs unless the user fixed the granularity and left the rule at its default
    explicit = criterion is not None or "select" in cluster_spec.params
    merge = rule == "merged" and (explicit or GRANULARITY_PARAMETER.get(cluster_spec.name) not in cluster_spec.params)
    n = int(features.shape[0])
    started_all = time.perf_counter()
    timings = {"knn": 0.0, "reduce": 0.0, "cluster": 0.0, "score": 0.0, "merge": 0.0, "extend": 0.0}
    distinct, _ = _distinct_rows(features, n, seed)
    if distinct < MIN_DISTINCT:
        return _one_cluster(n, distinct)
    _check_k(cluster_spec, distinct, n)
    sample = extend.draw_sample(n, sample_size, seed) if n > sample_size else None
    n_search = n if sample is None else len(sample)
    if cluster_spec.name == "ward" and n_search > WARD_MAX_POINTS:
        raise SpecError(
            f"Ward clustering needs memory and time quadratic in the images it clusters; the search would "
            f"run it on {n_search} images, more than {WARD_MAX_POINTS}. Set --sample-size (the config key "
            f"sample_size) to at most {WARD_MAX_POINTS}, or use kmeans."
        )
    t = time.perf_counter()
    search_x = features if sample is None else _rows(features, sample, device)
    widest = effective_k(2, reduce_spec)
    if graph is None or sample is not None or graph.k < min(widest, n):
        graph = knn_graph(search_x, widest, device)
    search_graph = graph
    timings["knn"] += time.perf_counter() - t
    neighbours = search_graph.numpy()[0][:, 1:graph_rules.LINK_NEIGHBOURS + 1]

    cheap = reduce_spec.name in ("pca", "none")
    rows_key = None if sample is None else (n, len(sample))
    trials: list[Trial] = []
    payloads: list[tuple[int, dict[str, Any], np.ndarray]] = []  # (reducer index, cluster params, labels)
    reduced: list[tuple] = []  # params, search embedding, embedding of all rows, info, Ward tree, its kNN source
    within: dict[int, float] = {}
    for r_index, reduce_params in enumerate(reducer_candidates(reduce_spec, features, seed=seed,
                                                                 clusterer=cluster_spec.name)):
        t = time.perf_counter()
        if cheap or sample is None:  # cheap reducers are fitted on every image, the search reads its sample rows
            full, reduce_info = cached_reduce(features, reduce_spec.name, reduce_params, device,
                                              graph if sample is None else None, seed, reduce_cache)
            embedding = full if sample is None else _rows(full, sample, device)
        else:
            embedding, reduce_info = cached_reduce(search_x, reduce_spec.name, reduce_params, device, search_graph,
                                                   seed, reduce_cache, rows=rows_key)
            full = None
        timings["reduce"] += time.perf_counter() - t
        feature_graph = search_graph if reduce_spec.name == "none" else None
        embedding_graph = embedding_graph_source(embedding, feature_graph, device)
        t = time.perf_counter()
        labelled, tree = label_candidates(embedding, cluster_spec, embedding_graph, n_search, device, seed,
                                          distinct=distinct)
        timings["cluster"] += time.perf_counter() - t
        knee_points = np.asarray(as_numpy(embedding), dtype=np.float64) if rule == "knee" else None
        for cluster_params, labels in labelled:
            t = time.perf_counter()
            score, silhouette = validity(embedding, labels, seed=seed)
            timings["score"] += time.perf_counter() - t
            n_clusters, noise = _summary(labels)
            trials.append(Trial(dict(reduce_params), dict(cluster_params), n_clusters, noise, silhouette, score))
            payloads.append((r_index, cluster_params, labels))
            if rule == "knee":
                within[len(trials) - 1] = within_cluster_distance(knee_points, labels)
        reduced.append((reduce_params, embedding, full, reduce_info, tree, embedding_graph))
        if progress:
            progress(1)

    chosen = {"merged": choose_base, "finest-peak": choose, "max": choose_max, "knee": choose}[rule](trials)
    r_index, cluster_params, raw = payloads[chosen]
    reduce_params, embedding, full, reduce_info, tree, embedding_graph = reduced[r_index]
    if rule == "knee":
        cluster_params, raw = _knee_choice(trials, within, reduce_params, tree)
    for index, trial in enumerate(trials):
        trial.chosen = index == chosen and rule != "knee"

    t = time.perf_counter()
    raw = unite_duplicates(raw, _rows_on_host(search_x, np.arange(n_search, dtype=np.int64)))
    final, merges, attached = raw, [], 0
    if merge:
        final, merges = graph_rules.merge_unseparated(raw, neighbours)
        before = int((final < 0).sum())
        final = graph_rules.attach_noise(final, neighbours)
        attached = before - int((final < 0).sum())
        if merges and cluster_spec.name in ("kmeans", "ward") and "k" not in cluster_spec.params:
            # the merges decided the number of clusters: K-means' / Ward's own partition with that k is used
            # when it agrees with the merged one, so that the resolved pipeline states the k that ran
            same_k = _own_partition(payloads, r_index, final)
            if same_k is not None:
                trials[chosen].chosen = False
                chosen = same_k
                trials[chosen].chosen = True
                _, cluster_params, raw = payloads[chosen]
                final = raw
    no_cluster_note = ""
    if len(final) and not (final >= 0).any():
        if merge:  # no setting found any structure: nothing separates the images, as in a single-cause set
            final = np.zeros_like(final)
            no_cluster_note = (f"no candidate setting found a cluster among the {n_search} images (too few or too "
                               "uniform for the clusterer): one cluster of all of them, as for a single cause")
        else:
            no_cluster_note = (f"every one of the {n_search} images is noise under the rule {rule!r} with these "
                               f"settings; leave {GRANULARITY_PARAMETER[cluster_spec.name]} and select out to get "
                               "one cluster instead")
        log.warning("%s", no_cluster_note)
    ids = np.unique(raw[raw >= 0])
    if merge and _same_partition(final, raw) and np.array_equal(ids, np.arange(len(ids))):
        # only renumbered: the clusterer's own labels (0..m-1) stand
        final = raw
    relabelled = merge and not np.array_equal(final, raw)
    timings["merge"] += time.perf_counter() - t

    selection = Selection(
        dict(reduce_params), dict(cluster_params), final, embedding, reduce_info, trials, criterion=rule,
        merges=merges, noise_attached=attached, knn={**search_graph.describe(), "rows": n_search},
        merge_step=merge, relabelled=relabelled,
    )
    if rule == "merged" and not merge:
        selection.note = (f"{GRANULARITY_PARAMETER[cluster_spec.name]} set in the pipeline: {cluster_spec.name}'s own "
                          "partition, no clusters merged and no noise attached")
    if no_cluster_note:
        selection.note = "; ".join(filter(None, (selection.note, no_cluster_note)))
        selection.warning = no_cluster_note
    if sample is not None:
        t = time.perf_counter()
        _extend(selection, features, sample, search_graph, raw, full, embedding, embedding_graph, reduce_spec.name,
                cluster_spec.name, merge, neighbours, device, seed)
        timings["extend"] += time.perf_counter() - t
    selection.seconds = {k: round(v, 3) for k, v in timings.items()}
    selection.seconds["total"] = round(time.perf_counter() - started_all, 3)
    return selection


def _extend(selection: Selection, features, sample: np.ndarray, search_graph: KnnGraph, raw: np.ndarray, full,
            embedding, embedding_graph, reducer: str, clusterer: str, merge: bool, neighbours: np.ndarray,
            device: Device, seed: int) -> None:
    """Labels and embedding for the rows outside the sample (see rca_gpu.tuning.extend)."""
    n = int(features.shape[0])
    rest = np.setdiff1d(np.arange(n, dtype=np.int64), sample, assume_unique=True)
    k = max(int(selection.reduce_params.get("n_neighbors", 0)), graph_rules.LINK_NEIGHBOURS)
    search_x = _rows(features, sample, device)
    indices, distances = nearest_rows(search_x, _rows(features, rest, device), k, device)
    selection.extension = Extension(sample, rest, indices, distances, search_graph)
    sample_points = np.asarray(as_numpy(embedding), dtype=np.float32)
    if reducer == "umap":
        rest_points = umap_extend(sample_points, indices, distances, selection.reduce_params, seed)
        placed = "umap: placed among its nearest sample images (rca_gpu.tuning.extend.umap_place)"
    else:
        rest_points = np.asarray(as_numpy(_rows(full, rest, device)), dtype=np.float32)
        placed = f"{reducer}: fitted on every image"
    core = None
    if clusterer in ("dbscan", "hdbscan"):
        m = int(selection.cluster_params.get("min_samples") or selection.cluster_params.get("min_cluster_size", 5))
        m = max(1, min(m, len(sample)))
        core = embedding_graph(m).numpy()[1][:, m - 1]
    labels_rest, how = extend.extend_labels(clusterer, selection.cluster_params, sample_points, raw,
                                            selection.labels, rest_points, device, core)
    same = distances[:, 0] == 0.0  # an exact copy of a sample image goes where that image went
    labels_rest[same] = selection.labels[indices[same, 0]]
    attached = 0
    if merge:
        before = int((labels_rest < 0).sum())
        labels_rest = graph_rules.attach_noise(labels_rest, indices[:, :graph_rules.LINK_NEIGHBOURS],
                                               neighbour_labels=selection.labels)
        attached = before - int((labels_rest < 0).sum())
        selection.relabelled = selection.relabelled or attached > 0
    labels = np.full(n, -1, dtype=np.int64)
    labels[sample], labels[rest] = selection.labels, labels_rest
    points = np.empty((n, sample_points.shape[1]), dtype=np.float32)
    points[sample], points[rest] = sample_points, rest_points
    selection.labels, selection.embedding = labels, points
    selection.noise_attached += attached
    selection.sample = {
        "size": int(len(sample)), "of": n, "seed": seed,
        "neighbours": "each other image's nearest sample images in the features (exact)",
        "embedding": placed, "clusters": how + ("; noise joins the cluster of most of its sample neighbours"
                                               if merge else ""),
    }


#: K-means / Ward: the clusterer's own partition with the merged number of clusters replaces the merged
#: partition when the two agree at least this well (adjusted Rand index).
OWN_PARTITION_AGREEMENT = 0.9


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two (n,) int label arrays (-1 = noise) group the points alike, whatever the cluster ids."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or not np.array_equal(a < 0, b < 0):
        return False
    pairs = np.unique(np.stack([a[a >= 0], b[b >= 0]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[a >= 0])) == len(np.unique(b[b >= 0]))


def _own_partition(payloads: list[tuple[int, dict[str, Any], np.ndarray]], r_index: int,
                   merged: np.ndarray) -> int | None:
    """Index of the trial on the same embedding whose k equals the merged number of clusters and whose labels
    agree with the merged partition (OWN_PARTITION_AGREEMENT), or None."""
    from sklearn.metrics import adjusted_rand_score

    m = len(np.unique(merged[merged >= 0]))
    for index, (r, params, labels) in enumerate(payloads):
        if r == r_index and params.get("k") == m:
            if adjusted_rand_score(merged, labels) >= OWN_PARTITION_AGREEMENT:
                return index
    return None


def umap_extend(sample_points: np.ndarray, indices: np.ndarray, distances: np.ndarray, params: dict[str, Any],
                seed: int) -> np.ndarray:
    """Positions of new points in a UMAP embedding of the sample (rca_gpu.tuning.extend.umap_place)."""
    return extend.umap_place(sample_points, indices, distances, n_neighbors=int(params.get("n_neighbors", 15)),
                             min_dist=float(params.get("min_dist", 0.1)), seed=seed)


def place_in_umap(selection: Selection, features, params: dict[str, Any], device: Device, seed: int,
                  reduce_cache: dict | None = None) -> np.ndarray:
    """A UMAP embedding (``params``) of every row: fitted on the selection's sample and extended when the
    search ran on a sample, else fitted on all rows with the selection's kNN graph."""
    ext = selection.extension
    if ext is None:
        raise ValueError("place_in_umap needs a selection that ran on a sample")
    search_x = _rows(features, ext.sample, device)
    embedding, _ = cached_reduce(search_x, "umap", params, device, ext.graph, seed, reduce_cache,
                                 rows=(int(features.shape[0]), len(ext.sample)))
    sample_points = np.asarray(as_numpy(embedding), dtype=np.float32)
    out = np.empty((int(features.shape[0]), sample_points.shape[1]), dtype=np.float32)
    out[ext.sample] = sample_points
    out[ext.rest] = umap_extend(sample_points, ext.indices, ext.distances, params, seed)
    return out


def _distinct_rows(features, n: int, seed: int) -> tuple[int, np.ndarray | None]:
    """(number of distinct rows, or a lower bound above 20,000 rows; the distinct rows when fewer than
    MIN_DISTINCT). Above 20,000 rows a seeded sample of 20,000 is looked at first; when that holds fewer
    than MIN_DISTINCT distinct rows, every row is compared with them."""
    probe = _rows_on_host(features, extend.draw_sample(n, 20_000, seed))
    distinct = np.unique(probe, axis=0)
    if len(distinct) >= MIN_DISTINCT or len(probe) == n:
        return len(distinct), distinct
    for start in range(0, n, 50_000):
        block = _rows_on_host(features, np.arange(start, min(n, start + 50_000), dtype=np.int64))
        known = (block[:, None, :] == distinct[None, :, :]).all(axis=2).any(axis=1)
        if not known.all():
            return MIN_DISTINCT, None  # at least one more distinct row: enough to search
    return len(distinct), distinct


def _one_cluster(n: int, distinct: int) -> Selection:
    """One cluster of every image: what a set of fewer than MIN_DISTINCT distinct feature vectors gets."""
    note = (f"the {n} images hold {distinct} distinct feature vector(s), fewer than {MIN_DISTINCT}: one "
            "cluster of all of them, nothing searched")
    log.warning("%s", note)
    return Selection({}, {}, np.zeros(n, dtype=np.int64), np.zeros((n, 2), dtype=np.float32),
                     {"algorithm": "none", "note": note}, [], criterion="none", note=note, warning=note)


def _check_k(cluster_spec: ClusterSpec, distinct: int, n: int) -> None:
    """A fixed k larger than the number of distinct images cannot be honoured."""
    k = cluster_spec.params.get("k")
    if cluster_spec.name in ("kmeans", "ward") and k is not None and k > distinct:
        raise SpecError(
            f"The 'k' parameter of {cluster_spec.name} asks for {k} clusters, but the {n} images hold only "
            f"{distinct} distinct feature vectors. Set k to at most {distinct}, or leave k out to choose it."
        )


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


def _knee_choice(trials: list[Trial], within_distance: dict[int, float], reduce_params: dict[str, Any],
                 tree) -> tuple[dict[str, Any], np.ndarray]:
    """Ward with select=knee: k at the knee of the within-cluster distance curve (kneed), on the embedding of
    the best candidate, cut from the merge tree already built for it."""
    from kneed import KneeLocator

    indices = [i for i, t in enumerate(trials) if t.reduce == reduce_params]
    ks = [trials[i].cluster["k"] for i in indices]
    curve = [within_distance[i] for i in indices]
    knee = KneeLocator(ks, curve, curve="convex", direction="decreasing").knee if len(ks) >= 3 else None
    k = int(knee) if knee is not None else ks[int(np.argmin(curve))]
    for i, value in zip(indices, curve):
        trials[i].cluster["within_cluster_distance"] = round(value, 6)
    return {"k": k, "select": "knee"}, tree.labels_for(k)
