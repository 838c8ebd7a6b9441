"""The DNN under test (DUT): loading it safely, what it expects as input, and its activations as features.

``--model`` accepts four forms, none of which unpickles code from a file:

* a TorchScript file (``torch.jit.script(model).save("model.pt")``);
* a torch.export archive ``.pt2`` (``torch.export.save(torch.export.export(model, (x,), dynamic_shapes=...),
  "m.pt2")``), loaded unflattened so that its layers keep their names and forward hooks fire;
* ``package.module:factory=weights.pt``: ``factory()`` builds the eager module and the state_dict in
  ``weights.pt`` is loaded with ``torch.load(..., weights_only=True)``;
* an ONNX file ``model.onnx`` (needs ``rca-gpu[onnx]``), converted by onnx2torch into an eager torch.fx module
  whose layers are real ``nn.Module`` objects, so hooks (``dut``, ``lrp``, ``gradcam``) work. An ONNX file is
  data: its graph is parsed and each operator mapped to a torch module from onnx2torch's fixed table; an
  operator outside it is refused, and nothing the file names is imported or run. External weight files must
  lie in the model's folder.

A file written with ``torch.save(model)`` is refused: loading it would run whatever code the pickle names.

The convention for DUTs: an eager ``nn.Module`` taking float images in [0, 1] shaped (N, C, H, W), with its
normalisation inside, returning logits, with attributes ``input_shape = (C, H, W)`` and ``classes``, and
built from plain module layers (Conv2d, ReLU, MaxPool2d, Linear, Flatten) so that hooks see every layer.
"""

from __future__ import annotations

import importlib
import json
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rca_gpu.data.paths import path_or_file
from rca_gpu.errors import ModelError
from rca_gpu.features import layers
from rca_gpu.features.base import ExtractionContext, FeatureExtractor
from rca_gpu.features.modelinfo import ModelInfo, model_info, remember

if TYPE_CHECKING:  # pragma: no cover
    from torchvision.transforms import v2

    from rca_gpu.data.sources import FailureSet

#: Extra file inside a TorchScript or torch.export archive describing the input, e.g.
#: ``{"input_shape": [1, 28, 28], "classes": ["0", "1"], "value_range": [0, 1]}``.
SPEC_FILE = "rca_gpu.json"

ACCEPTED_FORMATS = (
    "a TorchScript file (torch.jit.script(model).save('model.pt')), a torch.export archive "
    "(torch.export.save(torch.export.export(model, (example,), dynamic_shapes=...), 'model.pt2')), an ONNX "
    "file (model.onnx), or package.module:factory=weights.pt with the weights saved by "
    "torch.save(model.state_dict(), 'weights.pt')"
)
EAGER_HINT = (
    "pass the eager model as --model package.module:factory=weights.pt (or a torch.export .pt2 archive, or an "
    "ONNX file), or use the gradxinput or ig extractors, which need no hooks"
)
#: onnx2torch converts operator sets up to this version (newer exports: torch.onnx.export(..., opset_version=17)).
ONNX_OPSET_HINT = 17

_ENTRY_POINT = re.compile(
    r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<factory>[A-Za-z_]\w*)(?:=(?P<weights>.+))?$"
)
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_model(ref: str, *, device: torch.device | str) -> torch.nn.Module:
    """Load the DNN under test in eval mode on ``device``. Raises ModelError with the fix on bad input."""
    device = torch.device(device)
    ref = str(ref).strip()
    match = _ENTRY_POINT.match(ref)
    if match and not Path(ref).exists():
        model, info = _load_factory(ref, match["module"], match["factory"], match["weights"], device)
    else:
        path = Path(ref).expanduser()
        if not path.exists():
            raise ModelError(
                f"The model file {ref!r} does not exist. Check --model; it accepts {ACCEPTED_FORMATS}."
            )
        if not path.is_file():
            raise ModelError(f"The model {ref!r} is a folder, not a file. Pass {ACCEPTED_FORMATS}.")
        kind = _file_kind(path)
        if kind == "torchscript":
            model, info = _load_torchscript(ref, path, device)
        elif kind == "export":
            model, info = _load_export(ref, path, device)
        elif kind == "onnx":
            model, info = _load_onnx(ref, path, device)
        else:
            raise _refusal(path, kind)
    return remember(model, info)


def load_dut(context: ExtractionContext) -> torch.nn.Module:
    """The DNN under test of an extraction (``context.model_ref``), in eval mode on ``context.device``, loaded
    once per context.

    Raises
    ------
    SpecError
        No model was named (pass --model PATH).
    ModelError
        As :func:`load_model`.
    """
    if context._dut is None:
        from rca_gpu.errors import SpecError

        if not context.model_ref:
            raise SpecError("This extractor needs the DNN under test: pass --model PATH.")
        context._dut = load_model(context.model_ref, device=context.device)
    return context._dut


def _file_kind(path: Path) -> str:
    """'torchscript' | 'export' | 'onnx' | 'pickle' | 'unknown', from the archive's member names or, for ONNX
    (a protobuf, not an archive), the file name (nothing is run)."""
    if not zipfile.is_zipfile(path):
        return "onnx" if path.suffix.lower() == ".onnx" else "unknown"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    if any("/code/__torch__" in name for name in names):
        return "torchscript"
    if any(name.endswith(("/models/model.json", "archive_format")) for name in names):
        return "export"
    if any(name.endswith("data.pkl") for name in names):
        return "pickle"
    return "unknown"


def _refusal(path: Path, kind: str) -> ModelError:
    """The error for a file that is not a loadable model, telling a state_dict from a pickled module."""
    if kind == "pickle":
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # refuses any class: safe
        except Exception:  # noqa: BLE001 - any failure means: not a plain state_dict
            state = None
        if isinstance(state, Mapping):
            return ModelError(
                f"{str(path)!r} holds only weights (a state_dict), not a model. Name the code that builds the "
                f"model too: --model package.module:factory={path}."
            )
        return ModelError(
            f"{str(path)!r} is a pickled model written with torch.save(model); it is not loaded because "
            "unpickling runs arbitrary code. Convert it once, where its code is importable, to "
            f"{ACCEPTED_FORMATS}."
        )
    return ModelError(f"{str(path)!r} is not a model file rca_gpu can read. Pass {ACCEPTED_FORMATS}.")


def _load_torchscript(ref: str, path: Path, device: torch.device) -> tuple[torch.nn.Module, ModelInfo]:
    import warnings

    extra = {SPEC_FILE: ""}
    try:
        with warnings.catch_warnings():  # torch marks TorchScript deprecated; it is still a supported input
            warnings.simplefilter("ignore", FutureWarning)
            with path_or_file(path) as source:  # a name that is not UTF-8: through a Python file object
                model = torch.jit.load(source, map_location=device, _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - the loader raises many types; all become one ModelError
        raise ModelError(f"Cannot load the TorchScript file {str(path)!r}: {_first_line(exc)}") from None
    spec = _parse_spec_file(extra[SPEC_FILE], path)
    return model.eval(), ModelInfo(ref, "torchscript", spec)


def _load_export(ref: str, path: Path, device: torch.device) -> tuple[torch.nn.Module, ModelInfo]:
    from torch.export.passes import move_to_device_pass

    extra = {SPEC_FILE: ""}
    try:
        with path_or_file(path) as source:
            program = torch.export.load(source, extra_files=extra)
        program = move_to_device_pass(program, device)
        module = torch.export.unflatten(program)
    except Exception as exc:  # noqa: BLE001 - as above, for torch.export's deserialiser
        raise ModelError(f"Cannot load the torch.export archive {str(path)!r}: {_first_line(exc)}") from None
    shape = _export_input_shape(program)
    if shape and isinstance(shape[0], int):
        raise ModelError(
            f"The torch.export archive {str(path)!r} only accepts batches of exactly {shape[0]} images. Export it "
            "with a dynamic batch dimension: torch.export.export(model, (x,), "
            "dynamic_shapes=({0: torch.export.Dim('batch')},))."
        )
    spec = _parse_spec_file(extra[SPEC_FILE], path)
    if spec is None and shape and all(isinstance(s, int) for s in shape[1:]) and len(shape) == 4:
        spec = _check_spec({"input_shape": list(shape[1:])}, "the export signature")
    module.eval()
    return module, ModelInfo(ref, "export", spec, _export_layer_types(program))


def _load_onnx(ref: str, path: Path, device: torch.device) -> tuple[torch.nn.Module, ModelInfo]:
    """An ONNX file as an eager torch.fx module (onnx2torch); see the module doc for what is and is not run."""
    try:
        import onnx

        from rca_gpu.features.onnx_import import to_torch
    except ImportError:
        raise ModelError(
            f"{str(path)!r} is an ONNX model; reading it needs onnx and onnx2torch: pip install 'rca-gpu[onnx]'."
        ) from None
    try:
        with path_or_file(path) as source:
            proto = onnx.load(source, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - a corrupt protobuf raises several types
        raise ModelError(f"Cannot read the ONNX file {str(path)!r}: {_first_line(exc)}") from None
    _load_onnx_external_data(proto, path)
    try:
        module, _ = to_torch(proto)
    except NotImplementedError as exc:
        raise ModelError(
            f"The ONNX file {str(path)!r} uses an operator onnx2torch cannot convert ({_first_line(exc)}). Export "
            f"the model with standard operators and opset_version={ONNX_OPSET_HINT}, or pass it in another "
            "format."
        ) from None
    except Exception as exc:  # noqa: BLE001 - conversion errors of any kind become one ModelError
        raise ModelError(f"Cannot convert the ONNX file {str(path)!r} to torch: {_first_line(exc)}") from None
    spec = _onnx_spec(proto, path)
    return module.to(device).eval(), ModelInfo(ref, "onnx", spec)


def _load_onnx_external_data(proto: Any, path: Path) -> None:
    """Read weights stored beside the model, refusing any location outside the model's folder."""
    from onnx.external_data_helper import (
        ExternalDataInfo,
        _get_all_tensors,
        load_external_data_for_model,
        uses_external_data,
    )

    external = [t for t in _get_all_tensors(proto) if uses_external_data(t)]
    if not external:
        return
    folder = path.parent.resolve()
    for tensor in external:
        location = (folder / ExternalDataInfo(tensor).location).resolve()
        if not location.is_relative_to(folder) or not location.is_file():
            raise ModelError(
                f"The ONNX file {str(path)!r} keeps weights in {ExternalDataInfo(tensor).location!r}, which is not a "
                f"file inside {str(folder)!r}; external weight files must lie beside the model."
            )
    load_external_data_for_model(proto, str(folder))


def _onnx_spec(proto: Any, path: Path) -> dict[str, Any] | None:
    """The input spec: metadata ``rca_gpu.json`` if the file has it, else the first graph input's shape."""
    for prop in proto.metadata_props:
        if prop.key == SPEC_FILE:
            return _parse_spec_file(prop.value, path)
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if not inputs:
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) == 4 and all(isinstance(d, int) and d > 0 for d in dims[1:]):
        return _check_spec({"input_shape": dims[1:]}, "the ONNX graph input")
    return None


def _export_input_shape(program: Any) -> tuple[Any, ...] | None:
    """The traced shape of the first user input; a dynamic dimension is a SymInt, a static one an int."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs and "val" in node.meta:
            return tuple(node.meta["val"].shape)
    return None


def _export_layer_types(program: Any) -> dict[str, type]:
    """Layer name -> original torch.nn class, from the module stack recorded in the exported graph.

    Only classes of ``torch.nn`` are resolved (by attribute lookup, not import), so an archive cannot make
    rca_gpu import anything; user-defined containers are recorded as plain ``nn.Module``.
    """
    found: dict[str, type] = {}
    for node in program.graph.nodes:
        for fqn, type_name in (node.meta.get("nn_module_stack") or {}).values():
            if not fqn or "@" in fqn or fqn in found:
                continue
            if not isinstance(type_name, str):  # a class before serialisation, a dotted name after
                type_name = f"{type_name.__module__}.{type_name.__qualname__}"
            module_path, _, cls_name = type_name.rpartition(".")
            cls = getattr(torch.nn, cls_name, None) if module_path.startswith("torch.nn") else None
            found[fqn] = cls if isinstance(cls, type) else torch.nn.Module
    return found


def _load_factory(
    ref: str, module_name: str, factory_name: str, weights: str | None, device: torch.device
) -> tuple[torch.nn.Module, ModelInfo]:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"Cannot import {module_name!r} named by --model {ref!r}: {exc}. Make the package importable "
            "(pip install -e . or PYTHONPATH), or pass a TorchScript / .pt2 file."
        ) from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ModelError(
            f"The module {module_name!r} has no callable {factory_name!r} (from --model {ref!r})."
        )
    try:
        model = factory()
    except Exception as exc:  # noqa: BLE001 - user code may raise anything; report it as a model problem
        raise ModelError(
            f"{module_name}:{factory_name}() failed: {type(exc).__name__}: {_first_line(exc)}. The factory must "
            "build the model without arguments."
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise ModelError(
            f"{module_name}:{factory_name}() returned {type(model).__name__}, not a torch.nn.Module."
        )
    if weights:
        _load_weights(model, Path(weights).expanduser(), device)
    return model.to(device).eval(), ModelInfo(ref, "factory")


def _load_weights(model: torch.nn.Module, path: Path, device: torch.device) -> None:
    if not path.is_file():
        raise ModelError(
            f"The weights file {str(path)!r} does not exist. Check the part after '=' in --model."
        )
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - weights_only refusals and corrupt files alike
        raise ModelError(
            f"Cannot read {str(path)!r} as a state_dict ({_first_line(exc)}). Save the weights with "
            "torch.save(model.state_dict(), path); whole pickled models are not loaded."
        ) from None
    for key in _STATE_DICT_KEYS:  # common checkpoint layouts wrap the state_dict
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise ModelError(f"{str(path)!r} holds a {type(state).__name__}, not a state_dict.")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(
            f"The weights in {str(path)!r} do not fit the model the factory builds: {_first_line(exc)} "
            f"{' '.join(str(exc).split())[:300]}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# What the model expects
# --------------------------------------------------------------------------------------------------


def _parse_spec_file(raw: str | bytes, path: Path) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        data = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"The {SPEC_FILE} inside {str(path)!r} is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise ModelError(f"The {SPEC_FILE} inside {str(path)!r} must be a JSON object.")
    return _check_spec(data, f"{SPEC_FILE} in {path.name}")


def _check_spec(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate an input description; returns {"input_shape", "classes", "value_range", "source"}."""
    shape = data.get("input_shape")
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
    ):
        raise ModelError(
            f"The input_shape from {where} must be three positive ints [C, H, W], e.g. [1, 28, 28]. "
            f"Got {shape!r} instead."
        )
    value_range = data.get("value_range", [0.0, 1.0])
    if (
        not isinstance(value_range, (list, tuple))
        or len(value_range) != 2
        or not all(isinstance(v, (int, float)) for v in value_range)
        or not value_range[0] < value_range[1]
    ):
        raise ModelError(
            f"The value_range from {where} must be [low, high] with low < high. Got {value_range!r}."
        )
    classes = data.get("classes")
    return {
        "input_shape": [int(s) for s in shape],
        "classes": list(classes) if isinstance(classes, (list, tuple)) else None,
        "value_range": [float(v) for v in value_range],
        "source": where,
    }


def input_spec(model: torch.nn.Module) -> dict[str, Any] | None:
    """The input the model declares: ``{"input_shape": [C, H, W], "classes", "value_range", "source"}``.

    Read from the archive's ``rca_gpu.json``, else a torch.export signature, else the module attributes
    ``input_shape`` / ``classes`` / ``value_range``. None when the model declares nothing.
    """
    info = model_info(model)
    if info is not None and info.spec is not None:
        return dict(info.spec)
    try:
        shape = getattr(model, "input_shape", None)
    except Exception:  # noqa: BLE001 - a ScriptModule raises for attributes it did not compile
        shape = None
    if shape is None:
        return None
    return _check_spec(
        {
            "input_shape": list(shape) if isinstance(shape, (list, tuple)) else shape,
            "classes": getattr(model, "classes", None),
            "value_range": list(getattr(model, "value_range", (0.0, 1.0))),
        },
        "the model's input_shape attribute",
    )


def source_image_shape(failures: FailureSet) -> tuple[int, int, int] | None:
    """(C, H, W) of the source's first readable image (C is 1 for grayscale, else 3); None if none reads."""
    if failures.images is not None:
        images = failures.images
        channels = 1 if images.ndim == 3 or images.shape[-1] in (1, 2) else 3
        return channels, int(images.shape[1]), int(images.shape[2])
    from PIL import Image

    paths = failures.paths
    for position in failures.usable_positions[:16]:
        try:
            with Image.open(paths[int(position)]) as image:  # reads the header only
                channels = 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
                return channels, int(image.height), int(image.width)
        except Exception:  # noqa: BLE001, S112 - unreadable files are accounted for later, by the loader
            continue
    return None


def resolve_input(model: torch.nn.Module, failures: FailureSet) -> dict[str, Any]:
    """The input spec to feed ``model``: declared by the model, else guessed from its first conv layer
    (channels) and the source images (size)."""
    spec = input_spec(model)
    if spec is not None:
        return spec
    source = source_image_shape(failures)
    if source is None:
        raise ModelError(
            "The DNN under test does not declare its input shape and no source image could be read to guess it. "
            "Set input_shape = (C, H, W) on the model."
        )
    channels = source[0]
    modules = dict(model.named_modules())
    for name in layers.weighted_layers(model, conv=True, linear=False)[:1]:
        channels = int(getattr(modules[name], "in_channels", channels))
    spec = _check_spec(
        {"input_shape": [channels, source[1], source[2]]}, "the first conv layer and the images"
    )
    spec["guessed"] = True
    return spec


def check_input(
    model: torch.nn.Module, shape: Sequence[int], *, device: torch.device | str, batch: int = 2
) -> torch.Tensor:
    """Run one dummy batch of ``shape`` (C, H, W) through ``model``; return the logits.

    A failure becomes a ModelError that says which shape the model expects, when it can be found.
    """
    device = torch.device(device)
    dummy = torch.full((batch, *[int(s) for s in shape]), 0.5, device=device)
    try:
        with torch.no_grad():
            logits = model(dummy)
    except Exception as exc:  # noqa: BLE001 - any failure is reported with the expected shape
        spec = input_spec(model)
        if spec is not None:
            expect = f"It expects (C, H, W) = {tuple(spec['input_shape'])} (from {spec['source']})."
        else:
            expect = (
                "Its expected shape is unknown: set input_shape = (C, H, W) on the model, or add "
                f'{SPEC_FILE} with {{"input_shape": [C, H, W]}} to the archive.'
            )
        raise ModelError(
            f"The DNN under test does not accept images of shape (C, H, W) = {tuple(int(s) for s in shape)}: "
            f"{_first_line(exc)}. {expect}"
        ) from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelError(
            f"The DNN under test must return logits shaped (N, classes); it returned {got}. Wrap it so that "
            "forward() returns one (N, classes) tensor."
        )
    return logits


def dut_transform(spec: Mapping[str, Any] | Sequence[int]) -> v2.Compose:
    """PIL image -> float tensor (C, H, W) in the model's value range ([0, 1] by default).

    Grayscale when C == 1, RGB otherwise; resized to (H, W) without cropping. A torchvision Compose, so it
    pickles into DataLoader workers.
    """
    from torchvision.transforms import v2

    if isinstance(spec, Mapping):
        shape, (low, high) = spec["input_shape"], spec.get("value_range") or (0.0, 1.0)
    else:
        shape, (low, high) = spec, (0.0, 1.0)
    channels, height, width = (int(s) for s in shape)
    steps = [
        v2.ToImage(),
        v2.Grayscale(1) if channels == 1 else v2.RGB(),
        v2.Resize((height, width), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if (low, high) != (0.0, 1.0):  # x * (high - low) + low, written as a Normalize so it pickles
        steps.append(v2.Normalize([-low / (high - low)] * channels, [1.0 / (high - low)] * channels))
    return v2.Compose(steps)


def image_mode(spec: Mapping[str, Any]) -> str:
    """The PIL mode images are decoded to for this input spec."""
    return "L" if int(spec["input_shape"][0]) == 1 else "RGB"


def hookable(model: torch.nn.Module, spec: Mapping[str, Any], *, extractor: str) -> torch.nn.Module:
    """``model`` itself, or for a TorchScript model an eager twin whose layers run forward hooks.

    ``dut``, ``lrp`` and ``gradcam`` read inside the DNN under test with hooks, which TorchScript modules do
    not run; a TorchScript model is converted through ONNX (:func:`rca_gpu.features.onnx_import.torchscript_to_torch`)
    with the layer names of the scripted module, for the input ``spec`` (:func:`resolve_input`).

    Raises
    ------
    ModelError
        The conversion is not possible (onnx missing, an operator the exporter or converter lacks), naming the
        formats that give every layer.
    """
    info = model_info(model)
    if not (isinstance(model, torch.jit.ScriptModule) or (info is not None and info.format == "torchscript")):
        return model
    try:
        from rca_gpu.features.onnx_import import TORCHSCRIPT_OPSET, torchscript_to_torch

        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        converted = torchscript_to_torch(model, spec["input_shape"], device)
    except ImportError:
        raise ModelError(
            f"The '{extractor}' extractor reads inside the DNN under test with hooks; a TorchScript model runs none "
            "and is converted through ONNX, which needs onnx and onnx2torch: pip install 'rca-gpu[onnx]'. Or "
            f"{EAGER_HINT}."
        ) from None
    except Exception as exc:  # noqa: BLE001 - exporter and converter raise many types; one ModelError says it
        raise ModelError(
            f"The '{extractor}' extractor reads inside the DNN under test with hooks; this TorchScript model runs none "
            f"and could not be converted to a module that does ({type(exc).__name__}: {_first_line(exc)}). "
            f"{EAGER_HINT[0].upper()}{EAGER_HINT[1:]}."
        ) from None
    ref = info.ref if info is not None else "torchscript module"
    return remember(converted, ModelInfo(ref, "torchscript", info.spec if info is not None else None,
                                         conversion=f"TorchScript -> ONNX (opset {TORCHSCRIPT_OPSET}) -> torch"))


def model_format(model: torch.nn.Module) -> str:
    """The format of the file the model came from ("factory", "export", "onnx", "torchscript", or "module"
    for one built otherwise), with the conversion that made it hookable when there was one."""
    info = model_info(model)
    if info is None:
        return "module"
    return f"{info.format} (converted: {info.conversion})" if info.conversion else info.format


# --------------------------------------------------------------------------------------------------
# Activations of the DUT as features
# --------------------------------------------------------------------------------------------------


class DUTActivationExtractor(FeatureExtractor):
    """The DUT's own activations at one layer (default: its penultimate representation).

    With ``@layer`` the features are that layer's output; without, the input of the last Linear layer, the
    representation the DUT classifies from. ``pool`` average-pools conv maps to pool x pool first.
    """

    def prepare(self) -> None:
        self.model = load_dut(self.context)
        self.input = resolve_input(self.model, self.context.failures)
        check_input(self.model, self.input["input_shape"], device=self.context.device)  # before any conversion
        self.model = hookable(self.model, self.input, extractor="dut")
        self.image_mode = image_mode(self.input)
        if self.spec.layer:
            layers.find_layer(self.model, self.spec.layer, extractor="dut")
            self.layer, self.where = self.spec.layer, "output"
        else:
            self.layer, self.where = layers.penultimate_layer(self.model), "input"
        with layers.capture(self.model, [self.layer], where=self.where) as store:
            check_input(self.model, self.input["input_shape"], device=self.context.device)
        if self.layer not in store:
            raise ModelError(
                f"The layer {self.layer!r} of the DNN under test is not called in its forward pass; name one that "
                "is with dut@LAYER."
            )
        self.dims = int(layers.pool_flatten(store[self.layer], self._pool).shape[1])

    @property
    def _pool(self) -> int | None:
        return self.spec.params.get("pool")

    def transform(self) -> v2.Compose:
        return dut_transform(self.input)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        with layers.capture(self.model, [self.layer], where=self.where) as store:
            self.model(images)
        return layers.pool_flatten(store[self.layer], self._pool).float()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "layer": self.layer,
            "reads": f"{self.where} of {self.layer}",
            "pool": self._pool,
            "dims": self.dims,
            "input_shape": self.input["input_shape"],
            "input_shape_source": self.input["source"],
            "model_format": model_format(self.model),
        }

    def cache_token(self) -> str:
        return f"{self.where}:{self.layer}"
