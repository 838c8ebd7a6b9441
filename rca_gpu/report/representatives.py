"""Which images the report shows: each cluster's medoids and border cases, the order of its gallery, the map's
sample.

Everything is measured in the space the clusterer used (``e0..ek`` of embedding.parquet), or in the 2-D map's
coordinates when that space is not stored (more than 64 dimensions):

- **medoids**: the :data:`REPRESENTATIVES` members closest (Euclidean) to the mean of the cluster; the first is
  *the* medoid;
- **border cases**: the :data:`BORDER_CASES` other members with the largest ratio of the distance to their own
  centre to the distance to the nearest other centre (near 1: between two clusters), each with the cluster whose
  centre is that nearest other one (the cluster it borders); with a single cluster, the outermost members;
- **gallery order**: every member by its distance to the medoid, nearest first;
- the noise: a seeded random sample, its gallery in the run's order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: Medoids and border cases shown per cluster.
REPRESENTATIVES = 8
BORDER_CASES = 4
#: Fewest points each cluster keeps on a sampled map.
MAP_MIN_PER_CLUSTER = 50


@dataclass
class Chosen:
    """The images shown for one cluster, as row positions in clusters.parquet.

    ``medoids``: closest to the centre first; ``border``: border cases, with ``borders`` the cluster each one
    borders (None with a single cluster); ``order``: every member, nearest to the medoid first (the gallery);
    ``kind``: "medoids", or "sample" for the noise.
    """

    medoids: list[int] = field(default_factory=list)
    border: list[int] = field(default_factory=list)
    borders: list[int | None] = field(default_factory=list)
    order: list[int] = field(default_factory=list)
    kind: str = "medoids"


def embedding_positions(clusters: pd.DataFrame, embedding: pd.DataFrame) -> np.ndarray:
    """(len(embedding),) int64: the row position in clusters.parquet of each embedding row (matched by id)."""
    lookup = pd.Series(np.arange(len(clusters)), index=clusters["id"].to_numpy())
    return lookup.loc[embedding["id"].to_numpy()].to_numpy(dtype=np.int64)


def clustering_space(embedding: pd.DataFrame) -> tuple[np.ndarray, str]:
    """The embedding the clusterer used ((n, k) float64 ``e0..ek``) when stored, else the 2-D map coordinates,
    with a sentence for the page saying which."""
    columns = [c for c in embedding.columns if c.startswith("e") and c[1:].isdigit()]
    if columns:
        columns.sort(key=lambda c: int(c[1:]))
        return embedding[columns].to_numpy(dtype=np.float64), (
            f"Medoids and border cases are chosen in the space the clusterer used ({len(columns)} dimensions).")
    return embedding[["x", "y"]].to_numpy(dtype=np.float64), (
        "The clustering space has more than 64 dimensions and is not stored in embedding.parquet, so medoids "
        "and border cases are chosen in the 2-D map's coordinates.")


def representatives(labels: np.ndarray, space: np.ndarray, positions: np.ndarray,
                    rng: np.random.Generator) -> dict[int, Chosen]:
    """Per cluster of ``labels`` ((n,) int, -1 noise, aligned with ``space`` (n, k)): the :class:`Chosen` images,
    as ``positions`` (clusters.parquet rows of the n points); for the noise (-1) a seeded random sample."""
    out: dict[int, Chosen] = {}
    ids = [int(c) for c in np.unique(labels) if c >= 0]
    centres = np.stack([space[labels == c].mean(axis=0) for c in ids]) if ids else np.zeros((0, space.shape[1]))
    for k, label in enumerate(ids):
        rows = np.flatnonzero(labels == label)
        distances = _centre_distances(space[rows], centres)  # (m, n_clusters)
        own = distances[:, k]
        by_centre = np.argsort(own, kind="stable")
        medoids = rows[by_centre[:REPRESENTATIVES]]
        chosen = Chosen(medoids=positions[medoids].tolist())
        if len(rows) > REPRESENTATIVES:
            if len(ids) > 1:
                others = np.delete(distances, k, axis=1)
                nearest = others.argmin(axis=1)
                score = own / np.maximum(others.min(axis=1), 1e-12)  # near 1: between two clusters
            else:
                nearest, score = None, own  # a single cluster: its outermost members
            taken = set(medoids.tolist())
            picks = [j for j in np.argsort(-score, kind="stable") if rows[j] not in taken][:BORDER_CASES]
            chosen.border = positions[rows[picks]].tolist()
            other_ids = [c for c in ids if c != label]
            chosen.borders = [other_ids[int(nearest[j])] if nearest is not None else None for j in picks]
        to_medoid = _centre_distances(space[rows], space[rows[by_centre[0]]][None, :])[:, 0]
        chosen.order = positions[rows[np.argsort(to_medoid, kind="stable")]].tolist()
        out[label] = chosen
    noise = np.flatnonzero(labels < 0)
    if len(noise):
        sample = np.sort(rng.choice(noise, min(len(noise), REPRESENTATIVES + BORDER_CASES), replace=False))
        out[-1] = Chosen(medoids=positions[sample].tolist(), order=np.sort(positions[noise]).tolist(),
                         kind="sample")
    return out


def _centre_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(m, c) Euclidean distances of ``points`` (m, d) to ``centres`` (c, d), one centre at a time: the values
    of ``np.linalg.norm(points[:, None] - centres[None], axis=2)`` (the same reduction) without its (m, c, d)
    temporary, which at 10 million images in 20 clusters of a 10-d embedding was gigabytes."""
    out = np.empty((len(points), len(centres)), dtype=np.float64)
    for j, centre in enumerate(centres):
        diff = points - centre
        out[:, j] = np.sqrt(np.add.reduce(diff * diff, axis=1))
    return out


def map_sample(labels: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the embedding rows drawn: all of them up to ``limit``, else at most ``limit`` drawn per
    cluster in proportion to size, every cluster keeping at least min(size, 50, limit / clusters) points."""
    n = len(labels)
    if n <= limit:
        return np.arange(n)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    least = max(1, min(MAP_MIN_PER_CLUSTER, limit // len(groups)))
    floor = [min(len(g), least) for g in groups]
    budget = max(limit - sum(floor), 0)
    rest = max(n - sum(floor), 1)
    chosen = [rng.choice(g, min(len(g), keep + budget * (len(g) - keep) // rest), replace=False)
              for g, keep in zip(groups, floor, strict=True)]
    return np.sort(np.concatenate(chosen))


def section_order(labels: np.ndarray) -> list[int]:
    """Clusters largest first (ties by id), then the noise."""
    ids, counts = np.unique(labels, return_counts=True)
    clusters = sorted(((int(c), int(n)) for c, n in zip(ids, counts, strict=True) if c >= 0),
                      key=lambda cn: (-cn[1], cn[0]))
    return [c for c, _ in clusters] + ([-1] if (labels < 0).any() else [])


def anchor(label: int) -> str:
    """The page anchor of a cluster (``cluster-3``) or of the noise."""
    return f"cluster-{label}" if label >= 0 else "noise"


def caption_columns(columns: list[str]) -> dict[str, str] | None:
    """Which columns make a caption ``label -> prediction (confidence)``: ``label`` and ``prediction`` (their
    ``_name`` twins when present: names read better than class numbers), ``confidence`` when present; None
    when the run has no label and prediction."""
    if "label" not in columns and "label_name" not in columns:
        return None
    if "prediction" not in columns and "prediction_name" not in columns:
        return None
    label = "label_name" if "label_name" in columns else "label"
    prediction = "prediction_name" if "prediction_name" in columns else "prediction"
    out = {"label": label, "prediction": prediction}
    if "confidence" in columns:
        out["confidence"] = "confidence"
    return out


def caption(row: pd.Series, columns: dict[str, str] | None) -> str:
    """``7 -> 1 (0.93)`` for a row (``columns`` from :func:`caption_columns`), "" without them."""
    if columns is None:
        return ""
    label, prediction = (_text(row.get(columns[k])) for k in ("label", "prediction"))
    text = f"{label} -> {prediction}"
    confidence = row.get(columns["confidence"]) if "confidence" in columns else None
    if confidence is None:
        return text
    try:
        value = float(confidence)
    except (TypeError, ValueError):
        return text
    return text + (f" ({value:.2f})" if value == value else "")


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "?"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
