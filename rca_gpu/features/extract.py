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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rca_gpu import outputs
from rca_gpu.data.decoding import DECODE_VERSION, depends_on_budget, image_budget
from rca_gpu.data.loading import make_loader
from rca_gpu.data.sources import file_digest
from rca_gpu.engine.device import as_numpy, to_kind
from rca_gpu.features import create_extractor
from rca_gpu.features.base import ExtractionContext
from rca_gpu.spec import FeatureSpec

log = logging.getLogger("rca_gpu")

#: A cache shard is written after at most this many rows or this many seconds, whichever comes first, so
#: that an interrupted extraction loses at most one shard's work (a minute, or 1,000 images).
SHARD_ROWS = 1000
SHARD_SECONDS = 60.0
#: 2: shards carry a "note" column, non-finite rows rejected; 3: shards carry "properties"; 4: shards carry
#: their key (KEY_METADATA), rows decided by the memory budget are not reused.
CACHE_FORMAT = 4
#: Parquet schema metadata key of a shard holding the cache key it was written for.
KEY_METADATA = b"rca_gpu.cache_key"


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
        """Usable images: the matrix's rows (``positions``' length once the matrix is released)."""
        return int(self.matrix.shape[0]) if self.matrix is not None else len(self.positions)

    def release_matrix(self) -> None:
        """Let go of the matrix (``matrix`` becomes None) for the steps that only need the rows' positions,
        reasons and properties: a run's outputs and evaluation. 10M x 256 float32 is 9.5 GiB."""
        self.matrix = None


def cache_key(spec: FeatureSpec, extractor, context: ExtractionContext) -> str:
    """Hash (20 hex digits) of everything that determines the features of a source's rows.

    * the inputs: the bytes of every image (:meth:`rca_gpu.data.sources.FailureSet.fingerprint`, blake2b);
    * the extractor: its spec (name, layer, parameters), code version and own token, the bytes of a weights
      file it names, its preprocessing (the transform's description and the decoding rules' version,
      :data:`rca_gpu.data.decoding.DECODE_VERSION`), the image mode, the precision and the seed;
    * the DNN under test: the bytes of the model file, or of the weights and of the factory's module
      (:func:`model_identity`);
    * the shard layout (:data:`CACHE_FORMAT`).

    Every shard carries the key in its Parquet metadata (:data:`KEY_METADATA`) and is refused when it differs.
    """
    payload = {
        "format": CACHE_FORMAT,
        "decoding": DECODE_VERSION,
        "spec": str(spec),
        "version": extractor.version,
        "token": extractor.cache_token(),
        "weights": _named_file_digest(spec.params.get("weights")),
        "preprocessing": preprocessing_identity(extractor.transform()),
        "image_mode": extractor.image_mode,
        "precision": context.precision,
        "model": model_identity(context.model_ref),
        "seed": context.seed,
        "files": context.failures.fingerprint(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _named_file_digest(value: Any) -> str | None:
    """The content digest of the file ``value`` names, or None when it names none (e.g. "IMAGENET1K_V1")."""
    if not isinstance(value, str) or not value.strip():
        return None
    path = Path(value).expanduser()
    return file_digest(path) if path.is_file() else None


def model_identity(model_ref: str | None) -> list[str | None] | None:
    """What identifies the DNN under test ``model_ref`` (a model file, or ``package.module:factory`` with an
    optional ``=weights``): [the reference, the digest of the file's bytes, the digest of the factory module's
    source file]. The module is looked up among the imported ones (the extractor has loaded the model)."""
    if not model_ref:
        return None
    import sys

    if Path(model_ref).expanduser().is_file():
        factory, weights = "", model_ref
    else:  # package.module:factory[=weights]; module names hold no "="
        factory, _, weights = model_ref.partition("=")
    module = sys.modules.get(factory.partition(":")[0]) if factory else None
    source = getattr(module, "__file__", None)
    return [model_ref, _named_file_digest(weights), file_digest(source) if source else None]


def preprocessing_identity(transform: Any) -> str:
    """The description of an extractor's per-image transform (its repr, and the attributes of a plain object,
    memory addresses left out), so that a change of sizes or normalisation changes the cache key."""
    import re

    described = repr(transform)
    attributes = getattr(transform, "__dict__", None)
    if attributes:
        described += repr(sorted((k, repr(v)) for k, v in attributes.items()))
    return re.sub(r" at 0x[0-9a-fA-F]+", "", described)


class _ShardStore:
    """Append-only Parquet shards of (position, reason, note, feature) in one folder.

    Each shard is written to a temporary name and renamed, so a killed process leaves either a whole shard or
    none; leftover temporary files are removed when the store is opened. Rows with a reason are rejected
    (their feature is null); ``note`` says how a usable image was read (e.g. the first frame of several).

    ``skip``: positions this run rejects before any image is read (from the source: a path outside the image
    root, a missing file...). Their cached rows are ignored, features and reasons alike, so a run that reuses
    the cache accounts for every row as a fresh run would, whatever an earlier run with other settings cached.
    Rows that the memory budget decided (rejected as too large, or decoded reduced) are not reused either:
    another run may have another budget.

    ``key``: the :func:`cache_key` of the run. Shards are written with it in their Parquet metadata
    (:data:`KEY_METADATA`); a shard that carries another key or none (copied from another cache, or written
    by an older rca-gpu) is refused and removed, with a warning, and its rows are extracted again.
    """

    def __init__(self, folder: Path, skip: Iterable[int] = (), key: str | None = None) -> None:
        self.folder = folder
        self.skip = np.fromiter(skip, dtype=np.int64)
        self.key = key
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
        numbers = [int(p.stem[5:]) for p in folder.glob("part-*.parquet") if p.stem[5:].isdigit()]
        self.count = max(numbers, default=-1) + 1  # after the last: a removed shard leaves a gap, never a clash

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
            except Exception:  # noqa: BLE001 - an unreadable shard is recomputed, not trusted
                log.warning("ignoring unreadable cache shard %s", shard)
                continue
            if not self._belongs(shard, schema):
                continue
            positions = table.column("position").to_numpy()
            reasons = table.column("reason").to_pylist()
            shard_notes = table.column("note").to_pylist() if "note" in table.column_names else [None] * len(reasons)
            good = np.array([r is None for r in reasons], dtype=bool)
            budget = np.array([depends_on_budget(r) or depends_on_budget(n)
                               for r, n in zip(reasons, shard_notes, strict=True)],
                              dtype=bool)
            for position, reason, decided in zip(positions.tolist(), reasons, budget.tolist(), strict=True):
                if reason is not None and not decided:
                    rejected[position] = reason
            good &= ~budget  # the memory budget decided these rows: decoded again under this run's budget
            if len(self.skip):
                good = good & ~np.isin(positions, self.skip)  # rejected up front by this run: not from cache
            for position, note, decided in zip(positions.tolist(), shard_notes, budget.tolist(), strict=True):
                if note and not decided:
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

    def _belongs(self, shard: Path, schema) -> bool:
        """Whether ``shard`` was written for this store's key; a shard of another key is removed, with a warning."""
        if self.key is None:
            return True
        found = (schema.metadata or {}).get(KEY_METADATA)
        if found == self.key.encode():
            return True
        why = "no cache key (written by an older rca-gpu)" if found is None else (
            f"the cache key {found.decode('ascii', 'replace')[:20]!r}, not {self.key!r} (other images or another "
            "extractor)")
        log.warning("refusing cache shard %s: it carries %s; its rows are extracted again", shard, why)
        with contextlib.suppress(OSError):
            shard.unlink()
        return False

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
        if self.key is not None:
            table = table.replace_schema_metadata({KEY_METADATA: self.key.encode()})
        target = self.folder / f"part-{self.count:06d}.parquet"
        outputs.write_atomic(target, lambda tmp: pq.write_table(table, tmp))  # a temporary name per process
        self.count += 1


def nonfinite_rows(matrix: Any) -> np.ndarray:
    """Boolean mask (n,) of the rows of a (n, d) torch tensor or NumPy array holding NaN or +-inf."""
    if isinstance(matrix, np.ndarray):
        return np.asarray(~np.isfinite(matrix).all(axis=1)) if matrix.size else np.zeros(len(matrix), dtype=bool)
    import torch

    if matrix.numel() == 0:
        return np.zeros(int(matrix.shape[0]), dtype=bool)
    return as_numpy((~torch.isfinite(matrix)).any(dim=1)).astype(bool)


def row_norms(block: np.ndarray) -> np.ndarray:
    """(n,) float64 Euclidean norms of the rows of a (n, d) real array, without overflow or underflow at any
    finite magnitude (each row is divided by its largest absolute value first, as LAPACK's xNRM2 does).
    Computed on about a million values at a time."""
    block = np.asarray(block)
    out = np.zeros(len(block), dtype=np.float64)
    step = max(1, (1 << 20) // max(1, block.shape[1] if block.ndim == 2 else 1))
    for start in range(0, len(block), step):
        values = np.abs(block[start:start + step].astype(np.float64))
        if not values.size:
            continue
        largest = values.max(axis=1)
        safe = np.where(largest > 0, largest, 1.0)
        with np.errstate(invalid="ignore", over="ignore"):
            out[start:start + step] = largest * np.sqrt(((values / safe[:, None]) ** 2).sum(axis=1))
    return out


#: Features whose median row norm lies within 2**-SCALE_BAND .. 2**SCALE_BAND (about 1e-9 .. 1e9) are not
#: rescaled: their squared distances (1e-18 .. 1e18) stay far inside float32's normal range (1e-38 .. 3e38).
SCALE_BAND = 30


def scale_exponent(norms: np.ndarray) -> int:
    """The exponent e that brings the median norm of the finite non-zero rows into [2**-0.5, 2**0.5) when the
    features are multiplied by 2**e, for features whose median row norm lies outside 2**-SCALE_BAND ..
    2**SCALE_BAND; 0 for the others, and when there is no such row.

    Multiplying by a power of two is exact in floating point (no mantissa bit changes, for every value whose
    result stays a normal number), so features of extreme magnitude (1e30, 1e-41, 1e300) enter the engine at
    the scale of unit vectors, as their unit-scale copies do. Features of ordinary magnitude (unit vectors,
    raw pixels, DUT activations, centred features) are left exactly as they are: their squared distances are
    far from float32's limits, and the engine's own steps are scale-invariant there.
    """
    import math

    norms = np.asarray(norms, dtype=np.float64)
    usable = norms[np.isfinite(norms) & (norms > 0)]
    if not len(usable):
        return 0
    scale = math.log2(float(np.median(usable)))
    return 0 if abs(scale) <= SCALE_BAND else -int(round(scale))


def scale_by_power_of_two(matrix: Any, exponent: int) -> Any:
    """``matrix`` (a float NumPy array or torch tensor) multiplied by 2**exponent, exactly: NumPy through
    ``np.ldexp``; torch in place, in steps of at most 2**100 so that no factor overflows float32."""
    if not exponent:
        return matrix
    if isinstance(matrix, np.ndarray):
        return np.ldexp(matrix, np.int32(exponent)).astype(matrix.dtype, copy=False)
    left = int(exponent)
    while left:
        step = max(-100, min(100, left))
        matrix.mul_(2.0 ** step)
        left -= step
    return matrix


def normalise_scale(matrix: Any, info: dict[str, Any]) -> Any:
    """Bring features of extreme magnitude to the scale of unit vectors by the exact power of two of
    :func:`scale_exponent` (features at 1e30 or 1e-41 used to give one cluster or crash UMAP; features of
    ordinary magnitude are left as they are); the exponent is recorded in ``info["scale_exponent"]`` (run.json's
    features block). Where the features enter the engine: extracted, read from a features file, or given to
    the estimator."""
    if matrix is None or not len(matrix):
        info["scale_exponent"] = 0
        return matrix
    exponent = scale_exponent(row_norms(matrix if isinstance(matrix, np.ndarray) else as_numpy(matrix)))
    info["scale_exponent"] = exponent
    return scale_by_power_of_two(matrix, exponent)


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
    normalise: bool = True,
) -> Features:
    """Run the extractor over every usable image of ``context.failures``.

    With ``normalise`` (the default), the features are brought to the scale of unit vectors by an exact power
    of two (:func:`normalise_scale`); Dask workers leave that to the client, which sees every row."""
    import torch

    from rca_gpu.features import represent

    started = time.perf_counter()
    failures = context.failures
    represent.check_center(spec, failures)
    centring, spec = represent.center_of(spec, failures), represent.extraction_spec(spec)  # cached without centring
    extractor = create_extractor(spec, context)
    extractor.prepare()
    transform = extractor.transform()
    rejected: dict[int, str] = dict(failures.rejected)
    notes: dict[int, str] = {}
    done_positions, done_matrix, done_properties = np.empty(0, dtype=np.int64), None, None
    store = None
    if cache_dir is not None:
        key = cache_key(spec, extractor, context)
        store = _ShardStore(Path(cache_dir) / f"features-{spec.name}-{key}", skip=failures.rejected, key=key)
        done_positions, done_matrix, cached_rejected, notes, done_properties = store.load()
        rejected.update(cached_rejected)
    usable = failures.usable_positions
    todo = usable[~np.isin(usable, done_positions) & ~np.isin(usable, np.fromiter(rejected, np.int64, len(rejected)))]
    from_cache = len(done_positions)
    if from_cache and store is not None:  # rows come from a cache only when there is a store
        log.info("features: %d of %d images from cache %s", from_cache, len(failures), store.folder)

    device = context.device
    # every row that may get features has its row in one preallocated matrix: no per-batch copies to join
    rows = _Rows(np.union1d(done_positions, todo), device)
    if from_cache:
        cached, cached_positions = drop_nonfinite_rows(done_matrix, done_positions, rejected, source=str(spec))
        rows.add(cached_positions, to_kind(cached, "torch", torch_device=device.type),
                 None if done_properties is None else done_properties[np.isin(done_positions, cached_positions)])
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
            properties=True, max_image_memory=context.max_image_memory,
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
            "cache": str(store.folder) if store else None,
            "max_image_memory": image_budget(context.max_image_memory)}
    positions, matrix, properties = rows.result()
    if matrix is None:
        # no usable image: the caller reports it, with every row's reason (see rca_gpu.pipeline.run)
        empty = torch.empty((0, dims or 0), dtype=torch.float32, device=device)
        info["dims"] = dims or 0
        return Features(empty, np.empty(0, dtype=np.int64), rejected, info, time.perf_counter() - started,
                        from_cache, notes)
    info["dims"] = int(matrix.shape[1])
    if normalise:
        matrix = normalise_scale(matrix, info)
    if centring:
        keys = represent.class_keys(failures, positions, centring)
        matrix, described = represent.center_features(matrix, keys)
        info["center"] = {"by": centring, **described}
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
        self.matrix: Any = None  # a (candidates, d) float32 torch tensor once the first block says d
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
        positions, reasons, notes = (list(column) for column in zip(*self.rows, strict=True))
        blocks = [p for p in self.properties if p is not None]
        properties = np.concatenate(blocks) if blocks and len(blocks) == len(self.properties) else None
        store.write(positions, reasons, notes, features, dims or 1, properties)
        self.rows, self.tensors, self.properties, self.since = [], [], [], time.monotonic()
