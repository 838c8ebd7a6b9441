"""Loading the DNN under test in each accepted form, refusing unsafe ones; its activations as features."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from helpers import digits_source, import_source, run_extractor

from rca_gpu.errors import ModelError, SpecError
from rca_gpu.features.base import ExtractionContext
from rca_gpu.features.dut import (
    DUTActivationExtractor,
    check_input,
    dut_transform,
    input_spec,
    load_model,
    model_info,
)
from rca_gpu.spec import make_features

NET_SOURCE = '''
import torch
from torch import nn


class SmallNet(nn.Module):
    """An MNIST-sized DUT following the convention: [0, 1] input, normalisation inside, logits out."""

    input_shape = (1, 28, 28)
    classes = [str(i) for i in range(10)]

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 7 * 7, 32)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = (x - 0.5) / 0.5
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


class NoShapeNet(SmallNet):
    input_shape = None


def build():
    torch.manual_seed(0)
    return SmallNet()


def build_without_shape():
    return NoShapeNet()


def build_broken():
    raise RuntimeError("no GPU driver")


not_a_factory = 3
'''


@pytest.fixture
def dut_module(tmp_path, monkeypatch):
    """An importable module ``rca_test_dut`` holding the small DUT and its factories."""
    return import_source(tmp_path, monkeypatch, "rca_test_dut", NET_SOURCE)


@pytest.fixture
def net(dut_module):
    return dut_module.build().eval()


@pytest.fixture
def weights(net, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(net.state_dict(), path)
    return path


def _x(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _export(net, path, *, dynamic: bool = True, extra: dict | None = None) -> None:
    dims = ({0: torch.export.Dim("batch")},) if dynamic else None
    program = torch.export.export(net, (_x(4),), dynamic_shapes=dims)
    torch.export.save(program, path, extra_files=extra)


def _script(net, path, extra: dict | None = None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated, still supported
        torch.jit.script(net).save(str(path), _extra_files=extra or {})


# --------------------------------------------------------------------------------------------------
# Accepted formats
# --------------------------------------------------------------------------------------------------


def test_factory_with_state_dict_loads_weights_and_declares_its_input(dut_module, net, weights):
    model = load_model(f"rca_test_dut:build={weights}", device="cpu")
    assert not model.training
    assert torch.allclose(model(_x()), net(_x()))
    assert model_info(model).format == "factory"
    spec = input_spec(model)
    assert spec["input_shape"] == [1, 28, 28]
    assert spec["classes"] == [str(i) for i in range(10)]
    assert spec["value_range"] == [0.0, 1.0]


def test_torchscript_file_loads_with_its_spec_file(net, tmp_path):
    path = tmp_path / "net.pt"
    _script(
        net, path, {"rca_gpu.json": json.dumps({"input_shape": [1, 28, 28], "classes": list("abcdefghij")})}
    )
    model = load_model(str(path), device=torch.device("cpu"))
    assert isinstance(model, torch.jit.ScriptModule)
    assert torch.allclose(model(_x()), net(_x()), atol=1e-6)
    assert input_spec(model)["input_shape"] == [1, 28, 28]
    assert input_spec(model)["classes"] == list("abcdefghij")


def test_torchscript_spec_file_with_a_bad_shape_is_refused(net, tmp_path):
    path = tmp_path / "net.pt"
    _script(net, path, {"rca_gpu.json": json.dumps({"input_shape": [28, 28]})})
    with pytest.raises(ModelError, match=r"input_shape .* must be three positive ints \[C, H, W\]"):
        load_model(str(path), device="cpu")


def test_export_archive_loads_unflattened_with_named_layers(net, tmp_path):
    path = tmp_path / "net.pt2"
    _export(net, path)
    model = load_model(str(path), device="cpu")
    assert "conv2" in dict(model.named_modules())
    assert torch.allclose(model(_x(5)), net(_x(5)), atol=1e-6)  # another batch size than the example
    assert input_spec(model)["input_shape"] == [1, 28, 28]
    assert model_info(model).layer_types["conv2"] is torch.nn.Conv2d
    seen = []
    handle = dict(model.named_modules())["conv2"].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(_x(2))
    handle.remove()
    assert seen == [torch.Size([2, 16, 14, 14])]


def test_export_archive_with_a_static_batch_is_refused(net, tmp_path):
    path = tmp_path / "net.pt2"
    _export(net, path, dynamic=False)
    with pytest.raises(ModelError, match=r"only accepts batches of exactly 4 images.*dynamic_shapes"):
        load_model(str(path), device="cpu")


# --------------------------------------------------------------------------------------------------
# Refused and broken inputs
# --------------------------------------------------------------------------------------------------


def test_plain_pickle_of_a_module_is_refused_with_the_conversions(net, tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(net, path)
    with pytest.raises(ModelError, match=r"torch\.save\(model\).*arbitrary code") as info:
        load_model(str(path), device="cpu")
    text = str(info.value)
    assert "torch.jit.script" in text and "torch.export" in text and "factory=weights.pt" in text


def test_a_state_dict_alone_asks_for_the_factory(weights):
    with pytest.raises(ModelError, match=r"only weights \(a state_dict\).*package\.module:factory="):
        load_model(str(weights), device="cpu")


def test_missing_file_says_so_and_lists_the_formats(tmp_path):
    with pytest.raises(ModelError, match=r"does not exist.*TorchScript.*torch\.export"):
        load_model(str(tmp_path / "nope.pt"), device="cpu")


def test_a_file_that_is_no_model_is_refused(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelError, match=r"not a model file rca_gpu can read"):
        load_model(str(path), device="cpu")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("rca_no_such_package.nets:build", r"Cannot import 'rca_no_such_package\.nets'.*PYTHONPATH"),
        ("rca_test_dut:missing", r"has no callable 'missing'"),
        ("rca_test_dut:not_a_factory", r"has no callable 'not_a_factory'"),
        ("rca_test_dut:build_broken", r"build_broken\(\) failed: RuntimeError: no GPU driver"),
        ("rca_test_dut:build=/no/such/weights.pt", r"weights file '/no/such/weights\.pt' does not exist"),
    ],
)
def test_factory_errors_name_the_problem(dut_module, ref, message):
    with pytest.raises(ModelError, match=message):
        load_model(ref, device="cpu")


def test_weights_that_do_not_fit_the_factory(dut_module, tmp_path):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(ModelError, match=r"do not fit the model the factory builds"):
        load_model(f"rca_test_dut:build={path}", device="cpu")


def test_wrong_input_shape_names_the_expected_shape(dut_module, weights):
    model = load_model(f"rca_test_dut:build={weights}", device="cpu")
    with pytest.raises(
        ModelError, match=r"shape \(C, H, W\) = \(3, 32, 32\).*expects \(C, H, W\) = \(1, 28, 28\)"
    ):
        check_input(model, (3, 32, 32), device="cpu")
    assert check_input(model, (1, 28, 28), device="cpu").shape == (2, 10)


def test_wrong_input_shape_of_an_export_names_the_signature(net, tmp_path):
    path = tmp_path / "net.pt2"
    _export(net, path)
    model = load_model(str(path), device="cpu")
    with pytest.raises(
        ModelError, match=r"expects \(C, H, W\) = \(1, 28, 28\) \(from the export signature\)"
    ):
        check_input(model, (3, 28, 28), device="cpu")


def test_unknown_expected_shape_says_how_to_declare_it(dut_module):
    model = load_model("rca_test_dut:build_without_shape", device="cpu")
    assert input_spec(model) is None
    with pytest.raises(ModelError, match=r"expected shape is unknown: set input_shape = \(C, H, W\)"):
        check_input(model, (1, 20, 20), device="cpu")


# --------------------------------------------------------------------------------------------------
# Transform and the activation extractor
# --------------------------------------------------------------------------------------------------


def test_dut_transform_gives_the_models_shape_and_range_and_pickles():
    from PIL import Image

    rgb = Image.fromarray(np.full((8, 10, 3), 255, np.uint8))
    gray = dut_transform({"input_shape": [1, 28, 28]})
    out = gray(rgb)
    assert out.shape == (1, 28, 28) and out.dtype == torch.float32
    assert float(out.max()) == pytest.approx(1.0, abs=0.01)  # white stays white (up to grayscale rounding)
    color = pickle.loads(pickle.dumps(dut_transform([3, 16, 12])))
    assert color(Image.fromarray(np.zeros((8, 8), np.uint8))).shape == (3, 16, 12)
    scaled = dut_transform({"input_shape": [1, 4, 4], "value_range": [-1.0, 1.0]})
    assert float(scaled(Image.fromarray(np.zeros((4, 4), np.uint8))).min()) == pytest.approx(-1.0)


def test_dut_extractor_reads_the_penultimate_layer_by_default(dut_module, weights, net):
    failures = digits_source(50)
    context = ExtractionContext(
        failures, torch.device("cpu"), batch_size=16, model_ref=f"rca_test_dut:build={weights}"
    )
    extractor, features = run_extractor(DUTActivationExtractor, make_features("dut"), context)
    assert features.shape == (50, 32)
    info = extractor.describe()
    assert info["layer"] == "fc2" and info["reads"] == "input of fc2" and info["dims"] == 32
    # the same numbers as relu3's output for the same preprocessed images
    images = torch.cat([b for _, b in context.batches(extractor.transform(), "L")])
    expected = net.relu3(
        net.fc1(
            net.flatten(
                net.pool2(net.relu2(net.conv2(net.pool1(net.relu1(net.conv1((images - 0.5) / 0.5))))))
            )
        )
    )
    assert torch.allclose(features, expected, atol=1e-5)


def test_dut_extractor_at_a_named_conv_layer_with_pooling(dut_module, weights):
    context = ExtractionContext(
        digits_source(20), torch.device("cpu"), batch_size=8, model_ref=f"rca_test_dut:build={weights}"
    )
    extractor, features = run_extractor(DUTActivationExtractor, make_features("dut", "conv2", pool=2), context)
    assert features.shape == (20, 16 * 2 * 2)
    assert extractor.describe()["layer"] == "conv2"


def test_dut_extractor_unknown_layer_lists_real_ones(dut_module, weights):
    context = ExtractionContext(digits_source(5), torch.device("cpu"), model_ref=f"rca_test_dut:build={weights}")
    with pytest.raises(SpecError, match=r"no layer 'conv9'.*conv1, conv2, fc1, fc2"):
        DUTActivationExtractor(make_features("dut", "conv9"), context).prepare()


def test_dut_extractor_reads_torchscript_through_its_hookable_twin(net, tmp_path, weights, dut_module):
    path = tmp_path / "net.pt"
    _script(net, path, extra={"rca_gpu.json": json.dumps({"input_shape": [1, 28, 28]})})
    context = ExtractionContext(digits_source(6), torch.device("cpu"), model_ref=str(path))
    extractor, features = run_extractor(DUTActivationExtractor, make_features("dut", "conv2"), context)
    assert extractor.describe()["model_format"].startswith("torchscript (converted: TorchScript -> ONNX")
    eager_context = ExtractionContext(digits_source(6), torch.device("cpu"), model_ref=f"rca_test_dut:build={weights}")
    _, expected = run_extractor(DUTActivationExtractor, make_features("dut", "conv2"), eager_context)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


def test_dut_extractor_works_on_an_export_archive(net, tmp_path):
    path = tmp_path / "net.pt2"
    _export(net, path)
    context = ExtractionContext(digits_source(12), torch.device("cpu"), batch_size=5, model_ref=str(path))
    extractor, features = run_extractor(DUTActivationExtractor, make_features("dut"), context)
    assert features.shape == (12, 32)
    assert extractor.describe()["model_format"] == "export"
