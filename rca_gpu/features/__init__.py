"""Feature extraction: images -> (n, d) float tensors on the chosen torch device.

Extractors are listed in :data:`rca_gpu.spec.EXTRACTORS` and imported only when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from rca_gpu.features.base import ExtractionContext, FeatureExtractor
    from rca_gpu.spec import FeatureSpec


def load_target(target: str):
    """Import ``package.module:Name`` and return the object."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def create_extractor(spec: FeatureSpec, context: ExtractionContext) -> FeatureExtractor:
    """Instantiate the extractor a FeatureSpec names (imports its module now)."""
    return load_target(spec.info.target)(spec, context)
