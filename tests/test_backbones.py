"""The backbones' runtimes: torch and ONNX Runtime give the same features, the choice is recorded and keyed."""

from __future__ import annotations

import pytest
import torch
from helpers import pattern_images, run_extractor

from rca_gpu.data.sources import from_arrays
from rca_gpu.errors import SpecError
from rca_gpu.features.backbones import BackboneExtractor, resolve_runtime
from rca_gpu.features.base import ExtractionContext
from rca_gpu.features.extract import cache_key
from rca_gpu.spec import make_features, parse_pipeline


@pytest.fixture(scope="module")
def failures():
    images, groups = pattern_images(n_per=4, groups=3, size=32)
    return from_arrays(images, {"root_cause": [f"c{g}" for g in groups]})


def test_runtime_is_a_checked_parameter_of_the_backbones():
    assert parse_pipeline("mobilenet_v2(runtime=onnxruntime)+umap+dbscan").features.params == {
        "runtime": "onnxruntime"}
    with pytest.raises(SpecError, match=r"'runtime' parameter of extractor 'resnet18' must be one of 'auto', "):
        parse_pipeline("resnet18(runtime=tensorrt)+umap+dbscan")


def test_auto_takes_onnxruntime_only_where_it_runs_and_says_why_not():
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is the 'onnx' extra (part of rca-gpu[test])")
    assert resolve_runtime("auto", "cpu", "fp32") == ("onnxruntime", "")
    assert resolve_runtime("torch", "cpu", "fp32") == ("torch", "")
    runtime, why = resolve_runtime("auto", "cuda", "fp32")
    assert runtime == "torch" and why == "it runs on the CPU only and this run extracts on cuda"
    runtime, why = resolve_runtime("auto", "cpu", "bf16")
    assert runtime == "torch" and why == "it runs in fp32 only and this run asks for precision bf16"
    with pytest.raises(SpecError, match=r"^runtime=onnxruntime cannot run this extraction: it runs on the CPU "
                                        r"only and this run extracts on cuda\. Use runtime=torch or auto\.$"):
        resolve_runtime("onnxruntime", "cuda", "fp32")


def test_onnxruntime_gives_the_features_of_torch(failures):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is the 'onnx' extra (part of rca-gpu[test])")
    context = ExtractionContext(failures, torch.device("cpu"), batch_size=5)  # 12 images: a short last batch

    def extract(runtime):
        torch.manual_seed(0)  # weights=none draws random weights: the same ones for both runtimes
        spec = make_features("mobilenet_v2", "features.18", weights="none", image_size=64, pool="grid2",
                             runtime=runtime)
        return run_extractor(BackboneExtractor, spec, context)

    eager, reference = extract("torch")
    onnx, features = extract("onnxruntime")
    assert eager.describe()["runtime"] == "torch" and onnx.describe()["runtime"] == "onnxruntime"
    assert features.shape == reference.shape == (12, 1280 * 4) and features.dtype == torch.float32
    torch.testing.assert_close(features, reference, rtol=0, atol=1e-4)  # unit rows: float rounding only
    assert (features - reference).abs().max() > 0  # two engines, not one run twice


def test_the_cache_key_tells_runtimes_and_image_sizes_apart(failures):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is the 'onnx' extra (part of rca-gpu[test])")
    context = ExtractionContext(failures, torch.device("cpu"))
    keys = {}
    for runtime in ("torch", "onnxruntime"):
        for side in (64, 96):
            spec = make_features("mobilenet_v2", weights="none", image_size=side, runtime=runtime)
            extractor = BackboneExtractor(spec, context)
            extractor.prepare()
            keys[runtime, side] = cache_key(spec, extractor, context)
    assert len(set(keys.values())) == 4
    # "auto" resolved to ONNX Runtime shares its features; torch named or not keeps the keys torch always had
    auto = BackboneExtractor(make_features("mobilenet_v2", weights="none", image_size=64, runtime="auto"), context)
    auto.prepare()
    assert auto.cache_token() == ";runtime=onnxruntime"
    plain = BackboneExtractor(make_features("mobilenet_v2", weights="none", image_size=64, runtime="torch"), context)
    plain.prepare()
    assert plain.cache_token() == ""


def test_a_network_onnx_cannot_export_is_one_line_with_the_fix():
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is the 'onnx' extra (part of rca-gpu[test])")
    from rca_gpu.errors import ModelError
    from rca_gpu.features.backbones import OnnxBody

    def body(images):  # ONNX has no operator for Hurwitz's zeta function
        return {"features": torch.special.zeta(images, images)}

    with pytest.raises(ModelError, match=r"^net cannot run in ONNX Runtime \(.*\)\. Use runtime=torch\.$"):
        OnnxBody(body, 32, "net")


def test_auto_falls_back_to_torch_when_the_export_fails_and_onnxruntime_named_does_not(failures, monkeypatch,
                                                                                     caplog):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is the 'onnx' extra (part of rca-gpu[test])")
    from rca_gpu.errors import ModelError
    from rca_gpu.features import backbones

    def refuse(body, side, name):
        raise ModelError(f"{name} cannot run in ONNX Runtime (a test). Use runtime=torch.")

    monkeypatch.setattr(backbones, "OnnxBody", refuse)
    context = ExtractionContext(failures, torch.device("cpu"))
    auto = BackboneExtractor(make_features("mobilenet_v2", weights="none", image_size=64, runtime="auto"), context)
    with caplog.at_level("WARNING", logger="rca_gpu"):
        auto.prepare()
    assert auto.runtime == "torch" and auto.describe()["runtime"] == "torch" and auto.cache_token() == ""
    assert "mobilenet_v2 runs in torch: mobilenet_v2 cannot run in ONNX Runtime (a test)" in caplog.text
    named = BackboneExtractor(make_features("mobilenet_v2", weights="none", image_size=64, runtime="onnxruntime"),
                              context)
    with pytest.raises(ModelError, match=r"^mobilenet_v2 cannot run in ONNX Runtime \(a test\)"):
        named.prepare()
