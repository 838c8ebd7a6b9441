"""Draw candidates per cause until the DUT has failed on the cause's target number of them.

Why per cause: the proportions describe failures, and the DUT fails on some causes far more often than on
others. Sampling each cause until its count is met makes rare causes exactly as rare as asked, whatever the
DUT's failure rate under them.

A candidate can carry a *twin*: the same input with the cause's parameters at their nominal values. A
candidate counts only if the DUT classifies its twin correctly, so each failure is attributable to its cause
and not to something else in the scene.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rca_gpu.datasets.runtime import predict
from rca_gpu.progress import no_progress

PROBE, MIN_BATCH, MAX_BATCH = 96, 32, 1024


@dataclass
class Candidates:
    """A batch of generated inputs: uint8 images, true labels, one dict of drawn parameters per image."""

    images: np.ndarray
    labels: np.ndarray
    params: list[dict[str, Any]]
    twins: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


#: propose(cause, rng, k) -> up to k candidates, or None when the cause's pool is exhausted.
Proposer = Callable[[str, np.random.Generator, int], "Candidates | None"]


@dataclass
class Kept:
    """Inputs kept for one cause and the DUT's verdict on each."""

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    predictions: list[np.ndarray] = field(default_factory=list)
    confidences: list[np.ndarray] = field(default_factory=list)
    params: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0

    def add(self, batch: Candidates, pred: np.ndarray, conf: np.ndarray, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        self.images.append(batch.images[rows])
        self.labels.append(batch.labels[rows])
        self.predictions.append(pred[rows])
        self.confidences.append(conf[rows])
        self.params.extend(batch.params[i] for i in rows)
        self.count += len(rows)


@dataclass
class CauseSample:
    """What sampling one cause produced, with the counts that dataset.json reports."""

    cause: str
    target: int
    failures: Kept
    passing: Kept
    judged: int = 0  # candidates whose twin (if any) the DUT got right
    failed: int = 0  # of those, how many the DUT misclassified
    discarded: int = 0  # candidates whose twin the DUT already got wrong

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.judged if self.judged else None


def sample_cause(
    cause: str,
    target: int,
    propose: Proposer,
    model,
    rng: np.random.Generator,
    *,
    keep_passing: bool,
    max_candidates: int,
    advance: Callable[[int], None] = no_progress,
) -> CauseSample:
    """Propose batches for ``cause`` until ``target`` failures are kept or the budget or pool runs out.

    Batch sizes follow the observed failure rate, and only deterministic quantities feed them, so the same
    rng gives the same batches and the same kept inputs.
    """
    sample = CauseSample(cause, target, Kept(), Kept())
    proposed = 0
    while sample.failures.count < target and proposed < max_candidates:
        remaining = target - sample.failures.count
        if proposed == 0:
            k = PROBE  # a small first batch estimates the failure rate before larger batches rely on it
        else:
            rate = max(sample.failure_rate or 0.0, 0.005)
            k = int(min(MAX_BATCH, max(MIN_BATCH, np.ceil(1.1 * remaining / rate))))
        k = min(k, max_candidates - proposed)
        batch = propose(cause, rng, k)
        if batch is None or len(batch) == 0:
            break
        proposed += len(batch)
        pred, conf = predict(model, batch.images)
        valid = np.ones(len(batch), dtype=bool)
        if batch.twins is not None:
            valid = predict(model, batch.twins)[0] == batch.labels
        wrong = valid & (pred != batch.labels)
        right = valid & (pred == batch.labels)
        sample.judged += int(valid.sum())
        sample.failed += int(wrong.sum())
        sample.discarded += int((~valid).sum())
        fail_rows = np.flatnonzero(wrong)[:remaining]
        sample.failures.add(batch, pred, conf, fail_rows)
        advance(len(fail_rows))
        if keep_passing:
            pass_rows = np.flatnonzero(right)[: max(target - sample.passing.count, 0)]
            sample.passing.add(batch, pred, conf, pass_rows)
    return sample
