"""The contract every feature extractor follows, and the context the engine hands it.

Life of an extractor (driven by :func:`rca_gpu.features.extract.extract_features`)::

    extractor = Class(spec, context)      # stores arguments only
    extractor.prepare()                   # load weights / the DUT, train an autoencoder, pick a layer...
    transform = extractor.transform()     # per-image preprocessing, runs in DataLoader worker processes
    for batch in loader:                  # batch: float tensor (b, c, h, w) on context.device
        feats = extractor.encode(batch)   # -> (b, d) float tensor on context.device
    extractor.describe()                  # resolved settings (chosen layer, weights, dims) for run.json

The engine wraps ``encode`` in ``torch.inference_mode()`` and bf16 autocast unless ``needs_grad`` is True
(heatmap extractors need autograd and manage their own precision).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

    from rca_gpu.data.sources import FailureSet
    from rca_gpu.progress import Reporter
    from rca_gpu.spec import FeatureSpec


@dataclass
class ExtractionContext:
    """What an extractor may use besides its own spec."""

    failures: FailureSet
    device: torch.device
    precision: str = "fp32"  # "fp32" | "bf16"
    seed: int = 0
    batch_size: int = 64
    workers: int = 0
    model_ref: str | None = None  # the DNN under test, as given to --model
    work_dir: Path | None = None  # where an extractor may save what it trains (autoencoder), reused on re-runs
    reporter: Reporter | None = None
    max_image_memory: int | None = None  # bytes image decoding may use at once (rca_gpu.data.decoding)
    _dut: Any = field(default=None, repr=False)  # the DNN under test, once loaded (rca_gpu.features.dut.load_dut)

    def batches(
        self,
        transform: Callable[[Image.Image], torch.Tensor],
        image_mode: str = "RGB",
        *,
        limit: int | None = None,
        shuffle: bool = False,
        description: str = "reading images",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate (positions, images) over the usable images, images already on ``self.device``.

        For extractors that must see the data before encoding (autoencoder training, layer selection).
        ``limit`` caps the number of images (a seeded random subset when ``shuffle``).
        """
        from rca_gpu.data.loading import iterate_batches

        yield from iterate_batches(
            self.failures,
            transform,
            image_mode,
            batch_size=self.batch_size,
            workers=self.workers,
            device=self.device,
            limit=limit,
            shuffle=shuffle,
            seed=self.seed,
            reporter=self.reporter,
            description=description,
            max_image_memory=self.max_image_memory,
        )


class FeatureExtractor(abc.ABC):
    """Base class of all extractors. Subclasses implement ``transform`` and ``encode``."""

    #: PIL mode images are decoded to before ``transform`` ("RGB" or "L"). May be set in ``prepare``.
    image_mode: str = "RGB"
    #: True when ``encode`` needs autograd (heatmaps): the engine then skips inference_mode/autocast.
    needs_grad: bool = False
    #: Bump when the extractor's output changes, so cached features are recomputed.
    version: int = 1

    def __init__(self, spec: FeatureSpec, context: ExtractionContext) -> None:
        self.spec = spec
        self.context = context

    def prepare(self) -> None:  # noqa: B027  (an optional hook, not abstract: most extractors need nothing)
        """Load or train what ``encode`` needs. Default: nothing."""

    @abc.abstractmethod
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Per-image preprocessing (PIL image -> float tensor c,h,w). Must be picklable."""

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Map a batch (b, c, h, w) on the context device to features (b, d)."""

    def describe(self) -> dict[str, Any]:
        """Resolved settings for run.json (chosen layer, weights, feature dimension...)."""
        return {"name": self.spec.name, "layer": self.spec.layer, **dict(self.spec.params)}

    def cache_token(self) -> str:
        """Anything besides the spec that changes the features (e.g. a weights file's hash)."""
        return ""
