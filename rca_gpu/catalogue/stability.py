"""Cluster stability by subsampling: Hennig's clusterboot with the run's chosen setting.

For each of B resamples, a seeded 80 % subset of the images is clustered again with the setting the run
chose (the same reducer and clusterer parameters, on the same features). Each cluster of the run, restricted
to the subset, is matched to the most similar cluster of the resample by the Jaccard index; its stability is
the mean of these best-match Jaccard values over the resamples (Hennig 2007, "Cluster-wise assessment of
cluster stability", Computational Statistics & Data Analysis 52; the ``fpc::clusterboot`` method with
subsetting). A cluster that dissolves into noise in a resample scores 0 there. Hennig reads >= 0.75 as
stable and <= 0.6 as dissolving; clusters below :data:`UNSTABLE_BELOW` are flagged.

What is shared with the run: the features, the feature kNN graph (a subset's graph is the run's graph with
the neighbours outside the subset removed; only rows left with too few neighbours are searched again), the
seed and, by default, the chosen embedding. Runs that searched on a sample draw their resamples from that
sample (:func:`search_sample_of`: its rows were fitted, not placed) and reuse its kNN graph; other runs above
:data:`MAX_IMAGES` images draw them from a seeded uniform sample of that size, so the cost stays bounded.

How a resample is clustered again (``method``, :data:`METHODS`; a run uses :data:`DEFAULT_METHOD`):

- ``embedding`` (default): the resample's rows of the chosen embedding are clustered again with the run's
  setting, then merged as the run's were; a reducer that is cheap (PCA, "none") is fitted again. The reducer
  that is not cheap (UMAP) is not refitted, so the stability measures the clusterer and merge steps on the
  run's own embedding;
- ``refit``: Hennig's method as written: the reducer is fitted again on every resample (from scratch);
- ``warm``: UMAP started from the run's positions of the resample's images, WARM_EPOCHS epochs.

Measured against ``refit`` (benchmarks/stability_agreement.py, B = 10, RESULTS.md "Stability: cheaper
resamples"): on mnist-rc (1,500 failures, 10 clusters) ``embedding`` flagged the same 2 clusters unstable as
``refit`` (Pearson 0.90, Spearman 0.94 of per-cluster stability; two ``refit`` runs with different seeds
agree at 0.99) at 1/80 of the cost; it reads clusters in the 0.6-0.75 band higher (0.83-0.89), because
UMAP's own variation is left out. ``warm`` correlated better (0.99 at 30 and 100 epochs) but read every
cluster that is not fully stable lower, flagging 5 and 3 clusters instead of 2, and cost 0.2-0.3x ``refit``.

How the run's setting carries over to a resample is each algorithm card's ``transfer``
(:mod:`rca_gpu.engine.cards`): UMAP / PCA settings, K-means and Ward ``k`` and HDBSCAN sizes unchanged;
DBSCAN's ``eps``, a distance whose meaning depends on the density of the points, as a quantile of each
resample's own neighbour distances (:mod:`rca_gpu.engine.cluster.dbscan`).

The number of resamples defaults to the number of fits of the expensive stage during the run's search (the
reducer's fits when it is not cheap, as UMAP, clusterer fits otherwise), within [MIN_RESAMPLES, MAX_RESAMPLES]
(10 to 20; clusterboot's authors use dozens, 2 was too thin to read). The count depends only on the spec, not
on the machine, so runs reproduce.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu.runfiles import SUMMARY_FILE  # noqa: F401 - the stability file (one row per cluster), named there

#: Share of the images in each resample (Hennig's subsetting scheme).
FRACTION = 0.8
#: Clusters with a mean best-match Jaccard below this are flagged as unstable (Hennig: <= 0.6 dissolving).
UNSTABLE_BELOW = 0.6
MIN_RESAMPLES = 10
MAX_RESAMPLES = 20
#: Above this many images, resamples are drawn from a seeded uniform sample of this size.
MAX_IMAGES = 10_000
#: How a resample is clustered again (see :func:`run_stability`), and what a run uses.
METHODS = ("refit", "warm", "embedding")
DEFAULT_METHOD = "embedding"
#: Epochs of UMAP's layout optimisation in a warm-started resample (umap-learn runs 500 from a spectral
#: start on up to 10,000 images, 200 above).
WARM_EPOCHS = 30


@dataclass
class Stability:
    """Per-cluster stability of one clustering.

    Attributes
    ----------
    table:
        One row per cluster (noise excluded): ``cluster`` (int), ``size`` (images in the run), ``stability``
        (mean best-match Jaccard in [0, 1]; NaN when no resample held a member), ``unstable`` (bool,
        stability < UNSTABLE_BELOW), ``resamples`` (resamples that held at least one member).
    jaccard:
        (B, n_clusters) float64 best-match Jaccard per resample and cluster (NaN where undefined).
    info:
        Settings and timing for run.json.
    """

    table: pd.DataFrame
    jaccard: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def of(self, cluster: int) -> float:
        row = self.table.loc[self.table["cluster"] == cluster, "stability"]
        return float(row.iloc[0]) if len(row) else float("nan")


def best_match_jaccard(reference: np.ndarray, resample: np.ndarray, n_clusters: int) -> np.ndarray:
    """Best-match Jaccard of each reference cluster against the clusters of one resample.

    Parameters
    ----------
    reference:
        (m,) int labels of the resampled images in the original clustering, -1 = noise.
    resample:
        (m,) int labels of the same images in the resample's clustering, -1 = noise.
    n_clusters:
        Number of reference clusters (labels 0 .. n_clusters - 1).

    Returns
    -------
    (n_clusters,) float64: for cluster c, max over resample clusters c' of |c ∩ c'| / |c ∪ c'|; 0 when c has
    members but the resample found no cluster overlapping them; NaN when no member of c is in the resample.
    """
    reference = np.asarray(reference, dtype=np.int64)
    resample = np.asarray(resample, dtype=np.int64)
    ref_sizes = np.bincount(reference[reference >= 0], minlength=n_clusters)[:n_clusters].astype(np.float64)
    out = np.where(ref_sizes > 0, 0.0, np.nan)
    new_ids, new_inverse = np.unique(resample[resample >= 0], return_inverse=True)
    if new_ids.size == 0:
        return out
    new_codes = np.full(len(resample), -1, dtype=np.int64)
    new_codes[resample >= 0] = new_inverse
    new_sizes = np.bincount(new_inverse, minlength=len(new_ids)).astype(np.float64)
    both = (reference >= 0) & (new_codes >= 0)
    inter = np.zeros((n_clusters, len(new_ids)))
    np.add.at(inter, (reference[both], new_codes[both]), 1.0)
    union = ref_sizes[:, None] + new_sizes[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        jaccard = np.where(union > 0, inter / union, 0.0)
    best = jaccard.max(axis=1)
    return np.where(ref_sizes > 0, best, np.nan)


def clusterboot(
    reference: np.ndarray,
    recluster: Callable[[np.ndarray], np.ndarray],
    *,
    resamples: int,
    fraction: float = FRACTION,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Stability:
    """Hennig's clusterboot by subsetting: the stability of each cluster of ``reference``.

    Parameters
    ----------
    reference:
        (n,) int labels of the clustering to assess, -1 = noise, clusters numbered 0 .. K-1.
    recluster:
        Maps a sorted (m,) int64 array of row indices to (m,) int labels of those rows clustered again with
        the same method (-1 = noise).
    resamples:
        B >= 1, the number of subsets.
    fraction:
        Share of the rows in each subset, in (0, 1].
    seed:
        Seeds the subsets (resample b uses ``numpy.random.default_rng([seed, b])``).
    progress:
        Called with 1 after each resample.

    Raises
    ------
    ValueError
        ``resamples`` < 1 or ``fraction`` outside (0, 1].
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    reference = np.asarray(reference, dtype=np.int64)
    n = len(reference)
    n_clusters = int(reference.max()) + 1 if n and reference.max() >= 0 else 0
    m = max(2, int(round(fraction * n)))
    jaccard = np.full((resamples, n_clusters), np.nan)
    for b in range(resamples):
        subset = np.sort(np.random.default_rng([seed, b]).choice(n, min(m, n), replace=False))
        labels = np.asarray(recluster(subset), dtype=np.int64)
        jaccard[b] = best_match_jaccard(reference[subset], labels, n_clusters)
        if progress is not None:
            progress(1)
    return Stability(_table(reference, jaccard), jaccard)


def _table(reference: np.ndarray, jaccard: np.ndarray) -> pd.DataFrame:
    n_clusters = jaccard.shape[1]
    sizes = np.bincount(reference[reference >= 0], minlength=n_clusters)[:n_clusters]
    defined = np.isfinite(jaccard)
    counts = defined.sum(axis=0)
    with np.errstate(invalid="ignore"):
        mean = np.where(counts > 0, np.nansum(jaccard, axis=0) / np.maximum(counts, 1), np.nan)
    return pd.DataFrame({
        "cluster": np.arange(n_clusters, dtype=np.int64),
        "size": sizes.astype(np.int64),
        "stability": mean.astype(np.float64),
        "unstable": np.isfinite(mean) & (mean < UNSTABLE_BELOW),
        "resamples": counts.astype(np.int64),
    })


def search_sample_of(selection: Any) -> tuple[np.ndarray, Any] | None:
    """(rows of the search's sample, its kNN graph) of a selection that searched on a sample, else None: the
    resamples of :func:`run_stability` are drawn from those rows and reuse that graph."""
    extension = getattr(selection, "extension", None)
    return None if extension is None else (extension.sample, extension.graph)


def default_resamples(reduce_name: str, trials: list[Any] | None) -> int:
    """B for a run whose search made ``trials`` (the tuning trials, each with a ``reduce`` dict).

    One resample refits the reducer and the clusterer once; the run fitted the reducer once per distinct
    reducer setting and the clusterer once per trial. B is the count of the stage that dominates the cost
    (the reducer's fits when it is not cheap, as UMAP; clusterer fits otherwise), clipped to
    [MIN_RESAMPLES, MAX_RESAMPLES].
    """
    from rca_gpu.engine.registry import reducer_card

    trials = list(trials or [])
    if not reducer_card(reduce_name).cheap:
        fits = len({repr(sorted(dict(getattr(t, "reduce", {}) or {}).items())) for t in trials})
    else:
        fits = len(trials)
    return int(min(MAX_RESAMPLES, max(MIN_RESAMPLES, fits)))


# --------------------------------------------------------------------------------------------------
# The run's setting, re-applied to a subset
# --------------------------------------------------------------------------------------------------


def subset_graph(graph, subset: np.ndarray, k: int, x_subset, device):
    """The k-nearest-neighbour graph of the rows ``subset`` taken from the full graph ``graph``.

    Each row keeps its neighbours that lie in the subset (renumbered, in order). Rows left with fewer than
    ``k`` of them are searched again exactly among the subset rows (``x_subset``). Returns a
    :class:`rca_gpu.engine.knn.KnnGraph` with host arrays, point itself first.
    """
    from rca_gpu.engine.knn import KnnGraph, knn_graph

    indices, distances = graph.numpy()
    n_full = indices.shape[0]
    k = min(k, len(subset))
    position = np.full(n_full, -1, dtype=np.int64)
    position[subset] = np.arange(len(subset))
    mapped = position[indices[subset]]
    inside = mapped >= 0
    # stable sort puts the kept neighbours first, in their original (distance) order
    order = np.argsort(~inside, axis=1, kind="stable")[:, :k]
    out_i = np.take_along_axis(mapped, order, axis=1)
    out_d = np.take_along_axis(distances[subset], order, axis=1)
    short = np.flatnonzero(inside.sum(axis=1) < k)
    if short.size:
        if short.size > len(subset) // 4:  # cheaper to search the whole subset at once
            return knn_graph(x_subset, k, device)
        fill_i, fill_d = _exact_rows(x_subset, short, k, getattr(device, "torch_device", "cpu"))
        out_i[short], out_d[short] = fill_i, fill_d
    return KnnGraph(out_i, out_d.astype(np.float32), f"{graph.backend}-subset")


def _exact_rows(x, rows: np.ndarray, k: int, torch_device: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``x`` (torch tensor or array) for the rows ``rows``, self first."""
    import torch

    from rca_gpu.engine.device import as_numpy, as_torch

    points = as_torch(x, torch_device).float()
    index = as_torch(rows, torch_device).long()
    d = torch.cdist(points[index], points)
    d[torch.arange(len(rows), device=points.device), index] = -1.0
    values, idx = torch.topk(d, k, dim=1, largest=False)
    values = values.clamp_min(0.0)
    return as_numpy(idx).astype(np.int64), as_numpy(values).astype(np.float32)


def run_stability(
    features,
    graph,
    labels: np.ndarray,
    *,
    reduce_name: str,
    reduce_params: dict[str, Any],
    cluster_name: str,
    cluster_params: dict[str, Any],
    chosen_embedding,
    device,
    seed: int = 0,
    resamples: int | None = None,
    trials: list[Any] | None = None,
    fraction: float = FRACTION,
    max_images: int = MAX_IMAGES,
    progress: Callable[[int], None] | None = None,
    merge_step: bool = False,
    method: str = "refit",
    search_sample: tuple[np.ndarray, Any] | None = None,
    warm_epochs: int = 0,
) -> Stability:
    """Stability of the run's clusters, re-clustering subsets with the run's chosen setting.

    Parameters
    ----------
    features:
        (n, d) float features the run clustered (torch tensor on the run's device, or an array).
    graph:
        The run's feature kNN graph (:class:`rca_gpu.engine.knn.KnnGraph`, n rows, self first), or None (runs
        above the search's sample size keep no graph of all images): a graph of the stability sample is built.
    labels:
        (n,) int64 final labels of the run (-1 noise), aligned with ``features``.
    reduce_name, reduce_params, cluster_name, cluster_params:
        The chosen setting (``Selection.reduce_params`` / ``cluster_params``).
    chosen_embedding:
        (n, k) the embedding the clusterer saw (used to carry DBSCAN's eps over as a quantile).
    resamples:
        B; None picks :func:`default_resamples` from ``trials``.
    progress:
        Called with 1 after each resample.
    merge_step:
        The run's labels went through the merge and noise steps of the ``merged`` rule
        (rca_gpu.tuning.graph); each resample's labels then do too, with the resample's feature neighbours.
    method:
        How a resample is clustered again (:data:`METHODS`): "refit" fits the reducer on the resample from
        scratch; "warm" starts a reducer that is not cheap (UMAP) from the run's positions of the resample's
        images and runs ``warm_epochs`` epochs; "embedding" re-clusters the resample's rows of the chosen
        embedding without fitting the reducer again.
    search_sample:
        (rows (s,) int64 of the search's sample, its kNN graph) of a run that searched on a sample: the
        resamples are drawn from these rows, whose embedding was fitted (not placed), and reuse that graph.

    Returns
    -------
    Stability, with ``info`` holding B, the fraction, the sample size, the seed and the seconds spent.
    """
    from rca_gpu.engine import registry
    from rca_gpu.engine.device import as_numpy, as_torch

    started = time.perf_counter()
    reducer, clusterer = registry.reducer_card(reduce_name), registry.cluster_card(cluster_name)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    b = default_resamples(reduce_name, trials) if resamples is None else int(resamples)
    sample = np.arange(n)
    if search_sample is not None:
        sample, graph = np.asarray(search_sample[0], dtype=np.int64), search_sample[1]
    elif n > max_images:
        sample = np.sort(np.random.default_rng([seed, 7919]).choice(n, max_images, replace=False))
    torch_device = getattr(device, "torch_device", "cpu")
    rows_of = sample  # resample rows -> rows of ``features`` and ``graph``
    if search_sample is not None:  # the search sample's graph numbers the sample's rows
        features = as_torch(features, torch_device)[as_torch(sample, torch_device).long()]
        rows_of = np.arange(len(sample))
    elif graph is None:  # above the run's sample size no graph of all images exists: one of the stability sample
        from rca_gpu.engine.knn import knn_graph
        from rca_gpu.tuning.graph import LINK_NEIGHBOURS

        features = as_torch(features, torch_device)[as_torch(sample, torch_device).long()]
        wanted = max(int(reduce_params.get("n_neighbors", 15)), int(cluster_params.get("min_samples", 5)),
                     LINK_NEIGHBOURS) + 1
        graph = knn_graph(features, min(wanted, len(sample)), device)
        rows_of = np.arange(len(sample))
    state = clusterer.resample_state(cluster_params, chosen_embedding, device,
                                     feature_graph=graph if reducer.identity else None,
                                     rows=sample if len(sample) < n else None)  # large runs: on the sample
    graph_k = reducer.graph_k(reduce_params)
    positions = np.asarray(as_numpy(chosen_embedding), dtype=np.float32)

    def recluster(rows: np.ndarray) -> np.ndarray:
        chosen_rows = rows_of[rows]
        x = as_torch(features, torch_device)[as_torch(chosen_rows, torch_device).long()]
        start = positions[sample[rows]]
        if method == "embedding" and not reducer.cheap:
            embedding = start
        else:
            knn = subset_graph(graph, chosen_rows, max(2, graph_k), x, device) if graph_k else None
            params = dict(reduce_params)
            if method == "warm" and not reducer.cheap and len(rows) - 2 >= start.shape[1]:
                params.update(init=start, n_epochs=warm_epochs or None)
            embedding, _ = reducer.reduce(x, params, device, knn=knn, seed=seed)
        params = clusterer.transfer(cluster_params, embedding, device, state)
        labels_of_resample = clusterer.cluster(embedding, params, device, seed=seed)
        if merge_step:  # the run's labels went through the merge and noise steps: so do the resample's
            from rca_gpu.tuning.graph import LINK_NEIGHBOURS, attach_noise, merge_unseparated

            neighbours = subset_graph(graph, chosen_rows, LINK_NEIGHBOURS + 1, x, device).numpy()[0]
            neighbours = neighbours[:, 1:LINK_NEIGHBOURS + 1]
            merged, _ = merge_unseparated(np.asarray(labels_of_resample, dtype=np.int64), neighbours)
            labels_of_resample = attach_noise(merged, neighbours)
        return labels_of_resample

    result = clusterboot(labels[sample], recluster, resamples=b, fraction=fraction, seed=seed, progress=progress)
    # sizes in the table are the run's, also when resamples come from a sample of a large run
    full_sizes = np.bincount(labels[labels >= 0], minlength=len(result.table))[: len(result.table)]
    result.table["size"] = full_sizes.astype(np.int64)
    result.info = {
        "method": "clusterboot (subsetting), mean best-match Jaccard",
        "resamples": b,
        "fraction": fraction,
        "images": int(len(sample)),
        "reclustering": method + (f" ({warm_epochs} epochs)" if method == "warm" else ""),
        "seed": seed,
        "unstable_below": UNSTABLE_BELOW,
        "dbscan_eps_quantile": round(state, 6) if isinstance(state, float) else None,
        "n_unstable": int(result.table["unstable"].sum()),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return result
