"""The command line: outputs, one-line errors with the fix, and a light start-up."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from helpers import one_line_error, pattern_images, write_pngs
from typer.testing import CliRunner

from rca_gpu.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    images, labels = pattern_images(n_per=12, groups=3)
    write_pngs(root / "imgs", images, labels)
    return root


def test_run_writes_outputs_and_prints_where(folder, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(folder), "--out", str(out), "--pipeline", "pixels+pca+kmeans",
                                 "--device", "cpu", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"results: {out.resolve()}" in result.output
    assert "3 clusters, 0 noise, 0 rejected of 36 images" in result.output
    for name in ("clusters.parquet", "embedding.parquet", "run.json"):
        assert (out / name).is_file()


@pytest.mark.quality
@pytest.mark.parametrize("third, injected", [("g2", ""), ("none", "; injected causes 1.000")])
def test_run_on_a_manifest_with_root_causes_prints_the_ground_truth_line(folder, tmp_path, third, injected):
    """The coverage of the injected causes is printed only when a cause is ``none`` (no cause injected)."""
    paths = sorted((folder / "imgs").glob("*.png"))
    manifest = folder / "manifest.csv"  # beside the images: manifest paths may not leave its folder
    pd.DataFrame({
        "path": [str(p.relative_to(folder)) for p in paths],
        # g0, g1, g2: the planted groups; the third named ``third``
        "root_cause": [p.name.split("_")[0].replace("g2", third) for p in paths],
    }).to_csv(manifest, index=False)
    result = runner.invoke(app, ["run", str(manifest), "--out", str(tmp_path / "out"), "-p",
                                 "pixels+pca+kmeans(k=3)", "--device", "cpu", "--workers", "0", "--quiet"])
    manifest.unlink()
    assert result.exit_code == 0, result.output
    assert (f"against the known root causes: weighted purity 1.000, coverage 1.000 (3 of 3 causes{injected}), "
            "ARI 1.000; details in metrics.json") in result.output


def test_config_file_is_read_and_overridden(folder, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('pipeline = "pixels+none+kmeans"\ndevice = "cpu"\nworkers = 0\n[cluster]\nk = 2\n')
    result = runner.invoke(app, ["run", str(folder), "--out", str(tmp_path / "o"), "--config", str(config), "-q"])
    assert result.exit_code == 0, result.output
    assert "kmeans(k=2)" in result.output
    result = runner.invoke(app, ["run", str(folder), "--out", str(tmp_path / "o2"), "--config", str(config), "-q",
                                 "--pipeline", "pixels+none+kmeans(k=3)"])
    assert "kmeans(k=3)" in result.output


def test_missing_source(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    one_line_error(result, "does not exist", "Pass a folder of images or a manifest")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["run", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    one_line_error(result, "holds no images")


def test_manifest_without_path(tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"image": ["a.png"]}).to_csv(manifest, index=False)
    result = runner.invoke(app, ["run", str(manifest), "--out", str(tmp_path / "o")])
    one_line_error(result, "has no 'path' column", "Add a 'path' column")


def test_unknown_pipeline(folder, tmp_path):
    result = runner.invoke(app, ["run", str(folder), "--out", str(tmp_path / "o"), "-p", "alexnet+umap+dbscan"])
    one_line_error(result, "Unknown feature extractor 'alexnet'", "rca-gpu pipelines")


def test_bad_option_values(folder, tmp_path):
    result = runner.invoke(app, ["run", str(folder), "--out", str(tmp_path / "o"), "--batch-size", "0"])
    one_line_error(result, "'batch_size' option must be an int in [1, 4096]. Got 0 instead.", "--batch-size")
    result = runner.invoke(app, ["run", str(folder), "--out", str(tmp_path / "o"), "--device", "tpu"])
    one_line_error(result, "Invalid value for '--device'", "'tpu'")


def test_too_few_images(tmp_path):
    images, labels = pattern_images(n_per=1, groups=2)
    write_pngs(tmp_path / "two", images, labels)
    result = runner.invoke(app, ["run", str(tmp_path / "two"), "--out", str(tmp_path / "o"), "-p",
                                 "pixels+none+kmeans", "--device", "cpu", "--workers", "0", "-q"])
    one_line_error(result, "needs at least 3 usable images")


def test_pipelines_lists_every_stage():
    result = runner.invoke(app, ["pipelines"])
    assert result.exit_code == 0
    for name in ("mobilenet_v2", "resnet50", "vgg16", "pixels", "umap", "pca", "hdbscan", "ward"):
        assert name in result.output


def test_help_does_not_import_heavy_libraries():
    code = "import sys, rca_gpu.cli; print(sorted(m for m in ('torch', 'cupy', 'cuml', 'umap', 'sklearn', " \
           "'faiss', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    help_text = subprocess.run([sys.executable, "-m", "rca_gpu.cli", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "run" in help_text.stdout


def test_cluster_table_keeps_each_explanation_whole_in_a_narrow_terminal():
    """An 80-column terminal shows cluster, size, the first metadata column and the whole explanation (no line
    wider than the terminal, nothing cut); a wide one shows every metadata column."""
    import numpy as np
    import pandas as pd
    from rich.console import Console

    from rca_gpu.cli import print_clusters
    from rca_gpu.report.explain import explain_clusters

    rng = np.random.default_rng(0)
    n = 120
    cluster = np.repeat([0, 1, 2], n // 3)
    clusters = pd.DataFrame({
        "id": np.arange(n), "path": [f"{i}.png" for i in range(n)], "cluster": cluster,
        "status": "clustered", "reason": "",
        "root_cause": np.array(["occlusion_of_the_upper_half", "rotation", "blur"])[cluster],
        "label": rng.integers(0, 10, n).astype(str), "prediction": rng.integers(0, 10, n).astype(str),
        "brightness_level": np.where(cluster == 0, 0.9, 0.1) + rng.normal(0, 0.01, n),
    })
    explanations = explain_clusters(clusters)
    layouts = ((80, ["root_cause"], ["prediction"]), (160, ["root_cause", "label", "prediction"], []))
    for width, shown, hidden in layouts:
        console = Console(width=width, record=True)
        print_clusters(clusters, console, explanations)
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        assert "precision" in text and "recall" in text
        assert "…" not in text  # nothing cut
        assert text.count("(precision ") == 3  # one explanation per cluster, each whole
        for column in shown:
            assert column in text, (width, column)
        for column in hidden:
            assert column not in text, (width, column)


def test_too_few_usable_images_names_the_rejection_reasons(tmp_path):
    """Every row of a manifest of links pointing outside its folder is rejected: the error says why, with the
    fix, instead of only "0 usable"."""
    images, labels = pattern_images(n_per=3, groups=2)
    write_pngs(tmp_path / "originals", images, labels)
    linked = tmp_path / "export"
    linked.mkdir()
    originals = sorted((tmp_path / "originals").rglob("*.png"))
    for i, original in enumerate(originals):
        (linked / f"{i}.png").symlink_to(original)
    pd.DataFrame({"path": [f"{i}.png" for i in range(len(originals))]}).to_csv(linked / "manifest.csv", index=False)
    result = runner.invoke(app, ["run", str(linked / "manifest.csv"), "--out", str(tmp_path / "out"),
                                 "-p", "pixels+pca+kmeans(k=2)", "--device", "cpu", "--workers", "0"])
    line = one_line_error(result, f"{len(originals)} row(s) were rejected", "path escapes the image root",
                           "--image-root", "Check the paths")
    assert "Check that the files are images" not in line  # the files are images: only their paths are wrong
    ok = runner.invoke(app, ["run", str(linked / "manifest.csv"), "--out", str(tmp_path / "out"), "-p",
                             "pixels+pca+kmeans(k=2)", "--device", "cpu", "--workers", "0", "--image-root",
                             str(tmp_path), "--no-report", "--stability", "0"])
    assert ok.exit_code == 0, ok.output


def _knn_choices() -> list[str]:
    """The --knn-backend values `rca-gpu run --help` offers (its "<auto|torch|...>" after the option)."""
    import re

    help_text = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "250"}).output
    return re.search(r"--knn-backend\W+<([a-z|\-]+)>", help_text).group(1).split("|")


def test_every_knn_backend_in_the_help_is_accepted_registered_and_documented():
    from pathlib import Path

    from rca_gpu.engine.registry import implementations
    from rca_gpu.spec import KNN_BACKENDS, build_run_spec

    choices = _knn_choices()
    assert choices == list(KNN_BACKENDS) and "cuvs" in choices
    assert {i.algorithm for i in implementations() if i.stage == "knn"} == set(choices) - {"auto"}
    for backend in choices:
        assert build_run_spec({}, pipeline="pixels+pca+kmeans", knn_backend=backend).knn_backend == backend
    usage = Path(__file__).resolve().parents[1] / "docs" / "usage.md"
    row = next(line for line in usage.read_text().splitlines() if line.startswith("| `--knn-backend`"))
    assert all(f"`{backend}`" in row for backend in choices), row


@pytest.mark.parametrize("backend", _knn_choices())
def test_each_knn_backend_runs_here_or_says_what_it_needs(backend, folder, tmp_path):
    """On this machine each backend either runs or (GPU-only backends without a GPU) gives one line naming
    what to install."""
    import torch

    from rca_gpu.spec import GPU_ONLY_KNN_BACKENDS

    result = runner.invoke(app, ["run", str(folder), "--out", str(tmp_path / "o"), "-p", "pixels+pca+kmeans(k=3)",
                                 "--knn-backend", backend, "--workers", "0", "--no-report", "-q"])
    if backend in GPU_ONLY_KNN_BACKENDS and not torch.cuda.is_available():
        one_line_error(result, f"--knn-backend option '{backend}' needs", "on a CUDA GPU",
                       "pip install 'rca-gpu[gpu]'")
    else:
        assert result.exit_code == 0, result.output
        assert "3 clusters, 0 noise" in result.output


def test_backbone_weights_missing_from_the_cache_give_one_line_and_no_download(folder, tmp_path, monkeypatch):
    """An empty torch cache: resnet18's ImageNet weights are missing, and the run says so in one line without
    asking torchvision (which would print "Downloading: ..." and try the network first)."""
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args, **kwargs):
        raise AssertionError("a run must not download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)  # what torchvision's loader calls
    for pipeline, fragments in [
        ("resnet18+pca+kmeans", ["IMAGENET1K_V1 weights of resnet18 are not in the torch cache",
                                 "resnet18-f37072fd.pth is missing", "--weights PATH"]),
        ("resnet18(weights=V9)+pca+kmeans", ["Unknown weights 'V9' for resnet18", "IMAGENET1K_V1"]),
    ]:
        result = runner.invoke(app, ["run", str(folder), "--out", str(tmp_path / "o"), "-p", pipeline,
                                     "--workers", "0", "--no-report", "-q"])
        one_line_error(result, *fragments)
        assert "Downloading" not in result.output and len(result.output.strip().splitlines()) == 1


def test_mobilenet_v2_weights_load_from_the_torch_cache_without_the_network(monkeypatch):
    import torch.hub

    from rca_gpu.features.backbones import build_backbone

    def no_download(*args, **kwargs):
        raise AssertionError("a run must not download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    model = build_backbone("mobilenet_v2", None)
    assert sum(p.numel() for p in model.parameters()) > 3_000_000 and not model.training


def _leaf_commands(command, path=()):
    """(name path, click command) of every command under the ``rca-gpu`` group, sub-commands included."""
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _leaf_commands(sub, (*path, name))
    else:
        yield path, command


def test_every_command_takes_quiet():
    """-q/--quiet means the same on every command (no progress bars, tables or info lines), so every command
    accepts it, also the listings (pipelines, datasets list) and doctor."""
    import typer

    commands = dict(_leaf_commands(typer.main.get_command(app)))
    assert {("pipelines",), ("doctor",), ("datasets", "list"), ("datasets", "make"), ("run",)} <= set(commands)
    lacking = [" ".join(path) for path, command in commands.items()
               if not any({"--quiet", "-q"} <= set(param.opts) for param in command.params)]
    assert lacking == []


@pytest.mark.parametrize("command,title,line", [
    (["pipelines"], "Pipeline stages", "cluster: dbscan, hdbscan, kmeans, ward"),
    (["datasets", "list"], "rca-gpu benchmarks", "mnist-rc: none, rotation,"),
])
def test_quiet_listings_print_plain_lines_instead_of_the_table(command, title, line):
    table = runner.invoke(app, command)
    assert table.exit_code == 0 and title in table.output, table.output
    quiet = runner.invoke(app, [*command, "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert title not in quiet.output and "┃" not in quiet.output and "│" not in quiet.output
    assert any(printed.startswith(line) for printed in quiet.output.splitlines()), quiet.output


def test_demo_makes_the_benchmark_again_when_n_or_seed_differ_and_says_why(tmp_path, monkeypatch):
    """`demo --n 200` then `demo --n 250` must not reuse the 200-image data silently (nor another --seed)."""
    import json

    import rca_gpu.datasets
    import rca_gpu.pipeline
    from rca_gpu.datasets import DATASETS, dataset_differences
    from rca_gpu.datasets.proportions import resolve_proportions

    info = DATASETS["mnist-rc"]
    made = []

    def fake_make(name, out, *, n=None, seed=0, reporter=None, **_):  # writes only what the check reads
        out.mkdir(parents=True, exist_ok=True)
        shares = resolve_proportions(info.cause_names, info.default_proportions, None)
        (out / "dataset.json").write_text(json.dumps({"name": name, "n": n or info.default_n, "seed": seed,
                                                      "proportions": {c: round(p, 6) for c, p in shares.items()}}))
        (out / "manifest.parquet").write_bytes(b"")
        made.append((n, seed))
        return out / "manifest.parquet"

    class Stop(Exception):
        pass

    def fake_run(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(rca_gpu.datasets, "make_dataset", fake_make)
    monkeypatch.setattr(rca_gpu.pipeline, "run", fake_run)
    out = tmp_path / "demo"
    for options, expected in ((["--n", "200"], [(200, 0)]), (["--n", "200"], []),
                              (["--n", "250"], [(250, 0)]), (["--n", "250", "--seed", "3"], [(250, 3)])):
        made.clear()
        result = runner.invoke(app, ["demo", "--out", str(out), "-q", *options])
        assert isinstance(result.exception, Stop), result.output
        assert made == expected
        if options == ["--n", "250"]:  # made again, even with -q: the line names the value that changed
            assert "making the mnist-rc benchmark again (the earlier one has n 200 (asked 250))" in result.output
    assert dataset_differences(out / "data", "mnist-rc", n=250, seed=3) == []
    assert dataset_differences(out / "data", "mnist-rc", n=200, seed=3) == ["n 250 (asked 200)"]
    assert dataset_differences(tmp_path / "none", "mnist-rc") == ["no benchmark"]


def test_study_help_and_docs_list_the_default_feature_sets_of_the_code():
    import re
    from pathlib import Path

    from rca_gpu.studies import default_features

    sets = default_features(has_dut=True)
    shown = " ".join(runner.invoke(app, ["study", "--help"], env={"COLUMNS": "400"}).output.split())
    listed = re.search(r"\(default: (.*?) when the DNN under test is known\)", shown).group(1)
    assert [s for part in listed.split(", and ") for s in part.split(", ")] == list(sets)
    readme = (Path(__file__).parents[1] / "docs" / "pipelines.md").read_text()
    table = readme.split("| feature set | family |")[1].split("\n\n")[0]
    assert re.findall(r"`([^`]+)`", "".join(line.split("|")[1] for line in table.splitlines()[2:])) == list(sets)
    assert f"{len(sets)} feature sets x 3 reducers x 4 clusterers" in readme
