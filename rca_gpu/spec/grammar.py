"""The grammar of pipeline strings and the stage specs they parse into.

A pipeline string names one algorithm per stage, joined by ``+``::

    pipeline  := [features "+"] reducer "+" clusterer
    features  := name ["@" layer] [params]        e.g. mobilenet_v2, lrp@conv3, resnet18@layer3
    reducer   := name [params]                    umap, pca, none (rca_gpu.engine.registry.reducers())
    clusterer := name [params]                    dbscan, hdbscan, kmeans, ward (registry.clusterers())
    params    := "(" key "=" value {"," key "=" value} ")"

Without a feature stage (``umap+dbscan``) the pipeline runs on features the user brings
(``rca-gpu run --features FILE``, :class:`rca_gpu.FailureClusterer`); it stands for ``precomputed+umap+dbscan``.

Examples: ``mobilenet_v2+umap+dbscan``, ``pixels+pca(n_components=20)+kmeans(k=8)``,
``mobilenet_v2+umap(n_neighbors=30,n_components=10)+hdbscan(min_cluster_size=15)``.

A hyper-parameter left out is chosen automatically (see :mod:`rca_gpu.tuning`). Each value is checked against
its algorithm card's rule here, when the spec is made.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rca_gpu.engine import registry
from rca_gpu.engine.params import Param, show_value
from rca_gpu.errors import SpecError
from rca_gpu.spec.params import PRECOMPUTED, ExtractorInfo, extractors

if TYPE_CHECKING:  # pragma: no cover
    from rca_gpu.engine.cards import ClusterCard, ReducerCard

#: Said after a refused ``select`` value.
SELECT_FIX = (" Every rule scores the candidates by silhouette; 'max' takes the highest score. Leave select out "
              "for the default, 'merged'.")


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    layer: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:  # params is a dict: hash the canonical text instead
        return hash(str(self))

    def __str__(self) -> str:
        return self.name + (f"@{self.layer}" if self.layer else "") + _format_params(self.params)

    @property
    def info(self) -> ExtractorInfo:
        return extractors()[self.name]


@dataclass(frozen=True)
class _StageSpec:
    """A reducer or clusterer: its name and the parameters the spec fixes (the rest are tuned)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:  # params is a dict: hash the canonical text instead
        return hash((type(self).__name__, str(self)))

    def __str__(self) -> str:
        return self.name + _format_params(self.params)


class ReduceSpec(_StageSpec):
    """A reducer (umap | pca | none, or a plug-in's), with fixed parameters."""

    @property
    def card(self) -> ReducerCard:
        """Everything about the algorithm (rca_gpu.engine.cards)."""
        return registry.reducer_card(self.name)


class ClusterSpec(_StageSpec):
    """A clusterer (dbscan | hdbscan | kmeans | ward, or a plug-in's), with fixed parameters."""

    @property
    def card(self) -> ClusterCard:
        """Everything about the algorithm (rca_gpu.engine.cards)."""
        return registry.cluster_card(self.name)

    @property
    def fixed(self) -> dict[str, Any]:
        """The algorithm's parameters the pipeline fixes (without ``select``, the rule)."""
        return {k: v for k, v in self.params.items() if k != "select"}


@dataclass(frozen=True)
class PipelineSpec:
    features: FeatureSpec
    reduce: ReduceSpec
    cluster: ClusterSpec

    def __str__(self) -> str:
        return f"{self.features}+{self.reduce}+{self.cluster}"

    @classmethod
    def parse(cls, text: str) -> PipelineSpec:
        return parse_pipeline(text)


_LAYER = re.compile(r"[A-Za-z0-9_.\[\]\-/]+")
_STAGE = re.compile(r"^(?P<name>[A-Za-z0-9_\-]+)(?:@(?P<layer>[A-Za-z0-9_.\[\]\-/]+))?(?:\((?P<params>[^()]*)\))?$")


def _split_stages(text: str) -> list[str]:
    """Split on '+' outside parentheses."""
    return split_outside_parens(text, "+")


def split_outside_parens(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside parentheses; parts are stripped."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _parse_value(raw: str) -> Any:
    raw = raw.strip()
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw.strip("'\"")


def _parse_params(raw: str | None, where: str) -> dict[str, Any]:
    if not raw:
        return {}
    params: dict[str, Any] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise SpecError(f"Cannot read parameter {item.strip()!r} of {where}: write key=value, e.g. {where}(k=8).")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in params:
            raise SpecError(
                f"The parameter {key!r} of {where} is given twice ({key}={show_value(params[key])}, "
                f"{key}={value.strip()}). "
                "Keep one."
            )
        params[key] = _parse_value(value)
    return params


def _validate_params(owner: str, params: Mapping[str, Any], allowed: Mapping[str, Param], *,
                     tuned: bool = False) -> dict[str, Any]:
    fix = " Set it within that range, or leave it out to have it chosen automatically." if tuned else ""
    clean = {}
    for key, value in params.items():
        if key not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise SpecError(f"{owner} has no parameter {show_value(key)}. It accepts: {names}.")
        clean[key] = allowed[key].check(owner, key, value, fix=SELECT_FIX if key == "select" else fix)
    return clean


def make_features(name: str, layer: str | None = None, /, **params: Any) -> FeatureSpec:
    known = extractors()
    if name not in known:
        raise registry.unknown_name("feature extractor", name, known)
    info = known[name]
    if layer is not None and (not isinstance(layer, str) or not _LAYER.fullmatch(layer)):
        raise SpecError(
            f"The layer of extractor '{name}' must be a layer name (letters, digits, '_', '.', '-', '[]'), "
            f"e.g. features.14. Got {show_value(layer)} instead."
        )
    if layer and not info.has_layers:
        raise SpecError(f"The '{name}' extractor has no layers to choose; drop '@{layer}'.")
    pool = params.get("pool")
    if isinstance(pool, str) and pool.startswith("grid") and getattr(info.params.get("pool"), "kind", None) is int:
        params["pool"] = int(pool[4:]) if pool[4:].isdigit() else pool  # pool=gridN is pool=N for the DUT's maps
    return FeatureSpec(name, layer, _validate_params(f"extractor '{name}'", params, info.params))


def make_reduce(name: str, /, **params: Any) -> ReduceSpec:
    """A ReduceSpec with checked parameters (SpecError naming the reducer, the parameter, its rule)."""
    card = registry.reducer_card(name)
    return ReduceSpec(name, _validate_params(f"reducer '{name}'", params, card.params, tuned=True))


def make_cluster(name: str, /, **params: Any) -> ClusterSpec:
    """A ClusterSpec with checked parameters (``select`` among the card's rules)."""
    card = registry.cluster_card(name)
    return ClusterSpec(name, _validate_params(f"clusterer '{name}'", params, card.all_params, tuned=True))


def parse_pipeline(text: str) -> PipelineSpec:
    """Parse ``[features[@layer][(k=v)]+]reducer[(k=v)]+clusterer[(k=v)]``."""
    if not isinstance(text, str):
        raise SpecError(
            f"The pipeline must be a string FEATURES+REDUCER+CLUSTERER, e.g. \"mobilenet_v2+umap+dbscan\". "
            f"Got {show_value(text)} instead."
        )
    if not text.strip():
        raise SpecError("The pipeline is empty. Write it as FEATURES+REDUCER+CLUSTERER, e.g. mobilenet_v2+umap+dbscan.")
    _check_parentheses(text)
    stages = _split_stages(text.strip())
    if len(stages) == 2 and re.split(r"[@(]", stages[0])[0].strip().lower() in registry.reducers():
        stages = [PRECOMPUTED, *stages]  # REDUCER+CLUSTERER: over features the user brings
    if len(stages) != 3:
        raise SpecError(
            f"The pipeline {text!r} has {len(stages)} stage(s); it needs three joined by '+': "
            "FEATURES+REDUCER+CLUSTERER, e.g. mobilenet_v2+umap+dbscan (or REDUCER+CLUSTERER, e.g. umap+dbscan, "
            "over features passed with --features)."
        )
    f, r, c = (_match_stage(stage) for stage in stages)
    features = make_features(f["name"].lower(), f["layer"], **_parse_params(f["params"], f["name"]))
    if r["layer"] or c["layer"]:
        raise SpecError("Only the feature stage takes '@layer'.")
    reduce = make_reduce(r["name"].lower(), **_parse_params(r["params"], r["name"]))
    cluster = make_cluster(c["name"].lower(), **_parse_params(c["params"], c["name"]))
    return PipelineSpec(features, reduce, cluster)


def parse_feature_stage(text: str) -> FeatureSpec:
    """Parse one feature stage, ``name[@layer][(k=v,...)]`` (e.g. the study's ``--features`` entries).

    Raises
    ------
    SpecError
        The text is not one stage, or names an unknown extractor, layer or parameter.
    """
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"A feature stage must be NAME, NAME@LAYER or NAME(key=value,...). Got {show_value(text)} "
                        "instead.")
    _check_parentheses(text)
    match = _match_stage(text.strip())
    return make_features(match["name"].lower(), match["layer"], **_parse_params(match["params"], match["name"]))


def _match_stage(stage: str) -> re.Match[str]:
    match = _STAGE.match(stage)
    if not match:
        raise SpecError(f"Cannot read the pipeline stage {stage!r}. Write NAME, NAME@LAYER or NAME(key=value,...).")
    return match


def _check_parentheses(text: str) -> None:
    """SpecError naming the first unmatched parenthesis (before the text is split into stages)."""
    opened: list[int] = []
    for position, char in enumerate(text):
        if char == "(":
            if opened:
                raise SpecError(
                    f"The pipeline {text!r} opens a parenthesis inside another at position {position + 1}; "
                    "parameters are one flat list: NAME(key=value,key=value)."
                )
            opened.append(position)
        elif char == ")":
            if not opened:
                raise SpecError(
                    f"The pipeline {text!r} has a ')' at position {position + 1} that closes nothing. "
                    "Write parameters as NAME(key=value,...)."
                )
            opened.pop()
    if opened:
        raise SpecError(
            f"The pipeline {text!r} has a '(' at position {opened[-1] + 1} that is never closed. "
            "Add the ')' after the parameters, e.g. kmeans(k=8)."
        )


def _format_params(params: Mapping[str, Any]) -> str:
    if not params:
        return ""
    shown = (f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(params.items()))
    return "(" + ",".join(shown) + ")"
