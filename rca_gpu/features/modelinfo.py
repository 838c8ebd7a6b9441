"""What loading the DNN under test learned about it, kept beside the module (which cannot carry it).

A leaf of :mod:`rca_gpu.features`: it imports nothing of the package, so :mod:`rca_gpu.features.layers`
(which reads it) and :mod:`rca_gpu.features.dut` (which writes it) do not import each other.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ModelInfo:
    """How a model was loaded, and what its module no longer shows.

    ``format`` is the file the user passed: "factory", "export" (an unflattened torch.export archive), "onnx"
    (converted by onnx2torch) or "torchscript". ``layer_types`` maps layer names to their original torch.nn
    classes where the loaded submodules are generic (torch.export); LRP rules are chosen by class.
    ``conversion`` says how a module that runs no hooks (TorchScript) was made into one that does.
    """

    ref: str
    format: str
    spec: Mapping[str, Any] | None = None
    layer_types: Mapping[str, type] | None = None
    conversion: str | None = None


_INFO: weakref.WeakKeyDictionary[torch.nn.Module, ModelInfo] = weakref.WeakKeyDictionary()


def model_info(model: torch.nn.Module) -> ModelInfo | None:
    """How ``model`` was loaded by :func:`rca_gpu.features.dut.load_model` (None for a module built otherwise)."""
    try:
        return _INFO.get(model)
    except TypeError:  # an unhashable module
        return None


def remember(model: torch.nn.Module, info: ModelInfo) -> torch.nn.Module:
    """Record ``info`` for ``model`` (kept as long as the model lives); returns the model."""
    _INFO[model] = info
    return model
