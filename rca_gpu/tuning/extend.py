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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rca_gpu.engine.cards import ReducerCard
from rca_gpu.engine.device import Device, as_numpy, take_rows
from rca_gpu.engine.knn import nearest_rows
from rca_gpu.engine.sample import extension_blocks
from rca_gpu.progress import no_progress
from rca_gpu.tuning import graph as graph_rules
from rca_gpu.tuning.search import Search, cached_reduce
from rca_gpu.tuning.selection import Extension, Selection


def extend(selection: Selection, found: Search, chosen: int, raw: np.ndarray, *, merge: bool, device: Device,
           seed: int, progress: Callable[[int], None] = no_progress) -> None:
    """Give ``selection`` (of the search's sample) the labels and embedding of every image, in place.

    ``chosen``: the index of the chosen embedding among the search's; ``raw``: the clusterer's own labels of
    the sample (before the merge step); ``merge``: the 'merged' rule's steps ran, so noise among the other
    images is attached too. Fills ``selection.extension`` (what placing more points needs) and
    ``selection.sample`` (how the other images were assigned, for run.json). The other images go in blocks
    (:func:`rca_gpu.engine.sample.extension_blocks`; ``progress`` is called after each), so that the memory
    beyond the outputs is one block's at any n. Each block's result depends on its rows only.
    """
    if found.sample is None:
        raise ValueError("extend needs a search that ran on a sample")
    sample, n = found.sample, int(found.features.shape[0])
    rest = np.setdiff1d(np.arange(n, dtype=np.int64), sample, assume_unique=True)
    k = max(found.reducer.graph_k(selection.reduce_params), graph_rules.LINK_NEIGHBOURS)
    embedding = found.embeddings[chosen]
    sample_points = np.asarray(as_numpy(embedding.points), dtype=np.float32)
    core = None
    m = found.clusterer.core_neighbours(selection.cluster_params)
    if m is not None:
        m = max(1, min(m, len(sample)))
        core = embedding.graph(m).numpy()[1][:, m - 1]
    out = _Extended(np.empty((len(rest), k), dtype=np.int32), np.empty((len(rest), k), dtype=np.float32),
                    np.full(n, -1, dtype=np.int64), np.empty((n, sample_points.shape[1]), dtype=np.float32))
    out.labels[sample], out.points[sample] = selection.labels, sample_points

    def one_block(block: slice) -> tuple[str, int]:
        how, attached = _extend_block(selection, found, embedding, sample_points, raw, core, rest, block, k, out,
                                      merge=merge, device=device, seed=seed)
        progress(1)
        return how, attached

    done = [one_block(block) for block in extension_blocks(n, len(sample))]
    how = done[-1][0] if done else "nothing to assign"
    attached = sum(count for _, count in done)
    reducer = found.reducer
    selection.extension = Extension(sample, rest, out.indices, out.distances, found.graph)
    selection.relabelled = selection.relabelled or attached > 0
    selection.labels, selection.embedding = out.labels, out.points
    selection.noise_attached += attached
    selection.sample = {
        "size": int(len(sample)), "of": n, "seed": seed,
        "neighbours": "each other image's nearest sample images in the features (exact)",
        "embedding": (f"{reducer.name}: fitted on every image" if reducer.cheap
                      else f"{reducer.name}: placed among its nearest sample images ({type(reducer).__module__})"),
        "clusters": how + ("; noise joins the cluster of most of its sample neighbours" if merge else ""),
    }


@dataclass
class _Extended:
    """What the extension fills: each other image's nearest sample images (rows aligned with ``rest``), and the
    labels and embedding of every image."""

    indices: np.ndarray  # (n - s, k) int32
    distances: np.ndarray  # (n - s, k) float32
    labels: np.ndarray  # (n,) int64
    points: np.ndarray  # (n, c) float32


def _extend_block(selection: Selection, found: Search, embedding: Any, sample_points: np.ndarray, raw: np.ndarray,
                  core: np.ndarray | None, rest: np.ndarray, block: slice, k: int, out: _Extended, *, merge: bool,
                  device: Device, seed: int) -> tuple[str, int]:
    """Neighbours, position and label of the other images ``rest[block]``, written into ``out``. Returns (how
    they were assigned, how many noise points joined a cluster)."""
    reducer, clusterer = found.reducer, found.clusterer
    rows = rest[block]
    idx, dist = nearest_rows(found.rows, take_rows(found.features, rows, device.torch_device), k, device)
    out.indices[block], out.distances[block] = idx, dist
    if reducer.cheap:
        placed = np.asarray(as_numpy(take_rows(embedding.full, rows, device.torch_device)), dtype=np.float32)
    else:
        placed = reducer.place(sample_points, idx, dist, selection.reduce_params, seed)
    labels, how = clusterer.extend(selection.cluster_params, sample_points, raw, selection.labels, placed, device,
                                   core)
    same = dist[:, 0] == 0.0  # an exact copy of a sample image goes where that image went
    labels[same] = selection.labels[idx[same, 0]]
    attached = 0
    if merge:
        before = int((labels < 0).sum())
        labels = graph_rules.attach_noise(labels, idx[:, :graph_rules.LINK_NEIGHBOURS],
                                          neighbour_labels=selection.labels)
        attached = before - int((labels < 0).sum())
    out.labels[rows], out.points[rows] = labels, placed
    return how, attached


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
