"""DUT formats beyond torch: ONNX files (converted by onnx2torch, hooks work, layers named as on the eager model)
from both of torch's exporters and opsets 17 and 19, TorchScript files (converted through ONNX for the extractors
that read inside, as they are for the input attributions that need no hooks), and the same features on each."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch
from helpers import run_extractor

from rca_gpu.errors import ModelError
from rca_gpu.features.base import ExtractionContext
from rca_gpu.features.dut import DUTActivationExtractor, dut_transform, load_model, model_info
from rca_gpu.features.heatmaps import (
    GradCAMExtractor,
    GradientXInputExtractor,
    IntegratedGradientsExtractor,
    LRPExtractor,
)
from rca_gpu.spec import make_features, parse_pipeline

onnx = pytest.importorskip("onnx", reason="ONNX support is the 'onnx' extra (part of rca-gpu[test])")


def _export_onnx(model: torch.nn.Module, path, *, opset: int = 17) -> None:
    example = torch.rand(2, *model.input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated, still supported
        torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}}, opset_version=opset, dynamo=False)


def _script(model: torch.nn.Module, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(model).save(str(path))


@pytest.fixture(scope="module")
def mnist_dut(mnist_rc_small, tmp_path_factory):
    """The mnist-rc DUT (trained, from the dataset's manifest), its source, and the DUT exported to ONNX."""
    from rca_gpu.data.sources import load_source

    failures = load_source(mnist_rc_small)
    eager = load_model(failures.dut, device="cpu")
    path = tmp_path_factory.mktemp("onnx") / "mnist_dut.onnx"
    _export_onnx(eager, path)
    return failures, eager, path


def _context(failures, ref: str) -> ExtractionContext:
    return ExtractionContext(failures, torch.device("cpu"), batch_size=100, model_ref=ref)


def test_onnx_mnist_dut_gives_the_same_predictions_and_dut_features(mnist_dut):
    failures, eager, path = mnist_dut
    converted = load_model(str(path), device="cpu")
    assert model_info(converted).format == "onnx"
    assert model_info(converted).spec["input_shape"] == [1, 28, 28]  # read from the graph's input
    context = _context(failures, str(path))
    images = torch.cat([batch for _, batch in context.batches(dut_transform(model_info(converted).spec), "L")])
    assert len(images) == len(failures.usable_positions) >= 300
    with torch.no_grad():
        expected, got = eager(images), converted(images)
    np.testing.assert_array_equal(got.argmax(1).numpy(), expected.argmax(1).numpy())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

    onnx_extractor, onnx_features = run_extractor(DUTActivationExtractor, make_features("dut"), context)
    _, eager_features = run_extractor(DUTActivationExtractor, make_features("dut"), _context(failures, failures.dut))
    assert onnx_extractor.describe()["model_format"] == "onnx"
    assert onnx_features.shape == eager_features.shape and onnx_features.shape[0] == len(images)
    torch.testing.assert_close(onnx_features, eager_features, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("extractor, layer", [(LRPExtractor, "features.3"), (GradCAMExtractor, "features.6")])
def test_onnx_dut_heatmaps_match_the_eager_model(mnist_dut, extractor, layer):
    failures, _, path = mnist_dut
    name = "lrp" if extractor is LRPExtractor else "gradcam"
    parse_pipeline(f"{name}@{layer}+umap+dbscan")
    few = _subset(failures, 40)
    _, got = run_extractor(extractor, make_features(name, layer, pool=2), _context(few, str(path)))
    _, expected = run_extractor(extractor, make_features(name, layer, pool=2), _context(few, failures.dut))
    assert got.shape == expected.shape and got.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)


def _subset(failures, n: int):
    """The first ``n`` images of a source, in memory."""
    from PIL import Image

    from rca_gpu.data.sources import from_arrays

    images = [np.asarray(Image.open(failures.paths[int(p)]).convert("L")) for p in failures.usable_positions[:n]]
    return from_arrays(np.stack(images), {"i": np.arange(n)})


def test_onnx_operator_outside_the_table_is_refused_and_nothing_is_imported(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Run", ["x"], ["y"], domain="evil_module_that_must_not_load")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("evil_module_that_must_not_load", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match=r"uses an operator onnx2torch cannot convert.*opset_version=17"):
        load_model(str(path), device="cpu")
    assert "evil_module_that_must_not_load" not in sys.modules


def test_onnx_external_weights_outside_the_model_folder_are_refused(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((2, 16), dtype=np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../outside.bin"
    (tmp_path / "outside.bin").write_bytes(np.ones(32, np.float32).tobytes())
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])], [weight])
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "m.onnx"))
    with pytest.raises(ModelError, match=r"keeps weights in '\.\./outside\.bin'.*must lie beside the model"):
        load_model(str(folder / "m.onnx"), device="cpu")


def test_a_corrupt_onnx_file_is_refused(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07 this is not a protobuf \xff\xff")
    with pytest.raises(ModelError, match=r"Cannot read the ONNX file|Cannot convert the ONNX file"):
        load_model(str(path), device="cpu")


# --------------------------------------------------------------------------------------------------
# One DUT in every format: the same layers under the same names, the same features
# --------------------------------------------------------------------------------------------------


def _export_dynamo(model: torch.nn.Module, path, opset: int) -> None:
    """torch.onnx.export as it is called today: the dynamo exporter, a dynamic batch."""
    import contextlib
    import io

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(2, *model.input_shape),), str(path), opset_version=opset,
                          input_names=["images"], dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True)


@pytest.fixture(scope="module")
def every_format(mnist_rc_small, tmp_path_factory):
    """The mnist-rc DUT as factory + state_dict, TorchScript (the benchmark's dut.pt), and ONNX from today's
    dynamo exporter at opsets 17 (converted down by the exporter) and 19, and from the TorchScript exporter."""
    from rca_gpu.data.sources import load_source

    failures = load_source(mnist_rc_small)
    eager = load_model(failures.dut, device="cpu")
    folder = tmp_path_factory.mktemp("formats")
    refs = {"factory": failures.dut, "torchscript": str(mnist_rc_small.parent / "dut.pt")}
    for opset in (17, 19):
        _export_dynamo(eager, folder / f"dynamo{opset}.onnx", opset)
        refs[f"onnx{opset}"] = str(folder / f"dynamo{opset}.onnx")
    _export_onnx(eager, folder / "legacy.onnx")
    refs["onnx17-torchscript-exporter"] = str(folder / "legacy.onnx")
    return _subset(failures, 48), refs


@pytest.mark.parametrize("extractor, spec", [
    (DUTActivationExtractor, make_features("dut")),
    (DUTActivationExtractor, make_features("dut", "features.6", pool=2)),
    (LRPExtractor, make_features("lrp")),
    (GradCAMExtractor, make_features("gradcam")),
])
def test_every_format_gives_the_same_layer_and_features(every_format, extractor, spec):
    """The default layer (dut: the input of the last Linear; lrp, gradcam: HUDD's choice) and the features
    are those of the eager model in every format, so the clusters are too."""
    few, refs = every_format
    expected_extractor, expected = run_extractor(extractor, spec, _context(few, refs["factory"]))
    assert expected.abs().sum() > 0
    for name, ref in refs.items():
        if name == "factory":
            continue
        got_extractor, got = run_extractor(extractor, spec, _context(few, ref))
        assert got_extractor.describe()["layer"] == expected_extractor.describe()["layer"], name
        assert got_extractor.describe()["model_format"].startswith(name.split("1")[0].replace("onnx", "onnx")), name
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_torchscript_layers_carry_the_eager_names(every_format):
    from rca_gpu.features.dut import hookable
    from rca_gpu.features.layers import weighted_layers

    _, refs = every_format
    eager = load_model(refs["factory"], device="cpu")
    converted = hookable(load_model(refs["torchscript"], device="cpu"), {"input_shape": [1, 28, 28]}, extractor="dut")
    assert weighted_layers(converted) == weighted_layers(eager) == [
        "features.0", "features.3", "features.6", "classifier.1", "classifier.3"]
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(converted(x), eager(x))
    assert "TorchScript -> ONNX" in model_info(converted).conversion


def test_a_torchscript_model_that_cannot_be_converted_names_the_formats_that_can(every_format, monkeypatch):
    few, refs = every_format

    def refuse(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::weird' to ONNX opset version 17 is not supported.")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(ModelError, match=r"'gradcam' extractor reads inside .*could not be converted .*aten::weird"
                                         r".*package\.module:factory=weights\.pt.*\.pt2.*gradxinput or ig"):
        GradCAMExtractor(make_features("gradcam"), _context(few, refs["torchscript"])).prepare()


# --------------------------------------------------------------------------------------------------
# TorchScript: attributions that need no hooks
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    from rca_gpu.datasets.models import mnist_cnn

    torch.manual_seed(0)
    model = mnist_cnn().eval()
    path = tmp_path_factory.mktemp("ts") / "dut.pt"
    _script(model, path)
    return model, path


def _digits_at_28(n: int):
    """scikit-learn's digits, upscaled to the mnist DUT's 28 x 28."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from rca_gpu.data.sources import from_arrays

    digits = load_digits()
    images = [np.asarray(Image.fromarray((d * 255 / 16).astype(np.uint8)).resize((28, 28))) for d in digits.images[:n]]
    return from_arrays(np.stack(images), {"label": digits.target[:n]})


@pytest.mark.parametrize("extractor, name, params", [
    (GradientXInputExtractor, "gradxinput", {"pool": 7}),
    (IntegratedGradientsExtractor, "ig", {"pool": 7, "steps": 16}),
])
def test_input_attributions_work_on_torchscript_and_match_the_eager_model(scripted, tmp_path, extractor, name,
                                                                         params):
    model, path = scripted
    source = _digits_at_28(24)
    ts_extractor, got = run_extractor(extractor, make_features(name, **params), _context(source, str(path)))
    assert ts_extractor.describe()["model_format"] == "torchscript"
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    _, expected = run_extractor(extractor, make_features(name, **params),
                                _context(source, f"rca_gpu.datasets.models:mnist_cnn={weights}"))
    assert got.shape == expected.shape == (24, 7 * 7)
    assert got.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_gradient_x_input_is_what_it_says(scripted):
    model, path = scripted
    source = _digits_at_28(6)
    extractor, features = run_extractor(GradientXInputExtractor, make_features("gradxinput"),
                                        _context(source, str(path)))
    images = torch.cat([b for _, b in _context(source, str(path)).batches(extractor.transform(), "L")])
    x = images.clone().requires_grad_(True)
    logits = model(x)
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    torch.testing.assert_close(features, (x.grad * images).flatten(1), rtol=1e-5, atol=1e-6)


def test_integrated_gradients_are_complete(scripted):
    """IG attributions sum to logit(image) - logit(black image) for the predicted class (its axiom)."""
    model, path = scripted
    source = _digits_at_28(6)
    extractor, features = run_extractor(IntegratedGradientsExtractor, make_features("ig", steps=128),
                                        _context(source, str(path)))
    images = torch.cat([b for _, b in _context(source, str(path)).batches(extractor.transform(), "L")])
    with torch.no_grad():
        logits, black = model(images), model(torch.zeros_like(images))
    predicted = logits.argmax(1, keepdim=True)
    gap = (logits.gather(1, predicted) - black.gather(1, predicted)).squeeze(1)
    torch.testing.assert_close(features.sum(1), gap, rtol=0.02, atol=0.02)
