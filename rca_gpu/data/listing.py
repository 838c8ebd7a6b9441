"""Listing a folder of images without a Python object per file.

``os.scandir`` streams each directory; file names go into Arrow string arrays in chunks of CHUNK names, so
the listing of a million files costs about the bytes of their relative paths (plus 8 per file for offsets),
not a ``Path`` object each as ``sorted(folder.rglob("*"))`` did. The order is the one ``sorted()`` gives
``Path`` objects (component by component), so image ids do not depend on how the folder was listed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

log = logging.getLogger("rca_gpu")

#: Relative paths held as Python strings before they are packed into an Arrow array.
CHUNK = 1 << 16


class LeftOut:
    """What a folder scan left out, by rule: ``"hidden"`` (names starting with ``.``) and ``"output"``
    (rca-gpu output folders): the count of image-named files and the first few folders / files of each."""

    SHOWN = 20
    RULES = {"hidden": "hidden files and folders (names starting with '.')",
             "output": "rca-gpu output folders (thumbnails and copies of a run, study, assign, select or export)"}

    def __init__(self) -> None:
        self.files: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def add_file(self, rule: str, name: str, count: int = 1) -> None:
        if count <= 0:  # a left-out folder without image-named files leaves nothing out: nothing to say
            return
        self.files[rule] = self.files.get(rule, 0) + count
        shown = self.examples.setdefault(rule, [])
        if len(shown) < self.SHOWN:
            shown.append(name)

    def add_folder(self, rule: str, name: str, count: int, why: str | None = None) -> None:
        self.add_file(rule, f"{name}/" + (f" ({why})" if why else ""), count)

    @property
    def total(self) -> int:
        return sum(self.files.values())

    def to_dict(self) -> dict[str, dict[str, object]]:
        """For run.json: rule -> {"files": image-named files left out, "rule": what it is, "examples": [...]},
        for the rules that left out at least one file (:meth:`add_file` records no other)."""
        return {rule: {"files": n, "rule": self.RULES[rule], "examples": self.examples[rule]}
                for rule, n in self.files.items()}

    def summary(self) -> str:
        """"left out 12 image-named file(s) of the folder: 10 in rca-gpu output folders (...), e.g. run/; 2 in
        hidden files and folders (...), e.g. .x.png", "" if none. Only rules with a file left out are named, each
        with up to three examples."""
        parts = []
        for rule, n in self.files.items():
            examples = self.examples[rule][:3]
            parts.append(f"{n} in {self.RULES[rule]}" + (f", e.g. {', '.join(examples)}" if examples else ""))
        if not parts:
            return ""
        return f"left out {self.total} image-named file(s) of the folder: " + "; ".join(parts)


def _count_images(folder: str, wanted: tuple[str, ...]) -> int:
    """Image-named entries below ``folder`` (recursive, links not followed): what leaving it out leaves out."""
    count = 0
    for _, _, files in os.walk(folder):
        count += sum(os.path.splitext(f)[1].lower() in wanted for f in files)
    return count


def classify_entry(path: str | os.PathLike) -> str | None:
    """Why a folder entry named like an image cannot be read as one, or None for a regular file.

    Checks the entry itself (os.lstat) and what a symbolic link points to (os.stat), without opening it:
    broken links, link loops, folders, named pipes (FIFOs), sockets and device files each get a reason, so
    that they appear as rejected rows instead of vanishing from the listing or blocking a reader.
    """
    import errno
    import stat

    try:
        own = os.lstat(path)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    try:
        target = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if stat.S_ISLNK(own.st_mode) and exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "broken symbolic link (its target does not exist)"
        return f"cannot be read: {exc.strerror or exc}"
    mode = target.st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder named like an image, not a file"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO), not a file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file, not a file"
    return "not a regular file"


def scan_entries(folder: Path, extensions: Iterable[str], *, skip: Iterable[str | os.PathLike] = (),
                 left_out: LeftOut | None = None) -> tuple[pa.Array | list[str], dict[str, str]]:
    """Relative paths (``/``-separated) of the entries under ``folder`` named like an image (extension in
    ``extensions``, lower case with the dot), searched recursively; and {relative path: reason} of those that
    are not regular files (:func:`classify_entry`: folders, broken links, pipes, ...).

    Like ``Path.rglob("*")``: symbolic links count as entries, linked folders are not descended into. Left
    out, and counted in ``left_out`` (the image-named files each rule leaves out):

    * hidden entries: files and folders whose name starts with ``.`` (``.DS_Store``, ``.ipynb_checkpoints/``,
      ``.thumbs/``), at any depth below ``folder``;
    * rca-gpu output folders below ``folder`` (:func:`rca_gpu.runfiles.output_folder_kind`: a run, a study,
      the output of assign / select / export), and the folders in ``skip`` (the --out folder of the run that
      lists them); when ``folder`` itself is one of them, the sub-folders rca-gpu writes into
      (report_files/, cache/, pipelines/) instead.

    Sorted component by component, as ``sorted()`` sorts ``Path`` objects. The paths come as one Arrow
    large_string array, or as a list of str when a name is not valid UTF-8 (Arrow holds UTF-8 only).

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
    special: dict[str, str] = {}
    utf8 = True

    from rca_gpu.runfiles import RUN_OUTPUT_FOLDERS, STUDY_OUTPUT_FOLDERS, output_folder_kind

    left_out = left_out if left_out is not None else LeftOut()
    skipped = set()
    for path in skip:
        try:
            st = os.stat(path)
            skipped.add((st.st_dev, st.st_ino))
        except OSError:  # not made yet: nothing of it to list
            continue
    stack = [""]
    root = os.fspath(folder)
    try:
        st = os.stat(root)
        root_is_output = (st.st_dev, st.st_ino) in skipped or output_folder_kind(root) is not None
    except OSError:
        root_is_output = False
    writes_into = set(RUN_OUTPUT_FOLDERS) | set(STUDY_OUTPUT_FOLDERS)
    while stack:
        relative = stack.pop()
        if relative:
            full = os.path.join(root, relative)
            kind = None
            if not relative.count("/") and root_is_output and relative in writes_into:
                kind = "rca-gpu output folder"
            else:
                try:
                    st = os.stat(full)
                    kind = "rca-gpu output folder (--out)" if (st.st_dev, st.st_ino) in skipped else None
                except OSError:
                    pass
                kind = kind or output_folder_kind(full)
            if kind is not None:
                left_out.add_folder("output", relative, _count_images(full, wanted), kind)
                continue
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
                    if entry.name.startswith("."):
                        if entry.is_dir(follow_symlinks=False):
                            left_out.add_folder("hidden", name, _count_images(entry.path, wanted))
                        elif os.path.splitext(entry.name)[1].lower() in wanted:
                            left_out.add_file("hidden", name)
                        continue
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


def folder_columns(root: Path, relative: pa.Array) -> dict[str, pa.Array]:
    """The ``path`` (``root`` + the relative path, as listed: a link keeps its own name) and ``folder``
    (sub-folder relative to the listed folder, ``.`` at the top) columns, as Arrow arrays."""
    import pyarrow as pa
    import pyarrow.compute as pc

    path = pc.binary_join_element_wise(pa.scalar(str(root), pa.large_string()), relative,
                                       pa.scalar("/", pa.large_string()))
    nested = pc.match_substring(relative, "/")
    parent = pc.if_else(nested, pc.replace_substring_regex(relative, "/[^/]*$", ""), ".")
    return {"path": path, "folder": parent}


def positions_of(relative: pa.Array, names: Iterable[str]) -> list[int]:
    """Positions in ``relative`` of ``names`` (each present once)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = list(names)
    if not names:
        return []
    return pc.index_in(pa.array(names, pa.large_string()), value_set=relative).to_pylist()
