"""Seeded, cached training of a benchmark's DUT.

Training is deterministic (see :mod:`rca_gpu.datasets.runtime`), and its result is cached under a key that
covers everything that determines the weights. Whether the weights come from the cache or a fresh run,
they go through the same save/load round trip, so generation sees bit-identical models either way.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rca_gpu.datasets import cache
from rca_gpu.datasets.runtime import deterministic_torch, predict, progress_task

log = logging.getLogger("rca_gpu")


@dataclass(frozen=True)
class Recipe:
    """Optimiser settings: Adam with a one-cycle learning rate, which converges in few epochs."""

    epochs: int
    batch_size: int = 128
    max_lr: float = 4e-3
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class TrainingData:
    """uint8 images and int labels: a train split and a held-out clean split for the accuracy."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def get_or_train(
    name: str,
    factory: Callable[[], Any],
    recipe: Recipe,
    *,
    seed: int,
    key_fields: Mapping[str, Any],
    make_data: Callable[[], TrainingData],
    reporter=None,
):
    """The trained DUT (eval mode) and its meta: cache hit, or train, store and reload.

    ``key_fields`` must describe the data (a digest, or the recipe that renders it); ``make_data`` runs only
    on a cache miss, so a procedural training set is never rendered when the weights are cached.
    """
    import torch
    import torchvision

    model = factory()
    key = cache.cache_key(
        {
            "name": name,
            "architecture": repr(model),
            "recipe": asdict(recipe),
            "seed": seed,
            "data": dict(key_fields),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "machine": platform.machine(),
        }
    )
    cached = cache.load(name, key)
    if cached is None:
        data = make_data()
        started = time.perf_counter()
        state = _fit(model, data, recipe, seed=seed, reporter=reporter, description=f"training {name} DUT")
        seconds = time.perf_counter() - started
        with deterministic_torch(seed):
            model.eval()
            accuracy = float((predict(model, data.x_test)[0] == data.y_test).mean())
        meta = {
            "clean_accuracy": accuracy,
            "clean_test_size": len(data.y_test),
            "train_size": len(data.y_train),
            "epochs": recipe.epochs,
            "train_seconds": round(seconds, 1),
        }
        log.info("Trained the %s DUT in %.1f s: clean accuracy %.4f.", name, seconds, accuracy)
        cache.store(name, key, state, meta)
        cached = cache.load(name, key)
        if cached is None:  # pragma: no cover - only on a cache folder that cannot be read back
            cached = (state, meta)
    state, meta = cached
    model = factory()
    model.load_state_dict(state)
    model.eval()
    return model, {**meta, "cache_key": key}


def _fit(model, data: TrainingData, recipe: Recipe, *, seed: int, reporter, description: str) -> dict:
    """Plain mini-batch training; returns a detached copy of the state_dict."""
    import torch
    from torch import nn

    from rca_gpu.datasets.runtime import to_tensor
    from rca_gpu.engine.device import as_torch

    with deterministic_torch(seed):
        _reinitialise(model)
        x = to_tensor(data.x_train)
        y = as_torch(data.y_train.astype(np.int64))
        steps_per_epoch = -(-len(x) // recipe.batch_size)
        optimiser = torch.optim.Adam(model.parameters(), lr=recipe.max_lr, weight_decay=recipe.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=recipe.max_lr, total_steps=recipe.epochs * steps_per_epoch
        )
        loss_fn = nn.CrossEntropyLoss()
        shuffler = torch.Generator().manual_seed(seed)
        model.train()
        with progress_task(reporter, description, recipe.epochs) as advance:
            for _ in range(recipe.epochs):
                order = torch.randperm(len(x), generator=shuffler)
                for start in range(0, len(x), recipe.batch_size):
                    batch = order[start : start + recipe.batch_size]
                    loss = loss_fn(model(x[batch]), y[batch])
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    schedule.step()
                advance(1)
        model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _reinitialise(model) -> None:
    """Draw fresh weights under the seeded RNG: the factory ran outside it, with the caller's RNG state."""
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
