"""A finished run folder: the contract between ``rca-gpu run`` and everything that reads its results.

A run writes every file under one run id: ``run.json`` holds it under ``"run_id"``, other JSON files under
the same key, and Parquet files in their schema metadata under :data:`RUN_ID_KEY`. ``run.json`` is written
last, so its presence marks a complete run. Readers (evaluate, the report, the catalogue) open a folder with
:func:`open_run`, which refuses a folder without ``run.json``, one written by another run format, and any
file whose run id differs from run.json's (a folder that mixes two runs).

Only plain formats are read here (JSON, Parquet); nothing in a run folder is ever unpickled or executed.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rca_gpu.errors import RcaError

#: Version of the run-folder layout. Bumped when a reader could misread an older folder.
RUN_FORMAT = 2
#: Parquet schema metadata key holding the run id.
RUN_ID_KEY = b"rca_gpu.run_id"
RUN_FILE = "run.json"


class RunFolderError(RcaError, ValueError):
    """A run folder is missing, incomplete, written by another version, or mixes two runs."""


def new_run_id() -> str:
    """A fresh run id: 32 lowercase hex digits (a random UUID)."""
    return uuid.uuid4().hex


@dataclass
class RunFolder:
    """An opened, complete run folder. Files are read on demand and their run id checked.

    Attributes
    ----------
    path:
        The folder (absolute).
    info:
        The parsed ``run.json``.
    """

    path: Path
    info: dict[str, Any]
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def run_id(self) -> str:
        return str(self.info["run_id"])

    def file(self, name: str) -> Path:
        """Path of ``name`` inside the run folder (it need not exist)."""
        return self.path / name

    def has(self, name: str) -> bool:
        return self.file(name).is_file()

    def table(self, name: str):
        """Read the Parquet file ``name`` as a pandas DataFrame, after checking it belongs to this run.

        Raises
        ------
        RunFolderError
            The file is missing, unreadable, or carries another run id (or none).
        """
        if name in self._cache:
            return self._cache[name]
        import pyarrow.parquet as pq

        path = self._existing(name)
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise RunFolderError(f"Cannot read {str(path)!r}: {exc}. Run `rca-gpu run` again.") from None
        found = (table.schema.metadata or {}).get(RUN_ID_KEY)
        self._check_id(name, found.decode() if found else None)
        frame = table.to_pandas()
        self._cache[name] = frame
        return frame

    def clusters(self):
        """``clusters.parquet``: one row per input row (id, path, cluster, status, reason, metadata...)."""
        return self.table("clusters.parquet")

    def embedding(self):
        """``embedding.parquet``: one row per usable image (id, cluster, x, y, e0..ek)."""
        return self.table("embedding.parquet")

    def json(self, name: str) -> dict[str, Any]:
        """Read the JSON file ``name`` after checking its ``run_id`` (RunFolderError otherwise)."""
        path = self._existing(name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"Cannot read {str(path)!r}: {exc}. Run `rca-gpu run` again.") from None
        self._check_id(name, data.get("run_id") if isinstance(data, dict) else None)
        return data

    def _existing(self, name: str) -> Path:
        path = self.file(name)
        if not path.is_file():
            raise RunFolderError(
                f"The run folder {str(self.path)!r} has no {name}. Run `rca-gpu run SOURCE --out "
                f"{self.path}` again to write it."
            )
        return path

    def _check_id(self, name: str, found: str | None) -> None:
        if found != self.run_id:
            what = f"run {found}" if found else "no run (it carries no run id)"
            raise RunFolderError(
                f"{name} in {str(self.path)!r} belongs to {what}, but run.json to run {self.run_id}: the folder "
                "mixes files of different runs. Run `rca-gpu run` again into an empty folder."
            )


def open_run(path: str | Path) -> RunFolder:
    """Open a finished run folder for reading.

    Raises
    ------
    RunFolderError
        ``path`` is not a folder, has no readable ``run.json`` (an unfinished or interrupted run), or its
        run.json was written by another run-folder format.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise RunFolderError(
            f"The run folder {str(path)!r} does not exist or is not a folder. Pass the --out folder of a "
            "finished `rca-gpu run`."
        )
    run_file = folder / RUN_FILE
    if not run_file.is_file():
        raise RunFolderError(
            f"{str(path)!r} holds no {RUN_FILE}, so it is not a finished run (an interrupted run leaves none). "
            f"Run `rca-gpu run SOURCE --out {path}` to completion first."
        )
    try:
        info = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"Cannot read {str(run_file)!r}: {exc}. Run `rca-gpu run` again.") from None
    found_format = info.get("rca_gpu_run") if isinstance(info, dict) else None
    if found_format != RUN_FORMAT or not info.get("run_id"):
        raise RunFolderError(
            f"{str(path)!r} was written by another version of rca-gpu (run format {found_format!r}; this "
            f"version reads format {RUN_FORMAT}). Run `rca-gpu run` again with this version."
        )
    return RunFolder(folder.resolve(), info)
