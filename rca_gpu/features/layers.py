"""Naming, reading and choosing the layers of the DNN under test.

A layer is named as in ``model.named_modules()`` (a dotted path such as ``conv2`` or ``features.3``): the
name a user writes after ``@`` in a pipeline (``lrp@conv2``). The same names work for eager modules and for
torch.export archives, which :func:`rca_gpu.features.dut.load_model` unflattens back into named submodules.

The layer choice follows HUDD (Fahmy et al., "Supporting DNN Safety Analysis and Retraining through
Heatmap-based Unsupervised Learning", IEEE TR 2021): per candidate layer, cluster the heatmaps with Ward's
linkage, pick the number of clusters at the knee of the WICD curve, and keep the layer whose clustering has
the lowest WICD (weighted average intra-cluster distance).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rca_gpu.errors import ModelError, SpecError
from rca_gpu.features.modelinfo import model_info

#: Layer kinds that carry weights, where HUDD reads heatmaps (activations sit between them).
_CONV = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_LINEAR = (torch.nn.Linear,)


def layer_types(model: torch.nn.Module) -> dict[str, type]:
    """Name -> class of every submodule (the root is left out).

    For an unflattened torch.export module the submodules are generic ``InterpreterModule`` objects, so the
    original classes recorded at load time are used instead.
    """
    info = model_info(model)
    if info is not None and info.layer_types is not None:
        return dict(info.layer_types)
    return {name: type(module) for name, module in model.named_modules() if name}


def find_layer(model: torch.nn.Module, name: str, *, extractor: str) -> torch.nn.Module:
    """The submodule called ``name``; a SpecError listing real names when there is none."""
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    types = layer_types(model)
    weighted = [n for n, t in types.items() if issubclass(t, _CONV + _LINEAR)]
    shown = ", ".join(weighted[:12] or list(types)[:12]) or "none"
    raise SpecError(
        f"The DNN under test has no layer {name!r} for '{extractor}@{name}'. Layers with weights: {shown} "
        "(names as in model.named_modules())."
    )


def weighted_layers(model: torch.nn.Module, *, conv: bool = True, linear: bool = True) -> list[str]:
    """Conv and/or Linear layers in registration order (the order of the forward pass for plain nets)."""
    kinds: tuple[type, ...] = (_CONV if conv else ()) + (_LINEAR if linear else ())
    return [name for name, kind in layer_types(model).items() if kinds and issubclass(kind, kinds)]


def heatmap_candidates(model: torch.nn.Module, *, linear: bool = True) -> list[str]:
    """Layers whose heatmaps HUDD compares: conv (and linear) layers except the output layer.

    The output layer is left out because its relevance is the predicted logit and nothing else.
    """
    names = weighted_layers(model, conv=True, linear=linear)
    last_linear = weighted_layers(model, conv=False, linear=True)[-1:]
    return [n for n in names if n not in last_linear]


def penultimate_layer(model: torch.nn.Module) -> str:
    """The layer whose *input* is the penultimate representation: the last Linear (else the last conv)."""
    linear = weighted_layers(model, conv=False, linear=True)
    if linear:
        return linear[-1]
    conv = weighted_layers(model, conv=True, linear=False)
    if conv:
        return conv[-1]
    raise ModelError(
        "Cannot find the penultimate layer of the DNN under test: it has no nn.Linear or nn.Conv layer. "
        "Name the layer to read with dut@LAYER (names as in model.named_modules())."
    )


@contextlib.contextmanager
def capture(
    model: torch.nn.Module, names: Sequence[str], *, where: str = "output"
) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the output (or input) tensor of each named layer during the forward passes run inside.

    The tensors stay attached to the autograd graph, so a caller can differentiate with respect to them.
    Forward hooks are removed on exit, also after an error.
    """
    modules = dict(model.named_modules())
    store: dict[str, torch.Tensor] = {}
    handles = []

    def keeper(name: str):
        if where == "input":
            return lambda module, args: store.__setitem__(name, args[0])
        return lambda module, args, output: store.__setitem__(name, output)

    try:
        for name in names:
            module = modules[name]
            if where == "input":
                handles.append(module.register_forward_pre_hook(keeper(name)))
            else:
                handles.append(module.register_forward_hook(keeper(name)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def pool_flatten(maps: torch.Tensor, pool: int | None) -> torch.Tensor:
    """(n, c, h, w) maps -> (n, c * pool * pool) by adaptive average pooling; other shapes are flattened.

    Pooling makes features of large layers small enough to cluster and tolerant to small shifts.
    """
    if pool and maps.ndim == 4:
        maps = torch.nn.functional.adaptive_avg_pool2d(maps, pool)
    return maps.flatten(1)


def shrink_to(maps: torch.Tensor, max_dims: int) -> torch.Tensor:
    """Flattened maps with at most about ``max_dims`` values, pooling space (not channels) when needed."""
    if maps.ndim == 4 and maps[0].numel() > max_dims:
        side = max(1, int((max_dims / maps.shape[1]) ** 0.5))
        maps = torch.nn.functional.adaptive_avg_pool2d(maps, min(side, maps.shape[-1], maps.shape[-2]))
    return maps.flatten(1)


# --------------------------------------------------------------------------------------------------
# HUDD's layer choice
# --------------------------------------------------------------------------------------------------


def wicd(distances: np.ndarray, labels: np.ndarray) -> float:
    """HUDD's weighted average intra-cluster distance of one clustering.

    ``WICD = (1 / k) * sum_j (|C_j| / n) * mean pairwise distance within C_j``; singleton clusters add 0 but
    count in ``k``, as in HUDD. Lower is better: compact clusters that hold most of the images.
    """
    n = len(labels)
    ids, inverse = np.unique(labels, return_inverse=True)
    onehot = np.zeros((n, len(ids)))
    onehot[np.arange(n), inverse] = 1.0
    sizes = onehot.sum(0)
    block = ((distances @ onehot) * onehot).sum(0)  # sum of d(a, b) over ordered pairs inside each cluster
    pairs = sizes * (sizes - 1)
    mean_within = np.divide(block, pairs, out=np.zeros_like(block), where=pairs > 0)
    return float(((sizes / n) * mean_within).sum() / len(ids))


@dataclass
class LayerScore:
    """HUDD's score of one layer: WICD at the knee of the WICD-vs-k curve (lower is better)."""

    score: float
    k: int
    curve: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        finite = bool(np.isfinite(self.score))
        return {"wicd": round(self.score, 6) if finite else None, "k": self.k}


def hudd_layer_score(maps: torch.Tensor, *, max_k: int = 30) -> LayerScore:
    """Cluster ``maps`` (n, d) with Ward's linkage and score the clustering at the knee, as HUDD does.

    Distances are Euclidean between heatmaps, divided by their mean over all pairs of the layer: WICD then
    measures how much tighter the clusters are than the layer as a whole, so layers of different size and
    relevance scale compare fairly. Ward's tree is built once and cut at every k in 2..max_k.
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    from rca_gpu.engine.device import as_numpy

    n = int(maps.shape[0])
    flat = maps.flatten(1).double()
    distances = as_numpy(torch.cdist(flat, flat))
    scale = distances.sum() / max(n * (n - 1), 1)
    if n < 3 or scale <= 0:
        return LayerScore(float("inf"), 1)
    distances = distances / scale
    tree = linkage(as_numpy(flat), method="ward")
    ks = list(range(2, min(max_k, n - 1) + 1))
    curve = {k: wicd(distances, fcluster(tree, t=k, criterion="maxclust")) for k in ks}
    k = knee(ks, [curve[k] for k in ks])
    return LayerScore(curve[k], k, curve)


def knee(ks: Sequence[int], values: Sequence[float]) -> int:
    """The k at the knee of a decreasing convex curve (kneed); the sharpest bend when kneed finds none."""
    if len(ks) < 3:
        return ks[0]
    from kneed import KneeLocator

    found = KneeLocator(list(ks), list(values), curve="convex", direction="decreasing").knee
    if found is not None:
        return int(found)
    bends = np.diff(values, 2)  # second difference: largest where the slope flattens fastest
    return int(ks[int(np.argmax(bends)) + 1])


def choose_layer(maps_by_layer: Mapping[str, torch.Tensor], *, max_k: int = 30) -> tuple[str, dict[str, Any]]:
    """The layer with the lowest HUDD score, and every candidate's score for run.json."""
    scores = {name: hudd_layer_score(maps, max_k=max_k) for name, maps in maps_by_layer.items()}
    best = min(scores, key=lambda name: (scores[name].score, -list(scores).index(name)))
    return best, {name: score.to_dict() for name, score in scores.items()}
