"""The reference set a run keeps so that new images can be assigned to its causes later.

Assignment works in the feature space of the run (no reducer is stored, so nothing is unpickled): a new
image's features are compared with a bounded sample of each cluster's features. Its cause is voted by its
nearest reference images; it is ``unknown`` when it lies farther from every reference image than the
catalogue's radius, calibrated on the reference images themselves (HUDD keeps a new image apart when it falls
outside the clusters' radius; here the radius is a quantile of held-out distances, as in split-conformal
prediction).

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
    held-out distance to the nearest other reference image, see :func:`calibrate`).
``reference.json``
    The settings (K_VOTE, ALPHA), the storage dtype, the catalogue's radius at ALPHA and, per cluster, its
    reference count.

Open-set score of an image: the Euclidean distance to the nearest reference image of the cause it is voted
to (usually its nearest reference image of all).
Calibration: the same distance for every reference image to the other reference images (leave one out;
images alone in their cluster are not scored, their distance is a gap between causes); the
radius is the split-conformal (1 - ALPHA) quantile of these scores (:func:`radius`), so at most about ALPHA of
new images exchangeable with the reference images lie beyond it. One radius for the catalogue, rather than one
per cluster, because a diffuse cluster's own radius is wide enough to take in the failures of an unseen cause
next to it: on the catalogue benchmarks (benchmarks/open_set_scores.py, RESULTS.md) the one radius kept
more of 11 of the 14 left-out causes apart (the other 3 stayed all unknown under both) at the same alpha,
while 1.5 % instead of 2.5 % of mnist-rc's known-cause failures came back unknown (2.0 % instead of 1.8 %
on shapes-sim).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu.errors import RcaError
from rca_gpu.runfiles import REFERENCE_FEATURES_FILE, REFERENCE_INFO_FILE, REFERENCE_TABLE_FILE

#: Reference images kept per cluster (seeded uniform sample of its members when larger).
PER_CLUSTER = 256
#: Reference images that vote for the cause of a new image.
K_VOTE = 10
#: Share of the (held-out) reference images allowed beyond the radius. Exchangeable new images fall beyond
#: it with probability <= ALPHA, but new failures are not exchangeable with the run's (another model version,
#: other inputs; the run's noise images calibrate nothing): at 0.05, 4-7 % of new failures of known causes
#: came back unknown on the catalogue benchmarks, at 0.01 about 1.5 %, while unseen causes the features
#: separate stayed unknown (benchmarks/RESULTS.md, catalogue section).
ALPHA = 0.01
#: 2: one radius for the catalogue (nearest reference image); 1 had one radius per cluster. Both read the
#: same way: assignment calibrates again from the stored features.
REFERENCE_FORMAT = 2
FEATURES_FILE = REFERENCE_FEATURES_FILE
TABLE_FILE = REFERENCE_TABLE_FILE
INFO_FILE = REFERENCE_INFO_FILE
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


def calibrate(features: np.ndarray, groups: np.ndarray, *, block: int = 2048) -> np.ndarray:
    """Held-out score of every reference image: its distance to the nearest other reference image (of any
    group).

    Parameters
    ----------
    features: (N, d) float32 reference features.
    groups: (N,) int group (cause) of each row. A row alone in its group gets no score: its distance to
        the others measures the gap between causes, not the spread of one.
    block: rows compared at once (memory of one (block, N) float64 distance matrix).

    Returns
    -------
    (N,) float64 distances in feature units, NaN for rows without a score.
    """
    n = len(features)
    out = np.full(n, np.nan)
    values, counts = np.unique(np.asarray(groups), return_counts=True)
    scored = np.flatnonzero(np.isin(groups, values[counts >= 2]))
    for start in range(0, len(scored), block):
        rows = scored[start:start + block]
        d = pairwise(features[rows], features)
        d[np.arange(len(rows)), rows] = np.inf
        out[rows] = d.min(axis=1)
    return out


def radius(scores: np.ndarray, alpha: float = ALPHA) -> float:
    """The split-conformal (1 - alpha) quantile of held-out scores: the ceil((n + 1)(1 - alpha))-th smallest of
    the n scores (the largest when that rank exceeds n), so that a new image exchangeable with the scored ones
    falls beyond it with probability at most alpha (Vovk et al. 2005; Lei et al. 2018). NaN scores are
    ignored; 0 without scores."""
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
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
    from rca_gpu.engine.device import as_numpy

    rows = choose_rows(labels, per_cluster, seed=seed)
    matrix = np.asarray(as_numpy(features[_index(features, rows)]), dtype=np.float32) if len(rows) else \
        np.zeros((0, int(features.shape[1])), dtype=np.float32)
    dtype = storage_dtype(matrix)
    stored = matrix.astype(dtype)
    clusters = np.asarray(labels, dtype=np.int64)[rows]
    # calibrate on exactly what assignment will read back
    scores = calibrate(stored.astype(np.float32), clusters)  # NaN for a cluster of one image
    table = pd.DataFrame({"id": np.asarray(ids)[rows], "cluster": clusters, "score": scores})
    outputs.write_parquet(out / TABLE_FILE, table, run_id=run_id)
    outputs.write_atomic(out / FEATURES_FILE, lambda tmp: save_file(  # safetensors alone makes it 0600
        {"features": np.ascontiguousarray(stored)}, str(tmp),
        metadata={"run_id": run_id, "format": str(REFERENCE_FORMAT)}))
    by_cluster = {str(group): {"reference_images": int((clusters == group).sum())} for group in np.unique(clusters)}
    info = {
        "format": REFERENCE_FORMAT,
        "images": int(len(rows)),
        "dims": int(matrix.shape[1]),
        "dtype": str(dtype),
        "per_cluster_max": per_cluster,
        "k_vote": K_VOTE,
        "alpha": ALPHA,
        "radius": round(radius(scores), 6),
        "clusters": by_cluster,
    }
    outputs.write_json(out / INFO_FILE, info, run_id=run_id)
    return {k: v for k, v in info.items() if k != "clusters"}


def _index(features, rows: np.ndarray):
    """Row index in the array library of ``features``."""
    from rca_gpu.engine.device import kind_of, to_kind

    if kind_of(features) == "torch":
        return to_kind(rows, "torch", torch_device=features.device.type)
    return rows


def read_reference(run) -> ReferenceSet:
    """The reference set of an opened run (:class:`rca_gpu.runfolder.RunFolder`), each file read through its
    schema (:mod:`rca_gpu.runfiles`): reference.json (settings), reference.parquet (ids, clusters, scores),
    and reference.safetensors, whose header must declare one float16 or float32 ``features`` tensor of shape
    (rows of reference.parquet, the run's feature dimensions) before its data is read; the features must be
    finite.

    Raises
    ------
    CatalogueError
        The run has no reference set (made before runs kept one) or its files belong to another run.
    rca_gpu.runfiles.RunFileError
        A file breaks its schema: wrong dtype (e.g. int8) or width, rows that do not match, non-finite values.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from rca_gpu.runfiles import RUN_FIX, RunFileError, check_reference_tensors

    missing = [name for name in (FEATURES_FILE, TABLE_FILE, INFO_FILE) if not run.has(name)]
    if missing:
        raise CatalogueError(
            f"The run folder {str(run.path)!r} has no {missing[0]}: it was made by a version of rca-gpu that "
            "kept no reference set for assignment. Run `rca-gpu run` again with this version."
        )
    table = run.table(TABLE_FILE)
    info = run.json(INFO_FILE)
    path = run.file(FEATURES_FILE)
    dims = (run.info.get("features") or {}).get("dims")
    if dims is not None and info["dims"] != dims:
        raise RunFileError(f"{INFO_FILE} in {str(run.path)!r} has dims = {info['dims']}, but the run's features "
                           f"have {dims} dimensions (run.json features.dims). {RUN_FIX}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CatalogueError(f"Cannot read {str(path)!r}: {exc}. Run `rca-gpu run` again.") from None
    if metadata.get("run_id") != run.run_id:
        raise CatalogueError(
            f"{FEATURES_FILE} in {str(run.path)!r} belongs to run {metadata.get('run_id')}, but run.json to run "
            f"{run.run_id}: the folder mixes files of different runs. Run `rca-gpu run` again into an empty folder."
        )
    check_reference_tensors(path, rows=len(table), dims=info["dims"], dtype=info["dtype"])
    try:
        features = load_file(str(path))["features"].astype(np.float32)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CatalogueError(f"Cannot read {str(path)!r}: {exc}. Run `rca-gpu run` again.") from None
    if not np.isfinite(features).all():
        raise RunFileError(f"{FEATURES_FILE} in {str(run.path)!r} holds values that are not finite (NaN or "
                           f"infinite); a run stores finite features only. {RUN_FIX}")
    clusters = table["cluster"].to_numpy(np.int64)
    scores = table["score"].to_numpy(np.float64)
    if np.isinf(scores).any() or (scores[np.isfinite(scores)] < 0).any():
        raise RunFileError(f"{TABLE_FILE} in {str(run.path)!r} has a negative or infinite score; scores are "
                           f"distances (NaN where none). {RUN_FIX}")
    return ReferenceSet(table["id"].to_numpy(), clusters, features, info)
