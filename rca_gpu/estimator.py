"""A scikit-learn estimator over features you already have: ``FailureClusterer(...).fit(X).labels_``.

It runs the same stages as ``rca-gpu run --features``: the kNN graph computed once, the reducer and the
clusterer with their open hyper-parameters chosen automatically (:mod:`rca_gpu.tuning`), labels numbered by
cluster size (0 = largest, -1 = noise). Nothing is written to disk.

    >>> from rca_gpu import FailureClusterer
    >>> model = FailureClusterer("umap+dbscan", random_state=0).fit(X)     # X: (n_images, n_features)
    >>> model.labels_, model.embedding_, model.selection_["chosen"]
    >>> model.predict(X_new), model.transform(X_new)                       # new points, same features

``predict`` is the open-set assignment of ``rca-gpu assign`` (:mod:`rca_gpu.catalogue.assign`) against the
fit's reference set: a new point takes the cluster its nearest reference points vote for, or -1 (noise) when
it lies farther from that cluster's reference points than the radius calibrated on them. ``transform`` places
new points in the fit's embedding the way a run places the images outside its search sample
(:mod:`rca_gpu.tuning.extend`).

It follows scikit-learn's estimator contract (``__init__`` stores its arguments, ``get_params`` /
``set_params`` / ``clone`` work, fitted attributes end in ``_``) and passes ``sklearn.utils.estimator_checks``
except the checks listed in :data:`EXPECTED_FAILED_CHECKS`, each with its reason. Unlike the command line,
which rejects rows holding NaN or inf with a reason and clusters the rest, ``fit`` refuses such input with
a ValueError, as scikit-learn estimators do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin

#: Checks of sklearn.utils.estimator_checks this estimator is known not to pass, and why: none (scikit-learn
#: 1.9). Passed to ``check_estimator(..., expected_failed_checks=...)`` by the tests. scikit-learn itself skips
#: ``check_array_api_input`` unless SCIPY_ARRAY_API=1 is set; the estimator takes NumPy-convertible input only
#: (it moves data to the GPU itself, through rca_gpu.engine.device), so it does not claim array API support.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


class FailureClusterer(ClusterMixin, TransformerMixin, BaseEstimator):
    """Cluster failure features so that each cluster shows one root cause.

    Parameters
    ----------
    pipeline : str, default="umap+dbscan"
        REDUCER+CLUSTERER, with optional fixed parameters, e.g. ``"pca(n_components=20)+kmeans(k=8)"``,
        ``"umap(n_components=10)+hdbscan"``, ``"none+ward"`` (see ``rca-gpu pipelines``). Parameters left out
        are chosen automatically. A feature stage is not allowed: X is the features.
    device : {"auto", "cpu", "gpu"}, default="auto"
        Where the kNN graph, the reducer and the clusterer run (rca_gpu.engine.device.resolve_device).
    random_state : int, RandomState instance or None, default=0
        Seed of UMAP, K-means and the sampled scores; an int makes ``fit`` reproducible.
    knn_k : int, default=30
        Neighbours per point in the shared kNN graph (widened when a stage needs more).
    knn_backend : {"auto", "torch", "faiss", "faiss-hnsw", "kdtree", "cuvs", "cuml"}, default="auto"
        Neighbour search backend.
    sample_size : int, default=5000
        Above this many rows the hyper-parameters are chosen on a seeded sample of this size and the choice
        is extended to every row (rca_gpu.tuning), as ``rca-gpu run --sample-size``.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,), int64
        Cluster of each row: 0 is the largest cluster, -1 is noise.
    embedding_ : ndarray of shape (n_samples, k), float32
        The space the chosen clusterer saw (the reducer's output; X itself for ``none``).
    selection_ : dict
        The automatic choice: criterion, chosen reducer and clusterer parameters, every trial, seconds.
    resolved_pipeline_ : str
        The pipeline with every chosen value written in; fitting it again reproduces ``labels_``.
    n_clusters_ : int
        Number of clusters (noise excluded).
    n_features_in_ : int
        Number of features seen during fit.
    reference_ : dict
        What ``predict`` compares new points with: the number of reference points, their dimension and the
        open-set radius in feature units (as run.json's ``catalogue.reference``).

    Raises
    ------
    ValueError (rca_gpu.SpecError)
        On ``fit``: an unknown stage or parameter, a pipeline with a feature stage, a bad option value.
    ValueError
        On ``fit``: X is not a finite 2-D numeric array, or has fewer rows than the clusterer needs.
    """

    def __init__(self, pipeline: str = "umap+dbscan", *, device: str = "auto", random_state: Any = 0,
                 knn_k: int = 30, knn_backend: str = "auto", sample_size: int = 5000) -> None:
        self.pipeline = pipeline
        self.device = device
        self.random_state = random_state
        self.knn_k = knn_k
        self.knn_backend = knn_backend
        self.sample_size = sample_size

    def fit(self, X: Any, y: Any = None) -> FailureClusterer:
        """Choose the reducer and clusterer settings on ``X`` (n_samples, n_features) and label every row.

        ``y`` is ignored (present for API consistency). Returns ``self``.
        """
        from sklearn.utils.validation import validate_data

        from rca_gpu.engine.device import as_numpy, resolve_device
        from rca_gpu.features.precomputed import features_from_array
        from rca_gpu.pipeline import feature_graph, order_labels, resolved_pipeline
        from rca_gpu.tuning import select

        spec = self._run_spec()
        X = validate_data(self, X, dtype=[np.float32, np.float64],
                          ensure_min_samples=spec.pipeline.cluster.card.min_images)
        device = resolve_device(spec.device)
        features = features_from_array(X, device=device)
        graph = feature_graph(features, spec, spec.pipeline.reduce, device)
        selection = select(features.matrix, graph, spec.pipeline.reduce, spec.pipeline.cluster, device,
                           seed=spec.seed, sample_size=spec.sample_size)
        labels = order_labels(np.asarray(selection.labels, dtype=np.int64))
        self.labels_ = labels
        self.embedding_ = np.asarray(as_numpy(selection.embedding), dtype=np.float32)
        self.selection_ = {**selection.to_dict(), "seconds": dict(selection.seconds)}
        self.resolved_pipeline_ = str(resolved_pipeline(spec.pipeline, features.info, selection))
        self.n_clusters_ = int(len(np.unique(labels[labels >= 0])))
        self._keep_for_new_points(np.asarray(X, dtype=np.float32), labels, selection, spec)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """The fitted cluster of each row of ``X`` (m, n_features_in_), or -1 (noise) for an unknown one.

        The open-set assignment of ``rca-gpu assign`` (:class:`rca_gpu.catalogue.assign.Assigner`): the
        ``K_VOTE`` (10) nearest of the fit's reference points (at most 256 seeded-random members of each
        cluster) vote for a cluster; the row is noise when its distance to that cluster's nearest reference
        point exceeds the radius, the split-conformal 99 % quantile of the same distance held out on the
        reference points. Rows of the fit itself come back to their cluster (a fit's noise row may join the
        cluster around it). Distances are Euclidean in the features, float32.

        Returns (m,) int64. Raises ValueError when ``X`` is not a finite 2-D array of n_features_in_ columns,
        NotFittedError before ``fit``.
        """
        from sklearn.utils.validation import check_is_fitted, validate_data

        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        if self._assigner is None:  # the fit found no cluster: every row is noise
            return np.full(X.shape[0], -1, dtype=np.int64)
        table = self._assigner.assign(np.asarray(X, dtype=np.float32))
        return np.where(table["status"].to_numpy() == "assigned", table["cause"].to_numpy(), -1).astype(np.int64)

    def transform(self, X: Any) -> np.ndarray:
        """The position of each row of ``X`` (m, n_features_in_) in the fit's embedding: (m, k) float32.

        As a run places the images outside its search sample (:mod:`rca_gpu.tuning.extend`): a reducer that
        is not fitted on every image (UMAP) places each row among its nearest fitted rows in the features
        (the reducer card's ``place``: umap-learn's ``transform``, the membership-weighted mean of its
        neighbours' positions; the search's sample when the fit ran on one, else every row of the fit);
        ``none`` returns ``X``; another cheap reducer (PCA) applies the linear map it was on the fit's rows,
        recovered by least squares from them (exact for a projection: the rows of the fit come back to
        ``embedding_``).

        Raises ValueError on bad ``X`` (as ``predict``), NotFittedError before ``fit``, NotImplementedError
        for a plug-in reducer that is neither linear nor able to place points.
        """
        from sklearn.utils.validation import check_is_fitted, validate_data

        from rca_gpu.engine.device import resolve_device
        from rca_gpu.engine.knn import nearest_rows
        from rca_gpu.engine.registry import reducer_card

        check_is_fitted(self)
        X = np.asarray(validate_data(self, X, dtype=[np.float32, np.float64], reset=False), dtype=np.float32)
        card = reducer_card(self._reduce[0])
        if card.identity:
            return X
        if card.cheap:
            if self._linear is None:
                raise NotImplementedError(f"reducer '{card.name}' of FailureClusterer is not a linear map of the "
                                          "features and cannot place new points: transform needs a reducer "
                                          "that places points (umap) or a linear one (pca, none).")
            mean, weights, offset = self._linear
            return ((X.astype(np.float64) - mean) @ weights + offset).astype(np.float32)
        base, base_points = self._base
        k = max(card.graph_k(self._reduce[1]), 1)
        indices, distances = nearest_rows(base, X, k, resolve_device(self.device))
        return card.place(base_points, indices, distances, self._reduce[1], self._reduce[2])

    def _keep_for_new_points(self, X: np.ndarray, labels: np.ndarray, selection, spec) -> None:
        """What predict and transform need: the reference set with its radius, the rows among which new points
        are placed, and, for a cheap reducer, its linear map."""
        from rca_gpu.catalogue.assign import Assigner
        from rca_gpu.catalogue.reference import ALPHA, K_VOTE, calibrate, choose_rows, radius

        rows = choose_rows(labels, seed=spec.seed)
        reference, causes = X[rows], labels[rows]
        self._assigner = Assigner(reference, causes, calibrate(reference, causes)) if len(rows) else None
        self.reference_ = {"images": int(len(rows)), "dims": int(X.shape[1]), "k_vote": K_VOTE, "alpha": ALPHA,
                           "radius": round(radius(self._assigner.scores), 6) if self._assigner else None}
        reducer = spec.pipeline.reduce.card
        self._reduce = (reducer.name, dict(selection.reduce_params), spec.seed)
        base = selection.extension.sample if selection.extension is not None else np.arange(len(X))
        self._base = (X[base], self.embedding_[base])
        self._linear = _linear_map(X, self.embedding_) if reducer.cheap and not reducer.identity else None

    def _run_spec(self):
        """The RunSpec this estimator's parameters describe; SpecError (a ValueError) when invalid."""
        from sklearn.utils import check_random_state

        from rca_gpu.errors import SpecError
        from rca_gpu.spec import PRECOMPUTED, build_run_spec

        if isinstance(self.random_state, (int, np.integer)) and not isinstance(self.random_state, bool):
            seed = int(self.random_state)
            if seed < 0:
                raise SpecError(f"The 'random_state' parameter of FailureClusterer must be an int >= 0, a "
                                f"RandomState or None. Got {self.random_state!r} instead.")
        else:
            seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        spec = build_run_spec(pipeline=self.pipeline, device=self.device, seed=seed, knn_k=self.knn_k,
                              knn_backend=self.knn_backend, sample_size=self.sample_size)
        if spec.pipeline.features.name != PRECOMPUTED:
            raise SpecError(
                f"The 'pipeline' parameter of FailureClusterer must be REDUCER+CLUSTERER: X is the features. Got "
                f"{self.pipeline!r}; write it without '{spec.pipeline.features}+', e.g. 'umap+dbscan'."
            )
        return spec

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float32"]  # transform returns float32 whatever X was
        tags.non_deterministic = not isinstance(self.random_state, (int, np.integer))
        return tags


def _linear_map(x: np.ndarray, embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(mean (d,), weights (d, k), offset (k,)) with embedding = (x - mean) @ weights + offset, by least squares
    in float64, or None
    when no linear map reproduces ``embedding`` (relative residual above 1e-3). For PCA the minimum-norm
    solution is the projection itself: its components lie in the row space of the centred data."""
    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(axis=0)
    target = np.asarray(embedding, dtype=np.float64)
    target = target - target.mean(axis=0)
    weights, *_ = np.linalg.lstsq(x64 - mean, target, rcond=None)
    scale = max(float(np.abs(target).max()), 1e-12)
    if float(np.abs((x64 - mean) @ weights - target).max()) > 1e-3 * scale:
        return None
    return mean, weights, np.asarray(embedding, dtype=np.float64).mean(axis=0)
