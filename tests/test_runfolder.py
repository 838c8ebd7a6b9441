"""The run folder contract: every file carries the run id; readers refuse incomplete or mixed folders."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from rca_gpu import outputs
from rca_gpu.runfolder import RUN_FORMAT, RunFolderError, new_run_id, open_run


def _finished(folder: Path, run_id: str) -> None:
    outputs.write_parquet(folder / "clusters.parquet", pd.DataFrame({
        "id": [0, 1], "path": ["/a.png", "/b.png"], "cluster": [0, -1], "status": ["clustered", "noise"],
        "reason": ["", ""]}), run_id=run_id)
    outputs.write_json(folder / "metrics.json", {"summary": {}}, run_id=run_id)
    outputs.write_json(folder / "run.json", {"rca_gpu_run": RUN_FORMAT}, run_id=run_id)


def test_open_run_reads_files_of_the_same_run(tmp_path):
    run_id = new_run_id()
    _finished(tmp_path, run_id)
    folder = open_run(tmp_path)
    assert folder.run_id == run_id and len(run_id) == 32
    assert folder.clusters()["cluster"].tolist() == [0, -1]
    assert folder.json("metrics.json")["run_id"] == run_id


def test_a_file_of_another_run_is_refused(tmp_path):
    _finished(tmp_path, "aaaa")
    outputs.write_parquet(tmp_path / "clusters.parquet", pd.DataFrame({"id": [0]}), run_id="bbbb")
    folder = open_run(tmp_path)
    with pytest.raises(RunFolderError, match="clusters.parquet .* belongs to run bbbb, but run.json to run aaaa"):
        folder.clusters()
    outputs.write_parquet(tmp_path / "clusters.parquet", pd.DataFrame({"id": [0]}))
    with pytest.raises(RunFolderError, match="carries no run id"):
        open_run(tmp_path).clusters()


@pytest.mark.parametrize("state", ["missing", "file", "no_run_json", "broken_json", "old_format", "no_id"])
def test_unfinished_or_foreign_folders_are_refused(tmp_path, state):
    target = tmp_path / "run"
    if state == "file":
        target.write_text("x")
    elif state != "missing":
        target.mkdir()
        _finished(target, "aaaa")
        run_json = target / "run.json"
        if state == "no_run_json":
            run_json.unlink()
        elif state == "broken_json":
            run_json.write_text("{not json")
        elif state == "old_format":
            run_json.write_text(json.dumps({"rca_gpu_run": 1}))
        elif state == "no_id":
            run_json.write_text(json.dumps({"rca_gpu_run": RUN_FORMAT}))
    expected = {
        "missing": "does not exist or is not a folder", "file": "does not exist or is not a folder",
        "no_run_json": "holds no run.json", "broken_json": "Cannot read", "old_format": "another version",
        "no_id": "another version",
    }[state]
    with pytest.raises(RunFolderError, match=expected):
        open_run(target)


def test_a_folder_holding_a_run_points_at_it(tmp_path):
    """`rca-gpu report runs/demo` (the demo's parent folder) names runs/demo/run instead of only failing."""
    import json

    from rca_gpu.runfolder import RUN_FORMAT, RunFolderError, open_run

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"rca_gpu_run": RUN_FORMAT, "run_id": "x"}))
    with pytest.raises(RunFolderError, match=r"sub-folder\(s\) .*run'.* pass the run folder itself"):
        open_run(tmp_path)


@pytest.mark.parametrize("marker,command", [("assign.json", "assign"), ("select.json", "select"),
                                            ("export.json", "export")])
def test_an_output_folder_of_another_command_is_named_as_such(tmp_path, marker, command):
    """`rca-gpu report` / `evaluate` on the output folder of assign, select or export say what it is."""
    import json

    from rca_gpu.runfolder import RunFolderError, open_run

    key = "run_dir" if command == "export" else "run_folder"
    (tmp_path / marker).write_text(json.dumps({key: "/runs/first"}))
    with pytest.raises(RunFolderError, match=rf"output folder of `rca-gpu {command}`.*/runs/first"):
        open_run(tmp_path)


def test_every_file_written_into_a_run_folder_is_a_listed_output():
    """A new run removes exactly RUN_OUTPUTS, and --out is refused when it would overwrite an input of those
    names: each module's output file name must be listed (a name missing here would mix two runs)."""
    from rca_gpu.catalogue import causes, compare, reference, stability
    from rca_gpu.metrics import CLUSTERS_FILE, METRICS_FILE, PER_CAUSE_FILE
    from rca_gpu.report.build import EXPLANATIONS_FILE, FILES_DIR, REPORT_FILE
    from rca_gpu.runfolder import RUN_FILE, RUN_OUTPUT_FOLDERS, RUN_OUTPUTS

    written = {RUN_FILE, CLUSTERS_FILE, METRICS_FILE, PER_CAUSE_FILE, EXPLANATIONS_FILE, REPORT_FILE,
               "embedding.parquet", causes.CAUSES_FILE, causes.MEMBERS_FILE, compare.COMPARISON_FILE,
               compare.COMPARISON_INFO_FILE, reference.FEATURES_FILE, reference.TABLE_FILE, reference.INFO_FILE,
               stability.SUMMARY_FILE}
    assert written <= set(RUN_OUTPUTS) and FILES_DIR in RUN_OUTPUT_FOLDERS


def _study_folder(folder: Path, with_md: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.parquet").write_bytes(b"PAR1")
    if with_md:
        (folder / "study.md").write_text("# study\n")
    else:
        (folder / "pipelines").mkdir()
    return folder


@pytest.mark.parametrize("command", [None, "rca-gpu assign", "rca-gpu select", "rca-gpu export"])
@pytest.mark.parametrize("with_md", [True, False])
def test_a_study_folder_is_refused_as_the_out_folder_of_any_other_command(tmp_path, command, with_md):
    """run (command None), assign, select and export would write beside a study's study.parquet."""
    from rca_gpu.runfolder import RunFolderError, check_out_folder

    study = _study_folder(tmp_path / "s", with_md)
    with pytest.raises(RunFolderError, match=r"folder '.*s' holds a study of `rca-gpu study` \(study\.parquet\)"
                                             r".*Pass a folder of its own"):
        check_out_folder(study, command=command)


def test_a_run_folder_is_refused_as_the_out_folder_of_a_study(tmp_path):
    from rca_gpu.runfolder import STUDY_COMMAND, RunFolderError, check_out_folder

    _finished(tmp_path, new_run_id())
    with pytest.raises(RunFolderError, match=r"holds a run folder of `rca-gpu run` \(run\.json\).*those of "
                                             r"`rca-gpu study` would mix.*e\.g\. --out studies/first"):
        check_out_folder(tmp_path, command=STUDY_COMMAND, example="studies/first")


@pytest.mark.parametrize("marker", ["assign.json", "select.json", "export.json"])
def test_a_catalogue_output_folder_is_refused_as_the_out_folder_of_a_study(tmp_path, marker):
    from rca_gpu.runfolder import STUDY_COMMAND, RunFolderError, check_out_folder

    (tmp_path / marker).write_text("{}")
    with pytest.raises(RunFolderError, match=rf"holds the outputs of `rca-gpu \w+` \({marker}\)"):
        check_out_folder(tmp_path, command=STUDY_COMMAND)


def test_a_command_may_write_into_its_own_earlier_output_folder(tmp_path):
    """A study into an earlier study, a run into an earlier run: allowed (the new outputs replace the old).
    A user's own run.json (not written by rca-gpu) does not make a run folder."""
    from rca_gpu.runfolder import STUDY_COMMAND, check_out_folder

    study = _study_folder(tmp_path / "s")
    assert check_out_folder(study, command=STUDY_COMMAND) == study
    run = tmp_path / "r"
    run.mkdir()
    _finished(run, new_run_id())
    assert check_out_folder(run) == run
    own = tmp_path / "own"
    own.mkdir()
    (own / "run.json").write_text(json.dumps({"mine": 1}))
    assert check_out_folder(own, command=STUDY_COMMAND) == own


def _run_and_study(folder: Path) -> list[str]:
    """A folder as older versions could leave it: a finished run and a study side by side. Returns its names."""
    folder.mkdir(parents=True, exist_ok=True)
    _finished(folder, new_run_id())
    (folder / "report_files").mkdir()
    _study_folder(folder, with_md=True)
    (folder / "pipelines").mkdir()
    (folder / "cache").mkdir()
    (folder / "notes.txt").write_text("mine")
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("command,remove,kept", [
    (None, "study.parquet, study.md, pipelines/", "run.json"),
    ("rca-gpu study", "run.json, clusters.parquet, metrics.json, report_files/", "study.parquet"),
])
def test_a_folder_holding_a_run_and_a_study_names_the_files_to_remove(tmp_path, command, remove, kept):
    """Refused by `run --out` and by `study --out` alike; each error names exactly the other command's files
    present (never the shared cache/ or the user's own files), and nothing is removed."""
    from rca_gpu.runfolder import RunFolderError, check_out_folder

    names = _run_and_study(tmp_path / "both")
    with pytest.raises(RunFolderError) as caught:
        check_out_folder(tmp_path / "both", command=command)
    message = str(caught.value)
    assert "\n" not in message and "holds the outputs of both" in message
    assert f"from it (or move them to a folder of their own): {remove}; or pass another folder" in message
    assert kept not in message.split(": ", 1)[1] and "cache" not in message and "notes.txt" not in message
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == names


def test_a_run_folder_holding_assign_outputs_names_the_files_to_remove(tmp_path):
    """The same for a run and the outputs of assign: `run --out` names assign's files, `assign --out` the run's."""
    from rca_gpu.catalogue.folders import check_out_dir
    from rca_gpu.catalogue.reference import CatalogueError
    from rca_gpu.runfolder import check_out_folder

    _finished(tmp_path, new_run_id())
    (tmp_path / "assign.json").write_text(json.dumps({"run_folder": "/runs/first"}))
    (tmp_path / "assignments.parquet").write_bytes(b"PAR1")
    with pytest.raises(RunFolderError, match=r"these files of `rca-gpu assign` from it .*: assign\.json, "
                                             r"assignments\.parquet; or pass another folder, e\.g\. --out runs/first"):
        check_out_folder(tmp_path)
    with pytest.raises(CatalogueError, match=r"these files of `rca-gpu run` from it .*: run\.json, "
                                             r"clusters\.parquet, metrics\.json; or pass another folder"):
        check_out_dir(tmp_path)


def test_the_files_of_assign_and_select_are_the_ones_they_write():
    from rca_gpu.catalogue import assign, retraining
    from rca_gpu.report.export import EXPORT_FILE
    from rca_gpu.runfolder import MARKED_OUTPUTS, OUTPUT_MARKERS

    assert set(MARKED_OUTPUTS) == set(OUTPUT_MARKERS)
    assert {assign.ASSIGN_INFO_FILE, *MARKED_OUTPUTS[assign.ASSIGN_INFO_FILE]} == {assign.ASSIGNMENTS_FILE,
                                                                                    assign.ASSIGN_INFO_FILE}
    assert {retraining.SELECT_INFO_FILE, *MARKED_OUTPUTS[retraining.SELECT_INFO_FILE]} == {
        assign.ASSIGNMENTS_FILE, retraining.SELECTION_FILE, retraining.SELECTION_PARQUET, retraining.SELECT_INFO_FILE}
    assert MARKED_OUTPUTS[EXPORT_FILE] == ()


@pytest.mark.parametrize("inside,where", [
    ("run/cache", "is cache/, the feature cache of the run folder"),
    ("run/report_files", "is report_files/, the report's files of the run folder"),
    ("run/report_files/sel", "lies inside report_files/"),
    ("run/cache/exp/deeper", "lies inside cache/"),
    ("study/pipelines", "is pipelines/, the pipelines' runs of the study"),
    ("study/cache/x", "lies inside cache/, the feature cache of the study"),
    ("study/pipelines/p1/cache", "is cache/, the feature cache of the run folder"),
])
def test_an_output_folder_inside_a_run_or_study_internal_folder_is_refused(tmp_path, inside, where):
    """Every command's output folder (checked by check_out_folder): the folders rca-gpu writes itself."""
    from rca_gpu.runfolder import check_out_folder

    (tmp_path / "run").mkdir()
    _finished(tmp_path / "run", new_run_id())
    study = _study_folder(tmp_path / "study", with_md=True)
    (study / "pipelines" / "p1").mkdir(parents=True)
    _finished(study / "pipelines" / "p1", new_run_id())
    for command in (None, "rca-gpu assign", "rca-gpu select", "rca-gpu export", "rca-gpu study"):
        with pytest.raises(RunFolderError, match=rf"^The --out folder '.*{inside}' {where}.*Pass a folder outside"):
            check_out_folder(tmp_path / inside, command=command)
    check_out_folder(tmp_path / inside, internal=True)  # rca-gpu's own writes (a study's runs) pass
    check_out_folder(tmp_path / "run" / "assigned", command="rca-gpu assign")  # another sub-folder is fine
    check_out_folder(tmp_path / "elsewhere" / "cache")  # a folder called cache outside a run is fine
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "run" / "cache", target_is_directory=True)
    (tmp_path / "run" / "cache").mkdir(exist_ok=True)
    with pytest.raises(RunFolderError, match="lies inside cache/"):
        check_out_folder(link / "x")


def test_every_command_refuses_an_out_folder_inside_a_run_internal_folder(tmp_path):
    from typer.testing import CliRunner

    from rca_gpu.cli import app

    run = tmp_path / "run"
    run.mkdir()
    _finished(run, new_run_id())
    (tmp_path / "imgs").mkdir()
    runner = CliRunner()
    for args in (["run", str(tmp_path / "imgs"), "--out", str(run / "cache")],
                 ["demo", "--out", str(run / "report_files" / "demo")],
                 ["datasets", "make", "mnist-rc", "--out", str(run / "cache" / "d")],
                 ["study", str(tmp_path / "imgs"), "--out", str(run / "cache" / "s")]):  # assign, select,
        # export: tests/test_catalogue_cli.py (they need a run with a catalogue)
        result = runner.invoke(app, args)
        if isinstance(result.exception, RunFolderError):  # `datasets make`: printed by rca_gpu.cli.main
            output, code = f"error: {result.exception}", 2
        else:
            output, code = result.output, result.exit_code
        assert code == 2, (args, output)
        assert output.startswith("error: The --") and "which rca-gpu writes into itself" in output
        assert len(output.strip().splitlines()) == 1


def test_a_new_run_takes_the_earlier_reports_files_with_its_report(tmp_path):
    """report_files/ belongs to the earlier report.html: a new run (e.g. with --no-report) moves it aside with
    the other outputs, drops it when the new run finishes and puts it back when the new run fails."""
    from rca_gpu.runfolder import start_run_folder, writing_run

    _finished(tmp_path, new_run_id())
    (tmp_path / "report.html").write_text("<html></html>")
    (tmp_path / "report_files").mkdir()
    (tmp_path / "report_files" / "thumb.png").write_bytes(b"old")
    with pytest.raises(RuntimeError), writing_run(tmp_path):
        start_run_folder(tmp_path)
        assert not (tmp_path / "report_files").exists() and not (tmp_path / "report.html").exists()
        (tmp_path / "report_files").mkdir()  # a new report half written when the run fails
        (tmp_path / "report_files" / "new.png").write_bytes(b"new")
        raise RuntimeError("a stage failed")
    assert sorted(p.name for p in (tmp_path / "report_files").iterdir()) == ["thumb.png"]
    assert (tmp_path / "report.html").is_file()
    with writing_run(tmp_path):
        start_run_folder(tmp_path)
        _finished(tmp_path, new_run_id())  # finished without a report
    assert not (tmp_path / "report_files").exists() and not (tmp_path / "report.html").exists()
