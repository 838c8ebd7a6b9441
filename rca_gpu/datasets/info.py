"""Plain-data descriptions of the benchmarks: what `list_datasets` shows and what the generators draw from.

No torch here: the CLI lists datasets instantly, and each generator reads its parameter ranges from the same
objects the documentation table is built from, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: Root cause of a failure on an unmodified (clean / nominal) input.
NONE = "none"
#: Class names of the two DUTs, here so that listing datasets needs no torch.
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
SHAPES_CLASSES = ("circle", "square", "triangle", "star", "cross")


@dataclass(frozen=True)
class CauseInfo:
    """One root cause: its name, what a person sees, its default share of failures, its parameter ranges.

    ``ranges`` maps a metadata column to the (low, high) interval its value is drawn from uniformly for this
    cause; parameters not listed keep their nominal distribution (or do not apply).
    """

    name: str
    summary: str
    default_proportion: float
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranges", MappingProxyType(dict(self.ranges)))

    def range(self, column: str) -> tuple[float, float]:
        return self.ranges[column]


@dataclass(frozen=True)
class DatasetInfo:
    """A benchmark: name, one-line summary, root causes (``none`` first), defaults and image format."""

    name: str
    summary: str
    causes: tuple[CauseInfo, ...]
    default_n: int
    image_shape: tuple[int, int, int]
    classes: tuple[str, ...]
    factory: str
    module: str

    def draw(self, rng: np.random.Generator, cause: str, column: str) -> float:
        """A value of ``column`` for ``cause``, uniform over its range."""
        low, high = self.cause(cause).range(column)
        return float(rng.uniform(low, high))

    @property
    def cause_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.causes)

    @property
    def default_proportions(self) -> dict[str, float]:
        return {c.name: c.default_proportion for c in self.causes}

    def cause(self, name: str) -> CauseInfo:
        for cause in self.causes:
            if cause.name == name:
                return cause
        raise KeyError(name)
