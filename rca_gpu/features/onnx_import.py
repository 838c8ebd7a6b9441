"""ONNX graphs -> eager torch modules whose layers carry the names of the model they were exported from.

onnx2torch turns each ONNX operator into a ``torch.nn`` module of a torch.fx GraphModule (Conv -> ``Conv2d``,
Gemm -> ``Linear``, Relu -> ``ReLU``), so forward hooks, captum and zennit work on it. Three things stand
between that and the ONNX files today's exporters write, and are handled here:

* **Operator versions.** onnx2torch registers converters up to about opset 17. Newer opsets (18 and up, the
  dynamo exporter's default) bump many operators only to add tensor types (float8, int4, bfloat16); for those
  (:data:`TYPE_ONLY_UPDATES`) the converter of the newest older version is used, which computes the same on
  the types it supports. Other new versions are refused with the operator named.
* **Reshape allowzero.** The exporter writes ``Reshape(allowzero=1)``, which onnx2torch refuses; when the
  target shape is a constant without a 0, allowzero changes nothing, and the attribute is dropped.
* **Layer names.** onnx2torch names its modules after the ONNX nodes (``node_conv2d_1``, ``features/3/Conv``).
  Each node that ends a module of the exported model is renamed to that module's path (``features.3``), read
  from the exporter's record of it: the ``pkg.torch.onnx.name_scopes`` metadata of the dynamo exporter, the
  name of the node's weight (``features.3.weight``), or the scope in the node's name (``/features/3/Conv``)
  of the TorchScript exporter. A container (``features``) becomes an identity module after its last node, so
  ``dut@features`` reads its output as on the eager model. Nodes with no recorded module keep their names.

Nothing named by the file is imported or run: the operators map to onnx2torch's fixed table.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any

import torch

#: (operator, version) -> the older version whose converter computes the same: these versions only added
#: tensor types (ONNX's Changelog.md). Extended as onnx2torch lags behind new opsets.
TYPE_ONLY_UPDATES: dict[str, tuple[int, ...]] = {
    "Reshape": (19, 21, 23, 24), "Constant": (19, 21, 23, 24), "Identity": (19, 21, 23, 24),
    "Shape": (19, 21, 23, 24), "Cast": (19, 21, 23, 24), "Flatten": (21, 23, 24), "Transpose": (21, 23, 24),
    "Squeeze": (23, 24), "Unsqueeze": (21, 23, 24), "Conv": (22,), "MaxPool": (22,), "GlobalAveragePool": (22,),
}
#: Operators whose second input is the weight of the layer they implement (its name gives the layer's path).
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization")
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def to_torch(proto: Any) -> tuple[torch.fx.GraphModule, dict[str, type]]:
    """Convert an ONNX ModelProto (weights loaded) to an eager module with the exported model's layer names.

    Returns
    -------
    (module, layer types)
        The GraphModule in eval mode, and layer name -> class of each renamed layer.

    Raises
    ------
    NotImplementedError
        An operator (or operator version) onnx2torch cannot convert, named in the message.
    """
    from onnx2torch import convert
    from onnx2torch.onnx_graph import OnnxGraph

    _drop_idle_allowzero(proto)
    _register_type_only_versions(proto)
    module = convert(proto)
    initializers = {t.name for t in proto.graph.initializer}
    paths = {name: _module_path(node._proto, initializers) for name, node in OnnxGraph(proto.graph).nodes.items()}
    _rename(module, paths)
    types = {name: type(sub) for name, sub in module.named_modules() if name in set(paths.values())}
    return module.eval(), types


def _opset(proto: Any) -> int:
    """The version of the default (ai.onnx) operator set the model imports."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def _register_type_only_versions(proto: Any) -> None:
    """Alias the converters of :data:`TYPE_ONLY_UPDATES` versions used by ``proto`` to their older versions."""
    from onnx import defs
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    opset = _opset(proto)
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in TYPE_ONLY_UPDATES:
            continue
        try:
            version = defs.get_schema(node.op_type, max_inclusive_version=opset).since_version
        except Exception:  # noqa: BLE001, S112 - an unknown operator: onnx2torch names it when it refuses
            continue
        wanted = OperationDescription("", node.op_type, version)
        if wanted in _CONVERTER_REGISTRY or version not in TYPE_ONLY_UPDATES[node.op_type]:
            continue
        older = sorted(d.version for d in _CONVERTER_REGISTRY
                       if d.domain == "" and d.operation_type == node.op_type and d.version < version)
        if older:
            _CONVERTER_REGISTRY[wanted] = _CONVERTER_REGISTRY[OperationDescription("", node.op_type, older[-1])]


def _drop_idle_allowzero(proto: Any) -> None:
    """Set ``allowzero`` to 0 on Reshape nodes whose target shape is a constant without a 0 (no effect then)."""
    from onnx import numpy_helper

    constants = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    constants[node.output[0]] = attribute.t
    for node in proto.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        shape = numpy_helper.to_array(constants[node.input[1]]).tolist()
        for attribute in node.attribute:
            if attribute.name == "allowzero" and attribute.i == 1 and 0 not in shape:
                attribute.i = 0


def _module_path(node: Any, initializers: set[str]) -> str | None:
    """The path of the exported model's module that ``node`` belongs to (``features.3``), or None."""
    for prop in node.metadata_props:
        if prop.key == _SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)  # a list of strings: literals only, nothing is run
            except (ValueError, SyntaxError):
                scopes = None
            if isinstance(scopes, list) and len(scopes) >= 2 and all(isinstance(s, str) for s in scopes):
                return scopes[-2] or None
    if node.op_type in WEIGHTED_OPS and len(node.input) >= 2:
        weight = node.input[1]
        if weight.endswith(".weight") and weight in initializers:
            return weight[: -len(".weight")]
    if node.name.startswith("/"):
        path = ""
        for part in node.name.strip("/").split("/")[:-1]:  # the last part is the operator
            path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
        return path or None
    return None


def _rename(module: torch.fx.GraphModule, paths: Mapping[str, str | None]) -> None:
    """Give the last node of each module path that module's name (in graph order, so layers are registered in
    the order they run) and, when every node's module is known, each container an identity after its last
    node. With some nodes unknown (an opset conversion drops the exporter's records), where a container ends
    is unknown too, and containers get no identity: their names are then refused with the list of layers."""
    graph = module.graph
    calls = [node for node in graph.nodes if node.op == "call_module"]
    named: dict[torch.fx.Node, str] = {}
    for node in calls:
        known = paths.get(str(node.target))
        if known and _valid(known):
            named[node] = known
    last: dict[str, torch.fx.Node] = {}
    for node in calls:
        if node in named:
            parts = named[node].split(".")
            for depth in range(1, len(parts) + 1):  # the module and every container around it
                last[".".join(parts[:depth])] = node
    for node in calls:
        path = named.get(node)
        if path and last[path] is node:
            _attach(module, path, module.get_submodule(str(node.target)))  # onnx2torch's modules sit at the top
            node.target = path
    if len(named) == len(calls):
        for path, node in last.items():
            if named[node] == path or not isinstance(module.get_submodule(path), _Scope):
                continue
            with graph.inserting_after(node):
                scope = graph.call_module(path, (node,))
            node.replace_all_uses_with(scope, delete_user_cb=_other_than(scope))
    graph.lint()
    module.delete_all_unused_submodules()
    module.recompile()


def _other_than(kept: torch.fx.Node) -> Callable[[torch.fx.Node], bool]:
    """Whether a node is not ``kept`` (the users of a node that move to its scope: all but the scope itself)."""
    return lambda user: user is not kept


def _attach(root: torch.nn.Module, path: str, layer: torch.nn.Module) -> None:
    """Set ``layer`` at dotted ``path`` under ``root``; the containers on the way are :class:`_Scope` modules,
    created where missing. A layer set where a container already stands takes over its children."""
    parent = root
    parts = path.split(".")
    for part in parts[:-1]:
        child = parent._modules.get(part)
        if child is None:
            child = _Scope()
            parent.add_module(part, child)
        parent = child
    existing = parent._modules.get(parts[-1])
    if existing is not None:
        for name, child in existing._modules.items():
            layer.add_module(name, child)
    parent.add_module(parts[-1], layer)


def _valid(path: str) -> bool:
    return all(part.isidentifier() or part.isdigit() for part in path.split("."))


class _Scope(torch.nn.Module):
    """A container of the exported model: passes its last layer's output on, so hooks on it see that output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


#: The operator set a TorchScript model is exported to on its way to a hookable module.
TORCHSCRIPT_OPSET = 17


def torchscript_to_torch(scripted: torch.nn.Module, input_shape: Any, device: torch.device) -> torch.nn.Module:
    """A TorchScript module as an eager module whose layers run forward hooks, through ONNX in memory.

    TorchScript modules run no Python hooks, so ``dut``, ``lrp`` and ``gradcam`` could not read inside them.
    The scripted graph is exported by torch's TorchScript-based ONNX exporter (opset
    :data:`TORCHSCRIPT_OPSET`, dynamic batch) and converted back by :func:`to_torch`; its node names keep the
    scripted module's layer paths, so the layers are named as on the eager model (``features.3``).

    Parameters
    ----------
    scripted:
        The loaded TorchScript module (eval mode).
    input_shape:
        (C, H, W) of one image, for the example batch the exporter traces.
    device:
        Where the converted module lives.

    Raises
    ------
    Exception
        Whatever the exporter or the converter raises (the caller turns it into one ModelError).
    """
    import io
    import warnings

    import onnx

    example = torch.rand((2, *[int(s) for s in input_shape]), device=next(scripted.parameters()).device
                         if any(True for _ in scripted.parameters()) else "cpu")
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated upstream, still supported
        warnings.simplefilter("ignore")
        # the exporter writes to a file-like object as documented; its annotation names paths only
        torch.onnx.export(scripted, (example,), buffer,  # type: ignore[arg-type]
                          opset_version=TORCHSCRIPT_OPSET, input_names=["images"],
                          dynamic_axes={"images": {0: "batch"}}, dynamo=False)
    module, _ = to_torch(onnx.load_from_string(buffer.getvalue()))
    return module.to(device).eval()
