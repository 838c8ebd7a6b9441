"""End-to-end runs: every input row accounted for, outputs complete and reproducible, cache reused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import add_bad_files, pattern_images, write_pngs
from sklearn.metrics import adjusted_rand_score

from rca_gpu.data.sources import from_arrays
from rca_gpu.errors import TooFewImagesError
from rca_gpu.pipeline import order_labels, run
from rca_gpu.runfolder import open_run
from rca_gpu.spec import build_run_spec


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("failures")
    images, labels = pattern_images(n_per=25, groups=4)
    paths = write_pngs(folder / "imgs", images, labels)
    bad = add_bad_files(folder / "imgs", paths[0])
    return folder, labels, bad


def _spec(pipeline: str, **kw):
    return build_run_spec(pipeline=pipeline, device="cpu", workers=0, **kw)


@pytest.mark.quality
def test_run_accounts_for_every_row_and_finds_the_groups(image_folder, tmp_path):
    folder, labels, bad = image_folder
    result = run(_spec("pixels+pca+kmeans"), folder, tmp_path / "out")
    clusters = pd.read_parquet(tmp_path / "out" / "clusters.parquet")
    assert len(clusters) == len(labels) + len(bad)  # count in == count out
    assert list(clusters.columns[:5]) == ["id", "path", "cluster", "status", "reason"]
    rejected = clusters[clusters.status == "rejected"]
    rejected = rejected.set_index(rejected.path.str.rsplit("/", n=1).str[-1])
    assert set(rejected.index) == set(bad)
    for name, reason in bad.items():
        assert reason in rejected.loc[name, "reason"]
    good = clusters[clusters.status != "rejected"]
    planted = good.path.str.extract(r"/g(\d)_")[0].astype(int)
    assert adjusted_rand_score(planted, good.cluster) >= 0.95
    embedding = pd.read_parquet(tmp_path / "out" / "embedding.parquet")
    assert {"id", "cluster", "x", "y"} <= set(embedding.columns) and len(embedding) == len(good)
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["counts"] == {"input_rows": 103, "usable": 100, "rejected": 3, "clustered": 100, "noise": 0,
                              "clusters": 4}
    resolved = info["resolved_pipeline"]
    assert resolved.startswith("pixels+pca(n_components=") and "kmeans(k=4)" in resolved
    assert {"features", "knn", "reduce_cluster", "write"} <= set(info["seconds"])
    assert {"torch", "numpy", "scikit-learn"} <= set(info["versions"])
    assert info["device"]["torch_device"] == "cpu" and info["seed"] == 0
    assert result.n_clusters == 4
    folder = open_run(tmp_path / "out")  # every output carries the run's id
    assert folder.run_id == info["run_id"]
    assert len(folder.clusters()) == len(clusters) and len(folder.embedding()) == len(good)


def test_rerun_is_reproducible_and_reuses_cached_features(image_folder, tmp_path):
    folder, _, _ = image_folder
    spec = _spec("pixels+umap(n_neighbors=15,n_components=2,min_dist=0.0)+hdbscan", seed=5)
    first = run(spec, folder, tmp_path / "a", cache_dir=tmp_path / "cache")
    second = run(spec, folder, tmp_path / "b", cache_dir=tmp_path / "cache")
    assert first.run_info["features"]["from_cache"] == 0
    assert second.run_info["features"]["from_cache"] == 100
    np.testing.assert_array_equal(first.clusters.cluster, second.clusters.cluster)
    assert first.run_info["resolved_pipeline"] == second.run_info["resolved_pipeline"]


def test_resolved_pipeline_reproduces_the_clustering(image_folder, tmp_path):
    folder, _, _ = image_folder
    first = run(_spec("pixels+pca+dbscan"), folder, tmp_path / "a")
    again = run(_spec(first.run_info["resolved_pipeline"]), folder, tmp_path / "b")
    assert again.run_info["tuning"]["n_trials"] == 1
    np.testing.assert_array_equal(first.clusters.cluster, again.clusters.cluster)


def test_interrupted_extraction_resumes_from_shards(tmp_path, monkeypatch):
    from rca_gpu.features import extract

    images, labels = pattern_images(n_per=10, groups=3)
    failures = from_arrays(images, {"label": labels})
    monkeypatch.setattr(extract, "SHARD_ROWS", 8)
    spec = _spec("pixels+none+kmeans", batch_size=4)
    run(spec, failures, tmp_path / "a", cache_dir=tmp_path / "cache")
    shards = sorted((tmp_path / "cache").glob("features-*/part-*.parquet"))
    assert len(shards) >= 3
    shards[-1].unlink()  # as if the run had stopped before its last shard
    again = run(spec, failures, tmp_path / "b", cache_dir=tmp_path / "cache")
    assert 0 < again.run_info["features"]["from_cache"] < 30
    np.testing.assert_array_equal(
        pd.read_parquet(tmp_path / "a" / "clusters.parquet").cluster, again.clusters.cluster)


def test_too_few_images_is_a_clear_error(tmp_path):
    images, labels = pattern_images(n_per=1, groups=2)
    with pytest.raises(TooFewImagesError, match="kmeans clusterer needs at least 3 usable images; there are 2 "):
        run(_spec("pixels+none+kmeans"), from_arrays(images), tmp_path / "out")


def test_only_bad_images_is_a_clear_error(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    (folder / "b.png").write_text("nope")
    (folder / "c.png").write_text("nope")
    with pytest.raises(TooFewImagesError,
                       match="needs at least 3 usable images; there are 0 usable images.*clusters.parquet"):
        run(_spec("pixels+none+kmeans"), folder, tmp_path / "out")
    written = pd.read_parquet(tmp_path / "out" / "clusters.parquet")  # every row, with its reason
    assert written["status"].tolist() == ["rejected"] * 3
    assert written["reason"].str.contains("empty file|not a readable image").all()


def test_outputs_are_written_atomically(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from rca_gpu import outputs

    def crash(table, where, **kwargs):
        with open(where, "wb") as handle:
            handle.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        outputs.write_parquet(tmp_path / "clusters.parquet", pd.DataFrame({"a": [1]}))
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file


def test_order_labels_by_size():
    labels = np.array([5, 5, 2, 2, 2, -1, 7])
    assert order_labels(labels).tolist() == [1, 1, 0, 0, 0, -1, 2]


@pytest.mark.quality
@pytest.mark.slow
def test_default_pipeline_with_imagenet_mobilenet(image_folder, tmp_path):
    """The paper's best pipeline, on real ImageNet weights (offline, from the torch cache)."""
    folder, labels, _ = image_folder
    result = run(_spec("mobilenet_v2(image_size=96)+umap+dbscan"), folder, tmp_path / "out")
    info = result.run_info
    assert info["features"]["weights"] == "IMAGENET1K_V1" and info["features"]["dims"] == 1280
    assert info["reduce"]["used_precomputed_knn"]
    good = result.clusters[result.clusters.status != "rejected"]
    planted = good.path.str.extract(r"/g(\d)_")[0].astype(int)
    assert adjusted_rand_score(planted, good.cluster) >= 0.9


def test_heatmap_extractor_without_model_is_a_clear_error(tmp_path):
    images, labels = pattern_images(n_per=3, groups=2)
    with pytest.raises(Exception, match="needs the DNN under test: pass --model PATH"):
        run(_spec("lrp+none+ward"), from_arrays(images), tmp_path / "out")


@pytest.mark.quality
def test_the_plot_starts_from_the_chosen_embedding_and_keeps_its_groups(monkeypatch):
    from types import SimpleNamespace

    from conftest import planted_blobs

    import rca_gpu.pipeline as pipeline
    from rca_gpu.engine.device import cpu_device
    from rca_gpu.engine.registry import reduce

    x, planted = planted_blobs(n_per=50, centers=4, dim=8, seed=6)
    chosen = np.asarray(reduce(x, "umap", {"n_neighbors": 15, "n_components": 10, "min_dist": 0.0}, cpu_device(),
                               seed=0)[0], dtype=np.float32)
    plane = pipeline._principal_plane(chosen)
    centred = chosen - chosen.mean(axis=0)
    assert plane.shape == (200, 2) and np.var(plane[:, 0]) >= np.var(centred @ np.ones(10) / np.sqrt(10)) - 1e-6
    monkeypatch.setattr(pipeline, "PLOT_EPOCHS_FROM", 100)  # the warm start runs above this many images
    plot, source = pipeline.plot_embedding(SimpleNamespace(matrix=x, n=len(x)), chosen, None, cpu_device(), 0, True)
    assert plot.shape == (200, 2) and "principal plane" in source
    centroids = np.stack([plot[planted == g].mean(axis=0) for g in range(4)])
    assert (np.linalg.norm(plot[:, None] - centroids[None], axis=2).argmin(axis=1) == planted).all()
