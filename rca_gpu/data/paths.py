"""How a path whose bytes are not UTF-8 is written into outputs, and read back.

POSIX file names are bytes. Python holds the bytes of a name that are not UTF-8 as lone surrogates
(``os.fsdecode``, the ``surrogateescape`` error handler), but every output of rca-gpu is UTF-8 text (Arrow
strings in Parquet, JSON, HTML, the terminal). Such a path is therefore written in two forms:

* **text**, for people and for every tool: each byte that is not UTF-8 as ``\\xNN`` (:func:`shown_path`),
  e.g. ``/data/caf\\xe9/a.png``. Readable everywhere; not reversible (a name may hold ``\\x`` itself);
* **bytes**, to open the file again: in Parquet a binary column named after the text column with
  ``_bytes`` (``path_bytes``: the path's exact bytes, null for rows whose path is UTF-8); in JSON a key named
  after the text key with ``_base64`` (standard base64 of the bytes). :func:`real_path` turns them back into
  the path to open (``os.fsdecode``).

A path that is UTF-8 is written as it is, with nothing beside it; the ``_bytes`` column appears only in
tables that hold at least one other path.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable

from rca_gpu.errors import escape_surrogates

#: Suffix of the Parquet column, and of the JSON key, that hold a path's exact bytes beside its text.
BYTES_SUFFIX = "_bytes"
BASE64_SUFFIX = "_base64"


def is_utf8(path: str | bytes | os.PathLike) -> bool:
    """Whether the path's bytes are valid UTF-8 (so that it is written as it is)."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def shown_path(path: str | bytes | os.PathLike) -> str:
    """The path as UTF-8 text: as it is when UTF-8, else with each byte that is not as ``\\xNN``."""
    return escape_surrogates(os.fsdecode(path))


def path_bytes(path: str | bytes | os.PathLike | None) -> bytes | None:
    """The path's exact bytes when they are not UTF-8, else None (nothing needs writing beside the text)."""
    if path is None or is_utf8(path):
        return None
    return os.fsencode(path)


def bytes_column(paths: Iterable[str | bytes | os.PathLike | None]) -> list[bytes | None] | None:
    """The ``<name>_bytes`` column of a table's path column: each path's bytes where not UTF-8 (null
    elsewhere), or None when every path is UTF-8 (no column is written)."""
    column = [path_bytes(p) for p in paths]
    return column if any(b is not None for b in column) else None


def json_fields(key: str, path: str | bytes | os.PathLike | None) -> dict[str, str | None]:
    """``{key: text}``, plus ``{key + "_base64": bytes in base64}`` when the path is not UTF-8."""
    if path is None:
        return {key: None}
    fields: dict[str, str | None] = {key: shown_path(path)}
    raw = path_bytes(path)
    if raw is not None:
        fields[key + BASE64_SUFFIX] = base64.b64encode(raw).decode("ascii")
    return fields


def real_path(text: str, raw: bytes | str | None = None) -> str:
    """The path to open from its written forms: the bytes (a ``_bytes`` value, or a ``_base64`` string) when
    given, else the text."""
    if raw is None:
        return text
    if isinstance(raw, str):
        raw = base64.b64decode(raw)
    return os.fsdecode(raw)


def check_output_path(path: str | os.PathLike | None, option: str) -> None:
    """Refuse, before any work, an output folder whose path is not UTF-8: the files a command writes there
    name it in UTF-8 text (run.json, report.html, manifests) and are read back by tools (pyarrow) that take
    UTF-8 paths only. Inputs (sources, manifests, features, configs, models) may have any name.

    Raises
    ------
    rca_gpu.errors.SpecError
        "The --out folder '/data/caf\\xe9/run' has a path whose bytes are not UTF-8 ..."
    """
    from rca_gpu.errors import SpecError

    if path is None or is_utf8(path):
        return
    raise SpecError(
        f"The {option} folder '{shown_path(path)}' has a path whose bytes are not UTF-8; the files rca-gpu "
        "writes there name it in UTF-8 text and are read back by tools that take UTF-8 paths only. Pass an "
        "output folder "
        "whose path is UTF-8 (images, manifests and other inputs may have any name)."
    )


class path_or_file:
    """What to hand a library that takes UTF-8 paths only (pyarrow, torch's C++ loaders, onnx): the path
    itself when it is UTF-8 (the library may then memory-map it), else a Python file object opened for
    reading (Python opens any name). A context manager:
    ``with path_or_file(path) as source: pq.ParquetFile(source)``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = path
        self.handle = None

    def __enter__(self):
        if is_utf8(self.path):
            return os.fspath(self.path)
        self.handle = open(self.path, "rb")  # noqa: SIM115 - closed by __exit__
        return self.handle

    def __exit__(self, *exc_info) -> None:
        if self.handle is not None:
            self.handle.close()


def real_paths(table, column: str = "path") -> list[str | None]:
    """The files to open of a table read from a run folder (clusters.parquet): ``column``, or the exact
    bytes of ``<column>_bytes`` where the path is not UTF-8."""
    texts = table[column].tolist()
    raws = (
        table[column + BYTES_SUFFIX].tolist()
        if column + BYTES_SUFFIX in table.columns
        else [None] * len(texts)
    )
    return [text if raw is None or text is None else real_path(text, raw)
            for text, raw in zip(texts, raws, strict=True)]
