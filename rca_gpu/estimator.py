"""A scikit-learn estimator over features you already have: ``FailureClusterer(...).fit(X).labels_``.

It runs the same stages as ``rca-gpu run --features``: the kNN graph computed once, the reducer and the
clusterer with their open hyper-parameters chosen automatically (:mod:`rca_gpu.tuning`), labels numbered by
cluster size (0 = largest, -1 = noise). Nothing is written to disk.

    >>> from rca_gpu import FailureClusterer
    >>> model = FailureClusterer("umap+dbscan", random_state=0).fit(X)     # X: (n_images, n_features)
    >>> model.labels_, model.embedding_, model.selection_["chosen"]

It follows scikit-learn's estimator contract (``__init__`` stores its arguments, ``get_params`` /
``set_params`` / ``clone`` work, fitted attributes end in ``_``) and passes ``sklearn.utils.estimator_checks``
except the checks listed in :data:`EXPECTED_FAILED_CHECKS`, each with its reason. Unlike the command line,
which rejects rows holding NaN or inf with a reason and clusters the rest, ``fit`` refuses such input with
a ValueError, as scikit-learn estimators do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin

#: Checks of sklearn.utils.estimator_checks this estimator is known not to pass, and why: none (scikit-learn
#: 1.9). Passed to ``check_estimator(..., expected_failed_checks=...)`` by the tests. scikit-learn itself skips
#: ``check_array_api_input`` unless SCIPY_ARRAY_API=1 is set; the estimator takes NumPy-convertible input only
#: (it moves data to the GPU itself, through rca_gpu.engine.device), so it does not claim array API support.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


class FailureClusterer(ClusterMixin, BaseEstimator):
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
        return self

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
        tags.non_deterministic = not isinstance(self.random_state, (int, np.integer))
        return tags
