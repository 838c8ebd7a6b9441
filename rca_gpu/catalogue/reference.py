"""The reference set a run keeps so that new images can be assigned to its causes later.

Assignment works in the feature space of the run (no reducer is stored, so nothing is unpickled): a new
image's features are compared with a bounded sample of each cluster's features, and each cluster has a
radius calibrated on its own members (HUDD assigns a new image to a cluster when it falls within that
cluster's radius; here the radius is a quantile of held-out distances, as in split-conformal prediction).

Files written into the run folder, each carrying the run id:

``reference.safetensors``
    Tensor ``features``: (N, d) float16, the features of at most :data:`PER_CLUSTER` seeded-random members
    of each cluster (noise excluded), rows ordered like reference.parquet. float16 keeps 11 significant
    bits (relative rounding <= 2^-11), far below the distance differences that matter; features whose
    magnitude exceeds float16's range are stored as float32 instead. The safetensors metadata holds
    ``run_id`` and ``format``. At 30 clusters and d = 1280 the file is at most 30 x 256 x 1280 x 2 bytes
    = 19.7 MB, whatever the number of images in the run.
``reference.parquet``
    One row per reference image: ``id`` (the image's id in clusters.parquet), ``cluster``, ``score`` (its
    held-out distance to its own cluster, see :func:`calibrate`).
``reference.json``
    The settings (K_DISTANCE, K_VOTE, ALPHA), the storage dtype and, per cluster, its reference count and
    calibrated radius.

Distance of an image to a cause: the mean Euclidean distance to its ``k`` nearest reference images of that
cause (``k = min(K_DISTANCE, members - 1)``). Calibration: the same distance for every reference image to
the other reference images of its cause (leave one out); the cause's radius is the split-conformal (1 - ALPHA)
quantile of these scores (:func:`radius`), so at most about ALPHA of the cause's new images lie beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu.errors import RcaError

#: Reference images kept per cluster (seeded uniform sample of its members when larger).
PER_CLUSTER = 256
#: An image's distance to a cause is the mean distance to this many nearest reference images of it.
K_DISTANCE = 5
#: Reference images that vote for the cause of a new image.
K_VOTE = 10
#: Share of a cause's own (held-out) reference images allowed beyond its radius. Exchangeable new images
#: fall beyond it with probability <= ALPHA, but new failures are not exchangeable with the run's (another
#: model version, other inputs; the run's noise images calibrate nothing): at 0.05, 6-8 % of new failures of
#: known causes came back unknown on mnist-rc, at 0.01 about 2.5 %, while unseen causes the features
#: separate stayed unknown (benchmarks/RESULTS.md, catalogue section).
ALPHA = 0.01
REFERENCE_FORMAT = 1
FEATURES_FILE = "reference.safetensors"
TABLE_FILE = "reference.parquet"
INFO_FILE = "reference.json"
_FLOAT16_MAX = 60000.0


class CatalogueError(RcaError, ValueError):
    """A run folder lacks what the catalogue needs, or catalogue input is invalid."""


@dataclass
class ReferenceSet:
    """Reference images of a run, read back from its folder.

    Attributes
    ----------
    ids: (N,) image ids (as in clusters.parquet).
    clusters: (N,) int64 cluster of the run each image belongs to.
    features: (N, d) float32.
    info: reference.json.
    """

    ids: np.ndarray
    clusters: np.ndarray
    features: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.features.shape[0])


def choose_rows(labels: np.ndarray, per_cluster: int = PER_CLUSTER, seed: int = 0) -> np.ndarray:
    """Sorted row indices of at most ``per_cluster`` seeded-random members of each cluster (label >= 0)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 104729])
    rows = []
    for cluster in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == cluster)
        if len(members) > per_cluster:
            members = rng.choice(members, per_cluster, replace=False)
        rows.append(members)
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)


def storage_dtype(features: np.ndarray) -> np.dtype:
    """float16 when every value fits its range, else float32."""
    finite = np.abs(features[np.isfinite(features)])
    return np.dtype(np.float16) if finite.size == 0 or finite.max() < _FLOAT16_MAX else np.dtype(np.float32)


def pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Euclidean distances, float64 (torch.cdist in float64: the matrix-product form in
    float32 loses about sqrt(2^-24) x |x| near zero, which would give duplicates a false radius)."""
    import torch

    return torch.cdist(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)),
                       torch.from_numpy(np.ascontiguousarray(b, dtype=np.float64))).numpy()


def k_for(members: int) -> int:
    """Neighbours averaged for a cause with ``members`` reference images (at least 1)."""
    return max(1, min(K_DISTANCE, members - 1))


def calibrate(features: np.ndarray, groups: np.ndarray) -> dict[int, np.ndarray]:
    """Held-out distance of every reference image to the other reference images of its group.

    Parameters
    ----------
    features: (N, d) float32 reference features.
    groups: (N,) int group (cause) of each row; rows with a negative group are ignored.

    Returns
    -------
    group -> (n_g,) float64 scores in the order of the group's rows: the mean distance to its
    ``k_for(n_g)`` nearest other members. A group of one image gets an empty array (no radius).
    """
    out: dict[int, np.ndarray] = {}
    for group in np.unique(groups[groups >= 0]):
        rows = np.flatnonzero(groups == group)
        if len(rows) < 2:
            out[int(group)] = np.zeros(0)
            continue
        d = pairwise(features[rows], features[rows]).astype(np.float64)
        np.fill_diagonal(d, np.inf)
        k = k_for(len(rows))
        out[int(group)] = np.sort(d, axis=1)[:, :k].mean(axis=1)
    return out


def radius(scores: np.ndarray, alpha: float = ALPHA) -> float:
    """The split-conformal (1 - alpha) quantile of a group's held-out scores: the ceil((n + 1)(1 - alpha))-th
    smallest of the n scores (the largest when that rank exceeds n), so that a new image of the group falls
    beyond it with probability at most alpha (Vovk et al. 2005; Lei et al. 2018). 0 for a group without
    scores."""
    n = len(scores)
    if n == 0:
        return 0.0
    rank = max(1, min(n, int(np.ceil((n + 1) * (1.0 - alpha)))))
    return float(np.sort(scores)[rank - 1])


def write_reference(out: Path, run_id: str, features, ids: np.ndarray, labels: np.ndarray, *,
                    seed: int = 0, per_cluster: int = PER_CLUSTER) -> dict[str, Any]:
    """Write the reference set of a run into ``out``; return a summary for run.json.

    Parameters
    ----------
    features: (n, d) features of the clustered-or-noise images (torch tensor or array), rows like ``labels``.
    ids: (n,) image ids of these rows (clusters.parquet ``id``).
    labels: (n,) int final cluster labels, -1 = noise.
    per_cluster: reference images kept per cluster at most.
    """
    from safetensors.numpy import save_file

    from rca_gpu import outputs
    from rca_gpu.device import as_numpy

    rows = choose_rows(labels, per_cluster, seed=seed)
    matrix = np.asarray(as_numpy(features[_index(features, rows)]), dtype=np.float32) if len(rows) else \
        np.zeros((0, int(features.shape[1])), dtype=np.float32)
    dtype = storage_dtype(matrix)
    stored = matrix.astype(dtype)
    clusters = np.asarray(labels, dtype=np.int64)[rows]
    # calibrate on exactly what assignment will read back
    scores = calibrate(stored.astype(np.float32), clusters)
    score_column = np.full(len(rows), np.nan)  # NaN for a cluster of one image: it has no held-out distance
    for group, values in scores.items():
        if len(values):
            score_column[clusters == group] = values
    table = pd.DataFrame({"id": np.asarray(ids)[rows], "cluster": clusters, "score": score_column})
    outputs.write_parquet(out / TABLE_FILE, table, run_id=run_id)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{FEATURES_FILE}.tmp"
    save_file({"features": np.ascontiguousarray(stored)}, str(tmp),
              metadata={"run_id": run_id, "format": str(REFERENCE_FORMAT)})
    tmp.replace(out / FEATURES_FILE)
    by_cluster = {
        str(group): {"reference_images": int((clusters == group).sum()), "radius": round(radius(values), 6)}
        for group, values in scores.items()
    }
    info = {
        "format": REFERENCE_FORMAT,
        "images": int(len(rows)),
        "dims": int(matrix.shape[1]),
        "dtype": str(dtype),
        "per_cluster_max": per_cluster,
        "k_distance": K_DISTANCE,
        "k_vote": K_VOTE,
        "alpha": ALPHA,
        "clusters": by_cluster,
    }
    outputs.write_json(out / INFO_FILE, info, run_id=run_id)
    return {k: v for k, v in info.items() if k != "clusters"}


def _index(features, rows: np.ndarray):
    """Row index in the array library of ``features``."""
    from rca_gpu.device import kind_of, to_kind

    if kind_of(features) == "torch":
        return to_kind(rows, "torch", torch_device=features.device.type)
    return rows


def read_reference(run) -> ReferenceSet:
    """The reference set of an opened run (:class:`rca_gpu.runfolder.RunFolder`).

    Raises
    ------
    CatalogueError
        The run has no reference set (made before runs kept one) or its files belong to another run.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    missing = [name for name in (FEATURES_FILE, TABLE_FILE, INFO_FILE) if not run.has(name)]
    if missing:
        raise CatalogueError(
            f"The run folder {str(run.path)!r} has no {missing[0]}: it was made by a version of rca-gpu that "
            "kept no reference set for assignment. Run `rca-gpu run` again with this version."
        )
    table = run.table(TABLE_FILE)
    info = run.json(INFO_FILE)
    path = run.file(FEATURES_FILE)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CatalogueError(f"Cannot read {str(path)!r}: {exc}. Run `rca-gpu run` again.") from None
    if metadata.get("run_id") != run.run_id:
        raise CatalogueError(
            f"{FEATURES_FILE} in {str(run.path)!r} belongs to run {metadata.get('run_id')}, but run.json to run "
            f"{run.run_id}: the folder mixes files of different runs. Run `rca-gpu run` again into an empty folder."
        )
    features = tensors.get("features")
    if features is None or features.ndim != 2 or len(features) != len(table):
        raise CatalogueError(
            f"{FEATURES_FILE} in {str(run.path)!r} does not match {TABLE_FILE} ({len(table)} rows). "
            "Run `rca-gpu run` again."
        )
    return ReferenceSet(table["id"].to_numpy(), table["cluster"].to_numpy(np.int64),
                        features.astype(np.float32), info)

