"""The ``precomputed`` feature stage: features the user brings instead of images.

``rca-gpu run --features FILE`` (pipeline ``umap+dbscan``, i.e. ``precomputed+umap+dbscan``) reads FILE here
and skips extraction; every later stage and every output is the same as for images.

Accepted files
--------------
Parquet (one row per failure):
    - ``id`` (optional; unique, no nulls; default: the row number),
    - ``path`` (optional): the image the features came from, for reports; relative paths are taken from
      the file's folder and must stay inside ``image_root`` (default: that folder), else left empty,
    - the features, either as ONE numeric list / large-list / fixed-size-list column (any name) or as
      numeric columns ``f0, f1, ..., f{d-1}``,
    - any other column is metadata and passes through to clusters.parquet (``root_cause`` enables the
      ground-truth metrics).
NumPy ``.npy``: a 2-D numeric array (n, d). It is opened by memory map and never unpickled
    (``allow_pickle=False``). Ids, paths and metadata come from an optional row-aligned ``metadata`` file
    (.csv / .parquet, same columns as above, exactly n rows).

Bad rows and bad files
----------------------
A row is rejected, with its reason in the ``reason`` column of clusters.parquet, as an unreadable image is,
when its vector is missing (null), has another length than the most common one, or holds NaN, inf or a
missing value. A file that cannot be read as features at all (no feature column, two list columns, a
non-numeric or 3-D array, no rows) raises :class:`~rca_gpu.errors.SourceError` naming the rule and the fix.

Magnitudes: float32 values are read as float32, wider ones as float64, and a batch of extreme magnitude is
multiplied by an exact power of two before it becomes float32, so that features of any finite magnitude
(1e30, 1e-41, 1e300) enter the engine at the scale of unit vectors, as their unit-scale copies do
(``scale_exponent`` in run.json; :func:`rca_gpu.features.extract.scale_exponent`: ordinary magnitudes are
left as they are).

Memory: the file is read in record batches (row blocks for .npy) into one preallocated float32 matrix, so
the peak is the (n, d) matrix, a float64 norm per row, and one batch of about 64 MB (128 MB for float64).
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rca_gpu.data.paths import bytes_column, path_or_file
from rca_gpu.data.sources import RESERVED_COLUMNS, FailureSet
from rca_gpu.errors import SourceError, SpecError, escape_surrogates

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from rca_gpu.engine.device import Device
    from rca_gpu.features.extract import Features

log = logging.getLogger("rca_gpu")

FEATURE_SUFFIXES = (".parquet", ".npy")
METADATA_SUFFIXES = (".csv", ".parquet")
#: Values decoded per batch (16 Mi float32 = 64 MB), whatever the dimension.
BATCH_VALUES = 1 << 24
_F_COLUMN = re.compile(r"^f(\d+)$")

REASON_NULL = "missing feature vector (null)"


def nonfinite_reason(path: Path) -> str:
    """The reason of a row whose vector holds NaN, inf or a missing value (read as NaN), worded as for
    extracted features (rca_gpu.features.extract.drop_nonfinite_rows)."""
    return f"features not finite (NaN or inf) from the features file {Path(path).name}"


class PrecomputedFeatures:
    """Stands for the feature stage of ``umap+dbscan``-style pipelines; there is nothing to extract."""

    def __init__(self, spec: Any, context: Any) -> None:
        raise SpecError(
            f"The pipeline has no feature extractor ('{spec}'): pass the features with --features FILE "
            "(.parquet or .npy), or name an extractor, e.g. --pipeline mobilenet_v2+umap+dbscan."
        )


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def load_features(
    path: str | os.PathLike,
    *,
    metadata: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    device: Device | None = None,
) -> tuple[FailureSet, Features]:
    """Read a features file into the FailureSet and Features that the pipeline continues from.

    Parameters
    ----------
    path:
        ``.parquet`` or ``.npy`` file (see the module docstring for the layout).
    metadata:
        Optional ``.csv`` / ``.parquet`` with one row per feature row, in the same order (ids, paths,
        metadata columns). With a Parquet features file that has its own ids, they must be equal.
    image_root:
        Image paths must resolve inside this folder (default: the folder of the file that names them).
    device:
        Where the matrix goes (its ``torch_device``); default CPU.

    Returns
    -------
    (failures, features): ``failures.table`` has one row per input row (``id``, ``path``, metadata);
    ``features.matrix`` is a float32 torch tensor (n_usable, d) whose row i belongs to input row
    ``features.positions[i]``; ``features.rejected`` maps input row -> reason.

    Raises
    ------
    SourceError
        The file is missing, of another type, or not readable as an (n, d) numeric table.
    """
    from rca_gpu.features.extract import Features

    started = time.perf_counter()
    path = Path(path).expanduser()
    if not path.is_file():
        raise SourceError(
            f"The features file {str(path)!r} does not exist. Pass a .parquet or .npy file with --features."
        )
    suffix = path.suffix.lower()
    if suffix not in FEATURE_SUFFIXES:
        raise SourceError(
            f"The features file {str(path)!r} is neither .parquet nor .npy. Save the (n, d) features as a Parquet "
            "table (one list column or f0..fN columns) or as a 2-D .npy array."
        )
    reader = _read_parquet if suffix == ".parquet" else _read_npy
    table, matrix, positions, rejected, layout = reader(path)
    base = path.parent
    if metadata is not None:
        table, base = _attach_metadata(table, Path(metadata).expanduser(), path), Path(metadata).expanduser().parent
    table = _finish_table(table, base.resolve(), Path(image_root).expanduser().resolve() if image_root else None)
    failures = FailureSet(table=table, source=escape_surrogates(str(path)), source_path=str(path), kind="features",
                          rejected=dict(rejected),
                          root=str(Path(image_root).expanduser().resolve()) if image_root else str(base.resolve()))
    if not len(positions):
        first = next(iter(rejected.values()), "unknown")
        from rca_gpu.errors import TooFewImagesError

        raise TooFewImagesError(f"None of the {len(table)} feature rows is usable (e.g. {first}).")
    from rca_gpu.data.paths import json_fields

    info = {"name": "precomputed", **json_fields("file", str(path)), **layout, "dims": int(matrix.shape[1]),
            "rows": len(table), "rejected": len(rejected), "from_cache": 0, "cache": None}
    return failures, Features(_to_device(matrix, device), positions, dict(rejected), info,
                              time.perf_counter() - started, 0)


def features_from_array(x: np.ndarray, *, device: Device | None = None) -> Features:
    """Features over an in-memory (n, d) array whose rows are all usable (the estimator validates them),
    brought to the scale of unit vectors by an exact power of two before they become float32
    (:func:`rca_gpu.features.extract.scale_exponent`), so that any finite magnitude clusters alike.

    Raises
    ------
    ValueError
        A row's values lie beyond float32's range next to the others' (more than about 1e38 times apart).
    """
    from rca_gpu.features.extract import Features, row_norms, scale_exponent

    x = np.asarray(x)
    exponent = scale_exponent(row_norms(x))
    wide = x.astype(np.float32 if x.dtype == np.float32 else np.float64, copy=False)
    matrix = np.ascontiguousarray(np.ldexp(wide, np.int32(exponent)), dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise ValueError("X holds rows whose values lie beyond float32's range next to the other rows' (more than "
                         "about 1e38 times apart); such features cannot be clustered together.")
    info = {"name": "precomputed", "format": "array", "dims": int(matrix.shape[1]), "rows": len(matrix),
            "from_cache": 0, "cache": None, "scale_exponent": exponent}
    return Features(_to_device(matrix, device), np.arange(len(matrix), dtype=np.int64), {}, info)


def _to_device(matrix: np.ndarray, device: Device | None):
    from rca_gpu.engine.device import to_kind

    return to_kind(matrix, "torch", torch_device=device.torch_device if device else "cpu")


# --------------------------------------------------------------------------------------------------
# Accumulating rows into one preallocated matrix
# --------------------------------------------------------------------------------------------------


class _Rows:
    """Good rows packed into a preallocated (n, d) float32 matrix; rejected rows recorded with a reason.

    Values of any finite magnitude are kept: a block of extreme magnitude is multiplied by the power of two
    that brings its rows to unit scale before it becomes float32 (in float64, exact), and :meth:`result` brings
    every block to the exponent of all rows (:func:`rca_gpu.features.extract.scale_exponent`), exactly again.
    So a float64 file at 1e300 or 1e-300, or a float32 file at 1e-41, is clustered as its copy at unit scale."""

    def __init__(self, n: int, d: int, source: Path) -> None:
        self.nonfinite = nonfinite_reason(source)
        self.source = Path(source).name
        self.matrix = np.empty((n, d), dtype=np.float32)
        self.positions = np.empty(n, dtype=np.int64)
        self.norms = np.empty(n, dtype=np.float64)
        self.blocks: list[tuple[int, int, int]] = []  # (first row, end row, exponent) of the stored blocks
        self.count = 0
        self.rejected: dict[int, str] = {}
        self.exponent = 0

    def add(self, start: int, block: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Add ``block`` (k, d) of any real dtype: the vectors of input rows ``rows`` (default start..start+k-1)."""
        from rca_gpu.features.extract import row_norms, scale_exponent

        rows = np.arange(start, start + len(block)) if rows is None else rows
        finite = np.isfinite(block).all(axis=1)
        for position in rows[~finite]:
            self.rejected[int(position)] = self.nonfinite
        good, rows = block[finite], rows[finite]
        norms = row_norms(good)
        exponent = scale_exponent(norms)
        with np.errstate(over="ignore"):  # a value float32 cannot hold becomes inf: its row is refused below
            scaled = np.ldexp(good.astype(np.float64 if good.dtype != np.float32 else np.float32, copy=False),
                              np.int32(exponent)).astype(np.float32, copy=False)
        fits = np.isfinite(scaled).all(axis=1)  # a row far beyond the others of its block: float32 cannot hold both
        for position, norm in zip(rows[~fits], norms[~fits], strict=True):
            self.rejected[int(position)] = self._beyond(norm)
        scaled, rows, norms = scaled[fits], rows[fits], norms[fits]
        end = self.count + len(scaled)
        self.matrix[self.count:end] = scaled
        self.positions[self.count:end] = rows
        self.norms[self.count:end] = norms
        self.blocks.append((self.count, end, exponent))
        self.count = end

    def reject(self, rows: np.ndarray, reason: str | list[str]) -> None:
        reasons = [reason] * len(rows) if isinstance(reason, str) else reason
        for position, why in zip(rows, reasons, strict=True):
            self.rejected[int(position)] = why

    def result(self) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """(matrix at unit scale, positions, rejected); ``self.exponent`` says by which power of two."""
        from rca_gpu.features.extract import scale_exponent

        self.exponent = scale_exponent(self.norms[: self.count])
        keep = None
        for first, end, exponent in self.blocks:
            if exponent != self.exponent:
                with np.errstate(over="ignore"):
                    np.ldexp(self.matrix[first:end], np.int32(self.exponent - exponent), out=self.matrix[first:end])
                fits = np.isfinite(self.matrix[first:end]).all(axis=1)
                if not fits.all():  # a block far beyond the others: float32 cannot hold both
                    keep = np.ones(self.count, dtype=bool) if keep is None else keep
                    keep[first:end] &= fits
                    for position, norm in zip(self.positions[first:end][~fits], self.norms[first:end][~fits],
                                               strict=True):
                        self.rejected[int(position)] = self._beyond(norm)
        # rows were added in input order, so positions are sorted; the view keeps rejected rows' space only
        matrix, positions = self.matrix[: self.count], self.positions[: self.count]
        if keep is not None:
            matrix, positions = matrix[keep], positions[keep]
        return matrix, positions, dict(sorted(self.rejected.items()))

    def _beyond(self, norm: float) -> str:
        return f"feature values beyond float32's range next to the other rows (row norm {norm:.3g}) in {self.source}"


def _rows_per_batch(d: int) -> int:
    return max(1, min(1 << 16, BATCH_VALUES // max(d, 1)))


# --------------------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------------------


def _is_number(t: pa.DataType) -> bool:
    import pyarrow.types as pt

    return pt.is_integer(t) or pt.is_floating(t)


def _feature_layout(schema: pa.Schema, path: Path) -> tuple[str, list[str]]:
    """("list", [column]) or ("columns", [f0, ..., f{d-1}]) naming where the features are."""
    import pyarrow.types as pt

    lists = [f for f in schema if pt.is_list(f.type) or pt.is_large_list(f.type) or pt.is_fixed_size_list(f.type)]
    numbered = sorted(((int(m.group(1)), f) for f in schema if (m := _F_COLUMN.match(f.name))), key=lambda t: t[0])
    if len(lists) > 1:
        raise SourceError(
            f"The features file {str(path)!r} has {len(lists)} list columns ({', '.join(f.name for f in lists)}); "
            "it needs exactly one holding the feature vectors. Drop the others or store them as plain columns."
        )
    if lists:
        field = lists[0]
        if not _is_number(field.type.value_type):
            raise SourceError(
                f"The feature column {field.name!r} of {str(path)!r} holds {field.type.value_type} values; it must "
                "hold numbers (float or int). Store the vectors as float32."
            )
        return "list", [field.name]
    if numbered:
        indices = [i for i, _ in numbered]
        if indices != list(range(len(indices))):
            missing = sorted(set(range(max(indices) + 1)) - set(indices))[:5]
            raise SourceError(
                f"The feature columns of {str(path)!r} must be f0..f{max(indices)} without gaps; missing: "
                f"{', '.join(f'f{i}' for i in missing)}. Number the feature columns from f0 without gaps."
            )
        bad = [f.name for _, f in numbered if not _is_number(f.type)]
        if bad:
            raise SourceError(
                f"The feature columns {', '.join(bad[:5])} of {str(path)!r} are not numeric. Store features as "
                "float32 columns f0..fN."
            )
        return "columns", [f.name for _, f in numbered]
    names = ", ".join(schema.names[:12]) or "none"
    raise SourceError(
        f"The features file {str(path)!r} has no feature column (columns: {names}). Add one list column with a "
        "vector per row, or numeric columns f0, f1, ..., f{d-1}."
    )


def _read_parquet(path: Path):
    with path_or_file(path) as source:  # a name that is not UTF-8: read through a Python file object
        return _read_parquet_from(path, source)


def _read_parquet_from(path: Path, source):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source, memory_map=isinstance(source, str))
        schema = parquet.schema_arrow
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise SourceError(f"Cannot read the features file {str(path)!r} as Parquet: {exc}") from None
    kind, columns = _feature_layout(schema, path)
    n = parquet.metadata.num_rows
    if n == 0:
        raise SourceError(f"The features file {str(path)!r} has no rows. Add one row per failing image.")
    # pandas writes a non-default index as "__index_level_N__": not metadata of the failures
    meta_columns = [name for name in schema.names if name not in columns and not name.startswith("__index_level_")]
    table = parquet.read(columns=meta_columns).to_pandas() if meta_columns else pd.DataFrame(index=range(n))

    if kind == "list":
        column = columns[0]
        field_type = schema.field(column).type
        d = field_type.list_size if pa.types.is_fixed_size_list(field_type) else _common_length(parquet, column)
        layout = {"format": "parquet", "column": column}
    else:
        d = len(columns)
        layout = {"format": "parquet", "column": f"f0..f{d - 1}"}
    if d < 1:
        raise SourceError(f"The feature vectors of {str(path)!r} are empty (0 values). "
                          "Store at least one value per row.")
    rows = _Rows(n, d, path)
    # float32 stays float32; wider numbers are read as float64, so that no magnitude is lost before scaling
    value_types = ([schema.field(c).type for c in columns] if kind == "columns"
                   else [schema.field(columns[0]).type.value_type])
    wide = pa.float32() if all(t in (pa.float32(), pa.float16()) for t in value_types) else pa.float64()
    start = 0
    for batch in parquet.iter_batches(batch_size=_rows_per_batch(d), columns=columns):
        size = batch.num_rows
        if kind == "columns":
            block = np.column_stack([
                pc.cast(batch.column(i), wide, safe=False).to_numpy(zero_copy_only=False)
                for i in range(d)
            ])
            rows.add(start, block)
        else:
            array = batch.column(0)
            lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)  # NaN for null rows
            null = np.asarray(array.is_null())
            right = ~null & (lengths == d)
            local = np.flatnonzero(right)
            rows.reject(start + np.flatnonzero(null), REASON_NULL)
            odd = np.flatnonzero(~null & ~right)
            rows.reject(start + odd, [f"feature vector has {int(lengths[i])} values; the others have {d}" for i in odd])
            if len(local):
                values = array.take(pa.array(local)).flatten()
                block = pc.cast(values, wide, safe=False).to_numpy(zero_copy_only=False).reshape(-1, d)
                rows.add(start, block, start + local)
        start += size
    matrix, positions, rejected = rows.result()
    return table, matrix, positions, rejected, {**layout, "scale_exponent": rows.exponent}


def _common_length(parquet, column: str) -> int:
    """The most common vector length of a variable-length list column (a first pass over the lengths)."""
    import pyarrow.compute as pc

    counts: dict[int, int] = {}
    for batch in parquet.iter_batches(batch_size=1 << 16, columns=[column]):
        lengths = pc.list_value_length(batch.column(0)).drop_null().to_numpy()
        values, frequency = np.unique(lengths, return_counts=True)
        for value, count in zip(values.tolist(), frequency.tolist(), strict=True):
            counts[value] = counts.get(value, 0) + count
    if not counts:
        return 0
    return max(counts, key=lambda value: (counts[value], -value))


# --------------------------------------------------------------------------------------------------
# .npy
# --------------------------------------------------------------------------------------------------


def _read_npy(path: Path):
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise SourceError(
            f"Cannot read the features file {str(path)!r} as a numeric .npy array ({exc}). Save a 2-D float array "
            "with numpy.save; object arrays are refused."
        ) from None
    except Exception as exc:  # a truncated or foreign file
        raise SourceError(f"Cannot read the features file {str(path)!r} as .npy: {exc}") from None
    if array.ndim != 2:
        raise SourceError(
            f"The features array {str(path)!r} has shape {tuple(array.shape)}; it must be 2-D (n_images, n_features). "
            "Reshape it, e.g. x.reshape(len(x), -1)."
        )
    if array.dtype.kind not in "iuf":
        raise SourceError(
            f"The features array {str(path)!r} has dtype {array.dtype}; it must hold real numbers (float or int)."
        )
    n, d = array.shape
    if n == 0 or d == 0:
        raise SourceError(f"The features array {str(path)!r} has shape {(n, d)}: no rows or no features.")
    rows = _Rows(n, d, path)
    for start, block in _npy_blocks(path, array, _rows_per_batch(d)):
        # float32 stays float32, wider numbers become float64
        rows.add(start, block.astype(np.float32 if block.dtype.kind == "f" and block.dtype.itemsize <= 4
                                     else np.float64, copy=False))
    del array
    matrix, positions, rejected = rows.result()
    return pd.DataFrame(index=range(n)), matrix, positions, rejected, {"format": "npy",
                                                                      "scale_exponent": rows.exponent}


def _npy_blocks(path: Path, array: np.memmap, step: int):
    """(first row, rows) blocks of ``step`` rows of a 2-D .npy file, read with ordinary file reads, so that
    the file's pages do not stay mapped into the process (a memory map would add the whole file to the
    process's resident memory beside the matrix). ``array``: the file's memory map, read through only for a
    Fortran-ordered file."""
    n, d = array.shape
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        for start in range(0, n, step):
            yield start, np.asarray(array[start:start + step])
        return
    with open(path, "rb") as file:
        file.seek(array.offset)
        for start in range(0, n, step):
            rows = min(step, n - start)
            block = np.fromfile(file, dtype=array.dtype, count=rows * d)
            if block.size != rows * d:
                raise SourceError(f"The features file {str(path)!r} ends after {start + block.size // d} of its "
                                  f"{n} rows: it is truncated.")
            yield start, block.reshape(rows, d)


# --------------------------------------------------------------------------------------------------
# Ids, paths and metadata
# --------------------------------------------------------------------------------------------------


def _attach_metadata(table: pd.DataFrame, metadata: Path, features_path: Path) -> pd.DataFrame:
    """Columns of a row-aligned metadata file joined to the features' own columns."""
    if not metadata.is_file() or metadata.suffix.lower() not in METADATA_SUFFIXES:
        raise SourceError(
            f"The metadata file {str(metadata)!r} does not exist or is not .csv/.parquet. Pass a table with one row "
            "per feature row (id, path, metadata columns)."
        )
    try:
        if metadata.suffix.lower() == ".parquet":
            with path_or_file(metadata) as source:
                frame = pd.read_parquet(source)
        else:  # cells as written, as for a CSV manifest
            from rca_gpu.data.sources import read_csv_cells

            frame = read_csv_cells(metadata, keep_text=("path", "filepath"))
    except Exception as exc:  # pandas / pyarrow raise many types for a broken file
        raise SourceError(f"Cannot read the metadata file {str(metadata)!r}: {exc}") from None
    if len(frame) != len(table):
        raise SourceError(
            f"The metadata file {str(metadata)!r} has {len(frame)} rows for {len(table)} feature rows in "
            f"{str(features_path)!r}. Give one metadata row per feature row, in the same order."
        )
    frame = frame.reset_index(drop=True)
    if "id" in frame.columns:
        from rca_gpu.data.sources import check_ids

        check_ids(frame["id"], f"The 'id' column of the metadata file {str(metadata)!r}")
    if "id" in table.columns and "id" in frame.columns:
        if not (table["id"].astype(str).to_numpy() == frame["id"].astype(str).to_numpy()).all():
            raise SourceError(
                f"The ids of {str(metadata)!r} differ from those of {str(features_path)!r}. Order the metadata rows "
                "like the feature rows, or drop one of the id columns."
            )
        frame = frame.drop(columns=["id"])
    clash = [c for c in frame.columns if c in table.columns]
    if clash:
        raise SourceError(
            f"The columns {', '.join(map(str, clash))} are in both {str(features_path)!r} and {str(metadata)!r}. "
            "Keep each column in one file."
        )
    return pd.concat([table.reset_index(drop=True), frame], axis=1)


def _finish_table(table: pd.DataFrame, base: Path, image_root: Path | None) -> pd.DataFrame:
    """``id``, ``path`` first (paths kept only inside the image root), then the metadata; a ``filepath`` column
    is read as ``path`` when there is none (FiftyOne's name, :func:`rca_gpu.data.sources.with_path_column`)."""
    from rca_gpu.data.sources import with_path_column

    table = with_path_column(table)
    n = len(table)
    if "id" in table.columns:
        from rca_gpu.data.sources import check_ids

        ids = table["id"]
        check_ids(ids, "The 'id' column of the features")
        ids = ids.to_numpy()
    else:
        ids = np.arange(n, dtype=np.int64)
    front = {"id": ids}
    if "path" in table.columns:
        resolved, given = _resolve_paths(table["path"], base, image_root or base)
        front["path"] = [None if p is None else escape_surrogates(p) for p in resolved]
        raw = bytes_column(resolved)
        if raw is not None:  # the exact bytes of paths that are not UTF-8 (rca_gpu.data.paths)
            front["path_bytes"] = raw
        front["input_path"] = [None if p is None else escape_surrogates(p) for p in given]
    else:
        front["path"] = pd.Series([None] * n, dtype="object")
    meta = table.drop(columns=["id", "path", "path_bytes", "input_path"], errors="ignore").reset_index(drop=True)
    meta = meta.rename(columns={c: f"input_{c}" for c in meta.columns if c in RESERVED_COLUMNS})
    return pd.concat([pd.DataFrame(front), meta], axis=1)


def _resolve_paths(raw: pd.Series, base: Path, root: Path) -> tuple[list[str | None], list[str | None]]:
    """Image paths, made absolute from ``base``; a path outside ``root`` is dropped (None) with a warning.

    Nothing is read here: the images are only named for reports. Paths are normalised lexically.
    """
    given = [None if not isinstance(p, str) or not p.strip() else p for p in raw.tolist()]
    root_text = str(root).rstrip(os.sep) + os.sep
    resolved: list[str | None] = []
    outside = 0
    for p in given:
        if p is None:
            resolved.append(None)
            continue
        full = os.path.normpath(os.path.join(base, os.path.expanduser(p)))
        if full.startswith(root_text):
            resolved.append(full)
        else:
            resolved.append(None)
            outside += 1
    if outside:
        log.warning("%d image path(s) of the features lie outside %s and are left empty; pass --image-root to "
                    "allow another folder", outside, root)
    return resolved, given
