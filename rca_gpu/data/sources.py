"""Image sources: a folder of images, a manifest (.csv / .parquet), or in-memory arrays -> FailureSet.

Every input row stays in the FailureSet, also the unusable ones: rows whose file is missing or whose path
escapes the allowed root are marked rejected here with their reason; undecodable images are rejected later,
when they are read. ``len(failures)`` is the number of rows that the outputs must account for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu.errors import SourceError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
MANIFEST_EXTENSIONS = (".csv", ".parquet")
#: Columns rca_gpu writes itself; manifest columns with these names are kept under "input_<name>".
RESERVED_COLUMNS = ("cluster", "status", "reason")
#: Parquet schema metadata key naming the DNN under test, relative to the manifest's folder.
DUT_METADATA_KEY = b"rca_gpu.dut"


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
    """

    table: pd.DataFrame
    source: str
    kind: str
    rejected: dict[int, str] = field(default_factory=dict)
    images: np.ndarray | None = None
    dut: str | None = None
    root: str | None = None

    def __len__(self) -> int:
        return len(self.table)

    @property
    def paths(self) -> list[str]:
        return self.table["path"].tolist()

    @property
    def ids(self) -> np.ndarray:
        return self.table["id"].to_numpy()

    @property
    def has_root_cause(self) -> bool:
        return "root_cause" in self.table.columns and self.table["root_cause"].notna().any()

    @property
    def usable_positions(self) -> np.ndarray:
        """Row positions not rejected up front."""
        mask = np.ones(len(self), dtype=bool)
        if self.rejected:
            mask[list(self.rejected)] = False
        return np.flatnonzero(mask)

    def fingerprint(self) -> str:
        """Hex digest of (path, size, mtime_ns) of every row: what a features cache depends on.

        Streamed into the hash in chunks of rows, so a million rows cost no list of a million tuples.
        """
        import hashlib

        if self.images is not None:
            digest = hashlib.sha256(np.ascontiguousarray(self.images).tobytes()).hexdigest()
            return f"arrays:{len(self)}:{digest}"
        digest = hashlib.sha256()
        paths = self.table["path"]
        for start in range(0, len(paths), 1 << 16):
            for path in paths.iloc[start:start + (1 << 16)].tolist():
                try:
                    st = os.stat(path)
                    size, mtime = st.st_size, st.st_mtime_ns
                except (OSError, TypeError, ValueError):
                    size = mtime = -1
                digest.update(f"{path}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
        return f"files:{len(self)}:{digest.hexdigest()}"


def load_source(source: str | os.PathLike, *, image_root: str | os.PathLike | None = None) -> FailureSet:
    """Open a folder of images or a manifest file. Raises SourceError with the fix on bad input."""
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(
            f"The source {str(source)!r} does not exist. Pass a folder of images or a manifest .csv/.parquet "
            "with a 'path' column."
        )
    if path.is_dir():
        return _from_folder(path)
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
        table = pd.concat([table, _protect_reserved(meta.drop(columns=["id", "path"], errors="ignore"))], axis=1)
    return FailureSet(table=table, source="arrays", kind="arrays", images=images)


def _from_folder(folder: Path) -> FailureSet:
    from rca_gpu.data.listing import folder_columns, scan_files

    files, links = scan_files(folder, IMAGE_EXTENSIONS)  # streamed: no Python object per file
    if not len(files):
        raise SourceError(
            f"The folder {str(folder)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively). "
            "Point SOURCE at the folder with the failing images, or at a manifest."
        )
    root = folder.resolve()
    columns = folder_columns(folder, files, links)
    table = pd.DataFrame(
        {
            "id": np.arange(len(files), dtype=np.int64),
            "path": columns["path"].to_pandas(),
            "folder": columns["folder"].to_pandas(),
        }
    )
    return FailureSet(table=table, source=str(folder), kind="folder", root=str(root))


def _read_manifest(path: Path) -> tuple[pd.DataFrame, dict[bytes, bytes]]:
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            arrow = pq.read_table(path)
            return arrow.to_pandas(), dict(arrow.schema.metadata or {})
        return pd.read_csv(path), {}
    except Exception as exc:  # pyarrow / pandas raise many types for a broken file
        raise SourceError(f"Cannot read the manifest {str(path)!r}: {exc}") from None


def _from_manifest(path: Path, image_root: str | os.PathLike | None) -> FailureSet:
    frame, metadata = _read_manifest(path)
    if "path" not in frame.columns:
        raise SourceError(
            f"The manifest {str(path)!r} has no 'path' column (columns: {', '.join(map(str, frame.columns)) or 'none'}). "
            "Add a 'path' column with one image path per row, relative to the manifest's folder or absolute."
        )
    if frame.empty:
        raise SourceError(f"The manifest {str(path)!r} has no rows. Add one row per failing image.")
    base = path.parent.resolve()
    root = Path(image_root).expanduser().resolve() if image_root else base
    from rca_gpu.data.listing import check_manifest_paths

    resolved, rejected = check_manifest_paths(frame["path"], base, root, IMAGE_EXTENSIONS)  # in chunks
    ids = _ids(frame, path)
    meta = _protect_reserved(frame.drop(columns=["path", "id"], errors="ignore").reset_index(drop=True))
    table = pd.concat(
        [pd.DataFrame({"id": ids, "path": resolved, "input_path": frame["path"].astype(str).reset_index(drop=True)}), meta],
        axis=1,
    )
    dut = _dut_from_metadata(metadata.get(DUT_METADATA_KEY), base)
    return FailureSet(table=table, source=str(path), kind="manifest", rejected=rejected, dut=dut, root=str(root))


def _ids(frame: pd.DataFrame, path: Path) -> np.ndarray:
    if "id" not in frame.columns:
        return np.arange(len(frame), dtype=np.int64)
    ids = frame["id"]
    if ids.isna().any() or ids.duplicated().any():
        raise SourceError(
            f"The 'id' column of {str(path)!r} has missing or repeated values. Make ids unique, or drop the column."
        )
    return ids.to_numpy()


def _protect_reserved(meta: pd.DataFrame) -> pd.DataFrame:
    renames = {c: f"input_{c}" for c in meta.columns if c in RESERVED_COLUMNS}
    return meta.rename(columns=renames)


def _dut_from_metadata(raw: bytes | None, base: Path) -> str | None:
    """The model reference a manifest records, with its file resolved inside the manifest's folder.

    Two forms, as for --model: ``file.pt`` (TorchScript / .pt2) or ``package.module:factory=weights.pt``.
    A factory is imported and called, so one named by a manifest is accepted only from rca_gpu itself.
    """
    if not raw:
        return None
    import logging

    text = raw.decode()
    factory, _, file_part = text.rpartition("=") if "=" in text else ("", "", text)
    if factory and not factory.startswith("rca_gpu."):
        logging.getLogger("rca_gpu").warning(
            "Ignoring the manifest's model %r: only rca_gpu factories are loaded from manifests; pass --model.",
            text,
        )
        return None
    path = (base / file_part).resolve()
    if not path.is_file() or not path.is_relative_to(base):
        return None
    return f"{factory}={path}" if factory else str(path)
