"""Transfer-learning features from torchvision backbones pretrained on ImageNet.

The default layer is the global-pooled penultimate layer (the input of the classifier); any node of the
model's graph can be chosen instead (``resnet18@layer3``), and 4-D maps are global-average-pooled, or with
``pool=gridN`` average-pooled to an N x N grid (then the default layer is the last feature map, before the
network pools it away).
Weights come from torchvision's weights API (``weights=IMAGENET1K_V1``, the default), from a state_dict
file (``--weights PATH``, loaded with ``weights_only=True``), or ``weights=none`` (random, for tests).

``runtime`` says what runs the truncated network: ``torch`` (eager, channels_last), ``onnxruntime`` (the
network exported to ONNX when the extractor is prepared and run by ONNX Runtime's CPU provider; fp32,
the same features up to float rounding), or ``auto``: ONNX Runtime where it can run (CPU device, fp32, the
``onnx`` extra installed, a network it can export), else torch. The default is ``torch``. Pooling and
normalisation stay in torch.
benchmarks/extraction_paths.py measures both side by side (benchmarks/RESULTS.md, section 4).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rca_gpu.errors import ModelError, SpecError
from rca_gpu.features.base import FeatureExtractor

log = logging.getLogger("rca_gpu")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    builder: str  # torchvision.models function name
    default_layer: str  # graph node of the global-pooled penultimate features
    dims: int
    map_layer: str  # the last spatial feature map, the default layer of pool=gridN


BACKBONES = {
    "mobilenet_v2": Backbone("mobilenet_v2", "flatten", 1280, "features"),
    "resnet18": Backbone("resnet18", "flatten", 512, "layer4"),
    "resnet50": Backbone("resnet50", "flatten", 2048, "layer4"),
    "vgg16": Backbone("vgg16", "classifier.4", 4096, "features"),
}


def build_backbone(name: str, weights: str | None):
    """A torchvision model in eval mode with the requested weights. Raises ModelError when unavailable."""
    import torch
    import torchvision.models as models

    builder = getattr(models, BACKBONES[name].builder)
    weights = weights or "IMAGENET1K_V1"
    if weights.lower() in ("none", "random"):
        return builder(weights=None).eval()
    path = Path(weights).expanduser()
    if path.suffix in (".pt", ".pth", ".bin") or path.exists():
        if not path.is_file():
            raise ModelError(f"The weights file {str(path)!r} does not exist. Check --weights.")
        model = builder(weights=None)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(
                f"Cannot load weights from {str(path)!r} as a state_dict ({type(exc).__name__}: {exc}). "
                "Save them with torch.save(model.state_dict(), path)."
            ) from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(f"The weights in {str(path)!r} do not fit {name}: {str(exc).splitlines()[0]}") from None
        return model.eval()
    enum = models.get_model_weights(BACKBONES[name].builder)
    try:
        chosen = enum[weights]  # "DEFAULT" is an alias member of every torchvision weights enum
    except KeyError:
        known = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise SpecError(f"Unknown weights {weights!r} for {name}. Use one of {known}, none, or a file.") from None
    # torchvision downloads a checkpoint missing from the torch cache and prints "Downloading: ..." first;
    # a run never downloads, so a missing checkpoint is one error line before torchvision is asked
    def checkpoint_of(member) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(member.url).path).name

    checkpoint = checkpoint_of(chosen)
    if not checkpoint.is_file():
        cached = [w.name for w in enum if checkpoint_of(w).is_file()]
        other = f"weights={cached[0]} (in the cache)" if cached else "a backbone whose weights are in the cache"
        raise ModelError(
            f"The {chosen.name} weights of {name} are not in the torch cache ({checkpoint} is missing) and a run "
            f"downloads nothing. Put the torchvision checkpoint there, pass --weights PATH to a state_dict, or use "
            f"{other}."
        )
    try:
        return builder(weights=chosen).eval()
    except Exception as exc:  # a damaged checkpoint in the cache
        raise ModelError(
            f"The {chosen.name} weights of {name} in {checkpoint} cannot be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Delete the file and put an intact copy there, or "
            "pass --weights PATH to a state_dict."
        ) from None


def resolve_runtime(requested: str | None, device_type: str, precision: str) -> tuple[str, str]:
    """(runtime, why) for the ``runtime`` parameter: "torch" or "onnxruntime", and the reason when "auto" chose
    torch ("" otherwise).

    ONNX Runtime runs on the CPU in fp32 only; "auto" picks it there when ``onnxruntime`` imports.

    Raises
    ------
    SpecError
        ``runtime=onnxruntime`` on a GPU, with bf16, or without the ``onnx`` extra installed.
    """
    requested = requested or "torch"
    if requested == "torch":
        return "torch", ""
    problem = ""
    if device_type != "cpu":
        problem = f"it runs on the CPU only and this run extracts on {device_type}"
    elif precision != "fp32":
        problem = f"it runs in fp32 only and this run asks for precision {precision}"
    else:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            problem = "onnxruntime is not installed: pip install 'rca-gpu[onnx]'"
    if not problem:
        return "onnxruntime", ""
    if requested == "onnxruntime":
        raise SpecError(f"runtime=onnxruntime cannot run this extraction: {problem}. Use runtime=torch or auto.")
    return "torch", problem


def _tensor_output(body):
    """``body`` (images -> {"features": tensor}) as a module that returns the tensor (ONNX export wants
    tensors, not a dict), in eval mode."""
    import torch

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, images):
            return self.body(images)["features"]

    return Features().eval()


class OnnxBody:
    """A torch feature extractor (``images -> {"features": tensor}``) exported to ONNX (a temporary file, removed
    once loaded) and run by ONNX Runtime's CPU provider with as many threads as torch uses.

    The export traces the network once at ``side`` x ``side`` with a free batch dimension (the TorchScript-based
    exporter, which needs neither ``onnx`` nor ``onnxscript``); ONNX Runtime then folds the batch norms into the
    convolutions and fuses the activations (graph optimisation level "all").

    Raises
    ------
    ModelError
        The network cannot be exported or ONNX Runtime refuses the graph.
    """

    def __init__(self, body, side: int, name: str) -> None:
        import tempfile
        import warnings

        import onnxruntime
        import torch

        try:
            with tempfile.TemporaryDirectory(prefix="rca-gpu-onnx-") as folder:
                graph = str(Path(folder) / "backbone.onnx")
                with warnings.catch_warnings():  # the TorchScript-based exporter announces its successor
                    warnings.simplefilter("ignore")
                    torch.onnx.export(_tensor_output(body), (torch.zeros(1, 3, side, side),), graph,
                                      input_names=["images"], output_names=["features"],
                                      dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                                      dynamo=False)
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = torch.get_num_threads()
                options.inter_op_num_threads = 1
                self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - any exporter or runtime failure is one line with the fix
            raise ModelError(f"{name} cannot run in ONNX Runtime ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}). Use runtime=torch.") from None

    def __call__(self, images):
        """(b, 3, s, s) float32 CPU tensor -> {"features": (b, c, h, w) float32 CPU tensor}."""
        import torch

        array = images.detach().contiguous().numpy()  # NCHW, as exported
        return {"features": torch.from_numpy(self.session.run(None, {"images": array})[0])}


def image_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """PIL RGB image -> normalised float tensor (3, s, s). The whole image is kept (resize, no crop), so a
    cause at the border (an occluder, a shifted object) is not cut away."""
    import torch
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


class BackboneExtractor(FeatureExtractor):
    """Pretrained torchvision backbone, truncated at a layer, features global-average-pooled."""

    image_mode = "RGB"

    def prepare(self) -> None:
        import torch
        from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

        from rca_gpu.features.represent import grid_size

        backbone = BACKBONES[self.spec.name]
        model = build_backbone(self.spec.name, self.spec.params.get("weights"))
        self.grid = grid_size(self.spec.params.get("pool"))
        self.layer = self.spec.layer or (backbone.map_layer if self.grid else backbone.default_layer)
        _, nodes = get_graph_node_names(model)
        inside = [n for n in nodes if n.startswith(self.layer + ".")]
        if self.layer not in nodes and inside:
            self.layer = inside[-1]  # a module's name: take the last node inside it, i.e. its output
        if self.layer not in nodes:
            near = [n for n in nodes if n.startswith(self.layer.split(".")[0])][:8] or nodes[-8:]
            raise SpecError(
                f"{self.spec.name} has no layer {self.layer!r}. Layers look like: {', '.join(near)} "
                "(all names: torchvision.models.feature_extraction.get_graph_node_names)."
            )
        body = create_feature_extractor(model, return_nodes={self.layer: "features"})
        if self.grid:
            side = int(self.spec.params.get("image_size", 224))
            with torch.no_grad():
                probe = body(torch.zeros(1, 3, side, side))["features"]
            if probe.ndim != 4:
                raise SpecError(
                    f"{self.spec.name}(pool={self.spec.params['pool']}) pools a spatial feature map to a grid, but "
                    f"layer {self.layer!r} gives {tuple(probe.shape[1:])} values per image, no map. Choose a "
                    f"convolutional layer (e.g. {backbone.map_layer}) or leave pool out."
                )
        device = self.context.device
        requested = self.spec.params.get("runtime", "torch")
        self.runtime, why = resolve_runtime(requested, device.type, self.context.precision)
        if why and device.type == "cpu":
            log.info("%s runs in torch: %s", self.spec.name, why)
        if self.runtime == "onnxruntime":
            try:
                self.model = OnnxBody(body.eval(), int(self.spec.params.get("image_size", 224)), self.spec.name)
            except ModelError as exc:
                if requested == "onnxruntime":
                    raise
                log.warning("%s runs in torch: %s", self.spec.name, exc)  # auto: the slower path, same features
                self.runtime = "torch"
        if self.runtime == "torch":
            self.model = body.to(device).to(memory_format=torch.channels_last).eval()
        self.normalize = bool(self.spec.params.get("normalize", True))

    def transform(self):
        return image_transform(int(self.spec.params.get("image_size", 224)))

    def encode(self, images):
        import torch

        if self.runtime == "torch":
            images = images.contiguous(memory_format=torch.channels_last)
        out = self.model(images)["features"]
        if out.ndim == 4 and self.grid:
            out = torch.nn.functional.adaptive_avg_pool2d(out, self.grid)
        elif out.ndim == 4:
            out = out.mean(dim=(2, 3))
        out = out.flatten(1).float()
        if self.normalize:
            out = torch.nn.functional.normalize(out, dim=1)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "layer": self.layer,
            "weights": self.spec.params.get("weights", "IMAGENET1K_V1"),
            "image_size": int(self.spec.params.get("image_size", 224)),
            "pool": f"grid{self.grid}" if self.grid else "avg",
            "l2_normalized": self.normalize,
            "runtime": self.runtime,
        }

    def cache_token(self) -> str:
        """The weights file's identity, and the runtime when it is not torch (ONNX Runtime's features differ from
        torch's by float rounding, so neither reuses the other's cache; torch keeps the keys it always had)."""
        token = ""
        weights = self.spec.params.get("weights")
        if weights and Path(weights).expanduser().is_file():
            stat = Path(weights).expanduser().stat()
            token = f"{Path(weights).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        if getattr(self, "runtime", "torch") != "torch":
            token += f";runtime={self.runtime}"
        return token
