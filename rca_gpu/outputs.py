"""Atomic output files: each is written to a temporary name in the same folder, then renamed.

A crashed run therefore never leaves a half-written file under a final name; run.json is written last
and marks a complete run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: str | Path, write) -> Path:
    """Write ``path`` atomically with ``write(tmp)``, a function that writes a whole file at the path ``tmp``
    (a temporary name in the same folder), then rename it to ``path``. The file gets the permissions of any
    new file (0666 less the umask, e.g. 0644), also when ``write`` makes its own 0600 file as mkstemp and
    safetensors do. On any error the temporary file is removed and the error raised; ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # after writing: a writer may replace the file with a 0600 one
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    return write_atomic(path, write)


def _json_safe(value: Any) -> Any:
    """NaN/inf -> null, numpy scalars -> Python, so the JSON is standard."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, Path)):  # file-name bytes that are not UTF-8 as \xNN (rca_gpu.data.paths)
        from rca_gpu.errors import escape_surrogates

        return escape_surrogates(str(value))
    return value


def write_json(path: Path, data: Any, *, run_id: str | None = None) -> Path:
    """Write ``data`` as standard JSON (NaN/inf -> null), atomically. With ``run_id`` (``data`` a dict),
    the file carries the run's id under ``"run_id"`` (see :mod:`rca_gpu.runfolder`)."""
    if run_id is not None:
        data = {"run_id": run_id, **{k: v for k, v in data.items() if k != "run_id"}}
    return write_text(path, json.dumps(_json_safe(data), indent=2, default=str) + "\n")


def write_parquet(path: Path, frame, *, metadata: Mapping[bytes, bytes] | None = None,
                  run_id: str | None = None) -> Path:
    """Write a pandas DataFrame or a pyarrow Table as Parquet (zstd), atomically. ``metadata`` is added to
    the schema metadata (pandas' own key is kept, so the frame round-trips); ``run_id`` is stored there under
    :data:`rca_gpu.runfolder.RUN_ID_KEY`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rca_gpu.runfolder import RUN_ID_KEY

    table = frame if isinstance(frame, pa.Table) else to_arrow(frame)
    if run_id is not None:
        metadata = {**(metadata or {}), RUN_ID_KEY: run_id.encode()}
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def to_arrow(frame):
    """A pandas DataFrame as a pyarrow Table, for any values a manifest or a file system may hand over.

    Text holding file-name bytes that are not UTF-8 (Python keeps them as lone surrogates) is written with
    ``\\xNN`` escapes, as the terminal shows it; a column pyarrow cannot type (mixed objects) is written as
    text, each value by ``str``. Column names are used as they are (they are unique, see
    :data:`rca_gpu.data.sources.RESERVED_COLUMNS`).
    """
    import pyarrow as pa

    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, UnicodeError, ValueError, TypeError):
        pass
    frame = frame.copy()
    for name in frame.columns:
        column = frame[name]
        if column.dtype != object:
            continue
        try:
            pa.array(column, from_pandas=True)
            continue
        except (pa.ArrowException, UnicodeError, ValueError, TypeError):
            pass
        frame[name] = column.map(_as_text)
    return pa.Table.from_pandas(frame, preserve_index=False)


def _as_text(value: Any) -> Any:
    """A value as UTF-8-safe text (None and NaN stay missing)."""
    from rca_gpu.errors import escape_surrogates

    if value is None or (isinstance(value, float) and value != value):
        return None
    return escape_surrogates(value if isinstance(value, str) else str(value))
