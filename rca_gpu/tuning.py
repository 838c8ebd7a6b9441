"""Automatic hyper-parameter selection for the parameters a pipeline spec leaves open.

For every candidate (reducer setting x clusterer setting) the labels are scored by one internal validity
criterion whose cost does not grow with the number of images:

    score = silhouette(sample) * (1 - noise_share) - fragmentation penalty

- silhouette is computed on a fixed-size random sample (SAMPLE_SIZE) of the clustered (non-noise) images,
  in the space the clusterer saw (the embedding). A sample makes it O(1) in n instead of O(n^2).
- (1 - noise_share) stops density clusterers from "winning" by declaring most images noise.
- the fragmentation penalty (FRAGMENT_PENALTY per cluster beyond MAX_CLUSTERS_SOFT) keeps the search from
  returning dozens of tiny clusters that nobody can inspect.
Candidates with fewer than two clusters score -1.

The choice is not simply the top score. Silhouette favours coarse partitions: when two root causes look
alike next to the others it rates the partition that merges them highest (on the benchmarks it often
prefers k = 2). For the person reading the clusters a merge costs much more than a split: two causes in one
cluster cannot be named, one cause in two clusters is seen side by side. The score, as a function of the
number of clusters, peaks at each natural granularity of the data; the search takes the finest peak that
scores at least BAND (70 %) of the best score (see :func:`choose`). A clean structure with one sharp peak
keeps that peak; structure at several scales gives the finer one. benchmarks/RESULTS.md compares this rule
with the plain maximum on both ground-truth benchmarks.

Candidates across UMAP settings (embeddings of different dimension) are compared by the same score
computed in their own embedding. Ward can instead pick k at the knee of its within-cluster-distance curve
(HUDD's rule, via kneed): ``ward(select=knee)``.

Everything tried, and what was chosen, is returned for run.json.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from rca_gpu import registry
from rca_gpu.cluster import cluster as run_clusterer
from rca_gpu.device import Device, as_numpy, to_kind
from rca_gpu.neighbors import KnnGraph, knn_graph
from rca_gpu.reduce import reduce as run_reducer
from rca_gpu.spec import ClusterSpec, ReduceSpec

SAMPLE_SIZE = 2000
MAX_CLUSTERS_SOFT = 30
FRAGMENT_PENALTY = 0.01
#: Peaks of the score scoring at least BAND x the best score compete; the finest of them is chosen.
BAND = 0.7

UMAP_GRID = {"n_neighbors": (15, 30), "n_components": (2, 10), "min_dist": (0.0, 0.1)}
DBSCAN_MIN_SAMPLES = (5, 10, 20)
DBSCAN_EPS_QUANTILES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
HDBSCAN_MIN_CLUSTER_SIZES = (5, 10, 15, 25, 40, 60)
#: K-means / Ward search k only up to n / MIN_MEAN_CLUSTER_SIZE: clusters of a handful of images name no cause.
MIN_MEAN_CLUSTER_SIZE = 5
PCA_VARIANCE = 0.9
PCA_MAX_COMPONENTS = 50


@dataclass
class Trial:
    reduce: dict[str, Any]
    cluster: dict[str, Any]
    n_clusters: int
    noise_share: float
    silhouette: float | None
    score: float
    chosen: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "reduce": self.reduce,
            "cluster": self.cluster,
            "n_clusters": self.n_clusters,
            "noise_share": round(self.noise_share, 4),
            "silhouette": None if self.silhouette is None else round(self.silhouette, 4),
            "score": round(self.score, 4),
        }


@dataclass
class Selection:
    """The chosen setting, its labels and embedding, and every trial."""

    reduce_params: dict[str, Any]
    cluster_params: dict[str, Any]
    labels: np.ndarray
    embedding: Any
    reduce_info: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)
    criterion: str = "silhouette"
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion,
            "chosen": {"reduce": self.reduce_params, "cluster": self.cluster_params},
            "n_trials": len(self.trials),
            "trials": [t.to_dict() for t in self.trials],
        }


# --------------------------------------------------------------------------------------------------
# The criterion
# --------------------------------------------------------------------------------------------------


def validity(points: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> tuple[float, float | None]:
    """(score, silhouette) of ``labels`` on ``points`` (host arrays). See the module docstring."""
    from sklearn.metrics import silhouette_score

    n = len(labels)
    clustered = np.flatnonzero(labels >= 0)
    n_clusters = len(np.unique(labels[clustered]))
    noise_share = 1.0 - len(clustered) / n if n else 1.0
    if n_clusters < 2 or len(clustered) <= n_clusters:
        return -1.0, None
    rng = np.random.default_rng(seed)
    sample = clustered if len(clustered) <= SAMPLE_SIZE else rng.choice(clustered, SAMPLE_SIZE, replace=False)
    sample_labels = labels[sample]
    if len(np.unique(sample_labels)) < 2:
        return -1.0, None
    silhouette = float(silhouette_score(points[sample], sample_labels))
    penalty = FRAGMENT_PENALTY * max(0, n_clusters - MAX_CLUSTERS_SOFT)
    return silhouette * (1.0 - noise_share) - penalty, silhouette


def _summary(labels: np.ndarray) -> tuple[int, float]:
    clustered = labels >= 0
    return len(np.unique(labels[clustered])), float(1.0 - clustered.mean()) if len(labels) else 1.0


# --------------------------------------------------------------------------------------------------
# Candidate grids
# --------------------------------------------------------------------------------------------------


def reducer_candidates(spec: ReduceSpec, features: Any, *, seed: int = 0) -> list[dict[str, Any]]:
    """Settings to try for the reducer: the spec's fixed values, the grid for what it leaves open (PCA's
    open n_components: the fewest components that explain PCA_VARIANCE)."""
    n = int(features.shape[0])
    if spec.name == "pca" and "n_components" not in spec.params:
        return [{**spec.params, "n_components": pca_components(features, seed=seed)}]
    if spec.name != "umap":
        return [dict(spec.params)]
    axes = {
        key: (spec.params[key],) if key in spec.params else values for key, values in UMAP_GRID.items()
    }
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

    sample = _host_sample(features, 5000, seed)
    limit = min(PCA_MAX_COMPONENTS, *sample.shape)
    pca = PCA(n_components=limit, random_state=seed).fit(sample)
    total = float(np.var(sample, axis=0, ddof=1).sum())
    cumulative = np.cumsum(pca.explained_variance_) / total if total > 0 else np.ones(limit)
    return int(min(limit, max(2, np.searchsorted(cumulative, PCA_VARIANCE) + 1)))


def _k_range(n: int) -> range:
    """k from 2 to MAX_CLUSTERS_SOFT, keeping at least MIN_MEAN_CLUSTER_SIZE images per cluster on average."""
    return range(2, max(3, min(MAX_CLUSTERS_SOFT, n // MIN_MEAN_CLUSTER_SIZE) + 1))


def cluster_candidates(spec: ClusterSpec, embedding_graph: Callable[[int], KnnGraph], n: int) -> list[dict[str, Any]]:
    """Settings to try for the clusterer on one embedding."""
    fixed = dict(spec.params)
    if spec.name == "dbscan":
        if "eps" in fixed and "min_samples" in fixed:
            return [fixed]
        sample_sizes = (fixed["min_samples"],) if "min_samples" in fixed else DBSCAN_MIN_SAMPLES
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
                    out.append({"eps": round(eps, 6), "min_samples": min_samples})
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
        return [{**fixed, "k": k} for k in _k_range(n) if k < n]
    raise KeyError(spec.name)


# --------------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------------


def _host_sample(x: Any, size: int, seed: int) -> np.ndarray:
    n = int(x.shape[0])
    if n <= size:
        return np.asarray(as_numpy(x), dtype=np.float32)
    index = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    return np.asarray(as_numpy(x[index]), dtype=np.float32)


def select(
    features: Any,
    graph: KnnGraph,
    reduce_spec: ReduceSpec,
    cluster_spec: ClusterSpec,
    device: Device,
    *,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    reduce_cache: dict | None = None,
) -> Selection:
    """Search the open hyper-parameters; return the best setting by the validity criterion.

    ``reduce_cache`` (a dict kept by the caller) shares embeddings between searches over the same
    features, e.g. the study's clusterers on one UMAP embedding.
    """
    n = int(features.shape[0])
    timings = {"reduce": 0.0, "cluster": 0.0, "score": 0.0}
    fixed = cluster_spec.params
    knee = cluster_spec.name == "ward" and fixed.get("select") == "knee" and "k" not in fixed
    trials: list[Trial] = []
    # trial index -> (reduce_params, cluster_params, labels, embedding, info, Ward tree when knee else None)
    kept: dict[int, tuple] = {}
    within_distance: dict[int, float] = {}  # trial index -> within-cluster distance (Ward with select=knee)
    best_score = -np.inf
    for reduce_params in reducer_candidates(reduce_spec, features, seed=seed):
        started = time.perf_counter()
        embedding, reduce_info = cached_reduce(features, reduce_spec.name, reduce_params, device, graph, seed,
                                               reduce_cache)
        timings["reduce"] += time.perf_counter() - started
        host_points = np.asarray(as_numpy(embedding), dtype=np.float32)
        knee_points = np.asarray(as_numpy(embedding), dtype=np.float64) if knee else None
        feature_graph = graph if reduce_spec.name == "none" else None
        embedding_graph = embedding_graph_source(embedding, feature_graph, device)
        started = time.perf_counter()
        labels_by_params, tree = label_candidates(embedding, cluster_spec, embedding_graph, n, device, seed)
        timings["cluster"] += time.perf_counter() - started
        for cluster_params, labels in labels_by_params:
            started = time.perf_counter()
            score, silhouette = validity(host_points, labels, seed=seed)
            timings["score"] += time.perf_counter() - started
            n_clusters, noise = _summary(labels)
            trials.append(Trial(dict(reduce_params), dict(cluster_params), n_clusters, noise, silhouette, score))
            if knee:
                within_distance[len(trials) - 1] = within_cluster_distance(knee_points, labels)
            best_score = max(best_score, score)
            if score >= _band_floor(best_score):
                kept[len(trials) - 1] = (reduce_params, cluster_params, labels, embedding, reduce_info,
                                          tree if knee else None)
            # forget candidates that fell out of the band, so memory stays bounded on large sets
            kept = {i: v for i, v in kept.items() if trials[i].score >= _band_floor(best_score)}
        if progress:
            progress(1)
    chosen = choose(trials)
    payload = kept[chosen][:5]
    if knee:
        payload = _knee_choice(trials, within_distance, kept[chosen])
    reduce_params, cluster_params, labels, embedding, reduce_info = payload
    for index, trial in enumerate(trials):
        trial.chosen = index == chosen and cluster_spec.params.get("select") != "knee"
    return Selection(
        dict(reduce_params), dict(cluster_params), labels, embedding, reduce_info, trials,
        criterion="knee" if cluster_spec.params.get("select") == "knee" else "finest-peak",
        seconds={k: round(v, 3) for k, v in timings.items()},
    )


def _band_floor(best_score: float) -> float:
    """Lowest score still in the band around the best one (only the best itself when nothing is valid)."""
    return BAND * best_score if best_score > 0 else best_score


def choose(trials: list[Trial]) -> int:
    """Index of the chosen trial: the finest peak of the score within BAND of the best score.

    The envelope is the best score for each number of clusters (at most MAX_CLUSTERS_SOFT). A peak is a
    cluster count whose envelope value is at least that of the nearest counts tried below and above it.
    Of the peaks scoring at least BAND x the best score, the one with the most clusters wins, and within
    it the trial with the highest score (the earliest on ties).
    """
    best_score = max(t.score for t in trials)
    floor = _band_floor(best_score)
    envelope: dict[int, float] = {}
    for t in trials:
        if t.n_clusters <= MAX_CLUSTERS_SOFT and t.score > -1.0:
            envelope[t.n_clusters] = max(envelope.get(t.n_clusters, -np.inf), t.score)
    counts = sorted(envelope)
    peaks = [
        k for i, k in enumerate(counts)
        if envelope[k] >= floor
        and (i == 0 or envelope[k] >= envelope[counts[i - 1]])
        and (i == len(counts) - 1 or envelope[k] >= envelope[counts[i + 1]])
    ]
    if not peaks:
        return max(range(len(trials)), key=lambda i: (trials[i].score, -i))
    k = max(peaks)
    return max((i for i, t in enumerate(trials) if t.n_clusters == k), key=lambda i: (trials[i].score, -i))


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
                  cache: dict | None):
    """run_reducer, remembered in ``cache`` (when given) under the reducer's name and parameters."""
    key = (name, tuple(sorted(params.items())), seed)
    if cache is not None and key in cache:
        return cache[key]
    result = run_reducer(features, name, params, device, knn=graph, seed=seed)
    if cache is not None:
        cache[key] = result
    return result


def label_candidates(embedding, cluster_spec: ClusterSpec, embedding_graph: Callable[[int], KnnGraph], n: int,
                     device: Device, seed: int) -> tuple[list[tuple[dict[str, Any], np.ndarray]], Any]:
    """([(params, labels)] for every clusterer candidate on one embedding, the Ward merge tree or None).

    Ward builds one merge tree and cuts it at every k; the tree is returned so that ``select=knee`` can cut
    it again without rebuilding it.
    """
    fixed_select = {k: v for k, v in cluster_spec.params.items() if k == "select"}
    candidates = cluster_candidates(cluster_spec, embedding_graph, n)
    if cluster_spec.name == "ward":
        tree = registry.build("cluster", "ward", device, seed=seed, k=2)
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


def _knee_choice(trials: list[Trial], within_distance: dict[int, float], best_payload: tuple) -> tuple:
    """Ward with select=knee: k at the knee of the within-cluster distance curve (kneed), on the embedding of
    the best candidate, cut from the merge tree already built for it."""
    from kneed import KneeLocator

    reduce_params, _, _, embedding, reduce_info, tree = best_payload
    indices = [i for i, t in enumerate(trials) if t.reduce == reduce_params]
    ks = [trials[i].cluster["k"] for i in indices]
    curve = [within_distance[i] for i in indices]
    knee = KneeLocator(ks, curve, curve="convex", direction="decreasing").knee if len(ks) >= 3 else None
    k = int(knee) if knee is not None else ks[int(np.argmin(curve))]
    for i, value in zip(indices, curve):
        trials[i].cluster["within_cluster_distance"] = round(value, 6)
    return reduce_params, {"k": k, "select": "knee"}, tree.labels_for(k), embedding, reduce_info


def effective_k(graph_k: int, reduce_spec: ReduceSpec) -> int:
    """The neighbour count the shared feature graph needs so every stage can reuse it."""
    widest = max(UMAP_GRID["n_neighbors"]) if reduce_spec.name == "umap" else 0
    widest = max(widest, int(reduce_spec.params.get("n_neighbors", 0)), max(DBSCAN_MIN_SAMPLES) + 1)
    return max(graph_k, widest)


