"""Export a run's clusters to folders: one per cluster (and for the noise and the rejected images), each with
the images (symbolic links or copies) and a ``manifest.csv``, so they open in any image viewer or feed
retraining.

Layout under the target folder::

    cluster-0/manifest.csv  cluster-0/<id>_<name>.png ...
    noise/...  rejected/...  export.json  (run id, every group in the folder with its size and mode)

Exporting more groups of the same run into the folder later adds them to export.json.

Each manifest has ``path`` relative to its own folder (so a copied folder is itself a valid ``rca-gpu run``
source; a linked one too with ``--image-root`` set to the originals' folder, since links resolve there),
``source_path`` (the original file), then ``id``, ``cluster``, ``status``, ``reason`` and the
metadata of ``clusters.parquet``. File names come from the data, so they are sanitised: only letters,
digits, ``.``, ``_`` and ``-`` are kept, the image's id is prepended (names stay unique), and every target is
checked to resolve inside the folder being written. Nothing is written outside ``--to`` and no existing
folder is overwritten.

Only the files the run's path rule allows are linked or copied (:meth:`rca_gpu.runfolder.RunFolder.image_files`:
inside the run's image root, links followed, regular files named like images): a row the run refused because
its path escapes the root, or a path changed by hand in clusters.parquet, is listed in the manifest with an
empty ``path`` and the reason in ``not_exported``. An export that fails half-way (a full disk) removes the
group folders it made and leaves export.json as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rca_gpu import outputs
from rca_gpu.data.paths import real_paths
from rca_gpu.report.placing import ExportError, place, safe_name, unique_name
from rca_gpu.runfiles import EXPORT_FILE, EXPORT_MANIFEST
from rca_gpu.runfolder import RunFolder, open_run

MODES = ("link", "copy")
#: Layouts of an export: a folder per group (with manifest.csv), or FiftyOne's CSVDataset (data/, labels.csv).
FORMATS = ("folders", "fiftyone")
MANIFEST = EXPORT_MANIFEST


@dataclass
class ExportResult:
    folder: Path
    groups: dict[str, int] = field(default_factory=dict)  # folder name -> images listed
    files: int = 0  # links or copies made
    missing: int = 0  # listed images without a file made: missing, or refused by the run's path rule
    empty: list[str] = field(default_factory=list)  # noise / rejected asked for, but the run has none


def group_name(label: int, status: str) -> str:
    """Folder of an image: ``cluster-<n>``, ``noise`` or ``rejected``."""
    if status == "rejected":
        return "rejected"
    return f"cluster-{int(label)}" if label >= 0 else "noise"


def parse_selection(text: str | None) -> list[str] | None:
    """``"3,5,noise,rejected"`` -> folder names; None selects everything.

    Raises
    ------
    ExportError
        A token is neither an integer >= 0, ``-1``, ``noise`` nor ``rejected``.
    """
    if text is None or not text.strip():
        return None
    names = []
    for token in (t.strip().lower() for t in text.split(",")):
        if token in ("noise", "-1"):
            names.append("noise")
        elif token == "rejected":
            names.append("rejected")
        elif token.isdigit():
            names.append(f"cluster-{int(token)}")
        else:
            raise ExportError(
                f"The --clusters option takes cluster numbers, 'noise' and 'rejected' separated by commas; "
                f"got {token!r} in {text!r}. Example: --clusters 3,5,noise"
            )
    return list(dict.fromkeys(names))


@outputs.writes_to("target", "rca-gpu export")
def export_run(
    run_dir: str | Path | RunFolder,
    target: str | Path,
    *,
    clusters: Iterable[str] | None = None,
    mode: str = "link",
    layout: str = "folders",
    ids: str | Path | None = None,
) -> ExportResult:
    """Write one folder per cluster (noise and rejected too) with images and a manifest, or FiftyOne's
    CSVDataset layout of them (:mod:`rca_gpu.report.interop`).

    Parameters
    ----------
    run_dir:
        A finished run folder.
    target:
        The export folder; created if missing. Existing group folders inside it are never overwritten.
    clusters:
        Folder names to export (see :func:`parse_selection`); None exports every group.
    mode:
        ``"link"``: symbolic links to the original files (instant, no space); ``"copy"``: copies.
    layout:
        ``"folders"`` (a folder per group) or ``"fiftyone"`` (``data/`` and ``labels.csv`` in ``target``).
    ids:
        A CSV file with an ``id`` column (e.g. the selection.csv the report's map downloads): only those images
        are exported.

    Returns
    -------
    ExportResult
        The folder, images per group, files made, and images whose file is missing.

    Raises
    ------
    ExportError
        Unknown mode or format, a selected cluster the run does not have, an ``ids`` file that cannot be read or
        names ids the run does not hold, or a group folder (data/, labels.csv) that already exists.
    rca_gpu.runfolder.RunFolderError
        The run folder is not a finished run; ``target`` is a file, below a file, or not writable.
    rca_gpu.catalogue.CatalogueError
        ``run_dir`` is the output folder of assign, select or export; ``target`` is a run folder.
    """
    from rca_gpu.catalogue.folders import check_out_dir, check_run_dir

    if mode not in MODES:
        raise ExportError(f"The --mode option must be one of {', '.join(MODES)}; got {mode!r}.")
    if layout not in FORMATS:
        raise ExportError(f"The --format option must be one of {', '.join(FORMATS)}; got {layout!r}.")
    if not isinstance(run_dir, RunFolder):
        check_run_dir(run_dir)
    run = run_dir if isinstance(run_dir, RunFolder) else open_run(run_dir)
    # before any file is made
    check_out_dir(target, option="--to", run_path=run.path, example="exported/", command="rca-gpu export")
    table = _with_causes(run, run.clusters())
    if ids is not None:
        table = table[table["id"].astype(str).isin(read_ids(ids, table))]
    names = [group_name(c, s) for c, s in zip(table["cluster"].to_numpy(), table["status"].to_numpy(), strict=True)]
    table = table.assign(_group=names)
    present = list(dict.fromkeys(sorted(set(names), key=_group_order)))
    selected = present if clusters is None else list(dict.fromkeys(clusters))
    # noise and rejected are groups of every run, empty in some: asked for and empty, they are skipped and said
    empty = [name for name in selected if name in ("noise", "rejected") and name not in present]
    selected = [name for name in selected if name not in empty]
    unknown = [name for name in selected if name not in present]
    if unknown:
        raise ExportError(
            f"The run has no {', '.join(unknown)}; it has {', '.join(present)}. Pick from those with --clusters."
        )
    earlier = _earlier_export(Path(target).expanduser(), run)
    root = Path(target).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    if earlier.get("format") == "fiftyone" or (earlier and layout == "fiftyone"):
        raise ExportError(f"The export folder {str(root)!r} holds an earlier export ({EXPORT_FILE}); a FiftyOne "
                          "export and a folder export need a folder each: pass a new --to folder.")
    if layout == "fiftyone":
        return _export_fiftyone(run, root, table[table["_group"].isin(selected)], mode, empty)
    clashes = [name for name in selected if os.path.lexists(root / name)]
    if clashes:
        raise ExportError(
            f"The export folder {str(root)!r} already holds {', '.join(clashes)}; pass an empty or new --to "
            "folder, or remove those folders first."
        )
    result = ExportResult(root, empty=empty)
    own = ("id", "path", "cluster", *CAUSE_COLUMNS, "status", "reason", "_group")
    meta = [c for c in table.columns if c not in own]
    made: list[Path] = []
    try:
        for name in selected:
            folder = root / name
            folder.mkdir()  # fails if it appeared meanwhile: never write into a folder we did not make
            made.append(folder)
            _export_group(run, table[table["_group"] == name], folder, mode, meta, result)
            result.groups[name] = int((table["_group"] == name).sum())
        # export.json lists every group in the folder: those of earlier exports of this run into it too
        groups = {**(earlier.get("groups") or {}), **result.groups}
        modes = {**(earlier.get("group_modes") or {name: earlier.get("mode") for name in earlier.get("groups") or {}}),
                 **{name: mode for name in result.groups}}
        groups = {name: groups[name] for name in sorted(groups, key=_group_order)}
        outputs.write_json(root / EXPORT_FILE, {
            "run_dir": str(run.path), "mode": mode if set(modes.values()) == {mode} else "mixed",
            "groups": groups, "group_modes": {name: modes.get(name) for name in groups},
            "files": int(earlier.get("files") or 0) + result.files,
            "missing": int(earlier.get("missing") or 0) + result.missing,
        }, run_id=run.run_id)
        return result
    except BaseException as exc:
        for folder in made:  # a half-made export leaves nothing: the folders it made go, export.json stays
            shutil.rmtree(folder, ignore_errors=True)
        reason = outputs.refused_reason(exc, root) if isinstance(exc, (OSError, shutil.Error)) else None
        if reason is not None:
            raise outputs.refusal(root, reason) from None
        raise


#: The catalogue's cause of each image (after ``rca-gpu causes`` merges, splits and names) in every manifest.
CAUSE_COLUMNS = ("cause", "cause_name")


def _with_causes(run: RunFolder, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (clusters.parquet) with the catalogue's ``cause`` id and ``cause_name`` of each row (-1 and ""
    for noise and rejected rows), as clusters.csv has them; a metadata column of the same name is kept under
    ``input_<name>``."""
    from rca_gpu.catalogue.causes import load_catalogue

    catalogue = load_catalogue(run)
    cause = np.array(catalogue.cause_of(table["id"].to_numpy()), dtype=np.int64)  # a copy: written below
    cause[table["status"].to_numpy() == "rejected"] = -1
    names = [catalogue.causes[int(c)].name if int(c) in catalogue.causes else "" for c in cause]
    for column in CAUSE_COLUMNS:
        if column in table.columns:
            free = f"input_{column}"
            while free in table.columns:  # the manifest rule: the prefix repeated until the name is free
                free = f"input_{free}"
            table = table.rename(columns={column: free})
    return table.assign(cause=cause, cause_name=names)


def _export_group(run: RunFolder, members: pd.DataFrame, folder: Path, mode: str, meta: list[str],
                  result: ExportResult) -> None:
    """Link or copy the images of one group into ``folder`` (made empty) and write its manifest.csv. Only the
    files the run's path rule allows (:meth:`RunFolder.image_files`) are linked or copied; the others are
    listed with an empty ``path`` and the reason in ``not_exported``."""
    files_ok = run.image_files(real_paths(members))  # a missing path: "no image file"
    files: list[str] = []
    refused: list[str] = []
    used: set[str] = set()
    for k, row in enumerate(members.itertuples(index=False)):
        source = files_ok[k]
        if not source:
            files.append("")
            refused.append(files_ok.reason(k))
            result.missing += 1
            continue
        file_name = unique_name(safe_name(row.id, source), used)
        destination = folder / file_name
        if destination.resolve().parent != folder:  # belt and braces: the name cannot leave the folder
            raise ExportError(f"Refusing to write {destination}: it resolves outside {folder}.")
        place(source, destination, mode)
        files.append(file_name)
        refused.append("")
        result.files += 1
    manifest = pd.DataFrame({
        "path": files,
        "source_path": members["path"].astype(str).to_numpy(),
        "id": members["id"].to_numpy(),
        "cluster": members["cluster"].to_numpy(),
        **{column: members[column].to_numpy() for column in CAUSE_COLUMNS},
        "status": members["status"].to_numpy(),
        "reason": members["reason"].to_numpy(),
        "not_exported": refused,
    })
    manifest = pd.concat([manifest, members[meta].reset_index(drop=True)], axis=1)
    outputs.write_text(folder / MANIFEST, manifest.to_csv(index=False))


def _export_fiftyone(run: RunFolder, root: Path, members: pd.DataFrame, mode: str,
                     empty: list[str]) -> ExportResult:
    """The FiftyOne layout of ``members`` in ``root`` (a folder without an earlier export); export.json records
    ``format`` fiftyone and no group folders."""
    from rca_gpu.report.interop import FIFTYONE_LABELS, export_fiftyone

    try:
        made, left_out = export_fiftyone(run, root, members, mode=mode)
    except BaseException as exc:
        reason = outputs.refused_reason(exc, root) if isinstance(exc, (OSError, shutil.Error)) else None
        if reason is not None:
            raise outputs.refusal(root, reason) from None
        raise
    result = ExportResult(root, groups={FIFTYONE_LABELS: made}, files=made, missing=left_out, empty=empty)
    outputs.write_json(root / EXPORT_FILE, {
        "run_dir": str(run.path), "format": "fiftyone", "mode": mode, "groups": {}, "group_modes": {},
        "files": made, "missing": left_out,
    }, run_id=run.run_id)
    return result


def read_ids(path: str | Path, table: pd.DataFrame) -> set[str]:
    """The image ids listed in the ``id`` column of the CSV file ``path`` (as text), all of which the run holds.

    Raises
    ------
    ExportError
        The file cannot be read, has no ``id`` column, or names ids that are not in the run.
    """
    from rca_gpu.data.sources import read_csv_cells

    try:
        frame = read_csv_cells(path, keep_text=("id",))
    except Exception as exc:  # pandas raises several types for a broken file
        raise ExportError(f"Cannot read the --ids file {str(path)!r}: {exc}. Pass a CSV file with an 'id' column "
                          "(e.g. the selection.csv of the report's map).") from None
    if "id" not in frame.columns:
        raise ExportError(f"The --ids file {str(path)!r} has no 'id' column (columns: "
                          f"{', '.join(map(str, frame.columns)) or 'none'}). Pass a CSV file with an 'id' column.")
    wanted = set(frame["id"].dropna().astype(str))
    unknown = sorted(wanted - set(table["id"].astype(str)))
    if unknown:
        raise ExportError(f"The --ids file {str(path)!r} names {len(unknown)} id(s) the run does not hold, e.g. "
                          f"{unknown[0]!r}. Pass ids of this run's clusters.parquet.")
    return wanted


def _earlier_export(root: Path, run: RunFolder) -> dict:
    """The export.json an earlier ``export`` of the same run left in ``root`` ({} when none), read through its
    schema (:class:`rca_gpu.runfiles.ExportInfo`). An export of another run there, or an export.json that is
    not one rca-gpu wrote, is refused (ExportError): its folders would mix with this run's."""
    from rca_gpu.runfiles import MarkerInfo, json_object, read_json

    path = root / EXPORT_FILE
    if not path.is_file():
        return {}
    data = json_object(path, MarkerInfo)
    if data is not None and data.get("run_id") == run.run_id:  # this run's: every field must hold
        return read_json(path, error=ExportError, fix="Remove that folder, or pass another --to folder.")
    found = data.get("run_id") if data is not None else None
    raise ExportError(
        f"The --to folder {str(root)!r} holds an export of {f'run {found}' if found else 'an unknown run'} "
        f"({EXPORT_FILE}), not of run {run.run_id}; its folders would mix with this run's. Pass a folder of "
        "its own, e.g. --to exported/, or remove that folder first."
    )


def _group_order(name: str) -> tuple[int, int]:
    if name.startswith("cluster-"):
        return 0, int(name.split("-", 1)[1])
    return (1, 0) if name == "noise" else (2, 0)
