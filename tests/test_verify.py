"""rca-gpu verify: each cause's failure rate on a pool the DNN was run on, against the pool's (lift, Katz interval)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import pattern_images, write_pngs
from typer.testing import CliRunner

from rca_gpu.catalogue.verify import failed_rows, failure_lift

runner = CliRunner()


def test_lift_and_its_interval_on_a_worked_example():
    # 30 of 40 images of the cause fail, 20 of the other 200: risk ratio 7.5, Katz SE of log RR
    # sqrt(1/30 - 1/40 + 1/20 - 1/200) = 0.2309, RR interval 7.5 x exp(+-1.96 x 0.2309) = 4.770 to 11.793;
    # lift = 0.75 / (50 / 240) = 3.6 = g(7.5) with g(r) = r / (r / 6 + 5 / 6), interval g(4.770) to g(11.793)
    failed = np.r_[np.ones(30), np.zeros(10), np.ones(20), np.zeros(180)].astype(bool)
    group = np.r_[np.ones(40), np.zeros(200)].astype(bool)
    row = failure_lift(failed, group)
    assert row["images"] == 40 and row["failures"] == 30 and row["failure_rate"] == pytest.approx(0.75)
    assert row["lift"] == pytest.approx(3.6)
    assert row["low"] == pytest.approx(4.7696 / (4.7696 / 6 + 5 / 6), rel=1e-3)
    assert row["high"] == pytest.approx(11.7934 / (11.7934 / 6 + 5 / 6), rel=1e-3)
    assert row["verdict"] == "real failure mode"


def test_lift_edge_cases_say_what_they_are():
    failed = np.r_[np.zeros(100), np.ones(40), np.zeros(100)].astype(bool)
    none = failure_lift(failed, np.r_[np.ones(100), np.zeros(140)].astype(bool))  # no failure in the cause
    assert none["lift"] == 0 and none["high"] < 1 and none["verdict"] == "fails less than the pool"
    failed = np.r_[np.zeros(40), np.ones(20), np.zeros(180)].astype(bool)
    few = failure_lift(failed, np.r_[np.ones(40), np.zeros(200)].astype(bool))  # 0 of 40, 10 % elsewhere
    assert few["low"] < 1 < few["high"] and few["verdict"] == "not shown"  # too few images to tell
    everything = failure_lift(failed, np.ones(240, dtype=bool))
    assert everything["lift"] == pytest.approx(1) and everything["low"] is None
    assert "whole pool" in everything["verdict"]
    empty = failure_lift(failed, np.zeros(240, dtype=bool))
    assert empty["lift"] is None and empty["verdict"] == "no pool image"
    clean = failure_lift(np.zeros(240, dtype=bool), np.r_[np.ones(40), np.zeros(200)].astype(bool))
    assert clean["lift"] is None and "no failure in the pool" in clean["verdict"]
    only_here = failure_lift(np.r_[np.ones(10), np.zeros(230)].astype(bool),
                             np.r_[np.ones(40), np.zeros(200)].astype(bool))
    assert only_here["low"] > 1 and np.isfinite(only_here["high"])  # no failure elsewhere: Haldane's correction


def test_groups_of_random_images_have_intervals_containing_1_at_the_stated_rate():
    # 400 groups of 60 random images of a pool failing at 25 %: a 95 % interval should contain 1 about 95 % of
    # the time (the rest split between the two sides)
    rng = np.random.default_rng(0)
    failed = rng.random(1000) < 0.25
    inside = 0
    for _ in range(400):
        group = np.zeros(1000, dtype=bool)
        group[rng.choice(1000, 60, replace=False)] = True
        row = failure_lift(failed, group)
        inside += row["low"] <= 1 <= row["high"]
    assert 0.9 <= inside / 400 <= 0.99


def test_failed_rows_compare_labels_and_predictions_as_text():
    table = pd.DataFrame({"label": [7, "7", 3, None, "cat", 2.0], "prediction": [7.0, "1", 3, 4, "dog", "2"]})
    failed, known = failed_rows(table)
    assert failed.tolist() == [False, True, False, False, True, False]
    assert known.tolist() == [True, True, True, False, True, True]


# --------------------------------------------------------------------------------------------------
# A benchmark with planted causes, and a pool of passing images
# --------------------------------------------------------------------------------------------------

PIPELINE = "pixels(image_size=16)+pca(n_components=5)+kmeans(k=4)"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A run on 4 planted groups of failing images (a bright bar whose place is the group): groups 0-2 are
    causes the DNN fails on, group 3 a cluster of images it failed on by chance. The pool: new images of
    groups 0-2 (all failing), 100 of group 3 failing at the pool's own rate (23 random ones), and 300 passing
    images without a bar."""
    from rca_gpu.pipeline import run
    from rca_gpu.spec import build_run_spec

    root = tmp_path_factory.mktemp("verify")
    images, labels = pattern_images(n_per=30, groups=4, size=16, seed=0)
    write_pngs(root / "run", images, labels)
    run(build_run_spec(pipeline=PIPELINE, device="cpu", workers=0, stability=0, cache_features=False),
        root / "run", root / "out", report=False)
    rng = np.random.default_rng(3)
    causes, cause_labels = pattern_images(n_per=30, groups=4, size=16, seed=1)
    chance, _ = pattern_images(n_per=100, groups=4, size=16, seed=2)
    chance = chance[300:]  # group 3: the bar at the bottom
    clean = rng.integers(0, 40, size=(300, 16, 16)).astype(np.uint8)
    keep = cause_labels < 3
    pool_images = np.concatenate([causes[keep], chance, clean])
    group = np.concatenate([cause_labels[keep], np.full(100, 3), np.full(300, 9)])
    paths = write_pngs(root / "pool", pool_images, group)
    fails = np.concatenate([np.ones(90, bool), np.isin(np.arange(100), rng.choice(100, 23, replace=False)),
                            np.zeros(300, bool)])
    label = np.arange(len(paths)) % 10
    pd.DataFrame({"path": [p.name for p in paths], "label": label,
                  "prediction": np.where(fails, (label + 1) % 10, label), "group": group}).to_csv(
        root / "pool" / "pool.csv", index=False)
    return root


def _cause_of_group(run_dir, group: int) -> int:
    from rca_gpu.runfolder import open_run

    clusters = open_run(run_dir).clusters()
    return int(clusters.loc[clusters["path"].str.contains(f"/g{group}_"), "cluster"].mode().iloc[0])


def test_verify_finds_the_planted_causes_and_not_the_chance_cluster(planted, tmp_path):
    from rca_gpu.cli import app

    run_dir = shutil.copytree(planted / "out", tmp_path / "run")
    result = runner.invoke(app, ["verify", str(run_dir), str(planted / "pool" / "pool.csv"), "--device", "cpu",
                                 "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "3 of 4 causes are real failure modes on 490 pool images" in result.output
    from rca_gpu.runfolder import open_run

    info = open_run(run_dir).json("verify.json")  # the run's id and verify.json's schema checked
    assert info == json.loads((run_dir / "verify.json").read_text())
    assert info["failure_rate"] == pytest.approx(113 / 490, abs=1e-6) and "Katz" in info["interval"]
    for group in (0, 1, 2):
        row = info["per_cause"][str(_cause_of_group(run_dir, group))]
        assert row["lift"] >= 2 and row["low"] > 1 and row["verdict"] == "real failure mode", row
    chance = info["per_cause"][str(_cause_of_group(run_dir, 3))]
    assert chance["images"] >= 90 and chance["low"] < 1 < chance["high"] and chance["verdict"] == "not shown"
    # the report's summary shows the verification
    from rca_gpu.report.build import build_report

    html = build_report(run_dir).path.read_text(encoding="utf-8")
    summary = html.split('id="summary-clusters"', 1)[1].split("</table>", 1)[0]
    assert summary.count("real failure mode") == 3 and "<th>verified</th>" in summary
    assert 'id="verified-note"' in html and "Katz" in html and "Out of date" not in html
    # edits after the verification mark it out of date
    runner.invoke(app, ["causes", str(run_dir), "--name", "0=bar"])
    assert "Out of date" in build_report(run_dir).path.read_text(encoding="utf-8")


def test_verify_refuses_a_pool_without_labels_or_predictions(planted, tmp_path):
    from rca_gpu.cli import app

    pool = pd.read_csv(planted / "pool" / "pool.csv").drop(columns=["prediction"])
    pool["path"] = [str(planted / "pool" / p) for p in pool["path"]]
    pool.to_csv(tmp_path / "pool.csv", index=False)
    result = runner.invoke(app, ["verify", str(planted / "out"), str(tmp_path / "pool.csv"), "--device", "cpu",
                                 "--image-root", str(planted)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "has no prediction column" in lines[0] and "Traceback" not in result.output
    assert not (planted / "out" / "verify.json").exists()
