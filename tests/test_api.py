"""The Python API: rca_gpu.run and the other commands as functions, light to import, documented."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import pattern_images, write_pngs

import rca_gpu
from rca_gpu.engine.conformance import valid_value
from rca_gpu.errors import SpecError
from rca_gpu.spec import RUN_OPTIONS, RUN_PARAMS

PUBLIC = ("run", "evaluate", "study", "assign", "compare", "select", "verify", "export", "write_report")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_import_rca_gpu_stays_light_and_every_public_name_resolves():
    code = ("import sys, rca_gpu; print(sorted(m for m in ('numpy', 'torch', 'pandas', 'sklearn', 'typer') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    for name in rca_gpu.__all__:
        assert getattr(rca_gpu, name) is not None


def test_the_functions_stay_functions_after_their_modules_are_imported():
    import rca_gpu.catalogue.assign  # noqa: F401
    import rca_gpu.metrics  # noqa: F401
    import rca_gpu.studies  # noqa: F401

    for name in PUBLIC:
        assert inspect.isfunction(getattr(rca_gpu, name)), name


def test_run_forwards_every_run_option():
    documented = inspect.getdoc(rca_gpu.run)
    for option in RUN_OPTIONS:
        if option == "pipeline":
            continue
        assert option in documented, f"rca_gpu.run does not document the run option {option!r}"
        value = valid_value(RUN_PARAMS[option])
        assert getattr(rca_gpu.run_spec(**{option: value}), option) == value
    with pytest.raises(SpecError, match="Unknown run option\\(s\\) 'sead'.*Allowed: device, seed"):
        rca_gpu.run_spec(sead=1)
    with pytest.raises(SpecError, match="The 'seed' option must be an int"):
        rca_gpu.run_spec(seed="one")


@pytest.mark.quality
def test_run_and_evaluate_on_your_own_features(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(8.0 * g, 0.5, size=(30, 6)) for g in range(3)]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    pd.DataFrame({"root_cause": np.repeat(["a", "b", "c"], 30)}).to_csv(tmp_path / "meta.csv", index=False)
    result = rca_gpu.run(out=tmp_path / "run", features=tmp_path / "x.npy", metadata=tmp_path / "meta.csv",
                         pipeline="pca(n_components=2)+kmeans", device="cpu", stability=0, report=False)
    assert result.n_clusters == 3 and result.run_info["spec"]["stability"] == 0
    assert rca_gpu.evaluate(tmp_path / "run").summary["weighted_purity"] == 1.0
    spec = rca_gpu.build_run_spec(pipeline="umap+dbscan", device="cpu")
    with pytest.raises(SpecError, match="takes either 'spec' or pipeline"):
        rca_gpu.run(out=tmp_path / "again", features=tmp_path / "x.npy", spec=spec, seed=3)


def test_study_through_the_api(tmp_path):
    images, labels = pattern_images(n_per=10, groups=3)
    paths = write_pngs(tmp_path / "images", images, labels)
    manifest = tmp_path / "images" / "manifest.csv"
    pd.DataFrame({"path": [p.name for p in paths], "root_cause": [f"c{g}" for g in labels]}).to_csv(manifest,
                                                                                                    index=False)
    table = rca_gpu.study(manifest, tmp_path / "study", features=["pixels(image_size=8)"],
                          reducers=["none"], clusterers=["kmeans"], device="cpu", workers=0)
    from rca_gpu.studies import slug

    assert table["status"].tolist() == ["ok"] and (tmp_path / "study" / "study.md").exists()
    run_json = tmp_path / "study" / "pipelines" / slug(table.loc[0, "pipeline"]) / "run.json"
    assert json.loads(run_json.read_text())["status"] == "finished"


def test_docs_api_shows_every_public_function():
    text = DOCS.read_text()
    for name in PUBLIC + ("FailureClusterer", "load_plugin"):
        assert f"rca_gpu.{name}" in text, f"docs/api.md does not show rca_gpu.{name}"


def test_verify_export_and_report_through_the_api(tmp_path):
    images, labels = pattern_images(n_per=12, groups=3)
    paths = write_pngs(tmp_path / "images", images, labels)
    manifest = tmp_path / "images" / "manifest.csv"
    pd.DataFrame({"path": [p.name for p in paths], "label": labels, "prediction": (labels + 1) % 3}).to_csv(
        manifest, index=False)
    rca_gpu.run(manifest, tmp_path / "run", pipeline="pixels(image_size=8)+none+kmeans(k=3)", device="cpu",
                workers=0, stability=0, report=False)
    report = rca_gpu.write_report(tmp_path / "run")
    assert (tmp_path / "run" / "report.html").exists() and Path(report.path) == tmp_path / "run" / "report.html"
    exported = rca_gpu.export(tmp_path / "run", tmp_path / "picked", clusters="0,1", mode="copy")
    assert set(exported.groups) == {"cluster-0", "cluster-1"} and exported.files == sum(exported.groups.values())
    verified = rca_gpu.verify(tmp_path / "run", manifest, device="cpu", workers=0)
    assert len(verified["per_cause"]) == 3 and all("verdict" in row for row in verified["per_cause"].values())
    assert json.loads((tmp_path / "run" / "verify.json").read_text())["per_cause"].keys() == verified[
        "per_cause"].keys()
