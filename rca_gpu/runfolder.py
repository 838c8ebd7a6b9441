"""A finished run folder: the contract between ``rca-gpu run`` and everything that reads its results.

A run writes every file under one run id: ``run.json`` holds it under ``"run_id"``, other JSON files under
the same key, and Parquet files in their schema metadata under :data:`RUN_ID_KEY`. ``run.json`` is written
last, so its presence marks a complete run. Readers (evaluate, the report, the catalogue) open a folder with
:func:`open_run`, which refuses a folder without ``run.json``, one written by another run format, and any
file whose run id differs from run.json's (a folder that mixes two runs), and a run.json whose ``"status"`` is
``"failed"`` (a run that stopped for too few usable images writes one beside clusters.parquet).

A run folder is data, also when it came from someone else: every file is read through its schema
(:mod:`rca_gpu.runfiles`: types, shapes, dtypes, sizes, nesting); nothing in it is unpickled, imported or
executed. The DNN under test is re-loaded only from the copy the run keeps in the folder (its SHA-256 checked)
or from a known architecture id with its copied weights (:meth:`RunFolder.dut_ref`); image files are read
only where the run's own path rule allows (:meth:`RunFolder.image_files`).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rca_gpu.runfiles import (
    CLUSTERS_FILE,
    DUT_EXTERNAL_DATA_FILE,
    EMBEDDING_FILE,
    MARKED_OUTPUTS,
    OUTPUT_MARKERS,
    PREVIOUS_DIR,
    RUN_COMMAND,
    RUN_FILE,
    RUN_FIX,
    RUN_FORMAT,
    RUN_ID_KEY,
    RUN_OUTPUT_FOLDERS,
    RUN_OUTPUTS,
    STUDY_COMMAND,
    STUDY_FILE,
    STUDY_MARKDOWN,
    STUDY_OUTPUT_FOLDERS,
    STUDY_OUTPUTS,
    STUDY_PIPELINES,
    RunFileError,
    RunFolderError,
    RunHeader,
    RunInfo,
    _is_run_json,
    _is_study_folder,
    _json_object,
    check_table,
    file_label,
    output_folder_kind,
    read_json,
    sha256_of,
    validate,
)

__all__ = ["MARKED_OUTPUTS", "OUTPUT_MARKERS", "RUN_FILE", "RUN_FORMAT", "RUN_ID_KEY", "RUN_OUTPUTS",
           "RUN_OUTPUT_FOLDERS", "STUDY_FILE", "STUDY_MARKDOWN", "STUDY_OUTPUTS", "STUDY_OUTPUT_FOLDERS",
           "STUDY_PIPELINES", "RUN_COMMAND", "STUDY_COMMAND", "RunFileError", "RunFolder", "RunFolderError",
           "open_run", "output_folder_kind"]


def new_run_id() -> str:
    """A fresh run id: 32 lowercase hex digits (a random UUID)."""
    return uuid.uuid4().hex


@dataclass
class RunFolder:
    """An opened, complete run folder. Files are read on demand, through their schema, and their run id checked.

    Attributes
    ----------
    path:
        The folder (absolute).
    info:
        The parsed ``run.json`` (checked against :class:`rca_gpu.runfiles.RunInfo`).
    """

    path: Path
    info: dict[str, Any]
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def run_id(self) -> str:
        return str(self.info["run_id"])

    def file(self, name: str) -> Path:
        """Path of ``name`` inside the run folder (it need not exist)."""
        return self.path / name

    def has(self, name: str) -> bool:
        return self.file(name).is_file()

    def table(self, name: str):
        """Read the Parquet file ``name`` as a pandas DataFrame, after checking it belongs to this run and
        passes its schema (:data:`rca_gpu.runfiles.TABLES`).

        Raises
        ------
        RunFolderError
            The file is missing, unreadable, carries another run id (or none), or breaks its schema
            (RunFileError: one line naming the file and the column).
        """
        if name in self._cache:
            return self._cache[name]
        import pyarrow.parquet as pq

        path = self._existing(name)
        try:
            table = pq.ParquetFile(path).read()
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise RunFolderError(f"Cannot read {str(path)!r}: {exc}. Run `rca-gpu run` again.") from None
        found = (table.schema.metadata or {}).get(RUN_ID_KEY)
        self._check_id(name, found.decode("utf-8", "replace") if found else None)
        where = f"{name} in {str(self.path)!r}"
        check_table(name, table, where)
        try:
            frame = table.to_pandas()
        except Exception as exc:  # noqa: BLE001 - pandas metadata pyarrow cannot apply
            raise RunFileError(f"Cannot read {where} as a table: {exc}. {RUN_FIX}") from None
        self._cache[name] = frame
        return frame

    def clusters(self):
        """``clusters.parquet``: one row per input row (id, path, cluster, status, reason, metadata...)."""
        return self.table(CLUSTERS_FILE)

    def embedding(self):
        """``embedding.parquet``: one row per usable image (id, cluster, x, y, e0..ek), the usable rows of
        clusters.parquet (checked)."""
        embedding = self.table(EMBEDDING_FILE)
        if "embedding:checked" not in self._cache:
            clusters = self.clusters()
            usable = clusters.loc[clusters["status"] != "rejected", ["id", "cluster"]]
            same = len(usable) == len(embedding) and bool(embedding["id"].isin(usable["id"]).all())
            if not same:
                raise RunFileError(
                    f"{EMBEDDING_FILE} in {str(self.path)!r} lists {len(embedding)} images, which are not the "
                    f"{len(usable)} usable images of {CLUSTERS_FILE}. {RUN_FIX}")
            mine = usable.set_index("id")["cluster"].reindex(embedding["id"]).to_numpy()
            if not (mine == embedding["cluster"].to_numpy()).all():
                raise RunFileError(f"{EMBEDDING_FILE} in {str(self.path)!r} puts images in other clusters than "
                                   f"{CLUSTERS_FILE}. {RUN_FIX}")
            self._cache["embedding:checked"] = True
        return embedding

    def json(self, name: str) -> dict[str, Any]:
        """Read the JSON file ``name`` through its schema (:data:`rca_gpu.runfiles.SCHEMAS`) after checking
        its ``run_id`` (RunFolderError otherwise)."""
        path = self._existing(name)
        data = read_json(path)
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
            from rca_gpu.errors import printable

            what = f"run {printable(found)[:64]}" if found else "no run (it carries no run id)"
            raise RunFolderError(
                f"{name} in {str(self.path)!r} belongs to {what}, but run.json to run {self.run_id}: the folder "
                "mixes files of different runs. Run `rca-gpu run` again into an empty folder."
            )

    def need(self, *sections: str) -> dict[str, Any]:
        """The run.json sections a reader needs (e.g. ``"spec", "features"``), refusing a run.json without
        one: a run written by rca-gpu always has them.

        Raises
        ------
        RunFileError
            One line naming run.json and the missing field.
        """
        for name in sections:
            if self.info.get(name) is None:
                raise RunFileError(f"{RUN_FILE} in {str(self.path)!r} has no {name}: the field is required. "
                                   f"{RUN_FIX}")
        return {name: self.info[name] for name in sections}

    # ------------------------------------------------------------------ the run's path rule

    @property
    def image_root(self) -> str | None:
        """The folder the run's image paths had to resolve inside (run.json ``source.root``; for runs that did
        not record it, the folder given or the manifest's folder, or spec.image_root when set). None for
        in-memory images."""
        source = self.info.get("source") or {}
        if source.get("root"):
            return str(source["root"])
        kind, given = source.get("kind"), source.get("given") or ""
        if kind == "arrays" or not given:
            return None
        recorded = (self.info.get("spec") or {}).get("image_root")
        if recorded:
            return str(recorded)
        return str(Path(given).resolve() if kind == "folder" else Path(given).resolve().parent)

    def image_files(self, paths: Sequence[Any]) -> CheckedPaths:
        """The image files of ``paths`` (e.g. clusters.parquet's ``path`` column) that may be read, linked or
        copied: those that pass the run's path rule again now
        (:func:`rca_gpu.data.sources.path_refusal` under :attr:`image_root`: inside the root with links
        followed, an existing regular file named like an image). A lazy sequence: ``files[i]`` is the path,
        or "" when refused; ``files.reason(i)`` says why. Every reader of image paths from a run folder (the
        report's thumbnails, export, compare) goes through it."""
        return CheckedPaths(list(paths), self.image_root)

    # ------------------------------------------------------------------ the DNN under test

    def dut_ref(self, model: str | None = None, *, command: str = "assign") -> str | None:
        """The DNN under test to encode new images with, as :func:`rca_gpu.features.dut.load_model` reads it.

        ``model`` (the command's --model) is the user's own choice for this command; when the run kept its
        DUT (run.json ``dut``) it must be the same model: the SHA-256 of the file (of the weights after '=' for
        ``package.module:factory=weights.pt``) must equal the run's. Without ``model``: the copy in the run
        folder, its SHA-256 checked (a TorchScript, torch.export or ONNX file), or a known architecture id
        with its copied weights (the factory comes from :data:`rca_gpu.data.sources.KNOWN_ARCHITECTURES`, never
        from the folder). A run whose DUT was built by code is never re-imported: ``model`` is required.
        None when the run kept no DUT and none is given.

        Raises
        ------
        RunFolderError
            The given model is not the run's, the copy is missing or changed, or code would be needed.
        """
        key = ("dut", model, command)
        if key not in self._cache:  # hashing a large model once per command is enough
            self._cache[key] = self._dut_ref(model, command)
        return self._cache[key]

    def _dut_ref(self, model: str | None, command: str) -> str | None:
        from rca_gpu.errors import printable

        record = self.info.get("dut")
        if record is None:
            return model
        shown = printable(repr(str(self.path)))
        if model:
            given = _dut_file_part(model)
            digest = sha256_of(given) if given is not None and os.path.isfile(given) else None
            if record.get("sha256") and digest != record["sha256"]:
                kept = (f"leave --model out to use the copy the run keeps ({record['file']})"
                        if record["form"] != "code" else "pass the --model the run was made with")
                what = "its file is missing" if digest is None else (
                    f"SHA-256 {digest[:12]}... instead of the run's {record['sha256'][:12]}...")
                raise RunFolderError(
                    f"The --model {printable(repr(model))} is not the DNN under test of the run {self.run_id} "
                    f"({shown}): {what} (run.json dut). `rca-gpu {command}` must encode images with the run's "
                    f"own model; {kept}.")
            return model
        if record["form"] == "code":
            raise RunFolderError(
                f"The run {self.run_id} ({shown}) used a DNN under test built by code (--model "
                "package.module:factory=weights.pt). rca-gpu never imports code named by a run folder, so "
                f"`rca-gpu {command}` needs that --model again (its weights are checked against the run's)."
            )
        copy = self.file(record["file"])
        for name, expected in [(record["file"], record.get("sha256")), *record.get("extra", {}).items()]:
            path = self.file(name)
            if not path.is_file():
                raise RunFolderError(
                    f"The run folder {shown} has no {name}, the copy of its DNN under test (run.json dut). "
                    f"Restore it, or pass the run's model with --model.")
            if expected and sha256_of(path) != expected:
                raise RunFolderError(
                    f"{name} in {shown} is not the DNN under test the run copied (its SHA-256 differs from "
                    f"run.json dut.sha256): it was changed after the run. Restore it, or pass the run's model "
                    "with --model.")
        if record["form"] == "file":
            return str(copy)
        from rca_gpu.data.sources import KNOWN_ARCHITECTURES

        factory = KNOWN_ARCHITECTURES.get(record.get("architecture") or "")
        if factory is None:
            raise RunFileError(
                f"{RUN_FILE} in {shown} has dut.architecture = {printable(repr(record.get('architecture')))}, "
                f"which is no known architecture ({', '.join(KNOWN_ARCHITECTURES)}). {RUN_FIX}")
        return f"{factory}={copy}"


class CheckedPaths(Sequence[str]):
    """Image paths of a run folder filtered by the run's path rule (see :meth:`RunFolder.image_files`):
    ``paths[i]`` is the file to read, or "" when the rule refuses it; ``reason(i)`` says why ("" when read).
    Each path is checked once, when first asked for."""

    def __init__(self, paths: list[Any], root: str | None) -> None:
        self._paths = paths
        self._root = root
        self._checked: dict[int, tuple[str, str]] = {}

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._check(index)[0]

    def reason(self, index: int) -> str:
        return self._check(index)[1]

    def _check(self, index: int) -> tuple[str, str]:
        index = range(len(self._paths))[index]
        if index not in self._checked:
            raw = self._paths[index]
            if raw is None or (isinstance(raw, float) and raw != raw) or not str(raw):
                result = ("", "no image file")
            elif self._root is None or str(raw).startswith("array://"):
                result = ("", "an in-memory image (no file)")
            else:
                from rca_gpu.data.sources import path_refusal

                why = path_refusal(str(raw), self._root)
                result = ("", why) if why else (str(raw), "")
            self._checked[index] = result
        return self._checked[index]


def _dut_file_part(model: str) -> str | None:
    """The file a --model value names: the file itself, or the weights after '=' of an entry point (None
    when an entry point names none)."""
    text = str(model).strip()
    if os.path.exists(os.path.expanduser(text)):
        return os.path.expanduser(text)
    head, sep, weights = text.partition("=")
    if ":" in head and sep:
        return os.path.expanduser(weights)
    return None if ":" in head else os.path.expanduser(text)


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
    info = read_json(run_file, check=False)
    found_format = info.get("rca_gpu_run") if isinstance(info, dict) else None
    if found_format != RUN_FORMAT or not info.get("run_id"):
        raise RunFolderError(
            f"{str(path)!r} was written by another version of rca-gpu (run format {_shown(found_format)}; this "
            f"version reads format {RUN_FORMAT}). Run `rca-gpu run` again with this version."
        )
    where = file_label(run_file)
    validate(info, RunHeader, where)  # the id and status, before the failed run's message quotes them
    if info.get("status") == "failed":
        raise RunFolderError(
            f"The run in {str(path)!r} failed: {info.get('error') or 'no reason recorded'} Its clusters.parquet "
            "lists every row with the reason it was not clustered; fix the cause and run again."
        )
    validate(info, RunInfo, where)
    return RunFolder(folder.resolve(), info)


def _shown(value: Any) -> str:
    from rca_gpu.errors import printable

    text = printable(repr(value))
    return text if len(text) <= 40 else text[:37] + "..."


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

# The names a run and a study write (RUN_OUTPUTS, RUN_OUTPUT_FOLDERS, STUDY_OUTPUTS, STUDY_OUTPUT_FOLDERS) are
# rca_gpu.runfiles', the one module that names every output file.


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
            example = printable(repr(str(owner / "assigned")))
            besides = (f" (another sub-folder of the run folder is fine, e.g. {example})" if "run folder" in whose
                       else "")
            return (f"The {option} folder {printable(repr(str(out)))} {where} {inner.name}/, the "
                    f"{_INTERNAL_WHAT[inner.name]} of {whose}, which rca-gpu writes into itself. Pass a folder "
                    f"outside it{besides}, e.g. {option} {example}.")
    return None


def check_inputs_kept(out: str | Path, inputs: dict[str, Any], *, files: list[str] | tuple[str, ...] = (),
                      folders: list[str] | tuple[str, ...] = (), option: str = "--out") -> None:
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
        raise RunFolderError(
            f"The {option} option is empty. Pass the folder for the results, e.g. {option} runs/first.")
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


def mixed_folder_message(folder: Path, *, option: str, command: str | None, others: list[tuple[str, str]],
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
    """Make ``out`` ready for a new run: create it, and clear an earlier run's outputs out of the way.

    Exactly the names of :data:`RUN_OUTPUTS` and the report's files (``report_files/``, which belong to the
    earlier report.html) go, run.json first, so that a folder whose new run is interrupted is never read as
    finished. The feature cache (``cache/``) and files of other origins stay, also .json / .parquet files that
    carry a run id under another name (e.g. a copy of an earlier clusters.parquet). Inside :func:`writing_run`
    (every run does so) the earlier outputs are moved aside into :data:`rca_gpu.runfiles.PREVIOUS_DIR` instead of
    removed, and put back if the new run fails (a full disk, a read-only cache...); outside one they are removed.

    Raises
    ------
    rca_gpu.outputs.OutputError
        The earlier outputs cannot be moved aside (e.g. no space left for the folder that keeps them):
        nothing was changed.
    """
    folder = check_out_folder(out, internal=True)  # a user's --out was checked before; a study writes its runs here
    folder.mkdir(parents=True, exist_ok=True)
    session = _SESSIONS.get(os.path.realpath(folder))
    if session is not None:
        session.move_aside()
        return folder
    run_file = folder / RUN_FILE
    with contextlib.suppress(FileNotFoundError):
        run_file.unlink()
    for name in RUN_OUTPUTS:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            (folder / name).unlink()
    _remove_report_files(folder)
    return folder


def _report_files(folder: Path) -> Path | None:
    """The run's report_files/ folder when there is one (a link of that name is not ours to move)."""
    from rca_gpu.runfiles import REPORT_FILES_DIR

    path = folder / REPORT_FILES_DIR
    return path if path.is_dir() and not path.is_symlink() else None


def _remove_report_files(folder: Path) -> None:
    import shutil

    path = _report_files(folder)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


class _RunSession:
    """One command writing a run into ``folder``: the earlier run's outputs kept aside until it is complete."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.previous = folder / PREVIOUS_DIR
        self.moved: list[str] | None = None  # names moved aside; None until start_run_folder ran

    def move_aside(self) -> None:
        """Move the earlier run's outputs into PREVIOUS_DIR (renames: no space needed but one folder entry),
        run.json first. Done once per session."""
        import shutil

        from rca_gpu.outputs import refusal, refused_reason

        if self.moved is not None:
            return
        present = [name for name in (RUN_FILE, *RUN_OUTPUTS) if (self.folder / name).is_file()]
        present = list(dict.fromkeys(present))
        report_files = _report_files(self.folder)
        if report_files is not None:  # the earlier report's pages and images go with its report.html
            present.append(report_files.name)
        if self.previous.is_dir() and not self.previous.is_symlink():
            shutil.rmtree(self.previous, ignore_errors=True)  # left by a run killed before it finished
        if present:
            try:
                self.previous.mkdir()
            except OSError as exc:
                reason = refused_reason(exc, self.folder)
                if reason is None:
                    raise
                raise refusal(self.previous, reason) from None
        self.moved = []
        for name in present:
            os.replace(self.folder / name, self.previous / name)
            self.moved.append(name)

    def commit(self) -> None:
        """The new run is complete (or wrote its failed run.json): the earlier outputs go."""
        import shutil

        if self.moved:
            shutil.rmtree(self.previous, ignore_errors=True)

    def roll_back(self) -> bool:
        """The new run failed before run.json: remove its outputs and put the earlier ones back. True when
        there was an earlier run to restore."""
        if self.moved is None:
            return False
        for name in dict.fromkeys((RUN_FILE, *RUN_OUTPUTS)):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                (self.folder / name).unlink()
        _remove_report_files(self.folder)
        for name in self.moved:
            with contextlib.suppress(OSError):
                os.replace(self.previous / name, self.folder / name)
        with contextlib.suppress(OSError):
            self.previous.rmdir()
        return bool(self.moved)


#: Runs being written by this process: real path of the folder -> session.
_SESSIONS: dict[str, _RunSession] = {}
#: Seconds a run waits for a catalogue read or save of its folder (they take milliseconds) before refusing.
CATALOGUE_WAIT = 10.0


@contextlib.contextmanager
def writing_run(out: str | Path, command: str = RUN_COMMAND) -> Iterator[Path]:
    """Write a run into ``out`` as one command: hold the folder's lock (and the catalogue's: a new run replaces
    causes.toml), and keep the earlier run's outputs aside (:func:`start_run_folder`) until this one ends.

    At the end: when run.json was written (a finished run, or a failed one with every row's reason) the
    earlier outputs are removed; when the run raised before writing it (a full disk, a read-only cache, a
    crash in a stage) its partial outputs are removed and the earlier run is put back as it was, and an
    :class:`rca_gpu.outputs.OutputError` says so. An interrupt (Ctrl-C) leaves the folder unfinished, as a
    killed process does; the feature cache keeps the finished shards. Re-entrant: nested calls for one folder
    (run -> cluster_and_write) are one session.

    Raises
    ------
    rca_gpu.outputs.FolderBusyError
        Another process writes the folder (or edits its catalogue).
    """
    from rca_gpu.outputs import OutputError, writing
    from rca_gpu.runfiles import CATALOGUE_LOCK_FILE, CATALOGUE_LOCK_HOLDER_FILE

    folder = Path(out).expanduser()
    key = os.path.realpath(folder)
    if key in _SESSIONS:
        yield folder
        return
    with writing(folder, command), writing(folder, command, lock_file=CATALOGUE_LOCK_FILE,
                                           holder_file=CATALOGUE_LOCK_HOLDER_FILE, wait=CATALOGUE_WAIT,
                                           what="catalogue of the run folder"):
        session = _SESSIONS[key] = _RunSession(folder)
        try:
            yield folder
        except Exception as exc:
            written = session.moved is not None and (folder / RUN_FILE).is_file()
            if written:
                session.commit()
            elif session.roll_back() and isinstance(exc, OutputError):
                exc.args = (f"{exc} The earlier run in {str(folder)!r} was kept as it was.",)
            raise
        except BaseException:
            session.commit()
            raise
        else:
            session.commit()
        finally:
            del _SESSIONS[key]


def writes_run(argument: str = "out", command: str = RUN_COMMAND) -> Callable:
    """Decorator: the function writes a run into the folder passed as its ``argument``; it runs inside
    :func:`writing_run` for that folder."""
    from rca_gpu.outputs import runs_inside

    return runs_inside(argument, lambda folder: writing_run(folder, command))


# --------------------------------------------------------------------------------------------------
# The DNN under test a run keeps
# --------------------------------------------------------------------------------------------------


def keep_dut(out: str | Path, model_ref: str | None) -> dict[str, Any] | None:
    """Keep the DNN under test of a run in its folder ``out``; return run.json's ``dut`` record
    (:class:`rca_gpu.runfiles.DutRecord`), None without a model.

    * a model file (TorchScript, torch.export ``.pt2``, ONNX) is copied as ``dut_model.<ext>`` (an ONNX model's
      external weights are gathered into ``dut_model.onnx.data`` beside it), with its SHA-256;
    * a known architecture with its weights (``rca_gpu.datasets.models:mnist_cnn=dut_state.pt``, as a
      manifest names it) keeps the id and a copy of the weights (``dut_weights.pt``);
    * ``package.module:factory=weights.pt`` (code the user named on the command line) keeps only the SHA-256
      of the weights: the code is never imported again from the folder, later commands need the same --model.

    Later commands re-load it with :meth:`RunFolder.dut_ref`. Every copy goes through
    :func:`rca_gpu.outputs.write_atomic`.
    """
    from rca_gpu.data.sources import KNOWN_ARCHITECTURES, MODEL_FILE_EXTENSIONS

    if not model_ref:
        return None
    folder = Path(out)
    text = str(model_ref).strip()
    path = Path(text).expanduser()
    if path.is_file():
        suffix = path.suffix.lower() if path.suffix.lower() in MODEL_FILE_EXTENSIONS else ".pt"
        name = f"dut_model{'.pt' if suffix == '.pth' else suffix}"
        extra = _copy_onnx(path, folder / name) if suffix == ".onnx" else None
        if extra is None:
            digest = _copy(path, folder / name)
            return {"form": "file", "file": name, "sha256": digest, "bytes": path.stat().st_size}
        return {"form": "file", "file": name, "sha256": sha256_of(folder / name),
                "bytes": (folder / name).stat().st_size, "extra": extra}
    head, _, weights = text.partition("=")
    architecture = next((arch for arch, factory in KNOWN_ARCHITECTURES.items() if factory == head.strip()), None)
    weights_path = Path(weights).expanduser() if weights else None
    if architecture is not None and weights_path is not None and weights_path.is_file():
        from rca_gpu.runfiles import DUT_WEIGHTS_FILE

        digest = _copy(weights_path, folder / DUT_WEIGHTS_FILE)
        return {"form": "architecture", "architecture": architecture, "file": DUT_WEIGHTS_FILE, "sha256": digest,
                "bytes": weights_path.stat().st_size}
    weights_digest = sha256_of(weights_path) if weights_path is not None and weights_path.is_file() else None
    return {"form": "code", "sha256": weights_digest}


def _copy(source: Path, target: Path) -> str:
    """Copy ``source`` to ``target`` atomically; the SHA-256 of the bytes copied."""
    import hashlib

    from rca_gpu.outputs import write_atomic

    digest = hashlib.sha256()

    def write(tmp: str) -> None:
        with open(source, "rb") as reader, open(tmp, "wb") as writer:
            for block in iter(lambda: reader.read(1 << 20), b""):
                digest.update(block)
                writer.write(block)

    write_atomic(target, write)
    return digest.hexdigest()


def _copy_onnx(source: Path, target: Path) -> dict[str, str] | None:
    """An ONNX model whose weights lie in external files: gather them into one file beside the copy
    (:data:`rca_gpu.runfiles.DUT_EXTERNAL_DATA_FILE`) and return {that name: SHA-256}; None for a model held
    in one file (copied as it is). External files must lie inside the model's folder (as for loading)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    from rca_gpu.errors import ModelError
    from rca_gpu.outputs import write_atomic

    proto = onnx.load(str(source), load_external_data=False)
    tensors = [t for t in _onnx_tensors(proto) if uses_external_data(t)]
    if not tensors:
        return None
    base = source.parent.resolve()
    for tensor in tensors:
        location = ExternalDataInfo(tensor).location
        if not Path(os.path.realpath(base / location)).is_relative_to(base):
            raise ModelError(f"The ONNX model {str(source)!r} names the external weight file {location!r} outside "
                             f"{str(base)!r}; external weight files must lie beside the model.")
    onnx.load_external_data_for_model(proto, str(base))
    data = target.parent / DUT_EXTERNAL_DATA_FILE
    with contextlib.suppress(FileNotFoundError):
        data.unlink()  # onnx appends to an existing data file

    def write(tmp: str) -> None:
        onnx.save_model(proto, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DUT_EXTERNAL_DATA_FILE, size_threshold=0)

    write_atomic(target, write)
    return {DUT_EXTERNAL_DATA_FILE: sha256_of(data)}


def _onnx_tensors(proto) -> Iterator[Any]:
    """Every tensor of an ONNX model: initializers and tensor attributes, subgraphs included."""
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
