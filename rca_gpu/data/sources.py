"""Image sources: a folder of images, a manifest (.csv / .parquet), or in-memory arrays -> FailureSet.

Every input row stays in the FailureSet, also the unusable ones: rows whose file is missing or whose path
escapes the allowed root are marked rejected here with their reason; undecodable images are rejected later,
when they are read. ``len(failures)`` is the number of rows that the outputs must account for.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu.data.listing import classify_entry
from rca_gpu.data.paths import BYTES_SUFFIX, bytes_column, is_utf8, path_or_file
from rca_gpu.errors import SourceError, escape_surrogates, printable

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm", ".ppm", ".pbm", ".pnm")
MANIFEST_EXTENSIONS = (".csv", ".parquet")
#: Columns rca_gpu writes itself. A metadata column of a manifest (or of array metadata) with one of these
#: names keeps its values under the name prefixed with "input_", the prefix repeated until the name is free;
#: the same rule settles two columns of one name. The manifest's own 'path' and 'id' columns are read.
RESERVED_COLUMNS = ("id", "path", "path_bytes", "input_path", "folder", "cluster", "status", "reason")
#: Parquet schema metadata key naming the DNN under test, relative to the manifest's folder.
DUT_METADATA_KEY = b"rca_gpu.dut"
#: Architectures a manifest may name for its DNN under test (``NAME=weights.pt``): id -> the rca_gpu factory
#: that builds it. Data never names code: only these ids are accepted, and the factory path comes from here.
KNOWN_ARCHITECTURES = {
    "mnist_cnn": "rca_gpu.datasets.models:mnist_cnn",
    "shapes_cnn": "rca_gpu.datasets.models:shapes_cnn",
    "digit_recognizer_cnn": "rca_gpu.datasets.models:digit_recognizer_cnn",
}
#: File name endings of a model file a manifest may name (TorchScript, torch.export, ONNX).
MODEL_FILE_EXTENSIONS = (".pt", ".pth", ".pt2", ".onnx")


@dataclass
class FailureSet:
    """The failing images of one run: a table with ``id``, ``path`` and pass-through metadata.

    Attributes
    ----------
    table:
        One row per input row, in input order. Columns ``id`` and ``path`` (resolved, absolute) come
        first, then metadata (``label``, ``prediction``, ``root_cause``, anything else).
    rejected:
        Row position -> reason, for rows known to be unusable before any image is decoded.
    images:
        For array sources: uint8 images (n, h, w) or (n, h, w, c); ``path`` then holds a synthetic name.
    dut:
        The DNN under test recorded by the manifest (absolute path), or None.
    file_paths:
        The paths to open, where they differ from the table's ``path`` column: a file name whose bytes are
        not UTF-8 is shown in the table with ``\\xNN`` escapes (every output is UTF-8) and opened from here.
    source:
        What was given, as UTF-8 text (``\\xNN`` for bytes that are not UTF-8; :mod:`rca_gpu.data.paths`).
    left_out:
        For folder sources: the image-named files the scan left out, by rule (hidden names, rca-gpu output
        folders; :meth:`rca_gpu.data.listing.LeftOut.to_dict`). Recorded in run.json.
    """

    table: pd.DataFrame
    source: str
    kind: str
    rejected: dict[int, str] = field(default_factory=dict)
    images: np.ndarray | None = None
    dut: str | None = None
    root: str | None = None
    file_paths: list[str] | None = None
    left_out: dict[str, Any] = field(default_factory=dict)
    source_path: str | None = None  # what was given, as the file system names it (``source`` is its text)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def paths(self) -> list[str]:
        """The file of each row, as the file system names it (what to open)."""
        return list(self.file_paths) if self.file_paths is not None else self.table["path"].tolist()

    @property
    def ids(self) -> np.ndarray:
        return self.table["id"].to_numpy()

    @property
    def has_root_cause(self) -> bool:
        return "root_cause" in self.table.columns and self.table["root_cause"].notna().any()

    def describe(self) -> dict[str, Any]:
        """run.json's ``"source"``: what was given, its kind, its rows, the image root its paths had to resolve
        inside (readers of the run apply it again: :func:`path_refusal`) and what the folder scan left out."""
        from rca_gpu.data.paths import json_fields

        given = self.source_path if self.source_path is not None else str(self.source)
        info: dict[str, Any] = {**json_fields("given", given), "kind": self.kind, "rows": len(self),
                                "root": self.root}
        if self.kind == "folder":
            info["left_out"] = self.left_out
        return info

    @property
    def usable_positions(self) -> np.ndarray:
        """Row positions not rejected up front."""
        mask = np.ones(len(self), dtype=bool)
        if self.rejected:
            mask[list(self.rejected)] = False
        return np.flatnonzero(mask)

    def fingerprint(self) -> str:
        """Digest of what the rows hold: the bytes of every usable row's file, in row order, and the reason of
        each row rejected up front; for an array source, the arrays' bytes, shape and dtype.

        What the feature cache and the autoencoder's training depend on: an image replaced by another of the
        same name, size and modification time changes it, a renamed or touched file does not. Each file is read
        in blocks (:func:`file_digest`), never whole; the result is kept for the life of the object.
        """
        if self._fingerprint is None:
            self._fingerprint = self._content_digest()
        return self._fingerprint

    def _content_digest(self) -> str:
        import hashlib

        digest = hashlib.blake2b(digest_size=20)
        if self.images is not None:
            images = np.ascontiguousarray(self.images)
            digest.update(f"{images.shape}:{images.dtype.str}\n".encode())
            digest.update(images.data.cast("B"))
            return f"arrays:{len(self)}:{digest.hexdigest()}"
        paths = self.file_paths if self.file_paths is not None else self.table["path"]
        chunk = 1 << 16
        for start in range(0, len(paths), chunk):
            part = paths[start:start + chunk] if isinstance(paths, list) else paths.iloc[start:start + chunk].tolist()
            for position, path in enumerate(part, start):
                reason = self.rejected.get(position)
                held = f"rejected: {reason}" if reason is not None else file_digest(path)
                digest.update(f"{position}\0{held}\n".encode("utf-8", "surrogateescape"))
        return f"content:{len(self)}:{digest.hexdigest()}"


#: Bytes read at once by :func:`file_digest`.
DIGEST_BLOCK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    """Hex blake2b digest (16 bytes) of a regular file's bytes, read in blocks of :data:`DIGEST_BLOCK`; for
    anything else a description instead of a digest (``"not a regular file"``, ``"unreadable: <why>"``).

    The file is opened without blocking and checked to be a regular file before a byte is read, so a named
    pipe put in an image's place never blocks the caller.
    """
    import hashlib
    import stat

    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (OSError, TypeError, ValueError) as exc:
        return f"unreadable: {getattr(exc, 'strerror', None) or exc}"
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            return "not a regular file"
        digest = hashlib.blake2b(digest_size=16)
        while block := os.read(handle, DIGEST_BLOCK):
            digest.update(block)
        return digest.hexdigest()
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    finally:
        os.close(handle)


def load_source(source: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                skip: list[str | os.PathLike] | tuple = ()) -> FailureSet:
    """Open a folder of images or a manifest file. Raises SourceError with the fix on bad input.

    ``skip``: folders a folder scan leaves out besides hidden entries and rca-gpu output folders (the --out
    folder of the command reading the source; see :func:`rca_gpu.data.listing.scan_entries`)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(
            f"The source {str(source)!r} does not exist. Pass a folder of images or a manifest .csv/.parquet "
            "with a 'path' column."
        )
    if path.is_dir():
        return _from_folder(path, skip)
    if path.suffix.lower() in MANIFEST_EXTENSIONS:
        return _from_manifest(path, image_root)
    raise SourceError(
        f"The source {str(source)!r} is neither a folder nor a manifest. Pass a folder of images or a "
        ".csv/.parquet file with a 'path' column."
    )


def from_arrays(images: np.ndarray, metadata: pd.DataFrame | dict[str, Any] | None = None) -> FailureSet:
    """A FailureSet over in-memory uint8 images (n, h, w) or (n, h, w, c), for tests and benchmarks."""
    images = np.asarray(images)
    if images.ndim not in (3, 4) or images.dtype != np.uint8:
        raise SourceError("Array sources must be uint8 images shaped (n, h, w) or (n, h, w, c).")
    n = len(images)
    if n == 0:
        raise SourceError("The array source holds no images.")
    table = pd.DataFrame({"id": np.arange(n, dtype=np.int64), "path": [f"array://{i}" for i in range(n)]})
    if metadata is not None:
        meta = pd.DataFrame(metadata).reset_index(drop=True)
        if len(meta) != n:
            raise SourceError(f"Array metadata has {len(meta)} rows for {n} images.")
        table = _assemble({"id": table["id"], "path": table["path"]}, list(meta.items()))
    return FailureSet(table=table, source="arrays", kind="arrays", images=images)


def reason_kind(reason: str) -> tuple[str, str]:
    """(kind, detail) of a row's reason: the kind without the values that vary from row to row (what stands
    in parentheses, what follows ": "), and those values. ``"the path is not text (int 0)"`` ->
    ``("the path is not text", "int 0")``; ``"unreadable image: [Errno 13] ..."`` -> ``("unreadable image",
    "[Errno 13] ...")``."""
    import re

    head, _, tail = str(reason).partition(": ")
    details = re.findall(r"\(([^()]*)\)", head) + ([tail] if tail else [])
    kind = re.sub(r"\s*\([^()]*\)", "", head).strip() or str(reason)
    return kind, "; ".join(details)


def summarize_reasons(reasons: Iterable[str], top: int = 3) -> tuple[str, int]:
    """("3 x the path is not text, e.g. int 0 | 1 x file not found", number of kinds): the ``top`` most common
    kinds of reason (:func:`reason_kind`), each with one example value when the rows' values differ."""
    from collections import Counter

    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    varies: set[str] = set()
    for reason in reasons:
        reason = str(reason)
        kind, _ = reason_kind(reason)
        counts[kind] += 1
        if kind not in first:
            first[kind] = reason
        elif first[kind] != reason:
            varies.add(kind)
    parts = []
    for kind, n in counts.most_common(top):
        if kind in varies:
            detail = reason_kind(first[kind])[1]
            parts.append(f"{n} x {kind}" + (f", e.g. {detail}" if detail else ""))
        else:
            parts.append(f"{n} x {first[kind]}")
    return " | ".join(parts), len(counts)


#: Starts of the reasons that say a file is there but holds no image rca-gpu reads (rca_gpu.data.loading,
#: :func:`classify_entry`, :func:`_manifest_entry`) ...
CONTENT_REASONS = ("empty file", "not a readable image", "image too large", "truncated image", "unreadable image",
                   "corrupt image", "not an image file extension", "a folder named like an image", "a named pipe",
                   "a socket", "a device file", "not a regular file")
#: ... and of those that say the path names no file that may be read.
PATH_REASONS = ("file not found", "path escapes the image root", "empty path in manifest", "the path is not text",
                "the path contains a NUL character", "the path cannot be resolved", "broken symbolic link",
                "symbolic link loop")
CONTENT_HINT = "Check that the files are images rca-gpu reads (PNG, JPEG, ...)."
PATH_HINT = ("Check the paths: each must name an existing file (in a manifest, relative paths are read from its "
             "folder, and files must lie inside --image-root, by default the manifest's folder).")


def rejection_hint(reasons: Iterable[str]) -> str:
    """What to check for rows rejected with ``reasons``: :data:`CONTENT_HINT` when some reason says a file is no
    readable image (:data:`CONTENT_REASONS`), :data:`PATH_HINT` when some says its path names no usable file
    (:data:`PATH_REASONS`: missing, outside the image root, ...), both when both; "" for other reasons (e.g.
    ``cannot be read: Permission denied``, a feature row with NaN)."""
    found = {"content": False, "path": False}
    for reason in reasons:
        text = str(reason)
        found["content"] = found["content"] or text.startswith(CONTENT_REASONS)
        found["path"] = found["path"] or text.startswith(PATH_REASONS)
        if all(found.values()):
            break
    return " ".join(hint for hint, seen in ((CONTENT_HINT, found["content"]), (PATH_HINT, found["path"])) if seen)


def _from_folder(folder: Path, skip: list[str | os.PathLike] | tuple = ()) -> FailureSet:
    import logging

    from rca_gpu.data.listing import LeftOut, folder_columns, positions_of, scan_entries

    # every entry named like an image, also those that are not regular files: they become rejected rows.
    # Streamed into Arrow arrays: no Python object per file (rca_gpu.data.listing).
    left_out = LeftOut()
    relative, special = scan_entries(folder, IMAGE_EXTENSIONS, skip=skip, left_out=left_out)
    if left_out.total:
        logging.getLogger("rca_gpu").info("%s", left_out.summary())
    if not len(relative):
        why = f"; the scan {left_out.summary()} (list such files in a manifest to use them)" if left_out.total else ""
        raise SourceError(
            f"The folder {str(folder)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)"
            f"{why}. Point SOURCE at the folder with the failing images, or at a manifest."
        )
    root = folder.resolve()
    ids = np.arange(len(relative), dtype=np.int64)
    if not isinstance(relative, list) and not is_utf8(str(root)):  # a folder whose own name is not UTF-8
        relative = relative.to_pylist()
    if isinstance(relative, list):  # a name that is not UTF-8: shown escaped, opened by its real name
        real = [f"{root}/{r}" for r in relative]
        shown = [escape_surrogates(p) for p in real]
        parents = [escape_surrogates(r.rsplit("/", 1)[0]) if "/" in r else "." for r in relative]
        rejected = {i: special[r] for i, r in enumerate(relative) if r in special}
        columns = {"id": ids, "path": shown}
        raw = bytes_column(real)
        if raw is not None:  # the exact bytes of paths that are not UTF-8 (rca_gpu.data.paths)
            columns["path" + BYTES_SUFFIX] = raw
        table = pd.DataFrame({**columns, "folder": parents})
        return FailureSet(table=table, source=escape_surrogates(str(folder)), kind="folder", rejected=rejected,
                          root=str(root), file_paths=real if shown != real else None, left_out=left_out.to_dict(),
                          source_path=str(folder))
    listed = folder_columns(root, relative)  # as listed: a link keeps its own name
    rejected = dict(zip(positions_of(relative, special), special.values(), strict=True))
    table = pd.DataFrame({"id": ids, "path": listed["path"].to_pandas(), "folder": listed["folder"].to_pandas()})
    return FailureSet(table=table, source=escape_surrogates(str(folder)), kind="folder", rejected=rejected,
                      root=str(root), left_out=left_out.to_dict())


def _read_manifest(path: Path) -> tuple[pd.DataFrame, dict[bytes, bytes]]:
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            with path_or_file(path) as source:  # a name that is not UTF-8: through a Python file object
                arrow = pq.ParquetFile(source).read()  # not read_table: its dataset layer refuses repeated names
            names = arrow.column_names
            if len(set(names)) == len(names):
                return arrow.to_pandas(), dict(arrow.schema.metadata or {})
            # repeated column names: read by position, keep the names (settled later, see RESERVED_COLUMNS)
            frame = arrow.rename_columns([str(i) for i in range(len(names))]).to_pandas()
            frame.columns = names
            return frame, dict(arrow.schema.metadata or {})
        return read_csv_cells(path, keep_text=("path", *PATH_ALIASES)), {}
    except SourceError:
        raise
    except Exception as exc:  # pyarrow / pandas raise many types for a broken file
        raise SourceError(f"Cannot read the manifest {str(path)!r}: {exc}") from None


#: A CSV cell read as a number: a plain decimal (``-12``, ``3.5``, ``.5``, ``1e-3``) without a leading zero
#: before another digit (``007`` and ``00001`` are codes, kept as text). ``nan``, ``inf``, ``+1``, ``1,5``
#: are text too.
_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|-?\.[0-9]+(?:[eE][-+]?[0-9]+)?"
_INTEGER = r"-?(?:0|[1-9][0-9]*)"


def read_csv_cells(path: str | os.PathLike, *, keep_text: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV manifest or metadata file with every cell as written (UTF-8, first line the header).

    No value is guessed missing or changed: ``None``, ``NA``, ``null``, ``N/A``, ``nan`` stay text; only an
    empty cell is missing. A column becomes numbers only when each of its non-empty cells is a plain decimal
    number without a leading zero (``12``, ``-3.5``, ``1e-3``; not ``007``, ``00001``, ``+1``, ``nan``):
    integers (int64) when every cell is a whole number of at most 15 digits and none is empty, else float64
    when no whole number exceeds 15 digits (float64 would change it); any other column stays text, as do the
    columns in ``keep_text``. Repeated column names are kept, in order (settled by the rule of
    :data:`RESERVED_COLUMNS`, as for Parquet).

    Raises
    ------
    SourceError
        The file is empty or not readable as CSV (the caller names the argument).
    """
    raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, na_values=[""], skip_blank_lines=True)
    header = [f"Unnamed: {i}" if not isinstance(name, str) else name for i, name in enumerate(raw.iloc[0].tolist())]
    body = raw.iloc[1:].reset_index(drop=True)
    columns = {}
    for i, name in enumerate(header):
        column = body.iloc[:, i]
        columns[i] = column if name in keep_text else _typed_column(column)
    frame = pd.DataFrame(columns)
    frame.columns = header
    return frame


def _typed_column(column: pd.Series) -> pd.Series:
    """The column as numbers when every non-empty cell is a plain decimal (see :func:`read_csv_cells`)."""
    present = column.dropna()
    if present.empty or not present.str.fullmatch(_NUMBER).all():
        return column
    whole = present.str.fullmatch(_INTEGER)
    if (whole & (present.str.lstrip("-").str.len() > 15)).any():  # float64 would change it: keep the text
        return column
    if whole.all() and len(present) == len(column):
        return column.astype(np.int64)
    return column.astype(np.float64)


#: Other names of the image path column, read as ``path`` by manifests and ``--features``/``--metadata`` files
#: without a ``path`` column: ``filepath`` is FiftyOne's name for it (its CSV export writes it).
PATH_ALIASES = ("filepath",)


def with_path_column(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its first column named in :data:`PATH_ALIASES` renamed ``path`` when it has no ``path``
    column; unchanged otherwise (a table with both keeps ``filepath`` as metadata)."""
    names = [str(c) for c in frame.columns]
    alias = next((a for a in PATH_ALIASES if a in names), None)
    if "path" in names or alias is None:
        return frame
    renamed = list(frame.columns)
    renamed[names.index(alias)] = "path"
    return frame.set_axis(renamed, axis=1)


def _from_manifest(path: Path, image_root: str | os.PathLike | None) -> FailureSet:
    frame, metadata = _read_manifest(path)
    frame = with_path_column(frame)
    names = [str(c) for c in frame.columns]
    if "path" not in names:
        raise SourceError(
            f"The manifest {str(path)!r} has no 'path' column (columns: {', '.join(names) or 'none'}). "
            "Add a 'path' column (or 'filepath') with one image path per row, relative to the manifest's folder "
            "or absolute."
        )
    if frame.empty:
        raise SourceError(f"The manifest {str(path)!r} has no rows. Add one row per failing image.")
    dut = _dut_from_metadata(metadata.get(DUT_METADATA_KEY), path)
    frame = frame.reset_index(drop=True)
    columns = [frame.iloc[:, i] for i in range(frame.shape[1])]  # by position: names may repeat
    path_position = names.index("path")
    id_position = names.index("id") if "id" in names else None
    base = path.parent.resolve()
    root = Path(image_root).expanduser().resolve() if image_root else base
    if image_root and not root.is_dir():
        raise SourceError(
            f"The --image-root {str(image_root)!r} is not a folder. Pass the folder that holds the manifest's images."
        )
    resolved, rejected = [], {}
    raw_paths = columns[path_position].tolist()
    for pos, raw in enumerate(raw_paths):
        where, reason = _manifest_entry(raw, base, root)
        resolved.append(where)
        if reason is not None:
            rejected[pos] = reason
    ids = _ids(columns[id_position] if id_position is not None else None, len(frame), path)
    meta = [(names[i], columns[i]) for i in range(len(columns)) if i not in (path_position, id_position)]
    shown = [escape_surrogates(p) for p in resolved]
    front = {"id": ids, "path": shown, "input_path": [escape_surrogates(_as_text(r)) for r in raw_paths]}
    raw = bytes_column(resolved)
    if raw is not None:  # the exact bytes of paths that are not UTF-8 (rca_gpu.data.paths)
        front["path" + BYTES_SUFFIX] = raw
    table = _assemble(front, meta)
    return FailureSet(table=table, source=escape_surrogates(str(path)), kind="manifest", rejected=rejected, dut=dut,
                      root=str(root), file_paths=resolved if shown != resolved else None, source_path=str(path))


def _as_text(raw: Any) -> str:
    if raw is None or (isinstance(raw, float) and raw != raw):
        return ""
    return raw if isinstance(raw, str) else str(raw)


def _manifest_entry(raw: Any, base: Path, root: Path) -> tuple[str, str | None]:
    """(absolute path, reason it is unusable or None) for one manifest 'path' value."""
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    if not isinstance(raw, str):
        if raw is None or (isinstance(raw, float) and raw != raw):
            return "", "empty path in manifest"
        return _as_text(raw), f"the path is not text ({type(raw).__name__} {raw!r})"
    if not raw.strip():
        return "", "empty path in manifest"
    if "\x00" in raw:
        return raw.replace("\x00", "\\x00"), "the path contains a NUL character"
    try:
        listed = base / Path(raw).expanduser()
        candidate = Path(os.path.realpath(listed))  # realpath: no error on link loops
    except (OSError, ValueError, RuntimeError) as exc:
        return raw, f"the path cannot be resolved: {exc}"
    if not candidate.is_relative_to(root):
        return str(candidate), (
            f"path escapes the image root {str(root)!r} (symbolic links followed); use --image-root to allow "
            "another folder"
        )
    if not os.path.lexists(listed):
        return str(candidate), "file not found"
    reason = classify_entry(listed)  # the entry as listed: a broken link or a loop is named as such
    if reason is not None:
        return str(candidate), reason
    if candidate.suffix.lower() not in IMAGE_EXTENSIONS:
        return str(candidate), f"not an image file extension ({candidate.suffix or 'none'})"
    return str(candidate), None


def path_refusal(path: str, root: str | os.PathLike) -> str | None:
    """Why the image file ``path`` may not be read under the image root ``root``, by the manifest rule of
    :func:`_manifest_entry` (inside the root with links followed, an existing regular file named like an
    image), or None when it may. Readers of a finished run's image paths apply it again
    (:meth:`rca_gpu.runfolder.RunFolder.image_files`)."""
    root = Path(root)
    return _manifest_entry(path, root, root)[1]


def _assemble(front: dict[str, Any], metadata: list[tuple[Any, Any]]) -> pd.DataFrame:
    """The FailureSet table: rca_gpu's own columns first, then the metadata columns under names made unique
    by the rule of :data:`RESERVED_COLUMNS` (prefix "input_" until free)."""
    taken = set(RESERVED_COLUMNS) | set(front)
    data = dict(front)
    for name, values in metadata:
        name = str(name)
        while name in taken:
            name = f"input_{name}"
        taken.add(name)
        data[name] = values.reset_index(drop=True) if isinstance(values, pd.Series) else values
    return pd.DataFrame(data)


def _ids(ids: pd.Series | None, n: int, path: Path) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    check_ids(ids, f"The 'id' column of {str(path)!r}")
    return ids.to_numpy()


def check_ids(ids: pd.Series, what: str) -> None:
    """Refuse an id column with a missing or repeated value, naming the first one and its data rows (counted
    from 1, the header not counted).

    Raises
    ------
    SourceError
        "<what> has missing or repeated values: the value '01' is repeated in data rows 2 and 5. ..."
    """
    def data_rows(positions: np.ndarray) -> str:  # the first five, counted from 1
        return ", ".join(str(r + 1) for r in positions[:5].tolist()) + (" ..." if len(positions) > 5 else "")

    ids = ids.reset_index(drop=True)
    missing = np.flatnonzero(ids.isna().to_numpy())
    if len(missing):
        detail = f"{len(missing)} id(s) are missing, in data row(s) {data_rows(missing)}"
    else:
        repeated = ids.duplicated(keep=False).to_numpy()
        if not repeated.any():
            return
        first = ids[np.flatnonzero(repeated)[0]]
        detail = (f"the value {printable(repr(_plain(first)))} is repeated in data rows "
                  f"{data_rows(np.flatnonzero((ids == first).to_numpy()))}")
    raise SourceError(f"{what} has missing or repeated values: {detail}. Make ids unique, or drop the column.")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _dut_from_metadata(raw: bytes | None, manifest: Path) -> str | None:
    """The DNN under test a manifest records, as a reference :func:`rca_gpu.features.dut.load_model` reads.

    A manifest is data, and data never names code to run. Two forms are accepted, both inside the manifest's
    folder:

    * ``model.pt`` / ``.pth`` / ``.pt2`` / ``.onnx``: a model file (TorchScript, torch.export, ONNX); whole
      pickled models are refused when it is loaded;
    * ``ARCH=weights.pt``: an architecture of :data:`KNOWN_ARCHITECTURES` (e.g. ``mnist_cnn``) and its
      state_dict, loaded with ``weights_only=True``. The older spelling
      ``rca_gpu.datasets.models:ARCH=weights.pt`` is read as the same thing, for the same ids only.

    Anything else (``package.module:function``, a path outside the folder) is refused with a SourceError
    before anything is loaded; entry points come only from --model or a config file the user passes.
    A file that is named but missing is ignored with a warning (the run can use --model instead).
    """
    if not raw:
        return None
    import logging

    base = manifest.parent.resolve()
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = None
    shown = printable(repr(raw.decode("utf-8", "replace") if text is None else text)[:200])
    refusal = (
        f"The manifest {str(manifest)!r} names {shown} as its DNN under test (Parquet metadata "
        f"{DUT_METADATA_KEY.decode()}); a manifest may only name a model file in its folder "
        f"({', '.join(MODEL_FILE_EXTENSIONS)}) or a known architecture with its weights "
        f"({', '.join(f'{a}=weights.pt' for a in KNOWN_ARCHITECTURES)}). Nothing was loaded or run. Choose the "
        "model with --model instead, and remove that entry from the manifest."
    )
    if not text:
        raise SourceError(refusal)
    architecture, file_part = None, text
    if "=" in text:
        name, _, file_part = text.partition("=")
        name = name.removeprefix("rca_gpu.datasets.models:")
        if name not in KNOWN_ARCHITECTURES:
            raise SourceError(refusal)
        architecture = name
    elif Path(text).suffix.lower() not in MODEL_FILE_EXTENSIONS:
        raise SourceError(refusal)
    if "\x00" in file_part or not file_part.strip():
        raise SourceError(refusal)
    path = Path(os.path.realpath(base / file_part))
    if not path.is_relative_to(base):
        raise SourceError(refusal)
    if not path.is_file():
        logging.getLogger("rca_gpu").warning(
            "The manifest names %s as its DNN under test, but that file is missing; pass --model.", shown
        )
        return None
    return f"{KNOWN_ARCHITECTURES[architecture]}={path}" if architecture else str(path)
