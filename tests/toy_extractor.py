"""A feature extractor in one file: the grey-level histogram of each image, as a plug-in.

Register it with ``rca-gpu --plugin toy_extractor ...``, or declare it in your package's metadata::

    [project.entry-points."rca_gpu.extractors"]
    histogram = "toy_extractor:HISTOGRAM"
"""

from __future__ import annotations

from rca_gpu.engine.params import Param
from rca_gpu.features.base import FeatureExtractor
from rca_gpu.spec import ExtractorInfo


class _ToGrey:
    """PIL image -> float tensor (1, 32, 32) in [0, 1]. A class, so that it pickles into loader workers."""

    def __call__(self, image):
        import torch
        from torchvision.transforms import v2

        return v2.Compose([v2.ToImage(), v2.Resize((32, 32), antialias=True),
                           v2.ToDtype(torch.float32, scale=True)])(image)


class HistogramExtractor(FeatureExtractor):
    image_mode = "L"

    def transform(self):
        return _ToGrey()

    def encode(self, images):
        import torch

        bins = int(self.spec.params.get("bins", 16))
        flat = images.flatten(1).clamp(0, 1)
        index = (flat * (bins - 1)).round().long()
        counts = torch.zeros(len(flat), bins, device=flat.device).scatter_add_(1, index, torch.ones_like(flat))
        return counts / flat.shape[1]


HISTOGRAM = ExtractorInfo("toy_extractor:HistogramExtractor", "grey-level histogram (a plug-in example)",
                          {"bins": Param(int, "at_least_2", high=256)})
EXTRACTORS = {"histogram": HISTOGRAM}
