"""A run folder is data: every file is read through its schema (rca_gpu.runfiles), and a tampered field of any
file gives one `error:` line naming the file and the field, never a traceback or a quietly different result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import one_line_error, succeeded
from typer.testing import CliRunner

from rca_gpu.cli import app

runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def compared_run(catalogue_run, tmp_path_factory) -> Path:
    """A copy of the catalogue run with a comparison (with itself), a named cause and metrics.json."""
    from rca_gpu.catalogue.causes import load_catalogue
    from rca_gpu.catalogue.compare import compare_runs
    from rca_gpu.runfolder import open_run

    run = tmp_path_factory.mktemp("compared") / "run"
    shutil.copytree(catalogue_run, run)
    compare_runs(run, run, by="images", device="cpu")
    catalogue = load_catalogue(run)
    catalogue.rename(0, "top bar")
    catalogue.split(1, 2)  # images move between causes: causes.parquet is written too
    catalogue.save()
    from rca_gpu import outputs

    outputs.write_json(run / "metrics.json", {"summary": {"weighted_purity": 1.0}}, run_id=open_run(run).run_id)
    return run


@pytest.fixture
def run_copy(compared_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(compared_run, target)
    return target


# --------------------------------------------------------------------------------------------------
# Tampering helpers
# --------------------------------------------------------------------------------------------------


def _set(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        data = data.setdefault(key, {})
    if value is _DELETE:
        data.pop(keys[-1], None)
    else:
        data[keys[-1]] = value


_DELETE = object()


def json_field(name: str, dotted: str, value):
    def tamper(run: Path) -> None:
        data = json.loads((run / name).read_text())
        _set(data, dotted, value)
        (run / name).write_text(json.dumps(data))
    return tamper


def json_text(name: str, make):
    """Replace the file by the text ``make(data)`` (for what json.dumps cannot write: NaN, deep nesting)."""
    def tamper(run: Path) -> None:
        data = json.loads((run / name).read_text())
        (run / name).write_text(make(data))
    return tamper


def parquet_column(name: str, column: str, values=None, *, drop: bool = False, add: bool = False):
    """Replace, drop or add a column, keeping the schema metadata (run id, pandas metadata)."""
    def tamper(run: Path) -> None:
        table = pq.read_table(run / name)
        metadata = table.schema.metadata
        if drop:
            table = table.drop_columns([column])
        else:
            array = values(table) if callable(values) else values
            array = array if isinstance(array, (pa.Array, pa.ChunkedArray)) else pa.array(array)
            if add:
                table = table.append_column(column, array)
            else:
                table = table.set_column(table.column_names.index(column), column, array)
        pq.write_table(table.replace_schema_metadata(metadata), run / name)
    return tamper


def parquet_rows(name: str, keep):
    def tamper(run: Path) -> None:
        table = pq.read_table(run / name)
        pq.write_table(table.take(keep(len(table))).replace_schema_metadata(table.schema.metadata), run / name)
    return tamper


def parquet_metadata(name: str, key: bytes, value: bytes):
    def tamper(run: Path) -> None:
        table = pq.read_table(run / name)
        pq.write_table(table.replace_schema_metadata({**table.schema.metadata, key: value}), run / name)
    return tamper


def safetensors_features(make):
    """Rewrite reference.safetensors with ``make(features)`` (the features as stored) and the same metadata."""
    def tamper(run: Path) -> None:
        from safetensors import safe_open
        from safetensors.numpy import load_file, save_file

        path = str(run / "reference.safetensors")
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata()
        tensors = make(load_file(path)["features"])
        save_file(tensors if isinstance(tensors, dict) else {"features": tensors}, path, metadata=metadata)
    return tamper


def text_edit(name: str, make):
    def tamper(run: Path) -> None:
        (run / name).write_text(make((run / name).read_text()))
    return tamper


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _strings(table: pa.Table, column: str) -> pa.Array:
    return pa.array([str(v) for v in table.column(column).to_pylist()])


# (case id, tamper, command, fragments of the one error line)
CASES = [
    # run.json
    ("run.json text seed", json_field("run.json", "spec.seed", "abc"), "causes", ["run.json", "spec.seed", '"abc"']),
    ("run.json huge seed", json_field("run.json", "spec.seed", 10**30), "causes", ["run.json", "spec.seed"]),
    ("run.json seed too large", json_field("run.json", "spec.seed", 2**40), "causes", ["run.json", "spec.seed",
                                                                                      "less than or equal"]),
    ("run.json spec a list", json_field("run.json", "spec", [1, 2]), "causes", ["run.json", "spec"]),
    ("run.json spec without pipeline", json_field("run.json", "spec.pipeline", _DELETE), "causes",
     ["run.json", "spec.pipeline", "required"]),
    ("run.json negative count", json_field("run.json", "counts.usable", -3), "causes", ["run.json", "counts.usable"]),
    ("run.json dims as text", json_field("run.json", "features.dims", "768"), "causes", ["run.json", "features.dims"]),
    ("run.json pipeline a number", json_field("run.json", "resolved_pipeline", 42), "causes",
     ["run.json", "resolved_pipeline"]),
    ("run.json status", json_field("run.json", "status", "maybe"), "causes", ["run.json", "status"]),
    ("run.json run id an object", json_field("run.json", "run_id", {"a": 1}), "causes", ["run.json", "run_id"]),
    ("run.json nested 40 deep", json_text("run.json", lambda d: json.dumps({**d, "tuning": json.loads(_deep(40))})),
     "causes", ["run.json", "deeper than 16 levels"]),
    ("run.json nested 100000 deep", json_text("run.json", lambda d: json.dumps(d)[:-1] + ', "x": ' + _deep(100000)
                                              + "}"), "causes", ["run.json", "too deeply to read"]),
    ("run.json long string", json_field("run.json", "platform.note", "x" * 100_000), "causes",
     ["run.json", "platform.note", "100,000 characters"]),
    ("run.json NaN", json_text("run.json", lambda d: json.dumps(d)[:-1] + ', "x": NaN}'), "causes",
     ["run.json", "NaN is not standard JSON"]),
    ("run.json dut file outside", json_field("run.json", "dut", {"form": "file", "file": "../../etc/passwd"}),
     "causes", ["run.json", "dut.file"]),
    ("run.json dut form", json_field("run.json", "dut", {"form": "python"}), "causes", ["run.json", "dut.form"]),
    ("run.json without spec", json_field("run.json", "spec", _DELETE), "assign", ["run.json", "has no spec"]),
    ("run.json bad pipeline", json_field("run.json", "resolved_pipeline", "nonsense+x+y"), "assign",
     ["run.json", "records a spec this version cannot use"]),
    # clusters.parquet
    ("clusters text cluster ids", parquet_column("clusters.parquet", "cluster", lambda t: _strings(t, "cluster")),
     "causes", ["clusters.parquet", "'cluster'", "integers"]),
    ("clusters unknown status", parquet_column("clusters.parquet", "status", lambda t: pa.array(["maybe"] * len(t))),
     "causes", ["clusters.parquet", "status", '"maybe"', "clustered, noise, rejected"]),
    ("clusters without status", parquet_column("clusters.parquet", "status", drop=True), "causes",
     ["clusters.parquet", "no column 'status'"]),
    ("clusters repeated id", parquet_column("clusters.parquet", "id", lambda t: pa.array([0] * len(t))), "causes",
     ["clusters.parquet", "id on more than one row"]),
    ("clusters cluster below -1", parquet_column("clusters.parquet", "cluster", lambda t: pa.array([-5] * len(t))),
     "causes", ["clusters.parquet", "cluster = -5"]),
    ("clusters nested column", parquet_column("clusters.parquet", "deep", lambda t: pa.array([[[[[1]]]]] * len(t)),
                                              add=True), "causes", ["clusters.parquet", "'deep'", "nested type"]),
    ("clusters pandas metadata deep", parquet_metadata("clusters.parquet", b"pandas", _deep(100000).encode()),
     "causes", ["clusters.parquet", "pandas metadata", "too deeply"]),
    # embedding.parquet, explanations.parquet, cluster_summary.parquet (read by the report)
    ("embedding x as text", parquet_column("embedding.parquet", "x", lambda t: _strings(t, "x")), "report",
     ["embedding.parquet", "'x'", "numbers"]),
    ("embedding row missing", parquet_rows("embedding.parquet", lambda n: list(range(n - 1))), "report",
     ["embedding.parquet", "usable images of clusters.parquet"]),
    ("embedding unknown column", parquet_column("embedding.parquet", "payload", lambda t: pa.array(["x"] * len(t)),
                                                add=True), "report", ["embedding.parquet", "unknown column 'payload'"]),
    ("explanations rank as text", parquet_column("explanations.parquet", "rank", lambda t: _strings(t, "rank")),
     "report", ["explanations.parquet", "'rank'"]),
    ("summary stability as text", parquet_column("cluster_summary.parquet", "stability",
                                                 lambda t: _strings(t, "stability")), "causes-table",
     ["cluster_summary.parquet", "'stability'"]),
    # the reference set (read by assign)
    ("reference int8", safetensors_features(lambda f: np.clip(f * 10, -127, 127).astype(np.int8)), "assign",
     ["reference.safetensors", "I8", "float16 or float32"]),
    ("reference wrong width", safetensors_features(lambda f: f[:, :5].copy()), "assign",
     ["reference.safetensors", "width 5"]),
    ("reference 1-D", safetensors_features(lambda f: f.reshape(-1).copy()), "assign", ["reference.safetensors", "2-D"]),
    ("reference extra tensor", safetensors_features(lambda f: {"features": f, "code": np.zeros(3, f.dtype)}),
     "assign", ["reference.safetensors", "only 'features'"]),
    ("reference NaN", safetensors_features(lambda f: np.where(np.arange(f.size).reshape(f.shape) == 7, np.nan,
                                                              f).astype(f.dtype)), "assign",
     ["reference.safetensors", "not finite"]),
    ("reference.json dtype", json_field("reference.json", "dtype", "int8"), "assign", ["reference.json", "dtype"]),
    ("reference.json dims", json_field("reference.json", "dims", 3), "assign", ["reference.json", "dims = 3"]),
    ("reference.json k_vote", json_field("reference.json", "k_vote", 0), "assign", ["reference.json", "k_vote"]),
    ("reference.parquet text clusters", parquet_column("reference.parquet", "cluster",
                                                       lambda t: _strings(t, "cluster")), "assign",
     ["reference.parquet", "'cluster'"]),
    # the catalogue
    ("causes.toml nested deep", text_edit("causes.toml", lambda t: t + "\nx = " + _deep(100000) + "\n"), "causes",
     ["causes.toml", "too deeply to read"]),
    ("causes.toml nested 20", text_edit("causes.toml", lambda t: "x = " + _deep(20) + "\n" + t), "causes",
     ["causes.toml", "deeper than 16 levels"]),
    ("causes.toml long name", text_edit("causes.toml", lambda t: t.replace('name = "top bar"',
                                                                            f'name = "{"n" * 20000}"')), "causes",
     ["causes.toml", "cause 0", "at most 10000 characters"]),
    ("causes.toml huge id", text_edit("causes.toml", lambda t: t.replace("id = 0\n", f"id = {10**20}\n", 1)),
     "causes", ["causes.toml", "outside the 64-bit integer range"]),
    ("causes.toml id out of range", text_edit("causes.toml", lambda t: t.replace("id = 0\n", f"id = {10**12}\n", 1)),
     "causes", ["causes.toml", "id", "less than or equal to 1000000000"]),
    ("causes.parquet cause as text", parquet_column("causes.parquet", "cause", lambda t: _strings(t, "cause")),
     "causes", ["causes.parquet", "'cause'"]),
    # the comparison and the metrics (read by the report)
    ("comparison.json mode", json_field("comparison.json", "mode", "<script>"), "report",
     ["comparison.json", "mode"]),
    ("comparison.json folder with NUL", json_field("comparison.json", "run_a_folder", "/a\x00b"), "report",
     ["comparison.json", "run_a_folder"]),
    ("comparison.parquet status", parquet_column("comparison.parquet", "status", lambda t: pa.array(["x"] * len(t))),
     "report", ["comparison.parquet", "status"]),
    ("metrics.json summary a list", lambda run: (
        parquet_column("clusters.parquet", "root_cause", lambda t: pa.array(["a"] * len(t)), add=True)(run),
        json_field("metrics.json", "summary", [1])(run)), "report", ["metrics.json", "summary"]),
]


def _command(command: str, run: Path, tmp_path: Path, catalogue_images: Path) -> list:
    return {
        "causes": ["causes", run, "-q"],
        "causes-table": ["causes", run],
        "report": ["report", run, "-q"],
        "assign": ["assign", run, catalogue_images / "new", "--out", tmp_path / "assigned", "--device", "cpu", "-q"],
    }[command]


@pytest.mark.parametrize("case,tamper,command,fragments", CASES, ids=[c[0] for c in CASES])
def test_a_tampered_field_of_any_file_is_one_error_line(case, tamper, command, fragments, run_copy, tmp_path,
                                                        catalogue_images):
    tamper(run_copy)
    line = one_line_error(_cli(*_command(command, run_copy, tmp_path, catalogue_images)), *fragments)
    assert len(line) < 2000  # the value is shortened, not echoed whole
    assert not (tmp_path / "assigned").exists()  # refused before anything was written


def test_the_untouched_copy_reads(run_copy, tmp_path, catalogue_images):
    """The cases above fail because of their tampering: the same commands succeed on the copy as written."""
    succeeded(_cli("causes", run_copy, "-q"))
    succeeded(_cli("report", run_copy, "-q"))
    succeeded(_cli(*_command("assign", run_copy, tmp_path, catalogue_images)))


def test_every_file_a_run_writes_passes_its_schema(compared_run):
    """What the commands write is what the schemas accept (a schema drifting from the writer fails here)."""
    from rca_gpu import runfiles
    from rca_gpu.runfolder import open_run

    run = open_run(compared_run)
    for name in runfiles.TABLES:
        if run.has(name):
            run.table(name)
    for name in runfiles.SCHEMAS:
        if run.has(name):
            run.json(name)
    checked = {n for n in (*runfiles.TABLES, *runfiles.SCHEMAS) if run.has(n)}
    assert {"clusters.parquet", "embedding.parquet", "explanations.parquet", "cluster_summary.parquet",
            "reference.parquet", "causes.parquet", "comparison.parquet", "run.json", "reference.json",
            "comparison.json", "metrics.json"} <= checked
    runfiles.read_toml(compared_run / "causes.toml", runfiles.CausesFile)
    reference = runfiles.read_json(compared_run / "reference.json")
    runfiles.check_reference_tensors(compared_run / "reference.safetensors", rows=len(run.table("reference.parquet")),
                                     dims=reference["dims"], dtype=reference["dtype"])


def test_files_the_report_keeps_for_itself_are_read_within_the_limits(run_copy):
    """The thumbnails' and galleries' index.json: a damaged one is not trusted (the report makes them again)."""
    succeeded(_cli("report", run_copy, "-q"))
    for index in (run_copy / "report_files").rglob("index.json"):
        index.write_text(_deep(100000))
    succeeded(_cli("report", run_copy, "-q"))
    assert json.loads((run_copy / "report_files" / "thumbs" / "index.json").read_text())["size"] > 0


def test_a_damaged_dataset_json_is_no_benchmark(tmp_path):
    from rca_gpu.datasets import dataset_differences

    (tmp_path / "manifest.parquet").write_bytes(b"PAR1")
    (tmp_path / "dataset.json").write_text(_deep(100000))
    assert dataset_differences(tmp_path, "mnist-rc") == ["no benchmark"]


def test_a_tampered_export_json_is_refused_by_field(catalogue_run, tmp_path):
    target = tmp_path / "exported"
    succeeded(_cli("export", catalogue_run, "--to", target, "--clusters", "0", "--mode", "copy", "-q"))
    info = json.loads((target / "export.json").read_text())
    info["groups"]["../../outside"] = 3
    (target / "export.json").write_text(json.dumps(info))
    one_line_error(_cli("export", catalogue_run, "--to", target, "--clusters", "1", "-q"), "export.json",
                   "groups", "../../outside")
    assert not (target / "cluster-1").exists()


def test_json_limits_are_checked_without_recursion():
    from rca_gpu.runfiles import MAX_DEPTH, RunFileError, parse_json

    assert parse_json(_deep(MAX_DEPTH), "x") == json.loads(_deep(MAX_DEPTH))
    for text, words in [(_deep(MAX_DEPTH + 1), "deeper than"), (_deep(10**6), "too deeply"),
                        ('{"a": Infinity}', "Infinity is not standard JSON"), ("1" * 5000, "Cannot read"),
                        (json.dumps({"a": 2**64}), "64-bit")]:
        with pytest.raises(RunFileError, match=words):
            parse_json(text, "x.json")


def test_a_parquet_file_of_the_wrong_kind_names_the_column(tmp_path):
    from rca_gpu.runfiles import RunFileError, check_table

    table = pa.table({"id": [1, 2], "path": ["a", "b"], "cluster": pa.array(["0", "1"]), "status": ["noise"] * 2,
                      "reason": ["", ""]})
    with pytest.raises(RunFileError, match=r"clusters.parquet in x has the column 'cluster' of type string; it must "
                                           r"hold integers"):
        check_table("clusters.parquet", table, "clusters.parquet in x")
    dictionary = pa.table({"id": [1], "path": ["a"], "cluster": [0], "reason": [""],
                           "status": pa.array(["noise"]).dictionary_encode()})
    check_table("clusters.parquet", dictionary, "x")  # a dictionary-encoded text column is text


# --------------------------------------------------------------------------------------------------
# The DNN under test: kept in the folder, never code named by it
# --------------------------------------------------------------------------------------------------

EVIL = '''
import pathlib
pathlib.Path({marker!r}).write_text("imported")


def build():
    import torch
    return torch.nn.Identity()
'''


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    """Two TorchScript CNNs for 16-px grey images (same layout, other weights), and one's state_dict."""
    import torch
    from torch import nn

    folder = tmp_path_factory.mktemp("models")
    spec = json.dumps({"input_shape": [1, 16, 16], "classes": ["a", "b"], "value_range": [0, 1]})
    for seed, name in ((0, "model.pt"), (1, "other.pt")):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(4 * 8 * 8, 2)).eval()
        torch.jit.save(torch.jit.script(net), str(folder / name), _extra_files={"rca_gpu.json": spec})
    return folder


@pytest.fixture(scope="module")
def dut_run(tiny_models, catalogue_images, tmp_path_factory) -> Path:
    """A run whose features come from the DUT (gradient x input of a TorchScript file)."""
    from rca_gpu.pipeline import run
    from rca_gpu.spec import build_run_spec

    out = tmp_path_factory.mktemp("dut_run") / "run"
    spec = build_run_spec(pipeline="gradxinput+pca(n_components=5)+kmeans(k=3)", device="cpu", workers=0,
                          stability=0, cache_features=False, model=str(tiny_models / "model.pt"))
    run(spec, catalogue_images / "run", out, report=False)
    return out


@pytest.fixture
def dut_copy(dut_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(dut_run, target)
    return target


def _assign(run: Path, source: Path, out: Path, *extra):
    return _cli("assign", run, source, "--out", out, "--device", "cpu", "-q", *extra)


def test_the_run_keeps_its_dut_and_assign_reloads_only_that_copy(dut_copy, tiny_models, catalogue_images,
                                                                  tmp_path):
    from rca_gpu.runfiles import sha256_of

    info = json.loads((dut_copy / "run.json").read_text())
    assert info["dut"] == {"form": "file", "file": "dut_model.pt", "sha256": sha256_of(tiny_models / "model.pt"),
                           "bytes": (tiny_models / "model.pt").stat().st_size}
    new = catalogue_images / "new"
    first = succeeded(_assign(dut_copy, new, tmp_path / "a"))
    # the original file may move away: the copy in the folder is used
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(tiny_models / "model.pt", moved / "model.pt")
    info["spec"]["model"] = str(tmp_path / "gone.pt")
    (dut_copy / "run.json").write_text(json.dumps(info))
    again = succeeded(_assign(dut_copy, new, tmp_path / "b"))
    assert first.output.splitlines()[-1].split(";")[0] == again.output.splitlines()[-1].split(";")[0]
    # the user's own --model is checked against the run's
    succeeded(_assign(dut_copy, new, tmp_path / "c", "--model", moved / "model.pt"))
    one_line_error(_assign(dut_copy, new, tmp_path / "d", "--model", tiny_models / "other.pt"),
                   "is not the DNN under test of the run", "leave --model out")
    # a changed or missing copy is refused
    shutil.copy(tiny_models / "other.pt", dut_copy / "dut_model.pt")
    one_line_error(_assign(dut_copy, new, tmp_path / "e"), "dut_model.pt", "changed after the run")
    (dut_copy / "dut_model.pt").unlink()
    one_line_error(_assign(dut_copy, new, tmp_path / "f"), "has no dut_model.pt")
    assert not any((tmp_path / name).exists() for name in "def")


def test_code_named_by_run_json_is_never_imported(dut_copy, catalogue_images, tmp_path, monkeypatch):
    """run.json's spec.model naming package.module:function (an importable module that runs code when
    imported) is ignored: assign uses the run's copy; with the copy's record removed it asks for --model."""
    import sys

    marker = tmp_path / "imported.txt"
    (tmp_path / "evilmod.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    info = json.loads((dut_copy / "run.json").read_text())
    info["spec"]["model"] = "evilmod:build"
    (dut_copy / "run.json").write_text(json.dumps(info))
    succeeded(_assign(dut_copy, catalogue_images / "new", tmp_path / "a"))
    del info["dut"]
    (dut_copy / "run.json").write_text(json.dumps(info))
    one_line_error(_assign(dut_copy, catalogue_images / "new", tmp_path / "b"), "needs the DNN under test",
                   "--model")
    info["dut"] = {"form": "code", "sha256": None}
    (dut_copy / "run.json").write_text(json.dumps(info))
    one_line_error(_assign(dut_copy, catalogue_images / "new", tmp_path / "c"), "never imports code named by a run "
                   "folder", "needs that --model again")
    info["dut"] = {"form": "architecture", "architecture": "evilmod", "file": "dut_model.pt"}
    (dut_copy / "run.json").write_text(json.dumps(info))
    one_line_error(_assign(dut_copy, catalogue_images / "new", tmp_path / "d"), "dut.architecture", "evilmod",
                   "no known architecture")
    assert not marker.exists() and "evilmod" not in sys.modules


def test_a_dut_built_by_code_is_named_again_by_the_user(tmp_path, catalogue_images, monkeypatch):
    """--model package.module:factory=weights.pt is the user's choice for that command: the run keeps the
    weights' SHA-256 only, and assign needs the same --model again (its weights checked)."""
    import torch

    from rca_gpu.runfolder import RunFolder, keep_dut

    (tmp_path / "mymodels.py").write_text("import torch\n\ndef build():\n    return torch.nn.Linear(3, 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "w.pt")
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "w2.pt")
    record = keep_dut(tmp_path, f"mymodels:build={tmp_path / 'w.pt'}")
    assert record["form"] == "code" and len(record["sha256"]) == 64 and "file" not in record
    run = RunFolder(tmp_path, {"run_id": "r", "dut": record})
    from rca_gpu.runfolder import RunFolderError

    with pytest.raises(RunFolderError, match="never imports code named by a run folder"):
        run.dut_ref(None)
    assert run.dut_ref(f"mymodels:build={tmp_path / 'w.pt'}") == f"mymodels:build={tmp_path / 'w.pt'}"
    with pytest.raises(RunFolderError, match="is not the DNN under test"):
        run.dut_ref(f"mymodels:build={tmp_path / 'w2.pt'}")


def test_a_known_architecture_is_rebuilt_from_its_id_and_copied_weights(tmp_path):
    """A manifest's mnist_cnn=dut_state.pt: the run keeps the id and a copy of the weights; the factory
    comes from rca_gpu's allow-list, never from the folder."""
    import torch

    from rca_gpu.datasets.models import mnist_cnn
    from rca_gpu.features.dut import load_model
    from rca_gpu.runfiles import DutRecord
    from rca_gpu.runfolder import RunFolder, keep_dut

    torch.manual_seed(0)
    torch.save(mnist_cnn().state_dict(), tmp_path / "dut_state.pt")
    out = tmp_path / "run"
    out.mkdir()
    record = keep_dut(out, f"rca_gpu.datasets.models:mnist_cnn={tmp_path / 'dut_state.pt'}")
    DutRecord.model_validate(record)
    assert record["form"] == "architecture" and record["architecture"] == "mnist_cnn"
    (tmp_path / "dut_state.pt").unlink()  # the copy is enough
    ref = RunFolder(out, {"run_id": "r", "dut": record}).dut_ref()
    assert ref == f"rca_gpu.datasets.models:mnist_cnn={out / 'dut_weights.pt'}"
    model = load_model(ref, device="cpu")
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_an_onnx_dut_keeps_its_external_weights_beside_the_copy(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), name="W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    source = tmp_path / "src"
    source.mkdir()
    onnx.save_model(helper.make_model(graph), str(source / "m.onnx"), save_as_external_data=True,
                    location="weights.bin", size_threshold=0)
    from rca_gpu.runfiles import DutRecord, sha256_of
    from rca_gpu.runfolder import RunFolder, keep_dut

    out = tmp_path / "run"
    out.mkdir()
    record = keep_dut(out, str(source / "m.onnx"))
    DutRecord.model_validate(record)
    assert record["file"] == "dut_model.onnx" and record["extra"] == {
        "dut_model.onnx.data": sha256_of(out / "dut_model.onnx.data")}
    shutil.rmtree(source)
    copy = RunFolder(out, {"run_id": "r", "dut": record}).dut_ref()
    loaded = onnx.load(copy)
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]),
                                  np.arange(12, dtype=np.float32).reshape(3, 4))
    (out / "dut_model.onnx.data").write_bytes(b"\0" * 48)
    from rca_gpu.runfolder import RunFolderError

    with pytest.raises(RunFolderError, match="dut_model.onnx.data .* changed after the run"):
        RunFolder(out, {"run_id": "r", "dut": record}).dut_ref()


def test_a_manifest_dut_is_recorded_as_a_data_record():
    """The names a run folder may give a DUT file are fixed: no path, no code."""
    from pydantic import ValidationError

    from rca_gpu.runfiles import DutRecord

    for bad in ({"form": "file", "file": "../model.pt"}, {"form": "file", "file": "/etc/x.pt"},
                {"form": "architecture", "architecture": "os.system"}, {"form": "code", "module": "x:y"},
                {"form": "file", "file": "dut_model.pt", "sha256": "zz"}):
        with pytest.raises(ValidationError, match="dut|file|architecture|module|sha256|Extra|pattern|literal"):
            DutRecord.model_validate(bad)


# --------------------------------------------------------------------------------------------------
# Every field of every schema, every column of every table
# --------------------------------------------------------------------------------------------------


def _models():
    from rca_gpu import runfiles

    return sorted({*runfiles.SCHEMAS.values(), runfiles.CausesFile, runfiles.CauseEntry, runfiles.DutRecord,
                   runfiles.RecordedSpec, runfiles.FeaturesRecord, runfiles.Counts, runfiles.SourceRecord,
                   runfiles.ReferenceHeader}, key=lambda m: m.__name__)


def _wrong_value(annotation) -> object:
    """A value no field of this annotation accepts: text for numbers, booleans and objects; a number for text."""
    text = str(annotation)
    if "str" in text and not any(t in text for t in ("int", "float", "bool", "dict", "list", "Model", "tuple")):
        return 12345
    return {"nested": ["not", {"the": "right type"}]} if "str" in text and "dict" not in text else "not this"


@pytest.mark.parametrize("model", _models(), ids=lambda m: m.__name__)
def test_each_field_of_each_schema_refuses_a_value_of_another_type(model):
    """For every field of every file's schema: a value of another type is refused for that very field (what a
    hand edit or another tool's output gives); the one-line wording is checked by the command cases above."""
    from pydantic import ValidationError

    for name, info in model.model_fields.items():
        data = {key: value.default for key, value in model.model_fields.items()
                if not value.is_required() and value.default is not None}
        data[name] = _wrong_value(info.annotation)
        with pytest.raises(ValidationError) as caught:
            model.model_validate(data)
        assert any(error["loc"][:1] == (name,) for error in caught.value.errors()), (name, caught.value)


@pytest.mark.parametrize("name", sorted(__import__("rca_gpu.runfiles", fromlist=["TABLES"]).TABLES))
def test_each_column_of_each_table_refuses_another_type(name):
    """For every column rule of every Parquet file: a column of another Arrow type, or missing when required,
    is refused naming the file and the column."""
    from rca_gpu.runfiles import TABLES, RunFileError, check_table

    schema = TABLES[name]
    good = {"int": pa.array([1, 2], pa.int64()), "float": pa.array([0.5, 1.5]), "bool": pa.array([True, False]),
            "text": pa.array(["a", "b"]), "id": pa.array([1, 2], pa.int64())}
    columns = {}
    for column, rule in schema.columns.items():
        array = good[rule.kind]
        if rule.choices:
            array = pa.array([rule.choices[0]] * 2)
        if rule.low is not None and rule.kind == "int":
            array = pa.array([int(max(rule.low, 1))] * 2, pa.int64()) if column != "id" else array
        columns[column] = array
    check_table(name, pa.table(columns), name)  # the table as written passes
    wrong = {"int": pa.array(["1", "2"]), "float": pa.array(["x", "y"]), "bool": pa.array(["yes", "no"]),
             "text": pa.array([[1], [2]]), "id": pa.array([[1], [2]])}
    for column, rule in schema.columns.items():
        tampered = dict(columns, **{column: wrong[rule.kind]})
        with pytest.raises(RunFileError, match=rf"{name} has the column {column!r} of type"):
            check_table(name, pa.table(tampered), name)
        if rule.required:
            with pytest.raises(RunFileError, match=rf"{name} has no column {column!r}"):
                check_table(name, pa.table({k: v for k, v in columns.items() if k != column}), name)
