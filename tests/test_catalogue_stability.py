"""Cluster stability (clusterboot by subsetting): clean planted clusters are stable, arbitrary halves are not."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import planted_blobs

from rca_gpu.catalogue.stability import (
    DEFAULT_METHOD,
    MAX_RESAMPLES,
    MIN_RESAMPLES,
    SUMMARY_FILE,
    best_match_jaccard,
    clusterboot,
    default_resamples,
    run_stability,
    search_sample_of,
    subset_graph,
)
from rca_gpu.engine.device import cpu_device
from rca_gpu.engine.knn import knn_graph
from rca_gpu.engine.registry import cluster, reduce
from rca_gpu.errors import SpecError
from rca_gpu.runfolder import open_run
from rca_gpu.spec import build_run_spec

DEVICE = cpu_device()


def test_best_match_jaccard_by_hand():
    reference = np.array([0, 0, 0, 0, 1, 1, -1, 2])
    resample = np.array([5, 5, 7, 7, 7, 7, 7, -1])
    got = best_match_jaccard(reference, resample, 4)
    # cluster 0 {0,1,2,3}: vs 5 {0,1}: 2/4, vs 7 {2,3,4,5,6}: 2/7 -> 0.5
    # cluster 1 {4,5}: vs 7: 2/5; cluster 2 {7} is noise in the resample -> 0; cluster 3 absent -> NaN
    np.testing.assert_allclose(got[:3], [0.5, 0.4, 0.0])
    assert np.isnan(got[3])
    assert np.all(best_match_jaccard(reference, np.full(8, -1), 3) == [0.0, 0.0, 0.0])


def test_clusterboot_is_seeded_and_checks_its_arguments():
    x, _ = planted_blobs(n_per=20, centers=3, dim=4, spread=1.0)
    labels = cluster(x, "kmeans", {"k": 3}, DEVICE)

    def again(rows):
        return cluster(x[rows], "kmeans", {"k": 3}, DEVICE)

    first = clusterboot(labels, again, resamples=3, seed=4)
    second = clusterboot(labels, again, resamples=3, seed=4)
    np.testing.assert_array_equal(first.jaccard, second.jaccard)
    with pytest.raises(ValueError, match="resamples must be >= 1"):
        clusterboot(labels, again, resamples=0)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        clusterboot(labels, again, resamples=1, fraction=1.5)


def _dbscan_setting(points: np.ndarray) -> dict:
    _, distances = knn_graph(points, 11, DEVICE).numpy()
    return {"eps": float(np.quantile(distances[:, 10], 0.9)), "min_samples": 10}


@pytest.mark.quality
@pytest.mark.parametrize("reducer,params", [("none", {}), ("pca", {"n_components": 4})])
def test_clean_planted_clusters_are_stable_and_arbitrary_halves_are_not(reducer, params):
    x, planted = planted_blobs(n_per=60, centers=4, dim=8, spread=1.0)
    graph = knn_graph(x, 30, DEVICE)
    embedding = np.asarray(reduce(x, reducer, params, DEVICE)[0])
    setting = _dbscan_setting(embedding)
    # the reference clustering splits planted cluster 0 into two arbitrary halves (every other member)
    reference = planted.copy()
    members = np.flatnonzero(planted == 0)
    reference[members[::2]] = 4
    result = run_stability(x, graph, reference, reduce_name=reducer, reduce_params=params,
                           cluster_name="dbscan", cluster_params=setting, chosen_embedding=embedding,
                           device=DEVICE, seed=0, resamples=8)
    by_cluster = result.table.set_index("cluster")["stability"]
    assert by_cluster[[1, 2, 3]].min() >= 0.9  # clean planted clusters
    assert by_cluster[[0, 4]].max() < 0.6  # each half is about half of what the resamples find (0.5)
    assert set(result.table.loc[result.table["unstable"], "cluster"]) == {0, 4}
    assert result.info["resamples"] == 8 and result.info["fraction"] == 0.8
    assert (result.table["size"] == np.bincount(reference)).all()


@pytest.mark.quality
def test_a_half_split_along_a_coordinate_is_unstable_too():
    x, planted = planted_blobs(n_per=60, centers=3, dim=6, spread=1.0, seed=2)
    reference = planted.copy()
    members = np.flatnonzero(planted == 1)
    reference[members[x[members, 0] > np.median(x[members, 0])]] = 3
    result = run_stability(x, knn_graph(x, 30, DEVICE), reference, reduce_name="none", reduce_params={},
                           cluster_name="dbscan", cluster_params=_dbscan_setting(x), chosen_embedding=x,
                           device=DEVICE, resamples=6)
    stability = result.table.set_index("cluster")["stability"]
    assert stability[[0, 2]].min() >= 0.9 and stability[[1, 3]].max() < 0.6


@pytest.mark.quality
def test_umap_resamples_reuse_the_run_graph_and_keep_clean_clusters():
    x, planted = planted_blobs(n_per=50, centers=3, dim=8, spread=1.0, seed=1)
    params = {"n_neighbors": 15, "n_components": 2, "min_dist": 0.0}
    graph = knn_graph(x, 30, DEVICE)
    embedding, _ = reduce(x, "umap", params, DEVICE, knn=graph, seed=0)
    setting = _dbscan_setting(np.asarray(embedding))
    labels = cluster(embedding, "dbscan", setting, DEVICE)
    result = run_stability(x, graph, labels, reduce_name="umap", reduce_params=params, cluster_name="dbscan",
                           cluster_params=setting, chosen_embedding=embedding, device=DEVICE, resamples=3)
    assert result.table["stability"].min() >= 0.9
    assert 0 < result.info["dbscan_eps_quantile"] <= 1


def test_subset_graph_matches_an_exact_search_of_the_subset():
    x, _ = planted_blobs(n_per=40, centers=3, dim=5, spread=2.0)
    graph = knn_graph(x, 30, DEVICE, "torch")
    subset = np.sort(np.random.default_rng(0).choice(len(x), 96, replace=False))
    for k in (10, 30):  # k = 30 leaves most rows short of neighbours: they are searched again
        got = subset_graph(graph, subset, k, x[subset], DEVICE)
        exact_i, exact_d = knn_graph(x[subset], k, DEVICE, "torch").numpy()
        got_i, got_d = got.numpy()
        assert got_i.shape == (96, k)
        np.testing.assert_array_equal(got_i[:, 0], np.arange(96))
        np.testing.assert_allclose(got_d, exact_d, atol=1e-4)


def test_default_resamples_follow_the_search():
    class Trial:
        def __init__(self, reduce):
            self.reduce = reduce

    umap_trials = [Trial({"n_neighbors": n, "n_components": c}) for n in (15, 30) for c in (2, 10) for _ in range(18)]
    assert default_resamples("umap", umap_trials) == MIN_RESAMPLES == 10  # 4 UMAP fits: at least 10 resamples
    many = [Trial({"n_neighbors": n, "min_dist": d}) for n in range(2, 8) for d in (0.0, 0.1)]
    assert default_resamples("umap", many) == 12  # one per UMAP fit
    assert default_resamples("pca", [Trial({})] * 29) == MAX_RESAMPLES
    assert default_resamples("none", [Trial({})]) == MIN_RESAMPLES
    assert default_resamples("none", None) == MIN_RESAMPLES


@pytest.mark.quality
def test_a_run_writes_the_stability_summary_and_can_switch_it_off(catalogue_run, catalogue_images, tmp_path):
    folder = open_run(catalogue_run)
    summary = folder.table(SUMMARY_FILE)  # carries the run id
    assert list(summary.columns) == ["cluster", "size", "stability", "unstable", "resamples"]
    assert len(summary) == 3 and summary["stability"].min() >= 0.9 and not summary["unstable"].any()
    info = folder.info
    assert info["catalogue"]["stability"]["resamples"] == 4 and info["spec"]["stability"] == 4
    assert "stability" in info["seconds"]

    from rca_gpu.pipeline import run

    spec = build_run_spec(pipeline="pixels(image_size=16)+pca(n_components=5)+kmeans(k=3)", device="cpu",
                          workers=0, stability=0, cache_features=False)
    result = run(spec, catalogue_images / "run", tmp_path / "off")
    assert result.stability is None
    assert json.loads((tmp_path / "off" / "run.json").read_text())["catalogue"]["stability"] is None
    off = open_run(tmp_path / "off").table(SUMMARY_FILE)  # written all the same, under the run's id
    assert list(off.columns) == ["cluster", "size", "stability", "unstable", "resamples"]
    assert off["cluster"].tolist() == [0, 1, 2] and off["size"].sum() == len(result.clusters)
    assert off["stability"].isna().all() and off["unstable"].isna().all() and (off["resamples"] == 0).all()


@pytest.mark.parametrize("value", [-1, 1.5, True, 1001])
def test_bad_stability_values_are_refused(value):
    with pytest.raises(SpecError, match=r"'stability' option must be an int in \[0, 1000\]. Got .* Fix --stability"):
        build_run_spec(pipeline="pixels+pca+kmeans", stability=value)


def test_the_cluster_summary_shows_stability():
    from rca_gpu.pipeline import cluster_summary

    clusters = pd.DataFrame({"cluster": [0, 0, 1, -1], "status": ["clustered"] * 3 + ["noise"]})
    stability = pd.DataFrame({"cluster": [0, 1], "stability": [0.95, 0.41], "unstable": [False, True]})
    summary = cluster_summary(clusters, stability=stability).set_index("cluster")
    assert summary.loc[0, "stability"] == "0.95" and summary.loc[1, "stability"] == "0.41 unstable"
    assert summary.loc[-1, "stability"] == ""


@pytest.mark.quality
@pytest.mark.parametrize("merge_step", [False, True])
def test_stability_without_a_graph_of_all_images(merge_step):
    """Runs above the search's sample size keep no kNN graph of all images: stability builds one of its own
    sample (max_images) and scores clean planted clusters as stable, with or without the merge step."""
    x, planted = planted_blobs(n_per=60, centers=4, dim=8, spread=1.0)
    result = run_stability(x, None, planted, reduce_name="none", reduce_params={}, cluster_name="dbscan",
                           cluster_params=_dbscan_setting(x), chosen_embedding=x, device=DEVICE, resamples=4,
                           max_images=200, merge_step=merge_step)
    assert result.info["images"] == 200
    assert result.table["stability"].min() >= 0.9


@pytest.mark.quality
def test_resamples_go_through_the_merge_step_the_run_used(monkeypatch):
    """The clusterer cuts planted group 0 into arbitrary halves in every resample; the run's merge step joined
    them (the kNN graph does not separate halves of one group). Resamples merged the same way find the run's
    cluster again (stable); resamples left unmerged do not (unstable)."""
    from rca_gpu.engine.cluster.kmeans import KMeansCard

    x, planted = planted_blobs(n_per=60, centers=3, dim=6, spread=1.0, seed=2)
    row_of = {row.tobytes(): i for i, row in enumerate(np.asarray(x, dtype=np.float32))}

    def halves(card, points, params, device, seed=0):
        index = np.array([row_of[row.tobytes()] for row in np.asarray(points, dtype=np.float32)])
        labels = planted[index].copy()
        labels[(planted[index] == 0) & (index % 2 == 0)] = 3
        return labels

    monkeypatch.setattr(KMeansCard, "cluster", halves)
    common = dict(reduce_name="none", reduce_params={}, cluster_name="kmeans", cluster_params={"k": 4},
                  chosen_embedding=x, device=DEVICE, resamples=4)
    graph = knn_graph(x, 30, DEVICE)
    merged = run_stability(x, graph, planted, merge_step=True, **common).table.set_index("cluster")["stability"]
    plain = run_stability(x, graph, planted, merge_step=False, **common).table.set_index("cluster")["stability"]
    assert merged.min() >= 0.9
    assert plain[0] < 0.6 and plain[[1, 2]].min() >= 0.9


@pytest.mark.quality
def test_a_run_above_the_sample_size_scores_stability(tmp_path):
    """Above --sample-size the run keeps no graph of all images; the default stability still runs (it used to
    end the run in an AttributeError)."""
    import json

    from typer.testing import CliRunner

    from rca_gpu.cli import app

    x, planted = planted_blobs(n_per=100, centers=3, dim=8, spread=1.0)
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    result = CliRunner().invoke(app, ["run", "--features", str(tmp_path / "x.npy"), "--out", str(tmp_path / "out"),
                                      "-p", "pca(n_components=4)+dbscan", "--sample-size", "150", "--device", "cpu",
                                      "--no-report", "--quiet"])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["tuning"]["sample"]["size"] == 150
    assert info["catalogue"]["stability"]["resamples"] >= 2


@pytest.mark.parametrize("dims", [2, 24])
def test_eps_share_estimated_on_sample_rows_matches_the_full_share(dims):
    """Large runs estimate DBSCAN's eps share on the stability sample's rows (each against all points)
    instead of building the kNN graph of every point: the estimate is close to the full share."""
    from rca_gpu.engine.cluster.dbscan import eps_quantile
    from rca_gpu.engine.cluster.dbscan import kth_distance as _kth_distance

    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(0, 1, (3000, dims)), rng.normal(6, 0.3, (3000, dims))]).astype(np.float32)
    eps = float(np.quantile(_kth_distance(points, 5, DEVICE), 0.6))
    full = eps_quantile(points, eps, 5, DEVICE)
    rows = np.sort(rng.choice(len(points), 1500, replace=False))
    estimate = eps_quantile(points, eps, 5, DEVICE, rows=rows)
    assert abs(full - 0.6) < 0.01
    assert abs(estimate - full) < 0.05  # binomial sd at 1,500 rows: 0.013


@pytest.mark.quality
def test_the_default_resampling_agrees_with_full_clusterboot_on_planted_data():
    """The run's cheaper resampling (DEFAULT_METHOD: re-clustering the chosen UMAP embedding) against Hennig's
    method with UMAP refitted on every resample: the same unstable clusters (two arbitrary halves of a planted
    cluster), the clean ones stable under both, per-cluster stability correlated."""
    from scipy.stats import pearsonr

    x, planted = planted_blobs(n_per=60, centers=4, dim=8, spread=1.0, seed=3)
    params = {"n_neighbors": 15, "n_components": 10, "min_dist": 0.0}
    graph = knn_graph(x, 30, DEVICE)
    embedding, _ = reduce(x, "umap", params, DEVICE, knn=graph, seed=0)
    setting = _dbscan_setting(np.asarray(embedding))
    reference = planted.copy()
    members = np.flatnonzero(planted == 0)
    reference[members[::2]] = 4
    tables = {
        method: run_stability(x, graph, reference, reduce_name="umap", reduce_params=params,
                              cluster_name="dbscan", cluster_params=setting, chosen_embedding=embedding,
                              device=DEVICE, seed=0, resamples=10, method=method).table
        for method in ("refit", DEFAULT_METHOD)
    }
    assert DEFAULT_METHOD == "embedding"
    for table in tables.values():
        assert set(table.loc[table["unstable"], "cluster"]) == {0, 4}
        assert table.set_index("cluster")["stability"][[1, 2, 3]].min() >= 0.9
    assert pearsonr(tables["refit"]["stability"], tables[DEFAULT_METHOD]["stability"])[0] >= 0.9


@pytest.mark.quality
def test_resamples_of_a_sampled_search_come_from_its_sample():
    x, _ = planted_blobs(n_per=40, centers=3, dim=6, spread=1.0, seed=4)
    labels = cluster(x, "kmeans", {"k": 3}, DEVICE)
    sample = np.arange(0, 120, 2)
    graph = knn_graph(x[sample], 20, DEVICE)
    result = run_stability(x, None, labels, reduce_name="none", reduce_params={}, cluster_name="kmeans",
                           cluster_params={"k": 3}, chosen_embedding=x, device=DEVICE, resamples=3,
                           search_sample=(sample, graph))
    assert result.info["images"] == len(sample) and result.table["stability"].min() >= 0.9
    assert (result.table["size"] == np.bincount(labels)).all()  # sizes are the run's, not the sample's

    class Selection:
        extension = None

    assert search_sample_of(Selection()) is None
    with pytest.raises(ValueError, match="method must be one of"):
        run_stability(x, graph, labels, reduce_name="none", reduce_params={}, cluster_name="kmeans",
                      cluster_params={"k": 3}, chosen_embedding=x, device=DEVICE, resamples=1, method="bogus")
