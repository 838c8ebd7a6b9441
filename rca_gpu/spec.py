"""Pipeline specifications: parse, validate, and serialise.

A pipeline string names one algorithm per stage, joined by ``+``::

    pipeline  := [features "+"] reducer "+" clusterer
    features  := name ["@" layer] [params]        e.g. mobilenet_v2, lrp@conv3, resnet18@layer3
    reducer   := ("umap" | "pca" | "none") [params]
    clusterer := ("dbscan" | "hdbscan" | "kmeans" | "ward") [params]
    params    := "(" key "=" value {"," key "=" value} ")"

Without a feature stage (``umap+dbscan``) the pipeline runs on features the user brings
(``rca-gpu run --features FILE``, :class:`rca_gpu.FailureClusterer`); it stands for ``precomputed+umap+dbscan``.

Examples: ``mobilenet_v2+umap+dbscan``, ``pixels+pca(n_components=20)+kmeans(k=8)``,
``mobilenet_v2+umap(n_neighbors=30,n_components=10)+hdbscan(min_cluster_size=15)``.

A hyper-parameter left out is chosen automatically (see :mod:`rca_gpu.tuning`). Everything here is plain
data: no torch, no numpy, so that parsing and ``--help`` stay instant.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rca_gpu.errors import SpecError

# --------------------------------------------------------------------------------------------------
# What each stage accepts. Values are the parameter's type; validation lives in one place below.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One tunable parameter: its type and the rule it must satisfy."""

    kind: type
    rule: str = "any"  # "positive", "non_negative", "at_least_2", "fraction", "choice"
    choices: tuple[str, ...] = ()

    def check(self, owner: str, name: str, value: Any) -> Any:
        def fail(expect: str) -> SpecError:
            return SpecError(f"The '{name}' parameter of {owner} must be {expect}. Got {value!r} instead.")

        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise fail("an int")
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise fail("a number")
            value = float(value)
        elif self.kind is str:
            if not isinstance(value, str):
                raise fail("a string")
        elif self.kind is bool:
            if not isinstance(value, bool):
                raise fail("true or false")
        rules = {
            "positive": (lambda v: v > 0, "> 0"),
            "non_negative": (lambda v: v >= 0, ">= 0"),
            "at_least_2": (lambda v: v >= 2, ">= 2"),
            "at_least_1": (lambda v: v >= 1, ">= 1"),
            "fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        }
        if self.rule in rules:
            ok, text = rules[self.rule]
            if not ok(value):
                raise fail(f"{'an int' if self.kind is int else 'a number'} {text}")
        if self.rule == "choice" and value not in self.choices:
            raise fail("one of " + ", ".join(repr(c) for c in self.choices))
        return value


@dataclass(frozen=True)
class ExtractorInfo:
    """What the CLI and the spec need to know about an extractor without importing it."""

    target: str  # "package.module:Class", imported lazily by rca_gpu.features.create_extractor
    summary: str
    params: Mapping[str, Param] = field(default_factory=dict)
    needs_dut: bool = False  # needs the DNN under test (--model)
    has_layers: bool = False  # accepts "@layer"


_IMAGE_PARAMS = {
    "image_size": Param(int, "at_least_1"),
    "weights": Param(str),
    "normalize": Param(bool),
}

EXTRACTORS: dict[str, ExtractorInfo] = {
    "pixels": ExtractorInfo(
        "rca_gpu.features.pixels:PixelExtractor",
        "raw pixels, resized and flattened (baseline)",
        {"image_size": Param(int, "at_least_1"), "normalize": Param(bool)},
    ),
    "mobilenet_v2": ExtractorInfo(
        "rca_gpu.features.backbones:BackboneExtractor",
        "torchvision MobileNetV2, ImageNet weights (available offline)",
        _IMAGE_PARAMS,
        has_layers=True,
    ),
    "resnet18": ExtractorInfo(
        "rca_gpu.features.backbones:BackboneExtractor",
        "torchvision ResNet-18, ImageNet weights",
        _IMAGE_PARAMS,
        has_layers=True,
    ),
    "resnet50": ExtractorInfo(
        "rca_gpu.features.backbones:BackboneExtractor",
        "torchvision ResNet-50, ImageNet weights",
        _IMAGE_PARAMS,
        has_layers=True,
    ),
    "vgg16": ExtractorInfo(
        "rca_gpu.features.backbones:BackboneExtractor",
        "torchvision VGG16 (the paper's backbone), ImageNet weights",
        _IMAGE_PARAMS,
        has_layers=True,
    ),
    # White-box and learned features (need the DNN under test, or train on the source images).
    "dut": ExtractorInfo(
        "rca_gpu.features.dut:DUTActivationExtractor",
        "activations of the DNN under test at a layer (default: its penultimate layer)",
        {"pool": Param(int, "at_least_1")},
        needs_dut=True,
        has_layers=True,
    ),
    "lrp": ExtractorInfo(
        "rca_gpu.features.heatmaps:LRPExtractor",
        "LRP relevance heatmaps of the predicted class at a DUT layer (HUDD), via zennit",
        {"pool": Param(int, "at_least_1"), "rule": Param(str, "choice", ("epsilon", "zplus", "epsilon_plus"))},
        needs_dut=True,
        has_layers=True,
    ),
    "gradcam": ExtractorInfo(
        "rca_gpu.features.heatmaps:GradCAMExtractor",
        "Grad-CAM heatmaps of the predicted class at a DUT layer, via captum",
        {"pool": Param(int, "at_least_1")},
        needs_dut=True,
        has_layers=True,
    ),
    "ae": ExtractorInfo(
        "rca_gpu.features.autoencoder:AutoencoderExtractor",
        "bottleneck of a convolutional autoencoder trained on the source images",
        {"image_size": Param(int, "at_least_1"), "latent": Param(int, "at_least_1"),
         "epochs": Param(int, "at_least_1")},
    ),
}

#: The feature stage of a pipeline over features the user brings (written ``umap+dbscan``).
PRECOMPUTED = "precomputed"
EXTRACTORS[PRECOMPUTED] = ExtractorInfo(
    "rca_gpu.features.precomputed:PrecomputedFeatures",
    "features you bring: rca-gpu run --features FILE (.parquet / .npy), or FailureClusterer.fit(X)",
)

REDUCERS: dict[str, dict[str, Param]] = {
    "umap": {
        "n_components": Param(int, "at_least_1"),
        "n_neighbors": Param(int, "at_least_2"),
        "min_dist": Param(float, "non_negative"),
    },
    "pca": {"n_components": Param(int, "at_least_1")},
    "none": {},
}

CLUSTERERS: dict[str, dict[str, Param]] = {
    "dbscan": {"eps": Param(float, "positive"), "min_samples": Param(int, "at_least_1")},
    "hdbscan": {"min_cluster_size": Param(int, "at_least_2"), "min_samples": Param(int, "at_least_1")},
    "kmeans": {"k": Param(int, "at_least_2")},
    "ward": {"k": Param(int, "at_least_2"), "select": Param(str, "choice", ("silhouette", "knee"))},
}

# Fewest images each clusterer can work with; the pipeline checks this before running.
MIN_IMAGES = {"dbscan": 3, "hdbscan": 4, "kmeans": 3, "ward": 3}

DEFAULT_PIPELINE = "mobilenet_v2+umap+dbscan"
DEVICES = ("auto", "cpu", "gpu")
PRECISIONS = ("fp32", "bf16")


def register_extractor(name: str, info: ExtractorInfo) -> None:
    """Add an extractor to the table (used by feature modules that live outside this file)."""
    EXTRACTORS[name] = info


# --------------------------------------------------------------------------------------------------
# Stage specs
# --------------------------------------------------------------------------------------------------


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
        return EXTRACTORS[self.name]


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
    """umap | pca | none, with fixed parameters."""


class ClusterSpec(_StageSpec):
    """dbscan | hdbscan | kmeans | ward, with fixed parameters."""


@dataclass(frozen=True)
class PipelineSpec:
    features: FeatureSpec
    reduce: ReduceSpec
    cluster: ClusterSpec

    def __str__(self) -> str:
        return f"{self.features}+{self.reduce}+{self.cluster}"

    @classmethod
    def parse(cls, text: str) -> "PipelineSpec":
        return parse_pipeline(text)


@dataclass(frozen=True)
class RunSpec:
    """Everything a run needs besides the source. Serialised whole into run.json."""

    pipeline: PipelineSpec
    device: str = "auto"
    seed: int = 0
    batch_size: int = 64
    workers: int = 2
    precision: str = "fp32"
    model: str | None = None  # the DNN under test: TorchScript, .pt2, or "pkg.mod:factory=weights.pt"
    knn_backend: str = "auto"
    knn_k: int = 30
    image_root: str | None = None  # manifests: paths must resolve inside this folder
    cache_features: bool = True
    plot_embedding: bool = True

    def __post_init__(self) -> None:
        _check_choice("device", self.device, DEVICES, "--device")
        _check_choice("precision", self.precision, PRECISIONS, "--precision")
        _check_choice("knn_backend", self.knn_backend, KNN_BACKENDS, "--knn-backend")
        for name, low in (("seed", 0), ("batch_size", 1), ("workers", 0), ("knn_k", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SpecError(
                    f"The '{name}' option must be an int >= {low}. Got {value!r} instead."
                )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["pipeline"] = str(self.pipeline)
        return out

    def replace(self, **changes: Any) -> "RunSpec":
        return dataclasses.replace(self, **changes)


KNN_BACKENDS = ("auto", "torch", "faiss", "faiss-hnsw", "kdtree", "cuml")
RUN_OPTIONS = tuple(f.name for f in dataclasses.fields(RunSpec))


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------

_STAGE = re.compile(r"^(?P<name>[A-Za-z0-9_\-]+)(?:@(?P<layer>[A-Za-z0-9_.\[\]\-]+))?(?:\((?P<params>[^()]*)\))?$")


def _split_stages(text: str) -> list[str]:
    """Split on '+' outside parentheses."""
    return split_outside_parens(text, "+")


def split_outside_parens(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside parentheses; parts are stripped."""
    parts, depth, current = [], 0, []
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
    params = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise SpecError(f"Cannot read parameter {item.strip()!r} of {where}: write key=value, e.g. {where}(k=8).")
        key, value = item.split("=", 1)
        params[key.strip()] = _parse_value(value)
    return params


def _validate_params(owner: str, params: Mapping[str, Any], allowed: Mapping[str, Param]) -> dict[str, Any]:
    clean = {}
    for key, value in params.items():
        if key not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise SpecError(f"{owner} has no parameter {key!r}. It accepts: {names}.")
        clean[key] = allowed[key].check(owner, key, value)
    return clean


def _unknown(kind: str, name: str, known: Mapping[str, Any]) -> SpecError:
    return SpecError(
        f"Unknown {kind} {name!r} in the pipeline. Choose one of: {', '.join(sorted(known))} "
        "(see `rca-gpu pipelines`)."
    )


def make_features(name: str, layer: str | None = None, **params: Any) -> FeatureSpec:
    if name not in EXTRACTORS:
        raise _unknown("feature extractor", name, EXTRACTORS)
    info = EXTRACTORS[name]
    if layer and not info.has_layers:
        raise SpecError(f"The '{name}' extractor has no layers to choose; drop '@{layer}'.")
    return FeatureSpec(name, layer, _validate_params(f"extractor '{name}'", params, info.params))


def make_reduce(name: str, **params: Any) -> ReduceSpec:
    if name not in REDUCERS:
        raise _unknown("reducer", name, REDUCERS)
    return ReduceSpec(name, _validate_params(f"reducer '{name}'", params, REDUCERS[name]))


def make_cluster(name: str, **params: Any) -> ClusterSpec:
    if name not in CLUSTERERS:
        raise _unknown("clusterer", name, CLUSTERERS)
    return ClusterSpec(name, _validate_params(f"clusterer '{name}'", params, CLUSTERERS[name]))


def parse_pipeline(text: str) -> PipelineSpec:
    """Parse ``[features[@layer][(k=v)]+]reducer[(k=v)]+clusterer[(k=v)]``."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError("The pipeline is empty. Write it as FEATURES+REDUCER+CLUSTERER, e.g. mobilenet_v2+umap+dbscan.")
    stages = _split_stages(text.strip())
    if len(stages) == 2 and re.split(r"[@(]", stages[0])[0].strip().lower() in REDUCERS:
        stages = [PRECOMPUTED, *stages]  # REDUCER+CLUSTERER: over features the user brings
    if len(stages) != 3:
        raise SpecError(
            f"The pipeline {text!r} has {len(stages)} stage(s); it needs three joined by '+': "
            "FEATURES+REDUCER+CLUSTERER, e.g. mobilenet_v2+umap+dbscan (or REDUCER+CLUSTERER, e.g. umap+dbscan, "
            "over features passed with --features)."
        )
    matches = []
    for stage in stages:
        match = _STAGE.match(stage)
        if not match:
            raise SpecError(
                f"Cannot read the pipeline stage {stage!r}. Write NAME, NAME@LAYER or NAME(key=value,...)."
            )
        matches.append(match)
    f, r, c = matches
    features = make_features(f["name"].lower(), f["layer"], **_parse_params(f["params"], f["name"]))
    if r["layer"] or c["layer"]:
        raise SpecError("Only the feature stage takes '@layer'.")
    reduce = make_reduce(r["name"].lower(), **_parse_params(r["params"], r["name"]))
    cluster = make_cluster(c["name"].lower(), **_parse_params(c["params"], c["name"]))
    return PipelineSpec(features, reduce, cluster)


def _format_params(params: Mapping[str, Any]) -> str:
    if not params:
        return ""
    return "(" + ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(params.items())) + ")"


def _check_choice(name: str, value: Any, choices: tuple[str, ...], flag: str) -> None:
    if value not in choices:
        raise SpecError(f"The {flag} option must be one of {', '.join(choices)}. Got {value!r} instead.")


# --------------------------------------------------------------------------------------------------
# TOML configuration
# --------------------------------------------------------------------------------------------------


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML run configuration into a flat dict of RunSpec fields.

    Layout::

        pipeline = "mobilenet_v2+umap+dbscan"
        device = "auto"
        seed = 0
        [features]   # parameters of the extractor, e.g. image_size = 160, layer = "features.14"
        [reduce]     # e.g. n_components = 10
        [cluster]    # e.g. eps = 0.4
    """
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise SpecError(f"The config file {str(path)!r} does not exist. Check the --config path.")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"The config file {str(path)!r} is not valid TOML: {exc}.") from None
    return data


def build_run_spec(config: Mapping[str, Any] | None = None, **overrides: Any) -> RunSpec:
    """Combine a config dict (from TOML) with CLI overrides (None = not given) into a RunSpec."""
    config = dict(config or {})
    stage_tables = {key: config.pop(key, {}) for key in ("features", "reduce", "cluster")}
    unknown = set(config) - set(RUN_OPTIONS)
    if unknown:
        raise SpecError(
            f"Unknown config key(s) {', '.join(sorted(unknown))}. Allowed: {', '.join(RUN_OPTIONS)}, "
            "and the tables [features], [reduce], [cluster]."
        )
    values = {**config, **{k: v for k, v in overrides.items() if v is not None}}
    pipeline = parse_pipeline(values.pop("pipeline", DEFAULT_PIPELINE))
    feature_params = dict(stage_tables["features"])
    layer = feature_params.pop("layer", None) or pipeline.features.layer
    pipeline = PipelineSpec(
        make_features(pipeline.features.name, layer, **{**feature_params, **pipeline.features.params}),
        make_reduce(pipeline.reduce.name, **{**stage_tables["reduce"], **pipeline.reduce.params}),
        make_cluster(pipeline.cluster.name, **{**stage_tables["cluster"], **pipeline.cluster.params}),
    )
    return RunSpec(pipeline=pipeline, **values)


def dump_toml(spec: RunSpec) -> str:
    """The TOML that rebuilds ``spec`` with build_run_spec(load_config(...))."""
    import tomli_w

    data = {k: v for k, v in spec.to_dict().items() if v is not None}
    return tomli_w.dumps(data)
