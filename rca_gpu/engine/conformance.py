"""The rules every algorithm card follows, as checks a plug-in's tests can run (like scikit-learn's
``check_estimator``)::

    from rca_gpu.engine.conformance import check_card
    check_card(MY_CARD)          # AssertionError naming the rule a card breaks

Each check runs the card on small planted data on the CPU: every parameter has a rule and every data limit a
parameter; candidates keep the parameters a pipeline fixes; a clusterer's choice extends to new points with
known labels or noise and carries to a resample with its own parameters; a reducer that is not cheap places new
points; a CPU implementation exists and runs; GPU twins resolve to a module file (they are imported only when a
stage runs on a GPU). tests/test_cards.py runs them over every registered card.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rca_gpu.engine.cards import SELECT_RULES, Card, ClusterCard, ReducerCard
from rca_gpu.engine.params import Param


def planted_points(n_per: int = 40, centres: int = 3, dims: int = 5, seed: int = 0) -> np.ndarray:
    """(n_per x centres, dims) float32: well separated Gaussian groups, for the checks."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(6.0 * c, 0.5, size=(n_per, dims)) for c in range(centres)]).astype(np.float32)


def valid_value(param: Param, high: int | None = None) -> Any:
    """A value ``param`` accepts, at most ``high`` (a data limit) when given."""
    if param.choices:
        return param.choices[0]
    if param.allowed:
        return param.allowed[0]
    if param.kind is bool:
        return True
    if param.kind is str:
        return "x"
    low, inclusive, top = param.bounds()
    if param.kind is int:
        whole = int(low if low is not None else 0) + (0 if inclusive else 1)
        whole = max(whole, 2) if top is None or top >= 2 else whole
        return min(whole, high) if high is not None else whole
    number = 0.5 if top is None or top >= 0.5 else float(top)
    return number if low is None or number > low else float(low) + 0.5


def graph_source(points: np.ndarray) -> Callable[[int], Any]:
    """k -> the exact kNN graph of ``points`` with k neighbours per point (self first), what a card's
    ``candidates`` is handed during the search."""
    from rca_gpu.engine.device import cpu_device
    from rca_gpu.engine.knn import knn_graph

    graph = knn_graph(points, min(len(points), 31), cpu_device())
    return lambda k: graph.first(min(k, graph.k))


def check_params(card: Card) -> None:
    """Every parameter is a Param with a rule that accepts a valid value; every data limit bounds a parameter
    and grows with n."""
    assert card.name and card.summary and card.stage in ("reduce", "cluster"), "a card needs name, summary, stage"
    for key, param in card.params.items():
        assert isinstance(param, Param), f"parameter {key!r} has no rule (not a Param)"
        assert param.kind in (int, float, str, bool), f"parameter {key!r}: kind {param.kind!r}"
        assert param.describe(), f"parameter {key!r}: its rule cannot be said"
        param.check(card.name, key, valid_value(param, card.data_limit(key, 1000)))
    assert set(card.limits) <= set(card.params), "a data limit bounds a parameter the card does not have"
    for key in card.limits:
        small, large = card.data_limit(key, 100), card.data_limit(key, 1000)
        assert small is not None and large is not None and small <= large, f"the limit of {key!r} shrinks with n"


def check_clusterer_rules(card: ClusterCard) -> None:
    """The granularity is a parameter, the selection rules include the shared ones (knee only for a count),
    the reducer grids name registered reducers and their parameters."""
    from rca_gpu.engine import registry

    assert card.granularity in card.params, f"granularity {card.granularity!r} is not a parameter"
    assert card.min_images >= 1, "min_images must be >= 1"
    assert set(SELECT_RULES) <= set(card.select_rules), f"select_rules must include {SELECT_RULES}"
    assert "knee" not in card.select_rules or card.counts_clusters, "the knee rule cuts a number of clusters"
    for reducer, grid in card.reducer_grids.items():
        assert reducer in registry.reducers(), f"a grid for an unknown reducer {reducer!r}"
        assert set(grid) <= set(registry.reducer_card(reducer).params), f"the {reducer} grid names other keys"


def check_clusterer_candidates(card: ClusterCard) -> None:
    """Candidates exist for an open setting and keep every value a pipeline fixes (one or two at a time)."""
    points = planted_points()
    n = len(points)
    graph = graph_source(points)
    assert card.candidates({}, graph, n, distinct=n), "no candidate for an open setting"
    for size in (1, 2):
        for keys in itertools.combinations(sorted(card.params), size):
            fixed = {k: valid_value(card.params[k], card.data_limit(k, n)) for k in keys}
            candidates = card.candidates(fixed, graph, n, distinct=n)
            assert candidates, f"no candidate with {fixed}"
            for candidate in candidates:
                assert {k: candidate.get(k) for k in fixed} == fixed, f"{candidate} replaces fixed {fixed}"
                assert set(candidate) <= set(card.params), f"{candidate} has keys that are not parameters"


def check_clusterer_runs_and_extends(card: ClusterCard) -> None:
    """The CPU implementation labels every row (int64, -1 = noise); an extension gives known labels or noise;
    a transferred setting has only the card's parameters and runs."""
    from rca_gpu.engine.device import cpu_device

    device = cpu_device()
    points = planted_points()
    sample, new = points[::2], points[1::2]
    graph = graph_source(sample)
    params = card.candidates({}, graph, len(sample), distinct=len(sample))[0]
    labels = card.cluster(sample, params, device, seed=0)
    assert labels.dtype == np.int64 and labels.shape == (len(sample),), "cluster() must give (n,) int64 labels"
    m = card.core_neighbours(params)
    core = None if m is None else graph(m).numpy()[1][:, m - 1]
    extended, how = card.extend(params, sample, labels, labels, new, device, core)
    assert extended.shape == (len(new),) and how, "extend() must give (m,) labels and say how"
    unknown = set(extended.tolist()) - set(labels[labels >= 0].tolist()) - {-1}
    assert not unknown, f"extend() gave labels the sample does not have: {sorted(unknown)}"
    transferred = card.transfer(params, sample, device, card.resample_state(params, points, device))
    assert set(transferred) <= set(card.params), f"transfer() gave keys that are not parameters: {transferred}"
    assert card.cluster(sample, transferred, device).shape == labels.shape


def check_reducer(card: ReducerCard) -> None:
    """Candidates keep fixed values; the CPU implementation embeds every row; a reducer that is not cheap
    places new points."""
    from rca_gpu.engine.device import cpu_device
    from rca_gpu.engine.knn import knn_graph

    device = cpu_device()
    points = planted_points()
    n = len(points)
    assert card.candidates({}, points, seed=0), "no candidate for an open setting"
    for key, param in card.params.items():
        fixed = {key: valid_value(param, card.data_limit(key, n, points.shape[1]))}
        for candidate in card.candidates(fixed, points, seed=0):
            assert candidate[key] == fixed[key], f"{candidate} replaces fixed {fixed}"
            assert set(candidate) <= set(card.params), f"{candidate} has keys that are not parameters"
    params = card.candidates({}, points, seed=0)[0]
    graph = knn_graph(points, 31, device)
    embedding, info = card.reduce(points, params, device, knn=graph, seed=0)
    assert embedding.shape[0] == n and info["backend"] == "cpu", "reduce() must embed every row on the CPU"
    if not card.cheap:
        sample = np.asarray(embedding, dtype=np.float32)
        placed = card.place(sample, graph.numpy()[0][:5], graph.numpy()[1][:5], params, 0)
        assert placed.shape == (5, sample.shape[1]) and np.isfinite(placed).all(), "place() must embed new points"


def check_implementations(card: Card) -> None:
    """One CPU implementation whose class loads; every row names this card; GPU twins resolve to a module file
    that defines their class (not imported here)."""
    from rca_gpu.engine.dispatch import load_target

    rows = card.implementations
    cpu = [row for row in rows if row.backend == "cpu"]
    assert len(cpu) == 1, "a card has exactly one CPU implementation"
    assert callable(load_target(cpu[0].target)), f"{cpu[0].target} is not a class"
    for row in rows:
        assert (row.stage, row.algorithm) == (card.stage, card.name), f"{row} belongs to another card"
        module, _, name = row.target.partition(":")
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin and spec.origin.endswith(".py"), f"{row.target}: no module file"
        assert f"class {name}" in Path(spec.origin).read_text(), f"{row.target}: no class {name} in {spec.origin}"


def checks_for(card: Card) -> list[Callable[[Any], None]]:
    """The checks that apply to ``card``."""
    common: list[Callable[[Any], None]] = [check_params, check_implementations]
    if isinstance(card, ClusterCard):
        return common + [check_clusterer_rules, check_clusterer_candidates, check_clusterer_runs_and_extends]
    return common + [check_reducer]


def check_card(card: Card) -> None:
    """Run every check that applies to ``card`` (AssertionError naming the first rule it breaks)."""
    for check in checks_for(card):
        check(card)
