"""Sample-and-extend: the setting chosen on a seeded sample, carried to every other image.

Every step costs O(rest x sample) or less, so the work after the search grows linearly with n:

- neighbours: each other image's nearest sample images in the features (:func:`rca_gpu.engine.knn.nearest_rows`);
- UMAP: each other image is placed as umap-learn's ``transform`` places new points (fuzzy membership
  strengths to its sample neighbours, weighted mean of their positions, then ``REFINE_EPOCHS`` epochs of
  the layout optimisation with the sample fixed); PCA and "none" are fitted on all images directly
  (cheap), so nothing needs extending;
- DBSCAN: the nearest core point of the sample within eps gives the cluster, else noise (a core point is
  one with at least min_samples sample points within eps, itself included, as in scikit-learn);
- HDBSCAN: the nearest clustered sample point gives the cluster when the image lies within that point's
  core distance (its distance to its min_samples-th neighbour), else noise: a point that close belongs to
  the cluster at the density where that point does (what ``approximate_predict`` decides in hdbscan);
- K-means: the nearest centroid (``predict``); Ward: the nearest centroid of its clusters.

Clusters are those of the sample after the selection rule's merges (a raw cluster maps to the merged one
it joined).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rca_gpu.engine.device import Device
from rca_gpu.engine.knn import nearest_rows

#: Epochs of layout optimisation for the placed images (0: the weighted mean only). umap-learn's
#: ``transform`` runs 30 above 10,000 images; placed images move in a fixed sample embedding, so few suffice.
REFINE_EPOCHS = 0
#: Images placed per block (bounds the memory of the bipartite graph).
BLOCK = 100_000


def draw_sample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted int64 row indices of a seeded uniform sample of ``size`` of ``n`` rows (all rows if n <= size)."""
    if n <= size:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng([seed, n, size]).choice(n, size, replace=False)).astype(np.int64)


def umap_place(sample_embedding: np.ndarray, indices: np.ndarray, distances: np.ndarray, *, n_neighbors: int,
               min_dist: float, seed: int, epochs: int = REFINE_EPOCHS) -> np.ndarray:
    """Positions (m, c) float32 of new points in a fitted UMAP embedding of the sample.

    ``indices``/``distances`` (m, >= n_neighbors): each new point's nearest sample points in the features.
    Follows umap-learn's ``UMAP.transform`` (umap/umap_.py): membership strengths by ``smooth_knn_dist`` with
    local connectivity 0, the strength-weighted mean of the neighbours' positions (a point identical to a
    sample point takes its position), then ``epochs`` epochs of ``optimize_layout_euclidean`` with the sample
    fixed (0: none).
    """
    from umap.umap_ import compute_membership_strengths, smooth_knn_dist

    k = min(n_neighbors, indices.shape[1])
    indices = np.ascontiguousarray(indices[:, :k], dtype=np.int64)
    distances = np.ascontiguousarray(distances[:, :k], dtype=np.float32)
    out = np.empty((len(indices), sample_embedding.shape[1]), dtype=np.float32)
    for start in range(0, len(indices), BLOCK):
        idx, dist = indices[start:start + BLOCK], distances[start:start + BLOCK]
        sigmas, rhos = smooth_knn_dist(dist, float(k), local_connectivity=0.0)
        _, _, vals, _ = compute_membership_strengths(idx.astype(np.int32), dist, sigmas, rhos, bipartite=True)
        weights = vals.reshape(idx.shape).astype(np.float64)
        total = weights.sum(axis=1, keepdims=True)
        weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), 1.0 / k)
        placed = np.einsum("ij,ijc->ic", weights, sample_embedding[idx].astype(np.float64)).astype(np.float32)
        same = dist[:, 0] == 0.0  # identical to a sample point: exactly its position
        placed[same] = sample_embedding[idx[same, 0]]
        if epochs > 0:
            placed = _refine(placed, sample_embedding, idx, vals, epochs, min_dist, seed)
        out[start:start + len(idx)] = placed
    return out


def _refine(placed, sample_embedding, idx, vals, epochs, min_dist, seed):
    import scipy.sparse
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import find_ab_params, make_epochs_per_sample

    m, k = idx.shape
    graph = scipy.sparse.coo_matrix((vals, (np.repeat(np.arange(m), k), idx.ravel())),
                                    shape=(m, len(sample_embedding)))
    graph.data[graph.data < graph.data.max() / float(epochs)] = 0.0
    graph.eliminate_zeros()
    a, b = find_ab_params(1.0, min_dist)
    rng_state = np.random.RandomState(seed).randint(np.iinfo(np.int32).min, np.iinfo(np.int32).max, 3)
    return optimize_layout_euclidean(
        placed, sample_embedding.astype(np.float32, copy=True), graph.row, graph.col, epochs, graph.shape[1],
        make_epochs_per_sample(graph.data, epochs), a, b, rng_state.astype(np.int64), 1.0, 0.25, 5.0,
        parallel=False, move_other=False,
    )


def extend_labels(clusterer: str, params: dict[str, Any], sample_points: np.ndarray, raw_labels: np.ndarray,
                  final_labels: np.ndarray, points: np.ndarray, device: Device,
                  core_distances: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Labels of new points from the clustering of the sample, in the space the clusterer saw.

    Parameters
    ----------
    clusterer, params : the chosen clusterer and its setting.
    sample_points : (s, c) float32, the sample in the clustering space.
    raw_labels : (s,) the clusterer's own labels of the sample; final_labels : (s,) after the rule's merges.
    points : (m, c) float32, the new points in the same space.
    core_distances : (s,) each sample point's distance to its min_samples-th nearest sample point (itself
        included as the first); needed by DBSCAN and HDBSCAN.

    Returns
    -------
    (labels (m,) int64 with -1 = noise, one line saying how they were assigned, for run.json).
    """
    if len(points) == 0:
        return np.empty(0, dtype=np.int64), "nothing to assign"
    if clusterer in ("kmeans", "ward"):
        ids = np.unique(raw_labels[raw_labels >= 0])
        centroids = np.stack([sample_points[raw_labels == c].mean(axis=0) for c in ids]).astype(np.float32)
        to_final = np.array([np.bincount(final_labels[raw_labels == c] + 1).argmax() - 1 for c in ids])
        nearest, _ = nearest_rows(centroids, points, 1, device)
        return to_final[nearest[:, 0]], "nearest centroid of the sample's clusters"
    if clusterer == "dbscan":
        eps = float(params["eps"])
        base = np.flatnonzero((core_distances <= eps) & (raw_labels >= 0))
        how = "nearest core point of the sample within eps, else noise"
        radius = np.full(len(base), eps, dtype=np.float32)
    elif clusterer == "hdbscan":
        base = np.flatnonzero(final_labels >= 0)
        how = "nearest clustered sample point, within its core distance, else noise"
        radius = core_distances[base]
    else:
        raise KeyError(clusterer)
    labels = np.full(len(points), -1, dtype=np.int64)
    if base.size:
        nearest, distance = nearest_rows(sample_points[base], points, 1, device)
        inside = distance[:, 0] <= radius[nearest[:, 0]] * (1 + 1e-6)
        labels[inside] = final_labels[base[nearest[inside, 0]]]
    return labels, how
