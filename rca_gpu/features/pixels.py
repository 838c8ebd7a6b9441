"""Baseline features: the image's own pixels, resized and flattened."""

from __future__ import annotations

from typing import Any

from rca_gpu.features.base import FeatureExtractor

DEFAULT_SIZE = 32


class _ToPixels:
    """PIL image -> float tensor in [0, 1] of shape (c, s, s). A class, so it pickles into workers."""

    def __init__(self, size: int) -> None:
        import torch
        from torchvision.transforms import v2

        self.pipeline = v2.Compose(
            [v2.ToImage(), v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True)]
        )

    def __call__(self, image):
        return self.pipeline(image)


class PixelExtractor(FeatureExtractor):
    image_mode = "RGB"

    def transform(self):
        return _ToPixels(int(self.spec.params.get("image_size", DEFAULT_SIZE)))

    def encode(self, images):
        import torch

        out = images.flatten(1).float()
        if self.spec.params.get("normalize", False):
            out = torch.nn.functional.normalize(out, dim=1)
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "name": "pixels",
            "image_size": int(self.spec.params.get("image_size", DEFAULT_SIZE)),
            "l2_normalized": bool(self.spec.params.get("normalize", False)),
        }
