"""Listing a folder of images without a Python object per file.

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
    import pyarrow as pa

log = logging.getLogger("rca_gpu")

#: Relative paths held as Python strings before they are packed into an Arrow array.
CHUNK = 1 << 16


def scan_entries(folder: Path, extensions: Iterable[str]) -> tuple["pa.Array | list[str]", dict[str, str]]:
    """Relative paths (``/``-separated) of the entries under ``folder`` named like an image (extension in
    ``extensions``, lower case with the dot), searched recursively; and {relative path: reason} of those that
    are not regular files (:func:`rca_gpu.data.sources.classify_entry`: folders, broken links, pipes, ...).

    Like ``Path.rglob("*")``: hidden entries count, symbolic links count as entries, linked folders are not
    descended into. Sorted component by component, as ``sorted()`` sorts ``Path`` objects. The paths come as
    one Arrow large_string array, or as a list of str when a name is not valid UTF-8 (Arrow holds UTF-8 only).

    Raises
    ------
    OSError
        ``folder`` cannot be listed. Sub-folders that cannot be listed are skipped with a warning.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from rca_gpu.data.sources import classify_entry

    wanted = tuple(e.lower() for e in extensions)
    chunks: list[pa.Array] = []
    names: list[str] = []
    special: dict[str, str] = {}
    utf8 = True

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
                    if os.path.splitext(entry.name)[1].lower() not in wanted:
                        continue
                    if not entry.is_file(follow_symlinks=False):  # anything but a plain file: say what it is
                        reason = classify_entry(entry.path)
                        if reason is not None:
                            special[name] = reason
                except OSError as exc:  # vanished or unreadable entry
                    special[name] = f"cannot be read: {exc.strerror or exc}"
                names.append(name)
                if utf8 and len(names) >= CHUNK:
                    try:
                        chunks.append(pa.array(names, pa.large_string()))
                        names = []
                    except (UnicodeEncodeError, pa.ArrowInvalid):  # a name that is not UTF-8
                        utf8 = False
    if utf8:
        try:
            chunks.append(pa.array(names, pa.large_string()))
        except (UnicodeEncodeError, pa.ArrowInvalid):
            utf8 = False
    if not utf8:  # the rare folder with a name that is not UTF-8: plain strings, same order
        everything = [n for chunk in chunks for n in chunk.to_pylist()] + names
        return sorted(everything, key=lambda n: n.replace("/", "\x00")), special
    everything = pa.concat_arrays(chunks)
    if len(everything) < 2:
        return everything, special
    # "/" -> "\0" makes byte order equal component order: ("a", "x") < ("a-b", "x") as for Path objects
    key = pc.replace_substring(everything, "/", "\x00")
    return everything.take(pc.sort_indices(key)), special


def folder_columns(root: Path, relative: "pa.Array") -> dict[str, "pa.Array"]:
    """The ``path`` (``root`` + the relative path, as listed: a link keeps its own name) and ``folder``
    (sub-folder relative to the listed folder, ``.`` at the top) columns, as Arrow arrays."""
    import pyarrow as pa
    import pyarrow.compute as pc

    path = pc.binary_join_element_wise(pa.scalar(str(root), pa.large_string()), relative,
                                       pa.scalar("/", pa.large_string()))
    nested = pc.match_substring(relative, "/")
    parent = pc.if_else(nested, pc.replace_substring_regex(relative, "/[^/]*$", ""), ".")
    return {"path": path, "folder": parent}


def positions_of(relative: "pa.Array", names: Iterable[str]) -> list[int]:
    """Positions in ``relative`` of ``names`` (each present once)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = list(names)
    if not names:
        return []
    return pc.index_in(pa.array(names, pa.large_string()), value_set=relative).to_pylist()
