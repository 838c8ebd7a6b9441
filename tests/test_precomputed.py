"""Features brought by the user: rca-gpu run --features FILE (.parquet / .npy), bad rows and bad files."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import planted_blobs
from helpers import one_line_error
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

from rca_gpu.cli import app
from rca_gpu.errors import SourceError, SpecError
from rca_gpu.features.precomputed import REASON_NULL, load_features, nonfinite_reason
from rca_gpu.spec import parse_pipeline

runner = CliRunner()
FAST = "pca(n_components=4)+kmeans"


@pytest.fixture(scope="module")
def blobs():
    x, y = planted_blobs(n_per=40, centers=4, dim=12)
    return x, y


def _cli(*args):
    return runner.invoke(app, ["run", *map(str, args), "--device", "cpu", "--quiet"])


# --- the grammar --------------------------------------------------------------------------------------


def test_pipeline_without_a_feature_stage_is_precomputed():
    spec = parse_pipeline("umap(n_components=5)+dbscan")
    assert spec.features.name == "precomputed" and spec.reduce.params == {"n_components": 5}
    assert str(spec) == "precomputed+umap(n_components=5)+dbscan"
    assert parse_pipeline(str(spec)) == spec
    with pytest.raises(SpecError, match="has 2 stage"):
        parse_pipeline("mobilenet_v2+umap")


# --- reading the layouts --------------------------------------------------------------------------------


def _layouts(x, y, tmp_path):
    """The same features as a list column, a fixed-size-list column, f0..fN columns and .npy + metadata."""
    ids = [f"img-{i}" for i in range(len(x))]
    causes = [f"cause{v}" for v in y]
    d = x.shape[1]
    files = {}
    files["list"] = tmp_path / "list.parquet"
    pq.write_table(pa.table({"id": ids, "root_cause": causes, "vec": pa.array(list(x), pa.list_(pa.float32()))}),
                   files["list"])
    files["fixed"] = tmp_path / "fixed.parquet"
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float64).ravel()), d)
    pq.write_table(pa.table({"id": ids, "root_cause": causes, "emb": fixed}), files["fixed"])
    files["columns"] = tmp_path / "columns.parquet"
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(d)])
    frame = frame[[f"f{i}" for i in reversed(range(d))]]  # column order does not matter, the numbers do
    frame.insert(0, "id", ids)
    frame["root_cause"] = causes
    frame.to_parquet(files["columns"])
    files["npy"] = tmp_path / "x.npy"
    np.save(files["npy"], x)
    pd.DataFrame({"id": ids, "root_cause": causes}).to_csv(tmp_path / "meta.csv", index=False)
    return files


def test_every_layout_reads_the_same_features(blobs, tmp_path):
    x, y = blobs
    files = _layouts(x, y, tmp_path)
    for name, path in files.items():
        metadata = tmp_path / "meta.csv" if name == "npy" else None
        failures, features = load_features(path, metadata=metadata)
        assert features.info["scale_exponent"] == 0  # norms of about 16: an ordinary magnitude, left as it is
        np.testing.assert_array_equal(features.matrix.numpy(), x, err_msg=name)
        assert features.matrix.dtype.is_floating_point and features.matrix.numpy().dtype == np.float32
        assert failures.table["id"].tolist() == [f"img-{i}" for i in range(len(x))], name
        assert failures.table["root_cause"].tolist() == [f"cause{v}" for v in y], name
        assert list(failures.table.columns[:2]) == ["id", "path"] and failures.table["path"].isna().all()
        assert features.rejected == {} and features.positions.tolist() == list(range(len(x)))
        assert features.info["dims"] == x.shape[1] and failures.kind == "features"


def test_bad_rows_are_rejected_with_their_reason(tmp_path):
    rows = [[0.0, 1.0, 2.0], None, [1.0, np.nan, 0.0], [1.0, 2.0], [np.inf, 0.0, 0.0], [3.0, 4.0, 5.0],
            [1.0, None, 2.0], [-1.0, 0.5, 2.5]]
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"feature": pa.array(rows, pa.list_(pa.float64()))}), path)
    failures, features = load_features(path)
    assert len(failures) == 8
    assert features.positions.tolist() == [0, 5, 7]
    unscaled = np.ldexp(features.matrix.numpy(), -features.info["scale_exponent"])
    np.testing.assert_array_equal(unscaled, np.array([rows[0], rows[5], rows[7]], np.float32))
    nonfinite = "features not finite (NaN or inf) from the features file bad.parquet"
    assert features.rejected == {
        1: REASON_NULL,
        2: nonfinite,
        3: "feature vector has 2 values; the others have 3",
        4: nonfinite,
        6: nonfinite,
    }


def test_bad_rows_of_numbered_columns_and_npy(tmp_path):
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    x[1, 1], x[3, 0] = np.nan, -np.inf
    np.save(tmp_path / "x.npy", x)
    _, features = load_features(tmp_path / "x.npy")
    bad = nonfinite_reason(tmp_path / "x.npy")
    assert features.positions.tolist() == [0, 2, 4] and features.rejected == {1: bad, 3: bad}
    frame = pd.DataFrame({"f0": [1.0, None, 2.0], "f1": [1, 2, 3]})
    frame.to_parquet(tmp_path / "c.parquet")
    _, features = load_features(tmp_path / "c.parquet")
    assert features.positions.tolist() == [0, 2] and features.rejected == {1: nonfinite_reason(tmp_path / "c.parquet")}


def _write(path, table):
    pq.write_table(table, path)
    return path


def _npy(folder, array):
    np.save(folder / "a.npy", array)
    return folder / "a.npy"


def _raw(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: _write(p / "a.parquet", pa.table({"id": [1, 2], "x": [0.1, 0.2]})), "has no feature column"),
        (lambda p: _write(p / "a.parquet", pa.table({"a": [[1.0], [2.0]], "b": [[1.0], [2.0]]})),
         "2 list columns (a, b)"),
        (lambda p: _write(p / "a.parquet", pa.table({"v": [["x"], ["y"]]})), "must hold numbers"),
        (lambda p: _write(p / "a.parquet", pa.table({"f0": [1.0], "f2": [1.0]})), "missing: f1"),
        (lambda p: _write(p / "a.parquet", pa.table({"f0": [1.0], "f1": ["a"]})), "are not numeric"),
        (lambda p: _write(p / "a.parquet", pa.table({"v": pa.array([], pa.list_(pa.float32()))})), "has no rows"),
        (lambda p: _npy(p, np.zeros((2, 3, 4))), "must be 2-D"),
        (lambda p: _npy(p, np.zeros(5)), "must be 2-D"),
        (lambda p: _npy(p, np.array([{"a": 1}], dtype=object)), "object arrays are refused"),
        (lambda p: _npy(p, np.array([["a", "b"]])), "must hold real numbers"),
        (lambda p: _npy(p, np.zeros((0, 4))), "no rows or no features"),
        (lambda p: _npy(p, np.zeros((2, 2), dtype=complex)), "must hold real numbers"),
        (lambda p: _raw(p / "a.npy", b"not numpy"), "Cannot read the features file"),
        (lambda p: _raw(p / "a.parquet", b"PAR1 broken"), "Cannot read the features file"),
        (lambda p: _raw(p / "a.csv", b"f0\n1\n"), "neither .parquet nor .npy"),
        (lambda p: p / "missing.parquet", "does not exist"),
        (lambda p: _write(p / "a.parquet", pa.table({"id": [1, 1], "v": [[1.0], [2.0]]})), "missing or repeated"),
    ],
)
def test_unreadable_feature_files_say_why_and_how_to_fix(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(SourceError, match=re.escape(message)):
        load_features(path)


def test_metadata_must_line_up_with_the_features(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    pd.DataFrame({"id": [1, 2]}).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(SourceError, match="has 2 rows for 3 feature rows"):
        load_features(tmp_path / "x.npy", metadata=tmp_path / "short.csv")
    pq.write_table(pa.table({"id": [1, 2, 3], "v": [[1.0], [2.0], [3.0]]}), tmp_path / "f.parquet")
    pd.DataFrame({"id": [1, 3, 2]}).to_csv(tmp_path / "shuffled.csv", index=False)
    with pytest.raises(SourceError, match="ids of .* differ"):
        load_features(tmp_path / "f.parquet", metadata=tmp_path / "shuffled.csv")


def test_image_paths_resolve_inside_the_image_root_only(tmp_path):
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"path": ["imgs/a.png", "../outside.png", None, "/etc/passwd"],
                             "v": [[1.0], [2.0], [3.0], [4.0]]}), tmp_path / "data" / "f.parquet")
    failures, _ = load_features(tmp_path / "data" / "f.parquet")
    assert _values(failures.table["path"]) == [str(tmp_path / "data" / "imgs" / "a.png"), None, None, None]
    assert _values(failures.table["input_path"]) == ["imgs/a.png", "../outside.png", None, "/etc/passwd"]
    failures, _ = load_features(tmp_path / "data" / "f.parquet", image_root=tmp_path)
    assert _values(failures.table["path"])[:2] == [str(tmp_path / "data/imgs/a.png"), str(tmp_path / "outside.png")]


def _values(column: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in column.tolist()]


# --- the command line -----------------------------------------------------------------------------------


@pytest.mark.quality
def test_run_with_features_writes_the_usual_outputs(blobs, tmp_path):
    x, y = blobs
    x = x.copy()
    x[5, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    pd.DataFrame({"id": np.arange(len(x)) + 1000, "root_cause": y}).to_parquet(tmp_path / "meta.parquet")
    out = tmp_path / "out"
    result = _cli("--features", tmp_path / "x.npy", "--metadata", tmp_path / "meta.parquet", "--out", out,
                  "--pipeline", FAST)
    assert result.exit_code == 0, result.output
    clusters = pd.read_parquet(out / "clusters.parquet")
    assert len(clusters) == len(x) and clusters["id"].tolist() == list(np.arange(len(x)) + 1000)
    assert clusters.loc[5, "status"] == "rejected" and clusters.loc[5, "reason"] == nonfinite_reason(tmp_path / "x.npy")
    good = clusters[clusters.status != "rejected"]
    assert adjusted_rand_score(good.root_cause, good.cluster) == 1.0
    info = json.loads((out / "run.json").read_text())
    assert info["source"]["kind"] == "features" and info["features"]["name"] == "precomputed"
    assert info["counts"]["rejected"] == 1 and info["counts"]["clusters"] == 4
    assert info["resolved_pipeline"].startswith("precomputed+pca(n_components=4)+kmeans(k=4)")
    assert "load_features" in info["seconds"] and "features" not in info["seconds"]
    assert info["metrics"]["n_causes"] == 4 and (out / "metrics.json").is_file()
    assert len(pd.read_parquet(out / "embedding.parquet")) == len(x) - 1
    from rca_gpu.runfolder import open_run

    run_folder = open_run(out)  # the run folder contract holds: every file carries the run's id
    assert len(run_folder.clusters()) == len(x) and len(run_folder.embedding()) == len(x) - 1


def test_features_default_to_a_pipeline_without_a_feature_stage(blobs, tmp_path):
    x, _ = blobs
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "run.toml").write_text(f'pipeline = "{FAST}"\n')
    result = _cli("--features", tmp_path / "x.npy", "--out", tmp_path / "out", "--config", tmp_path / "run.toml")
    assert result.exit_code == 0, result.output
    assert "pipeline precomputed+pca(n_components=4)+kmeans(k=4)" in result.output
    from rca_gpu.launch import FEATURES_PIPELINE, pipeline_for_features

    assert pipeline_for_features(None, None) == FEATURES_PIPELINE == "umap+dbscan"
    assert pipeline_for_features(None, tmp_path / "run.toml") is None  # the config's pipeline stands


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["SRC", "--features", "X"], ["either SOURCE", "not both"]),
        ([], ["Pass SOURCE"]),
        (["SRC", "--metadata", "X"], ["--metadata describes the rows of --features"]),
        (["--features", "X", "--pipeline", "mobilenet_v2+umap+dbscan"], ["replaces the feature stage",
                                                                         "--pipeline umap+dbscan"]),
        (["SRC", "--pipeline", "umap+dbscan"], ["has no feature extractor", "needs --features FILE"]),
        (["SRC", "--dask", "localhost:8786"], ["--dask option must be 'local' or a scheduler address"]),
    ],
)
def test_wrong_combinations_of_inputs_are_one_line_errors(tmp_path, args, fragments):
    np.save(tmp_path / "x.npy", np.zeros((10, 2), np.float32))
    (tmp_path / "src").mkdir()
    args = [{"SRC": tmp_path / "src", "X": tmp_path / "x.npy"}.get(a, a) for a in args]
    one_line_error(_cli(*args, "--out", tmp_path / "out"), *fragments)


def test_the_feature_matrix_is_freed_before_the_outputs_and_the_report(blobs, tmp_path, monkeypatch):
    """The outputs' tables, the evaluation and the report do not read the feature matrix: the run lets go of
    it once the plot embedding is made, so that their memory does not come on top of the matrix's (10M x 256
    float32: 9.5 GiB)."""
    import gc
    import weakref

    from rca_gpu import pipeline
    from rca_gpu.features import precomputed

    held = {}

    def load(*args, **kwargs):
        failures, loaded = load_features(*args, **kwargs)
        held["matrix"] = weakref.ref(loaded.matrix)
        return failures, loaded

    def report(result, failures, reporter=None):
        gc.collect()
        held["alive at the report"] = held["matrix"]() is not None

    table = pipeline.clusters_table

    def clusters_table(*args, **kwargs):
        gc.collect()
        held["alive at the outputs"] = held["matrix"]() is not None
        return table(*args, **kwargs)

    monkeypatch.setattr(precomputed, "load_features", load)
    monkeypatch.setattr(pipeline, "write_report", report)
    monkeypatch.setattr(pipeline, "clusters_table", clusters_table)
    np.save(tmp_path / "x.npy", blobs[0].astype(np.float32))
    done = _cli("--features", tmp_path / "x.npy", "--out", tmp_path / "out", "--pipeline", FAST, "--stability", "0")
    assert done.exit_code == 0, done.output
    assert held["alive at the outputs"] is False
    assert held["alive at the report"] is False
