"""Algorithm cards: everything that is true of one reducer or one clusterer, in one object.

A card holds its algorithm's parameters and their rules, the limits that depend on the number of images,
the fewest images it needs, the parameter that sets its granularity, its selection rules, its candidate
grid, its CPU implementation and GPU twins (by import path, imported only when a stage runs), how a choice
made on a sample extends to new points, and how a setting carries over to a resample. The spec, the search
(:mod:`rca_gpu.tuning`), the stability step and ``rca-gpu doctor`` ask the cards; none of them branches on an
algorithm's name. Adding a clusterer is one module with one card (see docs/plugins.md); every registered card
passes the conformance test (tests/test_cards.py).

The built-in cards live in :mod:`rca_gpu.engine.reduce` and :mod:`rca_gpu.engine.cluster`, one module per
algorithm; :mod:`rca_gpu.engine.registry` lists them with the plug-ins.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numpy as np

from rca_gpu.engine import dispatch
from rca_gpu.engine.device import Device, as_numpy, to_kind
from rca_gpu.engine.knn import KnnGraph, nearest_rows
from rca_gpu.engine.params import Param
from rca_gpu.errors import SpecError

#: The rules that choose among the candidate settings (rca_gpu.tuning); "merged" is the default. Every rule
#: scores candidates by silhouette: "max" takes the highest score. A card may add rules of its own ("knee").
SELECT_RULES = ("merged", "finest-peak", "max")
#: More clusters than this are more than a person reads as causes: candidate grids over a number of clusters
#: stop here, and the search's score penalises every cluster beyond it (rca_gpu.tuning.criteria).
MAX_CLUSTERS = 30


@dataclass(frozen=True)
class Twin:
    """One implementation of a card's algorithm, as the card declares it.

    ``target`` is the adapter class: a name in the card's own module ("SklearnDBSCAN") or a whole import
    path ("package.module:Class"). ``arrays``: the array kind it consumes ("numpy" | "torch" | "cupy");
    ``library``: what it runs on, for the log and ``rca-gpu doctor``; ``requires`` and ``always_refuses``
    as in :class:`rca_gpu.engine.dispatch.Implementation`.
    """

    target: str
    arrays: str
    library: str
    requires: str = ""
    always_refuses: bool = False


class Card:
    """What reducer and clusterer cards share: name, parameters, limits, implementations."""

    #: "reduce" | "cluster"
    stage: ClassVar[str] = ""
    #: the name written in pipeline strings
    name: ClassVar[str] = ""
    #: one line for `rca-gpu pipelines`
    summary: ClassVar[str] = ""
    #: the parameters a pipeline may fix, with their rules (the ones it leaves open are searched)
    params: ClassVar[Mapping[str, Param]] = {}
    #: parameter -> highest value for n images, for the parameters that the number of images bounds
    limits: ClassVar[Mapping[str, Callable[[int], int]]] = {}
    #: the CPU implementation (every card has one) and the GPU twins, tried in order
    cpu: ClassVar[Twin]
    gpu: ClassVar[tuple[Twin, ...]] = ()

    @property
    def implementations(self) -> tuple[dispatch.Implementation, ...]:
        """The dispatch rows of this card: its GPU twins in order, then its CPU implementation."""
        rows = [(twin, "gpu") for twin in self.gpu] + [(self.cpu, "cpu")]
        module = type(self).__module__
        return tuple(
            dispatch.Implementation(self.stage, self.name, backend,
                                    twin.target if ":" in twin.target else f"{module}:{twin.target}",
                                    twin.arrays, twin.requires, twin.library, twin.always_refuses)
            for twin, backend in rows
        )

    def data_limit(self, key: str, n: int, dims: int | None = None) -> int | None:
        """The highest value of parameter ``key`` that ``n`` images (of ``dims`` feature dimensions) allow,
        or None when the data does not bound it."""
        limit = self.limits.get(key)
        return None if limit is None else int(limit(n))

    #: the data limits also depend on the feature dimension (said in the message)
    limits_use_dims: ClassVar[bool] = False

    def build(self, device: Device, data: dict[str, int], *, seed: int = 0,
              **params: Any) -> dispatch.Adapter:
        """The adapter for ``device`` (GPU twin or CPU implementation; :func:`rca_gpu.engine.dispatch.build`)."""
        return dispatch.build(self.implementations, device, data=data, seed=seed, **params)


class ReducerCard(Card):
    """A dimensionality reducer: what the search, the extension to new points and the stability step need."""

    stage = "reduce"
    #: values tried for the parameters a pipeline leaves open (each combination once)
    grid: ClassVar[Mapping[str, tuple[Any, ...]]] = {}
    #: fitted on every image even when the search runs on a sample (cheap beside clustering): nothing is
    #: extended, and a run's fits of it do not set the number of stability resamples
    cheap: ClassVar[bool] = False
    #: the embedding is the features themselves: the feature kNN graph is the embedding's kNN graph
    identity: ClassVar[bool] = False

    def candidates(self, fixed: Mapping[str, Any], features: Any, *, seed: int = 0,
                   grid: Mapping[str, tuple[Any, ...]] | None = None) -> list[dict[str, Any]]:
        """Settings to try on ``features`` (n, d): the values ``fixed`` by the pipeline, each combination of
        ``grid`` (default :attr:`grid`) for the parameters it leaves open."""
        import itertools

        grid = self.grid if grid is None else grid
        axes = {key: (fixed[key],) if key in fixed else tuple(values) for key, values in grid.items()}
        out: list[dict[str, Any]] = []
        for combo in itertools.product(*axes.values()):
            params = {**dict(zip(axes, combo, strict=True)), **{k: v for k, v in fixed.items() if k not in axes}}
            params = self.fit_to(params, int(features.shape[0]))
            if params not in out:
                out.append(params)
        return out

    def fit_to(self, params: dict[str, Any], n: int) -> dict[str, Any]:
        """A searched setting as the adapters can run it on ``n`` points (values the user set were checked
        against n before, by :meth:`data_limit`)."""
        return params

    def search_graph_k(self, fixed: Mapping[str, Any]) -> int:
        """Neighbours per point the search's fits read from the feature kNN graph (0: none)."""
        return 0

    def graph_k(self, params: Mapping[str, Any]) -> int:
        """Neighbours per point one fit with ``params`` reads from the feature kNN graph (0: none)."""
        return 0

    def place(self, sample_points: np.ndarray, indices: np.ndarray, distances: np.ndarray,
              params: Mapping[str, Any], seed: int) -> np.ndarray:
        """Positions (m, c) float32 of new points in an embedding of the sample fitted with ``params``.

        ``sample_points`` (s, c): the sample's embedding; ``indices`` / ``distances`` (m, k): each new point's
        nearest sample points in the features. Only reducers that are not :attr:`cheap` are asked.
        """
        raise NotImplementedError(f"reducer '{self.name}' cannot place new points; it must be cheap")

    def reduce(self, x: Any, params: Mapping[str, Any], device: Device, *, knn: KnnGraph | None = None,
               seed: int = 0) -> tuple[Any, dict[str, Any]]:
        """Embed the rows of ``x`` (n, d). Returns (embedding in the adapter's array kind, description for
        run.json). The adapter reuses ``knn`` (the features' kNN graph) when it reads one (``uses_knn``)."""
        started = time.perf_counter()
        used_graph = []

        def fit(adapter: dispatch.Adapter) -> Any:
            kind = adapter.implementation.arrays
            data = to_kind(x, kind, torch_device=device.torch_device)
            graph = None
            if knn is not None and getattr(adapter, "uses_knn", False):
                graph = (
                    to_kind(knn.indices, kind, torch_device=device.torch_device),
                    to_kind(knn.distances, kind, torch_device=device.torch_device),
                )
            used_graph.append(graph is not None)
            return cast(dispatch.ReduceAdapter, adapter).fit_transform(data, knn=graph)

        adapter, embedding = dispatch.run(self.implementations, device, fit, seed=seed, **params,
                                          data={"n_samples": int(x.shape[0]), "n_features": int(x.shape[1])})
        info = {**adapter.describe(), "params": dict(params), "seconds": round(time.perf_counter() - started, 3),
                "dims": int(embedding.shape[1]), "used_precomputed_knn": used_graph[-1]}
        return embedding, info


class ClusterCard(Card):
    """A clusterer: what the spec, the search, the extension to new points and the stability step need."""

    stage = "cluster"
    #: fewest images it can work with; the pipeline checks this before running
    min_images: ClassVar[int] = 3
    #: the parameter that sets its granularity: fixed by the user, the 'merged' rule neither merges clusters
    #: nor attaches noise unless select=merged is written too
    granularity: ClassVar[str] = ""
    #: the granularity parameter is the number of clusters (K-means, Ward): a fixed value must not exceed the
    #: number of distinct images, and after the merge step the clusterer's own partition with the merged
    #: count replaces the merged one when the two agree
    counts_clusters: ClassVar[bool] = False
    #: the selection rules it accepts (rca_gpu.tuning): SELECT_RULES, plus "knee" where counts_clusters
    select_rules: ClassVar[tuple[str, ...]] = SELECT_RULES
    #: search grids it wants for a reducer's open parameters, by reducer name (else the reducer's own grid)
    reducer_grids: ClassVar[Mapping[str, Mapping[str, tuple[Any, ...]]]] = {}
    #: neighbours per point its candidate grid reads from the embedding's kNN graph (self included)
    graph_k: ClassVar[int] = 0

    @property
    def all_params(self) -> dict[str, Param]:
        """Its parameters and ``select``, the selection rule (one of :attr:`select_rules`)."""
        return {**self.params, "select": Param(str, "choice", self.select_rules)}

    def check_points(self, n: int) -> None:
        """Raise SpecError when the search would cluster more images (``n``) than the algorithm can."""

    def candidates(self, fixed: Mapping[str, Any], embedding_graph: Callable[[int], KnnGraph], n: int, *,
                   distinct: int | None = None) -> list[dict[str, Any]]:
        """Settings to try on one embedding of ``n`` images (``distinct`` of them distinct, when known).

        ``fixed``: the values the pipeline sets (never replaced); ``embedding_graph(k)``: the embedding's kNN
        graph with k neighbours per point (self first), computed once at the widest k asked.
        """
        raise NotImplementedError

    def label_candidates(self, embedding: Any, candidates: list[dict[str, Any]], device: Device, *,
                         seed: int = 0) -> tuple[list[tuple[dict[str, Any], np.ndarray]], Any]:
        """([(params, labels)] for every candidate on one embedding, state kept for :meth:`relabel`).

        The default clusters once per candidate; a card whose fits share work (Ward: one merge tree, cut at
        every k) overrides it.
        """
        return [(params, self.cluster(embedding, params, device, seed=seed)) for params in candidates], None

    def relabel(self, state: Any, embedding: Any, params: Mapping[str, Any], device: Device, *,
                seed: int = 0) -> np.ndarray:
        """Labels of another setting on the same embedding, reusing ``state`` from :meth:`label_candidates`."""
        return self.cluster(embedding, dict(params), device, seed=seed)

    def cluster(self, x: Any, params: Mapping[str, Any], device: Device, *, seed: int = 0) -> np.ndarray:
        """Labels (int64 NumPy, -1 = noise) for the rows of ``x`` (n, c)."""
        settings = {k: v for k, v in params.items() if k != "select"}

        def fit(adapter: dispatch.Adapter) -> np.ndarray:
            data = to_kind(x, adapter.implementation.arrays, torch_device=device.torch_device)
            return np.asarray(as_numpy(cast(dispatch.ClusterAdapter, adapter).fit_predict(data)), dtype=np.int64)

        _, labels = dispatch.run(self.implementations, device, fit, seed=seed, **settings,
                                 data={"n_samples": int(x.shape[0]), "n_features": int(x.shape[1])})
        return labels

    # ---------------------------------------------------------------------------------------------------
    # Extension of a choice made on a sample to new points (rca_gpu.tuning.extend)
    # ---------------------------------------------------------------------------------------------------

    def core_neighbours(self, params: Mapping[str, Any]) -> int | None:
        """m when :meth:`extend` needs each sample point's distance to its m-th nearest sample point (itself
        the first), else None."""
        return None

    def extend(self, params: Mapping[str, Any], sample_points: np.ndarray, raw_labels: np.ndarray,
               final_labels: np.ndarray, points: np.ndarray, device: Device,
               core_distances: np.ndarray | None = None) -> tuple[np.ndarray, str]:
        """Labels of new points from the clustering of the sample, in the space the clusterer saw.

        Parameters
        ----------
        params : the chosen setting.
        sample_points : (s, c) float32, the sample in the clustering space.
        raw_labels : (s,) the clusterer's own labels of the sample; final_labels : (s,) after the rule's merges.
        points : (m, c) float32, the new points in the same space.
        core_distances : (s,) each sample point's distance to its :meth:`core_neighbours`-th nearest sample
            point, when the card asks for it.

        Returns
        -------
        (labels (m,) int64 with -1 = noise, one line saying how they were assigned, for run.json). The
        default gives each point the cluster of the nearest centroid of the sample's clusters.
        """
        return nearest_centroid(sample_points, raw_labels, final_labels, points, device)

    # ---------------------------------------------------------------------------------------------------
    # Transfer of a setting to a resample (rca_gpu.catalogue.stability)
    # ---------------------------------------------------------------------------------------------------

    def resample_state(self, params: Mapping[str, Any], embedding: Any, device: Device, *,
                       feature_graph: KnnGraph | None = None, rows: np.ndarray | None = None) -> Any:
        """What :meth:`transfer` needs from the whole run's clustering space ``embedding`` (n, c), measured
        once before the resamples (None: nothing). ``feature_graph``: the features' kNN graph when the
        clustering space is the features; ``rows``: positions to estimate on, for large runs."""
        return None

    def transfer(self, params: Mapping[str, Any], embedding: Any, device: Device, state: Any) -> dict[str, Any]:
        """The setting for one resample whose clustering space is ``embedding``: by default the run's own
        values of :attr:`params`, as their type."""
        return {key: self.params[key].kind(value) for key, value in params.items() if key in self.params}


# ---------------------------------------------------------------------------------------------------------
# Extensions shared by several cards
# ---------------------------------------------------------------------------------------------------------


def nearest_centroid(sample_points: np.ndarray, raw_labels: np.ndarray, final_labels: np.ndarray,
                     points: np.ndarray, device: Device) -> tuple[np.ndarray, str]:
    """Each point gets the cluster of the nearest centroid of the sample's raw clusters, mapped to the final
    cluster that most of the raw cluster's members joined (arguments as in :meth:`ClusterCard.extend`)."""
    if len(points) == 0:
        return np.empty(0, dtype=np.int64), "nothing to assign"
    ids = np.unique(raw_labels[raw_labels >= 0])
    centroids = np.stack([sample_points[raw_labels == c].mean(axis=0) for c in ids]).astype(np.float32)
    to_final = np.array([np.bincount(final_labels[raw_labels == c] + 1).argmax() - 1 for c in ids])
    nearest, _ = nearest_rows(centroids, points, 1, device)
    return to_final[nearest[:, 0]], "nearest centroid of the sample's clusters"


def nearest_within(sample_points: np.ndarray, base: np.ndarray, radius: np.ndarray, final_labels: np.ndarray,
                   points: np.ndarray, device: Device) -> np.ndarray:
    """(m,) int64: the final label of the nearest sample point among ``base`` (positions in the sample) when
    the point lies within that sample point's ``radius`` (aligned with ``base``), else -1 (noise)."""
    labels = np.full(len(points), -1, dtype=np.int64)
    if base.size and len(points):
        nearest, distance = nearest_rows(sample_points[base], points, 1, device, low_dims_tree=True)
        inside = distance[:, 0] <= radius[nearest[:, 0]] * (1 + 1e-6)
        labels[inside] = final_labels[base[nearest[inside, 0]]]
    return labels


def check_fixed_count(card: ClusterCard, fixed: Mapping[str, Any], distinct: int, n: int) -> None:
    """A fixed number of clusters larger than the number of distinct images cannot be honoured.

    Raises
    ------
    SpecError
        Naming the parameter, the value, the number of distinct feature vectors and the fix.
    """
    k = fixed.get(card.granularity)
    if card.counts_clusters and k is not None and k > distinct:
        raise SpecError(
            f"The '{card.granularity}' parameter of {card.name} asks for {k} clusters, but the {n} images hold "
            f"only {distinct} distinct feature vectors. Set {card.granularity} to at most {distinct}, or leave "
            f"{card.granularity} out to choose it."
        )
