"""Listing a folder of images, and checking a manifest's paths, without a Python object per file.

``os.scandir`` streams each directory; file names go into Arrow string arrays in chunks of CHUNK names, so
the listing of a million files costs about the bytes of their relative paths (plus 8 per file for offsets),
not a ``Path`` object each as ``sorted(folder.rglob("*"))`` did. The order is the one ``sorted()`` gives
``Path`` objects (component by component), so image ids do not depend on how the folder was listed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import pyarrow as pa

log = logging.getLogger("rca_gpu")

#: Relative paths held as Python strings before they are packed into an Arrow array.
CHUNK = 1 << 16


def scan_files(folder: Path, extensions: Iterable[str]) -> tuple["pa.Array", set[str]]:
    """Relative paths (``/``-separated, Arrow large_string) of the files under ``folder`` whose extension is
    in ``extensions`` (lower case, with the dot), searched recursively; and the set of those that are
    symbolic links.

    Like ``Path.rglob``: hidden files count, symbolic links to files count, symbolic links to folders are not
    followed. Sorted component by component, as ``sorted()`` sorts ``Path`` objects.

    Raises
    ------
    OSError
        ``folder`` cannot be listed. Sub-folders that cannot be listed are skipped with a warning.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = tuple(e.lower() for e in extensions)
    chunks: list[pa.Array] = []
    names: list[str] = []
    links: set[str] = set()
    skipped = 0

    def pack() -> None:
        nonlocal skipped
        try:
            chunks.append(pa.array(names, pa.large_string()))
        except (UnicodeEncodeError, pa.ArrowInvalid):  # names that are not valid UTF-8
            good = [n for n in names if _utf8(n)]
            skipped += len(names) - len(good)
            chunks.append(pa.array(good, pa.large_string()))
        names.clear()

    stack = [""]
    root = os.fspath(folder)
    while stack:
        relative = stack.pop()
        try:
            entries = os.scandir(os.path.join(root, relative) if relative else root)
        except OSError:
            if not relative:
                raise
            log.warning("cannot list %s; its images are left out", os.path.join(root, relative))
            continue
        with entries:
            for entry in entries:
                name = f"{relative}/{entry.name}" if relative else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(name)
                    elif os.path.splitext(entry.name)[1].lower() in wanted and entry.is_file():
                        names.append(name)
                        if entry.is_symlink():
                            links.add(name)
                        if len(names) >= CHUNK:
                            pack()
                except OSError:  # vanished or unreadable entry
                    continue
    if names or not chunks:
        pack()
    if skipped:
        log.warning("%d file name(s) under %s are not valid UTF-8 and are left out; rename them", skipped, root)
    everything = pa.concat_arrays(chunks)
    if len(everything) < 2:
        return everything, links
    # "/" -> "\0" makes byte order equal component order: ("a", "x") < ("a-b", "x") as for Path objects
    key = pc.replace_substring(everything, "/", "\x00")
    return everything.take(pc.sort_indices(key)), links


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def folder_columns(folder: Path, relative: "pa.Array", links: set[str]) -> dict[str, "pa.Array"]:
    """The ``path`` (absolute: the resolved folder + the relative path; symbolic links to files resolved, as
    ``Path.resolve()`` does) and ``folder`` (sub-folder relative to ``folder``, ``.`` at the top) columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    root = str(folder.resolve())
    path = pc.binary_join_element_wise(pa.scalar(root, pa.large_string()), relative,
                                       pa.scalar("/", pa.large_string()))
    if links:
        rows = pc.index_in(pa.array(sorted(links), pa.large_string()), value_set=relative).to_pylist()
        values = path.to_pylist()
        for i in rows:
            values[i] = os.path.realpath(values[i])
        path = pa.array(values, pa.large_string())
    nested = pc.match_substring(relative, "/")
    parent = pc.if_else(nested, pc.replace_substring_regex(relative, "/[^/]*$", ""), ".")
    return {"path": path, "folder": parent}


def check_manifest_paths(raw: "pd.Series", base: Path, root: Path,
                         extensions: Iterable[str]) -> tuple["pd.Series", dict[int, str]]:
    """Resolve a manifest's ``path`` column and say which rows cannot be used, CHUNK rows at a time.

    Each path is taken relative to ``base`` (absolute paths as they are), symbolic links resolved as
    ``Path.resolve()`` does. A row is rejected when the path is empty, escapes ``root``, names no file, or has
    no image extension. Parent folders are resolved once each (cached), so a row costs one ``lstat``.

    Returns
    -------
    (resolved paths as an Arrow-backed string Series, "" for empty paths; {row position: reason}).
    """
    import stat

    import pandas as pd
    import pyarrow as pa

    wanted = tuple(e.lower() for e in extensions)
    root_text = str(root)
    root_prefix = root_text.rstrip(os.sep) + os.sep
    escape = f"path escapes the image root {root_text!r}; use --image-root to allow another folder"
    parents: dict[str, str] = {}
    rejected: dict[int, str] = {}
    chunks = []

    def real_parent(head: str) -> str:
        if head not in parents:
            if len(parents) >= CHUNK:
                parents.clear()
            parents[head] = os.path.realpath(head)
        return parents[head]

    base_text = str(base)
    for start in range(0, len(raw), CHUNK):
        out = []
        for offset, value in enumerate(raw.iloc[start:start + CHUNK].tolist()):
            position = start + offset
            if not isinstance(value, str) or not value.strip():
                out.append("")
                rejected[position] = "empty path in manifest"
                continue
            joined = os.path.join(base_text, os.path.expanduser(value))
            head, tail = os.path.split(joined)
            if tail in ("", ".", ".."):
                candidate = os.path.realpath(joined)
                is_file = os.path.isfile(candidate)
            else:
                parent = real_parent(head)
                candidate = parent + tail if parent.endswith(os.sep) else parent + os.sep + tail
                try:
                    mode = os.lstat(candidate).st_mode
                except OSError:
                    mode = 0
                if stat.S_ISLNK(mode):
                    candidate = os.path.realpath(candidate)
                    is_file = os.path.isfile(candidate)
                else:
                    is_file = stat.S_ISREG(mode)
            out.append(candidate)
            if not (candidate == root_text or candidate.startswith(root_prefix)):
                rejected[position] = escape
            elif not is_file:
                rejected[position] = "file not found"
            else:
                suffix = _suffix(candidate)
                if suffix.lower() not in wanted:
                    rejected[position] = f"not an image file extension ({suffix or 'none'})"
        chunks.append(pa.array(out, pa.large_string()))
    return pa.chunked_array(chunks, pa.large_string()).to_pandas(), rejected


def _suffix(path: str) -> str:
    """The extension as ``PurePath.suffix`` gives it ("" for "name." and ".hidden")."""
    name = path.rsplit(os.sep, 1)[-1]
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""
