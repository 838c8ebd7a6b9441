"""The parameters of the feature extractors, and the extractors of installed plug-ins.

The reducers' and clusterers' parameters live on their cards (:mod:`rca_gpu.engine.cards`); every parameter
is a :class:`~rca_gpu.engine.params.Param`. Plain data: nothing here imports torch or numpy.

Plug-in extractors (docs/plugins.md): an installed package declares entry points in the group
``rca_gpu.extractors``, each naming an :class:`ExtractorInfo` (the entry point's name is the extractor's
name); code the user runs (``rca-gpu --plugin MODULE``) may call :func:`register_extractor`. Entry points are
read the first time the extractors are listed, whatever any file says.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from rca_gpu.engine.params import Param, show_value
from rca_gpu.errors import SpecError

log = logging.getLogger("rca_gpu")

#: Entry-point group whose objects are ExtractorInfo.
EXTRACTOR_ENTRY_POINTS = "rca_gpu.extractors"


@dataclass(frozen=True)
class ExtractorInfo:
    """What the CLI and the spec need to know about an extractor without importing it."""

    target: str  # "package.module:Class", imported lazily by rca_gpu.features.create_extractor
    summary: str
    params: Mapping[str, Param] = field(default_factory=dict)
    needs_dut: bool = False  # needs the DNN under test (--model)
    has_layers: bool = False  # accepts "@layer"


#: Largest image side an extractor resizes to; a (batch, 3, side, side) float batch must fit in memory.
MAX_IMAGE_SIZE = 1024
#: Largest side for raw pixel features: 512 px RGB is already 786,432 values per image.
MAX_PIXEL_SIZE = 512
#: Image sides the autoencoder can build (rca_gpu.features.autoencoder.plan_geometry keeps exactly these).
AE_IMAGE_SIZES = (16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128)
_POOL = Param(int, "at_least_1", high=64)
#: Representations (rca_gpu.features.represent): a backbone's pooling (global average, or an N x N grid;
#: the DUT extractors' int ``pool`` also reads ``gridN``) and class-conditional centring, for every extractor.
POOLS = ("avg",) + tuple(f"grid{side}" for side in range(1, 9))
CENTERS = ("none", "label", "prediction", "pair", "auto")
_CENTER = {"center": Param(str, "choice", CENTERS)}
#: What runs a torchvision backbone (rca_gpu.features.backbones.resolve_runtime; default "torch"): "auto" =
#: ONNX Runtime on the CPU in fp32 when installed, else torch.
RUNTIMES = ("auto", "torch", "onnxruntime")

_IMAGE_PARAMS = {
    "image_size": Param(int, low=32, high=MAX_IMAGE_SIZE),
    "weights": Param(str),
    "normalize": Param(bool),
    "pool": Param(str, "choice", POOLS),
    "runtime": Param(str, "choice", RUNTIMES),
    **_CENTER,
}

EXTRACTORS: dict[str, ExtractorInfo] = {
    "pixels": ExtractorInfo(
        "rca_gpu.features.pixels:PixelExtractor",
        "raw pixels, resized and flattened (baseline)",
        {"image_size": Param(int, "at_least_1", high=MAX_PIXEL_SIZE), "normalize": Param(bool), **_CENTER},
    ),
    "mobilenet_v2": ExtractorInfo(
        "rca_gpu.features.backbones:BackboneExtractor",
        "torchvision MobileNetV2, ImageNet weights (available offline)",
        _IMAGE_PARAMS,
        has_layers=True,
    ),
    "resnet18": ExtractorInfo(
        "rca_gpu.features.backbones:BackboneExtractor",
        "torchvision ResNet-18, ImageNet weights",
        _IMAGE_PARAMS,
        has_layers=True,
    ),
    "resnet50": ExtractorInfo(
        "rca_gpu.features.backbones:BackboneExtractor",
        "torchvision ResNet-50, ImageNet weights",
        _IMAGE_PARAMS,
        has_layers=True,
    ),
    "vgg16": ExtractorInfo(
        "rca_gpu.features.backbones:BackboneExtractor",
        "torchvision VGG16 (the paper's backbone), ImageNet weights",
        _IMAGE_PARAMS,
        has_layers=True,
    ),
    # White-box and learned features (need the DNN under test, or train on the source images).
    "dut": ExtractorInfo(
        "rca_gpu.features.dut:DUTActivationExtractor",
        "activations of the DNN under test at a layer (default: its penultimate layer)",
        {"pool": _POOL, **_CENTER},
        needs_dut=True,
        has_layers=True,
    ),
    "lrp": ExtractorInfo(
        "rca_gpu.features.heatmaps:LRPExtractor",
        "LRP relevance heatmaps of the predicted class at a DUT layer (HUDD), via zennit",
        {"pool": _POOL, "rule": Param(str, "choice", ("epsilon", "zplus", "epsilon_plus")), **_CENTER},
        needs_dut=True,
        has_layers=True,
    ),
    "gradcam": ExtractorInfo(
        "rca_gpu.features.heatmaps:GradCAMExtractor",
        "Grad-CAM heatmaps of the predicted class at a DUT layer, via captum",
        {"pool": _POOL, **_CENTER},
        needs_dut=True,
        has_layers=True,
    ),
    # Input attributions need no hooks: they work on every DUT format, TorchScript included.
    "gradxinput": ExtractorInfo(
        "rca_gpu.features.heatmaps:GradientXInputExtractor",
        "gradient x input of the predicted class, via captum (any DUT format, TorchScript included)",
        {"pool": Param(int, "at_least_1"), **_CENTER},
        needs_dut=True,
    ),
    "ig": ExtractorInfo(
        "rca_gpu.features.heatmaps:IntegratedGradientsExtractor",
        "integrated gradients of the predicted class, via captum (any DUT format, TorchScript included)",
        {"pool": Param(int, "at_least_1"), "steps": Param(int, "at_least_1"), **_CENTER},
        needs_dut=True,
    ),
    "ae": ExtractorInfo(
        "rca_gpu.features.autoencoder:AutoencoderExtractor",
        "bottleneck of a convolutional autoencoder trained on the source images",
        {"image_size": Param(int, allowed=AE_IMAGE_SIZES), "latent": Param(int, "at_least_1", high=4096),
         "epochs": Param(int, "at_least_1", high=1000), **_CENTER},
    ),
}

#: The feature stage of a pipeline over features the user brings (written ``umap+dbscan``).
PRECOMPUTED = "precomputed"
EXTRACTORS[PRECOMPUTED] = ExtractorInfo(
    "rca_gpu.features.precomputed:PrecomputedFeatures",
    "features you bring: rca-gpu run --features FILE (.parquet / .npy), or FailureClusterer.fit(X)",
)


_BUILT_IN = tuple(EXTRACTORS)
_entry_points_loaded = False


def register_extractor(name: str, info: ExtractorInfo, *, replace: bool = False) -> None:
    """Add an extractor to the table (feature modules that live elsewhere, plug-ins).

    Raises
    ------
    SpecError
        ``info`` is not an ExtractorInfo, the name is not lower-case letters, digits and '_', or it is taken
        (a plug-in's may be replaced with ``replace=True``; a built-in one never is).
    """
    if not isinstance(info, ExtractorInfo):
        raise SpecError(f"An extractor is registered with an ExtractorInfo. Got {show_value(info)} instead.")
    if not name or not name.replace("_", "").isalnum() or name != name.lower():
        raise SpecError(f"An extractor's name must be lower-case letters, digits and '_'. Got {name!r} instead.")
    if name in EXTRACTORS and EXTRACTORS[name] is not info and (name in _BUILT_IN or not replace):
        raise SpecError(f"An extractor named {name!r} is registered already; give the new one another name.")
    EXTRACTORS[name] = info


def unregister_extractor(name: str) -> None:
    """Remove a plug-in's extractor (tests); built-in extractors stay."""
    if name in _BUILT_IN:
        raise SpecError(f"The built-in extractor {name!r} cannot be removed.")
    EXTRACTORS.pop(name, None)


def extractors() -> dict[str, ExtractorInfo]:
    """Every extractor by name: the built-in ones, then those of installed plug-ins (loaded once)."""
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        from rca_gpu.engine.registry import entry_point_objects

        for entry, info in entry_point_objects(EXTRACTOR_ENTRY_POINTS):
            try:
                register_extractor(entry.name, info)
            except SpecError as exc:
                log.warning("plug-in extractor %s = %s is not used: %s", entry.name, entry.value, exc)
    return EXTRACTORS
