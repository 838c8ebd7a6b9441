"""Generic benchmark build: resolve counts, sample each cause, assemble and write the folder.

A benchmark module provides ``INFO`` (plain data), ``COLUMNS`` (its parameter columns and their dtypes)
and ``prepare(seed, reporter) -> Prepared`` (the trained DUT and a proposer of candidates); this module does
everything that is the same for all of them.
"""

from __future__ import annotations

import importlib
import json
import logging
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu import outputs
from rca_gpu.datasets import writing
from rca_gpu.datasets.info import DatasetInfo
from rca_gpu.datasets.proportions import largest_remainder, resolve_proportions
from rca_gpu.datasets.runtime import deterministic_torch, progress_task
from rca_gpu.datasets.sampling import CauseSample, Kept, Proposer, sample_cause
from rca_gpu.errors import SpecError
from rca_gpu.runfiles import DATASET_INFO, DATASET_MANIFEST, DATASET_PASSING

log = logging.getLogger("rca_gpu")

#: Leading manifest columns, before the benchmark's own parameter columns.
BASE_COLUMNS = (
    "path",
    "id",
    "label",
    "label_name",
    "prediction",
    "prediction_name",
    "root_cause",
    "confidence",
)


@dataclass
class Prepared:
    """What a benchmark hands the builder: its trained DUT and how to propose candidates per cause."""

    model: Any
    dut_meta: dict[str, Any]
    propose: Proposer
    extra: dict[str, Any] = field(default_factory=dict)
    #: Upper bound on candidates per cause, as a function of the cause's target count.
    candidate_budget: Callable[[int], int] = lambda target: 20_000 + 100 * target


def build(
    info: DatasetInfo,
    out: str | Path,
    *,
    n: int | None,
    seed: int,
    proportions: Mapping[str, float] | None,
    include_passing: bool,
    reporter=None,
) -> Path:
    """Generate ``info``'s benchmark into ``out``; returns the path of manifest.parquet."""
    n = _check_int("n", info.default_n if n is None else n, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    shares = resolve_proportions(info.cause_names, info.default_proportions, proportions)
    out = writing.prepare_out(out)
    module = importlib.import_module(info.module)
    with deterministic_torch(seed):
        prepared = module.prepare(seed=seed, reporter=reporter)
        samples = _sample_all(info, prepared, n, seed, shares, include_passing, reporter)
        writing.write_dut(out, prepared.model, classes=list(info.classes), input_shape=info.image_shape)
    order = np.random.default_rng([seed, zlib.crc32(b"order")])
    failures, fail_images = _assemble(info, module.COLUMNS, [s.failures for s in samples], order, "images", 0)
    summary = _summary(info, n, seed, shares, samples, prepared, include_passing)
    metadata = {
        writing.DUT_KEY: f"{info.factory}=dut_state.pt".encode(),  # a known architecture id, never code
        writing.DATASET_KEY: json.dumps(
            {"name": info.name, "seed": seed, "n": n, "proportions": shares, "causes": summary["causes"]},
            sort_keys=True,
        ).encode(),
    }
    total = len(failures)
    if include_passing:
        passing, pass_images = _assemble(
            info, module.COLUMNS, [s.passing for s in samples], order, "passing", total
        )
        total += len(passing)
    with progress_task(reporter, "writing PNGs", total) as advance:
        writing.write_images(out, failures, fail_images, advance)
        outputs.write_parquet(out / DATASET_MANIFEST, failures, metadata=metadata)
        if include_passing:
            writing.write_images(out, passing, pass_images, advance)
            outputs.write_parquet(out / DATASET_PASSING, passing, metadata=metadata)
    outputs.write_json(out / DATASET_INFO, summary)
    return out / DATASET_MANIFEST


def _sample_all(info, prepared, n, seed, shares, include_passing, reporter) -> list[CauseSample]:
    """Sample causes in INFO order ("none" first); a cause that falls short hands its rest to later ones.

    "none" goes first because its pool is finite for real data (a test split has only so many clean
    failures); its shortfall is then spread over the injected causes in proportion.
    """
    targets = largest_remainder(n, shares)
    causes = list(info.cause_names)
    samples: list[CauseSample] = []
    with progress_task(reporter, f"sampling {info.name} failures", n) as advance:
        for position, cause in enumerate(causes):
            rng = np.random.default_rng([seed, zlib.crc32(cause.encode())])
            target = targets[cause]
            sample = (
                sample_cause(
                    cause,
                    target,
                    prepared.propose,
                    prepared.model,
                    rng,
                    keep_passing=include_passing,
                    max_candidates=prepared.candidate_budget(target),
                    advance=advance,
                )
                if target > 0
                else CauseSample(cause, 0, Kept(), Kept())
            )
            samples.append(sample)
            short = target - sample.failures.count
            if short <= 0:
                continue
            later = {c: shares[c] for c in causes[position + 1 :] if shares[c] > 0}
            log.warning(
                "%s: only %d of %d failures for cause %r (DUT failure rate %s); %s.",
                info.name,
                sample.failures.count,
                target,
                cause,
                "n/a" if sample.failure_rate is None else f"{sample.failure_rate:.3f}",
                "the rest goes to the later causes"
                if later
                else "the benchmark has fewer failures than asked",
            )
            for name, extra in largest_remainder(short, later).items():
                targets[name] += extra
    return samples


def _assemble(
    info: DatasetInfo,
    columns: Mapping[str, str],
    kept: list[Kept],
    order: np.random.Generator,
    folder: str,
    first_id: int,
) -> tuple[pd.DataFrame, np.ndarray]:
    """One shuffled table (ids in row order, paths from ids) and the matching image array.

    Shuffling keeps causes from forming contiguous id ranges, which a clusterer or a viewer could exploit.
    """
    frames, images = [], []
    for cause, part in zip(info.cause_names, kept, strict=True):
        if part.count == 0:
            continue
        params = pd.DataFrame(part.params, columns=list(columns))
        labels = np.concatenate(part.labels).astype(np.int64)
        preds = np.concatenate(part.predictions).astype(np.int64)
        head = pd.DataFrame(
            {
                "label": labels,
                "label_name": [info.classes[i] for i in labels],
                "prediction": preds,
                "prediction_name": [info.classes[i] for i in preds],
                "root_cause": cause,
                "confidence": np.concatenate(part.confidences).astype(np.float64),
            }
        )
        frames.append(pd.concat([head, params], axis=1))
        images.append(np.concatenate(part.images))
    if not frames:
        return pd.DataFrame(columns=[*BASE_COLUMNS, *columns]), np.zeros((0,), dtype=np.uint8)
    frame = pd.concat(frames, ignore_index=True)
    pixels = np.concatenate(images)
    perm = order.permutation(len(frame))
    frame = frame.iloc[perm].reset_index(drop=True)
    pixels = pixels[perm]
    ids = np.arange(first_id, first_id + len(frame), dtype=np.int64)
    frame.insert(0, "id", ids)
    frame.insert(0, "path", [f"{folder}/{i:06d}.png" for i in ids])
    return _typed(frame, columns), pixels


def _typed(frame: pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    """Give every parameter column its declared dtype; NaN/<NA> marks a parameter that does not apply."""
    for name, dtype in columns.items():
        if dtype == "bool":
            frame[name] = frame[name].fillna(False).astype(bool)
        elif dtype == "str":
            continue  # pandas already infers its string dtype, the same as for label_name
        else:
            frame[name] = frame[name].astype(dtype)
    return frame


def _summary(info, n, seed, shares, samples, prepared, include_passing) -> dict[str, Any]:
    import torch
    import torchvision

    failures = {s.cause: s.failures.count for s in samples}
    total = sum(failures.values())
    meta = {k: v for k, v in prepared.dut_meta.items() if k != "train_seconds"}  # keeps the file reproducible
    return {
        "name": info.name,
        "summary": info.summary,
        "seed": seed,
        "n": n,
        "n_failures": total,
        "image_shape": list(info.image_shape),
        "classes": list(info.classes),
        "proportions": {c: round(p, 6) for c, p in shares.items()},
        "failure_counts": failures,
        "observed_proportions": {c: round(k / total, 6) if total else 0.0 for c, k in failures.items()},
        "causes": {
            s.cause: {
                "summary": info.cause(s.cause).summary,
                "ranges": {k: list(v) for k, v in info.cause(s.cause).ranges.items()},
                "target": s.target,
                "failures": s.failures.count,
                "candidates": s.judged,
                "dut_failure_rate": None if s.failure_rate is None else round(s.failure_rate, 6),
                "discarded_nominal_twin_wrong": s.discarded,
                "passing_kept": s.passing.count if include_passing else None,
            }
            for s in samples
        },
        "dut": {
            "architecture": info.factory,  # rca_gpu.data.sources.KNOWN_ARCHITECTURES
            "state_dict": "dut_state.pt",
            "torchscript": "dut.pt",
            "parameters": int(sum(p.numel() for p in prepared.model.parameters())),
            **meta,
        },
        "passing_counts": {s.cause: s.passing.count for s in samples} if include_passing else None,
        **prepared.extra,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
    }


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SpecError(
            f"The '{name}' parameter of make_dataset must be an int >= {minimum}. Got {value!r} instead."
        )
    return int(value)
