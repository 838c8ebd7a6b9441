"""A finished run folder: the contract between ``rca-gpu run`` and everything that reads its results.

A run writes every file under one run id: ``run.json`` holds it under ``"run_id"``, other JSON files under
the same key, and Parquet files in their schema metadata under :data:`RUN_ID_KEY`. ``run.json`` is written
last, so its presence marks a complete run. Readers (evaluate, the report, the catalogue) open a folder with
:func:`open_run`, which refuses a folder without ``run.json``, one written by another run format, and any
file whose run id differs from run.json's (a folder that mixes two runs), and a run.json whose ``"status"`` is
``"failed"`` (a run that stopped for too few usable images writes one beside clusters.parquet).

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


#: File that marks the output folder of a command -> (the command, the JSON key naming the run it read).
OUTPUT_MARKERS = {
    "assign.json": ("rca-gpu assign", "run_folder"),
    "select.json": ("rca-gpu select", "run_folder"),
    "export.json": ("rca-gpu export", "run_dir"),
}


#: The files assign, select and export write beside their marker (the names of rca_gpu.catalogue.assign and
#: rca_gpu.catalogue.retraining; tests/test_runfolder.py checks that they agree). Export's folders are the groups
#: its export.json lists.
MARKED_OUTPUTS = {
    "assign.json": ("assignments.parquet",),
    "select.json": ("assignments.parquet", "selection.parquet", "selection.csv"),
    "export.json": (),
}
#: The command that writes run.json (``command=None`` in :func:`check_out_folder`).
RUN_COMMAND = "rca-gpu run"


#: A file (besides OUTPUT_MARKERS) that marks a folder written by rca-gpu: a run (run.json) or a study.
STUDY_FILE = "study.parquet"
#: The study's ranking as Markdown, and the folder of its pipelines' runs (both written beside STUDY_FILE).
STUDY_MARKDOWN = "study.md"
STUDY_PIPELINES = "pipelines"
#: The command that writes :data:`STUDY_FILE`; pass it as ``command`` to :func:`check_out_folder`.
STUDY_COMMAND = "rca-gpu study"
#: JSON marker files larger than this are not read (no marker rca-gpu writes comes near it).
_MARKER_MAX_BYTES = 16 << 20


def _json_object(path: str | Path) -> dict | None:
    """The JSON object in ``path``; None when it is missing, larger than _MARKER_MAX_BYTES, unreadable, not
    JSON, or JSON of another type."""
    import os

    try:
        if not os.path.isfile(path) or os.path.getsize(path) > _MARKER_MAX_BYTES:
            return None
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_run_json(path: str | Path) -> bool:
    """Whether ``path`` is a run.json written by rca-gpu (a JSON object with ``"rca_gpu_run"``)."""
    data = _json_object(path)
    return data is not None and "rca_gpu_run" in data


def _is_study_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a study: :data:`STUDY_FILE` with :data:`STUDY_MARKDOWN` or :data:`STUDY_PIPELINES`."""
    import os

    return os.path.isfile(os.path.join(folder, STUDY_FILE)) and (
        os.path.isfile(os.path.join(folder, STUDY_MARKDOWN)) or os.path.isdir(os.path.join(folder, STUDY_PIPELINES)))


def output_folder_kind(folder: str | Path) -> str | None:
    """What wrote ``folder`` when it is an rca-gpu output folder, e.g. ``"rca-gpu run (run.json)"``; None for
    any other folder. A folder counts when it holds a run.json written by rca-gpu (a JSON object with
    ``"rca_gpu_run"``), a study (:func:`_is_study_folder`), or one of :data:`OUTPUT_MARKERS` (a JSON object). A
    user's own file of the same name with other content does not count. Used by the folder scan, which leaves
    these folders out: their thumbnails and exported copies are not failure images."""
    import os

    folder = os.fspath(folder)
    if _is_study_folder(folder):
        return f"{STUDY_COMMAND} ({STUDY_FILE})"
    if _is_run_json(os.path.join(folder, RUN_FILE)):
        return f"rca-gpu run ({RUN_FILE})"
    for marker, (command, _) in OUTPUT_MARKERS.items():
        if _json_object(os.path.join(folder, marker)) is not None:
            return f"{command} ({marker})"
    return None


def not_a_run_note(path: str | Path, argument: str = "RUN_DIR") -> str | None:
    """The message for a folder without run.json that is the output folder of assign, select or export (one
    of OUTPUT_MARKERS), naming the run it was made from when recorded; None for any other folder."""
    from rca_gpu.errors import printable

    folder = Path(path).expanduser()
    if not folder.is_dir() or (folder / RUN_FILE).exists():
        return None
    for marker, (command, key) in OUTPUT_MARKERS.items():
        if not (folder / marker).is_file():
            continue
        source = (_json_object(folder / marker) or {}).get(key)
        recorded = isinstance(source, str) and source
        hint = f", e.g. the run it was made from: {printable(repr(source))}" if recorded else ""
        return (f"The {argument} folder {printable(repr(str(path)))} is the output folder of `{command}` (it holds "
                f"{marker}), not a run folder. {argument} must be a run folder made by `rca-gpu run` (it holds "
                f"{RUN_FILE}){hint}.")
    return None


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
        note = not_a_run_note(path)
        if note:
            raise RunFolderError(note)
        inside = sorted(p.parent for p in folder.glob(f"*/{RUN_FILE}"))[:3]  # e.g. the run of `rca-gpu demo`
        if inside:
            raise RunFolderError(
                f"{str(path)!r} holds no {RUN_FILE}, but its sub-folder(s) {', '.join(repr(str(p)) for p in inside)} "
                "do: pass the run folder itself."
            )
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
    if info.get("status") == "failed":
        raise RunFolderError(
            f"The run in {str(path)!r} failed: {info.get('error') or 'no reason recorded'} Its clusters.parquet "
            "lists every row with the reason it was not clustered; fix the cause and run again."
        )
    return RunFolder(folder.resolve(), info)


def is_finished(path: str | Path) -> bool:
    """True when :func:`open_run` accepts ``path``: a finished run of this format (for resuming a study)."""
    try:
        open_run(path)
    except RunFolderError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Writing: the output folder of a new run
# --------------------------------------------------------------------------------------------------

#: Every file name ``rca-gpu run`` (and the commands that add to a run folder: report, causes, compare) writes
#: at the top of a run folder. A new run removes exactly these names from its folder before it writes anything,
#: so that a folder never mixes two runs; any other file (e.g. a copy ``clusters_from_a.parquet``) stays.
#: A module that writes another file into a run folder adds its name here (tests/test_runfolder.py checks
#: that every file a run writes is listed).
RUN_OUTPUTS: tuple[str, ...] = (RUN_FILE, "clusters.parquet", "embedding.parquet", "explanations.parquet",
                                "metrics.json", "per_cause.csv", "report.html", "cluster_summary.parquet",
                                "reference.safetensors", "reference.parquet", "reference.json", "causes.toml",
                                "causes.parquet", "comparison.parquet", "comparison.json", "heatmaps.safetensors",
                                "clusters.csv", "verify.json")
#: Sub-folders of a run folder that rca-gpu writes into: the report's files (thumbnails are replaced) and the
#: feature cache (shards are added and removed). Not removed by a new run.
RUN_OUTPUT_FOLDERS: tuple[str, ...] = ("report_files", "cache")
#: What ``rca-gpu study`` writes into its --out folder: files, and folders it writes into.
STUDY_OUTPUTS: tuple[str, ...] = (STUDY_FILE, STUDY_MARKDOWN)
STUDY_OUTPUT_FOLDERS: tuple[str, ...] = (STUDY_PIPELINES, "cache")


#: What each internal folder holds, for the message refusing an output folder inside one.
_INTERNAL_WHAT = {"cache": "feature cache", "report_files": "report's files", STUDY_PIPELINES: "pipelines' runs"}


def internal_folder_note(out: str | Path, *, option: str = "--out", example: str = "runs/first") -> str | None:
    """The refusal of an output folder that is, or lies inside, a folder rca-gpu writes into itself: a run
    folder's :data:`RUN_OUTPUT_FOLDERS` (cache/, report_files/) or a study's :data:`STUDY_OUTPUT_FOLDERS`
    (pipelines/, cache/). ``out`` and every ancestor are checked, as written and with links resolved; the
    folder need not exist. A sub-folder of a run folder with another name (e.g. RUN/assigned) is fine.
    None when ``out`` is no such folder."""
    import os

    from rca_gpu.errors import printable

    given = os.path.expanduser(os.fspath(out))
    for start in dict.fromkeys((Path(os.path.abspath(given)), Path(os.path.realpath(given)))):
        for inner in (start, *start.parents):
            owner = inner.parent
            if owner == inner:
                break
            if inner.name in RUN_OUTPUT_FOLDERS and _is_run_json(owner / RUN_FILE):
                whose = f"the run folder {printable(repr(str(owner)))}"
            elif inner.name in STUDY_OUTPUT_FOLDERS and _is_study_folder(owner):
                whose = f"the study {printable(repr(str(owner)))}"
            else:
                continue
            where = "is" if inner == start else "lies inside"
            besides = (f" (another sub-folder of the run folder is fine, e.g. {printable(repr(str(owner / 'assigned')))})"
                       if "run folder" in whose else "")
            return (f"The {option} folder {printable(repr(str(out)))} {where} {inner.name}/, the "
                    f"{_INTERNAL_WHAT[inner.name]} of {whose}, which rca-gpu writes into itself. Pass a folder "
                    f"outside it{besides}, e.g. {option} {example}.")
    return None


def check_inputs_kept(out: str | Path, inputs: dict[str, Any], *, files: "list[str] | tuple[str, ...]" = (),
                      folders: "list[str] | tuple[str, ...]" = (), option: str = "--out") -> None:
    """Refuse an output folder where the command would write over, or remove, one of its own inputs.

    ``inputs`` maps the argument (e.g. ``"SOURCE"``, ``"--features"``) to the path the user passed (None:
    not given). An input is refused when it is the same file as ``out/NAME`` for a NAME in ``files`` (links and
    hard links included), or lies under ``out/FOLDER`` for a FOLDER in ``folders``. Checked before any work,
    nothing is created or removed.

    Raises
    ------
    RunFolderError
        One line naming the input, the output file it would be, and the fix.
    """
    import os

    from rca_gpu.errors import printable

    folder = Path(out).expanduser()
    real_out = Path(os.path.realpath(folder))
    for argument, given in inputs.items():
        if given is None or not str(given).strip():
            continue
        path = Path(given).expanduser()
        real = Path(os.path.realpath(path))
        clash = None
        for name in files:
            target = folder / name
            if real == real_out / name or (target.exists() and path.exists() and _same_file(path, target)):
                clash = f"the output file {name} it writes there"
                break
        if clash is None:
            for name in folders:
                if real.is_relative_to(real_out / name):
                    clash = f"a file under the output folder {name}/ it writes into"
                    break
        if clash is not None:
            raise RunFolderError(
                f"The {argument} {printable(repr(str(given)))} is {clash}: {option} {printable(repr(str(out)))} "
                f"would write over or remove an input. Pass another {option} folder (e.g. a new sub-folder), or "
                f"move or rename the input first."
            )


def _same_file(a: Path, b: Path) -> bool:
    import os

    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_out_folder(out: str | Path, *, option: str = "--out", command: str | None = None,
                     example: str = "runs/first", internal: bool = False) -> Path:
    """Check that ``out`` can hold a run's outputs, before any work starts; nothing is created or removed.

    ``command`` is the command that writes there: one of :data:`OUTPUT_MARKERS` (e.g. ``"rca-gpu assign"``),
    :data:`STUDY_COMMAND`, or None for a run (``rca-gpu run``, ``demo``, ``datasets make``). Its own earlier
    outputs may be written over (a run into an earlier run's folder too); a folder holding the outputs of
    another command is refused, as the files would mix: the outputs of assign, select or export (their
    marker file), a study (:data:`STUDY_FILE` with study.md or pipelines/) for any command but the study, and
    a run folder (run.json written by rca-gpu) for the study. When the folder holds the command's own outputs
    too, the error names the other command's files to remove first (:func:`mixed_folder_message`). A folder
    inside a run's or a study's internal folders (:func:`internal_folder_note`) is refused too, unless
    ``internal`` is True: rca-gpu's own writes there (a study's runs under pipelines/) pass it.

    Raises
    ------
    RunFolderError
        ``out`` is empty, an existing file, below a file, not writable (permissions, a read-only file
        system), inside a run's or a study's internal folders, or the output folder of another command: one
        line naming the folder, the problem and the fix.
    """
    import errno
    import os
    import tempfile

    from rca_gpu.errors import printable

    if not str(out).strip():
        raise RunFolderError(f"The {option} option is empty. Pass the folder for the results, e.g. {option} runs/first.")
    folder = Path(out).expanduser()
    shown = printable(repr(str(out)))
    inside = None if internal else internal_folder_note(out, option=option, example=example)
    if inside:
        raise RunFolderError(inside)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(
            f"The {option} folder {shown} is an existing file, not a folder. Pass a folder (it is created if needed)."
        )
    probe_in = folder
    while not probe_in.exists():
        parent = probe_in.parent
        if parent == probe_in:
            break
        probe_in = parent
    if probe_in.exists() and not probe_in.is_dir():
        raise RunFolderError(
            f"The {option} folder {shown} cannot be created: {printable(repr(str(probe_in)))} is a file. Pass "
            "another folder."
        )
    try:
        handle, name = tempfile.mkstemp(prefix=".rca-gpu-write-test-", dir=probe_in)
        os.close(handle)
        os.unlink(name)
    except OSError as exc:
        why = "the file system is read-only" if exc.errno == errno.EROFS else (exc.strerror or str(exc)).lower()
        where = "" if probe_in == folder else f" (its nearest existing folder {printable(repr(str(probe_in)))})"
        raise RunFolderError(
            f"Cannot write into the {option} folder {shown}{where}: {why}. Pass a folder you can write to."
        ) from None
    if folder.is_dir():
        others = [(other, marker) for marker, (other, _) in OUTPUT_MARKERS.items()
                  if other != command and (folder / marker).is_file()]
        if command != STUDY_COMMAND and _is_study_folder(folder):
            others.insert(0, (STUDY_COMMAND, STUDY_FILE))
        if command == STUDY_COMMAND and _is_run_json(folder / RUN_FILE):
            others.insert(0, (RUN_COMMAND, RUN_FILE))
        mixed = others and mixed_folder_message(folder, option=option, command=command, others=others,
                                                example=example, shown=shown)
        if mixed:
            raise RunFolderError(mixed)
        if others:
            other, marker = others[0]
            what = {STUDY_COMMAND: "a study", RUN_COMMAND: "a run folder"}.get(other, "the outputs")
            raise RunFolderError(
                f"The {option} folder {shown} holds {what} of `{other}` ({marker}); a folder holds the "
                f"outputs of one command only, and {f'those of `{command}`' if command else 'the new files'} "
                f"would mix with them. Pass a folder of its own, e.g. {option} {example}, or remove that "
                "folder first."
            )
    return folder


def _own_marker(folder: Path, command: str) -> str | None:
    """The file that shows ``folder`` holds outputs of ``command`` (run.json, study.parquet, assign.json ...), or
    None when it holds none."""
    if command == RUN_COMMAND:
        return RUN_FILE if _is_run_json(folder / RUN_FILE) else None
    if command == STUDY_COMMAND:
        return STUDY_FILE if _is_study_folder(folder) else None
    marker = next((m for m, (other, _) in OUTPUT_MARKERS.items() if other == command), None)
    return marker if marker is not None and (folder / marker).is_file() else None


def _written_names(folder: Path, command: str) -> list[str]:
    """The names ``command`` writes at the top of its output folder, the feature cache (which runs and studies
    share) left out; for export, the group folders its export.json in ``folder`` lists."""
    if command == RUN_COMMAND:
        names = [*RUN_OUTPUTS, *RUN_OUTPUT_FOLDERS]
    elif command == STUDY_COMMAND:
        names = [*STUDY_OUTPUTS, *STUDY_OUTPUT_FOLDERS]
    else:
        marker = next(m for m, (other, _) in OUTPUT_MARKERS.items() if other == command)
        groups = (_json_object(folder / marker) or {}).get("groups")
        names = [marker, *MARKED_OUTPUTS[marker], *(g for g in (groups if isinstance(groups, dict) else {})
                                                   if isinstance(g, str) and g.strip(". ") and "/" not in g)]
    return [name for name in names if name != "cache"]


def mixed_folder_message(folder: Path, *, option: str, command: str | None, others: "list[tuple[str, str]]",
                         example: str, shown: str) -> str | None:
    """The refusal of an output folder that holds the outputs of ``command`` (None: a run) and also those of
    ``others`` ((command, marker file) pairs), as folders written by older rca-gpu versions can: one line naming
    exactly the files of ``others`` present in ``folder`` to remove (or move) before ``command`` can write
    there, or another folder to pass. Nothing is removed. None when ``folder`` holds no outputs of
    ``command`` (then it is simply another command's folder). ``shown`` is the folder as the user wrote it."""
    from rca_gpu.errors import printable

    own = command or RUN_COMMAND
    marker = _own_marker(folder, own)
    if marker is None:
        return None
    mine = set(_written_names(folder, own))  # written over by the command itself: no need to remove them
    remove: list[str] = []
    for other, _ in others:
        for name in _written_names(folder, other):
            path = folder / name
            if name in mine or name in remove or not (path.is_file() or path.is_dir()):
                continue
            remove.append(f"{name}/" if path.is_dir() else name)
    theirs = " and ".join(f"`{other}`" for other, _ in others)
    found = " and ".join(f"`{other}` ({other_marker})" for other, other_marker in others)
    return (f"The {option} folder {shown} holds the outputs of both `{own}` ({marker}) and {found} (older rca-gpu "
            "versions could write them into one folder); a folder holds the outputs of one command only. To write "
            f"those of `{own}` there, first remove these files of {theirs} from it (or move them to a folder of "
            f"their own): {printable(', '.join(remove))}; or pass another folder, e.g. {option} {example}.")


def check_run_out_folder(out: str | Path, inputs: dict[str, Any]) -> Path:
    """What ``rca-gpu run`` checks of its --out folder before any work: :func:`check_out_folder` (writable,
    not another command's output folder), then :func:`check_inputs_kept` for ``inputs`` against the names a
    run writes (:data:`RUN_OUTPUTS`, :data:`RUN_OUTPUT_FOLDERS`). Returns the folder.

    Raises
    ------
    RunFolderError
        As those two functions.
    """
    folder = check_out_folder(out)
    check_inputs_kept(out, inputs, files=RUN_OUTPUTS, folders=RUN_OUTPUT_FOLDERS)
    return folder


def start_run_folder(out: str | Path) -> Path:
    """Make ``out`` ready for a new run: create it, and remove an earlier run's outputs.

    run.json goes first, so that a folder whose new run is interrupted is never read as finished; then the
    other names of :data:`RUN_OUTPUTS`, exactly: only files rca-gpu writes under those names are removed. The
    feature cache (``cache/``), the report's files (replaced by the new report) and files of other origins
    stay, also .json / .parquet files that carry a run id under another name (e.g. a copy of an earlier
    clusters.parquet).
    """
    import contextlib

    folder = check_out_folder(out, internal=True)  # a user's --out was checked before; a study writes its runs here
    folder.mkdir(parents=True, exist_ok=True)
    run_file = folder / RUN_FILE
    with contextlib.suppress(FileNotFoundError):
        run_file.unlink()
    for name in RUN_OUTPUTS:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            (folder / name).unlink()
    return folder
