"""Representations that see the cause: class-conditional centring and grid pooling, in specs, extraction,
run.json and the study."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import pattern_images, run_extractor

from rca_gpu.data.sources import from_arrays
from rca_gpu.errors import SpecError
from rca_gpu.features.base import ExtractionContext
from rca_gpu.features.represent import center_features, check_center, class_keys, describe, grid_size
from rca_gpu.spec import build_run_spec, make_features, parse_pipeline


def test_pool_and_center_parse_and_print():
    spec = parse_pipeline("mobilenet_v2(pool=grid2,center=label)+umap+dbscan")
    assert spec.features.params == {"pool": "grid2", "center": "label"}
    assert str(parse_pipeline(str(spec))) == str(spec)
    assert parse_pipeline("dut(pool=grid3,center=pair)+umap+dbscan").features.params == {"pool": 3, "center": "pair"}
    assert grid_size("grid4") == 4 and grid_size(3) == 3 and grid_size("avg") is None and grid_size(None) is None
    with pytest.raises(SpecError, match=r"'pool' parameter of extractor 'mobilenet_v2' must be one of 'avg', 'grid1'"):
        parse_pipeline("mobilenet_v2(pool=grid9)+umap+dbscan")
    with pytest.raises(SpecError, match=r"'center' parameter of extractor 'pixels' must be one of 'none', 'label'"):
        parse_pipeline("pixels(center=class)+umap+dbscan")


def test_centring_subtracts_each_class_mean_and_small_classes_use_the_global_mean():
    rng = np.random.default_rng(0)
    keys = np.array(["a"] * 12 + ["b"] * 15 + ["c"] * 3 + [""] * 2, dtype=object)
    offsets = {"a": 5.0, "b": -5.0, "c": 50.0, "": 0.0}
    matrix = torch.tensor(rng.normal(size=(32, 4)) + np.array([offsets[k] for k in keys])[:, None],
                          dtype=torch.float32)
    centred, described = center_features(matrix, keys)
    for key in ("a", "b"):
        rows = torch.as_tensor(keys == key)
        torch.testing.assert_close(centred[rows].mean(0), torch.zeros(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(centred[rows], matrix[rows] - matrix[rows].mean(0))
    small = torch.as_tensor((keys == "c") | (keys == ""))
    torch.testing.assert_close(centred[small], matrix[small] - matrix.mean(0))
    assert described == {"classes": 2, "small_classes_on_global_mean": 2, "rows_on_global_mean": 5,
                         "min_class_size": 10}


def test_class_keys_of_a_pair_and_missing_values():
    failures = from_arrays(np.zeros((4, 8, 8), np.uint8), {"label": [1, 1, 2, None], "prediction": [7, 8, 7, 7]})
    assert class_keys(failures, np.arange(4), "pair").tolist() == ["1.0|7", "1.0|8", "2.0|7", ""]
    assert class_keys(failures, np.array([0, 2]), "prediction").tolist() == ["7", "7"]


def test_centring_without_its_column_is_refused_in_one_line():
    failures = from_arrays(np.zeros((4, 8, 8), np.uint8), {"label": [0, 1, 0, 1]})
    check_center(make_features("pixels", center="label"), failures)
    with pytest.raises(SpecError, match=r"^pixels\(center=pair\) .* no 'prediction' column\. Add it") as error:
        check_center(make_features("pixels", center="pair"), failures)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def grouped():
    images, groups = pattern_images(n_per=12, groups=3, size=32)
    return from_arrays(images, {"label": groups % 2, "root_cause": [f"c{g}" for g in groups]})


def test_centring_reuses_the_cached_features_and_is_recorded(grouped, tmp_path):
    from rca_gpu.features.extract import extract_features

    context = ExtractionContext(grouped, torch.device("cpu"), batch_size=16)
    plain = extract_features(make_features("pixels", image_size=8), context, cache_dir=tmp_path)
    centred = extract_features(make_features("pixels", image_size=8, center="label"), context, cache_dir=tmp_path)
    assert centred.from_cache == plain.n == 36  # nothing extracted twice
    assert len(list(tmp_path.glob("features-*"))) == 1
    labels = torch.as_tensor(grouped.table["label"].to_numpy()[plain.positions])
    for value in (0, 1):
        rows = labels == value
        torch.testing.assert_close(centred.matrix[rows], plain.matrix[rows] - plain.matrix[rows].mean(0))
    assert centred.info["center"] == {"by": "label", "classes": 2, "small_classes_on_global_mean": 0,
                                      "rows_on_global_mean": 0, "min_class_size": 10}


def test_backbone_grid_pooling_keeps_where_things_are():
    from rca_gpu.features.backbones import BackboneExtractor

    images = np.zeros((2, 64, 64, 3), np.uint8)
    images[0, :, :32] = 255  # bright left half
    images[1, :, 32:] = 255  # bright right half: the same content, the other side
    failures = from_arrays(images, {"i": [0, 1]})
    context = ExtractionContext(failures, torch.device("cpu"), batch_size=2)
    common = {"weights": "none", "image_size": 64, "normalize": False}

    def extract(**params):
        torch.manual_seed(0)  # weights=none draws random weights: the same ones for every variant
        return run_extractor(BackboneExtractor, make_features("mobilenet_v2", **common, **params), context)

    _, pooled = extract()
    extractor, grid = extract(pool="grid2")
    assert pooled.shape == (2, 1280) and grid.shape == (2, 1280 * 4)
    assert extractor.describe()["pool"] == "grid2" and extractor.describe()["layer"].startswith("features")
    cells = grid.view(2, 1280, 2, 2)
    assert (cells[0, :, :, 0] - cells[0, :, :, 1]).abs().sum() > 0  # the grid tells left from right
    # a 1 x 1 grid of the same map is the global average the network itself pools to
    _, one = extract(pool="grid1")
    torch.testing.assert_close(one, pooled, rtol=1e-4, atol=1e-4 * float(pooled.abs().max()))


def test_grid_pooling_of_a_layer_without_a_map_is_refused(grouped):
    from rca_gpu.features.backbones import BackboneExtractor

    context = ExtractionContext(grouped, torch.device("cpu"))
    spec = make_features("mobilenet_v2", "flatten", weights="none", pool="grid2", image_size=64)
    with pytest.raises(SpecError, match=r"pool=grid2\) pools a spatial feature map .* layer 'flatten' gives \(1280,\)"):
        BackboneExtractor(spec, context).prepare()


def test_run_json_and_the_report_say_which_representation_ran_and_why(grouped, tmp_path):
    from rca_gpu.pipeline import run

    spec = build_run_spec(pipeline="pixels(image_size=8,center=label)+pca(n_components=3)+kmeans(k=3)", device="cpu",
                          workers=0, plot_embedding=False, stability=0)
    result = run(spec, grouped, tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["representation"]["centring"] == "on the mean of each label"
    assert info["representation"]["why"].startswith("named in the pipeline (the default is ")
    assert info["features"]["center"]["by"] == "label"
    report = (tmp_path / "run" / "report.html").read_text()
    assert 'id="representation"' in report and "on the mean of each label" in report
    assert result.run_info["representation"]["features"] == "pixels(center=label,image_size=8)"
    line = report[report.index('id="representation"'):]
    line = line[:line.index("</div>")]
    assert "pixels(center=label,image_size=8)" in line and "named in the pipeline (the default is " in line


def test_the_reports_representation_line_escapes_every_value(grouped, tmp_path):
    from rca_gpu.pipeline import run
    from rca_gpu.report.build import build_report

    spec = build_run_spec(pipeline="pixels(image_size=8)+pca(n_components=3)+kmeans(k=3)", device="cpu",
                          workers=0, plot_embedding=False, stability=0)
    run(spec, grouped, tmp_path / "run")
    info_path = tmp_path / "run" / "run.json"
    info = json.loads(info_path.read_text())
    info["representation"] = {key: f"<b>{key}</b> & <script>x</script>" for key in
                              ("features", "layer", "pooling", "centring", "why")}
    info_path.write_text(json.dumps(info))
    page = build_report(tmp_path / "run").path.read_text()
    line = page[page.index('id="representation"'):]
    line = line[:line.index("</div>")]
    for key in ("features", "pooling", "centring", "why"):
        assert f"&lt;b&gt;{key}&lt;/b&gt; &amp; &lt;script&gt;x&lt;/script&gt;" in line
    assert "<script>x" not in page and "<b>features" not in page


def test_the_default_representation_says_it_was_chosen_by_measurement():
    from rca_gpu.spec import DEFAULT_PIPELINE

    described = describe(parse_pipeline(DEFAULT_PIPELINE).features)
    assert described["why"].startswith("the default representation") and "RESULTS.md" in described["why"]


def test_the_study_runs_the_new_options(grouped, tmp_path):
    from rca_gpu.studies import make_plan, run_study

    plan = make_plan(["pixels(image_size=8)", "pixels(image_size=8,center=label)"], ["pca"], ["kmeans"],
                     has_dut=False)
    table = run_study(build_run_spec(device="cpu", workers=0, plot_embedding=False), grouped, tmp_path, plan)
    assert (table["status"] == "ok").all() and len(table) == 2
    assert set(table["features"]) == {"pixels(image_size=8)", "pixels(center=label,image_size=8)"}
    assert len(list((tmp_path / "cache").glob("features-*"))) == 1  # the centred set reuses the plain one


def _clusters_holding(labels: np.ndarray, share: float = 0.9) -> int:
    """The fewest clusters that together hold ``share`` of ``labels`` (noise counts against); 0 if none can."""
    counts = np.sort(np.bincount(labels[labels >= 0]))[::-1] if (labels >= 0).any() else np.zeros(0, int)
    if counts.sum() < share * len(labels):
        return 0
    return int(np.searchsorted(np.cumsum(counts), share * len(labels)) + 1)


def _planted_spread(own: int, seed: int = 0, noise: float = 1.5, own_scale: float = 3.0):
    """Features that encode the class first (as a pretrained network's do): 8 classes far apart, a cause spread
    over every class (40 images each), and 3 causes of one class each (``own`` images in classes 0, 1, 2)."""
    rng = np.random.default_rng(seed)
    dims, classes = 24, 8
    class_offset = rng.normal(size=(classes, dims)) * 8.0
    spread_offset, own_offsets = rng.normal(size=dims) * 3.0, rng.normal(size=(3, dims)) * own_scale
    rows, labels, causes = [], [], []
    for c in range(classes):
        rows += [class_offset[c] + spread_offset] * 40
        labels += [c] * 40
        causes += ["spread"] * 40
    for j in range(3):
        rows += [class_offset[j] + own_offsets[j]] * own
        labels += [j] * own
        causes += [f"own_{j}"] * own
    matrix = torch.tensor(np.asarray(rows) + rng.normal(size=(len(rows), dims)) * noise, dtype=torch.float32)
    return matrix, np.asarray([str(v) for v in labels], dtype=object), np.asarray(causes)


def _default_clusters(matrix):
    from rca_gpu.engine.device import resolve_device
    from rca_gpu.engine.knn import knn_graph
    from rca_gpu.spec import make_cluster, make_reduce
    from rca_gpu.tuning import select

    device = resolve_device("cpu")
    graph = knn_graph(matrix, 30, device)
    return np.asarray(select(matrix, graph, make_reduce("umap"), make_cluster("dbscan"), device, seed=0).labels)


@pytest.mark.quality
def test_a_cause_spread_over_every_class_stays_whole_once_features_are_centred_on_their_class():
    """The default clustering splits a cause that affects every class into one cluster per class (features that
    encode the class first); centred on the class mean it keeps it whole (at most 2 clusters hold 90 % of it)
    while the causes of one class are a small part of their class. When a class's own cause dominates it, the
    class mean leans towards that cause and the class's images of the spread cause are centred elsewhere than
    the other classes': the limit docs/whitebox.md states, kept here so that a change to it is seen."""
    from sklearn.metrics import adjusted_rand_score

    matrix, keys, causes = _planted_spread(own=10)
    spread = causes == "spread"
    plain = _default_clusters(matrix)
    centred = _default_clusters(center_features(matrix, keys)[0])
    assert _clusters_holding(plain[spread]) >= 4  # split by class
    assert 1 <= _clusters_holding(centred[spread]) <= 2
    assert adjusted_rand_score(causes, centred) > adjusted_rand_score(causes, plain) + 0.2
    matrix, keys, causes = _planted_spread(own=60)  # each own cause 60 % of its class
    dominated = _default_clusters(center_features(matrix, keys)[0])
    assert _clusters_holding(dominated[causes == "spread"]) >= 3


def test_center_auto_takes_the_label_else_the_prediction_else_nothing():
    from rca_gpu.features.represent import center_of

    spec = make_features("pixels", center="auto")
    with_label = from_arrays(np.zeros((2, 8, 8), np.uint8), {"label": [0, 1], "prediction": [1, 0]})
    with_prediction = from_arrays(np.zeros((2, 8, 8), np.uint8), {"prediction": [1, 0]})
    bare = from_arrays(np.zeros((2, 8, 8), np.uint8), {"i": [0, 1]})
    assert center_of(spec, with_label) == "label"
    assert center_of(spec, with_prediction) == "prediction"
    assert center_of(spec, bare) is None
    check_center(spec, bare)  # never refused
    centring = describe(spec, {"center": {"by": "prediction"}})["centring"]
    assert centring == "on the mean of each prediction (center=auto)"
    assert describe(spec, {})["centring"] == "none (center=auto)"
