"""The catalogue commands: --help, and one-line exit-2 errors for bad run folders and options."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

COMMANDS = ("causes", "assign", "compare", "select")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "rca_gpu.cli", *map(str, args)], capture_output=True, text=True)


def _args(command: str, run_dir, other, tmp_path) -> list:
    """Arguments that make ``command`` read ``run_dir`` (and ``other`` as its second input)."""
    return {
        "causes": [run_dir],
        "assign": [run_dir, other, "--out", tmp_path / "out"],
        "compare": [other, run_dir],
        "select": [run_dir, other, "--budget", "3", "--out", tmp_path / "out"],
    }[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    done = _cli(command, "--help")
    assert done.returncode == 0 and "Usage" in done.stdout


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("problem,message", [
    ("missing", "does not exist or is not a folder"),
    ("other_version", "written by another version of rca-gpu"),
    ("unfinished", "holds no run.json"),
])
def test_bad_run_folders_are_one_line_errors(command, problem, message, catalogue_run, catalogue_images, tmp_path):
    target = tmp_path / "run"
    if problem != "missing":
        shutil.copytree(catalogue_run, target)
        if problem == "other_version":
            info = json.loads((target / "run.json").read_text())
            (target / "run.json").write_text(json.dumps({**info, "rca_gpu_run": 1}))
        else:
            (target / "run.json").unlink()
    other = catalogue_run if command == "compare" else catalogue_images / "new"
    done = _cli(command, *_args(command, target, other, tmp_path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["assign", "select"])
def test_a_missing_source_is_a_one_line_error(command, catalogue_run, tmp_path):
    done = _cli(command, *_args(command, catalogue_run, tmp_path / "nowhere", tmp_path))
    assert done.returncode == 2 and done.stderr.startswith("error: The source") and "does not exist" in done.stderr


def test_a_run_without_reference_set_is_refused(catalogue_run, catalogue_images, tmp_path):
    target = shutil.copytree(catalogue_run, tmp_path / "run")
    (target / "reference.parquet").unlink()
    done = _cli("assign", target, catalogue_images / "new", "--out", tmp_path / "out")
    assert done.returncode == 2 and "kept no reference set" in done.stderr


def test_select_refuses_a_zero_budget(catalogue_run, catalogue_images, tmp_path):
    done = _cli("select", catalogue_run, catalogue_images / "new", "--budget", "0", "--out", tmp_path / "out")
    assert done.returncode == 2 and "--budget" in done.stderr


# --- output folders and the folders given as RUN_DIR, checked before any image is read ---

WRITERS = {
    "assign": lambda run, src, out: ["assign", run, src, "--out", out],
    "select": lambda run, src, out: ["select", run, src, "--budget", "3", "--out", out],
    "export": lambda run, src, out: ["export", run, "--to", out],
}


@pytest.mark.parametrize("command", sorted(WRITERS))
@pytest.mark.parametrize("problem,message", [
    ("file", "is an existing file, not a folder"),
    ("below_file", "cannot be created"),
    ("the_run", "is the run folder itself"),
    ("another_run", "is a run folder (it holds run.json)"),
    ("in_cache", "lies inside cache/, the feature cache of the run folder"),
    ("in_report_files", "lies inside report_files/, the report's files of the run folder"),
])
def test_an_unusable_out_folder_is_a_one_line_error(command, problem, message, catalogue_run, catalogue_images,
                                                    tmp_path):
    (tmp_path / "afile").write_text("x")
    out = {"file": tmp_path / "afile", "below_file": tmp_path / "afile" / "sub", "the_run": catalogue_run,
           "another_run": shutil.copytree(catalogue_run, tmp_path / "other") if problem == "another_run" else None,
           "in_cache": catalogue_run / "cache" / "exp",
           "in_report_files": catalogue_run / "report_files" / "sel"}[problem]
    before = sorted(p.name for p in catalogue_run.iterdir())
    done = _cli(*WRITERS[command](catalogue_run, catalogue_images / "new", out))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: The --") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert sorted(p.name for p in catalogue_run.iterdir()) == before


@pytest.mark.parametrize("command", ["assign", "select"])
def test_the_out_folder_is_checked_before_any_image_is_read(command, catalogue_run, catalogue_images, tmp_path,
                                                            monkeypatch):
    import rca_gpu.data.sources as sources
    from rca_gpu.catalogue.assign import assign_run
    from rca_gpu.catalogue.retraining import select_from_pool
    from rca_gpu.runfolder import RunFolderError

    def never(*args, **kwargs):
        raise AssertionError("the source was read before the --out folder was checked")

    monkeypatch.setattr(sources, "load_source", never)
    (tmp_path / "afile").write_text("x")
    call = assign_run if command == "assign" else lambda *a, **k: select_from_pool(*a, budget=3, **k)
    with pytest.raises(RunFolderError, match="is an existing file"):
        call(catalogue_run, catalogue_images / "new", tmp_path / "afile", device="cpu", workers=0)


@pytest.mark.parametrize("command,marker", [*((c, "assign.json") for c in (*COMMANDS, "export")),
                                            ("assign", "select.json"), ("assign", "export.json")])
def test_an_output_folder_given_as_run_folder_is_named(command, marker, catalogue_run, catalogue_images, tmp_path):
    made_by = "rca-gpu " + marker.split(".")[0]
    results = tmp_path / "results"
    results.mkdir()
    key = "run_dir" if marker == "export.json" else "run_folder"
    (results / marker).write_text(json.dumps({key: str(catalogue_run)}))
    args = (["export", results, "--to", tmp_path / "exp"] if command == "export"
            else [command, *_args(command, results, catalogue_run if command == "compare" else
                                  catalogue_images / "new", tmp_path)])
    if command == "compare":  # RUN_B too
        args = ["compare", catalogue_run, results]
    done = _cli(*args)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert line.startswith("error: The RUN_") and len(line.splitlines()) == 1
    assert f"is the output folder of `{made_by}` (it holds {marker}), not a run folder" in line
    assert "made by `rca-gpu run`" in line and str(catalogue_run) in line
    assert "--out" not in line  # never suggests running `run` into it


def test_assign_and_select_record_the_run_they_read(catalogue_run, catalogue_images, tmp_path):
    from rca_gpu.catalogue.folders import check_run_dir
    from rca_gpu.catalogue.reference import CatalogueError
    from rca_gpu.catalogue.retraining import select_from_pool

    _, info = select_from_pool(catalogue_run, catalogue_images / "new", tmp_path / "sel", budget=2, device="cpu",
                               workers=0)
    assert info["run_folder"] == str(catalogue_run.resolve())
    with pytest.raises(CatalogueError, match="select.json.*" + str(catalogue_run.resolve()).replace("/", ".")):
        check_run_dir(tmp_path / "sel")
    check_run_dir(catalogue_run)  # a run folder passes


@pytest.fixture(scope="module")
def features_run(tmp_path_factory):
    """A finished run on features brought with --features (no extractor)."""
    import numpy as np

    from rca_gpu.launch import run_features
    from rca_gpu.spec import build_run_spec

    root = tmp_path_factory.mktemp("features_run")
    rng = np.random.default_rng(0)
    np.save(root / "f.npy", np.concatenate([rng.normal(c, 0.1, (20, 6)) for c in range(3)]).astype("float32"))
    spec = build_run_spec(pipeline="pca(n_components=4)+kmeans(k=3)", device="cpu", workers=0, stability=0,
                          cache_features=False)
    run_features(spec, root / "f.npy", root / "run", report=False)
    return root / "run"


@pytest.mark.parametrize("command", ["assign", "select", "compare"])
def test_a_run_on_brought_features_cannot_place_new_images_and_says_what_can(command, features_run,
                                                                            catalogue_run, catalogue_images,
                                                                            tmp_path):
    args = ([features_run, catalogue_run, "--by", "assign"] if command == "compare"
            else _args(command, features_run, catalogue_images / "new", tmp_path))
    done = _cli(command, *args)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert line.startswith("error: ") and len(line.splitlines()) == 1
    assert "clustered features passed with --features" in line
    assert f"{command.capitalize()} needs a run whose features came from an extractor" in line
    assert "rca-gpu run IMAGES" in line and "pass the features with --features FILE" not in line
    assert not (tmp_path / "out").exists()


# --- an output folder belongs to one command ---

@pytest.mark.parametrize("first,second", [("select", "assign"), ("assign", "select"), ("export", "assign"),
                                          ("assign", "export"), ("select", "export"), ("export", "select")])
def test_an_output_folder_of_another_command_is_refused(first, second, catalogue_run, catalogue_images, tmp_path):
    from rca_gpu.runfolder import OUTPUT_MARKERS

    out = tmp_path / "out"
    marker = next(name for name, (command, _) in OUTPUT_MARKERS.items() if command == f"rca-gpu {first}")
    out.mkdir()
    (out / marker).write_text(json.dumps({"run_folder": str(catalogue_run)}))  # as `first` leaves it
    before = sorted(p.name for p in out.iterdir())
    done = _cli(*WRITERS[second](catalogue_run, catalogue_images / "new", out))
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert f"holds the outputs of `rca-gpu {first}` ({marker})" in line and "Pass a folder of its own" in line
    assert sorted(p.name for p in out.iterdir()) == before


def test_run_refuses_an_output_folder_of_a_catalogue_command(catalogue_images, tmp_path):
    out = tmp_path / "sel"
    out.mkdir()
    (out / "select.json").write_text("{}")
    done = _cli("run", catalogue_images / "run", "--out", out, "-q")
    assert done.returncode == 2 and "holds the outputs of `rca-gpu select` (select.json)" in done.stderr
    assert not (out / "run.json").exists()


def test_the_same_command_may_write_into_its_own_folder_again(catalogue_run, catalogue_images, tmp_path):
    from rca_gpu.catalogue.assign import assign_run
    from rca_gpu.catalogue.retraining import select_from_pool

    for _ in range(2):
        assign_run(catalogue_run, catalogue_images / "new", tmp_path / "a", device="cpu", workers=0)
        select_from_pool(catalogue_run, catalogue_images / "new", tmp_path / "s", budget=2, device="cpu", workers=0)
    assert (tmp_path / "a" / "assign.json").is_file() and (tmp_path / "s" / "select.json").is_file()


def test_export_json_lists_every_group_exported_into_the_folder(catalogue_run, tmp_path):
    from rca_gpu.report.export import ExportError, export_run

    export_run(catalogue_run, tmp_path / "d", clusters=["cluster-1", "cluster-2"])
    export_run(catalogue_run, tmp_path / "d", clusters=["cluster-0"], mode="copy")
    info = json.loads((tmp_path / "d" / "export.json").read_text())
    assert list(info["groups"]) == ["cluster-0", "cluster-1", "cluster-2"] and info["files"] == 90
    assert info["mode"] == "mixed" and info["group_modes"] == {"cluster-0": "copy", "cluster-1": "link",
                                                               "cluster-2": "link"}
    export_json = tmp_path / "d" / "export.json"  # an export of another run there: refused, nothing made
    export_json.write_text(export_json.read_text().replace(info["run_id"], "e" * 32))
    with pytest.raises(ExportError, match="holds an export of run e{32}"):
        export_run(catalogue_run, tmp_path / "d", clusters=None)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["cluster-0", "cluster-1", "cluster-2",
                                                                  "export.json"]


def test_export_manifests_carry_the_catalogue_causes_after_edits(catalogue_run, tmp_path):
    from rca_gpu.catalogue.causes import load_catalogue
    from rca_gpu.report.export import export_run

    run = tmp_path / "run"
    shutil.copytree(catalogue_run, run)
    catalogue = load_catalogue(run)
    merged = catalogue.merge([0, 1])
    catalogue.rename(merged, "bars <b>left</b>")
    catalogue.save()
    export_run(run, tmp_path / "d", mode="copy")
    rows = pd.concat([pd.read_csv(tmp_path / "d" / f"cluster-{c}" / "manifest.csv", keep_default_na=False)
                      for c in range(3)])
    assert list(rows.columns[:6]) == ["path", "source_path", "id", "cluster", "cause", "cause_name"]
    by_cluster = rows.groupby("cluster")["cause"].agg(lambda c: sorted(set(c)))
    assert by_cluster[0] == by_cluster[1] == [merged] and by_cluster[2] == [2]
    assert set(rows.loc[rows["cause"] == merged, "cause_name"]) == {"bars <b>left</b>"}


# --- no image readable: every row rejected, no false extractor error ---

@pytest.fixture
def unreadable(tmp_path):
    folder = tmp_path / "unreadable"
    folder.mkdir()
    (folder / "a.png").write_text("x\n")
    (folder / "b.png").write_bytes(b"")
    return folder


def test_assign_of_unreadable_images_rejects_every_row_with_its_reason(catalogue_run, unreadable, tmp_path):
    import pandas as pd

    done = _cli("assign", catalogue_run, unreadable, "--out", tmp_path / "out", "--device", "cpu", "--workers", "0")
    assert done.returncode == 2, done.stderr  # as a run none of whose images can be read: written, then an error
    assert "dims=" not in done.stdout + done.stderr
    assert f"error: no image of {str(unreadable)!r} could be read: all 2 rows are rejected" in done.stderr
    assert "Check that the files are images rca-gpu reads" in done.stderr and "Check the paths" not in done.stderr
    table = pd.read_parquet(tmp_path / "out" / "assignments.parquet")
    assert len(table) == 2 and (table["status"] == "rejected").all()
    assert sorted(table["reason"]) == ["empty file (0 bytes)", "not a readable image (unknown or corrupt format)"]
    assert json.loads((tmp_path / "out" / "assign.json").read_text())["note"].startswith("no image of")


def test_select_of_unreadable_images_says_so_and_a_floor_above_the_budget_is_explained(catalogue_run, unreadable,
                                                                                       catalogue_images, tmp_path):
    done = _cli("select", catalogue_run, unreadable, "--budget", "3", "--out", tmp_path / "s", "--device", "cpu",
                "--workers", "0", "-q")
    assert done.returncode == 2, done.stderr
    assert "dims=" not in done.stdout + done.stderr
    assert "error: no pool image of" in done.stderr
    assert json.loads((tmp_path / "s" / "select.json").read_text())["selected"] == 0  # written all the same
    floor = _cli("select", catalogue_run, catalogue_images / "new", "--budget", "3", "--floor", "100", "--out",
                 tmp_path / "f", "--device", "cpu", "--workers", "0", "-q")
    assert floor.returncode == 0, floor.stderr
    assert "--floor 100 x 3 causes = 300 exceeds --budget 3: the floor was given to the largest causes" in floor.stdout
    assert "lower --floor to at most 1" in floor.stdout
    assert len(json.loads((tmp_path / "f" / "select.json").read_text())["notes"]) == 1


def test_export_quiet_prints_only_the_last_line(catalogue_run, tmp_path):
    from typer.testing import CliRunner

    from rca_gpu.cli import app

    done = CliRunner().invoke(app, ["export", str(catalogue_run), "--to", str(tmp_path / "e"), "-q"])
    assert done.exit_code == 0, done.output
    assert done.output.strip().splitlines() == [f"exported 90 files to {(tmp_path / 'e').resolve()}"]
    # notes stay (docs/report.md): a group asked for that the run has no image of
    noted = CliRunner().invoke(app, ["export", str(catalogue_run), "--to", str(tmp_path / "n"), "--clusters",
                                     "0,rejected", "-q"])
    assert noted.exit_code == 0, noted.output
    lines = noted.output.strip().splitlines()
    assert lines[0] == "note: the run has no rejected images; no rejected/ folder made" and len(lines) == 2
    assert lines[1].startswith("exported ")
    # whole-number columns are written as integers (28, not 28.0)
    import csv

    with open(tmp_path / "n" / "cluster-0" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(row["img_width"].isdigit() and row["img_height"].isdigit() and row["id"].isdigit()
                        for row in rows)


def test_compare_quiet_prints_only_the_result_line(catalogue_run, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from rca_gpu.cli import app

    copy = shutil.copytree(catalogue_run, tmp_path / "b")
    done = CliRunner().invoke(app, ["compare", str(catalogue_run), str(copy), "-q"])
    assert done.exit_code == 0, done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(str(copy.resolve() / "comparison.parquet")), lines


def test_assign_and_select_record_what_the_folder_scan_left_out(catalogue_run, catalogue_images, tmp_path):
    """As run.json does: assign.json and select.json hold the source under "source", with "left_out" (hidden
    files, rca-gpu output folders inside the scanned folder)."""
    from typer.testing import CliRunner

    from rca_gpu.cli import app

    new = tmp_path / "new"
    for group, folder in ((0, new), (1, new / ".hidden"), (2, new / "exported")):
        folder.mkdir(parents=True)
        for image in (catalogue_images / "new").glob(f"g{group}_*.png"):
            shutil.copy(image, folder)
    (new / "exported" / "export.json").write_text(json.dumps({"run_dir": str(catalogue_run)}))
    quick = ["--device", "cpu", "--workers", "0", "-q"]
    for command, extra, info in (("assign", [], "assign.json"), ("select", ["--budget", "2"], "select.json")):
        done = CliRunner().invoke(app, [command, str(catalogue_run), str(new), *extra, "--out",
                                        str(tmp_path / command), *quick])
        assert done.exit_code == 0, done.output
        source = json.loads((tmp_path / command / info).read_text())["source"]
        assert source["kind"] == "folder" and source["rows"] == 12 and source["given"] == str(new)
        assert source["left_out"]["hidden"]["files"] == 12 and source["left_out"]["hidden"]["examples"] == [".hidden/"]
        assert source["left_out"]["output"]["files"] == 12
        assert source["left_out"]["output"]["examples"][0].startswith("exported/")


@pytest.mark.parametrize("command,extra", [("assign", []), ("select", ["--budget", "2"])])
def test_missing_files_get_the_paths_hint_not_the_images_hint(catalogue_run, tmp_path, command, extra):
    """Every row "file not found": the note points at the paths and --image-root, not at the file format."""
    from typer.testing import CliRunner

    from rca_gpu.cli import app

    (tmp_path / "m.csv").write_text("path\nmoved/a.png\nmoved/b.png\n")
    done = CliRunner().invoke(app, [command, str(catalogue_run), str(tmp_path / "m.csv"), *extra, "--out",
                                    str(tmp_path / "out"), "--device", "cpu", "--workers", "0", "-q"])
    assert done.exit_code == 2, done.output  # written, then an error: nothing could be read
    assert "(2 x file not found)" in done.output and "Check the paths" in done.output and "--image-root" in done.output
    assert "Check that the files are images" not in done.output
