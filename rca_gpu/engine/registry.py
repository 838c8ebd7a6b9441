"""The registered algorithm cards: the built-in reducers and clusterers, and those of installed plug-ins.

    from rca_gpu.engine import registry
    registry.cluster_card("dbscan").min_images          # 3
    registry.clusterers()                                # {"dbscan": <card>, "hdbscan": ..., ...}

Plug-ins add cards without a fork (docs/plugins.md):

- an installed package declares them as entry points in the groups ``rca_gpu.reducers`` and
  ``rca_gpu.clusterers`` (each entry point names a card object; its name is the card's name); they are loaded
  the first time the cards are listed, whatever any file says;
- code the user runs (``rca-gpu --plugin MODULE``, or a test) calls :func:`register`.

A data file (run.json, a manifest, a config) never names code to import: a run folder records the names of
its algorithms, and re-running it needs the plug-in installed.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import TYPE_CHECKING, Any

from rca_gpu.engine import dispatch
from rca_gpu.engine.cards import Card, ClusterCard, ReducerCard
from rca_gpu.engine.cluster import dbscan, hdbscan, kmeans, ward
from rca_gpu.engine.device import Device
from rca_gpu.engine.dispatch import Adapter, Implementation
from rca_gpu.engine.knn import KNN_IMPLEMENTATIONS
from rca_gpu.engine.reduce import none, pca, umap
from rca_gpu.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Iterable

log = logging.getLogger("rca_gpu")

#: Entry-point groups whose objects are cards, by stage.
ENTRY_POINT_GROUPS = {"reduce": "rca_gpu.reducers", "cluster": "rca_gpu.clusterers"}

_BUILT_IN: dict[str, list[Card]] = {
    "reduce": [umap.CARD, pca.CARD, none.CARD],
    "cluster": [dbscan.CARD, hdbscan.CARD, kmeans.CARD, ward.CARD],
}
_CARDS: dict[str, dict[str, Card]] = {stage: {card.name: card for card in cards} for stage, cards in _BUILT_IN.items()}
#: Plug-ins that failed to load: entry point -> why (said when a name they might hold is unknown).
_FAILED: dict[str, str] = {}
_entry_points_loaded = False


def register(card: Card, *, replace: bool = False) -> Card:
    """Add ``card`` (a :class:`ReducerCard` or :class:`ClusterCard` instance) to the registered cards.

    Raises
    ------
    SpecError
        Not a card, a card without a name, or a name already registered by another card (``replace=True``
        replaces it; a built-in card is never replaced).
    """
    if not isinstance(card, (ReducerCard, ClusterCard)):
        raise SpecError(f"A plug-in must register a ReducerCard or ClusterCard instance. Got {card!r} instead.")
    if not card.name or not card.name.replace("_", "").isalnum() or card.name != card.name.lower():
        raise SpecError(f"A card's name must be lower-case letters, digits and '_'. Got {card.name!r} instead.")
    table = _CARDS[card.stage]
    known = table.get(card.name)
    if known is not None and known is not card:
        built_in = any(known is c for c in _BUILT_IN[card.stage])
        if built_in or not replace:
            raise SpecError(f"A {card.stage} card named {card.name!r} is registered already "
                            f"({type(known).__module__}.{type(known).__name__}); give the new card another name.")
    table[card.name] = card
    return card


def unregister(stage: str, name: str) -> None:
    """Remove a plug-in's card (tests); built-in cards stay."""
    if any(card.name == name for card in _BUILT_IN[stage]):
        raise SpecError(f"The built-in {stage} card {name!r} cannot be removed.")
    _CARDS[stage].pop(name, None)


def load_entry_points() -> None:
    """Register the cards of every installed plug-in (entry points ``rca_gpu.reducers`` / ``rca_gpu.clusterers``),
    once. A plug-in that fails to load is logged and skipped, and named when its card is asked for."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for stage, group in ENTRY_POINT_GROUPS.items():
        for entry, loaded in entry_point_objects(group):
            try:
                if not isinstance(loaded, Card) or loaded.stage != stage or loaded.name != entry.name:
                    raise SpecError(f"it names {loaded!r}, not a {stage} card named {entry.name!r}")
                register(loaded)
            except SpecError as exc:
                _FAILED[f"{group}: {entry.name} = {entry.value}"] = str(exc)
                log.warning("plug-in %s = %s (%s) is not used: %s", entry.name, entry.value, group, exc)


def entry_point_objects(group: str) -> Iterable[tuple[metadata.EntryPoint, Any]]:
    """(entry point, loaded object) for each installed entry point of ``group`` that imports; one that does
    not import is logged and remembered for :func:`unknown_name`."""
    for entry in metadata.entry_points(group=group):
        try:
            yield entry, entry.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not stop the built-in algorithms
            _FAILED[f"{group}: {entry.name} = {entry.value}"] = f"{type(exc).__name__}: {exc}"
            log.warning("plug-in %s = %s (%s) does not import: %s: %s", entry.name, entry.value, group,
                        type(exc).__name__, exc)


def reducers() -> dict[str, ReducerCard]:
    """Every registered reducer card by name (built-in first, then plug-ins in the order they came)."""
    load_entry_points()
    return dict(_CARDS["reduce"])  # type: ignore[arg-type]


def clusterers() -> dict[str, ClusterCard]:
    """Every registered clusterer card by name (built-in first, then plug-ins in the order they came)."""
    load_entry_points()
    return dict(_CARDS["cluster"])  # type: ignore[arg-type]


def reducer_card(name: str) -> ReducerCard:
    """The reducer card called ``name``.

    Raises
    ------
    SpecError
        No such reducer: the known ones, and any plug-in that failed to load.
    """
    cards = reducers()
    if name not in cards:
        raise unknown_name("reducer", name, cards)
    return cards[name]


def cluster_card(name: str) -> ClusterCard:
    """The clusterer card called ``name`` (SpecError naming the known ones when there is none)."""
    cards = clusterers()
    if name not in cards:
        raise unknown_name("clusterer", name, cards)
    return cards[name]


def unknown_name(kind: str, name: str, known: Iterable[str]) -> SpecError:
    """The error for an unknown algorithm name: the known names, and the plug-ins that failed to load."""
    failed = "".join(f" The plug-in {where} failed to load: {why}." for where, why in _FAILED.items())
    return SpecError(
        f"Unknown {kind} {name!r} in the pipeline. Choose one of: {', '.join(sorted(known))} "
        f"(see `rca-gpu pipelines`; a plug-in's algorithm needs its package installed or --plugin MODULE).{failed}"
    )


def implementations() -> tuple[Implementation, ...]:
    """Every implementation row: the kNN backends, then each card's (GPU twins first, then its CPU one)."""
    rows = list(KNN_IMPLEMENTATIONS)
    for cards in (reducers(), clusterers()):
        for card in cards.values():
            rows.extend(card.implementations)
    return tuple(rows)


def implementations_of(stage: str, algorithm: str) -> tuple[Implementation, ...]:
    """The implementation rows of one algorithm ("knn" backends, or a card's).

    Raises
    ------
    SpecError
        No such algorithm in that stage.
    """
    if stage == "knn":
        rows = tuple(i for i in KNN_IMPLEMENTATIONS if i.algorithm == algorithm)
        if not rows:
            raise unknown_name("kNN backend", algorithm, sorted({i.algorithm for i in KNN_IMPLEMENTATIONS}))
        return rows
    card = reducer_card(algorithm) if stage == "reduce" else cluster_card(algorithm)
    return card.implementations


def build(stage: str, algorithm: str, device: Device, *, data: dict[str, int] | None = None,
          **params: Any) -> Adapter:
    """The adapter of ``algorithm`` on ``device`` (:func:`rca_gpu.engine.dispatch.build` over its rows)."""
    return dispatch.build(implementations_of(stage, algorithm), device, data=data, **params)


def planned_backend(stage: str, algorithm: str, device: Device) -> tuple[str, str]:
    """(backend, library) :func:`build` would pick for default settings (``rca-gpu doctor``)."""
    return dispatch.planned_backend(implementations_of(stage, algorithm), device)


def cluster(x: Any, name: str, params: dict[str, Any], device: Device, *, seed: int = 0) -> Any:
    """Labels (int64 NumPy, -1 = noise) of the rows of ``x`` by the clusterer ``name`` with ``params``."""
    return cluster_card(name).cluster(x, params, device, seed=seed)


def reduce(x: Any, name: str, params: dict[str, Any], device: Device, *, knn: Any = None,
           seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """(embedding, description) of the rows of ``x`` by the reducer ``name`` with ``params``."""
    return reducer_card(name).reduce(x, params, device, knn=knn, seed=seed)
