"""The files of rca-gpu's output folders: the one module that names every file each command writes, and the
schema each file is read through.

An output folder is data: it may come from another team, another machine or a hand edit. Nothing read from
one names code, a module or a callable (the DNN under test of a run is re-loaded only from the model file the
run copied into its folder, or from a known architecture id with its copied weights: see
:mod:`rca_gpu.runfolder`). Every reader goes through the functions here:

* :func:`read_json` / :func:`read_toml`: a size cap, then parsing with a nesting-depth guard, then the
  file's pydantic model (types, ranges, string lengths, nesting);
* :func:`check_table`: a Parquet file's columns, their Arrow types and value rules, and its pandas metadata;
* :func:`check_reference_tensors`: reference.safetensors's tensor, dtype and shape.

A file that breaks its schema raises :class:`RunFileError`: one line naming the file, the field, the value
found, the rule and the fix. Writers never need these checks; ``tests/test_runfiles.py`` checks that what
each command writes passes them.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rca_gpu.errors import RcaError, printable

# --------------------------------------------------------------------------------------------------
# Names: every file and folder a command writes
# --------------------------------------------------------------------------------------------------

#: Version of the run-folder layout. Bumped when a reader could misread an older folder.
RUN_FORMAT = 2
#: Parquet schema metadata key holding the run id.
RUN_ID_KEY = b"rca_gpu.run_id"

# `rca-gpu run` (and the commands that add to a run folder: report, evaluate, causes, compare)
RUN_FILE = "run.json"
CLUSTERS_FILE = "clusters.parquet"
EMBEDDING_FILE = "embedding.parquet"
EXPLANATIONS_FILE = "explanations.parquet"
METRICS_FILE = "metrics.json"
PER_CAUSE_FILE = "per_cause.csv"
REPORT_FILE = "report.html"
SUMMARY_FILE = "cluster_summary.parquet"
REFERENCE_FEATURES_FILE = "reference.safetensors"
REFERENCE_TABLE_FILE = "reference.parquet"
REFERENCE_INFO_FILE = "reference.json"
CAUSES_FILE = "causes.toml"
MEMBERS_FILE = "causes.parquet"
COMPARISON_FILE = "comparison.parquet"
COMPARISON_INFO_FILE = "comparison.json"
HEATMAPS_FILE = "heatmaps.safetensors"  # runs whose features are heatmaps of the DNN (rca_gpu.report.heatmaps)
CLUSTERS_CSV = "clusters.csv"  # written with the report (rca_gpu.report.interop)
VERIFY_FILE = "verify.json"  # rca-gpu verify (rca_gpu.catalogue.verify)
#: The copy of the DNN under test a run keeps (by the form of --model: TorchScript/.pt2, ONNX with its
#: external weights in one file beside it, or the weights of a known architecture).
DUT_MODEL_FILES = ("dut_model.pt", "dut_model.pt2", "dut_model.onnx")
DUT_EXTERNAL_DATA_FILE = "dut_model.onnx.data"
DUT_WEIGHTS_FILE = "dut_weights.pt"
DUT_FILES = (*DUT_MODEL_FILES, DUT_EXTERNAL_DATA_FILE, DUT_WEIGHTS_FILE)
REPORT_FILES_DIR = "report_files"
CACHE_DIR = "cache"

#: Every file name ``rca-gpu run`` (and the commands that add to a run folder) writes at the top of a run
#: folder. A new run moves exactly these names out of its way before it writes anything (and puts them back
#: if it fails), so that a folder never mixes two runs; any other file (e.g. a copy
#: ``clusters_from_a.parquet``) stays.
RUN_OUTPUTS: tuple[str, ...] = (RUN_FILE, CLUSTERS_FILE, EMBEDDING_FILE, EXPLANATIONS_FILE, METRICS_FILE,
                                PER_CAUSE_FILE, REPORT_FILE, SUMMARY_FILE, REFERENCE_FEATURES_FILE,
                                REFERENCE_TABLE_FILE, REFERENCE_INFO_FILE, CAUSES_FILE, MEMBERS_FILE,
                                COMPARISON_FILE, COMPARISON_INFO_FILE, *DUT_FILES, HEATMAPS_FILE, CLUSTERS_CSV,
                                VERIFY_FILE)
#: Sub-folders of a run folder that rca-gpu writes into: the report's files (moved aside with the earlier
#: run's outputs by a new run, as report.html is) and the feature cache (shards are added and removed; kept).
RUN_OUTPUT_FOLDERS: tuple[str, ...] = (REPORT_FILES_DIR, CACHE_DIR)

# `rca-gpu study`
STUDY_FILE = "study.parquet"
STUDY_MARKDOWN = "study.md"
STUDY_PIPELINES = "pipelines"
STUDY_OUTPUTS: tuple[str, ...] = (STUDY_FILE, STUDY_MARKDOWN)
STUDY_OUTPUT_FOLDERS: tuple[str, ...] = (STUDY_PIPELINES, CACHE_DIR)

# `rca-gpu assign`, `rca-gpu select`, `rca-gpu export`
ASSIGNMENTS_FILE = "assignments.parquet"
ASSIGN_INFO_FILE = "assign.json"
SELECTION_FILE = "selection.csv"
SELECTION_PARQUET = "selection.parquet"
SELECT_INFO_FILE = "select.json"
EXPORT_FILE = "export.json"
EXPORT_MANIFEST = "manifest.csv"  # one in each exported group folder
FIFTYONE_LABELS = "labels.csv"  # export --format fiftyone: FiftyOne's CSVDataset labels and media folder
FIFTYONE_DATA = "data"

#: File that marks the output folder of a command -> (the command, the JSON key naming the run it read).
OUTPUT_MARKERS = {
    ASSIGN_INFO_FILE: ("rca-gpu assign", "run_folder"),
    SELECT_INFO_FILE: ("rca-gpu select", "run_folder"),
    EXPORT_FILE: ("rca-gpu export", "run_dir"),
}
#: The files assign, select and export write beside their marker. Export's folders are the groups its
#: export.json lists.
MARKED_OUTPUTS = {
    ASSIGN_INFO_FILE: (ASSIGNMENTS_FILE,),
    SELECT_INFO_FILE: (ASSIGNMENTS_FILE, SELECTION_PARQUET, SELECTION_FILE),
    EXPORT_FILE: (),
}

# `rca-gpu datasets make` (and `rca-gpu demo`, which writes a benchmark under data/ and its run under run/)
DATASET_MANIFEST = "manifest.parquet"
DATASET_PASSING = "passing.parquet"
DATASET_INFO = "dataset.json"
DATASET_IMAGES = "images"
DATASET_PASSING_IMAGES = "passing"
DATASET_DUT = "dut.pt"
DATASET_DUT_STATE = "dut_state.pt"
DATASET_OUTPUTS = (DATASET_IMAGES, DATASET_PASSING_IMAGES, DATASET_MANIFEST, DATASET_PASSING, DATASET_DUT_STATE,
                   DATASET_DUT, DATASET_INFO)
DEMO_DATA = "data"
DEMO_RUN = "run"

#: Files rca-gpu keeps in any output folder while a command writes there (rca_gpu.outputs.writing): the lock,
#: its holder (pid and command, JSON), the catalogue's own lock in a run folder, and a run's earlier outputs
#: kept aside until the new run is complete. Hidden names: the folder scan leaves them out.
LOCK_FILE = ".rca-gpu.lock"
LOCK_HOLDER_FILE = ".rca-gpu.lock.json"
CATALOGUE_LOCK_FILE = ".rca-gpu-causes.lock"
CATALOGUE_LOCK_HOLDER_FILE = ".rca-gpu-causes.lock.json"
PREVIOUS_DIR = ".rca-gpu-previous"
BOOKKEEPING = (LOCK_FILE, LOCK_HOLDER_FILE, CATALOGUE_LOCK_FILE, CATALOGUE_LOCK_HOLDER_FILE, PREVIOUS_DIR)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class RunFolderError(RcaError, ValueError):
    """A run folder is missing, incomplete, written by another version, or mixes two runs."""


class RunFileError(RunFolderError):
    """A file of an output folder breaks its schema (wrong type, range, shape, dtype, size or nesting)."""


#: What to do about a damaged file of a run folder (the end of every RunFileError about one).
RUN_FIX = ("The file was changed or damaged after rca-gpu wrote it: restore it, or run `rca-gpu run` again into "
           "a new folder.")


# --------------------------------------------------------------------------------------------------
# Limits every file is read within
# --------------------------------------------------------------------------------------------------

#: Largest JSON file read (run.json of a run with many tuning trials stays far below).
MAX_JSON_BYTES = 64 << 20
#: Largest causes.toml read (a few hundred causes take a few kB).
MAX_TOML_BYTES = 4 << 20
#: Deepest nesting of lists and objects in any JSON or TOML file (run.json needs 6).
MAX_DEPTH = 16
#: Longest string anywhere in a JSON or TOML file (a path, a pipeline, a note).
MAX_STRING = 64 << 10
#: Most items (values, list items, keys) in one JSON or TOML file.
MAX_ITEMS = 2_000_000
#: Largest integer magnitude accepted anywhere (int64).
MAX_INT = 2**63 - 1

_NAME = Annotated[str, Field(max_length=10_000)]
_TEXT = Annotated[str, Field(max_length=MAX_STRING)]
_COUNT = Annotated[int, Field(ge=0, le=MAX_INT)]
_RUN_ID = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


def _describe_value(value: Any) -> str:
    """A value as the file writes it, shortened for a one-line message."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return printable(text if len(text) <= 80 else text[:77] + "...")


def file_label(path: str | Path) -> str:
    """How messages name a file: ``run.json in '/runs/a'``."""
    path = Path(path)
    return f"{path.name} in {printable(repr(str(path.parent)))}"


def _check_plain(data: Any, where: str, error: type[RcaError], fix: str) -> None:
    """Refuse JSON/TOML data nested deeper than MAX_DEPTH, with a string longer than MAX_STRING, more than
    MAX_ITEMS items, an integer outside int64 or a non-finite float. Iterative: no recursion to exhaust."""
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    items = 0
    while stack:
        value, depth, at = stack.pop()
        items += 1
        if items > MAX_ITEMS:
            raise error(f"{where} holds more than {MAX_ITEMS:,} values; no file rca-gpu writes comes near it. {fix}")
        if isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise error(f"{where} nests lists or tables deeper than {MAX_DEPTH} levels (at {at or 'the top'}); "
                            f"no file rca-gpu writes does. {fix}")
            children = value.items() if isinstance(value, dict) else enumerate(value)
            for key, child in children:
                if isinstance(key, str) and len(key) > MAX_STRING:
                    raise error(f"{where} has a key of {len(key):,} characters (at most {MAX_STRING:,}). {fix}")
                stack.append((child, depth + 1, f"{at}.{key}" if at else str(key)))
        elif isinstance(value, str) and len(value) > MAX_STRING:
            raise error(f"{where} has {at} = a string of {len(value):,} characters; at most {MAX_STRING:,} are "
                        f"read. {fix}")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise error(f"{where} has {at} = {_describe_value(value)}, outside the 64-bit integer range. {fix}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise error(f"{where} has {at} = {value!r}; rca-gpu writes only finite numbers (null where there is "
                        f"none). {fix}")


def _read_text(path: str | Path, limit: int, where: str, error: type[RcaError], fix: str) -> str:
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise error(f"{where} is {size:,} bytes; files of this kind are at most {limit:,} bytes. {fix}")
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise error(f"Cannot read {where}: {exc.strerror or exc}. {fix}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where} is not UTF-8 text (byte {exc.start}). {fix}") from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not standard JSON")


def parse_json(text: str, where: str, *, error: type[RcaError] = RunFileError, fix: str = RUN_FIX) -> Any:
    """JSON ``text`` as Python values, refusing NaN/Infinity, nesting beyond MAX_DEPTH (also nesting too deep
    for the parser itself) and the other limits of :func:`_check_plain`. ``where`` names the file."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise error(f"{where} nests lists or objects too deeply to read (more than {MAX_DEPTH} levels are never "
                    f"written). {fix}") from None
    except ValueError as exc:
        raise error(f"Cannot read {where}: {printable(exc)}. {fix}") from None
    _check_plain(data, where, error, fix)
    return data


def read_json(path: str | Path, model: type[BaseModel] | None = None, *, error: type[RcaError] = RunFileError,
              fix: str = RUN_FIX, name: str | None = None, check: bool = True) -> Any:
    """Read the JSON file ``path`` within the limits, then check it against ``model`` (the schema of
    :data:`SCHEMAS` for its name, or for ``name``, when None; none when ``check`` is False or the name has
    none). Returns the parsed data (a dict for every schema here); the model only checks it.

    Raises
    ------
    RunFileError (or ``error``)
        Unreadable, too large, not UTF-8, not JSON, too deeply nested, or a field that breaks the schema:
        one line naming the file, the field, the value, the rule and ``fix``.
    """
    where = file_label(path)
    data = parse_json(_read_text(path, MAX_JSON_BYTES, where, error, fix), where, error=error, fix=fix)
    model = model if model is not None else SCHEMAS.get(Path(path).name if name is None else name)
    if check and model is not None:
        validate(data, model, where, error=error, fix=fix)
    return data


def read_toml(path: str | Path, model: type[BaseModel] | None = None, *, error: type[RcaError] = RunFileError,
              fix: str = RUN_FIX, messages: Callable[[Any], str | None] | None = None) -> dict[str, Any]:
    """Read the TOML file ``path`` within the limits (size, nesting depth, string lengths) and check it against
    ``model``. ``messages(error)`` may word a pydantic error itself (None: the generic wording).

    Raises
    ------
    RunFileError (or ``error``)
        As :func:`read_json`.
    """
    import tomllib

    where = printable(repr(str(path)))
    text = _read_text(path, MAX_TOML_BYTES, where, error, fix)
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise error(f"{where} nests arrays or tables too deeply to read (more than {MAX_DEPTH} levels are never "
                    f"written). {fix}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"Cannot read {where}: {printable(exc)}. {fix}") from None
    _check_plain(data, where, error, fix)
    if model is not None:
        validate(data, model, where, error=error, fix=fix, messages=messages)
    return data


def validate(data: Any, model: type[BaseModel], where: str, *, error: type[RcaError] = RunFileError,
             fix: str = RUN_FIX, messages: Callable[[Any], str | None] | None = None) -> BaseModel:
    """``data`` checked against ``model``; the first problem raised as one line: "<where> has <field> = <value>:
    <rule>. <fix>" (or the wording ``messages`` gives it)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        worded = messages(first) if messages is not None else None
        raise error(worded or field_message(where, first, fix)) from None


def field_message(where: str, problem: Mapping[str, Any], fix: str) -> str:
    """One line for one pydantic error ``problem`` of the file ``where``."""
    at = ".".join(str(part) for part in problem.get("loc", ())) or "the top level"
    rule = str(problem.get("msg", "invalid")).rstrip(".")
    kind = problem.get("type")
    if kind == "missing":
        return f"{where} has no {at}: the field is required. {fix}"
    if kind == "extra_forbidden":
        return f"{where} has an unknown field {at} (= {_describe_value(problem.get('input'))}). {fix}"
    return f"{where} has {at} = {_describe_value(problem.get('input'))}: {rule[:1].lower()}{rule[1:]}. {fix}"


# --------------------------------------------------------------------------------------------------
# Schemas of the JSON and TOML files
# --------------------------------------------------------------------------------------------------


class _Open(BaseModel):
    """A JSON object whose known fields are checked; others are kept (plain JSON within the limits)."""

    model_config = ConfigDict(strict=True, extra="allow")


class _Closed(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class RecordedSpec(_Open):
    """run.json ``spec``: the options the run was given, by type. Their rules (ranges, choices) live in
    :mod:`rca_gpu.spec` alone: a reader that uses them builds a RunSpec from them, which applies those rules
    (:func:`rca_gpu.catalogue.assign.run_spec_of` names run.json when they fail). ``model`` is a record of what
    was passed, never loaded again (see :class:`DutRecord`)."""

    pipeline: Annotated[str, Field(min_length=1, max_length=4096)]
    device: Annotated[str, Field(max_length=64)] = "auto"
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0  # numpy and umap-learn take 32-bit seeds
    batch_size: Annotated[int, Field(ge=1)] = 64
    workers: Annotated[int, Field(ge=0)] = 2
    precision: Annotated[str, Field(max_length=64)] = "fp32"
    model: _TEXT | None = None
    knn_backend: Annotated[str, Field(max_length=64)] = "auto"
    knn_k: Annotated[int, Field(ge=1)] = 30
    image_root: _TEXT | None = None
    cache_features: bool = True
    plot_embedding: bool = True
    stability: Annotated[int, Field(ge=0)] | None = None
    sample_size: Annotated[int, Field(ge=1)] = 5000


class SourceRecord(_Open):
    """run.json ``source``: what was given, its kind, its rows, and the image root its paths were checked
    against (:func:`rca_gpu.runfolder.RunFolder.image_files` applies it again)."""

    given: _TEXT = ""
    kind: Annotated[str, Field(max_length=64)] = "folder"
    rows: _COUNT = 0
    root: _TEXT | None = None


class FeaturesRecord(_Open):
    """run.json ``features``: the extractor's settings (compared with the new images' in assign)."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    dims: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    layer: _TEXT | None = None
    image_size: Annotated[int, Field(ge=1, le=100_000)] | None = None


class Counts(_Open):
    input_rows: _COUNT
    usable: _COUNT
    rejected: _COUNT
    clustered: _COUNT = 0
    noise: _COUNT = 0
    clusters: _COUNT = 0


class DutRecord(_Closed):
    """run.json ``dut``: the DNN under test the run's features came from, as the run keeps it.

    ``form``: ``file`` (a TorchScript, torch.export or ONNX file, copied as ``file``), ``architecture`` (a
    known architecture id, its weights copied as ``file``), or ``code`` (``--model package.module:factory=
    weights.pt``: nothing is copied, the code is never imported from the folder; later commands need the same
    --model again, its weights checked against ``sha256``). ``sha256`` is the hex digest of the copy (of the
    weights for ``code``; None when that form had no weights file); ``extra`` the digests of files the copy
    needs beside it (an ONNX model's external weights)."""

    form: Literal["file", "architecture", "code"]
    file: Literal[DUT_MODEL_FILES + (DUT_WEIGHTS_FILE,)] | None = None  # type: ignore[valid-type]
    architecture: Annotated[str, Field(max_length=100, pattern=r"^[a-z0-9_]+$")] | None = None
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    bytes: _COUNT | None = None
    extra: dict[Literal[DUT_EXTERNAL_DATA_FILE], Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = {}  # type: ignore[valid-type]


class RunHeader(_Open):
    """The fields of run.json read before any other: format, id, status."""

    rca_gpu_run: int
    run_id: _RUN_ID
    status: Literal["finished", "failed"] = "finished"
    error: _TEXT | None = None


class RunInfo(RunHeader):
    """run.json of a finished run: the fields readers use (the other sections are kept as plain JSON within
    the limits). Sections are typed when present; a reader that needs one asks for it
    (:meth:`rca_gpu.runfolder.RunFolder.need`), so that a folder missing it is refused by name."""

    spec: RecordedSpec | None = None
    source: SourceRecord | None = None
    resolved_pipeline: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    features: FeaturesRecord | None = None
    counts: Counts | None = None
    plot_embedding: _TEXT = ""
    dut: DutRecord | None = None
    metrics: dict[str, Any] | None = None
    catalogue: dict[str, Any] | None = None


class ReferenceClusterInfo(_Open):
    reference_images: _COUNT


class ReferenceInfo(_Open):
    """reference.json: the settings of the run's reference set."""

    run_id: _RUN_ID
    format: Literal[1, 2]
    images: _COUNT
    dims: Annotated[int, Field(ge=1, le=10_000_000)]
    dtype: Literal["float16", "float32"]
    k_vote: Annotated[int, Field(ge=1, le=10_000)] = 10
    alpha: Annotated[float, Field(ge=0, lt=0.5)] = 0.01
    radius: Annotated[float, Field(ge=0)] | None = None
    clusters: dict[Annotated[str, Field(pattern=r"^-?[0-9]{1,18}$")], ReferenceClusterInfo] = {}


class MetricsInfo(_Open):
    """metrics.json: the ground-truth metrics (rca_gpu.metrics); ``summary`` is what the report shows."""

    run_id: _RUN_ID
    summary: dict[str, Any] | None = None


class CatalogueState(_Open):
    run_id: _RUN_ID | None = None
    edits: _COUNT | None = None
    digest: Annotated[str, Field(max_length=128)] | None = None


class ComparisonInfo(_Open):
    """comparison.json: how run B's catalogue compares with run A's."""

    run_id: _RUN_ID
    run_a: _RUN_ID
    run_b: _RUN_ID
    run_a_folder: Annotated[str, Field(max_length=4096, pattern=r"^[^\x00]*$")] = ""
    mode: Literal["images", "assign", "images+assign"] = "images"
    basis: Literal["counts", "shares"] = "counts"
    images_a: _COUNT = 0
    images_b: _COUNT = 0
    catalogues: dict[Literal["a", "b"], CatalogueState] | None = None


class VerifiedCause(_Open):
    """One cause of verify.json: its pool images, failures and lift with the interval."""

    name: _NAME = ""
    status: Literal["cause", "dropped"] = "cause"
    images: _COUNT = 0
    failures: _COUNT = 0
    failure_rate: float | None = None
    lift: float | None = None
    low: float | None = None
    high: float | None = None
    verdict: _NAME = ""


class VerifyInfo(_Open):
    """verify.json: each cause's failure rate on a pool against the pool's (rca-gpu verify)."""

    run_id: _RUN_ID
    images: _COUNT = 0
    failures: _COUNT = 0
    failure_rate: float | None = None
    per_cause: dict[Annotated[str, Field(max_length=20, pattern=r"^[0-9]{1,18}$")], VerifiedCause] = {}
    interval: _TEXT = ""
    catalogue: CatalogueState | None = None


class CauseEntry(_Closed):
    """One ``[[cause]]`` of causes.toml."""

    id: Annotated[int, Field(ge=0, le=10**9, description="an integer >= 0", examples=["id = 3"])]
    name: Annotated[str, Field(max_length=10_000, description="a string in quotes",
                               examples=['name = "rotated left"'])] = ""
    origin: Annotated[str, Field(max_length=10_000, description="a string in quotes",
                                 examples=['origin = "cluster 3"'])] = ""
    clusters: Annotated[list[Annotated[int, Field(ge=0, le=10**9)]],
                        Field(max_length=100_000, description="a list of integers >= 0",
                              examples=["clusters = [3]"])] = []
    dropped: Annotated[bool, Field(description="true or false (without quotes)", examples=["dropped = true"])] = False
    size: Annotated[int, Field(ge=0, le=MAX_INT, description="an integer >= 0", examples=["size = 30"])] = 0


class CausesFile(_Closed):
    """causes.toml: the engineer's names and edits of a run's causes."""

    run_id: Annotated[str, Field(max_length=64)]
    format: int
    next_id: Annotated[int, Field(ge=0, le=10**9, description="an integer >= 0", examples=["next_id = 5"])] = 0
    history: Annotated[list[Annotated[str, Field(max_length=10_000)]],
                       Field(max_length=100_000, description="a list of strings",
                             examples=['history = ["drop 3"]'])] = []
    cause: Annotated[list[CauseEntry], Field(max_length=100_000, description="an array of [[cause]] tables",
                                             examples=["[[cause]]"])] = []


class MarkerInfo(_Open):
    """The marker file of an assign, select or export folder, as far as the marker check reads it."""

    run_id: _RUN_ID | None = None
    run_folder: Annotated[str, Field(max_length=4096)] | None = None
    run_dir: Annotated[str, Field(max_length=4096)] | None = None


_GROUP = Annotated[str, Field(max_length=200, pattern=r"^(cluster-[0-9]{1,18}|noise|rejected)$")]


class ExportInfo(MarkerInfo):
    """export.json: the groups exported into a folder, for a later export of the same run into it."""

    run_id: _RUN_ID
    mode: Literal["link", "copy", "mixed"] = "link"
    groups: dict[_GROUP, _COUNT] = {}
    group_modes: dict[_GROUP, Literal["link", "copy"] | None] = {}
    files: _COUNT = 0
    missing: _COUNT = 0


class HolderInfo(_Open):
    """The holder file of a lock: who writes the folder."""

    pid: Annotated[int, Field(ge=0, le=2**31)]
    command: Annotated[str, Field(max_length=4096)] = ""
    since: Annotated[str, Field(max_length=64)] = ""
    host: Annotated[str, Field(max_length=256)] = ""


#: The schema of each JSON file, by name (read_json uses it when given no model).
SCHEMAS: dict[str, type[BaseModel]] = {
    RUN_FILE: RunInfo,
    REFERENCE_INFO_FILE: ReferenceInfo,
    METRICS_FILE: MetricsInfo,
    COMPARISON_INFO_FILE: ComparisonInfo,
    VERIFY_FILE: VerifyInfo,
    ASSIGN_INFO_FILE: MarkerInfo,
    SELECT_INFO_FILE: MarkerInfo,
    EXPORT_FILE: ExportInfo,
    LOCK_HOLDER_FILE: HolderInfo,
    CATALOGUE_LOCK_HOLDER_FILE: HolderInfo,
}


# --------------------------------------------------------------------------------------------------
# Schemas of the Parquet files
# --------------------------------------------------------------------------------------------------

#: Deepest nesting of an Arrow type (a list of structs is 2) in a metadata column.
MAX_TYPE_DEPTH = 3
#: Most columns of a Parquet file read (a manifest's metadata columns pass through to clusters.parquet).
MAX_COLUMNS = 100_000
#: Largest pandas metadata (JSON) of a Parquet file read.
MAX_PANDAS_METADATA = 16 << 20


@dataclass(frozen=True)
class Column:
    """The rule of one column: ``kind`` int | float (ints too) | text | bool | id (any plain value, as a
    manifest's id column may hold);
    ``choices`` for text; ``low`` for numbers; ``required`` or optional."""

    kind: str
    required: bool = True
    choices: tuple[str, ...] | None = None
    low: float | None = None


@dataclass(frozen=True)
class TableSchema:
    """The columns of one Parquet file: named ones, ones whose name matches a pattern, and whether other
    columns (metadata passed through from the source) may be present."""

    columns: Mapping[str, Column]
    patterns: tuple[tuple[str, Column], ...] = ()
    others: bool = True
    run_id: bool = True  # the schema metadata carries the run id
    unique_id: bool = False  # the id column holds each value once
    fix: str = RUN_FIX


_STATUS = Column("text", choices=("clustered", "noise", "rejected"))
TABLES: dict[str, TableSchema] = {
    CLUSTERS_FILE: TableSchema({"id": Column("id"), "path": Column("text"), "cluster": Column("int", low=-1),
                                "status": _STATUS, "reason": Column("text")}, unique_id=True),
    EMBEDDING_FILE: TableSchema({"id": Column("id"), "cluster": Column("int", low=-1), "x": Column("float"),
                                 "y": Column("float")}, patterns=((r"e[0-9]+", Column("float")),), others=False,
                                unique_id=True),
    EXPLANATIONS_FILE: TableSchema({"cluster": Column("int", low=-1), "rank": Column("int", low=0),
                                    "found": Column("bool"), "rule": Column("text"),
                                    "precision": Column("float", required=False),
                                    "recall": Column("float", required=False),
                                    "n_matched": Column("int", required=False, low=0),
                                    "n_cluster": Column("int", required=False, low=0),
                                    "uses": Column("text", required=False),
                                    "conditions": Column("text", required=False)}),
    SUMMARY_FILE: TableSchema({"cluster": Column("int", low=0), "size": Column("int", low=0),
                               "stability": Column("float"), "unstable": Column("bool"),
                               "resamples": Column("int", low=0)}),
    REFERENCE_TABLE_FILE: TableSchema({"id": Column("id"), "cluster": Column("int", low=0),
                                       "score": Column("float")}, others=False),
    MEMBERS_FILE: TableSchema({"id": Column("id"), "cause": Column("int", low=-1)}, others=False, unique_id=True,
                              fix="Delete causes.toml and causes.parquet to start over."),
    COMPARISON_FILE: TableSchema({
        "run_a": Column("text"), "status": Column("text", choices=("persists", "grew", "shrank", "vanished", "new")),
        "cause_a": Column("int", low=-1), "name_a": Column("text"), "size_a": Column("int", low=0),
        "size_b": Column("int", low=0), "share_a": Column("float", required=False),
        "share_b": Column("float", required=False), "ratio": Column("float"), "cause_b": Column("int", low=-1),
        "name_b": Column("text"), "b_causes": Column("text", required=False),
        "a_causes": Column("text", required=False)}, fix="Run `rca-gpu compare` again."),
    ASSIGNMENTS_FILE: TableSchema({"id": Column("id"), "path": Column("text"),
                                   "status": Column("text", choices=("assigned", "unknown", "not_a_cause",
                                                                     "rejected")),
                                   "cause": Column("int", low=-1), "confidence": Column("float")}, run_id=False,
                                  fix="Run the command that wrote it again."),
    SELECTION_PARQUET: TableSchema({"id": Column("id"), "path": Column("text"), "cause": Column("int", low=0),
                                    "rank": Column("int", low=1)}, run_id=False,
                                   fix="Run `rca-gpu select` again."),
    STUDY_FILE: TableSchema({"pipeline": Column("text")}, run_id=False, fix="Run `rca-gpu study` again."),
}


def _value_type(arrow_type):
    """The type a dictionary-encoded column stores."""
    import pyarrow as pa

    return arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type


def _type_depth(arrow_type) -> int:
    import pyarrow as pa

    arrow_type = _value_type(arrow_type)
    if pa.types.is_struct(arrow_type):
        return 1 + max((_type_depth(arrow_type.field(i).type) for i in range(arrow_type.num_fields)), default=0)
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        return 1 + _type_depth(arrow_type.value_type)
    if pa.types.is_map(arrow_type):
        return 1 + max(_type_depth(arrow_type.key_type), _type_depth(arrow_type.item_type))
    return 0


def _kind_ok(kind: str, arrow_type) -> bool:
    import pyarrow as pa

    t = _value_type(arrow_type)
    text = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    if pa.types.is_null(t):
        return True  # every value missing: pandas writes such a column without a type
    return {
        "int": pa.types.is_integer(t),
        "float": pa.types.is_floating(t) or pa.types.is_integer(t),
        "bool": pa.types.is_boolean(t),
        "text": text,
        "id": _type_depth(t) == 0 and not (pa.types.is_binary(t) or pa.types.is_large_binary(t)),
    }[kind]


_KIND_WORDS = {"int": "integers", "float": "numbers", "bool": "true/false values", "text": "text",
               "id": "plain values (integers, text...)"}


def check_table(name: str, table, where: str, *, run_id: str | None = None,
                schema: TableSchema | None = None) -> None:
    """Check the pyarrow Table ``table`` read from the Parquet file ``name`` (described as ``where``) against
    its :data:`TABLES` schema, before pandas sees it: column names and Arrow types, nesting of other columns,
    the values of choice and bounded columns, unique ids, and the pandas metadata (size and nesting).
    ``run_id``: the run id the schema metadata must carry (checked by the caller when None).

    Raises
    ------
    RunFileError
        One line naming the file, the column, what was found and the rule.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = schema or TABLES.get(name)
    fix = schema.fix if schema else RUN_FIX
    metadata = table.schema.metadata or {}
    pandas_meta = metadata.get(b"pandas")
    if pandas_meta is not None:
        if len(pandas_meta) > MAX_PANDAS_METADATA:
            raise RunFileError(f"{where} carries {len(pandas_meta):,} bytes of pandas metadata (at most "
                               f"{MAX_PANDAS_METADATA:,}). {fix}")
        try:
            text = pandas_meta.decode("utf-8")
        except UnicodeDecodeError:
            raise RunFileError(f"{where} carries pandas metadata that is not UTF-8 text. {fix}") from None
        info = parse_json(text, f"{where} (its pandas metadata)", fix=fix)
        if not isinstance(info, dict) or not isinstance(info.get("columns", []), list):
            raise RunFileError(f"{where} carries pandas metadata of another layout. {fix}")
    if table.num_columns > MAX_COLUMNS:
        raise RunFileError(f"{where} has {table.num_columns:,} columns (at most {MAX_COLUMNS:,}). {fix}")
    names = table.column_names
    if len(set(names)) != len(names):
        repeated = next(n for n in names if names.count(n) > 1)
        raise RunFileError(f"{where} has the column {printable(repr(repeated))} twice. {fix}")
    for field_ in table.schema:
        if isinstance(field_.type, pa.ExtensionType):
            raise RunFileError(f"{where} has the column {printable(repr(field_.name))} of the extension type "
                               f"{printable(field_.type)}; rca-gpu writes plain types only. {fix}")
    if schema is None:
        return
    rules: dict[str, Column] = dict(schema.columns)
    for column in names:
        if column in rules:
            continue
        matched = next((rule for pattern, rule in schema.patterns if re.fullmatch(pattern, column)), None)
        if matched is not None:
            rules[column] = matched
        elif not schema.others:
            raise RunFileError(f"{where} has an unknown column {printable(repr(column))}. {fix}")
        elif _type_depth(table.schema.field(column).type) > MAX_TYPE_DEPTH:
            raise RunFileError(f"{where} has the column {printable(repr(column))} of nested type "
                               f"{printable(table.schema.field(column).type)} (at most {MAX_TYPE_DEPTH} levels). {fix}")
    for column, rule in rules.items():
        if column not in names:
            if rule.required:
                raise RunFileError(f"{where} has no column {column!r}: the column is required. {fix}")
            continue
        values = table.column(column)
        arrow_type = table.schema.field(column).type
        if not _kind_ok(rule.kind, arrow_type):
            raise RunFileError(f"{where} has the column {column!r} of type {printable(arrow_type)}; it must hold "
                               f"{_KIND_WORDS[rule.kind]}. {fix}")
        if pa.types.is_dictionary(arrow_type):
            values = values.cast(arrow_type.value_type)
        if rule.choices is not None and len(values):
            bad = pc.filter(values, pc.invert(pc.fill_null(pc.is_in(values, pa.array(rule.choices)), True)))
            if len(bad):
                raise RunFileError(f"{where} has {column} = {_describe_value(bad[0].as_py())}; it must be one of "
                                   f"{', '.join(rule.choices)}. {fix}")
        if rule.low is not None and len(values) and not pa.types.is_null(values.type):
            low = pc.min(values).as_py()
            if low is not None and low < rule.low:
                raise RunFileError(f"{where} has {column} = {_describe_value(low)}; it must be >= {rule.low:g}. {fix}")
        if (rule.kind == "float" and len(values) and pa.types.is_floating(values.type)
                and pc.any(pc.is_inf(values)).as_py()):
            raise RunFileError(f"{where} has an infinite value in the column {column!r}. {fix}")
    if schema.unique_id and "id" in names:
        ids = table.column("id")
        if ids.null_count:
            raise RunFileError(f"{where} has a missing id; every row has one. {fix}")
        if pc.count_distinct(ids).as_py() != len(ids):
            raise RunFileError(f"{where} has an id on more than one row; ids are unique. {fix}")


# --------------------------------------------------------------------------------------------------
# reference.safetensors
# --------------------------------------------------------------------------------------------------

#: The dtypes a reference set is stored in (reference.json ``dtype``).
REFERENCE_DTYPES = {"F16": "float16", "F32": "float32"}


class ReferenceHeader(_Closed):
    """What reference.safetensors declares: one tensor ``features`` (rows, dims), float16 or float32, and the
    run id and format in its metadata."""

    tensors: dict[Literal["features"], tuple[Literal["F16", "F32"], tuple[_COUNT, _COUNT]]]
    metadata: dict[Literal["run_id", "format"], Annotated[str, Field(max_length=64)]]


def check_reference_tensors(path: str | Path, *, rows: int, dims: int | None, dtype: str | None) -> None:
    """Check the header of reference.safetensors before its data is read: exactly the tensor ``features``,
    float16 or float32 (``dtype`` when reference.json names one), shape (``rows``, ``dims``).

    Raises
    ------
    RunFileError
        One line naming the file, what it declares and what the run needs.
    """
    from safetensors import SafetensorError, safe_open

    where = file_label(path)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {}
            for key in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                part = handle.get_slice(key)
                tensors[key] = (str(part.get_dtype()), tuple(int(s) for s in part.get_shape()))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise RunFileError(f"Cannot read {where}: {printable(exc)}. {RUN_FIX}") from None
    if set(tensors) != {"features"}:
        raise RunFileError(f"{where} holds the tensors {printable(sorted(tensors))}; it must hold only 'features'. "
                           f"{RUN_FIX}")
    kind, shape = tensors["features"]
    if kind not in REFERENCE_DTYPES:
        raise RunFileError(f"{where} has features of dtype {printable(kind)}; a reference set is float16 or "
                           f"float32 (another dtype would give other distances and assignments). {RUN_FIX}")
    if dtype is not None and REFERENCE_DTYPES[kind] != dtype:
        raise RunFileError(f"{where} has features of dtype {REFERENCE_DTYPES[kind]}, but reference.json says "
                           f"{dtype}. {RUN_FIX}")
    if len(shape) != 2:
        raise RunFileError(f"{where} has features of shape {list(shape)}; a reference set is 2-D (rows, dims). "
                           f"{RUN_FIX}")
    if shape[0] != rows:
        raise RunFileError(f"{where} has {shape[0]} rows of features, but reference.parquet lists {rows} "
                           f"reference images. {RUN_FIX}")
    if dims is not None and shape[1] != dims:
        raise RunFileError(f"{where} has features of width {shape[1]}, but the run's features have {dims} "
                           f"dimensions (run.json features.dims, reference.json dims). {RUN_FIX}")
    validate({"tensors": {k: (v[0], v[1]) for k, v in tensors.items()}, "metadata": metadata}, ReferenceHeader,
             where)


# --------------------------------------------------------------------------------------------------
# Helpers for other modules
# --------------------------------------------------------------------------------------------------


def json_object(path: str | Path, model: type[BaseModel] | None = None) -> dict | None:
    """The JSON object in ``path`` when it is one within the limits (and passes ``model`` when given); None
    when the file is missing, too large, unreadable, not JSON, nested too deeply or another type. For checks
    that only ask whether a file is one rca-gpu wrote (marker files)."""
    try:
        if not os.path.isfile(path):
            return None
        data = read_json(path, model, check=model is not None)
    except RcaError:
        return None
    return data if isinstance(data, dict) else None


def sha256_of(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in ``chunk`` bytes."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Which folders are rca-gpu's output folders (the folder scan leaves them out)
# --------------------------------------------------------------------------------------------------

#: The command that writes run.json (``command=None`` in :func:`rca_gpu.runfolder.check_out_folder`).
RUN_COMMAND = "rca-gpu run"
#: The command that writes :data:`STUDY_FILE`; pass it as ``command`` to :func:`rca_gpu.runfolder.check_out_folder`.
STUDY_COMMAND = "rca-gpu study"


def _json_object(path: str | Path) -> dict | None:
    """The JSON object in ``path`` (a marker file: run.json, assign.json, ...), read within the limits of
    :mod:`rca_gpu.runfiles` and checked against :class:`rca_gpu.runfiles.MarkerInfo`; None when it is missing,
    too large, unreadable, not JSON, too deeply nested, another type, or breaks that schema."""
    return json_object(path, MarkerInfo)


def _is_run_json(path: str | Path) -> bool:
    """Whether ``path`` is a run.json written by rca-gpu (a JSON object with ``"rca_gpu_run"``)."""
    data = _json_object(path)
    return data is not None and "rca_gpu_run" in data


def _is_study_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a study: :data:`STUDY_FILE` with :data:`STUDY_MARKDOWN` or :data:`STUDY_PIPELINES`."""
    return os.path.isfile(os.path.join(folder, STUDY_FILE)) and (
        os.path.isfile(os.path.join(folder, STUDY_MARKDOWN)) or os.path.isdir(os.path.join(folder, STUDY_PIPELINES)))


def output_folder_kind(folder: str | Path) -> str | None:
    """What wrote ``folder`` when it is an rca-gpu output folder, e.g. ``"rca-gpu run (run.json)"``; None for
    any other folder. A folder counts when it holds a run.json written by rca-gpu (a JSON object with
    ``"rca_gpu_run"``), a study (:func:`_is_study_folder`), or one of :data:`OUTPUT_MARKERS` (a JSON object). A
    user's own file of the same name with other content does not count. Used by the folder scan, which leaves
    these folders out: their thumbnails and exported copies are not failure images."""
    folder = os.fspath(folder)
    if _is_study_folder(folder):
        return f"{STUDY_COMMAND} ({STUDY_FILE})"
    if _is_run_json(os.path.join(folder, RUN_FILE)):
        return f"rca-gpu run ({RUN_FILE})"
    for marker, (command, _) in OUTPUT_MARKERS.items():
        if _json_object(os.path.join(folder, marker)) is not None:
            return f"{command} ({marker})"
    return None
