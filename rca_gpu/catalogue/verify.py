"""Verified causes: does the DNN under test fail more often on images like a cause's images than on others?

A cluster of failing images is a real failure mode when images that resemble it fail more often than images in
general; otherwise it may group failures that are merely alike (the same digit, the same camera). ``rca-gpu
verify RUN POOL`` checks each cause on a pool of images the DUT was run on, passing and failing, each with its
``label`` and the DUT's ``prediction`` (as recent slice-discovery work does: PRIME, HiBug, LADDER, Domino check
each slice on held-out data):

1. the pool is assigned to the run's causes by the open-set assignment of :mod:`rca_gpu.catalogue.assign` (the
   run's own extractor, the vote of the nearest reference images, ``unknown`` beyond the calibrated radius);
2. a pool image failed when its ``label`` differs from its ``prediction`` (compared as text, integral numbers
   without a decimal point: ``7`` = ``7.0``);
3. per cause, the failure rate among the pool images assigned to it, p_c = a / n, is compared with the pool's
   failure rate p (every usable pool image with a label and a prediction, ``unknown`` ones included):
   ``lift = p_c / p``.

Interval: the Katz log interval of the risk ratio RR = (a / n) / (c / m) of the cause's images against the rest
of the pool (c failures among m) at 95 % (Katz, Baptista, Azen & Pike, "Obtaining confidence intervals for the
risk ratio in cohort studies", Biometrics 34(3):469-474, 1978): exp(log RR +- 1.96 sqrt(1/a - 1/n + 1/c - 1/m)),
computed by ``scipy.stats.contingency.relative_risk``; when the cause or the rest of the pool has no failure
(a or c is 0) the log is undefined and 0.5 is added to each of the four cells first (Haldane's correction).
With f = n / (n + m) fixed, the lift is RR / (f RR + 1 - f), an increasing function of RR equal to 1 exactly
when RR is, so the RR interval maps to the lift's interval by the same function (and contains 1 exactly when the
RR interval does).

Verdict per cause: ``real failure mode`` (the interval lies above 1), ``not shown`` (it contains 1: as likely
incidental), ``fails less than the pool`` (below 1), ``no pool image`` (nothing was assigned to it).

Output: ``RUN/verify.json`` (with the run's id, the pool, the catalogue's state at the time, per cause the
counts, rates, lift and interval), shown by the report's summary once made again.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu.catalogue.reference import ALPHA, CatalogueError
from rca_gpu.outputs import writes_to
from rca_gpu.runfiles import VERIFY_FILE

#: Two-sided level of the intervals and its normal quantile.
LEVEL = 0.95
_Z = 1.959963984540054
INTERVAL = ("95 % Katz log interval of the risk ratio of the cause's images against the rest of the pool, mapped "
            "to the lift (Katz, Baptista, Azen & Pike, Biometrics 34:469-474, 1978)")
#: Columns the pool must have.
POOL_COLUMNS = ("label", "prediction")


def failure_lift(failed: np.ndarray, group: np.ndarray) -> dict[str, Any]:
    """The lift of a group's failure rate over the pool's, with its 95 % interval (see the module docstring).

    Parameters
    ----------
    failed:
        (N,) bool: each pool image failed.
    group:
        (N,) bool: each pool image belongs to the group (a cause).

    Returns
    -------
    dict
        ``images`` n, ``failures`` a, ``failure_rate`` a / n, ``lift``, ``low``, ``high`` (None where undefined:
        an empty group, a pool without failures; ``low``/``high`` None when the group is the whole pool),
        ``verdict``.
    """
    failed = np.asarray(failed, dtype=bool)
    group = np.asarray(group, dtype=bool)
    n, a = int(group.sum()), int((failed & group).sum())
    m, c = int((~group).sum()), int((failed & ~group).sum())
    total_rate = (a + c) / (n + m) if n + m else None
    out: dict[str, Any] = {"images": n, "failures": a, "failure_rate": a / n if n else None,
                           "lift": None, "low": None, "high": None}
    if n == 0:
        return {**out, "verdict": "no pool image"}
    if not total_rate:
        return {**out, "verdict": "not shown (no failure in the pool)"}
    out["lift"] = (a / n) / total_rate
    if m == 0:
        return {**out, "verdict": "not shown (the whole pool is this cause)"}
    if a > 0 and c > 0:  # scipy's risk ratio and its Katz interval
        from scipy.stats.contingency import relative_risk

        interval = relative_risk(a, n, c, m).confidence_interval(LEVEL)
        rr_low, rr_high = float(interval.low), float(interval.high)
    else:  # a zero cell: Haldane's correction, 0.5 added to each of the four cells
        a_, b_, c_, d_ = a + 0.5, n - a + 0.5, c + 0.5, m - c + 0.5
        rr = (a_ / (a_ + b_)) / (c_ / (c_ + d_))
        se = math.sqrt(1 / a_ - 1 / (a_ + b_) + 1 / c_ - 1 / (c_ + d_))
        rr_low, rr_high = rr * math.exp(-_Z * se), rr * math.exp(_Z * se)
    f = n / (n + m)

    def to_lift(r: float) -> float:
        return r / (f * r + 1 - f)

    out["low"], out["high"] = to_lift(rr_low), to_lift(rr_high)
    if out["low"] > 1:
        verdict = "real failure mode"
    elif out["high"] < 1:
        verdict = "fails less than the pool"
    else:
        verdict = "not shown"
    return {**out, "verdict": verdict}


def failed_rows(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """((N,) bool failed, (N,) bool known) for the rows of a pool table: an image failed when ``label`` and
    ``prediction`` differ as text (integral numbers without a decimal point, so ``7`` equals ``7.0``);
    ``known`` is False where either is missing."""
    label, prediction = _text(table["label"]), _text(table["prediction"])
    known = np.array([x is not None and y is not None for x, y in zip(label, prediction, strict=True)], dtype=bool)
    failed = known & np.array([x != y for x, y in zip(label, prediction, strict=True)], dtype=bool)
    return failed, known


@writes_to("run_dir", "rca-gpu verify", create=False)
def verify_run(run_dir, pool, *, device: str = "auto", batch_size: int | None = None, workers: int | None = None,
               image_root: str | None = None, model: str | None = None, alpha: float = ALPHA,
               reporter=None) -> dict[str, Any]:
    """``rca-gpu verify``: assign the pool to the run's causes and measure each cause's lift; write
    ``RUN/verify.json`` and return its content. Holds the run folder's lock while it works (as ``compare``
    does), so two writers of one run folder never mix.

    Parameters
    ----------
    run_dir:
        A finished run folder (with its reference set).
    pool:
        A manifest (.csv/.parquet) of images the DUT was run on, with ``label`` and ``prediction`` columns.
    device, batch_size, workers, image_root, model, alpha, reporter:
        As for ``rca-gpu assign``.

    Raises
    ------
    CatalogueError
        The pool has no ``label`` or ``prediction`` column, no image of it can be read, or no row has both; or
        (as for assign) the run cannot encode new images.
    RunFolderError, SourceError, SpecError
        Bad run folder, unusable pool, or options.
    """
    from rca_gpu import outputs
    from rca_gpu.catalogue.assign import assign_failures, check_alpha, check_encodable, unreadable_note
    from rca_gpu.catalogue.causes import load_catalogue
    from rca_gpu.catalogue.folders import check_run_dir
    from rca_gpu.catalogue.reference import read_reference
    from rca_gpu.data.sources import load_source

    started = time.perf_counter()
    check_alpha(alpha)
    check_run_dir(run_dir)
    catalogue = load_catalogue(run_dir)
    check_encodable(catalogue.run, command="verify")
    reference = read_reference(catalogue.run)
    failures = load_source(pool, image_root=image_root)
    missing = [c for c in POOL_COLUMNS if c not in failures.table.columns]
    if missing or failures.kind != "manifest":
        raise CatalogueError(
            f"The POOL {str(pool)!r} must be a manifest (.csv or .parquet) with columns path, label and prediction: "
            f"the class each image shows and the class the DNN under test gave it"
            + (f"; it has no {' or '.join(missing)} column" if missing else "; a folder has no such columns")
            + ". Run the DNN on the pool's images and write its predictions beside their labels."
        )
    table = assign_failures(catalogue, reference, failures, device=device, batch_size=batch_size, workers=workers,
                            model=model, reporter=reporter, alpha=alpha)
    note = unreadable_note(table, pool, what="pool image")
    if note:
        raise CatalogueError(note)
    usable = table["status"].to_numpy() != "rejected"
    failed, known = failed_rows(failures.table)
    keep = usable & known
    if not keep.any():
        raise CatalogueError(f"No readable image of the POOL {str(pool)!r} has both a label and a prediction. "
                             "Fill in both columns.")
    failed, cause = failed[keep], table["cause"].to_numpy()[keep]
    status = table["status"].to_numpy()[keep]
    per_cause = {}
    for c in sorted(catalogue.causes):
        group = (cause == c) & (status != "unknown")
        per_cause[str(c)] = {"name": catalogue.name(c), "status": "dropped" if catalogue.causes[c].dropped else "cause",
                             **_rounded(failure_lift(failed, group))}
    summary = {
        "run_folder": str(catalogue.run.path),
        "pool": failures.describe(),
        "rows": len(table),
        "images": int(keep.sum()),
        "failures": int(failed.sum()),
        "failure_rate": round(float(failed.mean()), 6),
        "counts": {s: int((table["status"] == s).sum()) for s in ("assigned", "unknown", "not_a_cause", "rejected")},
        "without_label_or_prediction": int((usable & ~known).sum()),
        "per_cause": per_cause,
        "interval": INTERVAL,
        "level": LEVEL,
        "alpha": alpha,
        "catalogue": catalogue.state(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    outputs.write_json(catalogue.run.file(VERIFY_FILE), summary, run_id=catalogue.run_id)
    return summary


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}


def _text(values: pd.Series) -> np.ndarray:
    """Values as comparable text: integral numbers without a decimal point, None where missing."""
    out: list[str | None] = []
    for value in values.to_numpy(dtype=object):
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            out.append(None)
        elif isinstance(value, (bool, np.bool_)):
            out.append(str(bool(value)))
        elif isinstance(value, (int, np.integer)):
            out.append(str(int(value)))
        elif isinstance(value, (float, np.floating)):
            out.append(str(int(value)) if float(value).is_integer() else repr(float(value)))
        else:
            text = str(value).strip()
            try:
                number = float(text)
            except ValueError:
                out.append(text)
                continue
            out.append(str(int(number)) if number.is_integer() else repr(number))
    return np.array(out, dtype=object)
