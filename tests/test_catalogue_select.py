"""Retraining selection: images of known causes from a mixed pool, spread over the causes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import pattern_images, write_pngs

from rca_gpu.catalogue import CatalogueError
from rca_gpu.catalogue.retraining import SELECTION_FILE, floor_note, pick, quotas, select_from_pool


@pytest.mark.parametrize("budget,spread,floor,expected", [
    (20, "proportional", None, {0: 11, 1: 5, 2: 4}),  # floor 20 // 6 = 3 each, the other 11 by size
    (20, "proportional", 0, {0: 14, 1: 4, 2: 2}),
    (15, "equal", None, {0: 5, 1: 5, 2: 5}),
    (21, "equal", None, {0: 8, 1: 8, 2: 5}),  # cause 2 has only 5 candidates: its 2 others are shared
    (40, "equal", None, {0: 20, 1: 15, 2: 5}),  # cause 2 has only 5 candidates: the rest goes to the others
    (3, "proportional", None, {0: 1, 1: 1, 2: 1}),
    (100, "proportional", None, {0: 50, 1: 15, 2: 5}),  # more than there is: everything
])
def test_quotas(budget, spread, floor, expected):
    sizes = {0: 700, 1: 200, 2: 100}
    available = {0: 50, 1: 15, 2: 5}
    got = quotas(budget, sizes, available, spread=spread, floor=floor)
    assert got == expected
    assert sum(got.values()) == min(budget, sum(available.values()))


@pytest.mark.parametrize("budget,floor,spread,expected", [
    (3, None, "proportional", "the default floor 1 x 6 causes = 6 exceeds --budget 3"),  # 3 causes get nothing
    (3, 10, "proportional", "--floor 10 x 6 causes = 60 exceeds --budget 3"),
    (3, None, "equal", "--budget 3 is below the 6 causes: with --spread equal 3 causes get no image"),
    (6, None, "proportional", None), (6, 1, "proportional", None), (6, None, "equal", None),
])
def test_a_budget_too_small_for_every_cause_gets_a_note_whatever_the_floor(budget, floor, spread, expected):
    sizes = {c: 10 - c for c in range(6)}
    starved = [c for c, n in quotas(budget, sizes, dict(sizes), spread=spread, floor=floor).items() if n == 0]
    note = floor_note(budget, floor, len(sizes), spread)
    assert (note is None) == (not starved) == (expected is None)
    if expected:
        assert note.startswith(expected) and "to at least 6 to give every cause an image" in note


def test_quotas_refuse_an_unknown_spread():
    with pytest.raises(CatalogueError, match="--spread option must be one of proportional, equal"):
        quotas(5, {0: 1}, {0: 1}, spread="random")


def test_pick_takes_the_most_confident_first_and_skips_other_statuses():
    table = pd.DataFrame({
        "status": ["assigned"] * 4 + ["unknown", "not_a_cause"],
        "cause": [0, 0, 0, 1, -1, 2],
        "confidence": [0.2, 0.9, 0.9, 0.5, 0.99, 0.99],
        "distance": [1.0, 0.5, 0.4, 1.0, 0.1, 0.1],
    })
    chosen = pick(table, {0: 10, 1: 10}, 3, spread="equal")
    assert chosen["cause"].tolist() == [0, 0, 1]
    assert chosen["distance"].tolist() == [0.4, 0.5, 1.0] and chosen["rank"].tolist() == [1, 2, 1]


@pytest.mark.quality
def test_select_prefers_failure_like_images_and_covers_every_cause(catalogue_run, tmp_path):
    pool = tmp_path / "pool"
    images, labels = pattern_images(n_per=12, groups=4, size=16, seed=5)
    failure_like = labels < 3
    write_pngs(pool / "failing", images[failure_like], labels[failure_like])  # 36, of the run's 3 causes
    rng = np.random.default_rng(6)
    normal = rng.integers(0, 40, size=(60, 16, 16)).astype(np.uint8)  # no bar: what the DNN gets right
    normal[:, 6:10, 6:10] = rng.integers(60, 120, size=(60, 1, 1))
    write_pngs(pool / "normal", normal, np.full(60, 9))
    chosen, info = select_from_pool(catalogue_run, pool, tmp_path / "out", budget=18, device="cpu", workers=0)
    from_failures = chosen["path"].str.contains("/failing/")
    assert len(chosen) == 18 and from_failures.mean() >= 0.8
    assert set(chosen["cause"]) == {0, 1, 2} and chosen.groupby("cause").size().min() >= 3
    manifest = pd.read_csv(tmp_path / "out" / SELECTION_FILE)
    assert list(manifest.columns) == ["path", "id", "cause", "cause_name", "confidence", "distance", "rank"]
    assert len(manifest) == 18 and info["selected"] == 18 and info["pool_rows"] == 96
    assert info["floor"] == 18 // (2 * 3)  # the floor applied when none is given, recorded
    assert (tmp_path / "out" / "assignments.parquet").is_file() and (tmp_path / "out" / "select.json").is_file()


def test_select_command(catalogue_run, catalogue_images, tmp_path):
    done = subprocess.run([sys.executable, "-m", "rca_gpu.cli", "select", str(catalogue_run),
                           str(catalogue_images / "new"), "--budget", "6", "--spread", "equal", "--out",
                           str(tmp_path / "out"), "--device", "cpu", "--workers", "0", "-q"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "selected 6 of 48 pool images" in done.stdout
    manifest = pd.read_csv(tmp_path / "out" / SELECTION_FILE)
    assert manifest.groupby("cause").size().to_dict() == {0: 2, 1: 2, 2: 2}
