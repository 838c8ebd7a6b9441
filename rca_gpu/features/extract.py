"""The extraction engine: stream images through an extractor in batches, account for every row, cache.

Batches are decoded in DataLoader workers (pinned memory on CUDA), moved to the device without blocking,
converted to channels_last, and encoded under ``torch.inference_mode()`` with optional bf16 autocast.

Cache: with a cache folder, results are written as Parquet shards (position, reason, feature) while the
run goes on, each shard atomically. A re-run with the same extractor, settings and files reads the shards
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
CACHE_FORMAT = 1


@dataclass
class Features:
    """Features of the usable images. ``matrix`` row i belongs to ``positions[i]`` of the FailureSet."""

    matrix: Any  # torch tensor (n_ok, d) float32 on the run's torch device
    positions: np.ndarray
    rejected: dict[int, str]
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    from_cache: int = 0

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

    def _scan(self) -> tuple[list[tuple[Path, np.ndarray, np.ndarray, int]], dict[int, str]]:
        """([(shard, positions, good-row mask, dims)] of the readable shards, {position: reason})."""
        import pyarrow.parquet as pq

        readable: list[tuple[Path, np.ndarray, np.ndarray, int]] = []
        rejected: dict[int, str] = {}
        for shard in sorted(self.folder.glob("part-*.parquet")):
            try:
                table = pq.read_table(shard, columns=["position", "reason"], memory_map=True)
                dims = int(pq.read_schema(shard).field("feature").type.list_size)
            except Exception:  # an unreadable shard is recomputed, not trusted
                log.warning("ignoring unreadable cache shard %s", shard)
                continue
            positions = table.column("position").to_numpy()
            reasons = table.column("reason")
            good = reasons.is_null().to_numpy()
            for position, reason in zip(positions[~good].tolist(), reasons.drop_null().to_pylist()):
                rejected[position] = reason
            readable.append((shard, positions, good, dims))
        # shards of rejected rows only may carry any width; those with features must agree (the most common)
        widths = [dims for _, _, good, dims in readable if good.any()]
        if widths:
            common = max(set(widths), key=widths.count)
            for shard, _, good, dims in readable:
                if good.any() and dims != common:
                    log.warning("ignoring cache shard %s: %d features per row, not %d", shard, dims, common)
            readable = [r for r in readable if not r[2].any() or r[3] == common]
        return readable, rejected

    def index(self) -> tuple[np.ndarray, dict[int, str]]:
        """(positions with cached features, ascending; {position: reason} of cached rejections), without
        reading any feature values."""
        readable, rejected = self._scan()
        good = np.unique(np.concatenate([p[g] for _, p, g, _ in readable] or [np.empty(0, np.int64)]))
        for position in good.tolist():
            rejected.pop(position, None)
        return good.astype(np.int64), rejected

    def load(self) -> tuple[np.ndarray, np.ndarray | None, dict[int, str]]:
        """Read every readable shard back: (positions (m,) int64 ascending, features (m, d) float32 or None
        when no row is cached, {position: reason} of the rejected rows).

        Shards are opened by memory map and decoded one at a time straight into their rows of one
        preallocated matrix (positions are read first, so the rows land sorted), so reading back n cached
        rows peaks at the (n, d) matrix plus one shard, not at n per-row arrays.
        """
        import pyarrow.parquet as pq

        readable, rejected = self._scan()
        good_positions = [positions[good] for _, positions, good, _ in readable]
        if not good_positions or not sum(map(len, good_positions)):
            return np.empty(0, dtype=np.int64), None, rejected
        everything = np.concatenate(good_positions)
        # a position cached twice keeps its last copy, as a re-run overwrites
        last = len(everything) - 1 - np.unique(everything[::-1], return_index=True)[1]
        keep = np.zeros(len(everything), dtype=bool)
        keep[last] = True
        sorted_positions = np.sort(everything[keep])
        dims = next(d for _, _, good, d in readable if good.any())
        matrix = np.empty((len(sorted_positions), dims), dtype=np.float32)
        offset = 0
        for shard, positions, good, _ in readable:
            count = int(good.sum())
            kept = keep[offset:offset + count]
            offset += count
            if not kept.any():
                continue
            column = pq.read_table(shard, columns=["feature"], memory_map=True).column("feature").combine_chunks()
            values = column.values.to_numpy(zero_copy_only=False)[: len(column) * dims].reshape(len(column), dims)
            rows = np.searchsorted(sorted_positions, positions[good][kept])
            matrix[rows] = values[good][kept]
        for position in sorted_positions.tolist():
            rejected.pop(position, None)
        return sorted_positions, matrix, rejected

    def write(self, positions: list[int], reasons: list[str | None], features: np.ndarray | None, dims: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = len(positions)
        values = np.zeros((n, dims), dtype=np.float32)
        good = [i for i, r in enumerate(reasons) if r is None]
        if good and features is not None:
            values[good] = features
        mask = pa.array([r is not None for r in reasons])
        feature_column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dims, mask=mask)
        table = pa.table(
            {"position": pa.array(positions, pa.int64()), "reason": pa.array(reasons, pa.string()),
             "feature": feature_column}
        )
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
    store = None
    if cache_dir is not None:
        key = cache_key(spec, extractor, context)
        store = _ShardStore(Path(cache_dir) / f"features-{spec.name}-{key}")
        done_positions, done_matrix, cached_rejected = store.load()
        rejected.update(cached_rejected)
    else:
        done_positions, done_matrix = np.empty(0, dtype=np.int64), None
    usable = failures.usable_positions
    todo = usable[~np.isin(usable, done_positions) & ~np.isin(usable, np.fromiter(rejected, np.int64, len(rejected)))]
    from_cache = len(done_positions)
    if from_cache:
        log.info("features: %d of %d images from cache %s", from_cache, len(failures), store.folder)

    device = context.device
    chunks: list[torch.Tensor] = []
    chunk_positions: list[np.ndarray] = []
    pending: tuple[list[int], list[str | None], list[Any]] = ([], [], [])
    dims = None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=context.precision == "bf16")
    grad_mode = contextlib.nullcontext() if extractor.needs_grad else torch.inference_mode()
    reporter = context.reporter
    if len(todo):
        loader = make_loader(
            failures, todo, transform, extractor.image_mode,
            batch_size=context.batch_size, workers=context.workers, pin_memory=device.type == "cuda",
        )
        progress = reporter.task(f"features {spec}", total=len(todo)) if reporter else contextlib.nullcontext(None)
        with progress as advance:
            for positions, images, bad in loader:
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
                    if store is not None:
                        pending[0].extend(positions.tolist()), pending[1].extend([None] * len(positions))
                        pending[2].append(encoded)
                if store is not None and len(pending[0]) >= SHARD_ROWS:
                    _flush(store, pending, dims)
                if advance:
                    advance(len(positions) + len(bad))
        if store is not None and pending[0]:
            _flush(store, pending, dims)

    if from_cache:
        chunks.append(to_kind(done_matrix, "torch", torch_device=device.type))
        chunk_positions.append(done_positions)
        del done_matrix
    if not chunks:
        raise TooFewImagesError(
            f"No usable image among the {len(failures)} input row(s): every one was rejected "
            f"(first reason: {next(iter(rejected.values()), 'unknown')}). See the 'reason' column."
        )
    positions, matrix = _assemble(chunks, chunk_positions, device)
    info = {**extractor.describe(), "dims": int(matrix.shape[1]), "precision": context.precision,
            "from_cache": from_cache, "cache": str(store.folder) if store else None}
    return Features(matrix, positions, rejected, info, time.perf_counter() - started, from_cache)


def _assemble(chunks: list, chunk_positions: list[np.ndarray], device) -> tuple[np.ndarray, Any]:
    """(positions ascending, (n, d) tensor on ``device``) from row blocks in any order.

    Each block is copied into its rows of one preallocated tensor and released, so assembling peaks near one
    copy of the matrix; a single block already in order (everything read back from the cache) is used as is.
    """
    import torch

    positions = np.concatenate(chunk_positions)
    order = np.argsort(positions, kind="stable")
    if len(chunks) == 1 and np.array_equal(order, np.arange(len(order))):
        return positions, chunks.pop().to(device)
    destination = np.empty_like(order)
    destination[order] = np.arange(len(order))
    matrix = torch.empty((len(positions), int(chunks[0].shape[1])), dtype=torch.float32, device=device)
    offset = 0
    for i in range(len(chunks)):
        block, chunks[i] = chunks[i], None
        rows = torch.as_tensor(destination[offset:offset + len(block)], device=device)
        matrix[rows] = block.to(device=device, dtype=torch.float32)
        offset += len(block)
    return positions[order], matrix


def _flush(store: _ShardStore, pending, dims: int | None) -> None:
    positions, reasons, tensors = pending  # tensors: one per good batch, None per bad row, in row order
    good = [as_numpy(t) for t in tensors if t is not None]
    features = np.concatenate(good) if good else None
    store.write(list(positions), list(reasons), features, dims or 1)
    positions.clear(), reasons.clear(), tensors.clear()
