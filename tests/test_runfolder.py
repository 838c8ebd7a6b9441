"""The run folder contract: every file carries the run id; readers refuse incomplete or mixed folders."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from rca_gpu import outputs
from rca_gpu.runfolder import RUN_FORMAT, RunFolderError, new_run_id, open_run


def _finished(folder: Path, run_id: str) -> None:
    outputs.write_parquet(folder / "clusters.parquet", pd.DataFrame({"id": [0, 1], "cluster": [0, -1]}),
                          run_id=run_id)
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
    from rca_gpu.evaluate import CLUSTERS_FILE, METRICS_FILE, PER_CAUSE_FILE
    from rca_gpu.report.build import EXPLANATIONS_FILE, FILES_DIR, REPORT_FILE
    from rca_gpu.runfolder import RUN_FILE, RUN_OUTPUT_FOLDERS, RUN_OUTPUTS

    written = {RUN_FILE, CLUSTERS_FILE, METRICS_FILE, PER_CAUSE_FILE, EXPLANATIONS_FILE, REPORT_FILE,
               "embedding.parquet", causes.CAUSES_FILE, causes.MEMBERS_FILE, compare.COMPARISON_FILE,
               compare.COMPARISON_INFO_FILE, reference.FEATURES_FILE, reference.TABLE_FILE, reference.INFO_FILE,
               stability.SUMMARY_FILE}
    assert written <= set(RUN_OUTPUTS) and FILES_DIR in RUN_OUTPUT_FOLDERS
