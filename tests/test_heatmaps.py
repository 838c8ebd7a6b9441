"""LRP and Grad-CAM heatmaps of the DUT: conservation, shapes, layer choice, and end-to-end extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import digits_source, import_source, run_extractor

from rca_gpu.errors import SpecError
from rca_gpu.features import layers
from rca_gpu.features.base import ExtractionContext
from rca_gpu.features.dut import load_model
from rca_gpu.features.heatmaps import (
    GradCAMExtractor,
    LRPExtractor,
    gradcam_maps,
    lrp_relevance,
    make_composite,
)
from rca_gpu.spec import make_features

NET_SOURCE = """
import torch
from torch import nn


class SmallNet(nn.Module):
    input_shape = (1, 28, 28)
    classes = [str(i) for i in range(10)]

    def __init__(self, bias=True):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=bias)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=bias)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 7 * 7, 32, bias=bias)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(32, 10, bias=bias)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


def build():
    torch.manual_seed(0)
    return SmallNet()


def build_without_bias():
    torch.manual_seed(0)
    return SmallNet(bias=False)
"""


@pytest.fixture
def dut_module(tmp_path, monkeypatch):
    return import_source(tmp_path, monkeypatch, "rca_test_heatmap_dut", NET_SOURCE)


@pytest.fixture
def weights(dut_module, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(dut_module.build().state_dict(), path)
    return path


def _x(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(2))


# --------------------------------------------------------------------------------------------------
# LRP
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["epsilon", "zplus", "epsilon_plus"])
def test_lrp_relevance_is_conserved_down_to_the_pixels(dut_module, rule):
    """Without biases every rule here conserves relevance: each layer's sum equals the predicted logit."""
    model = dut_module.build_without_bias().eval()
    names = ["conv1", "conv2", "pool2", "fc1"]
    result = lrp_relevance(model, _x(), names, composite=make_composite(model, rule), with_input=True)
    logit = result.logits.gather(1, result.predicted[:, None]).squeeze(1)
    assert torch.equal(result.predicted, model(_x()).argmax(1))
    for name in names:
        total = result.layers[name].flatten(1).sum(1)
        assert torch.allclose(total, logit, rtol=1e-3, atol=1e-6), name
    assert torch.allclose(result.input.flatten(1).sum(1), logit, rtol=1e-3, atol=1e-6)


def test_lrp_heatmaps_have_the_shape_of_the_layer_output(dut_module):
    model = dut_module.build().eval()
    result = lrp_relevance(model, _x(4), ["conv1", "conv2", "fc1"], composite=make_composite(model))
    assert result.layers["conv1"].shape == (4, 8, 28, 28)
    assert result.layers["conv2"].shape == (4, 16, 14, 14)
    assert result.layers["fc1"].shape == (4, 32)
    assert result.input is None
    # relevance of switched-off neurons (negative pre-activation) is zero
    pre = model.conv2(model.pool1(model.relu1(model.conv1(_x(4)))))
    assert torch.all(result.layers["conv2"][pre <= 0] == 0)
    # the model is left as it was: no hooks, same outputs
    assert not model.conv2._forward_hooks and not model.conv2._forward_pre_hooks


def test_lrp_shares_relevance_across_torchvision_residual_blocks():
    """ResNet's additions go through zennit's ResNetCanonizer: relevance is not counted on both branches."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    model.fc.bias.data.zero_()  # random-init batch norms merge without bias: the whole net conserves
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = lrp_relevance(model, x, ["conv1", "layer1", "layer3"], composite=make_composite(model))
    logit = result.logits.gather(1, result.predicted[:, None]).squeeze(1)
    for name, relevance in result.layers.items():
        assert torch.allclose(relevance.flatten(1).sum(1), logit, rtol=1e-3), name


def test_lrp_on_an_export_archive_matches_the_eager_model(dut_module, tmp_path):
    eager = dut_module.build().eval()
    path = tmp_path / "net.pt2"
    program = torch.export.export(eager, (_x(3),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)
    exported = load_model(str(path), device="cpu")
    names = ["conv2", "fc1"]
    want = lrp_relevance(eager, _x(), names, composite=make_composite(eager)).layers
    got = lrp_relevance(exported, _x(), names, composite=make_composite(exported)).layers
    for name in names:
        assert torch.allclose(got[name], want[name], atol=1e-6), name


def test_lrp_extractor_end_to_end_at_a_named_layer(weights):
    context = ExtractionContext(
        digits_source(40), torch.device("cpu"), batch_size=16, model_ref=f"rca_test_heatmap_dut:build={weights}"
    )
    extractor, features = run_extractor(LRPExtractor, make_features("lrp", "conv2"), context)
    assert features.shape == (40, 16 * 14 * 14)
    assert torch.isfinite(features).all() and features.abs().sum() > 0
    info = extractor.describe()
    assert info["layer"] == "conv2" and info["layer_choice"] is None and info["rule"] == "epsilon_plus"
    assert info["map_shape"] == [16, 14, 14] and info["dims"] == 16 * 14 * 14
    assert extractor.needs_grad


def test_lrp_extractor_pools_and_works_under_inference_mode(weights):
    context = ExtractionContext(
        digits_source(10), torch.device("cpu"), batch_size=10, model_ref=f"rca_test_heatmap_dut:build={weights}"
    )
    extractor = LRPExtractor(make_features("lrp", "conv1", pool=4, rule="zplus"), context)
    extractor.prepare()
    _, images = next(iter(context.batches(extractor.transform(), extractor.image_mode)))
    plain = extractor.encode(images)
    with torch.inference_mode():
        guarded = extractor.encode(images)
    assert plain.shape == (10, 8 * 4 * 4)
    assert torch.allclose(plain, guarded)


def test_lrp_extractor_chooses_a_layer_hudd_style_and_reports_every_candidate(weights):
    context = ExtractionContext(
        digits_source(80),
        torch.device("cpu"),
        batch_size=32,
        seed=3,
        model_ref=f"rca_test_heatmap_dut:build={weights}",
    )
    extractor, features = run_extractor(LRPExtractor, make_features("lrp"), context)
    choice = extractor.describe()["layer_choice"]
    assert set(choice["scores"]) == {"conv1", "conv2", "fc1"}  # the output layer fc2 is no candidate
    assert choice["sample"] == 80
    assert extractor.layer in choice["scores"]
    best = min(s["wicd"] for s in choice["scores"].values())
    assert choice["scores"][extractor.layer]["wicd"] == best
    assert all(2 <= s["k"] <= 30 for s in choice["scores"].values())
    assert features.shape[0] == 80


def test_lrp_on_torchscript_matches_the_eager_model(dut_module, tmp_path, weights):
    import json
    import warnings

    SPEC = json.dumps({"input_shape": [1, 28, 28]})  # noqa: N806 - the archive's input description

    path = tmp_path / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(dut_module.build().eval()).save(str(path), _extra_files={"rca_gpu.json": SPEC})
    _, got = run_extractor(LRPExtractor, make_features("lrp", "conv2"),
                           ExtractionContext(digits_source(4), torch.device("cpu"), model_ref=str(path)))
    eager = ExtractionContext(digits_source(4), torch.device("cpu"), model_ref=f"rca_test_heatmap_dut:build={weights}")
    _, expected = run_extractor(LRPExtractor, make_features("lrp", "conv2"), eager)
    assert got.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5)


def test_unknown_layer_lists_the_real_ones(weights):
    context = ExtractionContext(
        digits_source(4), torch.device("cpu"), model_ref=f"rca_test_heatmap_dut:build={weights}"
    )
    with pytest.raises(SpecError, match=r"no layer 'features\.3' for 'lrp@features\.3'.*conv1, conv2"):
        LRPExtractor(make_features("lrp", "features.3"), context).prepare()


# --------------------------------------------------------------------------------------------------
# Grad-CAM
# --------------------------------------------------------------------------------------------------


def test_gradcam_maps_have_the_layer_grid_and_are_non_negative(dut_module):
    model = dut_module.build().eval()
    maps, predicted = gradcam_maps(model, _x(5), ["conv1", "conv2"])
    assert maps["conv1"].shape == (5, 1, 28, 28)
    assert maps["conv2"].shape == (5, 1, 14, 14)
    assert all(bool((m >= 0).all()) for m in maps.values())
    assert maps["conv2"].sum() > 0
    assert torch.equal(predicted, model(_x(5)).argmax(1))


def test_gradcam_extractor_end_to_end_with_layer_choice(weights):
    context = ExtractionContext(
        digits_source(60), torch.device("cpu"), batch_size=32, model_ref=f"rca_test_heatmap_dut:build={weights}"
    )
    extractor, features = run_extractor(GradCAMExtractor, make_features("gradcam", pool=7), context)
    info = extractor.describe()
    assert set(info["layer_choice"]["scores"]) == {"conv1", "conv2"}  # conv layers only
    assert features.shape == (60, 49)
    assert bool((features >= 0).all())


def test_gradcam_refuses_a_layer_without_spatial_maps(weights):
    context = ExtractionContext(
        digits_source(4), torch.device("cpu"), model_ref=f"rca_test_heatmap_dut:build={weights}"
    )
    with pytest.raises(
        SpecError, match=r"Grad-CAM needs a layer with spatial maps.*'fc1' outputs shape \(1,\)"
    ):
        GradCAMExtractor(make_features("gradcam", "fc1"), context).prepare()


# --------------------------------------------------------------------------------------------------
# HUDD's layer measure
# --------------------------------------------------------------------------------------------------


def test_wicd_follows_huddss_definition():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(9, 2))
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])  # plus nothing else: 3 clusters
    expected = 0.0
    for label in range(3):
        members = np.flatnonzero(labels == label)
        pairs = [distances[a, b] for i, a in enumerate(members) for b in members[i + 1 :]]
        expected += len(members) / 9 * np.mean(pairs)
    assert layers.wicd(distances, labels) == pytest.approx(expected / 3)
    singletons = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7])
    assert layers.wicd(distances, singletons) == pytest.approx(2 / 9 * distances[0, 1] / 8)


def test_layer_choice_prefers_the_layer_whose_heatmaps_form_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 50, generator=generator) * 6
    clustered = centres.repeat_interleave(30, 0) + torch.randn(120, 50, generator=generator) * 0.3
    noise = torch.randn(120, 80, generator=generator)
    best, scores = layers.choose_layer({"early": noise, "late": clustered})
    assert best == "late"
    assert scores["late"]["k"] == 4
    assert scores["late"]["wicd"] < scores["early"]["wicd"]
