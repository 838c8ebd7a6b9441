"""FailureClusterer: scikit-learn's estimator checks, parameters, and agreement with rca-gpu run --features."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
from conftest import planted_blobs
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score
from sklearn.utils import estimator_checks
from sklearn.utils.estimator_checks import parametrize_with_checks

from rca_gpu import FailureClusterer
from rca_gpu.errors import SpecError
from rca_gpu.estimator import EXPECTED_FAILED_CHECKS

# scikit-learn >= 1.6 takes the expected failures here; older versions read the _xfail_checks tag instead.
_EXPECTED = ({"expected_failed_checks": lambda estimator: EXPECTED_FAILED_CHECKS}
             if "expected_failed_checks" in inspect.signature(parametrize_with_checks).parameters else {})


# k fixed: one K-means per fit keeps the ~50 checks fast; the search itself is exercised below.
@parametrize_with_checks([FailureClusterer("pca+kmeans(k=3)", device="cpu")], **_EXPECTED)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


# The default pipeline runs eight UMAP fits per call, so it gets the checks that look at what fit finds; the
# input-validation checks run the same code for every pipeline and are covered above.
UMAP_CHECKS = ("check_clustering", "check_estimators_dtypes", "check_fit2d_1feature", "check_estimators_pickle",
               "check_fit_check_is_fitted")


@pytest.mark.parametrize("name", UMAP_CHECKS)
def test_default_pipeline_passes_the_clustering_checks(name):
    estimator = FailureClusterer(device="cpu")
    getattr(estimator_checks, name)("FailureClusterer", estimator)


@pytest.mark.quality
def test_params_clone_and_set_params():
    model = FailureClusterer("pca+kmeans(k=3)", device="cpu", random_state=4, knn_k=12)
    assert model.get_params() == {"pipeline": "pca+kmeans(k=3)", "device": "cpu", "random_state": 4, "knn_k": 12,
                                  "knn_backend": "auto", "sample_size": 5000}
    twin = clone(model)
    assert twin is not model and twin.get_params() == model.get_params()
    x, y = planted_blobs(n_per=30, centers=3, dim=6)
    labels = twin.fit(x).labels_
    assert adjusted_rand_score(y, labels) == 1.0 and twin.n_clusters_ == 3 and not hasattr(model, "labels_")
    twin.set_params(pipeline="none+kmeans(k=2)")
    assert twin.fit(x).n_clusters_ == 2 and twin.embedding_.shape == x.shape


@pytest.mark.quality
def test_fit_results_and_their_reproduction():
    x, y = planted_blobs(n_per=30, centers=4, dim=8)
    model = FailureClusterer("pca+dbscan", device="cpu").fit(x)
    assert model.labels_.dtype == np.int64 and model.labels_.shape == (120,)
    assert adjusted_rand_score(y, model.labels_) >= 0.95
    sizes = np.bincount(model.labels_[model.labels_ >= 0])
    assert list(sizes) == sorted(sizes, reverse=True)  # 0 = largest cluster
    assert model.embedding_.dtype == np.float32 and model.embedding_.shape[0] == 120
    assert model.selection_["chosen"]["cluster"]["eps"] > 0 and model.selection_["n_trials"] > 1
    assert model.resolved_pipeline_.startswith("precomputed+pca(n_components=")
    again = FailureClusterer(model.resolved_pipeline_, device="cpu").fit(x)
    assert again.selection_["n_trials"] == 1
    np.testing.assert_array_equal(again.labels_, model.labels_)


def test_a_pipeline_with_a_feature_stage_is_refused_on_fit_not_in_init():
    model = FailureClusterer("mobilenet_v2+umap+dbscan")  # __init__ only stores
    with pytest.raises(SpecError, match="must be REDUCER\\+CLUSTERER: X is the features"):
        model.fit(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="Unknown clusterer 'spectral'"):
        FailureClusterer("pca+spectral").fit(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="'random_state' parameter of FailureClusterer must be an int >= 0"):
        FailureClusterer(random_state=-1).fit(np.zeros((10, 2)))


def test_the_estimator_and_the_command_line_agree(tmp_path):
    from typer.testing import CliRunner

    from rca_gpu.cli import app

    x, _ = planted_blobs(n_per=25, centers=4, dim=10, seed=3)
    np.save(tmp_path / "x.npy", x)
    result = CliRunner().invoke(app, ["run", "--features", str(tmp_path / "x.npy"), "--out", str(tmp_path / "out"),
                                      "--pipeline", "pca+dbscan", "--device", "cpu", "--seed", "7", "--quiet"])
    assert result.exit_code == 0, result.output
    clusters = pd.read_parquet(tmp_path / "out" / "clusters.parquet")
    model = FailureClusterer("pca+dbscan", device="cpu", random_state=7).fit(x)
    np.testing.assert_array_equal(clusters["cluster"].to_numpy(), model.labels_)


@pytest.mark.quality
def test_above_the_sample_size_the_choice_is_extended_to_every_row():
    x, y = planted_blobs(n_per=100, centers=4, dim=8, seed=5)
    model = FailureClusterer("pca+kmeans", device="cpu", sample_size=150).fit(x)
    assert model.labels_.shape == (400,) and adjusted_rand_score(y, model.labels_) == 1.0


def _far_points(x: np.ndarray, m: int = 20, seed: int = 3) -> np.ndarray:
    """Points far outside every planted blob: 30x the data's span away from its centre."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(m, x.shape[1]))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    span = float(np.ptp(x, axis=0).max())
    return (x.mean(axis=0) + 30 * span * direction).astype(np.float32)


@pytest.mark.quality
@pytest.mark.parametrize("pipeline", ["umap+dbscan", "pca+kmeans", "none+hdbscan"])
def test_predict_sends_known_points_back_and_far_points_to_noise(pipeline):
    x, y = planted_blobs(n_per=60, centers=4, dim=8, seed=2)
    model = FailureClusterer(pipeline, device="cpu").fit(x)
    assert adjusted_rand_score(y, model.labels_) == 1.0
    # points near the fitted ones (within a tenth of a blob's spread) come back to their cluster
    near = x + np.random.default_rng(1).normal(scale=0.03, size=x.shape).astype(np.float32)
    np.testing.assert_array_equal(model.predict(near), model.labels_)
    np.testing.assert_array_equal(model.predict(x), model.labels_)
    assert (model.predict(_far_points(x)) == -1).all()
    assert model.reference_["images"] == len(x) and model.reference_["radius"] > 0


@pytest.mark.quality
@pytest.mark.parametrize("pipeline", ["umap+dbscan", "pca+kmeans", "none+kmeans"])
def test_transform_places_fitted_rows_where_the_fit_put_them(pipeline):
    x, y = planted_blobs(n_per=60, centers=4, dim=8, seed=2)
    model = FailureClusterer(pipeline, device="cpu").fit(x)
    placed = model.transform(x)
    assert placed.shape == model.embedding_.shape and placed.dtype == np.float32
    np.testing.assert_allclose(placed, model.embedding_, atol=1e-3 * float(np.abs(model.embedding_).max()))
    # a new point near a blob lands inside that blob's region of the embedding
    near = x[::10] + np.random.default_rng(1).normal(scale=0.03, size=x[::10].shape).astype(np.float32)
    centroids = np.stack([model.embedding_[model.labels_ == c].mean(axis=0) for c in range(model.n_clusters_)])
    nearest = np.linalg.norm(model.transform(near)[:, None, :] - centroids[None], axis=2).argmin(axis=1)
    np.testing.assert_array_equal(nearest, model.labels_[::10])


@pytest.mark.quality
def test_predict_and_transform_after_a_fit_on_a_sample():
    x, y = planted_blobs(n_per=100, centers=4, dim=8, seed=5)
    model = FailureClusterer("umap+dbscan", device="cpu", sample_size=150).fit(x)
    assert adjusted_rand_score(y, model.labels_) == 1.0
    np.testing.assert_array_equal(model.predict(x), model.labels_)
    np.testing.assert_allclose(model.transform(x), model.embedding_, atol=1e-3 * float(np.abs(model.embedding_).max()))
    assert (model.predict(_far_points(x)) == -1).all()


def test_predict_and_transform_check_their_input():
    x, _ = planted_blobs(n_per=30, centers=3, dim=6, seed=0)
    model = FailureClusterer("pca+kmeans(k=3)", device="cpu")
    with pytest.raises(NotFittedError, match="not fitted"):
        model.predict(x)
    model.fit(x)
    with pytest.raises(ValueError, match="features"):
        model.predict(x[:, :4])
    with pytest.raises(ValueError, match="NaN|infinity"):
        model.transform(np.full_like(x, np.nan))
