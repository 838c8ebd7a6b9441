"""The pipeline study: features shared, resumable, ranked table on disk."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import pattern_images

from rca_gpu.data.sources import from_arrays
from rca_gpu.errors import SpecError
from rca_gpu.spec import build_run_spec, parse_pipeline
from rca_gpu.studies import make_plan, rank, run_study, slug, to_markdown


@pytest.fixture(scope="module")
def failures():
    images, labels = pattern_images(n_per=15, groups=3)
    causes = [f"cause_{g}" for g in labels]
    return from_arrays(images, {"label": labels, "root_cause": causes})


@pytest.mark.quality
def test_study_runs_matrix_and_resumes(failures, tmp_path):
    plan = make_plan(["pixels", "pixels(image_size=16)"], ["pca", "none"], ["kmeans", "ward"], has_dut=False)
    assert len(plan.pipelines()) == 8
    base = build_run_spec(device="cpu", workers=0, plot_embedding=False)
    table = run_study(base, failures, tmp_path, plan)
    assert len(table) == 8 and (table.status == "ok").all()
    assert table["rank"].tolist() == list(range(1, 9))
    assert table["study_score"].is_monotonic_decreasing
    assert table.loc[0, "coverage"] == 1.0 and table.loc[0, "weighted_purity"] == 1.0
    on_disk = pd.read_parquet(tmp_path / "study.parquet")
    assert len(on_disk) == 8
    md = (tmp_path / "study.md").read_text()
    assert "| 1 | `pixels" in md
    # one features cache folder per feature set, not per pipeline
    assert len(list((tmp_path / "cache").glob("features-*"))) == 2
    finished = {p: (tmp_path / "pipelines" / slug(p) / "run.json").stat().st_mtime_ns for p in plan.pipelines()}
    again = run_study(base, failures, tmp_path, plan)
    assert len(again) == 8
    for pipeline, mtime in finished.items():
        assert (tmp_path / "pipelines" / slug(pipeline) / "run.json").stat().st_mtime_ns == mtime


def test_failed_pipelines_are_rows_not_crashes(failures, tmp_path):
    plan = make_plan(["pixels"], ["none"], ["kmeans"], has_dut=False)
    tiny = from_arrays(pattern_images(n_per=1, groups=2)[0], {"root_cause": ["a", "b"]})
    table = run_study(build_run_spec(device="cpu", workers=0), tiny, tmp_path, plan)
    assert table.loc[0, "status"] == "failed" and "needs at least 3" in table.loc[0, "error"]
    assert "failed" in to_markdown(table)


def test_plan_validates_names():
    with pytest.raises(SpecError, match="Unknown reducer 'tsne'"):
        make_plan(["pixels"], ["tsne"], None, has_dut=False)
    with pytest.raises(SpecError, match="Unknown feature extractor"):
        make_plan(["alexnet"], None, None, has_dut=False)
    assert len(make_plan(None, None, None, has_dut=True).pipelines()) == 12 * 3 * 4 >= 99
    assert len(make_plan(None, None, None, has_dut=False).pipelines()) == 6 * 3 * 4


def test_the_default_study_covers_the_grid_and_the_centred_representations():
    from rca_gpu.features.represent import extraction_spec

    plain = {str(p.features) for p in make_plan(None, None, None, has_dut=False).pipelines()}
    assert {"mobilenet_v2(pool=grid2)", "mobilenet_v2(center=auto,pool=grid2)"} <= plain
    with_dut = {str(p.features) for p in make_plan(None, None, None, has_dut=True).pipelines()}
    assert {"dut", "dut(center=auto)"} <= with_dut - plain
    # the centred grid is computed from the plain grid's extraction: one network pass for both
    centred = parse_pipeline("mobilenet_v2(center=auto,pool=grid2)+umap+dbscan").features
    assert str(extraction_spec(centred)) == "mobilenet_v2(pool=grid2)"


def test_rank_puts_failures_last():
    table = pd.DataFrame([
        {"pipeline": "a", "status": "failed", "error": "x"},
        {"pipeline": "b", "status": "ok", "study_score": 0.2, "weighted_purity": 0.9, "n_clusters": 3},
        {"pipeline": "c", "status": "ok", "study_score": 0.8, "weighted_purity": 0.9, "n_clusters": 3},
    ])
    assert rank(table)["pipeline"].tolist() == ["c", "b", "a"]


def _ranked_rows() -> pd.DataFrame:
    rows = [
        {"pipeline": "mobilenet_v2@features.14+umap+hdbscan", "status": "ok", "error": "",
         "resolved_pipeline": "mobilenet_v2@features.14+umap(min_dist=0.0,n_components=10,n_neighbors=30)+"
                              "hdbscan(min_cluster_size=12,select=merged)",
         "study_score": 0.61, "weighted_purity": 0.9, "coverage": 1.0, "coverage_injected": 1.0, "n_clusters": 3,
         "noise_share": 0.0, "ari_with_noise": 0.8, "mean_recall": 0.9},
        {"pipeline": "pixels(image_size=16)+pca+kmeans", "status": "ok", "error": "",
         "resolved_pipeline": "pixels(image_size=16)+pca(n_components=2)+kmeans(k=3)",
         "study_score": 0.5, "weighted_purity": 0.8, "coverage": 1.0, "coverage_injected": 1.0, "n_clusters": 3,
         "noise_share": 0.0, "ari_with_noise": 0.7, "mean_recall": 0.8},
        {"pipeline": "pixels+none+ward", "status": "failed", "error": "needs at least 3 usable images"},
    ]
    return rank(pd.DataFrame(rows))


def _column(text: str, start_header: str, next_header: str | None) -> dict[str, str]:
    """rank -> the cell under ``start_header`` (up to ``next_header``, else the line's end), its lines joined."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.lstrip().startswith("rank"))
    start = lines[head].index(start_header)
    stop = lines[head].index(next_header) if next_header else None
    cells: dict[str, str] = {}
    current = None
    for line in lines[head + 2:]:
        rank_cell = line[:lines[head].index("rank") + len("rank")].strip()
        if rank_cell:
            current = rank_cell
        if current is not None:
            cells[current] = cells.get(current, "") + line[start:stop].strip()
    return cells


@pytest.mark.parametrize("width", [80, 160])
def test_the_terminal_ranking_shows_whole_pipeline_names_within_the_width(width):
    from rich.console import Console

    from rca_gpu.studies import to_rich

    console = Console(width=width, record=True)
    console.print(to_rich(_ranked_rows(), source="set", width=width))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width and "…" not in text
    pipelines = _column(text, "pipeline", "score")
    assert pipelines == {"1": "mobilenet_v2@features.14+umap+hdbscan", "2": "pixels(image_size=16)+pca+kmeans",
                         "3": "pixels+none+ward"}
    chosen = _column(text, "chosen", None)
    assert chosen["1"] == "umap(min_dist=0.0,n_components=10,n_neighbors=30)+hdbscan(min_cluster_size=12,select=merged)"
    assert chosen["2"] == "pca(n_components=2)+kmeans(k=3)" and chosen["3"].startswith("failed:")
    assert ("cov. injected" in text) == (width >= 120) and ("study.md" in text) == (width < 120)
    # broken only between stages ('+') and, inside a stage too wide for the column, after ',' '(' or '@'
    for header, stop in (("pipeline", "score"), ("chosen", None)):
        for rank_cell, lines in _cell_lines(text, header, stop).items():
            if not lines[0].startswith("failed"):
                assert all(line[-1] in "+,(@" for line in lines[:-1]), (rank_cell, lines)
    assert _cell_lines(text, "pipeline", "score")["1"][0] == ("mobilenet_v2@" if width == 80 else
                                                               "mobilenet_v2@features.14+")


def _cell_lines(text: str, start_header: str, next_header: str | None) -> dict[str, list[str]]:
    """rank -> the non-empty lines of the cell under ``start_header``."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.lstrip().startswith("rank"))
    start = lines[head].index(start_header)
    stop = lines[head].index(next_header) if next_header else None
    cells: dict[str, list[str]] = {}
    current = None
    for line in lines[head + 2:]:
        rank_cell = line[:lines[head].index("rank") + len("rank")].strip()
        current = rank_cell or current
        if current is not None and line[start:stop].strip():
            cells.setdefault(current, []).append(line[start:stop].strip())
    return cells


def _cli(*args):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "rca_gpu.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=120)


def test_a_study_into_a_run_folder_and_a_run_into_a_study_folder_are_refused(tmp_path):
    """The study and the run write into folders of their own: each refuses the other's folder, naming it,
    before any image is read and without writing there."""
    import json

    from rca_gpu.runfolder import RUN_FORMAT

    source = tmp_path / "t.csv"
    source.write_text("path,label\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"rca_gpu_run": RUN_FORMAT, "run_id": "x"}))
    done = _cli("study", source, "--out", run, "-q")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"'{run}' holds a run folder of `rca-gpu run` (run.json)" in done.stderr
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.parquet").write_bytes(b"PAR1")
    (study / "study.md").write_text("# study\n")
    done = _cli("run", source, "--out", study, "-q")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"'{study}' holds a study of `rca-gpu study` (study.parquet)" in done.stderr
    assert sorted(p.name for p in study.iterdir()) == ["study.md", "study.parquet"]


@pytest.mark.parametrize("reducers,clusterers,wrong,option,rule_fix", [
    (["none"], ["ward(k=3)"], "ward(k=3)", "--clusterers",
     "Pass --clusterers ward; to run one fixed setting, use `rca-gpu run SOURCE --out runs/first --pipeline "
     "'pixels+none+ward(k=3)'`"),
    (["pca(n_components=2)"], ["kmeans"], "pca(n_components=2)", "--reducers",
     "Pass --reducers pca; to run one fixed setting, use `rca-gpu run SOURCE --out runs/first --pipeline "
     "'pixels+pca(n_components=2)+kmeans'`"),
    (["pca"], ["pixels+none+dbscan"], "pixels+none+dbscan", "--clusterers",
     "Pass --clusterers dbscan; to run one fixed setting, use `rca-gpu run SOURCE --out runs/first --pipeline "
     "'pixels+none+dbscan'`"),
])
def test_reducers_and_clusterers_with_parameters_name_the_rule_and_the_fix(reducers, clusterers, wrong, option,
                                                                          rule_fix):
    with pytest.raises(SpecError) as caught:
        make_plan(["pixels"], reducers, clusterers, has_dut=False)
    message = str(caught.value)
    assert f"{option} takes" in message and "names only" in message and repr(wrong) in message
    assert "only --features takes parameters" in message and rule_fix in message
    assert len(make_plan(["pixels(image_size=16)"], ["pca"], ["ward"], has_dut=False).pipelines()) == 1


def test_the_study_checks_stage_names_before_reading_the_source(tmp_path):
    done = _cli("study", tmp_path / "missing.csv", "--out", tmp_path / "s", "-f", "pixels", "-k", "ward(k=3)")
    assert done.returncode == 2 and done.stderr.startswith("error: --clusterers takes clusterer names only")
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_study_quiet_prints_only_where_the_results_went(tmp_path):
    from helpers import write_pngs
    from typer.testing import CliRunner

    from rca_gpu.cli import app

    images, labels = pattern_images(n_per=6, groups=2, size=16)
    write_pngs(tmp_path / "imgs", images, labels)
    paths = sorted((tmp_path / "imgs").rglob("*.png"))
    pd.DataFrame({"path": [str(p) for p in paths], "root_cause": [p.parent.name for p in paths]}).to_csv(
        tmp_path / "m.csv", index=False)
    out = tmp_path / "study"
    done = CliRunner().invoke(app, ["study", str(tmp_path / "m.csv"), "--out", str(out), "-f", "pixels(image_size=8)",
                                    "-r", "none", "-k", "kmeans", "--device", "cpu", "--workers", "0", "-q"])
    assert done.exit_code == 0, done.output
    assert done.output.splitlines() == [f"results: {(out / 'study.md').resolve()} and study.parquet"]
    assert len(pd.read_parquet(out / "study.parquet")) == 1


def test_a_folder_holding_a_run_and_a_study_is_refused_with_the_files_to_remove(tmp_path):
    """Older versions could leave a run and a study in one folder: `run --out` and `study --out` each refuse it
    in one line that names the other command's files to remove, and remove nothing."""
    import json

    from rca_gpu.runfolder import RUN_FORMAT

    source = tmp_path / "t.csv"
    source.write_text("path,root_cause\n")
    both = tmp_path / "both"
    both.mkdir()
    (both / "run.json").write_text(json.dumps({"rca_gpu_run": RUN_FORMAT, "run_id": "x"}))
    (both / "study.parquet").write_bytes(b"PAR1")
    (both / "study.md").write_text("# study\n")
    for command, files in (("run", "study.parquet, study.md"), ("study", "run.json")):
        done = _cli(command, source, "--out", both, "-q")
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
        assert f"from it (or move them to a folder of their own): {files}; or pass another folder" in done.stderr
    assert sorted(p.name for p in both.iterdir()) == ["run.json", "study.md", "study.parquet"]


def test_each_pipeline_of_a_study_records_only_the_backends_it_ran(failures, tmp_path):
    """run.json device.backends of a study's pipeline: the shared stages and its own, not the earlier
    pipelines' (a study shares one device)."""
    import json

    plan = make_plan(["pixels"], ["pca", "none"], ["kmeans"], has_dut=False)
    base = build_run_spec(device="cpu", workers=0, plot_embedding=False, stability=0)
    run_study(base, failures, tmp_path, plan)
    recorded = {p.reduce.name: json.loads((tmp_path / "pipelines" / slug(p) / "run.json").read_text())["device"]
                for p in plan.pipelines()}
    assert "reduce pca" in recorded["pca"]["backends"]
    assert "reduce none" in recorded["none"]["backends"] and "reduce pca" not in recorded["none"]["backends"]
