"""Representations that see the cause rather than the content: class-conditional centring and grid pooling.

Features of a pretrained network (or of the DNN under test) describe first what an image shows: its class,
its angle. Failures of one cause then split by class, and causes that differ only in direction or place merge.
Two options of every image extractor work against that (docs/whitebox.md, "Representations"):

* ``center=label | prediction | pair``: subtract from each image's features the mean features of the images of
  the same class (the true ``label``, the DUT's ``prediction``, or the pair of both), so that what is left is
  how the image differs from its class (the failure's cause) rather than the class itself. Classes with fewer
  than :data:`MIN_GROUP` images are centred on the mean of all images instead, as a mean of a few images is
  mostly the images themselves. ``center=auto`` centres on ``label`` when the source has that column, else on
  ``prediction``, else not at all (never refused; run.json says what it did).
* ``pool=gridN``: average-pool a spatial feature map to an N x N grid instead of one global average, so that
  where something is (left or right, top or bottom) stays in the features.

Centring runs after extraction, on the matrix of the usable images; the extracted features are cached without
it (:func:`extraction_spec`), so trying ``center=label`` next to the plain features extracts nothing again.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from rca_gpu.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover
    from rca_gpu.data.sources import FailureSet
    from rca_gpu.spec import FeatureSpec

#: ``center`` value -> the source columns whose values make a class.
CENTER_COLUMNS: dict[str, tuple[str, ...]] = {"label": ("label",), "prediction": ("prediction",),
                                              "pair": ("label", "prediction")}
#: Classes with fewer images than this are centred on the mean of all images.
MIN_GROUP = 10
_GRID = re.compile(r"^grid([1-9][0-9]?)$")


def grid_size(pool: Any) -> int | None:
    """The side N of a ``pool`` value: ``"gridN"`` or an int N; None for global pooling (``"avg"``, None).

    Raises
    ------
    SpecError
        ``pool`` is neither.
    """
    if pool is None or pool == "avg":
        return None
    if isinstance(pool, int) and not isinstance(pool, bool) and pool >= 1:
        return pool
    match = _GRID.match(str(pool))
    if match:
        return int(match.group(1))
    raise SpecError(f"The 'pool' parameter must be avg or gridN (N >= 1, e.g. grid2). Got {pool!r} instead.")


def extraction_spec(spec: FeatureSpec) -> FeatureSpec:
    """``spec`` without ``center``: what the extractor computes and the cache stores (centring comes after)."""
    if "center" not in spec.params:
        return spec
    from rca_gpu.spec import FeatureSpec

    return FeatureSpec(spec.name, spec.layer, {k: v for k, v in spec.params.items() if k != "center"})


def center_of(spec: FeatureSpec, failures: FailureSet | None = None) -> str | None:
    """The columns a feature spec centres on: ``label``, ``prediction``, ``pair``; None when absent or ``none``.

    ``auto`` resolves against ``failures``: ``label`` when the source has that column, else ``prediction``, else
    None (and None without ``failures``).
    """
    value = spec.params.get("center")
    if value == "auto":
        columns = () if failures is None else failures.table.columns
        return next((column for column in ("label", "prediction") if column in columns), None)
    return None if value in (None, "none") else str(value)


def check_center(spec: FeatureSpec, failures: FailureSet) -> None:
    """Refuse ``center=...`` when the source lacks the columns it needs, before any image is read.

    Raises
    ------
    SpecError
        One line naming the option, the missing column and what to do.
    """
    how = center_of(spec, failures)
    if how is None:
        return
    missing = [c for c in CENTER_COLUMNS[how] if c not in failures.table.columns]
    if missing:
        raise SpecError(
            f"{spec.name}(center={how}) centres the features on the mean of each {' and '.join(CENTER_COLUMNS[how])}, "
            f"but the source has no {' or '.join(repr(c) for c in missing)} column. Add it to the manifest, or "
            "leave center out."
        )


def class_keys(failures: FailureSet, positions: np.ndarray, how: str) -> np.ndarray:
    """One class key per usable image (``positions`` of the source): the values of the ``how`` columns as
    strings, joined by '|' for ``pair``; '' where a value is missing."""
    frame = failures.table.iloc[np.asarray(positions, dtype=np.int64)][list(CENTER_COLUMNS[how])]
    keys = np.array(["|".join(map(str, row)) for row in frame.itertuples(index=False)], dtype=object)
    keys[frame.isna().any(axis=1).to_numpy()] = ""
    return keys


def center_features(matrix: Any, keys: np.ndarray, *, min_group: int = MIN_GROUP) -> tuple[Any, dict[str, Any]]:
    """Subtract from each row the mean of the rows with the same class key.

    Parameters
    ----------
    matrix:
        (n, d) float torch tensor (any device).
    keys:
        (n,) class keys; '' marks an unknown class, centred on the mean of all rows like a small class.
    min_group:
        Classes with fewer rows are centred on the mean of all rows.

    Returns
    -------
    (centred (n, d) float tensor on the same device, description for run.json: classes centred on their own
    mean, classes and rows centred on the global mean)
    """
    import torch

    names, inverse = np.unique(np.asarray(keys, dtype=str), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(names))
    own = (counts >= min_group) & (names != "")
    index = torch.as_tensor(inverse, device=matrix.device)
    sums = torch.zeros((len(names), matrix.shape[1]), dtype=matrix.dtype, device=matrix.device)
    sums.index_add_(0, index, matrix)
    means = sums / torch.as_tensor(np.maximum(counts, 1), dtype=matrix.dtype, device=matrix.device)[:, None]
    means[torch.as_tensor(~own, device=matrix.device)] = matrix.mean(dim=0)
    described = {
        "classes": int(own.sum()),
        "small_classes_on_global_mean": int((~own).sum()),
        "rows_on_global_mean": int(counts[~own].sum()),
        "min_class_size": min_group,
    }
    return matrix - means[index], described


#: Why the default pipeline's feature stage is what it is, said in run.json and the report when it ran.
DEFAULT_REASON = ("the default representation: the best mean study score (ARI x coverage) over the five "
                  "ground-truth benchmarks, benchmarks/RESULTS.md section 7")


def describe(spec: FeatureSpec, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Which representation a run used and why, for run.json (``representation``) and the report.

    Parameters
    ----------
    spec:
        The pipeline's feature stage as given (before layer resolution).
    info:
        The extractor's description (``Features.info``), for the resolved layer, pooling and centring.

    Returns
    -------
    ``{"features", "layer", "pooling", "centring", "why"}``: pooling ``"global average"``, ``"N x N grid"``
    or ``"as extracted"``; centring ``"none"`` or ``"on the mean of each <column>"``.
    """
    from rca_gpu.spec import DEFAULT_PIPELINE, parse_pipeline

    info = info or {}
    grid = None
    try:
        grid = grid_size(spec.params.get("pool"))
    except SpecError:  # pragma: no cover - the spec was validated
        pass
    if spec.info.has_layers and spec.name not in ("dut", "lrp", "gradcam"):
        pooling = f"{grid} x {grid} grid" if grid else "global average"
    else:
        pooling = f"{grid} x {grid} grid" if grid else "as extracted"
    how = (info.get("center") or {}).get("by") or (None if spec.params.get("center") == "auto" else center_of(spec))
    automatic = " (center=auto)" if spec.params.get("center") == "auto" else ""
    default = str(parse_pipeline(DEFAULT_PIPELINE).features)
    if str(spec) == default:
        why = DEFAULT_REASON
    elif spec.name == "precomputed":
        why = "features brought by the user (--features)"
    else:
        why = "named in the pipeline (the default is " + default + ")"
    return {
        "features": str(spec),
        "layer": info.get("layer"),
        "pooling": pooling,
        "centring": ("none" if how is None else "on the mean of each " + " and ".join(CENTER_COLUMNS[how]))
        + automatic,
        "why": why,
    }
