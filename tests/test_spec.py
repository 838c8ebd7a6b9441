"""Pipeline strings, option validation and TOML configuration."""

from __future__ import annotations

import pytest

from rca_gpu.errors import SpecError
from rca_gpu.spec import RunSpec, build_run_spec, dump_toml, load_config, parse_pipeline


def test_parse_default_pipeline():
    spec = parse_pipeline("mobilenet_v2+umap+dbscan")
    assert (spec.features.name, spec.reduce.name, spec.cluster.name) == ("mobilenet_v2", "umap", "dbscan")
    assert spec.features.layer is None and dict(spec.cluster.params) == {}


def test_parse_layer_and_params_round_trip():
    text = "resnet18@layer3(image_size=160)+umap(min_dist=0.0,n_components=10)+hdbscan(min_cluster_size=15)"
    spec = parse_pipeline(text)
    assert spec.features.layer == "layer3"
    assert spec.features.params == {"image_size": 160}
    assert spec.reduce.params == {"n_components": 10, "min_dist": 0.0}
    assert parse_pipeline(str(spec)) == spec


@pytest.mark.parametrize(
    "text, message",
    [
        ("mobilenet_v2+umap", "has 2 stage"),
        ("alexnet+umap+dbscan", "Unknown feature extractor 'alexnet'"),
        ("pixels+tsne+dbscan", "Unknown reducer 'tsne'"),
        ("pixels+pca+spectral", "Unknown clusterer 'spectral'"),
        ("pixels+pca+dbscan(eps=0)", "'eps' parameter of clusterer 'dbscan' must be a finite number > 0"),
        ("pixels+pca+kmeans(k=1)", "'k' parameter of clusterer 'kmeans' must be an int >= 2"),
        ("pixels+pca+kmeans(clusters=3)", "has no parameter 'clusters'"),
        ("pixels+pca(n_components=2.5)+kmeans", "must be an int"),
        ("pixels@conv1+pca+kmeans", "has no layers"),
        ("pixels+pca@x+kmeans", "Only the feature stage"),
        ("", "empty"),
        ("pixels+pca+kmeans(k)", "write key=value"),
    ],
)
def test_bad_pipelines_name_the_problem(text, message):
    with pytest.raises(SpecError, match=message):
        parse_pipeline(text)


def test_run_spec_rejects_bad_options():
    pipeline = parse_pipeline("pixels+pca+kmeans")
    with pytest.raises(SpecError, match="'device' option must be one of 'auto', 'cpu', 'gpu'. Got 'tpu'"):
        RunSpec(pipeline=pipeline, device="tpu")
    with pytest.raises(SpecError, match=r"'batch_size' option must be an int in \[1, 4096\]"):
        RunSpec(pipeline=pipeline, batch_size=0)


def test_config_file_and_cli_override(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        'pipeline = "pixels+pca+kmeans"\nseed = 3\ndevice = "cpu"\n[cluster]\nk = 4\n[reduce]\nn_components = 5\n'
    )
    spec = build_run_spec(load_config(config), seed=7)
    assert spec.seed == 7  # the command line wins
    assert spec.pipeline.cluster.params == {"k": 4}
    assert spec.pipeline.reduce.params == {"n_components": 5}
    again = tmp_path / "again.toml"
    again.write_text(dump_toml(spec))
    assert build_run_spec(load_config(again)) == spec


def test_config_errors(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("pipeline = [")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(SpecError, match="Unknown config key"):
        build_run_spec({"colour": "red"})


@pytest.mark.parametrize("table", ["features", "reduce", "cluster"])
@pytest.mark.parametrize("key", ["name", "layer"])
def test_stage_tables_with_a_key_named_like_an_argument(table, key):
    """[features] name = ... (and siblings) is an unknown parameter, not a clash of Python arguments."""
    config = {table: {key: "x"}}
    if table == "features" and key == "layer":
        with pytest.raises(SpecError, match="'mobilenet_v2' .*layer"):  # a layer name that does not parse
            build_run_spec({table: {key: "x y"}})
        assert build_run_spec(config).pipeline.features.layer == "x"
        return
    with pytest.raises(SpecError, match=f"'{key}'"):
        build_run_spec(config)


def _readme_stage_rows() -> dict[tuple[str, str], str]:
    """docs/pipelines.md's stage table: (stage, name) -> the parameters cell."""
    import re
    from pathlib import Path

    rows = {}
    readme = (Path(__file__).resolve().parents[1] / "docs" / "pipelines.md").read_text()
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in ("features", "reduce", "cluster"):
            for name in re.findall(r"`([a-z0-9_]+)`", cells[1].split("(")[0]):
                rows[(cells[0], name)] = cells[2]
    return rows


def test_docs_stage_table_lists_every_stage_its_parameters_and_select_rules():
    from rca_gpu.engine import registry
    from rca_gpu.spec import EXTRACTORS

    rows = _readme_stage_rows()
    reducers = {n: c.params for n, c in registry.reducers().items()}
    clusterers = {n: c.params for n, c in registry.clusterers().items()}
    for stage, table in (("features", {n: i.params for n, i in EXTRACTORS.items()}), ("reduce", reducers),
                         ("cluster", clusterers)):
        for name, params in table.items():
            assert (stage, name) in rows, f"docs/pipelines.md's stage table lacks {stage} {name}"
            for key in params:
                assert f"`{key}`" in rows[(stage, name)], f"docs/pipelines.md: {stage} {name} lacks parameter {key}"
    for name, card in registry.clusterers().items():
        assert f"`select` ({', '.join(card.select_rules)})" in rows[("cluster", name)]


def test_pipelines_command_lists_the_select_rules_and_layers():
    from typer.testing import CliRunner

    from rca_gpu.cli import app
    from rca_gpu.engine import registry

    output = CliRunner().invoke(app, ["pipelines"], env={"COLUMNS": "250"}).output
    for card in registry.clusterers().values():
        assert f"select ({', '.join(card.select_rules)})" in output
    assert "mobilenet_v2[@layer]" in output and "FEATURES[@LAYER]+REDUCER+CLUSTERER" in output
    for name in ("gradxinput", "ig"):
        assert name in output
