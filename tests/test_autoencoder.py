"""The convolutional autoencoder: geometry, training, caching of the trained model, features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import digits_source, run_extractor

from rca_gpu.data.sources import from_arrays
from rca_gpu.features import autoencoder
from rca_gpu.features.autoencoder import AEConfig, AutoencoderExtractor, ConvAutoencoder, plan_geometry
from rca_gpu.features.base import ExtractionContext
from rca_gpu.spec import make_features


@pytest.fixture(scope="module")
def digits():
    return digits_source(160)


def _context(failures, work_dir, **kwargs) -> ExtractionContext:
    return ExtractionContext(failures, torch.device("cpu"), batch_size=32, work_dir=work_dir, **kwargs)


def _run(spec, context):
    return run_extractor(AutoencoderExtractor, spec, context)


@pytest.mark.parametrize(
    ("size", "expected"),
    [(8, (16, 2)), (28, (32, 3)), (64, (64, 4)), (100, (112, 4)), (224, (128, 5)), (500, (128, 5))],
)
def test_geometry_follows_the_image_size(size, expected):
    side, stages = plan_geometry(size)
    assert (side, stages) == expected
    assert side % 8 == 0 and side % 2**stages == 0


@pytest.mark.parametrize("config", [AEConfig(1, 16, 2, 8), AEConfig(3, 32, 3, 16), AEConfig(3, 128, 5, 32)])
def test_autoencoder_reconstructs_the_input_shape(config):
    model = ConvAutoencoder(config).eval()
    x = torch.rand(2, config.channels, config.image_size, config.image_size)
    with torch.no_grad():
        assert model(x).shape == x.shape
        assert model.encode(x).shape == (2, config.latent)


def test_training_lowers_the_loss_and_gives_latent_features(digits, tmp_path):
    extractor, features = _run(make_features("ae", latent=8, epochs=4), _context(digits, tmp_path))
    info = extractor.describe()
    assert features.shape == (160, 8) and torch.isfinite(features).all()
    assert info["trained"] is True and extractor.image_mode == "L"
    assert info["image_size"] == 16 and info["architecture"]["stages"] == 2
    history = info["history"]
    assert 1 <= info["epochs_run"] == len(history) <= 4
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert info["val_loss"] is not None and info["train_images"] == 160


def test_a_second_run_reuses_the_saved_model(digits, tmp_path, monkeypatch):
    spec = make_features("ae", latent=8, epochs=2)
    first, first_features = _run(spec, _context(digits, tmp_path))
    weights = tmp_path / "autoencoder" / f"ae-{first.key}" / "model.pt"
    stamp = weights.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the saved autoencoder should have been reused")

    monkeypatch.setattr(autoencoder, "train_autoencoder", no_training)
    second, second_features = _run(spec, _context(digits, tmp_path))
    assert second.describe()["trained"] is False
    assert second.cache_token() == first.cache_token()
    assert weights.stat().st_mtime_ns == stamp
    assert second.describe()["epochs_run"] == first.describe()["epochs_run"]
    assert torch.allclose(first_features, second_features, atol=1e-6)
    state = torch.load(weights, weights_only=True)
    assert "encoder.0.weight" in state


def test_other_settings_or_seed_train_a_new_model(digits, tmp_path):
    base, _ = _run(make_features("ae", latent=4, epochs=1), _context(digits, tmp_path))
    other_latent, _ = _run(make_features("ae", latent=6, epochs=1), _context(digits, tmp_path))
    other_seed, _ = _run(make_features("ae", latent=4, epochs=1), _context(digits, tmp_path, seed=1))
    assert len({base.key, other_latent.key, other_seed.key}) == 3
    assert other_latent.describe()["trained"] and other_seed.describe()["trained"]
    assert len(list((tmp_path / "autoencoder").iterdir())) == 3


def test_training_is_seeded_without_touching_the_global_rng(digits, tmp_path):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    images = torch.from_numpy(digits.images[:64]).repeat(1, 2, 2)[:, None]  # uint8, 1 x 16 x 16
    model = autoencoder.build_autoencoder(AEConfig(1, 16, 2, 4), seed=7)
    autoencoder.train_autoencoder(model, images, epochs=1, batch_size=16, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    _, a = _run(make_features("ae", latent=4, epochs=1), _context(digits, tmp_path / "a"))
    _, b = _run(make_features("ae", latent=4, epochs=1), _context(digits, tmp_path / "b"))
    assert torch.allclose(a, b, atol=1e-5)  # same seed, same model, trained twice


def test_a_damaged_saved_model_is_retrained(digits, tmp_path):
    spec = make_features("ae", latent=4, epochs=1)
    first, _ = _run(spec, _context(digits, tmp_path))
    (tmp_path / "autoencoder" / f"ae-{first.key}" / "model.pt").write_bytes(b"not a state dict")
    again, features = _run(spec, _context(digits, tmp_path))
    assert again.describe()["trained"] is True and features.shape == (160, 4)


def test_without_a_work_dir_nothing_is_saved(digits):
    extractor, features = _run(make_features("ae", latent=4, epochs=1), _context(digits, None))
    assert extractor.describe()["model_path"] is None and features.shape == (160, 4)


def test_rgb_sources_train_an_rgb_autoencoder(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(24, 20, 30, 3), dtype=np.uint8)
    extractor, features = _run(
        make_features("ae", latent=5, epochs=1), _context(from_arrays(images), tmp_path)
    )
    assert extractor.image_mode == "RGB" and extractor.config.channels == 3
    assert extractor.config.image_size == 32 and features.shape == (24, 5)
