"""The extraction engine: stream images through an extractor in batches, account for every row, cache.

Batches are decoded in DataLoader workers (pinned memory on CUDA), moved to the device without blocking,
converted to channels_last, and encoded under ``torch.inference_mode()`` with optional bf16 autocast.

Cache: with a cache folder, results are written as Parquet shards (position, reason, feature, properties)
while the run goes on, each shard atomically. ``properties`` are the image properties of
:mod:`rca_gpu.data.properties`, computed while decoding, so a resumed run has them for cached rows too. A re-run with the same extractor, settings and files reads the shards
and encodes only what is missing, so an interrupted extraction of millions of images resumes where it
stopped instead of starting over.
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
from rca_gpu.errors import TooFewImagesError
from rca_gpu.features import create_extractor
from rca_gpu.features.base import ExtractionContext
from rca_gpu.spec import FeatureSpec

log = logging.getLogger("rca_gpu")

SHARD_ROWS = 8192
CACHE_FORMAT = 2  # 2: shards carry the image properties


@dataclass
class Features:
    """Features of the usable images. ``matrix`` row i belongs to ``positions[i]`` of the FailureSet."""

    matrix: Any  # torch tensor (n_ok, d) float32 on the run's torch device
    positions: np.ndarray
    rejected: dict[int, str]
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    from_cache: int = 0
    #: (n_ok, len(PROPERTY_COLUMNS)) float32, row i for ``positions[i]``; None when no image was read
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
    """Append-only Parquet shards of (position, reason, feature) in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.count = len(list(folder.glob("part-*.parquet")))

    def load(self) -> tuple[dict[int, np.ndarray], dict[int, str], dict[int, np.ndarray]]:
        import pyarrow.parquet as pq

        rows: dict[int, np.ndarray] = {}
        rejected: dict[int, str] = {}
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
        return rows, rejected, properties

    def write(self, positions: list[int], reasons: list[str | None], features: np.ndarray | None, dims: int,
              properties: np.ndarray | None = None) -> None:
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
                   "feature": feature_column}
        if properties is not None:
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
    done: dict[int, np.ndarray] = {}
    done_properties: dict[int, np.ndarray] = {}
    store = None
    if cache_dir is not None:
        key = cache_key(spec, extractor, context)
        store = _ShardStore(Path(cache_dir) / f"features-{spec.name}-{key}")
        done, cached_rejected, done_properties = store.load()
        rejected.update(cached_rejected)
    todo = np.array([p for p in failures.usable_positions if p not in done and p not in rejected], dtype=np.int64)
    from_cache = len(done)
    if from_cache:
        log.info("features: %d of %d images from cache %s", from_cache, len(failures), store.folder)

    device = context.device
    chunks: list[torch.Tensor] = []
    chunk_positions: list[np.ndarray] = []
    chunk_properties: list[np.ndarray] = []
    pending: tuple[list[int], list[str | None], list[Any], list[np.ndarray]] = ([], [], [], [])
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
            for positions, images, bad, properties in loader:
                for position, reason in bad:
                    rejected[position] = reason
                    pending[0].append(position), pending[1].append(reason), pending[2].append(None)
                if images is not None:
                    images = images.to(device, non_blocking=True)
                    if images.ndim == 4:
                        images = images.contiguous(memory_format=torch.channels_last)
                    with grad_mode, (autocast if not extractor.needs_grad else contextlib.nullcontext()):
                        encoded = extractor.encode(images)
                    encoded = encoded.detach().float()
                    dims = int(encoded.shape[1])
                    chunks.append(encoded)
                    chunk_positions.append(as_numpy(positions))
                    chunk_properties.append(properties)
                    if store is not None:
                        pending[0].extend(positions.tolist()), pending[1].extend([None] * len(positions))
                        pending[2].append(encoded), pending[3].append(properties)
                if store is not None and len(pending[0]) >= SHARD_ROWS:
                    _flush(store, pending, dims)
                if advance:
                    advance(len(positions) + len(bad))
        if store is not None and pending[0]:
            _flush(store, pending, dims)

    if done:
        cached_positions = np.fromiter(done.keys(), dtype=np.int64, count=len(done))
        cached = np.stack([done[int(p)] for p in cached_positions]).astype(np.float32)
        chunks.append(to_kind(cached, "torch", torch_device=device.type))
        chunk_positions.append(cached_positions)
        chunk_properties.append(_cached_properties(done_properties, cached_positions))
    if not chunks:
        raise TooFewImagesError(
            f"No usable image among the {len(failures)} input row(s): every one was rejected "
            f"(first reason: {next(iter(rejected.values()), 'unknown')}). See the 'reason' column."
        )
    positions = np.concatenate(chunk_positions)
    order = np.argsort(positions, kind="stable")
    matrix = torch.cat([c.to(device) for c in chunks])[torch.as_tensor(order, device=device)]
    properties = None
    if all(p is not None for p in chunk_properties):
        properties = np.concatenate(chunk_properties).astype(np.float32)[order]
    info = {**extractor.describe(), "dims": int(matrix.shape[1]), "precision": context.precision,
            "from_cache": from_cache, "cache": str(store.folder) if store else None}
    return Features(matrix, positions[order], rejected, info, time.perf_counter() - started, from_cache,
                    properties)


def _cached_properties(done: dict[int, np.ndarray], positions: np.ndarray) -> np.ndarray:
    """Properties of cached rows, NaN where a shard lacks them."""
    from rca_gpu.data.properties import PROPERTY_COLUMNS

    out = np.full((len(positions), len(PROPERTY_COLUMNS)), np.nan, dtype=np.float32)
    for row, position in enumerate(positions.tolist()):
        values = done.get(position)
        if values is not None and len(values) == out.shape[1]:
            out[row] = values
    return out


def _flush(store: _ShardStore, pending, dims: int | None) -> None:
    # tensors: one per good batch, None per bad row, in row order; properties: one per good batch
    positions, reasons, tensors, properties = pending
    good = [as_numpy(t) for t in tensors if t is not None]
    features = np.concatenate(good) if good else None
    values = np.concatenate(properties) if properties and all(p is not None for p in properties) else None
    store.write(list(positions), list(reasons), features, dims or 1, values)
    positions.clear(), reasons.clear(), tensors.clear(), properties.clear()
