"""The pipeline study: features shared, resumable, ranked table on disk."""

from __future__ import annotations

import pandas as pd
import pytest

from helpers import pattern_images
from rca_gpu.data.sources import from_arrays
from rca_gpu.errors import SpecError
from rca_gpu.spec import build_run_spec
from rca_gpu.study import make_plan, rank, run_study, slug, to_markdown


@pytest.fixture(scope="module")
def failures():
    images, labels = pattern_images(n_per=15, groups=3)
    causes = [f"cause_{g}" for g in labels]
    return from_arrays(images, {"label": labels, "root_cause": causes})


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
    assert len(make_plan(None, None, None, has_dut=True).pipelines()) == 9 * 3 * 4 >= 99
    assert len(make_plan(None, None, None, has_dut=False).pipelines()) == 4 * 3 * 4


def test_rank_puts_failures_last():
    table = pd.DataFrame([
        {"pipeline": "a", "status": "failed", "error": "x"},
        {"pipeline": "b", "status": "ok", "study_score": 0.2, "weighted_purity": 0.9, "n_clusters": 3},
        {"pipeline": "c", "status": "ok", "study_score": 0.8, "weighted_purity": 0.9, "n_clusters": 3},
    ])
    assert rank(table)["pipeline"].tolist() == ["c", "b", "a"]
