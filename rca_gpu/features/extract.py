"""The extraction engine: stream images through an extractor in batches, account for every row, cache.

Batches are decoded in DataLoader workers (pinned memory on CUDA), moved to the device without blocking,
converted to channels_last, and encoded under ``torch.inference_mode()`` with optional bf16 autocast.

Cache: with a cache folder, results are written as Parquet shards (position, reason, note, feature,
properties) while the run goes on, each shard atomically, after at most SHARD_ROWS rows or SHARD_SECONDS
seconds. A re-run with the same extractor, settings and files reads the shards and encodes only what is
missing, so an interrupted extraction of millions of images resumes where it stopped instead of starting
over. ``properties`` are the image properties of :mod:`rca_gpu.data.properties`, measured while decoding, so
cached rows keep them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rca_gpu.data.loading import make_loader
from rca_gpu.device import as_numpy, to_kind
from rca_gpu.features import create_extractor
from rca_gpu.features.base import ExtractionContext
from rca_gpu.spec import FeatureSpec

log = logging.getLogger("rca_gpu")

#: A cache shard is written after at most this many rows or this many seconds, whichever comes first, so
#: that an interrupted extraction loses at most one shard's work (a minute, or 1,000 images).
SHARD_ROWS = 1000
SHARD_SECONDS = 60.0
CACHE_FORMAT = 3  # 2: shards carry a "note" column, non-finite rows rejected; 3: shards carry "properties"


@dataclass
class Features:
    """Features of the usable images. ``matrix`` row i belongs to ``positions[i]`` of the FailureSet."""

    matrix: Any  # torch tensor (n_ok, d) float32 on the run's torch device
    positions: np.ndarray
    rejected: dict[int, str]
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    from_cache: int = 0
    notes: dict[int, str] = field(default_factory=dict)  # position -> how a usable image was read
    #: (n_ok, len(PROPERTY_COLUMNS)) float32 image properties, row i for ``positions[i]``; None when the
    #: features were not extracted from images
    properties: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.matrix.shape[0])


def cache_key(spec: FeatureSpec, extractor, context: ExtractionContext) -> str:
    """Hash of everything that determines the features."""
    model_stamp = None
    if context.model_ref:
        path = Path(context.model_ref.rpartition("=")[2] or context.model_ref)
        model_stamp = [context.model_ref, *(list(_stat(path)) if path.is_file() else [])]
    payload = {
        "format": CACHE_FORMAT,
        "spec": str(spec),
        "version": extractor.version,
        "token": extractor.cache_token(),
        "precision": context.precision,
        "model": model_stamp,
        "seed": context.seed,
        "files": context.failures.fingerprint(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


class _ShardStore:
    """Append-only Parquet shards of (position, reason, note, feature) in one folder.

    Each shard is written to a temporary name and renamed, so a killed process leaves either a whole shard or
    none; leftover temporary files are removed when the store is opened. Rows with a reason are rejected
    (their feature is null); ``note`` says how a usable image was read (e.g. the first frame of several).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob("part-*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        self.count = len(list(folder.glob("part-*.parquet")))

    def load(self) -> tuple[dict[int, np.ndarray], dict[int, str], dict[int, str], dict[int, np.ndarray]]:
        """(position -> feature row, position -> rejection reason, position -> note, position -> image
        properties) of every readable shard."""
        import pyarrow.parquet as pq

        rows: dict[int, np.ndarray] = {}
        rejected: dict[int, str] = {}
        notes: dict[int, str] = {}
        properties: dict[int, np.ndarray] = {}
        for shard in sorted(self.folder.glob("part-*.parquet")):
            try:
                table = pq.read_table(shard)
            except Exception:  # an unreadable shard is recomputed, not trusted
                log.warning("ignoring unreadable cache shard %s", shard)
                continue
            positions = table.column("position").to_numpy()
            reasons = table.column("reason").to_pylist()
            features = table.column("feature")
            good = [i for i, r in enumerate(reasons) if r is None]
            if good:
                flat = features.take(good).combine_chunks().flatten().to_numpy(zero_copy_only=False)
                matrix = flat.reshape(len(good), -1)
                for row, i in enumerate(good):
                    rows[int(positions[i])] = matrix[row]
                if "properties" in table.column_names:
                    flat = table.column("properties").take(good).combine_chunks().flatten()
                    values = flat.to_numpy(zero_copy_only=False).reshape(len(good), -1)
                    for row, i in enumerate(good):
                        properties[int(positions[i])] = values[row]
            for i, reason in enumerate(reasons):
                if reason is not None:
                    rejected[int(positions[i])] = reason
            if "note" in table.column_names:
                for i, note in enumerate(table.column("note").to_pylist()):
                    if note:
                        notes[int(positions[i])] = note
        return rows, rejected, notes, properties

    def write(self, positions: list[int], reasons: list[str | None], notes: list[str | None],
              features: np.ndarray | None, dims: int, properties: np.ndarray | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = len(positions)
        values = np.zeros((n, dims), dtype=np.float32)
        good = [i for i, r in enumerate(reasons) if r is None]
        if good and features is not None:
            values[good] = features
        mask = pa.array([r is not None for r in reasons])
        feature_column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dims, mask=mask)
        columns = {"position": pa.array(positions, pa.int64()), "reason": pa.array(reasons, pa.string()),
                   "note": pa.array(notes, pa.string()), "feature": feature_column}
        if properties is not None and good:  # one row per good row, like the features
            width = properties.shape[1]
            table_values = np.full((n, width), np.nan, dtype=np.float32)
            table_values[good] = properties
            columns["properties"] = pa.FixedSizeListArray.from_arrays(pa.array(table_values.reshape(-1)), width,
                                                                      mask=mask)
        table = pa.table(columns)
        target = self.folder / f"part-{self.count:06d}.parquet"
        tmp = target.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, target)
        self.count += 1


def nonfinite_rows(matrix: Any) -> np.ndarray:
    """Boolean mask (n,) of the rows of a (n, d) torch tensor or NumPy array holding NaN or +-inf."""
    if isinstance(matrix, np.ndarray):
        return ~np.isfinite(matrix).all(axis=1) if matrix.size else np.zeros(len(matrix), dtype=bool)
    import torch

    if matrix.numel() == 0:
        return np.zeros(int(matrix.shape[0]), dtype=bool)
    return as_numpy((~torch.isfinite(matrix)).any(dim=1)).astype(bool)


def drop_nonfinite_rows(matrix: Any, positions: np.ndarray, rejected: dict[int, str], *,
                        source: str) -> tuple[Any, np.ndarray]:
    """Remove the feature rows that hold NaN or +-inf, recording each as rejected with the reason.

    The one place where non-finite features are caught, for every source of features (extractors, cached
    shards, embeddings a user supplies): one bad row is rejected, the rest are clustered.

    Parameters
    ----------
    matrix:
        (n, d) float features, a torch tensor (any device) or a NumPy array.
    positions:
        (n,) int64 row positions in the FailureSet, aligned with ``matrix``.
    rejected:
        position -> reason; updated in place with "features not finite (NaN or inf) from <source>".
    source:
        What produced the features, for the reason (e.g. the feature spec).

    Returns
    -------
    (matrix, positions)
        Without the non-finite rows (the inputs themselves when every row is finite).
    """
    bad = nonfinite_rows(matrix)
    if not bad.any():
        return matrix, positions
    positions = np.asarray(positions)
    for position in positions[bad]:
        rejected[int(position)] = f"features not finite (NaN or inf) from {source}"
    keep = np.flatnonzero(~bad)
    if isinstance(matrix, np.ndarray):
        return matrix[keep], positions[keep]
    import torch

    return matrix[torch.as_tensor(keep, device=matrix.device)], positions[keep]


def extract_features(
    spec: FeatureSpec,
    context: ExtractionContext,
    *,
    cache_dir: Path | None = None,
) -> Features:
    """Run the extractor over every usable image of ``context.failures``."""
    import torch

    started = time.perf_counter()
    failures = context.failures
    extractor = create_extractor(spec, context)
    extractor.prepare()
    transform = extractor.transform()
    rejected: dict[int, str] = dict(failures.rejected)
    notes: dict[int, str] = {}
    done: dict[int, np.ndarray] = {}
    done_properties: dict[int, np.ndarray] = {}
    store = None
    if cache_dir is not None:
        key = cache_key(spec, extractor, context)
        store = _ShardStore(Path(cache_dir) / f"features-{spec.name}-{key}")
        done, cached_rejected, notes, done_properties = store.load()
        rejected.update(cached_rejected)
    todo = np.array([p for p in failures.usable_positions if p not in done and p not in rejected], dtype=np.int64)
    from_cache = len(done)
    if from_cache:
        log.info("features: %d of %d images from cache %s", from_cache, len(failures), store.folder)

    device = context.device
    chunks: list[torch.Tensor] = []
    chunk_positions: list[np.ndarray] = []
    chunk_properties: list[np.ndarray | None] = []
    pending = _Pending()
    dims = None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=context.precision == "bf16")
    grad_mode = contextlib.nullcontext() if extractor.needs_grad else torch.inference_mode()
    reporter = context.reporter
    if len(todo):
        loader = make_loader(
            failures, todo, transform, extractor.image_mode,
            batch_size=context.batch_size, workers=context.workers, pin_memory=device.type == "cuda",
            properties=True,
        )
        progress = reporter.task(f"features {spec}", total=len(todo)) if reporter else contextlib.nullcontext(None)
        with progress as advance:
            for positions, images, bad, batch_notes, batch_properties in loader:
                notes.update(batch_notes)
                for position, reason in bad:
                    rejected[position] = reason
                    pending.add(position, reason)
                if images is not None:
                    images = images.to(device, non_blocking=True)
                    if images.ndim == 4:
                        images = images.contiguous(memory_format=torch.channels_last)
                    with grad_mode, (autocast if not extractor.needs_grad else contextlib.nullcontext()):
                        encoded = extractor.encode(images)
                    encoded = encoded.detach().float()
                    dims = int(encoded.shape[1])
                    batch_positions = as_numpy(positions).astype(np.int64)
                    decoded_positions = batch_positions
                    before = set(rejected)
                    encoded, batch_positions = drop_nonfinite_rows(encoded, batch_positions, rejected,
                                                                   source=str(spec))
                    if batch_properties is not None and len(batch_positions) < len(decoded_positions):
                        batch_properties = batch_properties[np.isin(decoded_positions, batch_positions)]
                    for position in set(rejected) - before:
                        pending.add(position, rejected[position])
                    chunks.append(encoded)
                    chunk_positions.append(batch_positions)
                    chunk_properties.append(batch_properties)
                    if store is not None:
                        pending.add_good(batch_positions, encoded, notes, batch_properties)
                if store is not None and pending.due():
                    pending.flush(store, dims)
                if advance:
                    advance(len(positions) + len(bad))
        if store is not None and pending.rows:
            pending.flush(store, dims)

    if done:
        cached_positions = np.fromiter(done.keys(), dtype=np.int64, count=len(done))
        cached = np.stack([done[int(p)] for p in cached_positions]).astype(np.float32)
        cached, cached_positions = drop_nonfinite_rows(cached, cached_positions, rejected, source=str(spec))
        chunks.append(to_kind(cached, "torch", torch_device=device.type))
        chunk_positions.append(cached_positions)
        chunk_properties.append(_cached_properties(done_properties, cached_positions))
    info = {**extractor.describe(), "precision": context.precision, "from_cache": from_cache,
            "cache": str(store.folder) if store else None}
    if not chunks or not sum(len(p) for p in chunk_positions):
        # no usable image: the caller reports it, with every row's reason (see rca_gpu.pipeline.run)
        empty = torch.empty((0, dims or 0), dtype=torch.float32, device=device)
        info["dims"] = dims or 0
        return Features(empty, np.empty(0, dtype=np.int64), rejected, info, time.perf_counter() - started,
                        from_cache, notes)
    positions = np.concatenate(chunk_positions)
    order = np.argsort(positions, kind="stable")
    matrix = torch.cat([c.to(device) for c in chunks])[torch.as_tensor(order, device=device)]
    info["dims"] = int(matrix.shape[1])
    usable_notes = {p: n for p, n in notes.items() if p not in rejected}
    properties = None
    if chunk_properties and all(p is not None for p in chunk_properties):
        properties = np.concatenate(chunk_properties).astype(np.float32)[order]
    return Features(matrix, positions[order], rejected, info, time.perf_counter() - started, from_cache,
                    usable_notes, properties)


def _cached_properties(done: dict[int, np.ndarray], positions: np.ndarray) -> np.ndarray:
    """Image properties of cached rows, NaN where a shard lacks them."""
    from rca_gpu.data.properties import PROPERTY_COLUMNS

    out = np.full((len(positions), len(PROPERTY_COLUMNS)), np.nan, dtype=np.float32)
    for row, position in enumerate(np.asarray(positions).tolist()):
        values = done.get(position)
        if values is not None and len(values) == out.shape[1]:
            out[row] = values
    return out


class _Pending:
    """Rows extracted since the last shard, flushed by rows (SHARD_ROWS) or by time (SHARD_SECONDS)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str | None, str | None]] = []  # (position, reason, note) in shard order
        self.tensors: list[Any] = []  # one (b, d) block per good batch, in the order of the good rows
        self.properties: list[np.ndarray | None] = []  # one (b, p) block of image properties per good batch
        self.since = time.monotonic()

    def add(self, position: int, reason: str) -> None:
        self.rows.append((int(position), reason, None))

    def add_good(self, positions: np.ndarray, encoded: Any, notes: dict[int, str],
                 properties: np.ndarray | None = None) -> None:
        if len(positions):
            self.rows.extend((int(p), None, notes.get(int(p))) for p in positions)
            self.tensors.append(encoded)
            self.properties.append(properties)

    def due(self) -> bool:
        return len(self.rows) >= SHARD_ROWS or (
            bool(self.rows) and time.monotonic() - self.since >= SHARD_SECONDS
        )

    def flush(self, store: _ShardStore, dims: int | None) -> None:
        good = [as_numpy(t) for t in self.tensors]
        features = np.concatenate(good) if good else None
        positions, reasons, notes = (list(column) for column in zip(*self.rows))
        complete = bool(self.properties) and all(p is not None for p in self.properties)
        properties = np.concatenate(self.properties) if complete else None
        store.write(positions, reasons, notes, features, dims or 1, properties)
        self.rows, self.tensors, self.properties, self.since = [], [], [], time.monotonic()
