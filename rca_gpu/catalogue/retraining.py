"""Pick a retraining set from an unlabelled pool: images that the assignment places in known failure causes,
spread over the causes, most confident first.

The pool is assigned to the run's (edited) catalogue (:mod:`rca_gpu.catalogue.assign`); only images with
status ``assigned`` are candidates (``unknown`` and ``not_a_cause`` never are). The budget is spread over
the active causes:

``proportional`` (default)
    every cause first gets a floor of ``floor`` images (default: half an equal share,
    ``budget // (2 x causes)``, at least 1), the rest in proportion to the cause's size in the run
    (largest remainder), so rare causes are represented and common ones get more;
``equal``
    the same number for every cause.

A cause with fewer candidates than its quota gives the remainder back, which is spread again the same way
over the causes that have candidates left. Within a cause, images are taken by decreasing confidence (then
increasing distance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu.catalogue.reference import CatalogueError
from rca_gpu.errors import TooFewImagesError
from rca_gpu.outputs import writes_to
from rca_gpu.runfiles import SELECT_INFO_FILE, SELECTION_FILE, SELECTION_PARQUET

SPREADS = ("proportional", "equal")


def quotas(budget: int, sizes: dict[int, int], available: dict[int, int], *, spread: str = "proportional",
           floor: int | None = None) -> dict[int, int]:
    """Images to take per cause.

    Parameters
    ----------
    budget: total images wanted (>= 1).
    sizes: cause -> its size in the run (weights for ``proportional``).
    available: cause -> candidates in the pool.
    spread: "proportional" or "equal".
    floor: minimum per cause for ``proportional`` (default budget // (2 x causes), at least 1).

    Returns
    -------
    cause -> count, each <= available, summing to min(budget, total available).
    """
    if spread not in SPREADS:
        raise CatalogueError(f"The --spread option must be one of {', '.join(SPREADS)}. Got {spread!r} instead.")
    causes = [c for c in sorted(sizes) if available.get(c, 0) > 0]
    take = {c: 0 for c in sizes}
    left = min(budget, sum(available.get(c, 0) for c in causes))
    if not causes or left <= 0:
        return take
    if spread == "proportional":
        least = _proportional_floor(budget, floor, len(sizes))
        for c in sorted(causes, key=lambda c: -sizes[c]):
            give = min(least, available[c], left)
            take[c] += give
            left -= give
    while left > 0:
        open_causes = [c for c in causes if take[c] < available[c]]
        if not open_causes:
            break
        weights = {c: (sizes[c] if spread == "proportional" else 1) or 1 for c in open_causes}
        share = _largest_remainder(left, weights)
        moved = 0
        for c in open_causes:
            give = min(share[c], available[c] - take[c])
            take[c] += give
            moved += give
        left -= moved
        if moved == 0:  # every open cause got 0 by rounding: give one each, biggest first
            for c in sorted(open_causes, key=lambda c: -weights[c])[:left]:
                take[c] += 1
                left -= 1
    return take


def floor_used(budget: int, floor: int | None, causes: int, spread: str = "proportional") -> int | None:
    """The floor per cause that ``quotas`` applies: ``floor`` (negative read as 0) or, when None, budget // (2 x
    causes), at least 1; None for the ``equal`` spread, which has no floor."""
    if spread != "proportional":
        return None
    return _proportional_floor(budget, floor, causes)


def _proportional_floor(budget: int, floor: int | None, causes: int) -> int:
    """``floor`` (negative read as 0) or, when None, budget // (2 x causes), at least 1."""
    return max(1, budget // (2 * max(causes, 1))) if floor is None else max(0, floor)


def floor_note(budget: int, floor: int | None, causes: int, spread: str = "proportional") -> str | None:
    """One line when not every cause can get its share: the floor applied (``--floor``, or the default of
    :func:`floor_used` when None) x causes exceeds ``--budget``, or, for the ``equal`` spread, ``--budget`` is
    below the number of causes; it says what :func:`quotas` does then and the fix. None otherwise."""
    if causes == 0 or spread not in SPREADS:
        return None
    if spread == "equal":
        if budget >= causes:
            return None
        left = causes - budget
        return (f"--budget {budget} is below the {causes} causes: with --spread equal {left} "
                f"{'cause gets' if left == 1 else 'causes get'} no image; raise --budget to at least {causes} to "
                "give every cause an image.")
    applied = _proportional_floor(budget, floor, causes)
    if applied * causes <= budget:
        return None
    given = f"--floor {applied}" if floor is not None else f"the default floor {applied}"
    fix = (f"lower --floor to at most {budget // causes} (budget / causes) to give every cause the same floor"
           if budget >= causes else f"raise --budget to at least {causes} to give every cause an image")
    return (f"{given} x {causes} causes = {applied * causes} exceeds --budget {budget}: the floor was given "
            f"to the largest causes first until the budget ran out, so the smallest causes can get no image "
            f"(select.json's per_cause lists what each got); {fix}.")


def _largest_remainder(n: int, weights: Mapping[int, float]) -> dict[int, int]:
    total = float(sum(weights.values()))
    exact = {c: n * w / total for c, w in weights.items()}
    out = {c: math.floor(v) for c, v in exact.items()}
    for c in sorted(weights, key=lambda c: -(exact[c] - out[c]))[: n - sum(out.values())]:
        out[c] += 1
    return out


def pick(assignments: pd.DataFrame, sizes: dict[int, int], budget: int, *, spread: str = "proportional",
         floor: int | None = None) -> pd.DataFrame:
    """The selected rows of an assignments table (see :func:`rca_gpu.catalogue.assign.assignment_table`),
    cause by cause, with a ``rank`` within the cause (1 = most confident)."""
    candidates = assignments[(assignments["status"] == "assigned") & assignments["cause"].isin(list(sizes))]
    available = candidates["cause"].value_counts().to_dict()
    take = quotas(budget, sizes, {int(k): int(v) for k, v in available.items()}, spread=spread, floor=floor)
    parts = []
    for cause, count in take.items():
        if count <= 0:
            continue
        group = candidates[candidates["cause"] == cause].sort_values(["confidence", "distance"],
                                                                      ascending=[False, True], kind="stable")
        parts.append(group.head(count).assign(rank=np.arange(1, count + 1)))
    if not parts:
        return candidates.head(0).assign(rank=pd.Series(dtype=np.int64))
    return pd.concat(parts, ignore_index=True)


@writes_to("out", "rca-gpu select")
def select_from_pool(run_dir, pool, out, *, budget: int, spread: str = "proportional", floor: int | None = None,
                     device: str = "auto", batch_size: int | None = None, workers: int | None = None,
                     image_root: str | None = None, model: str | None = None, alpha: float | None = None,
                     reporter=None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``rca-gpu select``: assign the pool, pick ``budget`` images, write the manifest.

    Writes ``out/selection.csv`` (a manifest: path, id, cause, cause_name, confidence, distance, rank; paths
    absolute, readable by ``rca-gpu run --image-root``), ``out/selection.parquet`` (the same plus every
    assignment column), ``out/assignments.parquet`` (the whole pool) and ``out/select.json`` (settings, counts,
    and under ``source`` the pool as run.json describes a source, with what a folder scan left out).
    """
    from rca_gpu import outputs
    from rca_gpu.catalogue.assign import (
        ASSIGNMENTS_FILE,
        CATALOGUE_RUN_KEY,
        assign_source,
        check_alpha,
        unreadable_note,
    )
    from rca_gpu.catalogue.reference import ALPHA

    alpha = ALPHA if alpha is None else alpha
    check_alpha(alpha)
    if budget < 1:
        raise CatalogueError(f"The --budget option must be an int >= 1. Got {budget!r} instead.")
    if spread not in SPREADS:
        raise CatalogueError(f"The --spread option must be one of {', '.join(SPREADS)}. Got {spread!r} instead.")
    out = Path(out)
    catalogue, _, table, failures = assign_source(run_dir, pool, out, device=device, batch_size=batch_size,
                                                  workers=workers, image_root=image_root, model=model, alpha=alpha,
                                                  reporter=reporter, command="select",
                                                  writes=(ASSIGNMENTS_FILE, SELECTION_PARQUET, SELECTION_FILE,
                                                          SELECT_INFO_FILE))
    sizes = {c: n for c, n in catalogue.sizes().items() if c in catalogue.active}
    chosen = pick(table, sizes, budget, spread=spread, floor=floor)
    metadata = {CATALOGUE_RUN_KEY: catalogue.run_id.encode()}
    manifest = chosen[["path", "id", "cause", "cause_name", "confidence", "distance", "rank"]]
    all_sizes = catalogue.sizes()
    per_cause = {str(c): {"name": catalogue.name(c), "status": "cause" if c in sizes else "dropped",
                          "size_in_run": int(all_sizes.get(c, 0)),
                          "candidates": int(((table["status"] == "assigned") & (table["cause"] == c)).sum()),
                          "selected": int((chosen["cause"] == c).sum())}
                 for c in sorted(catalogue.causes)}  # dropped causes too: never candidates, listed as such
    unreadable = unreadable_note(table, pool, what="pool image")
    info = {
        "catalogue_run_id": catalogue.run_id, "run_folder": str(catalogue.run.path), "pool": str(pool),
        "pool_rows": len(table), "source": failures.describe(), "budget": budget,
        "spread": spread, "floor": floor_used(budget, floor, len(sizes), spread), "alpha": alpha,
        "selected": len(chosen),
        "candidates": int((table["status"] == "assigned").sum()), "per_cause": per_cause,
        "notes": [note for note in (unreadable, floor_note(budget, floor, len(sizes), spread)) if note],
    }
    with outputs.together():  # the four files land together or not at all
        outputs.write_parquet(out / ASSIGNMENTS_FILE, table, metadata=metadata)
        outputs.write_parquet(out / SELECTION_PARQUET, chosen, metadata=metadata)
        outputs.write_text(out / SELECTION_FILE, manifest.to_csv(index=False))
        outputs.write_json(out / SELECT_INFO_FILE, info)
    if unreadable:  # every row rejected: written with its reason, and an error as a run with no image gives
        raise TooFewImagesError(unreadable)
    return chosen, info
