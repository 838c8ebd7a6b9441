"""Files named from data, placed inside the folder an export writes: sanitised names, unique names, links or
atomic copies. Shared by the folder export (:mod:`rca_gpu.report.export`) and FiftyOne's layout
(:mod:`rca_gpu.report.interop`).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from rca_gpu import outputs
from rca_gpu.errors import RcaError

_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")  # "_" too, so runs collapse into one "_"
MAX_NAME = 120


class ExportError(RcaError, ValueError):
    """Bad export request: unknown cluster, bad mode, or a target that exists."""


def safe_name(identifier: object, path: str) -> str:
    """A file name for an exported image: ``<id>_<original name>`` reduced to ``[A-Za-z0-9._-]``.

    Never empty, never starting with a dot, at most :data:`MAX_NAME` characters, extension kept.
    """
    original = Path(str(path)).name
    stem, dot, suffix = original.rpartition(".")
    if not dot:
        stem, suffix = original, ""
    suffix = _UNSAFE.sub("", suffix)[:10].lower()
    stem = _UNSAFE.sub("_", f"{identifier}_{stem}").strip("._-") or "image"
    stem = stem[: MAX_NAME - len(suffix) - 1]
    return f"{stem}.{suffix}" if suffix else stem


def unique_name(name: str, used: set[str]) -> str:
    """``name``, or ``name`` with ``-2``, ``-3``... before the extension when sanitising made two ids equal."""
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    candidate, k = name, 1
    while candidate in used:
        k += 1
        candidate = f"{stem}-{k}.{suffix}" if suffix else f"{stem}-{k}"
    used.add(candidate)
    return candidate


def place(source: str, destination: Path, mode: str) -> None:
    """Put the image file ``source`` at ``destination``: a symbolic link (``mode`` "link") or a copy written
    atomically. The caller has checked ``source`` against the run's path rule and ``destination`` to stay in its
    folder."""
    if mode == "link":
        os.symlink(source, destination)
    else:
        outputs.write_atomic(destination, lambda tmp: shutil.copyfile(source, tmp))
