"""Features of a run's images: the extraction context from a RunSpec, and the extractor's features.

:func:`compute_features` is what a run, the study and ``rca-gpu assign`` call to turn a FailureSet into an
(n, d) feature matrix with the extractor the pipeline names (rca_gpu.features.extract does the work).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from rca_gpu.features.base import ExtractionContext

if TYPE_CHECKING:  # pragma: no cover
    from rca_gpu.data.sources import FailureSet
    from rca_gpu.engine.device import Device
    from rca_gpu.progress import Reporter
    from rca_gpu.spec import FeatureSpec, RunSpec

log = logging.getLogger("rca_gpu")


def extraction_context(failures: FailureSet, spec: RunSpec, device: Device, work_dir: Path | None,
                       reporter: Reporter | None) -> ExtractionContext:
    """The context an extractor works in: the run's images, torch device, precision, seed, batches, DUT."""
    import torch

    return ExtractionContext(
        failures=failures,
        device=torch.device(device.torch_device),
        precision=spec.precision,
        seed=spec.seed,
        batch_size=spec.batch_size,
        workers=spec.workers,
        model_ref=spec.model or failures.dut,
        work_dir=work_dir,
        reporter=reporter,
        max_image_memory=spec.max_image_memory,
    )


def compute_features(feature_spec: FeatureSpec, failures: FailureSet, spec: RunSpec, device: Device,
                     cache_dir: Path | None, reporter: Reporter | None):
    """The features of ``failures``' usable images by ``feature_spec``'s extractor (rca_gpu.features.extract.
    Features: ``matrix`` (n, d) float32 on the run's device, ``positions``, ``rejected``, ``info``), cached
    as Parquet shards under ``cache_dir`` when given.

    Raises
    ------
    SpecError
        The extractor needs the DNN under test and neither --model nor the manifest names one.
    """
    from rca_gpu.features.extract import extract_features

    context = extraction_context(failures, spec, device, cache_dir, reporter)
    if feature_spec.info.needs_dut and not spec.model and failures.dut:
        log.info("DNN under test: %s (named by the manifest)", failures.dut)
    if feature_spec.info.needs_dut and not context.model_ref:
        from rca_gpu.errors import SpecError

        raise SpecError(
            f"The '{feature_spec.name}' extractor needs the DNN under test: pass --model PATH (TorchScript .pt, "
            "torch.export .pt2, or package.module:factory=weights.pt)."
        )
    return extract_features(feature_spec, context, cache_dir=cache_dir)
