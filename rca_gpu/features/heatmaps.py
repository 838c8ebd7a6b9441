"""Heatmaps of the DNN under test as features: LRP relevance (zennit) and Grad-CAM (captum), as in HUDD.

Both explain the *predicted* class of each image at one internal layer of the DUT and flatten the map
(optionally average-pooled to ``pool`` x ``pool``) into the image's feature vector. Images that fail for the
same reason tend to draw relevance from the same neurons, which is what the clustering then groups.

LRP at an internal layer. zennit's rules replace the backward pass so that what flows backwards is
relevance, not gradient: each rule's backward hook returns the relevance of its layer's input. Seeding the
backward pass with the predicted logit (one-hot times the logit, as HUDD does) therefore makes the
"gradient" arriving at any layer's output exactly the relevance of that layer's neurons. We capture the
layer's output with a forward hook and ask autograd for the gradient with respect to it, which also stops
the backward pass there instead of running it down to the pixels.

Layer choice. Without ``@layer``, HUDD's procedure picks the layer (see :mod:`rca_gpu.features.layers`):
heatmaps of every candidate layer on a seeded sample, Ward clustering with k at the knee, lowest WICD wins.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from rca_gpu.errors import ModelError, SpecError
from rca_gpu.features import layers
from rca_gpu.features.base import FeatureExtractor
from rca_gpu.features.dut import (
    EAGER_HINT,
    check_input,
    dut_transform,
    hookable,
    image_mode,
    load_dut,
    model_format,
    model_info,
    resolve_input,
)

if TYPE_CHECKING:  # pragma: no cover
    from torchvision.transforms import v2
    from zennit.core import Composite

RULES = ("epsilon", "zplus", "epsilon_plus")
DEFAULT_RULE = "epsilon_plus"
#: Images used to choose the layer (a seeded random subset): enough for Ward + knee to be stable.
LAYER_SAMPLE = 256
#: Heatmaps larger than this are spatially average-pooled for the layer choice only, to bound memory.
SELECT_MAX_DIMS = 4096
#: Largest number of clusters tried per layer during the layer choice.
MAX_K = 30


@contextlib.contextmanager
def _grad_input(images: torch.Tensor) -> Iterator[torch.Tensor]:
    """A copy of ``images`` that autograd can follow, even when the caller runs under inference mode."""
    with torch.inference_mode(False), torch.enable_grad():
        x = images.clone() if images.is_inference() else images.detach()
        yield x.requires_grad_(True)


def predict(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The DUT's predicted class per image."""
    with torch.no_grad():
        return model(images).argmax(1)


# --------------------------------------------------------------------------------------------------
# LRP (zennit)
# --------------------------------------------------------------------------------------------------


def make_composite(model: torch.nn.Module, rule: str = DEFAULT_RULE) -> Composite:
    """The zennit composite for ``rule``, with batch norms merged into the preceding layer when present.

    * ``epsilon_plus`` (default): zennit's EpsilonPlusFlat, z+ in conv layers and epsilon in dense layers,
      the recommended choice for conv nets (the flat rule of the first layer never reaches internal layers).
    * ``epsilon``: epsilon rule everywhere; ``zplus``: z+ everywhere.

    torchvision ResNet blocks get zennit's ResNetCanonizer, so their residual additions share relevance
    instead of counting it twice; other functional additions (e.g. MobileNetV2's) are not canonised.
    For an unflattened torch.export module the rules are assigned by the layers' original classes, which
    the generic submodules no longer show; its batch norms cannot be merged and pass relevance through.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat, LayerMapComposite, layer_map_base
    from zennit.core import Composite
    from zennit.rules import Epsilon, ZPlus
    from zennit.torchvision import ResNetCanonizer
    from zennit.types import BatchNorm, Convolution, Linear

    types = layers.layer_types(model)
    info = model_info(model)
    exported = info is not None and info.layer_types is not None
    canonizers = None
    if not exported and any(issubclass(kind, (BasicBlock, Bottleneck)) for kind in types.values()):
        canonizers = [ResNetCanonizer()]  # routes torchvision's residual additions through zennit's Sum rule
    elif not exported and any(issubclass(kind, BatchNorm) for kind in types.values()):
        canonizers = [SequentialMergeBatchNorm()]
    if rule == "epsilon_plus":
        composite = EpsilonPlusFlat(canonizers=canonizers)
    elif rule == "epsilon":
        composite = LayerMapComposite(
            layer_map_base() + [(Convolution, Epsilon()), (Linear, Epsilon())], canonizers=canonizers
        )
    elif rule == "zplus":
        composite = LayerMapComposite(
            layer_map_base() + [(Convolution, ZPlus()), (Linear, ZPlus())], canonizers=canonizers
        )
    else:
        raise SpecError(
            f"The 'rule' parameter of extractor 'lrp' must be one of {', '.join(RULES)}. Got {rule!r}."
        )
    if not exported:
        return composite

    def by_original_class(ctx: dict, name: str, module: torch.nn.Module):
        kind = types.get(name)
        if kind is None:
            return None
        return next((hook for classes, hook in composite.layer_map if issubclass(kind, classes)), None)

    return Composite(module_map=by_original_class)


@dataclass
class Relevance:
    """LRP relevance of the predicted class. ``layers[name]`` has the shape of that layer's output."""

    layers: dict[str, torch.Tensor]
    input: torch.Tensor | None
    predicted: torch.Tensor
    logits: torch.Tensor


def lrp_relevance(
    model: torch.nn.Module,
    images: torch.Tensor,
    layer_names: Sequence[str],
    *,
    composite: Composite,
    with_input: bool = False,
) -> Relevance:
    """Relevance of each image's predicted class at the outputs of ``layer_names`` (and at the pixels).

    The backward pass starts from the predicted logit, so each layer's relevance sums to about that logit
    (exactly, for bias-free nets under conserving rules).
    """
    names = list(layer_names)
    # The backward pass must run while the composite is registered: its rules live in tensor hooks.
    with _grad_input(images) as x, layers.capture(model, names) as store, composite.context(model) as hooked:
        logits = hooked(x)
        _require_captured(store, names)
        predicted = logits.argmax(1)
        chosen = logits.gather(1, predicted[:, None]).detach()
        seed = torch.zeros_like(logits).scatter_(1, predicted[:, None], chosen)
        targets = [store[name] for name in names] + ([x] if with_input else [])
        grads = torch.autograd.grad(logits, targets, grad_outputs=seed, allow_unused=True)
    # grads ends with the input's gradient when with_input: zip stops at the layers
    unused = [name for name, grad in zip(names, grads, strict=False) if grad is None]
    if unused:
        raise ModelError(f"The layer(s) {', '.join(unused)} of the DNN under test do not lead to its output.")
    maps = {name: grad.detach() for name, grad in zip(names, grads, strict=False)}
    return Relevance(maps, grads[-1].detach() if with_input else None, predicted.detach(), logits.detach())


def _require_captured(store: dict[str, Any], names: Sequence[str]) -> None:
    missing = [name for name in names if not isinstance(store.get(name), torch.Tensor)]
    if missing:
        raise ModelError(
            f"The layer(s) {', '.join(missing)} of the DNN under test did not run as a module returning one "
            "tensor during its forward pass, so their heatmaps cannot be read. Choose another layer, or "
            f"{EAGER_HINT}."
        )


# --------------------------------------------------------------------------------------------------
# Grad-CAM (captum)
# --------------------------------------------------------------------------------------------------


def gradcam_maps(
    model: torch.nn.Module,
    images: torch.Tensor,
    layer_names: Sequence[str],
    *,
    predicted: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Grad-CAM maps (n, 1, h, w) of the predicted class at each layer, ReLU applied (non-negative)."""
    from captum.attr import LayerGradCam

    modules = dict(model.named_modules())
    with _grad_input(images) as x:
        if predicted is None:
            predicted = predict(model, x)
        maps = {
            name: LayerGradCam(model, modules[name])
            .attribute(x, target=predicted, relu_attributions=True)
            .detach()
            for name in layer_names
        }
    return maps, predicted


# --------------------------------------------------------------------------------------------------
# Extractors
# --------------------------------------------------------------------------------------------------


class _HeatmapExtractor(FeatureExtractor):
    """Shared life of the heatmap extractors: load the DUT, fix the input, choose the layer, encode."""

    needs_grad = True
    method = ""

    def prepare(self) -> None:
        self.model = load_dut(self.context)
        self.input = resolve_input(self.model, self.context.failures)
        check_input(self.model, self.input["input_shape"], device=self.context.device)  # before any conversion
        self.model = hookable(self.model, self.input, extractor=self.spec.name)
        self.image_mode = image_mode(self.input)
        self._setup()
        self.layer_choice: dict[str, Any] | None = None
        if self.spec.layer:
            layers.find_layer(self.model, self.spec.layer, extractor=self.spec.name)
            self.layer = self.spec.layer
        else:
            self.layer, self.layer_choice = self._choose_layer()
        dummy = torch.full((2, *self.input["input_shape"]), 0.5, device=self.context.device)
        sample = self._maps(dummy, [self.layer])[self.layer]
        self._check_map(sample)
        self.map_shape = list(sample.shape[1:])
        self.dims = int(layers.pool_flatten(sample, self._pool).shape[1])

    # hooks for subclasses --------------------------------------------------------------------------
    def _setup(self) -> None:
        """Build what ``_maps`` needs once (e.g. the LRP composite)."""

    @abc.abstractmethod
    def _candidates(self) -> list[str]:
        """Layers the automatic choice compares."""

    @abc.abstractmethod
    def _maps(self, images: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Heatmaps of the predicted class at each named layer for one batch."""

    def _check_map(self, sample: torch.Tensor) -> None:
        """Refuse a layer whose heatmap cannot serve as features."""

    # ------------------------------------------------------------------------------------------------
    @property
    def _pool(self) -> int | None:
        return self.spec.params.get("pool")

    def _choose_layer(self) -> tuple[str, dict[str, Any]]:
        candidates = self._candidates()
        if not candidates:
            raise ModelError(
                f"The DNN under test has no layer to read {self.method} heatmaps from (conv or linear layers "
                f"before the output). Name one with {self.spec.name}@LAYER."
            )
        if len(candidates) == 1:
            return candidates[0], {"method": "only candidate", "candidates": candidates}
        collected: dict[str, list[torch.Tensor]] = {name: [] for name in candidates}
        for _, images in self.context.batches(
            self.transform(),
            self.image_mode,
            limit=LAYER_SAMPLE,
            shuffle=True,
            description=f"choosing the {self.spec.name} layer",
        ):
            for name, maps in self._maps(images, candidates).items():
                collected[name].append(layers.shrink_to(maps, SELECT_MAX_DIMS))
        if not collected[candidates[0]]:
            raise ModelError(
                "No source image could be read to choose the heatmap layer; see the rejected rows."
            )
        sample = {name: torch.cat(parts) for name, parts in collected.items()}
        best, scores = layers.choose_layer(sample, max_k=MAX_K)
        return best, {
            "method": "HUDD: Ward clustering per layer, k at the knee, lowest normalised WICD",
            "sample": int(next(iter(sample.values())).shape[0]),
            "scores": scores,
        }

    def transform(self) -> v2.Compose:
        return dut_transform(self.input)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        maps = self._maps(images, [self.layer])[self.layer]
        return layers.pool_flatten(maps, self._pool).float()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "method": self.method,
            "layer": self.layer,
            "layer_choice": self.layer_choice,
            "map_shape": self.map_shape,
            "pool": self._pool,
            "dims": self.dims,
            "input_shape": self.input["input_shape"],
            "input_shape_source": self.input["source"],
            "model_format": model_format(self.model),
            "precision": "fp32",
        }

    def cache_token(self) -> str:
        return f"layer={self.layer}"


class LRPExtractor(_HeatmapExtractor):
    """LRP relevance of the predicted class at a DUT layer (HUDD's heatmaps), via zennit."""

    method = "LRP (zennit)"

    def _setup(self) -> None:
        self.rule = self.spec.params.get("rule", DEFAULT_RULE)
        self.composite = make_composite(self.model, self.rule)

    def _candidates(self) -> list[str]:
        return layers.heatmap_candidates(self.model, linear=True)

    def _maps(self, images: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        return lrp_relevance(self.model, images, names, composite=self.composite).layers

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "rule": self.rule}

    def cache_token(self) -> str:
        return f"{super().cache_token()};rule={self.rule}"


class GradCAMExtractor(_HeatmapExtractor):
    """Grad-CAM maps of the predicted class at a conv layer of the DUT, via captum."""

    method = "Grad-CAM (captum)"

    def _candidates(self) -> list[str]:
        return layers.weighted_layers(self.model, conv=True, linear=False)

    def _maps(self, images: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        return gradcam_maps(self.model, images, names)[0]

    def _check_map(self, sample: torch.Tensor) -> None:
        if sample.ndim != 4:
            raise SpecError(
                f"Grad-CAM needs a layer with spatial maps (a conv layer); {self.layer!r} outputs shape "
                f"{tuple(sample.shape[1:])}. Choose a conv layer with gradcam@LAYER."
            )


# --------------------------------------------------------------------------------------------------
# Input attributions (captum): no hooks, so they work on every DUT format, TorchScript included
# --------------------------------------------------------------------------------------------------


class _InputAttributionExtractor(FeatureExtractor):
    """Attribution of the predicted class to the input pixels, flattened (optionally pooled) as features.

    Needs only the DUT's forward pass and autograd through it, no hooks into its layers, so TorchScript
    DUTs work too. The map has the input's shape (C, H, W); ``pool`` average-pools it to pool x pool.
    """

    needs_grad = True
    method = ""

    def prepare(self) -> None:
        self.model = load_dut(self.context)
        self.input = resolve_input(self.model, self.context.failures)
        self.image_mode = image_mode(self.input)
        check_input(self.model, self.input["input_shape"], device=self.context.device)
        dummy = torch.full((2, *self.input["input_shape"]), 0.5, device=self.context.device)
        self.dims = int(layers.pool_flatten(self._maps(dummy), self._pool).shape[1])

    @property
    def _pool(self) -> int | None:
        return self.spec.params.get("pool")

    @abc.abstractmethod
    def _attribute(self, x: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """Attribution maps (n, C, H, W) of the ``predicted`` classes for inputs ``x`` that require grad."""

    def _maps(self, images: torch.Tensor) -> torch.Tensor:
        with _grad_input(images) as x:
            return self._attribute(x, predict(self.model, x)).detach()

    def transform(self) -> v2.Compose:
        return dut_transform(self.input)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return layers.pool_flatten(self._maps(images), self._pool).float()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "method": self.method,
            "pool": self._pool,
            "dims": self.dims,
            "input_shape": self.input["input_shape"],
            "input_shape_source": self.input["source"],
            "model_format": model_format(self.model),
            "precision": "fp32",
        }


class GradientXInputExtractor(_InputAttributionExtractor):
    """Gradient x input of the predicted class (captum InputXGradient; Shrikumar et al. 2016)."""

    method = "gradient x input (captum)"

    def _attribute(self, x: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        from captum.attr import InputXGradient

        return InputXGradient(self.model).attribute(x, target=predicted)


class IntegratedGradientsExtractor(_InputAttributionExtractor):
    """Integrated gradients of the predicted class from a black image (the low end of the model's value
    range), ``steps`` points on the path (captum IntegratedGradients; Sundararajan et al. 2017)."""

    method = "integrated gradients (captum), black baseline"

    @property
    def steps(self) -> int:
        return int(self.spec.params.get("steps", 32))

    def _attribute(self, x: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        from captum.attr import IntegratedGradients

        baseline = float(self.input.get("value_range", (0.0, 1.0))[0])
        return IntegratedGradients(self.model).attribute(
            x, baselines=baseline, target=predicted, n_steps=self.steps, internal_batch_size=int(x.shape[0])
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "steps": self.steps}

    def cache_token(self) -> str:
        return f"steps={self.steps}"


# --------------------------------------------------------------------------------------------------
# The features as maps again (for the report's heatmaps)
# --------------------------------------------------------------------------------------------------

#: Extractors whose features are heatmaps of the DUT, flattened (optionally pooled) by ``layers.pool_flatten``.
HEATMAP_EXTRACTORS = ("lrp", "gradcam", "gradxinput", "ig")


def feature_maps(matrix, info: dict[str, Any]):
    """The features of a heatmap extractor as the maps they flatten: (n, C, h, w) float32 numpy, or None when
    the extractor is not a heatmap one or its maps have no spatial layout (LRP at a linear layer).

    ``info`` is the extractor's :meth:`describe` (run.json ``features``): the map is ``map_shape`` (layer
    heatmaps) or ``input_shape`` (input attributions), average-pooled to ``pool`` x ``pool`` when ``pool`` is set,
    exactly as :func:`rca_gpu.features.layers.pool_flatten` laid it out.
    """
    import numpy as np

    from rca_gpu.engine.device import as_numpy

    if info.get("name") not in HEATMAP_EXTRACTORS:
        return None
    shape = info.get("map_shape") or info.get("input_shape")
    if not shape or len(shape) != 3:
        return None
    channels, height, width = (int(v) for v in shape)
    pool = info.get("pool")
    if pool:
        height = width = int(pool)
    values = np.asarray(as_numpy(matrix), dtype=np.float32)
    if values.ndim != 2 or values.shape[1] != channels * height * width:
        return None
    return values.reshape(len(values), channels, height, width)
