"""What a run reads and what it writes: inputs are never written over, a folder scan never reads rca-gpu's own
outputs or hidden files, the feature cache never changes a row's outcome, CSV cells are read as written, and a
rerun removes only the files rca-gpu writes. Kept fast: 16 px images, raw-pixel features, k-means."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import one_line_error, succeeded
from PIL import Image
from typer.testing import CliRunner

from rca_gpu.cli import app
from rca_gpu.data.sources import load_source
from rca_gpu.errors import SourceError

runner = CliRunner()
PIXELS = "pixels(image_size=8)+pca(n_components=2)+kmeans(k=2)"
QUICK = ["--device", "cpu", "--workers", "0", "--quiet"]


def _images(folder: Path, n: int, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(prefix) + n)
    paths = []
    for i in range(n):
        image = rng.integers(0, 40, size=(16, 16)).astype(np.uint8)
        image[(slice(0, 8) if i % 2 else slice(8, 16)), :] = 220
        path = folder / f"{prefix}_{i:03d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def _run(*args: str):
    return runner.invoke(app, ["run", *map(str, args), "-p", PIXELS, *QUICK])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rules") / "ds"
    _images(folder, 10)
    return folder


# --------------------------------------------------------------------------------------------------
# --out never writes over or removes an input
# --------------------------------------------------------------------------------------------------


def _features_in(out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    rows = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    pd.DataFrame({"id": range(12), "embedding": list(rows)}).to_parquet(out / "embedding.parquet")
    return ["--features", str(out / "embedding.parquet"), "--pipeline", "pca(n_components=2)+kmeans(k=2)"]


INPUT_CLASHES = [
    ("--features named embedding.parquet", "--features", lambda d, out: _features_in(out)),
    ("manifest named clusters.parquet", "SOURCE", lambda d, out: [
        str(_write(out / "clusters.parquet", pd.DataFrame({"path": sorted(str(p) for p in d.glob("*.png"))})))]),
    ("metadata named per_cause.csv", "--metadata", lambda d, out: _features_in(out.parent / "feat") + [
        "--metadata", str(_write(out / "per_cause.csv", pd.DataFrame({"root_cause": ["a"] * 12})))]),
    ("config named causes.toml", "--config", lambda d, out: [str(d), "--config", str(_text(out / "causes.toml"))]),
    ("manifest under report_files/", "SOURCE", lambda d, out: [
        str(_write(out / "report_files" / "m.csv", pd.DataFrame({"path": [str(p) for p in d.glob("*.png")]})))]),
]


def _write(path: Path, frame: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path) if path.suffix == ".parquet" else frame.to_csv(path, index=False)
    return path


def _text(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('seed = 1\n')
    return path


@pytest.mark.parametrize("case, argument, make", INPUT_CLASHES, ids=[c[0] for c in INPUT_CLASHES])
def test_an_out_folder_that_would_write_over_an_input_is_refused(data, tmp_path, case, argument, make):
    out = tmp_path / "ff"
    argv = make(data, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = runner.invoke(app, ["run", *argv, "--out", str(out), *QUICK])
    one_line_error(result, argument, "would write over or remove an input", "--out")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written or removed


def test_a_linked_input_is_recognised(data, tmp_path):
    out = tmp_path / "out"
    _features_in(out)
    (tmp_path / "mine.parquet").symlink_to(out / "embedding.parquet")
    result = runner.invoke(app, ["run", "--features", str(tmp_path / "mine.parquet"), "-p",
                                 "pca(n_components=2)+kmeans(k=2)", "--out", str(out), *QUICK])
    one_line_error(result, "--features", "would write over")


def test_a_study_out_folder_that_would_write_over_its_source_is_refused(data, tmp_path):
    out = tmp_path / "study"
    manifest = _write(out / "study.parquet", pd.DataFrame({"path": [str(p) for p in data.glob("*.png")],
                                                            "root_cause": ["a", "b"] * 5}))
    before = manifest.read_bytes()
    result = runner.invoke(app, ["study", str(manifest), "--out", str(out), "-f", "pixels(image_size=8)", "-r",
                                 "pca", "-k", "kmeans", "--device", "cpu", "--quiet"])
    one_line_error(result, "SOURCE", "would write over or remove an input")
    assert manifest.read_bytes() == before


# --------------------------------------------------------------------------------------------------
# The folder scan: never rca-gpu's own outputs, never hidden entries
# --------------------------------------------------------------------------------------------------


def test_out_inside_the_source_folder_is_not_read_back(tmp_path):
    data = tmp_path / "ds"
    _images(data, 5)
    out = data / "rca_run"
    for _ in range(3):
        succeeded(_run(data, "--out", out))
        clusters = pd.read_parquet(out / "clusters.parquet")
        assert len(clusters) == 5 and not clusters["path"].str.contains("rca_run").any()
    assert any((out / "report_files").rglob("*.jpg"))  # the thumbnails that must not be read as failures
    left_out = json.loads((out / "run.json").read_text())["source"]["left_out"]
    assert left_out["output"]["files"] > 0 and "rca_run/" in left_out["output"]["examples"][0]


def test_out_equal_to_the_source_folder_is_not_read_back(tmp_path):
    data = tmp_path / "ds"
    _images(data, 5)
    for _ in range(2):
        succeeded(_run(data, "--out", data))
        assert len(pd.read_parquet(data / "clusters.parquet")) == 5


def test_output_folders_of_every_command_are_left_out(tmp_path):
    data = tmp_path / "ds"
    _images(data, 4)
    for sub, marker, content in [("a_run", "run.json", {"rca_gpu_run": 2, "run_id": "x"}),
                                 ("exported", "export.json", {"run_dir": "x"}),
                                 ("assigned", "assign.json", {"run_folder": "x"})]:
        _images(data / sub / "thumbs", 2)
        (data / sub / marker).write_text(json.dumps(content))
    _images(data / "study" / "pipelines" / "p" / "report_files", 2)
    (data / "study" / "study.parquet").write_bytes(b"")
    (data / "study" / "study.md").write_text("")
    (data / "theirs").mkdir()
    (data / "theirs" / "run.json").write_text('{"camera": "left"}')  # a user's own run.json: not ours
    _images(data / "theirs", 3)
    failures = load_source(data)
    assert len(failures) == 7 and failures.left_out["output"]["files"] == 8


def test_hidden_files_and_folders_are_left_out_of_a_folder_but_not_of_a_manifest(tmp_path):
    data = tmp_path / "ds"
    _images(data, 4)
    shutil.copy(data / "img_000.png", data / ".dotfile.png")
    _images(data / ".hidden", 2)
    _images(data / "sub" / ".ipynb_checkpoints", 3)
    failures = load_source(data)
    assert len(failures) == 4 and failures.left_out["hidden"]["files"] == 6
    assert not failures.table["path"].str.contains("/\\.").any()
    manifest = _write(tmp_path / "m.csv", pd.DataFrame({"path": ["ds/.dotfile.png", "ds/.hidden/img_000.png"]}))
    listed = load_source(manifest)
    assert listed.rejected == {} and len(listed) == 2


def test_the_left_out_line_names_only_rules_that_left_out_files(tmp_path):
    """An rca-gpu output folder without images (an assign folder) leaves nothing out: the log line and run.json
    name neither it nor its rule ("0 in rca-gpu output folders, e.g. new/" was shown)."""
    from rca_gpu.data.listing import LeftOut, scan_entries

    data = tmp_path / "ds"
    _images(data, 3)
    (data / "new").mkdir()
    (data / "new" / "assign.json").write_text(json.dumps({"run_folder": "x"}))
    shutil.copy(data / "img_000.png", data / ".h.png")
    left_out = LeftOut()
    scan_entries(data, (".png",), left_out=left_out)
    line = left_out.summary()
    assert line == ("left out 1 image-named file(s) of the folder: 1 in hidden files and folders (names starting "
                    "with '.'), e.g. .h.png")
    assert list(left_out.to_dict()) == ["hidden"]
    (data / ".h.png").unlink()
    assert load_source(data).left_out == {} and LeftOut().summary() == ""


@pytest.mark.parametrize("reasons,content,paths", [
    (["file not found"] * 3, False, True),
    (["path escapes the image root '/x' (symbolic links followed); use --image-root to allow another folder"],
     False, True),
    (["empty file (0 bytes)", "not a readable image (unknown or corrupt format)"], True, False),
    (["truncated image", "file not found"], True, True),
    (["cannot be read: Permission denied"], False, False),
])
def test_the_rejection_hint_follows_the_reasons(reasons, content, paths):
    from rca_gpu.data.sources import rejection_hint

    hint = rejection_hint(reasons)
    assert ("Check that the files are images" in hint) is content
    assert ("Check the paths" in hint and "--image-root" in hint) is paths


def test_a_folder_of_hidden_files_only_says_what_was_left_out(tmp_path):
    _images(tmp_path / "ds" / ".cache", 3)
    with pytest.raises(SourceError, match=r"holds no images .*; the scan left out 3 image-named file\(s\).*hidden"):
        load_source(tmp_path / "ds")


# --------------------------------------------------------------------------------------------------
# The feature cache never changes a row's outcome
# --------------------------------------------------------------------------------------------------


def test_a_cached_run_rejects_what_a_fresh_run_rejects(tmp_path):
    _images(tmp_path / "imgs", 6, "top")
    _images(tmp_path / "imgs" / "sub", 6, "sub")
    manifest = _write(tmp_path / "mf" / "up.csv", pd.DataFrame(
        {"path": [f"../imgs/top_{i:03d}.png" for i in range(6)] + [f"../imgs/sub/sub_{i:03d}.png" for i in range(6)]}))
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    succeeded(_run(manifest, "--out", out, "--image-root", tmp_path))
    assert (pd.read_parquet(out / "clusters.parquet")["status"] != "rejected").all()
    for folder in (out, fresh):  # out reuses the cache of the first run; fresh has none
        succeeded(_run(manifest, "--out", folder, "--image-root", tmp_path / "imgs" / "sub"))
    cached, new = (pd.read_parquet(f / "clusters.parquet") for f in (out, fresh))
    assert (cached["status"] == "rejected").sum() == 6
    assert cached["reason"].str.contains("path escapes the image root").sum() == 6
    pd.testing.assert_series_equal(cached["status"], new["status"])
    pd.testing.assert_series_equal(cached["reason"], new["reason"])
    assert json.loads((out / "run.json").read_text())["counts"]["rejected"] == 6


# --------------------------------------------------------------------------------------------------
# CSV cells are read as written
# --------------------------------------------------------------------------------------------------


def test_csv_cells_are_read_as_written(data, tmp_path):
    names = sorted(p.name for p in data.glob("*.png"))[:6]
    text = "path,id,root_cause,site,zip,score,ratio,note\n" + "".join(
        f"{data / n},{i:04d},{cause},{site},{i + 1:05d},{i},{i / 2},{note}\n"
        for i, (n, cause, site, note) in enumerate(zip(names, ["None", "NA", "null", "N/A", "nan", ""],
                                                       ["NA"] * 6, ["x", "", "y", "", "z", ""], strict=True)))
    (tmp_path / "m.csv").write_text(text)
    table = load_source(tmp_path / "m.csv").table
    assert table["id"].tolist() == ["0000", "0001", "0002", "0003", "0004", "0005"]
    assert table["root_cause"].tolist()[:5] == ["None", "NA", "null", "N/A", "nan"]
    assert pd.isna(table["root_cause"].iloc[5])  # an empty cell is missing
    assert table["site"].tolist() == ["NA"] * 6
    assert table["zip"].tolist() == ["00001", "00002", "00003", "00004", "00005", "00006"]
    assert table["score"].dtype == np.int64 and table["score"].tolist() == list(range(6))
    assert table["ratio"].dtype == np.float64
    assert table["note"].isna().tolist() == [False, True, False, True, False, True]


def test_csv_ids_that_differ_as_text_are_distinct_and_a_repeat_is_named(data, tmp_path):
    a, b = (str(p) for p in sorted(data.glob("*.png"))[:2])
    (tmp_path / "m.csv").write_text(f"path,id\n{a},1\n{b},01\n")
    assert load_source(tmp_path / "m.csv").table["id"].tolist() == ["1", "01"]
    (tmp_path / "r.csv").write_text(f"path,id\n{a},x7\n{b},y\n{a},x7\n")
    with pytest.raises(SourceError, match=r"the value 'x7' is repeated in data rows 1, 3"):
        load_source(tmp_path / "r.csv")
    (tmp_path / "e.csv").write_text(f"path,id\n{a},3\n{b},\n")
    with pytest.raises(SourceError, match=r"1 id\(s\) are missing, in data row\(s\) 2"):
        load_source(tmp_path / "e.csv")


def test_repeated_csv_column_names_follow_the_parquet_rule(data, tmp_path):
    a, b = (str(p) for p in sorted(data.glob("*.png"))[:2])
    (tmp_path / "m.csv").write_text(f"path,label,label,path\n{a},1,3,p\n{b},2,4,q\n")
    table = load_source(tmp_path / "m.csv").table
    assert table["label"].tolist() == [1, 2] and table["input_label"].tolist() == [3, 4]
    assert table["input_path"].tolist() == [a, b] and table["input_input_path"].tolist() == ["p", "q"]


def test_csv_metadata_of_features_is_read_as_written(tmp_path):
    from rca_gpu.features.precomputed import load_features

    rows = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    pd.DataFrame({"id": ["007", "008", "009"], "embedding": list(rows)}).to_parquet(tmp_path / "f.parquet")
    (tmp_path / "meta.csv").write_text("id,root_cause\n007,None\n008,NA\n009,\n")
    failures, _ = load_features(tmp_path / "f.parquet", metadata=tmp_path / "meta.csv")
    assert failures.table["root_cause"].tolist()[:2] == ["None", "NA"]


def test_a_repeated_id_of_a_metadata_file_is_named_with_the_file(tmp_path):
    from rca_gpu.data.sources import SourceError
    from rca_gpu.features.precomputed import load_features

    np.save(tmp_path / "f.npy", np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32))
    (tmp_path / "meta.csv").write_text("id,site\n1,a\n1,b\n2,c\n")
    with pytest.raises(SourceError, match=r"metadata file '.*meta\.csv' has missing or repeated values: the value "
                                          r"1 is repeated in data rows 1, 2"):
        load_features(tmp_path / "f.npy", metadata=tmp_path / "meta.csv")


# --------------------------------------------------------------------------------------------------
# Messages and reruns
# --------------------------------------------------------------------------------------------------


def test_too_few_usable_images_groups_reasons_by_kind(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": pa.array(range(5))}), tmp_path / "m.parquet")
    result = _run(tmp_path / "m.parquet", "--out", tmp_path / "out")
    one_line_error(result, "5 x the path is not text, e.g. int 0")
    assert "(int 1)" not in result.output


def test_a_rerun_removes_only_the_files_rca_gpu_writes(data, tmp_path):
    out = tmp_path / "out"
    succeeded(_run(data, "--out", out))
    shutil.copy(out / "clusters.parquet", out / "clusters_from_a.parquet")  # carries run a's id: still the user's
    (out / "mine.json").write_text(json.dumps({"run_id": "0" * 32}))
    succeeded(_run(data, "--out", out))
    assert (out / "clusters_from_a.parquet").is_file() and (out / "mine.json").is_file()
