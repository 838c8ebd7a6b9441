"""How the images of a cluster differ from the rest, column by column: the one home of the per-column
distributions that the report ranks (a cluster's dominant values) and compares (merge suggestions).

Each usable column becomes a :class:`Profile`: one code per image, for a level of a category (text, booleans,
integers with at most :data:`~rca_gpu.report.explain.INTEGER_AS_CATEGORY` values) or a decile of a quantity
(bin edges from every usable image), with a code of its own for a missing value. Left out: rca-gpu's own columns
and the ground truth (:data:`~rca_gpu.report.explain.EXCLUDED_COLUMNS`), identifiers read as quantities
(:func:`~rca_gpu.report.explain.is_identifier` with more than 12 integers), constant columns (one level, missing
values included), and text with a value per image or more than :data:`~rca_gpu.report.explain.MAX_LEVELS`
levels (names, paths).

How much a cluster differs from the rest in a column is the total variation distance between the two
distributions of codes, TVD = 1/2 sum |p - q|, in [0, 1]: 0 when the cluster looks like the other images, 1 when
no code is shared (e.g. ``rotation_deg`` present in every image of the cluster and in none of the others).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rca_gpu.report import explain as _explain

#: Columns of the DNN's outcome on each image (what it should have said, what it said, how sure it was): shown
#: in captions, but not evidence that two clusters share a cause (one cause makes the DNN fail on many classes,
#: and the fragments of a cause often split by class).
OUTCOME_COLUMNS = ("label", "label_name", "prediction", "prediction_name", "confidence")
#: Quantities are cut into this many bins of equal counts (deciles) for their distributions.
NUMBER_BINS = 10
#: Columns shown per cluster in the dominant-values table, and the smallest difference (TVD) shown.
DOMINANT_COLUMNS = 8
DOMINANT_MIN_TVD = 0.1
MISSING = "(missing)"


@dataclass(frozen=True)
class Profile:
    """One column as codes: ``codes`` (n,) int64 in [0, len(levels)), ``levels`` the text of each code,
    ``kind`` "text" or "number", ``values`` the column itself (for summaries)."""

    column: str
    kind: str
    codes: np.ndarray
    levels: tuple[str, ...]
    values: pd.Series

    @property
    def image_property(self) -> bool:
        return self.column.startswith(_explain.PROPERTY_PREFIX)


def is_categorical(values: pd.Series) -> bool:
    """Text, booleans, and integers with at most INTEGER_AS_CATEGORY distinct values (``label = 7``)."""
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return True
    finite = pd.to_numeric(values, errors="coerce").dropna()
    integral = bool(len(finite)) and bool(np.all(finite == np.round(finite)))
    return integral and finite.nunique() <= _explain.INTEGER_AS_CATEGORY


def profiles(usable: pd.DataFrame, columns: list[str] | None = None) -> list[Profile]:
    """The usable columns of ``usable`` (rows = usable images) as profiles, in column order.

    Parameters
    ----------
    usable:
        clusters.parquet without the rejected rows.
    columns:
        Columns to consider (default: every column); the rules of the module docstring still apply.
    """
    out = []
    seen: set[bytes] = set()
    n = len(usable)
    for column in usable.columns if columns is None else columns:
        if column in _explain.EXCLUDED_COLUMNS or column not in usable.columns:
            continue
        profile = _profile(column, usable[column], n)
        if profile is None or len(profile.levels) < 2:
            continue
        # a column that groups the images exactly as an earlier one (label_name and label) says nothing more
        partition = pd.factorize(profile.codes)[0].astype(np.int64).tobytes()
        if partition in seen:
            continue
        seen.add(partition)
        out.append(profile)
    return out


def _profile(column: str, values: pd.Series, n: int) -> Profile | None:
    missing = values.isna().to_numpy()
    if is_categorical(values):
        text = pd.Series(_explain._as_text(values), index=values.index, dtype=object)
        text = text.where(~missing, MISSING)
        codes, levels = pd.factorize(text, sort=True)
        if len(levels) > _explain.MAX_LEVELS or (len(levels) >= 0.5 * n and len(levels) > 2):
            return None  # a name per image, or too many levels to read
        return Profile(column, "text", codes.astype(np.int64), tuple(str(v) for v in levels), values)
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    finite = np.isfinite(numbers)
    distinct = np.unique(numbers[finite])
    integral = bool(len(distinct)) and bool(np.all(distinct == np.round(distinct)))
    if integral and len(distinct) > _explain.INTEGER_AS_CATEGORY and _explain.is_identifier(column):
        return None  # a range of identifiers says nothing about the images
    if len(distinct) <= NUMBER_BINS:  # a few values: one level each
        edges = distinct[1:]
        levels = [fmt(v) for v in distinct] + [MISSING]
    else:  # deciles of every usable image's value
        edges = np.unique(np.quantile(numbers[finite], np.linspace(0, 1, NUMBER_BINS + 1)[1:-1]))
        bounds = [-math.inf, *edges.tolist(), math.inf]
        levels = [_bin_text(lo, hi) for lo, hi in itertools.pairwise(bounds)] + [MISSING]
    codes = np.where(finite, np.searchsorted(edges, numbers, side="right"), len(edges) + 1).astype(np.int64)
    used = np.unique(codes)
    remap = np.full(len(levels), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return Profile(column, "number", remap[codes], tuple(levels[k] for k in used), values)


def _bin_text(low: float, high: float) -> str:
    if math.isinf(low):
        return f"< {fmt(high)}"
    if math.isinf(high):
        return f">= {fmt(low)}"
    return f"{fmt(low)} to {fmt(high)}"


def distributions(profile: Profile, groups: np.ndarray, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Share of each level inside each group and among the other images: two (len(ids), levels) float arrays.

    ``groups``: (n,) int64 group of every image (cluster or cause; -1 for noise); ``ids``: the groups wanted.
    """
    k = len(profile.levels)
    total = np.bincount(profile.codes, minlength=k).astype(float)
    inside = np.zeros((len(ids), k))
    sizes = np.zeros(len(ids))
    for row, group in enumerate(ids):
        members = groups == group
        inside[row] = np.bincount(profile.codes[members], minlength=k)
        sizes[row] = members.sum()
    rest = total[None, :] - inside
    rest_sizes = len(groups) - sizes
    return (inside / np.maximum(sizes, 1)[:, None], rest / np.maximum(rest_sizes, 1)[:, None])


def tvd(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total variation distance between distributions along the last axis."""
    return 0.5 * np.abs(p - q).sum(axis=-1)


def dominant_values(usable: pd.DataFrame, groups: np.ndarray, ids: list[int], columns: list[str],
                    *, limit: int = DOMINANT_COLUMNS) -> dict[int, list[dict[str, str]]]:
    """Per group: the columns in which it differs most from the other usable images, most first.

    Each row: ``column`` (display name), ``difference`` (TVD, 2 decimals), ``inside`` and ``others`` (the most
    common values, or median and quartiles of a quantity). Columns with a difference below
    :data:`DOMINANT_MIN_TVD` are left out, at most ``limit`` per group.
    """
    found: dict[int, list[tuple[float, dict[str, str]]]] = {group: [] for group in ids}
    for profile in profiles(usable, columns):
        inside, rest = distributions(profile, groups, ids)
        for row, group in enumerate(ids):
            difference = float(tvd(inside[row], rest[row]))
            if difference < DOMINANT_MIN_TVD:
                continue
            members = groups == group
            found[group].append((difference, {
                "column": _explain.display_name(profile.column),
                "difference": f"{difference:.2f}",
                "inside": summary(profile, members),
                "others": summary(profile, ~members),
            }))
    return {group: [row for _, row in sorted(rows, key=lambda item: -item[0])[:limit]]
            for group, rows in found.items()}


def summary(profile: Profile, rows: np.ndarray) -> str:
    """The values of ``rows`` in words: the 3 most common levels with their shares for a category, the median
    and quartiles for a quantity (with the share missing when some are)."""
    if profile.kind == "text":
        counts = pd.Series(profile.codes[rows]).value_counts()
        if counts.empty:
            return "-"
        total = int(rows.sum())
        parts = [f"{profile.levels[code]} ({share_text(n / total, 0)})" for code, n in counts.head(3).items()]
        if len(counts) > 3:
            parts.append(f"{len(counts) - 3} more")
        return ", ".join(parts)
    numbers = pd.to_numeric(profile.values[rows], errors="coerce").to_numpy(dtype=float)
    present = numbers[np.isfinite(numbers)]
    missing = 1 - len(present) / max(len(numbers), 1)
    if not len(present):
        return MISSING
    q1, median, q3 = np.percentile(present, [25, 50, 75])
    text = f"median {fmt(median)} (IQR {fmt(q1)} to {fmt(q3)})"
    return text + (f", {share_text(missing, 0)} missing" if missing > 0 else "")


def share_text(share: float | None, decimals: int = 1) -> str:
    """A share as a percentage with ``decimals`` decimals that never reads 0 % for a present value nor 100 % for
    one short of all: ``"<1%"``, ``">99%"`` (decimals 0), ``"<0.1%"`` (decimals 1); ``"-"`` for None/NaN."""
    if share is None or share != share:
        return "-"
    text = f"{share:.{decimals}%}"
    step = 10.0 ** -(decimals + 2)  # the smallest share the format shows, as a fraction
    if share > 0 and text == f"{0:.{decimals}%}":
        return f"<{step:.{decimals}%}"
    if share < 1 and text == f"{1:.{decimals}%}":
        return f">{1 - step:.{decimals}%}"
    return text


def fmt(value: float) -> str:
    """A number for a table: integers from 1000 up without decimals, else 3 significant digits."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"
