"""Outputs for other tools: clusters.csv, the FiftyOne export, exports of a selection, `filepath` read as `path`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import pattern_images, write_pngs
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture()
def run_copy(catalogue_run, tmp_path):
    return shutil.copytree(catalogue_run, tmp_path / "run")


def test_clusters_csv_lists_every_image_with_its_cluster_and_edited_cause(run_copy):
    from rca_gpu.catalogue import load_catalogue
    from rca_gpu.report.build import build_report
    from rca_gpu.runfolder import open_run

    build_report(run_copy)
    flat = pd.read_csv(run_copy / "clusters.csv")
    clusters = open_run(run_copy).clusters()
    assert list(flat.columns[:6]) == ["path", "id", "cluster", "status", "cause", "cause_name"]
    assert len(flat) == len(clusters) and (flat["path"] == clusters["path"]).all()
    assert (flat["cause"] == flat["cluster"]).all() and flat["cause_name"].isna().all()
    catalogue = load_catalogue(run_copy)
    catalogue.merge([1, 2])
    catalogue.rename(1, 'bar, "top"')
    catalogue.save()
    build_report(run_copy)  # the report writes it again with the edits
    flat = pd.read_csv(run_copy / "clusters.csv")
    assert set(flat.loc[flat["cluster"].isin([1, 2]), "cause"]) == {1}
    assert set(flat.loc[flat["cause"] == 1, "cause_name"]) == {'bar, "top"'}


def test_fiftyone_export_is_fiftyones_csv_layout(run_copy, tmp_path):
    """data/ holds the images, labels.csv a `filepath` column naming them inside data/ (what
    fiftyone.utils.csv.CSVDatasetImporter reads) with the cluster, cause and the metadata."""
    from rca_gpu.cli import app

    result = runner.invoke(app, ["export", str(run_copy), "--to", str(tmp_path / "fo"), "--format", "fiftyone",
                                 "--mode", "copy"])
    assert result.exit_code == 0, result.output
    labels = pd.read_csv(tmp_path / "fo" / "labels.csv")
    assert list(labels.columns[:7]) == ["filepath", "id", "cluster", "status", "cause", "cause_name", "source_path"]
    assert len(labels) == 90 and labels["filepath"].is_unique
    assert all((tmp_path / "fo" / "data" / name).is_file() for name in labels["filepath"])
    assert not any("/" in name for name in labels["filepath"])  # relative to data/, as FiftyOne resolves them
    info = json.loads((tmp_path / "fo" / "export.json").read_text())
    assert info["format"] == "fiftyone" and info["files"] == 90
    again = runner.invoke(app, ["export", str(run_copy), "--to", str(tmp_path / "fo"), "--clusters", "0"])
    assert again.exit_code == 2 and "need a folder each" in again.output


def test_export_of_the_maps_selection_by_ids(run_copy, tmp_path):
    from rca_gpu.cli import app
    from rca_gpu.runfolder import open_run

    clusters = open_run(run_copy).clusters()
    chosen = clusters.iloc[[0, 5, 40, 80]]
    chosen[["path", "id", "cluster"]].to_csv(tmp_path / "selection.csv", index=False)
    result = runner.invoke(app, ["export", str(run_copy), "--to", str(tmp_path / "sel"), "--ids",
                                 str(tmp_path / "selection.csv"), "--mode", "copy"])
    assert result.exit_code == 0, result.output
    exported = pd.concat(pd.read_csv(p) for p in (tmp_path / "sel").glob("cluster-*/manifest.csv"))
    assert sorted(exported["id"]) == sorted(chosen["id"])
    pd.DataFrame({"id": ["nope"]}).to_csv(tmp_path / "bad.csv", index=False)
    bad = runner.invoke(app, ["export", str(run_copy), "--to", str(tmp_path / "bad"),
                              "--ids", str(tmp_path / "bad.csv")])
    assert bad.exit_code == 2 and "names 1 id(s) the run does not hold, e.g. 'nope'" in bad.output


def test_filepath_is_read_as_path_in_manifests_and_features_files(tmp_path):
    from rca_gpu.data.sources import load_source
    from rca_gpu.features.precomputed import load_features

    images, labels = pattern_images(n_per=3, groups=2, size=8, seed=0)
    paths = write_pngs(tmp_path / "imgs", images, labels)
    pd.DataFrame({"filepath": [f"imgs/{p.name}" for p in paths], "label": labels}).to_csv(tmp_path / "m.csv",
                                                                                          index=False)
    source = load_source(tmp_path / "m.csv")
    assert source.table["path"].tolist() == [str(p.resolve()) for p in paths] and not source.rejected
    both = pd.DataFrame({"path": [f"imgs/{p.name}" for p in paths], "filepath": "elsewhere"})
    both.to_csv(tmp_path / "both.csv", index=False)
    kept = load_source(tmp_path / "both.csv").table
    assert kept["path"].tolist() == [str(p.resolve()) for p in paths] and set(kept["filepath"]) == {"elsewhere"}
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((6, 4)).astype(np.float32))
    pd.DataFrame({"filepath": [f"imgs/{p.name}" for p in paths]}).to_csv(tmp_path / "meta.csv", index=False)
    features = load_features(tmp_path / "x.npy", metadata=tmp_path / "meta.csv")
    table = features[0].table
    assert table["path"].tolist() == [str(p.resolve()) for p in paths]
