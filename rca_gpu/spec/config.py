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
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rca_gpu.errors import SpecError

# --------------------------------------------------------------------------------------------------
# What each stage accepts. Values are the parameter's type; validation lives in one place below.
# --------------------------------------------------------------------------------------------------


_LOWER = {  # rule -> (lowest value, inclusive)
    "positive": (0, False),
    "non_negative": (0, True),
    "at_least_1": (1, True),
    "at_least_2": (2, True),
    "fraction": (0, True),
}


@dataclass(frozen=True)
class Param:
    """One parameter: its type and the rule its value must satisfy.

    ``rule`` names the lower bound ("positive", "non_negative", "at_least_1", "at_least_2", "fraction" = in
    [0, 1]) or "choice" (one of ``choices``); ``low`` / ``high`` are inclusive bounds (``low`` overrides the
    rule's); ``allowed`` lists the only valid values (e.g. the image sides the autoencoder can build).
    Numbers must be finite.
    """

    kind: type
    rule: str = "any"
    choices: tuple[str, ...] = ()
    high: float | None = None
    allowed: tuple[int, ...] = ()
    low: float | None = None

    def bounds(self) -> tuple[float | None, bool, float | None]:
        """(lowest, lowest is inclusive, highest inclusive) for numbers; None where unbounded."""
        low, inclusive = _LOWER.get(self.rule, (None, True))
        if self.low is not None:
            low, inclusive = self.low, True
        high = 1 if self.rule == "fraction" and self.high is None else self.high
        return low, inclusive, high

    def describe(self) -> str:
        """The rule as text, e.g. "an int in [2, 1024]" or "a finite number > 0"."""
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            if self.rule == "choice":
                return "one of " + ", ".join(repr(c) for c in self.choices)
            return "a non-empty string"
        noun = "an int" if self.kind is int else "a finite number"
        if self.allowed:
            return f"{noun} among {', '.join(map(str, self.allowed))}"
        low, inclusive, high = self.bounds()
        if low is not None and high is not None and inclusive:
            return f"{noun} in [{_num(low)}, {_num(high)}]"
        parts = []
        if low is not None:
            parts.append(f"{'>=' if inclusive else '>'} {_num(low)}")
        if high is not None:
            parts.append(f"<= {_num(high)}")
        return " ".join([noun, " and ".join(parts)]).strip()

    def check(self, owner: str, name: str, value: Any, *, fix: str = "") -> Any:
        """The value, converted to the parameter's type (2.0 -> 2 for ints); SpecError when it breaks the rule.

        Raises
        ------
        SpecError
            "The '<name>' parameter of <owner> must be <rule>. Got <value> instead." plus ``fix``.
        """

        def fail() -> SpecError:
            what = f"parameter of {owner}" if owner else "option"
            hint = fix
            if self.kind is bool and isinstance(value, str) and value.strip().lower() in ("true", "false"):
                hint = f" Write it without quotes: {value.strip().lower()}." + fix
            return SpecError(f"The '{name}' {what} must be {self.describe()}. Got {_show(value)} instead.{hint}")

        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise fail()
            if isinstance(value, float):
                if not (math.isfinite(value) and value.is_integer()):
                    raise fail()
                value = int(value)
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise fail()
            try:
                value = float(value)
            except OverflowError:  # an int too large for a float
                raise fail() from None
            if not math.isfinite(value):
                raise fail()
        elif self.kind is str:
            if not isinstance(value, str) or not value.strip():
                raise fail()
        elif self.kind is bool:
            if not isinstance(value, bool):
                raise fail()
        if self.allowed and value not in self.allowed:
            raise fail()
        if self.kind in (int, float):
            low, inclusive, high = self.bounds()
            if low is not None and (value < low or (value == low and not inclusive)):
                raise fail()
            if high is not None and value > high:
                raise fail()
        if self.rule == "choice" and value not in self.choices:
            raise fail()
        return value


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _show(value: Any, limit: int = 80) -> str:
    """repr() of a user's value, shortened to one line."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class ExtractorInfo:
    """What the CLI and the spec need to know about an extractor without importing it."""

    target: str  # "package.module:Class", imported lazily by rca_gpu.features.create_extractor
    summary: str
    params: Mapping[str, Param] = field(default_factory=dict)
    needs_dut: bool = False  # needs the DNN under test (--model)
    has_layers: bool = False  # accepts "@layer"


#: Largest image side an extractor resizes to; a (batch, 3, side, side) float batch must fit in memory.
MAX_IMAGE_SIZE = 1024
#: Largest side for raw pixel features: 512 px RGB is already 786,432 values per image.
MAX_PIXEL_SIZE = 512
#: Image sides the autoencoder can build (rca_gpu.features.autoencoder.plan_geometry keeps exactly these).
AE_IMAGE_SIZES = (16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128)
_POOL = Param(int, "at_least_1", high=64)

_IMAGE_PARAMS = {
    "image_size": Param(int, low=32, high=MAX_IMAGE_SIZE),
    "weights": Param(str),
    "normalize": Param(bool),
}

EXTRACTORS: dict[str, ExtractorInfo] = {
    "pixels": ExtractorInfo(
        "rca_gpu.features.pixels:PixelExtractor",
        "raw pixels, resized and flattened (baseline)",
        {"image_size": Param(int, "at_least_1", high=MAX_PIXEL_SIZE), "normalize": Param(bool)},
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
        {"pool": _POOL},
        needs_dut=True,
        has_layers=True,
    ),
    "lrp": ExtractorInfo(
        "rca_gpu.features.heatmaps:LRPExtractor",
        "LRP relevance heatmaps of the predicted class at a DUT layer (HUDD), via zennit",
        {"pool": _POOL, "rule": Param(str, "choice", ("epsilon", "zplus", "epsilon_plus"))},
        needs_dut=True,
        has_layers=True,
    ),
    "gradcam": ExtractorInfo(
        "rca_gpu.features.heatmaps:GradCAMExtractor",
        "Grad-CAM heatmaps of the predicted class at a DUT layer, via captum",
        {"pool": _POOL},
        needs_dut=True,
        has_layers=True,
    ),
    # Input attributions need no hooks: they work on every DUT format, TorchScript included.
    "gradxinput": ExtractorInfo(
        "rca_gpu.features.heatmaps:GradientXInputExtractor",
        "gradient x input of the predicted class, via captum (any DUT format, TorchScript included)",
        {"pool": Param(int, "at_least_1")},
        needs_dut=True,
    ),
    "ig": ExtractorInfo(
        "rca_gpu.features.heatmaps:IntegratedGradientsExtractor",
        "integrated gradients of the predicted class, via captum (any DUT format, TorchScript included)",
        {"pool": Param(int, "at_least_1"), "steps": Param(int, "at_least_1")},
        needs_dut=True,
    ),
    "ae": ExtractorInfo(
        "rca_gpu.features.autoencoder:AutoencoderExtractor",
        "bottleneck of a convolutional autoencoder trained on the source images",
        {"image_size": Param(int, allowed=AE_IMAGE_SIZES), "latent": Param(int, "at_least_1", high=4096),
         "epochs": Param(int, "at_least_1", high=1000)},
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
        "n_components": Param(int, "at_least_1", high=100),
        "n_neighbors": Param(int, "at_least_2", high=1000),
        "min_dist": Param(float, "fraction"),  # umap-learn needs min_dist <= spread (1.0)
    },
    "pca": {"n_components": Param(int, "at_least_1", high=10_000)},
    "none": {},
}

#: The rules that choose among the candidate settings (rca_gpu.tuning); "merged" is the default. Every rule
#: scores candidates by silhouette: "max" takes the highest score.
SELECT_RULES = ("merged", "finest-peak", "max")
#: The ``select`` values of each clusterer: the one list behind the spec's check, the search
#: (rca_gpu.tuning.criterion_of), `rca-gpu pipelines` and README's stage table.
SELECT_RULES_OF: dict[str, tuple[str, ...]] = {
    "dbscan": SELECT_RULES, "hdbscan": SELECT_RULES, "kmeans": SELECT_RULES, "ward": SELECT_RULES + ("knee",),
}
CLUSTERERS: dict[str, dict[str, Param]] = {
    "dbscan": {"eps": Param(float, "positive"), "min_samples": Param(int, "at_least_1"),
               "select": Param(str, "choice", SELECT_RULES_OF["dbscan"])},
    "hdbscan": {"min_cluster_size": Param(int, "at_least_2"), "min_samples": Param(int, "at_least_1"),
                "select": Param(str, "choice", SELECT_RULES_OF["hdbscan"])},
    "kmeans": {"k": Param(int, "at_least_2"), "select": Param(str, "choice", SELECT_RULES_OF["kmeans"])},
    "ward": {"k": Param(int, "at_least_2"), "select": Param(str, "choice", SELECT_RULES_OF["ward"])},
}
#: Said after a refused ``select`` value.
SELECT_FIX = (" Every rule scores the candidates by silhouette; 'max' takes the highest score. Leave select out "
              "for the default, 'merged'.")

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
    stability: int | None = None  # stability resamples: None = automatic (rca_gpu.catalogue.stability), 0 = off
    sample_size: int = 5000  # above this many usable images the search runs on a seeded sample (rca_gpu.tuning)

    def __post_init__(self) -> None:
        if not isinstance(self.pipeline, PipelineSpec):
            raise SpecError(f"RunSpec needs a PipelineSpec (parse_pipeline(text)). Got {_show(self.pipeline)} instead.")
        for name, param in RUN_PARAMS.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL_RUN_OPTIONS:
                continue
            flag = "--" + FLAGS.get(name, name.replace("_", "-"))
            checked = param.check("", name, value, fix=f" Fix {flag} or the config key {name!r}.")
            object.__setattr__(self, name, checked)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["pipeline"] = str(self.pipeline)
        return out

    def replace(self, **changes: Any) -> "RunSpec":
        return dataclasses.replace(self, **changes)


#: Every --knn-backend value: the one list behind the spec's check, the CLI's choices (rca_gpu.cli.KnnBackend),
#: the registry's kNN implementations (rca_gpu.engine.dispatch; checked by tests/test_spec.py) and the README table.
KNN_BACKENDS = ("auto", "torch", "faiss", "faiss-hnsw", "kdtree", "cuvs", "cuml")

#: Feature sets of the default study (``rca-gpu study`` without --features): plain data here so that the
#: study's --help lists them without importing the study. With the DNN under test known, STUDY_DUT_FEATURES
#: join: 9 sets x 3 reducers x 4 clusterers = 108 pipelines (the paper studied 99). ResNet/VGG backbones join
#: with --features when their weights are in the torch cache.
STUDY_FEATURES = ("pixels", "mobilenet_v2", "mobilenet_v2@features.14", "ae")
STUDY_DUT_FEATURES = ("dut", "dut@features", "lrp", "lrp(rule=zplus)", "gradcam")
#: kNN backends with no CPU implementation: backend -> (flag of rca_gpu.engine.device.Device that says it works here,
#: the library it needs).
GPU_ONLY_KNN_BACKENDS = {"cuvs": ("cuvs", "cuVS"), "cuml": ("cuml_knn", "cuML")}
RUN_OPTIONS = tuple(f.name for f in dataclasses.fields(RunSpec))
#: Rules of the run options (RunSpec fields besides the pipeline); checked when a RunSpec is made.
RUN_PARAMS: dict[str, Param] = {
    "device": Param(str, "choice", DEVICES),
    "seed": Param(int, "non_negative", high=2**32 - 1),  # numpy and umap-learn take 32-bit seeds
    "batch_size": Param(int, "at_least_1", high=4096),
    "workers": Param(int, "non_negative", high=64),
    "precision": Param(str, "choice", PRECISIONS),
    "model": Param(str),
    "knn_backend": Param(str, "choice", KNN_BACKENDS),
    "knn_k": Param(int, "at_least_2", high=1000),
    "image_root": Param(str),
    "cache_features": Param(bool),
    "plot_embedding": Param(bool),
    "stability": Param(int, "non_negative", high=1000),  # resamples; None = automatic, 0 = off
    "sample_size": Param(int, "at_least_1", low=100, high=10_000_000),
}
#: Run options that may be left unset (None).
OPTIONAL_RUN_OPTIONS = ("model", "image_root", "stability")
#: Command-line flag of a run option, where it differs from the option's name.
FLAGS = {"cache_features": "cache/--no-cache", "plot_embedding": "plot-umap/--no-plot-umap"}


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------

_LAYER = re.compile(r"[A-Za-z0-9_.\[\]\-/]+")
_STAGE = re.compile(r"^(?P<name>[A-Za-z0-9_\-]+)(?:@(?P<layer>[A-Za-z0-9_.\[\]\-/]+))?(?:\((?P<params>[^()]*)\))?$")


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
                f"The parameter {key!r} of {where} is given twice ({key}={_show(params[key])}, {key}={value.strip()}). "
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
            raise SpecError(f"{owner} has no parameter {_show(key)}. It accepts: {names}.")
        clean[key] = allowed[key].check(owner, key, value, fix=SELECT_FIX if key == "select" else fix)
    return clean


def _unknown(kind: str, name: str, known: Mapping[str, Any]) -> SpecError:
    return SpecError(
        f"Unknown {kind} {name!r} in the pipeline. Choose one of: {', '.join(sorted(known))} "
        "(see `rca-gpu pipelines`)."
    )


def make_features(name: str, layer: str | None = None, /, **params: Any) -> FeatureSpec:
    if name not in EXTRACTORS:
        raise _unknown("feature extractor", name, EXTRACTORS)
    info = EXTRACTORS[name]
    if layer is not None and (not isinstance(layer, str) or not _LAYER.fullmatch(layer)):
        raise SpecError(
            f"The layer of extractor '{name}' must be a layer name (letters, digits, '_', '.', '-', '[]'), "
            f"e.g. features.14. Got {_show(layer)} instead."
        )
    if layer and not info.has_layers:
        raise SpecError(f"The '{name}' extractor has no layers to choose; drop '@{layer}'.")
    return FeatureSpec(name, layer, _validate_params(f"extractor '{name}'", params, info.params))


def make_reduce(name: str, /, **params: Any) -> ReduceSpec:
    if name not in REDUCERS:
        raise _unknown("reducer", name, REDUCERS)
    return ReduceSpec(name, _validate_params(f"reducer '{name}'", params, REDUCERS[name], tuned=True))


def make_cluster(name: str, /, **params: Any) -> ClusterSpec:
    if name not in CLUSTERERS:
        raise _unknown("clusterer", name, CLUSTERERS)
    return ClusterSpec(name, _validate_params(f"clusterer '{name}'", params, CLUSTERERS[name], tuned=True))


def parse_pipeline(text: str) -> PipelineSpec:
    """Parse ``[features[@layer][(k=v)]+]reducer[(k=v)]+clusterer[(k=v)]``."""
    if not isinstance(text, str):
        raise SpecError(
            f"The pipeline must be a string FEATURES+REDUCER+CLUSTERER, e.g. \"mobilenet_v2+umap+dbscan\". "
            f"Got {_show(text)} instead."
        )
    if not text.strip():
        raise SpecError("The pipeline is empty. Write it as FEATURES+REDUCER+CLUSTERER, e.g. mobilenet_v2+umap+dbscan.")
    _check_parentheses(text)
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
    return "(" + ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(params.items())) + ")"


# --------------------------------------------------------------------------------------------------
# Limits that depend on the data
# --------------------------------------------------------------------------------------------------

#: (stage, algorithm, parameter) -> highest value for n images, for the parameters bounded by the data.
_DATA_LIMITS: dict[tuple[str, str, str], Any] = {
    ("cluster", "kmeans", "k"): lambda n: n - 1,
    ("cluster", "ward", "k"): lambda n: n - 1,
    ("cluster", "dbscan", "min_samples"): lambda n: n - 1,
    ("cluster", "hdbscan", "min_samples"): lambda n: n - 1,
    ("cluster", "hdbscan", "min_cluster_size"): lambda n: n,
    ("reduce", "umap", "n_neighbors"): lambda n: n - 1,
    ("reduce", "umap", "n_components"): lambda n: n - 2,
    ("reduce", "pca", "n_components"): lambda n: n,
}


def check_data_limits(pipeline: PipelineSpec, n: int, *, dims: int | None = None, images: str = "input images",
                      error: type[SpecError] | None = None) -> None:
    """Check the values the pipeline fixes against the number of images ``n`` (and the feature dimension).

    Called twice by a run: with the input rows before any image is read, and with the usable images after
    extraction, so that a value the user set is refused rather than silently replaced.

    Raises
    ------
    TooFewImagesError
        Fewer images than the clusterer needs (:data:`MIN_IMAGES`).
    SpecError (or ``error``)
        A fixed parameter exceeds what ``n`` images allow, e.g. kmeans(k=1000) on 50 images.
    """
    from rca_gpu.errors import TooFewImagesError

    need = MIN_IMAGES[pipeline.cluster.name]
    if n < need:
        raise TooFewImagesError(
            f"The {pipeline.cluster.name} clusterer needs at least {need} usable images; there are {n} {images}. "
            "Add more failing images."
        )
    for stage, spec in (("reduce", pipeline.reduce), ("cluster", pipeline.cluster)):
        table = REDUCERS if stage == "reduce" else CLUSTERERS
        for key, value in spec.params.items():
            limit = _DATA_LIMITS.get((stage, spec.name, key))
            if limit is None:
                continue
            high = limit(n)
            if key == "n_components" and spec.name == "pca" and dims is not None:
                high = min(high, dims)
            if value > high:
                param = table[spec.name][key]
                rule = dataclasses.replace(param, high=high)
                where = f"{n} {images}" + (f" of {dims} feature dimensions" if dims is not None and
                                           spec.name == "pca" else "")
                raise (error or SpecError)(
                    f"The '{key}' parameter of {'reducer' if stage == 'reduce' else 'clusterer'} '{spec.name}' "
                    f"must be {rule.describe()} with {where}. Got {_show(value)} instead. Lower it, add images, "
                    "or leave it out to have it chosen automatically."
                )


def check_backends(spec: RunSpec, device: Any) -> None:
    """Refuse a --knn-backend the resolved device cannot run, before any work (``device``: a resolved
    :class:`rca_gpu.engine.device.Device`, read through its ``on_gpu`` flag and the flag each GPU-only backend names
    in :data:`GPU_ONLY_KNN_BACKENDS`).

    Raises
    ------
    SpecError
        E.g. --knn-backend cuvs or cuml without a CUDA GPU and that library (with the package to install).
    """
    needs = GPU_ONLY_KNN_BACKENDS.get(spec.knn_backend)
    if needs is None:
        return
    flag, library = needs
    on_gpu = bool(getattr(device, "on_gpu", False))
    if on_gpu and getattr(device, flag, False):
        return
    where = (f"{library} is not installed or failed its test search on this GPU" if on_gpu else
             f"no CUDA GPU is in use (device: {getattr(device, 'torch_device', 'cpu')})")
    others = ", ".join(b for b in KNN_BACKENDS if b not in GPU_ONLY_KNN_BACKENDS and b != "auto")
    raise SpecError(
        f"The --knn-backend option '{spec.knn_backend}' needs {library} on a CUDA GPU, but {where}. Use "
        f"--knn-backend auto (or {others}), or install the GPU extras: pip install 'rca-gpu[gpu]' "
        "(CUDA 13) or 'rca-gpu[gpu-cu12]' (CUDA 12)."
    )


_ENTRY_POINT = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:=(?P<weights>.+))?$")


def check_paths(spec: RunSpec) -> None:
    """The files and folders the options name exist, before any work: the --model file (or the weights of a
    ``package.module:factory=weights.pt`` entry point; the module itself is imported only when the model is
    needed) and the --image-root folder.

    Raises
    ------
    SpecError
        Naming the option, the path and the fix.
    """
    if spec.model:
        match = _ENTRY_POINT.match(spec.model.strip())
        target = match["weights"] if match and not Path(spec.model).exists() else (None if match else spec.model)
        if target is not None:
            path = Path(target).expanduser()
            if not path.exists():
                raise SpecError(
                    f"The --model file {_show(str(path))} does not exist. Pass a TorchScript .pt, a torch.export "
                    ".pt2, or package.module:factory=weights.pt with an existing weights file."
                )
            if not path.is_file():
                raise SpecError(f"The --model path {_show(str(path))} is a folder, not a model file.")
    if spec.image_root is not None:
        root = Path(spec.image_root).expanduser()
        if not root.is_dir():
            raise SpecError(
                f"The --image-root folder {_show(spec.image_root)} does not exist or is not a folder. Pass the "
                "folder that holds the manifest's images."
            )


def check_dut_known(spec: RunSpec, manifest_dut: str | None) -> None:
    """An extractor that reads the DNN under test has one, from --model or the manifest, before any work.

    Raises
    ------
    SpecError
        Naming the extractor and how to pass the model.
    """
    features = spec.pipeline.features
    if features.info.needs_dut and not (spec.model or manifest_dut):
        raise SpecError(
            f"The '{features.name}' extractor needs the DNN under test: pass --model PATH (TorchScript .pt, "
            "torch.export .pt2, or package.module:factory=weights.pt)."
        )


def physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where the OS does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(spec: RunSpec, n: int, *, memory: int | None = None) -> None:
    """Refuse settings whose arrays cannot fit in memory, before any image is read.

    A decoded batch takes batch_size x 3 x side^2 float32 values; raw pixel features take n x 3 x side^2.
    Either may use at most half of this machine's RAM (``memory`` bytes; measured when None).

    Raises
    ------
    SpecError
        Naming the setting, the bytes it needs, the bytes available and the fix.
    """
    memory = physical_memory() if memory is None else memory
    if not memory:
        return
    budget = memory // 2
    features = spec.pipeline.features
    default_side = {"pixels": 32, "ae": 128}.get(features.name, 224)
    side = int(features.params.get("image_size", default_side))
    per_image = 3 * side * side * 4
    batch_bytes = spec.batch_size * per_image
    if batch_bytes > budget:
        raise SpecError(
            f"A batch of {spec.batch_size} images at {side} px takes {_gib(batch_bytes)}, more than half of this "
            f"machine's {_gib(memory)} of memory. Lower --batch-size (at most {max(1, budget // per_image)}) or "
            "image_size."
        )
    if features.name == "pixels" and n * per_image > budget:
        raise SpecError(
            f"Raw pixel features of {n} images at {side} px take {_gib(n * per_image)}, more than half of this "
            f"machine's {_gib(memory)} of memory. Lower image_size in pixels(image_size=...), or use a "
            "backbone (e.g. mobilenet_v2)."
        )


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"


# --------------------------------------------------------------------------------------------------
# TOML configuration
# --------------------------------------------------------------------------------------------------


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML run configuration (UTF-8) into a dict of RunSpec fields and stage tables.

    Layout::

        pipeline = "mobilenet_v2+umap+dbscan"
        device = "auto"
        seed = 0
        [features]   # parameters of the extractor, e.g. image_size = 160, layer = "features.14"
        [reduce]     # e.g. n_components = 10
        [cluster]    # e.g. eps = 0.4

    Raises
    ------
    SpecError
        The file is missing, a folder, unreadable, not UTF-8, or not valid TOML. Keys and values are checked
        by :func:`build_run_spec`.
    """
    import tomllib

    path = Path(path)
    shown = _show(str(path))
    if path.is_dir():
        raise SpecError(f"The config file {shown} is a folder. Pass a TOML file to --config, e.g. run.toml.")
    if not path.is_file():
        raise SpecError(f"The config file {shown} does not exist. Check the --config path.")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"Cannot read the config file {shown}: {exc.strerror or exc}. Check its permissions.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(
            f"The config file {shown} is not UTF-8 text: byte 0x{raw[exc.start]:02x} on line {line} cannot be "
            "decoded. TOML files are UTF-8: save it as UTF-8."
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        detail = " ".join(str(exc).split())
        raise SpecError(f"The config file {shown} is not valid TOML: {detail}.") from None
    return data


STAGE_TABLES = ("features", "reduce", "cluster")


def build_run_spec(config: Mapping[str, Any] | None = None, **overrides: Any) -> RunSpec:
    """Combine a config dict (from TOML) with CLI overrides (None = not given) into a RunSpec.

    Every key and value is checked here, before any work: unknown keys, stage tables that are not tables,
    values of the wrong type or out of range. Raises SpecError naming the key, the rule, the value and the fix.
    """
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise SpecError(f"A run configuration must be a table of keys. Got {_show(config)} instead.")
    config = dict(config)
    stage_tables = {}
    for key in STAGE_TABLES:
        table = config.pop(key, {})
        if not isinstance(table, Mapping):
            raise SpecError(
                f"The config key {key!r} must be a table [{key}] of parameters, e.g. [{key}] followed by "
                f"key = value lines. Got {_show(table)} instead. Name the algorithms in pipeline = "
                '"FEATURES+REDUCER+CLUSTERER".'
            )
        stage_tables[key] = dict(table)
    unknown = [str(k) for k in config if k not in RUN_OPTIONS]
    if unknown:
        raise SpecError(
            f"Unknown config key(s) {', '.join(sorted(_show(k) for k in unknown))}. Allowed: {', '.join(RUN_OPTIONS)}, "
            "and the tables [features], [reduce], [cluster]."
        )
    values = {**config, **{k: v for k, v in overrides.items() if v is not None}}
    pipeline = parse_pipeline(values.pop("pipeline", DEFAULT_PIPELINE))
    feature_params = stage_tables["features"]
    layer = feature_params.pop("layer", None) or pipeline.features.layer
    pipeline = PipelineSpec(
        make_features(pipeline.features.name, layer, **_merge("features", feature_params, pipeline.features.params)),
        make_reduce(pipeline.reduce.name, **_merge("reduce", stage_tables["reduce"], pipeline.reduce.params)),
        make_cluster(pipeline.cluster.name, **_merge("cluster", stage_tables["cluster"], pipeline.cluster.params)),
    )
    return RunSpec(pipeline=pipeline, **values)


def _merge(table: str, from_config: Mapping[str, Any], from_pipeline: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters of one stage: the pipeline string wins over the config table, keys must be strings."""
    for key in from_config:
        if not isinstance(key, str):
            raise SpecError(f"The [{table}] table has a key that is not a name: {_show(key)}.")
    return {**from_config, **from_pipeline}


def dump_toml(spec: RunSpec) -> str:
    """The TOML that rebuilds ``spec`` with build_run_spec(load_config(...))."""
    import tomli_w

    data = {k: v for k, v in spec.to_dict().items() if v is not None}
    return tomli_w.dumps(data)
