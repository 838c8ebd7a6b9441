"""A deterministic torch context for training DUTs and generating benchmarks.

Byte-identical outputs for a seed need three things: one intra-op thread (oneDNN splits convolution
reductions across threads, so the thread count changes the float sums), deterministic algorithms, and a
seeded RNG that does not disturb the caller's global RNG afterwards. Everything is restored on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from rca_gpu.progress import no_progress


@contextlib.contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """Run the block single-threaded, with deterministic kernels and the CPU RNG seeded with ``seed``."""
    import torch

    threads = torch.get_num_threads()
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):  # CPU RNG only: all of this runs on the CPU
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def to_tensor(images):
    """uint8 images (N, H, W) or (N, H, W, C) -> float tensor (N, C, H, W) in [0, 1], the DUT's input."""
    from rca_gpu.engine.device import as_torch

    batch = as_torch(images)
    batch = batch.unsqueeze(1) if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
    return batch.float().div_(255.0)


def quantize(images):
    """Float tensor (N, C, H, W) in [0, 1] -> uint8 numpy (N, H, W[, C]) exactly as the PNGs will hold it.

    The DUT is always judged on the quantised image, so a failure in the manifest is a failure of the file.
    """
    import torch

    from rca_gpu.engine.device import as_numpy

    batch = images.clamp(0, 1).mul(255).round().to(torch.uint8)
    batch = batch[:, 0] if batch.shape[1] == 1 else batch.permute(0, 2, 3, 1)
    return as_numpy(batch.contiguous())


def predict(model, images, *, batch_size: int = 512):
    """Class and softmax confidence of the DUT for uint8 images; returns two numpy arrays."""
    import numpy as np
    import torch

    from rca_gpu.engine.device import as_numpy

    preds, confs = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            probs = model(to_tensor(images[start : start + batch_size])).softmax(dim=1)
            conf, pred = probs.max(dim=1)
            preds.append(as_numpy(pred))
            confs.append(as_numpy(conf))
    if not preds:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return np.concatenate(preds).astype(np.int64), np.concatenate(confs).astype(np.float32)


def progress_task(
    reporter, description: str, total: int | None
) -> AbstractContextManager[Callable[[int], None]]:
    """``reporter.task(...)``, or a silent stand-in when no reporter was given."""
    if reporter is None:
        return contextlib.nullcontext(no_progress)
    return reporter.task(description, total)
