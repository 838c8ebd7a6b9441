"""Property-based tests of the pipeline grammar and the TOML configuration: no input, however odd, ends in
anything but a valid spec or a SpecError (never a traceback of another kind), and every valid spec prints as
text that parses back to itself."""

from __future__ import annotations

import math
import string

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rca_gpu.engine import registry  # noqa: E402
from rca_gpu.errors import SpecError  # noqa: E402
from rca_gpu.spec import (  # noqa: E402
    EXTRACTORS,
    RUN_OPTIONS,
    RunSpec,
    build_run_spec,
    check_data_limits,
    dump_toml,
    load_config,
    parse_pipeline,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

REDUCERS = {name: card.params for name, card in registry.reducers().items()}
CLUSTERERS = {name: card.all_params for name, card in registry.clusterers().items()}
NAMES = sorted(EXTRACTORS) + sorted(REDUCERS) + sorted(CLUSTERERS)
KEYS = sorted({k for info in EXTRACTORS.values() for k in info.params}
              | {k for table in (REDUCERS, CLUSTERERS) for params in table.values() for k in params})
VALUES = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "inf", "-inf", "nan", "1e400", "", "'x'", "\"y\"", "0x10", "1_000", "٣"]),
    st.text(string.printable, max_size=6),
)


@st.composite
def stage(draw, names=NAMES):
    """A stage close to the grammar: a name, maybe @layer, maybe (key=value,...), with random damage."""
    text = draw(st.sampled_from(names) | st.text(string.ascii_letters + "_-0123456789", min_size=0, max_size=8))
    if draw(st.booleans()):
        text += "@" + draw(st.text(string.ascii_letters + "._[]-0123456789();,=", max_size=6))
    if draw(st.booleans()):
        items = draw(st.lists(st.tuples(st.sampled_from(KEYS) | st.text(max_size=4), VALUES), max_size=3))
        text += "(" + ",".join(f"{k}={v}" for k, v in items) + ")"
    if draw(st.integers(0, 9)) == 0:  # damage: drop or add one character of the syntax
        position = draw(st.integers(0, max(0, len(text))))
        text = text[:position] + draw(st.sampled_from(["(", ")", "+", "@", "=", ",", "", " "])) + text[position + 1:]
    return text


pipelines = st.lists(stage(), min_size=1, max_size=4).map("+".join) | st.text(max_size=40)


@SETTINGS
@given(pipelines)
def test_any_pipeline_text_parses_or_is_a_spec_error(text):
    try:
        spec = parse_pipeline(text)
    except SpecError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert parse_pipeline(str(spec)) == spec  # what it prints is what it parsed
    for stage in (spec.features, spec.reduce, spec.cluster):
        for value in stage.params.values():  # inf or nan never passes for a number
            assert not isinstance(value, float) or math.isfinite(value)


@SETTINGS
@given(pipelines, st.integers(0, 10**6), st.one_of(st.none(), st.integers(0, 10**5)))
def test_data_limits_never_fail_with_another_error(text, n, dims):
    try:
        spec = parse_pipeline(text)
    except SpecError:
        return
    try:
        check_data_limits(spec, n, dims=dims)
    except SpecError:  # TooFewImagesError is one too
        pass


TOML_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=12),
    st.sampled_from(["pixels+pca+kmeans", "pixels+umap+dbscan(eps=0.5)", "cpu", "auto", "false", "fp32"]),
)
TOML_VALUES = st.recursive(TOML_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
CONFIG_KEYS = st.sampled_from(list(RUN_OPTIONS) + ["features", "reduce", "cluster", "colour"]) | st.text(max_size=8)
TABLE = st.dictionaries(st.sampled_from(KEYS + ["layer"]) | st.text(max_size=5), TOML_VALUES, max_size=3)


@st.composite
def configs(draw):
    data = draw(st.dictionaries(CONFIG_KEYS, TOML_VALUES, max_size=5))
    for table in ("features", "reduce", "cluster"):
        if draw(st.booleans()):
            data[table] = draw(TABLE)
    return data


def _without_none(value):
    if isinstance(value, dict):
        return {str(k): _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value


@SETTINGS
@given(configs())
def test_any_toml_config_builds_a_spec_or_is_a_spec_error(tmp_path, data):
    import tomli_w

    path = tmp_path / "run.toml"
    try:
        path.write_text(tomli_w.dumps(_without_none(data)), encoding="utf-8")
    except (TypeError, ValueError):  # not representable in TOML (e.g. mixed arrays in old tomli_w)
        return
    try:
        spec = build_run_spec(load_config(path))
    except SpecError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(spec, RunSpec)
    path.write_text(dump_toml(spec), encoding="utf-8")
    assert build_run_spec(load_config(path)) == spec


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes_as_a_config_file_are_read_or_a_spec_error(tmp_path, raw):
    path = tmp_path / "run.toml"
    path.write_bytes(raw)
    try:
        build_run_spec(load_config(path))
    except SpecError as exc:
        assert "\n" not in str(exc)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["device", "seed", "batch_size", "workers", "precision", "model",
                                        "knn_backend", "knn_k", "image_root", "cache_features", "plot_embedding"]),
                       TOML_SCALARS, max_size=4))
def test_any_option_values_build_a_spec_or_are_a_spec_error(options):
    try:
        build_run_spec(pipeline="pixels+pca+kmeans", **options)
    except SpecError as exc:
        assert "\n" not in str(exc)
