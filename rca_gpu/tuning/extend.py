"""Sample-and-extend: the setting chosen on a seeded sample, carried to every other image.

Every step costs O(rest x sample) or less, so the work after the search grows linearly with n:

- neighbours: each other image's nearest sample images in the features
  (:func:`rca_gpu.engine.knn.nearest_rows`);
- the embedding: a reducer that is not cheap places each other image among its nearest sample images (its
  card's ``place``: UMAP as umap-learn's ``transform``); cheap reducers (PCA, "none") were fitted on every
  image, so nothing needs placing;
- the clusters: the clusterer card's ``extend`` (DBSCAN: the nearest core point within eps; HDBSCAN: the
  nearest clustered sample point within its core distance; K-means and Ward: the nearest centroid), then an
  exact copy of a sample image goes where that image went and, under the 'merged' rule, noise joins the cluster
  of most of its sample neighbours.

Clusters are those of the sample after the selection rule's merges (a raw cluster maps to the merged one
it joined).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rca_gpu.engine.cards import ReducerCard
from rca_gpu.engine.device import Device, as_numpy, take_rows
from rca_gpu.engine.knn import nearest_rows
from rca_gpu.tuning import graph as graph_rules
from rca_gpu.tuning.search import Search, cached_reduce
from rca_gpu.tuning.selection import Extension, Selection

#: Other images extended per block: bounds the memory of their feature rows and neighbour lists
#: (65,536 x 1,280 float32 = 320 MiB).
EXTEND_BLOCK = 65_536


def extend(selection: Selection, found: Search, chosen: int, raw: np.ndarray, *, merge: bool, device: Device,
           seed: int) -> None:
    """Give ``selection`` (of the search's sample) the labels and embedding of every image, in place.

    ``chosen``: the index of the chosen embedding among the search's; ``raw``: the clusterer's own labels of
    the sample (before the merge step); ``merge``: the 'merged' rule's
    steps ran, so noise among the other images is attached too. Fills ``selection.extension`` (what placing
    more points needs) and ``selection.sample`` (how the other images were assigned, for run.json).
    """
    if found.sample is None:
        raise ValueError("extend needs a search that ran on a sample")
    reducer, clusterer, sample = found.reducer, found.clusterer, found.sample
    features = found.features
    embedding = found.embeddings[chosen]
    n = int(features.shape[0])
    rest = np.setdiff1d(np.arange(n, dtype=np.int64), sample, assume_unique=True)
    k = max(reducer.graph_k(selection.reduce_params), graph_rules.LINK_NEIGHBOURS)
    sample_points = np.asarray(as_numpy(embedding.points), dtype=np.float32)
    core = None
    m = clusterer.core_neighbours(selection.cluster_params)
    if m is not None:
        m = max(1, min(m, len(sample)))
        core = embedding.graph(m).numpy()[1][:, m - 1]
    # the other images in blocks: memory beyond the outputs stays that of one block at any n
    indices = np.empty((len(rest), k), dtype=np.int32)
    distances = np.empty((len(rest), k), dtype=np.float32)
    labels = np.full(n, -1, dtype=np.int64)
    points = np.empty((n, sample_points.shape[1]), dtype=np.float32)
    labels[sample], points[sample] = selection.labels, sample_points
    how, attached = "nothing to assign", 0
    for start in range(0, len(rest), EXTEND_BLOCK):
        block = slice(start, min(len(rest), start + EXTEND_BLOCK))
        rows = rest[block]
        idx, dist = nearest_rows(found.rows, take_rows(features, rows, device.torch_device), k, device)
        indices[block], distances[block] = idx, dist
        if reducer.cheap:
            placed_block = np.asarray(as_numpy(take_rows(embedding.full, rows, device.torch_device)), dtype=np.float32)
        else:
            placed_block = reducer.place(sample_points, idx, dist, selection.reduce_params, seed)
        labels_block, how = clusterer.extend(selection.cluster_params, sample_points, raw, selection.labels,
                                             placed_block, device, core)
        same = dist[:, 0] == 0.0  # an exact copy of a sample image goes where that image went
        labels_block[same] = selection.labels[idx[same, 0]]
        if merge:
            before = int((labels_block < 0).sum())
            labels_block = graph_rules.attach_noise(labels_block, idx[:, :graph_rules.LINK_NEIGHBOURS],
                                                    neighbour_labels=selection.labels)
            attached += before - int((labels_block < 0).sum())
        labels[rows], points[rows] = labels_block, placed_block
    selection.extension = Extension(sample, rest, indices, distances, found.graph)
    placed = (f"{reducer.name}: fitted on every image" if reducer.cheap
              else f"{reducer.name}: placed among its nearest sample images ({type(reducer).__module__})")
    selection.relabelled = selection.relabelled or attached > 0
    selection.labels, selection.embedding = labels, points
    selection.noise_attached += attached
    selection.sample = {
        "size": int(len(sample)), "of": n, "seed": seed,
        "neighbours": "each other image's nearest sample images in the features (exact)",
        "embedding": placed, "clusters": how + ("; noise joins the cluster of most of its sample neighbours"
                                               if merge else ""),
    }


def place_all(selection: Selection, features: Any, reducer: ReducerCard, params: Mapping[str, Any],
              device: Device, seed: int, reduce_cache: dict | None = None) -> np.ndarray:
    """An embedding (``reducer`` with ``params``, a reducer that places points) of every row of ``features``:
    fitted on the selection's sample and the other rows placed (the selection ran on a sample)."""
    ext = selection.extension
    if ext is None:
        raise ValueError("place_all needs a selection that ran on a sample")
    sample_rows = take_rows(features, ext.sample, device.torch_device)
    embedding, _ = cached_reduce(sample_rows, reducer, params, device, ext.graph, seed, reduce_cache,
                                 rows=(int(features.shape[0]), len(ext.sample)))
    sample_points = np.asarray(as_numpy(embedding), dtype=np.float32)
    out = np.empty((int(features.shape[0]), sample_points.shape[1]), dtype=np.float32)
    out[ext.sample] = sample_points
    out[ext.rest] = reducer.place(sample_points, ext.indices, ext.distances, params, seed)
    return out
