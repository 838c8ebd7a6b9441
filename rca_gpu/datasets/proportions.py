"""Cause proportions -> exact failure counts.

Proportions describe the FAILURES, not the inputs: a cause the DUT rarely fails on still gets its share,
because the sampler draws candidates per cause until that cause's count is met.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from rca_gpu.errors import SpecError


def resolve_proportions(
    causes: Sequence[str], defaults: Mapping[str, float], given: Mapping[str, float] | None
) -> dict[str, float]:
    """Validate user proportions and normalise them to sum to 1, in the dataset's cause order.

    A given dict replaces the defaults entirely (unlisted causes get 0), so that a study of two causes is
    written as ``{"rotation": 1, "blur": 1}``.
    """
    raw = dict(defaults if given is None else given)
    unknown = sorted(set(raw) - set(causes))
    if unknown:
        raise SpecError(
            f"Unknown cause(s) {', '.join(map(repr, unknown))} in proportions. "
            f"Choose from: {', '.join(causes)}."
        )
    for name, value in raw.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise SpecError(
                f"The proportion of cause {name!r} must be a finite number >= 0. Got {value!r} instead."
            )
    total = float(sum(raw.values()))
    if total <= 0:
        raise SpecError("The proportions must contain at least one cause with a share > 0.")
    return {name: float(raw.get(name, 0.0)) / total for name in causes}


def largest_remainder(n: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Split ``n`` into integer counts proportional to ``shares`` that sum to exactly ``n``.

    Hamilton's method: floors first, then the leftover units go to the largest fractional parts (ties in
    cause order), so counts are deterministic and never off by more than one from ``n * share``.
    """
    total = sum(shares.values())
    if n <= 0 or total <= 0:
        return {name: 0 for name in shares}
    exact = {name: n * share / total for name, share in shares.items()}
    counts = {name: math.floor(value) for name, value in exact.items()}
    order = sorted(shares, key=lambda name: (-(exact[name] - counts[name]), list(shares).index(name)))
    for name in order[: n - sum(counts.values())]:
        counts[name] += 1
    return counts
