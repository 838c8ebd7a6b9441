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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from rca_gpu import outputs
from rca_gpu.data.loading import make_loader
from rca_gpu.engine.device import as_numpy, to_kind
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

    ``skip``: positions this run rejects before any image is read (from the source: a path outside the image
    root, a missing file...). Their cached rows are ignored, features and reasons alike, so a run that reuses
    the cache accounts for every row as a fresh run would, whatever an earlier run with other settings cached.
    """

    def __init__(self, folder: Path, skip: "Iterable[int]" = ()) -> None:
        self.folder = folder
        self.skip = np.fromiter(skip, dtype=np.int64)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only cache folder: one line, not a traceback
            reason = outputs.refused_reason(exc, folder.parent if folder.parent.exists() else Path("/"))
            if reason is None:
                raise
            raise outputs.refusal(folder, reason) from None
        for leftover in [*folder.glob("part-*.tmp"), *folder.glob(".part-*.tmp")]:  # rca_gpu.outputs' names
            with contextlib.suppress(OSError):
                leftover.unlink()
        self.count = len(list(folder.glob("part-*.parquet")))

    def _scan(self) -> tuple[list[tuple[Path, np.ndarray, np.ndarray, int, bool]], dict[int, str], dict[int, str]]:
        """([(shard, positions, good-row mask, dims, has properties)] of the readable shards, {position: reason},
        {position: note}), reading the small columns only."""
        import pyarrow.parquet as pq

        readable: list[tuple[Path, np.ndarray, np.ndarray, int, bool]] = []
        rejected: dict[int, str] = {}
        notes: dict[int, str] = {}
        for shard in sorted(self.folder.glob("part-*.parquet")):
            try:
                schema = pq.read_schema(shard)
                columns = ["position", "reason"] + (["note"] if "note" in schema.names else [])
                table = pq.read_table(shard, columns=columns, memory_map=True)
                dims = int(schema.field("feature").type.list_size)
            except Exception:  # an unreadable shard is recomputed, not trusted
                log.warning("ignoring unreadable cache shard %s", shard)
                continue
            positions = table.column("position").to_numpy()
            reasons = table.column("reason")
            good = reasons.is_null().to_numpy()
            for position, reason in zip(positions[~good].tolist(), reasons.drop_null().to_pylist()):
                rejected[position] = reason
            if len(self.skip):
                good = good & ~np.isin(positions, self.skip)  # rejected up front by this run: not from cache
            if "note" in table.column_names:
                for position, note in zip(positions.tolist(), table.column("note").to_pylist()):
                    if note:
                        notes[position] = note
            readable.append((shard, positions, good, dims, "properties" in schema.names))
        for position in self.skip.tolist():
            rejected.pop(position, None)
            notes.pop(position, None)
        # shards of rejected rows only may carry any width; those with features must agree (the most common)
        widths = [r[3] for r in readable if r[2].any()]
        if widths:
            common = max(set(widths), key=widths.count)
            for shard, _, good, dims, _ in readable:
                if good.any() and dims != common:
                    log.warning("ignoring cache shard %s: %d features per row, not %d", shard, dims, common)
            readable = [r for r in readable if not r[2].any() or r[3] == common]
        return readable, rejected, notes

    def index(self) -> tuple[np.ndarray, dict[int, str]]:
        """(positions with cached features, ascending; {position: reason} of cached rejections), without
        reading any feature values."""
        readable, rejected, _ = self._scan()
        good = np.unique(np.concatenate([r[1][r[2]] for r in readable] or [np.empty(0, np.int64)]))
        for position in good.tolist():
            rejected.pop(position, None)
        return good.astype(np.int64), rejected

    def load(self) -> tuple[np.ndarray, np.ndarray | None, dict[int, str], dict[int, str], np.ndarray | None]:
        """Read every readable shard back: (positions (m,) int64 ascending, features (m, d) float32 or None
        when no row is cached, {position: reason} of the rejected rows, {position: note}, image properties
        (m, len(PROPERTY_COLUMNS)) float32, NaN where a shard lacks them, or None when no row is cached).

        Shards are opened by memory map and decoded one at a time straight into their rows of one
        preallocated matrix (positions are read first, so the rows land sorted), so reading back n cached
        rows peaks at the (n, d) matrix plus one shard, not at n per-row arrays.
        """
        import pyarrow.parquet as pq

        from rca_gpu.data.properties import PROPERTY_COLUMNS

        readable, rejected, notes = self._scan()
        good_positions = [r[1][r[2]] for r in readable]
        if not good_positions or not sum(map(len, good_positions)):
            return np.empty(0, dtype=np.int64), None, rejected, notes, None
        everything = np.concatenate(good_positions)
        # a position cached twice keeps its last copy, as a re-run overwrites
        last = len(everything) - 1 - np.unique(everything[::-1], return_index=True)[1]
        keep = np.zeros(len(everything), dtype=bool)
        keep[last] = True
        sorted_positions = np.sort(everything[keep])
        dims = next(r[3] for r in readable if r[2].any())
        matrix = np.empty((len(sorted_positions), dims), dtype=np.float32)
        properties = np.full((len(sorted_positions), len(PROPERTY_COLUMNS)), np.nan, dtype=np.float32)
        offset = 0
        for shard, positions, good, _, has_properties in readable:
            count = int(good.sum())
            kept = keep[offset:offset + count]
            offset += count
            if not kept.any():
                continue
            names = ["feature", "properties"] if has_properties else ["feature"]
            table = pq.read_table(shard, columns=names, memory_map=True)
            rows = np.searchsorted(sorted_positions, positions[good][kept])
            column = table.column("feature").combine_chunks()
            values = column.values.to_numpy(zero_copy_only=False)[: len(column) * dims].reshape(len(column), dims)
            matrix[rows] = values[good][kept]
            if has_properties:
                column = table.column("properties").combine_chunks()
                width = column.type.list_size
                values = column.values.to_numpy(zero_copy_only=False)[: len(column) * width].reshape(len(column), width)
                if width == properties.shape[1]:
                    properties[rows] = values[good][kept]
        for position in sorted_positions.tolist():
            rejected.pop(position, None)
        return sorted_positions, matrix, rejected, notes, properties

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
        outputs.write_atomic(target, lambda tmp: pq.write_table(table, tmp))  # a temporary name per process
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
    done_positions, done_matrix, done_properties = np.empty(0, dtype=np.int64), None, None
    store = None
    if cache_dir is not None:
        key = cache_key(spec, extractor, context)
        store = _ShardStore(Path(cache_dir) / f"features-{spec.name}-{key}", skip=failures.rejected)
        done_positions, done_matrix, cached_rejected, notes, done_properties = store.load()
        rejected.update(cached_rejected)
    usable = failures.usable_positions
    todo = usable[~np.isin(usable, done_positions) & ~np.isin(usable, np.fromiter(rejected, np.int64, len(rejected)))]
    from_cache = len(done_positions)
    if from_cache:
        log.info("features: %d of %d images from cache %s", from_cache, len(failures), store.folder)

    device = context.device
    # every row that may get features has its row in one preallocated matrix: no per-batch copies to join
    rows = _Rows(np.union1d(done_positions, todo), device)
    if from_cache:
        cached, cached_positions = drop_nonfinite_rows(done_matrix, done_positions, rejected, source=str(spec))
        rows.add(cached_positions, to_kind(cached, "torch", torch_device=device.type),
                 done_properties[np.isin(done_positions, cached_positions)])
        del cached, done_matrix
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
                    rows.add(batch_positions, encoded, batch_properties)
                    if store is not None:
                        pending.add_good(batch_positions, encoded, notes, batch_properties)
                if store is not None and pending.due():
                    pending.flush(store, dims)
                if advance:
                    advance(len(positions) + len(bad))
        if store is not None and pending.rows:
            pending.flush(store, dims)

    info = {**extractor.describe(), "precision": context.precision, "from_cache": from_cache,
            "cache": str(store.folder) if store else None}
    positions, matrix, properties = rows.result()
    if matrix is None:
        # no usable image: the caller reports it, with every row's reason (see rca_gpu.pipeline.run)
        empty = torch.empty((0, dims or 0), dtype=torch.float32, device=device)
        info["dims"] = dims or 0
        return Features(empty, np.empty(0, dtype=np.int64), rejected, info, time.perf_counter() - started,
                        from_cache, notes)
    info["dims"] = int(matrix.shape[1])
    usable_notes = {p: n for p, n in notes.items() if p not in rejected}
    return Features(matrix, positions, rejected, info, time.perf_counter() - started, from_cache,
                    usable_notes, properties)


class _Rows:
    """Feature rows written straight into one preallocated (candidates, d) float32 tensor, each at the row of
    its position, so that extraction holds one copy of the matrix whatever n (no per-batch blocks joined at
    the end: their freed memory would stay in the process). Rows of images rejected on the way are squeezed
    out in place at the end."""

    def __init__(self, candidates: np.ndarray, device) -> None:
        self.candidates = np.asarray(candidates, dtype=np.int64)  # ascending positions that may get features
        self.device = device
        self.matrix = None
        self.properties: np.ndarray | None = None
        self.all_properties = True  # image properties came with every block
        self.filled = np.zeros(len(self.candidates), dtype=bool)

    def add(self, positions: np.ndarray, block: Any, properties: np.ndarray | None = None) -> None:
        import torch

        if not len(positions):
            return
        if self.matrix is None:
            self.matrix = torch.empty((len(self.candidates), int(block.shape[1])), dtype=torch.float32,
                                      device=self.device)
        rows = np.searchsorted(self.candidates, positions)
        self.matrix[torch.as_tensor(rows, device=self.device)] = block.to(device=self.device, dtype=torch.float32)
        self.filled[rows] = True
        if properties is None:
            self.all_properties = False
        elif self.all_properties:
            if self.properties is None:
                self.properties = np.full((len(self.candidates), properties.shape[1]), np.nan, dtype=np.float32)
            self.properties[rows] = properties

    def result(self) -> tuple[np.ndarray, Any, np.ndarray | None]:
        """(positions ascending, (n, d) tensor or None when no row was added, properties (n, p) or None)."""
        import torch

        keep = np.flatnonzero(self.filled)
        if self.matrix is None or not len(keep):
            return self.candidates[keep], None, None
        matrix = self.matrix
        if len(keep) < len(self.candidates):  # block by block, downwards: keep[i] >= i, nothing is overwritten early
            step = max(1, (1 << 22) // max(1, int(matrix.shape[1])))
            for start in range(0, len(keep), step):
                source = torch.as_tensor(keep[start:start + step], device=self.device)
                matrix[start:start + len(source)] = matrix[source]
            matrix = matrix[: len(keep)]
        properties = self.properties[keep] if self.all_properties and self.properties is not None else None
        return self.candidates[keep], matrix, properties


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
