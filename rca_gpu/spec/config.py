"""A run's configuration: :class:`RunSpec` (the pipeline and every run option), TOML in and out.

Every option's rule is a :class:`~rca_gpu.engine.params.Param` in RUN_PARAMS, checked when a RunSpec is made;
:func:`build_run_spec` combines a TOML file's values with command-line overrides and checks every key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rca_gpu.engine.knn import KNN_BACKENDS
from rca_gpu.engine.params import Param, show_value
from rca_gpu.errors import SpecError
from rca_gpu.spec.grammar import PipelineSpec, make_cluster, make_features, make_reduce, parse_pipeline

DEFAULT_PIPELINE = "mobilenet_v2(center=auto,pool=grid2)+umap+dbscan"  # benchmarks/RESULTS.md, section 7
DEVICES = ("auto", "cpu", "gpu")
PRECISIONS = ("fp32", "bf16")


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
    max_image_memory: int | None = None  # bytes image decoding may use at once; None = a share of RAM (data.decoding)

    def __post_init__(self) -> None:
        if not isinstance(self.pipeline, PipelineSpec):
            raise SpecError(f"RunSpec needs a PipelineSpec (parse_pipeline(text)). Got {show_value(self.pipeline)} "
                            "instead.")
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

    def replace(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes)



#: Feature sets of the default study (``rca-gpu study`` without --features): plain data here so that the
#: study's --help lists them without importing the study. The 2 x 2 grid of MobileNetV2's last map, plain and
#: centred (``center=auto``, the default's representation), are the representations of benchmarks/RESULTS.md
#: section 7 that beat the global average; they share one extraction. With the DNN under test known,
#: STUDY_DUT_FEATURES join, with the DUT's view centred (``dut(center=auto)``): 12 sets x 3 reducers x
#: 4 clusterers = 144 pipelines (the paper studied 99), 72 without a DUT. ResNet/VGG backbones join with
#: --features when their weights are in the torch cache.
STUDY_FEATURES = ("pixels", "mobilenet_v2", "mobilenet_v2@features.14", "mobilenet_v2(pool=grid2)",
                  "mobilenet_v2(center=auto,pool=grid2)", "ae")
STUDY_DUT_FEATURES = ("dut", "dut(center=auto)", "dut@features", "lrp", "lrp(rule=zplus)", "gradcam")
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
    "max_image_memory": Param(int, "at_least_1", low=64 * 2**20, high=2**60),  # data.decoding.MIN_IMAGE_MEMORY
}
#: Run options that may be left unset (None).
OPTIONAL_RUN_OPTIONS = ("model", "image_root", "stability", "max_image_memory")
#: Command-line flag of a run option, where it differs from the option's name.
FLAGS = {"cache_features": "cache/--no-cache", "plot_embedding": "plot-umap/--no-plot-umap"}


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
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
    shown = show_value(str(path))
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
        raise SpecError(f"A run configuration must be a table of keys. Got {show_value(config)} instead.")
    config = dict(config)
    stage_tables = {}
    for key in STAGE_TABLES:
        table = config.pop(key, {})
        if not isinstance(table, Mapping):
            raise SpecError(
                f"The config key {key!r} must be a table [{key}] of parameters, e.g. [{key}] followed by "
                f"key = value lines. Got {show_value(table)} instead. Name the algorithms in pipeline = "
                '"FEATURES+REDUCER+CLUSTERER".'
            )
        stage_tables[key] = dict(table)
    unknown = [str(k) for k in config if k not in RUN_OPTIONS]
    if unknown:
        raise SpecError(
            f"Unknown config key(s) {', '.join(sorted(show_value(k) for k in unknown))}. "
            f"Allowed: {', '.join(RUN_OPTIONS)}, "
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
            raise SpecError(f"The [{table}] table has a key that is not a name: {show_value(key)}.")
    return {**from_config, **from_pipeline}


def dump_toml(spec: RunSpec) -> str:
    """The TOML that rebuilds ``spec`` with build_run_spec(load_config(...))."""
    import tomli_w

    data = {k: v for k, v in spec.to_dict().items() if v is not None}
    return tomli_w.dumps(data)
