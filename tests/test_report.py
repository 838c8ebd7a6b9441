"""The report without a browser: explanations, image properties, representatives, exports, commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import add_bad_files, pattern_images, write_pngs
from typer.testing import CliRunner

from rca_gpu.data.properties import PROPERTY_COLUMNS, image_properties
from rca_gpu.report.explain import Condition, Rule, explain_clusters, is_identifier, top_explanations

runner = CliRunner()


# --------------------------------------------------------------------------------------------------
# Image properties
# --------------------------------------------------------------------------------------------------


def _props(image) -> dict[str, float]:
    return dict(zip(PROPERTY_COLUMNS, image_properties(image).tolist(), strict=True))


def test_image_properties_have_their_documented_values():
    black = _props(np.zeros((10, 20), np.uint8))
    assert black["img_brightness"] == 0 and black["img_dark_fraction"] == 1 and black["img_bright_fraction"] == 0
    assert black["img_width"] == 20 and black["img_height"] == 10 and black["img_aspect_ratio"] == 2
    assert black["img_entropy"] == 0 and black["img_sharpness"] == 0 and black["img_colourfulness"] == 0
    halves = np.zeros((8, 8), np.uint8)
    halves[:, 4:] = 255
    p = _props(halves)
    assert p["img_brightness"] == pytest.approx(0.5) and p["img_contrast"] == pytest.approx(0.5)
    assert p["img_entropy"] == pytest.approx(1.0)  # two equally likely grey levels: one bit
    red = np.zeros((6, 6, 3), np.uint8)
    red[..., 0] = 255
    assert _props(red)["img_colourfulness"] > 50 and _props(np.stack([halves] * 3, axis=2))["img_colourfulness"] == 0


def test_sharpness_drops_when_an_image_is_blurred():
    from PIL import Image, ImageFilter

    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    sharp = Image.fromarray(noise)
    blurred = sharp.filter(ImageFilter.GaussianBlur(2))
    assert _props(blurred)["img_sharpness"] < 0.2 * _props(sharp)["img_sharpness"]
    assert image_properties(sharp.convert("RGB"))[0] == pytest.approx(image_properties(sharp)[0], abs=1e-3)


def test_image_properties_refuse_bad_arrays():
    with pytest.raises(ValueError, match="uint8 array"):
        image_properties(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        image_properties(np.zeros((4, 4, 2), np.uint8))


# --------------------------------------------------------------------------------------------------
# Explanations
# --------------------------------------------------------------------------------------------------


def _planted_table(n: int = 900, seed: int = 0) -> pd.DataFrame:
    """Three planted clusters: 0 is camera "C" (metadata), 1 is dark images (an image property, computed
    from generated images), 2 is the rest. Distractors: a random label and score."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 3, n)
    camera = np.where(cluster == 0, "C", rng.choice(["A", "B"], n))
    images = [np.clip(rng.normal(rng.integers(10, 45) if c == 1 else rng.integers(70, 200), 25, (16, 16, 3)),
                      0, 255).astype(np.uint8) for c in cluster]
    props = pd.DataFrame(np.stack([image_properties(im) for im in images]), columns=PROPERTY_COLUMNS)
    table = pd.DataFrame({"id": np.arange(n), "path": [f"/data/{i}.png" for i in range(n)], "cluster": cluster,
                          "status": "clustered", "reason": "", "camera": camera,
                          "label": rng.integers(0, 10, n), "score": rng.random(n),
                          "root_cause": np.where(cluster == 0, "camera", "x")})
    return pd.concat([table, props], axis=1)


def test_planted_metadata_and_image_property_clusters_get_their_rules():
    table = _planted_table()
    explanations = explain_clusters(table)
    top = explanations[explanations["rank"] == 1].set_index("cluster")
    assert top.loc[0, "found"] and top.loc[0, "uses"] == "metadata" and "camera = C" in top.loc[0, "rule"]
    assert top.loc[1, "found"] and top.loc[1, "uses"] == "image"
    assert any(word in top.loc[1, "rule"] for word in ("brightness", "dark_fraction", "contrast"))
    for cluster in (0, 1):
        assert top.loc[cluster, "precision"] >= 0.9 and top.loc[cluster, "recall"] >= 0.8
    assert "root_cause" not in " ".join(explanations["rule"])  # the ground truth never explains
    # the figures are those of the rule as written, evaluated on every row
    for row in explanations.itertuples():
        rule = Rule(tuple(Condition(*c) for c in json.loads(row.conditions)))
        matched = rule.mask(table[table.status != "rejected"])
        inside = (table["cluster"] == row.cluster).to_numpy()
        assert row.precision == pytest.approx((matched & inside).sum() / matched.sum())
        assert row.recall == pytest.approx((matched & inside).sum() / inside.sum())
        assert row.n_matched == matched.sum()


def test_no_rule_below_the_precision_floor():
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"id": range(300), "path": "p", "cluster": rng.integers(0, 2, 300), "status": "clustered",
                          "reason": "", "noise_column": rng.random(300)})
    explanations = explain_clusters(table, precision_floor=0.95)
    assert len(explanations) == 2 and not explanations["found"].any()
    assert (explanations["recall"] >= 0.1).all()  # the candidate shown covers a tenth of its cluster at least
    texts = top_explanations(explanations, floor=0.95)
    for row in explanations.itertuples():
        hits = round(row.recall * row.n_cluster)
        assert texts[row.cluster].startswith(
            f"no rule reaches precision 0.95: the best, {row.rule}, matches {hits} of the {row.n_cluster} images but "
            f"also {row.n_matched - hits} others (precision {row.precision:.2f})")
    with pytest.raises(ValueError, match="precision_floor"):
        explain_clusters(table, precision_floor=1.5)


def test_identifiers_are_not_read_as_quantities_but_few_valued_ones_as_categories():
    # cluster 1 is exactly the rows with source_index >= 500 and scene_id = 7: a range of an identifier
    # names no property of the images and is never used; an identifier with a few values is a category
    rng = np.random.default_rng(2)
    n = 600
    source_index = rng.permutation(n * 2)[:n]
    cluster = (source_index >= 500).astype(int)
    scene_id = np.where(cluster == 1, 7, rng.choice([1, 2, 3], n))
    table = pd.DataFrame({"id": range(n), "path": "p", "cluster": cluster, "status": "clustered", "reason": "",
                          "source_index": source_index, "frameId": source_index * 3, "scene_id": scene_id})
    explanations = explain_clusters(table)
    used = " ".join(explanations["rule"])
    assert "source_index" not in used and "frameId" not in used
    top = explanations.query("rank == 1").set_index("cluster")
    assert top.loc[1, "found"] and "scene_id = 7" in top.loc[1, "rule"]
    # the same column under a name that is not an identifier is a quantity the rules may use
    renamed = explain_clusters(table.drop(columns=["scene_id", "frameId"]).rename(columns={"source_index": "age"}))
    assert renamed.query("rank == 1 and cluster == 1")["rule"].str.contains("age >= ").all()


@pytest.mark.parametrize("name, expected", [
    ("id", True), ("source_index", True), ("scene-id", True), ("frameId", True), ("UUID", True),
    ("image.key", True), ("width", False), ("video", False), ("monkey", False), ("paid", False),
    ("candidate", False), ("rotation_deg", False),
    # random seeds and manifest row numbers are identifiers
    ("seed", True), ("op_seed", True), ("opSeed", True), ("Random-Seed", True), ("row", True),
    ("manifest_row", True), ("sourceRow", True), ("ROW", True), ("rowid", True), ("ROWID", True),
    ("table_rowid", True), ("arrowid", False),
    # words that only end in those letters are not; frame numbers and timestamps stay quantities
    ("arrow", False), ("narrow", False), ("eyebrow", False), ("throw", False), ("linseed", False),
    ("seedling", False), ("rows_cropped", False), ("frame", False), ("frame_number", False),
    ("timestamp", False), ("time", False), ("frameNo", False)])
def test_identifier_names(name, expected):
    assert is_identifier(name) is expected


def test_seeds_and_row_numbers_explain_nothing_but_a_time_window_does():
    # cluster 1 is exactly the rows recorded from timestamp 1500 on; op_seed and manifest_row are ordered the
    # same way (each would separate the cluster as well), yet only the timestamp may be used
    rng = np.random.default_rng(3)
    n = 400
    order = rng.permutation(n)
    timestamp = 1000.0 + order * 2.5
    cluster = (timestamp >= 1500).astype(int)
    table = pd.DataFrame({"id": range(n), "path": "p", "cluster": cluster, "status": "clustered", "reason": "",
                          "op_seed": 81_000_000 + order * 977, "manifest_row": order, "timestamp": timestamp})
    explanations = explain_clusters(table)
    used = " ".join(explanations["rule"])
    assert "op_seed" not in used and "manifest_row" not in used
    top = explanations.query("rank == 1").set_index("cluster")
    assert top.loc[1, "found"] and top.loc[1, "rule"].startswith("timestamp >= ")
    # without the timestamp nothing else explains the cluster
    alone = explain_clusters(table.drop(columns=["timestamp"]))
    assert not alone["found"].any() and "op_seed" not in " ".join(alone["rule"])


def test_rule_text_merges_conditions_on_one_column():
    rule = Rule((Condition("img_sharpness", "<", 12.0), Condition("img_sharpness", ">=", 3.0),
                 Condition("camera", "!=", "A"), Condition("camera", "!=", "B")))
    assert rule.text() == "3 <= sharpness < 12 and camera not in {A, B}"


# --------------------------------------------------------------------------------------------------
# A small run: report, explanations, terminal summary, exports
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from rca_gpu.pipeline import run
    from rca_gpu.spec import build_run_spec

    root = tmp_path_factory.mktemp("report_small")
    images, labels = pattern_images(n_per=12, groups=3, seed=2)
    paths = write_pngs(root / "imgs", images, labels)
    add_bad_files(root / "imgs", paths[0])
    files = sorted((root / "imgs").iterdir())
    pd.DataFrame({"path": [f"imgs/{f.name}" for f in files], "root_cause": [f.name[:2] for f in files],
                  "site": [f.name[:2].upper() for f in files]}).to_csv(root / "manifest.csv", index=False)
    result = run(build_run_spec(pipeline="pixels+pca+kmeans(k=3)", device="cpu", workers=0), root / "manifest.csv",
                 root / "out", report=False)
    assert result.report is None and not (root / "out" / "report.html").exists()
    return root / "out"


def test_report_command_writes_a_page_that_carries_the_run_id(run_dir):
    from rca_gpu.cli import app
    from rca_gpu.runfolder import open_run

    result = runner.invoke(app, ["report", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"report: {run_dir / 'report.html'}" in result.output
    run = open_run(run_dir)
    html = (run_dir / "report.html").read_text()
    assert f'<meta name="rca_gpu.run_id" content="{run.run_id}">' in html
    assert html.count('class="cluster"') == 3 and 'id="ground-truth"' in html
    assert "https://" not in html and "http://" not in html  # nothing fetched from a network
    explanations = run.table("explanations.parquet")  # carries the run's id (checked by open_run)
    assert set(explanations["cluster"]) == {0, 1, 2}
    assert explanations.loc[explanations["rank"] == 1, "rule"].str.contains("site = ").all()
    assert (run_dir / "report_files" / "thumbs" / "index.json").is_file()


def test_map_sample_is_stated_on_the_page(run_dir):
    from rca_gpu.report.build import build_report

    result = build_report(run_dir, map_points=12)
    html = result.path.read_text()
    data = json.loads(html.split('id="map-data">', 1)[1].split("</script>", 1)[0])
    assert len(data["x"]) == result.map_points <= 12
    assert f"The map draws {result.map_points} of 36 points" in html
    assert set(data["cluster"]) == {0, 1, 2}  # every cluster keeps points


def test_terminal_summary_shows_each_clusters_top_explanation(run_dir):
    from rca_gpu.pipeline import cluster_summary
    from rca_gpu.runfolder import open_run

    run = open_run(run_dir)
    summary = cluster_summary(run.clusters(), run.table("explanations.parquet"))
    assert list(summary.columns[:3]) == ["cluster", "size", "explanation"]
    assert summary["explanation"].str.contains(r"site = G\d \(precision 1\.00, recall 1\.00\)").all()


def test_medoids_are_closest_to_the_centre_and_border_cases_near_another_cluster():
    from rca_gpu.report.representatives import representatives

    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (40, 2))
    b = rng.normal(0, 1, (40, 2)) + [10, 0]
    c = rng.normal(0, 1, (40, 2)) + [0, 30]
    space = np.vstack([a, b, c])
    labels = np.repeat([0, 1, 2], 40)
    reps = representatives(labels, space, np.arange(120) + 100, rng)
    centre = a.mean(axis=0)
    nearest = np.argsort(np.linalg.norm(a - centre, axis=1))[:8] + 100
    assert reps[0].medoids == nearest.tolist()
    others = np.minimum(np.linalg.norm(a - b.mean(axis=0), axis=1), np.linalg.norm(a - c.mean(axis=0), axis=1))
    ratio = np.linalg.norm(a - centre, axis=1) / others
    assert sorted(reps[0].border) == sorted((np.argsort(-ratio)[:4] + 100).tolist())
    assert (space[np.array(reps[0].border) - 100, 0] > centre[0]).all()  # leaning towards cluster 1
    assert reps[0].borders == [1, 1, 1, 1]  # each border case names the cluster it borders
    # the gallery: every member, nearest to the medoid (the first of the medoids) first
    medoid = space[reps[0].medoids[0] - 100]
    assert reps[0].order == (np.argsort(np.linalg.norm(a - medoid, axis=1), kind="stable") + 100).tolist()


def test_captions_say_label_prediction_and_confidence():
    from rca_gpu.report.representatives import caption, caption_columns

    named = caption_columns(["id", "label", "label_name", "prediction", "prediction_name", "confidence"])
    row = pd.Series({"label": 7, "label_name": "seven", "prediction": 1, "prediction_name": "one",
                     "confidence": 0.931})
    assert caption(row, named) == "seven -> one (0.93)"
    plain = caption_columns(["label", "prediction"])
    assert caption(pd.Series({"label": 7.0, "prediction": 1.0}), plain) == "7 -> 1"
    assert caption_columns(["label", "camera"]) is None and caption(row, None) == ""


def test_dominant_values_are_ranked_by_difference_without_identifiers_or_constants():
    from rca_gpu.report.columns import dominant_values

    rng = np.random.default_rng(0)
    n = 600
    cluster = rng.integers(0, 3, n)
    usable = pd.DataFrame({
        "id": np.arange(n), "path": "p", "cluster": cluster, "status": "clustered", "reason": "",
        "source_index": rng.permutation(n),  # an identifier: never listed
        "site": "lab",  # constant: never listed
        "camera": np.where(cluster == 0, "C", rng.choice(["A", "B"], n)),  # cluster 0: all C
        "angle": np.where(cluster == 0, rng.uniform(60, 90, n), rng.uniform(0, 90, n)),  # cluster 0: leans high
        "label": rng.integers(0, 10, n), "label_name": None,
    })
    usable["label_name"] = usable["label"].map(lambda v: f"digit {v}")  # the same grouping as label: once
    rows = dominant_values(usable, cluster, [0, 1, 2], [c for c in usable.columns if c not in ("id", "path")])
    columns = [r["column"] for r in rows[0]]
    assert columns[:2] == ["camera", "angle"]
    assert "source_index" not in columns and "site" not in columns and "cluster" not in columns
    assert not {"label", "label_name"} <= set(columns)
    assert [float(r["difference"]) for r in rows[0]] == sorted((float(r["difference"]) for r in rows[0]),
                                                               reverse=True)
    assert rows[0][0]["inside"] == "C (100%)" and rows[0][0]["difference"] == "1.00"


def test_export_links_and_copies_one_folder_per_cluster(run_dir, tmp_path):
    from rca_gpu.data.sources import load_source
    from rca_gpu.report.export import export_run

    result = export_run(run_dir, tmp_path / "links")
    assert set(result.groups) == {"cluster-0", "cluster-1", "cluster-2", "rejected"}
    assert sum(result.groups.values()) == 39 and result.files == 39 and result.missing == 0
    manifest = pd.read_csv(tmp_path / "links" / "cluster-0" / "manifest.csv")
    assert {"path", "source_path", "id", "cluster", "status", "reason", "site", "root_cause"} <= set(manifest.columns)
    linked = tmp_path / "links" / "cluster-0" / manifest["path"].iloc[0]
    assert linked.is_symlink() and linked.resolve() == Path(manifest["source_path"].iloc[0])
    # links resolve to the original files, so reading them back needs the originals' folder as image root
    again = load_source(tmp_path / "links" / "cluster-0" / "manifest.csv", image_root=run_dir.parent)
    assert len(again) == len(manifest) and not again.rejected

    copied = export_run(run_dir, tmp_path / "copies", clusters=["cluster-1"], mode="copy")
    assert list(copied.groups) == ["cluster-1"]
    files = [p for p in (tmp_path / "copies" / "cluster-1").iterdir() if p.suffix == ".png"]
    assert len(files) == 12 and not any(p.is_symlink() for p in files)
    assert not load_source(tmp_path / "copies" / "cluster-1" / "manifest.csv").rejected  # a source as it is
    info = json.loads((tmp_path / "copies" / "export.json").read_text())
    assert info["mode"] == "copy" and len(info["run_id"]) == 32


def test_export_names_are_sanitised_and_stay_inside_the_folder(tmp_path):
    from rca_gpu.report.placing import safe_name
    from rca_gpu.report.placing import unique_name as _unique

    assert safe_name(7, "/x/<img src=x onerror=alert(1)>.png") == "7_img_src_x_onerror_alert_1.png"
    assert safe_name("../../etc", "/x/passwd") == "etc_passwd"
    assert safe_name("a", "/x/.hidden") == "a.hidden" and safe_name("", "/x/...") == "image"
    assert "/" not in safe_name("a/b", "/x/y/../z.jpg") and len(safe_name(1, "/x/" + "n" * 500 + ".jpg")) <= 120
    used: set[str] = set()
    assert [_unique("a.png", used) for _ in range(3)] == ["a.png", "a-2.png", "a-3.png"]


def test_export_refuses_bad_requests_with_one_line_errors(run_dir, tmp_path):
    from rca_gpu.cli import app

    (tmp_path / "out" / "cluster-0").mkdir(parents=True)
    cases = [
        (["--to", str(tmp_path / "out"), "--clusters", "0"], "already holds cluster-0"),
        (["--to", str(tmp_path / "new"), "--clusters", "7"], "The run has no cluster-7"),
        (["--to", str(tmp_path / "new"), "--clusters", "1,x"], "got 'x'"),
    ]
    for arguments, fragment in cases:
        result = runner.invoke(app, ["export", str(run_dir), *arguments])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
    ok = runner.invoke(app, ["export", str(run_dir), "--to", str(tmp_path / "new"), "--clusters", "rejected",
                             "--mode", "copy"])
    assert ok.exit_code == 0 and "rejected: 3 images" in ok.output


def test_optional_sections_render_only_when_their_files_exist(run_dir):
    from rca_gpu.report import sections
    from rca_gpu.report.build import build_report

    section = sections.ExtraSection(
        key="extra-test", title="Extra", files=("extra_test.json",),
        render=lambda run: sections.Content((sections.Paragraph(run.json("extra_test.json")["text"]),),
                                            sections.Table(("a",), (("<u>cell</u>",),))))
    fact = sections.ClusterFact(key="fact-test", label="Fact", files=("extra_test.json",),
                                compute=lambda run: {0: "<b>zero</b>"})
    sections.register_section(section)
    sections.register_cluster_fact(fact)
    try:
        assert 'id="extra-test"' not in build_report(run_dir).path.read_text()
        from rca_gpu import outputs
        from rca_gpu.runfolder import open_run

        outputs.write_json(run_dir / "extra_test.json", {"text": "<i>hello</i>"}, run_id=open_run(run_dir).run_id)
        html = build_report(run_dir).path.read_text()
        assert 'id="extra-test"' in html and "&lt;i&gt;hello&lt;/i&gt;" in html and "Fact: &lt;b&gt;zero" in html
        assert "&lt;u&gt;cell&lt;/u&gt;" in html and "<u>" not in html
        # a section that returns HTML text is refused: the page escapes values itself
        sections.register_section(sections.ExtraSection(key="extra-test", title="Extra", files=("extra_test.json",),
                                                        render=lambda run: "<p>raw</p>"))
        with pytest.raises(TypeError, match="returned str; a section returns"):
            build_report(run_dir)
    finally:
        sections.EXTRA_SECTIONS[:] = [s for s in sections.EXTRA_SECTIONS if s.key != "extra-test"]
        sections.CLUSTER_FACTS.remove(fact)
        (run_dir / "extra_test.json").unlink(missing_ok=True)


def test_image_properties_reach_clusters_parquet_and_survive_the_feature_cache(tmp_path):
    from PIL import Image

    from rca_gpu.pipeline import run
    from rca_gpu.spec import build_run_spec

    images, labels = pattern_images(n_per=8, groups=3, seed=3)
    paths = write_pngs(tmp_path / "imgs", images, labels)
    add_bad_files(tmp_path / "imgs", paths[0])
    spec = build_run_spec(pipeline="pixels+pca+kmeans(k=3)", device="cpu", workers=0)
    first = run(spec, tmp_path / "imgs", tmp_path / "a", cache_dir=tmp_path / "cache", report=False)
    second = run(spec, tmp_path / "imgs", tmp_path / "b", cache_dir=tmp_path / "cache", report=False)
    assert second.run_info["features"]["from_cache"] == 24
    for result in (first, second):
        table = result.clusters.set_index(result.clusters.path.str.rsplit("/", n=1).str[-1])
        assert list(table.columns[-len(PROPERTY_COLUMNS):]) == list(PROPERTY_COLUMNS)
        assert table.loc[table.status == "rejected", list(PROPERTY_COLUMNS)].isna().all().all()
        for path in paths[::5]:
            expected = image_properties(Image.open(path).convert("RGB"))  # as the extractor reads it
            np.testing.assert_allclose(table.loc[path.name, list(PROPERTY_COLUMNS)].to_numpy(float), expected,
                                       rtol=1e-5)


def test_thumbnails_are_made_once_per_run_and_never_named_from_data(tmp_path):
    from rca_gpu.report.thumbnails import make_thumbnails

    images = np.random.default_rng(0).integers(0, 255, (5, 300, 200, 3), dtype=np.uint8)
    calls = []

    def loader(position):
        calls.append(position)
        return images[position] if position != 4 else None  # 4: unreadable, no thumbnail

    made = make_thumbnails(tmp_path / "t", [0, 1, 4], ["a", "b", "c", "d", "e"], run_id="r1", size=64, loader=loader)
    assert made == {0: "0000000.jpg", 1: "0000001.jpg"} and sorted(calls) == [0, 1, 4]
    from PIL import Image

    assert max(Image.open(tmp_path / "t" / made[0]).size) == 64
    calls.clear()
    assert make_thumbnails(tmp_path / "t", [0, 1, 2], [""] * 5, run_id="r1", size=64, loader=loader).keys() == {0, 1, 2}
    assert calls == [2]  # the others were reused
    calls.clear()
    make_thumbnails(tmp_path / "t", [0], [""] * 5, run_id="r2", size=64, loader=loader)
    assert calls == [0] and sorted(p.name for p in (tmp_path / "t").iterdir()) == ["0000000.jpg", "index.json"]


def test_a_column_set_only_for_one_cluster_is_explained_by_its_presence():
    rng = np.random.default_rng(4)
    cluster = rng.integers(0, 2, 400)
    blur = np.where(cluster == 0, rng.uniform(0.5, 3, 400), np.nan)  # a cause's parameter, absent elsewhere
    table = pd.DataFrame({"id": range(400), "path": "p", "cluster": cluster, "status": "clustered", "reason": "",
                          "blur_sigma": blur})
    top = explain_clusters(table).query("rank == 1").set_index("cluster")
    assert top.loc[0, "rule"] == "blur_sigma is set" and top.loc[0, "precision"] == 1.0
    assert top.loc[1, "rule"] == "blur_sigma is missing" and top.loc[1, "recall"] == 1.0


def test_run_command_writes_the_report_unless_told_not_to(tmp_path):
    from rca_gpu.cli import app

    images, labels = pattern_images(n_per=10, groups=2, seed=5)
    write_pngs(tmp_path / "imgs", images, labels)
    common = ["--pipeline", "pixels+pca+kmeans(k=2)", "--device", "cpu", "--workers", "0"]
    result = runner.invoke(app, ["run", str(tmp_path / "imgs"), "--out", str(tmp_path / "a"), *common])
    assert result.exit_code == 0, result.output
    assert f"report: {(tmp_path / 'a' / 'report.html').resolve()}" in result.output
    assert "explanation" in result.output and "precision" in result.output  # beside each cluster's size
    result = runner.invoke(app, ["run", str(tmp_path / "imgs"), "--out", str(tmp_path / "b"), *common, "--no-report"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "b" / "report.html").exists() and (tmp_path / "b" / "explanations.parquet").is_file()
    assert "report:" not in result.output


def test_representatives_use_the_clustering_space_when_stored_else_the_map():
    from rca_gpu.report.representatives import clustering_space

    stored = pd.DataFrame({"id": [0, 1], "cluster": [0, 0], "x": [1.0, 2.0], "y": [3.0, 4.0],
                           "e0": [5.0, 6.0], "e1": [7.0, 8.0], "e10": [0.0, 0.0]})
    space, note = clustering_space(stored)
    assert space.shape == (2, 3) and space[0].tolist() == [5.0, 7.0, 0.0] and "(3 dimensions)" in note
    space, note = clustering_space(stored[["id", "cluster", "x", "y"]])
    assert space.tolist() == [[1.0, 3.0], [2.0, 4.0]] and "more than 64 dimensions" in note


@pytest.mark.parametrize("metadata", ["none", "no path column", "paths for half the rows"])
def test_report_of_features_without_image_paths(tmp_path, metadata):
    """A run from --features whose rows have no image path (no metadata, metadata without `path`, or paths
    for some rows only) still gets its report: sections without thumbnails, no error."""
    from sklearn.datasets import make_blobs

    from rca_gpu.cli import app

    x, y = make_blobs(120, n_features=8, centers=3, random_state=0)
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    args = ["run", "--features", str(tmp_path / "x.npy"), "--out", str(tmp_path / "out"), "-p", "pca+kmeans(k=3)",
            "--device", "cpu", "--stability", "0"]
    if metadata != "none":
        meta = pd.DataFrame({"id": np.arange(120), "group": y.astype(str)})
        if metadata == "paths for half the rows":
            meta["path"] = [str(tmp_path / f"{i}.png") if i % 2 else None for i in range(120)]
        meta.to_csv(tmp_path / "meta.csv", index=False)
        args += ["--metadata", str(tmp_path / "meta.csv")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "could not be written" not in result.output
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert all(f'id="cluster-{c}"' in page for c in range(3))
    again = runner.invoke(app, ["report", str(tmp_path / "out")])
    assert again.exit_code == 0, again.output


def test_export_of_noise_or_rejected_that_the_run_lacks_is_a_note(catalogue_run, tmp_path):
    from rca_gpu.cli import app
    from rca_gpu.runfolder import open_run

    statuses = set(open_run(catalogue_run).clusters()["status"])
    assert "rejected" not in statuses
    result = runner.invoke(app, ["export", str(catalogue_run), "--to", str(tmp_path / "e"),
                                 "--clusters", "0,rejected,rejected"])
    assert result.exit_code == 0, result.output
    assert "note: the run has no rejected images; no rejected/ folder made" in result.output
    assert sorted(p.name for p in (tmp_path / "e").iterdir() if p.is_dir()) == ["cluster-0"]
    wrong = runner.invoke(app, ["export", str(catalogue_run), "--to", str(tmp_path / "f"), "--clusters", "99"])
    assert wrong.exit_code == 2 and "The run has no cluster-99" in wrong.output


@pytest.mark.parametrize("share, decimals, text", [
    (1 / 288, 0, "<1%"), (0.004, 0, "<1%"), (0.0, 0, "0%"), (0.5, 0, "50%"), (0.996, 0, ">99%"), (1.0, 0, "100%"),
    (0.0004, 1, "<0.1%"), (0.9996, 1, ">99.9%"), (0.123, 1, "12.3%"), (None, 1, "-"), (float("nan"), 1, "-")])
def test_shares_never_read_zero_for_a_present_value_nor_all_for_less(share, decimals, text):
    from rca_gpu.report.columns import share_text

    assert share_text(share, decimals) == text


def test_dominant_values_show_a_rare_value_as_below_one_percent():
    from rca_gpu.report.columns import profiles, summary

    usable = pd.DataFrame({"transform": ["none"] * 287 + ["rotation"]})
    profile = profiles(usable)[0]
    assert summary(profile, np.ones(len(usable), dtype=bool)) == "none (>99%), rotation (<1%)"


def test_map_keeps_integers_exact_and_every_digit_of_a_numbers_integer_part():
    from rca_gpu.report.mapdata import number_column as _number_column

    seeds = _number_column(pd.Series([1788123457, 81408472, 3]))
    assert seeds == {"kind": "number", "values": [1788123457, 81408472, 3]}
    assert json.loads(json.dumps(seeds))["values"][0] == 1788123457
    nullable = _number_column(pd.Series([1788123457, None], dtype="Int64"))
    assert nullable["values"] == [1788123457, None]
    huge = _number_column(pd.Series([2**60 + 1, 5]))  # beyond JavaScript's exact integers: text for the tooltip
    assert huge["text"] == [str(2**60 + 1), "5"]
    floats = _number_column(pd.Series([0.123456, 1712345678.25, np.nan]))
    assert floats["values"] == [0.1235, 1712345678.25, None]


def test_footer_lists_the_run_files_present(run_dir):
    from rca_gpu.report.build import build_report
    from rca_gpu.runfolder import RUN_OUTPUT_FOLDERS, RUN_OUTPUTS

    html = build_report(run_dir).path.read_text()
    listed = html.split('id="run-files">', 1)[1].split("</span>", 1)[0].split(", ")
    present = [name for name in RUN_OUTPUTS if (run_dir / name).is_file()]
    assert listed == present + [f"{name}/" for name in RUN_OUTPUT_FOLDERS if (run_dir / name).is_dir()]
    assert "report_files/" in listed
    assert {"run.json", "clusters.parquet", "metrics.json", "report.html"} <= set(listed)
    assert "causes.toml" not in listed and not (run_dir / "causes.toml").exists()


def test_summary_and_map_show_the_edited_causes_with_names_escaped(catalogue_run, tmp_path):
    import shutil

    from rca_gpu.catalogue.causes import load_catalogue
    from rca_gpu.report.build import build_report

    folder = tmp_path / "run"
    shutil.copytree(catalogue_run, folder)
    unedited = build_report(folder).path.read_text()
    assert 'id="summary-causes"' not in unedited and '<option value="cause">' not in unedited
    catalogue = load_catalogue(folder)
    first, second = catalogue.split(0, 2)
    catalogue.rename(first, "<script>alert(1)</script>")
    merged = catalogue.merge([1, 2])
    catalogue.rename(merged, "bar & top")
    catalogue.drop(second)
    catalogue.save()

    html = build_report(folder).path.read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    causes = html.split('id="summary-causes">', 1)[1].split("</table>", 1)[0]
    rows = {row.split('id="cause-', 1)[1].split('"', 1)[0]: row for row in causes.split("<tr")[2:]}
    assert set(rows) == {str(first), str(second), str(merged)}
    assert "bar &amp; top" in rows[str(merged)] and "merge of 1, 2" in rows[str(merged)]
    assert 'href="#cluster-1"' in rows[str(merged)] and 'href="#cluster-2"' in rows[str(merged)]
    assert "not a cause" in rows[str(second)] and "split of 0" in rows[str(second)]
    assert "not a cause" not in rows[str(first)] and "split of 0" in rows[str(first)]
    assert list(rows)[-1] == str(second)  # dropped causes last
    # the run's clusters stay, each with its causes: cluster 0 is in both parts of the split
    clusters = html.split('id="summary-clusters">', 1)[1].split("</table>", 1)[0]
    cluster0 = clusters.split('href="#cluster-0"', 1)[1].split("</tr>", 1)[0]
    assert f'href="#cause-{first}"' in cluster0 and f'href="#cause-{second}"' in cluster0
    assert "(not a cause)" in cluster0
    cluster2 = clusters.split('href="#cluster-2"', 1)[1].split("</tr>", 1)[0]
    assert f'href="#cause-{merged}">bar &amp; top</a>' in cluster2
    # the map offers colouring by cause; every point carries its cause
    assert '<option value="cause">cause (edited)</option>' in html
    data = json.loads(html.split('id="map-data">', 1)[1].split("</script>", 1)[0])
    levels = data["cause"]["levels"]
    assert f"{merged}: bar & top" in levels and any(level.endswith("(not a cause)") for level in levels)
    shown = [data["cause"]["ids"][k] if k >= 0 else -1 for k in data["cause"]["codes"]]
    members = load_catalogue(folder).members
    truth = dict(zip(members["id"].astype(str), members["cause"].astype(int), strict=True))
    assert shown == [truth[i] for i in data["id"]] and {first, second, merged} <= set(shown)
    # a causes.toml of another run is refused, as by every command that reads the catalogue
    from rca_gpu.catalogue.reference import CatalogueError

    (folder / "causes.toml").write_text('run_id = "another run"\nformat = 1\n', encoding="utf-8")
    with pytest.raises(CatalogueError, match="causes.toml' belongs to run another run"):
        build_report(folder)


def test_the_catalogue_never_imports_the_report():
    """report/ reads the catalogue (rca_gpu.report.catalogue_sections); catalogue/ imports nothing of report/,
    also not inside functions, so the two folders form no import cycle."""
    import ast

    import rca_gpu

    root = Path(rca_gpu.__file__).parent / "catalogue"
    found = []
    for module in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{module.name}: {n}" for n in names if n == "rca_gpu.report" or n.startswith("rca_gpu.report.")]
    assert len(list(root.glob("*.py"))) > 5 and found == []


def test_a_comparison_file_carrying_markup_is_shown_as_text(catalogue_run, tmp_path):
    """comparison.parquet and comparison.json are data: markup in every text they hold (run id, names, the
    folder of run A, how causes spread) reaches the page as text; numbers that are not numbers are refused by the
    file's schema before the page is made."""
    import shutil

    from rca_gpu import outputs
    from rca_gpu.report.build import build_report
    from rca_gpu.runfiles import RunFileError
    from rca_gpu.runfolder import open_run

    folder = shutil.copytree(catalogue_run, tmp_path / "run")
    run_id = open_run(folder).run_id
    hostile = "<img src=x onerror=alert(7)>"
    frame = pd.DataFrame({
        "run_a": [hostile], "status": ["new"], "cause_a": [-1], "name_a": [hostile], "size_a": [0],
        "share_a": [0.0], "size_b": [3], "share_b": [0.1], "ratio": [float("nan")], "cause_b": [0],
        "name_b": [hostile], "b_causes": [hostile], "a_causes": [hostile]})
    outputs.write_parquet(folder / "comparison.parquet", frame, run_id=run_id)
    outputs.write_json(folder / "comparison.json", {"run_a": run_id, "run_b": run_id, "run_a_folder": hostile,
                                                    "mode": "images", "basis": "shares"}, run_id=run_id)
    html = build_report(folder).path.read_text(encoding="utf-8")
    section = html.split('id="comparison"', 1)[1].split("</section>", 1)[0]
    assert hostile not in html and section.count("&lt;img src=x onerror=alert(7)&gt;") >= 4
    outputs.write_parquet(folder / "comparison.parquet", frame.assign(size_a=[hostile]), run_id=run_id)
    with pytest.raises(RunFileError, match="comparison.parquet .* the column 'size_a' .* must hold integers"):
        build_report(folder)
