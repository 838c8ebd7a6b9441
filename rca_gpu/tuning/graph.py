"""What the feature kNN graph says about a partition: clusters it does not separate, noise it places.

Both functions read only the neighbour lists of the shared kNN graph (host arrays), so they cost O(n k) per
step, and they judge clusters in the space of the features themselves, not in the embedding the clusterer
saw: UMAP can tear one cause into several islands, and a density clusterer can leave a cause's sparse
fringe as noise, but in the features those points keep their neighbours.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: A cluster must keep at least this share of its points' kNN edges (among clustered points) inside itself;
#: otherwise it is merged with the cluster that receives most of them.
MIN_INSIDE = 0.5
#: Two clusters merge when more than this share of either one's kNN edges lead into the other.
MAX_LINK = 0.3
#: A noise point joins a cluster that holds more than this share of its k nearest neighbours.
NOISE_MAJORITY = 0.5
#: Smallest cluster that is kept for being isolated (see :func:`isolated_clusters`).
MIN_ISOLATED = 5
#: Neighbours per point read from the graph (column 0, the point itself, excluded).
LINK_NEIGHBOURS = 15


def link_counts(labels: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """(m, m) float64: entry [a, b] counts kNN edges from a point of cluster a to a point of cluster b.

    ``labels`` (n,) int with clusters 0..m-1 and -1 for noise; ``neighbours`` (n, k) int rows of the
    neighbours of each point (the point itself excluded). Edges from or to noise are not counted.
    """
    m = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
    source = np.repeat(labels, neighbours.shape[1])
    target = labels[neighbours.ravel()]
    keep = (source >= 0) & (target >= 0)
    flat = np.bincount(source[keep] * m + target[keep], minlength=m * m)
    return flat.reshape(m, m).astype(np.float64)


def isolated_clusters(labels: np.ndarray, neighbours: np.ndarray, *, min_size: int = MIN_ISOLATED) -> np.ndarray:
    """(m,) bool: clusters of ``min_size`` <= s <= k points whose every point has only fellow members as its
    s - 1 nearest neighbours (noise counts as outside): every member is nearer to all the others than to any
    other point. ``labels`` and ``neighbours`` as in :func:`link_counts`.
    """
    m = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
    if not m:
        return np.zeros(0, dtype=bool)
    k = neighbours.shape[1]
    sizes = np.bincount(labels[labels >= 0], minlength=m)
    clustered = np.flatnonzero(labels >= 0)
    own = labels[clustered]
    counted = np.arange(k)[None, :] < (sizes[own] - 1)[:, None]
    strays = ((labels[neighbours[clustered]] != own[:, None]) & counted).any(axis=1)
    spoiled = np.bincount(own[strays], minlength=m) > 0
    return (sizes >= min_size) & (sizes <= k) & ~spoiled


def _compact(labels: np.ndarray) -> np.ndarray:
    """Clusters renumbered 0..m-1 in order of first appearance; -1 stays."""
    out = np.full_like(labels, -1)
    clustered = labels >= 0
    if clustered.any():
        _, first, inverse = np.unique(labels[clustered], return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first))
        out[clustered] = rank[inverse]
    return out


def merge_unseparated(labels: np.ndarray, neighbours: np.ndarray, *, min_inside: float = MIN_INSIDE,
                      max_link: float = MAX_LINK) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Merge clusters that the kNN graph does not separate, one pair at a time.

    Each step looks at every cluster's out-going kNN edges (to clustered points):

    1. a cluster that keeps less than ``min_inside`` of them inside itself is no cluster of the features (a
       slice of a larger group): it merges with the cluster that receives most of them (the worst first);
    2. otherwise, the pair (a, b) where the larger of share(a -> b) and share(b -> a) is highest merges when
       that share exceeds ``max_link``.

    A cluster of s <= k points can keep at most s - 1 of each point's k edges inside, so by these shares
    alone every small cluster would merge, however far it lies from the rest. A small cluster that is
    **isolated** (:func:`isolated_clusters`: each point's s - 1 nearest neighbours are all fellow members,
    at least :data:`MIN_ISOLATED` points) is therefore read as keeping all its edges inside: it merges with
    nothing by its own edges. Fragments of a larger group are not isolated (their border points' nearest
    neighbours lie in the rest of the group) and merge as before.

    It stops when neither applies. A rare cause keeps its cluster (its edges stay inside), so does a cause
    that only looks like another one while its edges mostly stay inside it; a cause torn into islands by
    the embedding is put back together, and a set with a single cause can come back as one cluster.

    Parameters
    ----------
    labels : (n,) int array, -1 = noise.
    neighbours : (n, k) int array, the k nearest other points of each point (rows of ``labels``).
    min_inside, max_link : the two thresholds (shares of kNN edges, in [0, 1]).

    Returns
    -------
    (labels renumbered 0..m-1 by first appearance, one dict per merge: the two clusters' sizes, the rule
    and the share that triggered it).
    """
    labels = _compact(np.asarray(labels, dtype=np.int64))
    merges: list[dict[str, Any]] = []
    while labels.max(initial=-1) >= 1:
        counts = link_counts(labels, neighbours)
        isolated = isolated_clusters(labels, neighbours)
        counts[isolated] = 0.0
        counts[np.flatnonzero(isolated), np.flatnonzero(isolated)] = 1.0  # its edges all inside, none out
        total = counts.sum(axis=1)
        share = counts / np.maximum(total, 1.0)[:, None]
        inside = np.where(total > 0, np.diag(share), 1.0)
        np.fill_diagonal(share, 0.0)
        worst = int(np.argmin(inside))
        if inside[worst] < min_inside and share[worst].max() > 0:
            a, b, rule, value = worst, int(np.argmax(share[worst])), "inside", float(inside[worst])
        else:
            both = np.maximum(share, share.T)
            a, b = (int(i) for i in np.unravel_index(np.argmax(both), both.shape))
            rule, value = "link", float(both[a, b])
            if value <= max_link:
                break
        sizes = np.bincount(labels[labels >= 0])
        merges.append({"sizes": [int(sizes[a]), int(sizes[b])], "rule": rule, "share": round(value, 4)})
        labels = _compact(np.where(labels == a, b, labels))
    return labels, merges


def attach_noise(labels: np.ndarray, neighbours: np.ndarray, *, majority: float = NOISE_MAJORITY,
                 neighbour_labels: np.ndarray | None = None) -> np.ndarray:
    """Noise points whose neighbours are mostly in one cluster join it.

    ``neighbours`` (n, k) are rows of ``neighbour_labels`` (default: ``labels`` itself); a noise point joins
    the cluster that holds more than ``majority`` of its k neighbours (noise neighbours count in k). With
    the default the passes repeat until nothing changes (a point whose neighbours just joined may now have
    its majority); points whose neighbours are mostly noise or split between clusters stay -1. Returns a
    new label array.
    """
    labels = np.asarray(labels, dtype=np.int64).copy()
    own = neighbour_labels is None
    reference = labels if own else np.asarray(neighbour_labels, dtype=np.int64)
    m = int(reference.max(initial=-1)) + 1
    k = neighbours.shape[1]
    while m:
        noise = np.flatnonzero(labels < 0)
        if noise.size == 0:
            break
        around = reference[neighbours[noise]]
        votes = np.zeros((noise.size, m + 1), dtype=np.int64)
        np.add.at(votes, (np.repeat(np.arange(noise.size), k), around.ravel() + 1), 1)
        best = votes[:, 1:].argmax(axis=1)
        joined = votes[np.arange(noise.size), best + 1] > majority * k
        if not joined.any():
            break
        labels[noise[joined]] = best[joined]
        if not own:  # neighbours are other points (the sample): one pass decides everything
            break
        reference = labels
    return labels
