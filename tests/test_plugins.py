"""Plug-ins: adding a clusterer or an extractor is one file (tests/toy_cards.py, tests/toy_extractor.py).

The toy clusterer goes through everything a built-in one does: ``rca-gpu run --features`` with the stability
step and the report, the study, and sample-and-extend; the toy extractor through ``rca-gpu run``. docs/plugins.md
shows both files as they are here.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import pattern_images, write_pngs
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

from rca_gpu.cli import app
from rca_gpu.engine import registry
from rca_gpu.errors import SpecError
from rca_gpu.spec import build_run_spec, parse_pipeline
from rca_gpu.spec.params import unregister_extractor

runner = CliRunner()
TESTS = Path(__file__).resolve().parent
DOCS = TESTS.parent / "docs" / "plugins.md"


@pytest.fixture
def toy_clusterer():
    """The toy card registered for one test, removed after it (the default study lists every card)."""
    from rca_gpu.plugins import load_plugin

    assert load_plugin("toy_cards") == ["clusterer kcenters"]
    yield registry.cluster_card("kcenters")
    registry.unregister("cluster", "kcenters")


def _blobs(n_per: int = 40, groups: int = 3, dims: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(8.0 * g, 0.6, size=(n_per, dims)) for g in range(groups)]).astype(np.float32)
    return x, np.repeat(np.arange(groups), n_per)


@pytest.mark.quality
def test_a_clusterer_in_one_file_runs_through_run_stability_and_the_report(toy_clusterer, tmp_path):
    x, truth = _blobs()
    np.save(tmp_path / "x.npy", x)
    pd.DataFrame({"id": [f"r{i}" for i in range(len(x))], "root_cause": [f"c{t}" for t in truth]}).to_csv(
        tmp_path / "meta.csv", index=False)
    out = tmp_path / "run"
    result = runner.invoke(app, ["--plugin", "toy_cards", "run", "--features", str(tmp_path / "x.npy"), "--metadata",
                                 str(tmp_path / "meta.csv"), "-p", "pca+kcenters", "--out", str(out), "--device",
                                 "cpu", "-q"])
    assert result.exit_code == 0, result.output
    clusters = pd.read_parquet(out / "clusters.parquet")
    assert adjusted_rand_score(truth, clusters["cluster"]) == 1.0
    info = json.loads((out / "run.json").read_text())
    assert re.fullmatch(r"precomputed\+pca\(n_components=\d+\)\+kcenters\(k=3\)", info["resolved_pipeline"])
    assert info["catalogue"]["stability"]["resamples"] >= 2  # scored: the card's setting re-ran on resamples
    summary = pd.read_parquet(out / "cluster_summary.parquet")
    assert summary["stability"].notna().all() and (summary["stability"] > 0.9).all()
    assert "kcenters" in (out / "report.html").read_text()


@pytest.mark.quality
def test_a_clusterer_in_one_file_runs_in_the_study_and_extends_from_a_sample(toy_clusterer, tmp_path):
    from rca_gpu import FailureClusterer
    from rca_gpu.data.sources import from_arrays
    from rca_gpu.studies import make_plan, run_study

    images, labels = pattern_images(n_per=15, groups=3)
    failures = from_arrays(images, {"root_cause": [f"cause_{g}" for g in labels]})
    plan = make_plan(["pixels(image_size=8)"], ["pca"], ["kcenters", "kmeans"], has_dut=False)
    table = run_study(build_run_spec(device="cpu", workers=0, plot_embedding=False), failures, tmp_path, plan)
    row = table.set_index("clusterer").loc["kcenters"]
    assert row["status"] == "ok" and row["weighted_purity"] == 1.0

    x, truth = _blobs(n_per=100)
    model = FailureClusterer("none+kcenters", sample_size=100, device="cpu").fit(x)
    assert model.selection_["sample"]["size"] == 100 and adjusted_rand_score(truth, model.labels_) == 1.0


def test_an_extractor_in_one_file_runs_through_rca_gpu_run(tmp_path):
    images, labels = pattern_images(n_per=12, groups=3)
    write_pngs(tmp_path / "images", images, labels)
    try:
        result = runner.invoke(app, ["--plugin", "toy_extractor", "run", str(tmp_path / "images"), "-p",
                                     "histogram(bins=8)+none+kmeans(k=3)", "--out", str(tmp_path / "run"),
                                     "--device", "cpu", "--workers", "0", "--no-report", "-q"])
        assert result.exit_code == 0, result.output
        info = json.loads((tmp_path / "run" / "run.json").read_text())
        assert info["resolved_pipeline"].startswith("histogram(bins=8)+none+kmeans")
    finally:
        unregister_extractor("histogram")


def test_entry_points_register_cards_and_a_broken_one_is_named(monkeypatch):
    group = registry.ENTRY_POINT_GROUPS["cluster"]
    found = [metadata.EntryPoint("kcenters", "toy_cards:CARD", group),
             metadata.EntryPoint("broken", "no_such_module_here:CARD", group)]
    monkeypatch.setattr(registry.metadata, "entry_points",
                        lambda group=None: [e for e in found if e.group == group])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_FAILED", {})
    try:
        assert "kcenters" in registry.clusterers()
        with pytest.raises(SpecError, match=r"Unknown clusterer 'broken'.*plug-in rca_gpu.clusterers: broken = "
                                            r"no_such_module_here:CARD failed to load: ModuleNotFoundError"):
            parse_pipeline("pca+broken")
    finally:
        registry.unregister("cluster", "kcenters")


def test_no_file_names_code_to_load():
    """A pipeline or a config names algorithms, never modules: without the plug-in its name is unknown."""
    with pytest.raises(SpecError, match="Unknown clusterer 'kcenters'.*--plugin MODULE"):
        parse_pipeline("pca+kcenters")
    with pytest.raises(SpecError, match="Unknown config key"):
        build_run_spec({"plugin": "toy_cards"})
    with pytest.raises(SpecError, match="Cannot read the pipeline stage"):
        parse_pipeline("pca+toy_cards:CARD")


def test_plugin_option_errors_are_one_line():
    result = runner.invoke(app, ["--plugin", "no_such_module_here", "pipelines", "-q"])
    assert result.exit_code == 2
    assert "error: The --plugin module 'no_such_module_here' cannot be imported" in result.output
    result = runner.invoke(app, ["--plugin", "helpers", "pipelines", "-q"])
    assert result.exit_code == 2 and "defines no card" in result.output


@pytest.mark.parametrize("name", ["toy_cards.py", "toy_extractor.py"])
def test_docs_show_the_plugin_files_as_they_are(name):
    blocks = re.findall(r"```python\n# (\S+)\n(.*?)```", DOCS.read_text(), flags=re.S)
    shown = {file: code for file, code in blocks}
    assert shown.get(name) == (TESTS / name).read_text(), f"docs/plugins.md shows another {name}"
