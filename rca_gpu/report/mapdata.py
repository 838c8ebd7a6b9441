"""The map's data: one entry per drawn point (coordinates, cluster, thumbnail, id, path, every metadata column),
written into the page as JSON for its script, and the colourings it offers (clusters, causes, explanations,
any column).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu.report import explain as _explain
from rca_gpu.report.columns import is_categorical

#: A text column with more levels than this is shown on hover but not offered for colouring.
COLOUR_LEVELS = 50
MAP_LEVELS = 30  # levels shown in the legend; the rest are drawn as "other"


def map_data(clusters: pd.DataFrame, embedding: pd.DataFrame, positions: np.ndarray, drawn: np.ndarray,
              thumbs: dict[int, str], meta_columns: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Columns of the drawn points for the page's script: coordinates, cluster, thumbnail, id, path, and
    every metadata column (text dictionary-encoded, numbers as floats)."""
    rows = positions[drawn]
    picked = clusters.iloc[rows]
    data: dict[str, Any] = {
        "x": round_list(embedding["x"].to_numpy()[drawn]),
        "y": round_list(embedding["y"].to_numpy()[drawn]),
        "cluster": embedding["cluster"].to_numpy()[drawn].astype(int).tolist(),
        "thumb": [thumbs.get(int(p)) for p in rows],
        "id": picked["id"].astype(str).tolist(),
        "path": picked["path"].astype(str).tolist(),
        "columns": {},
    }
    colourable = []
    for column in meta_columns:
        values = picked[column]
        name = _explain.display_name(column)
        if is_categorical(clusters[column]):
            text = pd.Series(_explain._as_text(values), index=values.index).where(values.notna(), None)
            codes, levels = pd.factorize(text, use_na_sentinel=True)
            data["columns"][name] = {"kind": "text", "levels": [str(v) for v in levels], "codes": codes.tolist()}
            if 1 < len(levels) <= COLOUR_LEVELS:
                colourable.append(name)
        else:
            data["columns"][name] = number_column(values)
            if sum(v is not None for v in data["columns"][name]["values"]) > 1:
                colourable.append(name)
    data["max_levels"] = MAP_LEVELS
    data["column_order"] = list(data["columns"])  # the JSON's keys come sorted
    return data, colourable


def explanation_codes(explanations: pd.DataFrame, usable: pd.DataFrame, rows: np.ndarray) -> dict[str, Any] | None:
    """The map's "explanation" colouring: each drawn image by the cluster whose top rule it matches (the rule
    with the highest precision when it matches several), ``-1`` when it matches no found rule.

    ``usable``: clusters.parquet without rejected rows (original index = clusters.parquet row); ``rows``: the
    clusters.parquet rows drawn. Returns ``codes`` (per drawn point, index into ``levels``), ``levels`` ("cluster
    3: rule"), ``clusters``; None when no cluster has a found rule.
    """
    found = explanations[(explanations["rank"] == 1) & explanations["found"].astype(bool)]
    if found.empty:
        return None
    masks = _explain.rule_masks(found, usable)
    order = found.sort_values(["precision", "cluster"], ascending=[False, True])
    where = pd.Series(np.arange(len(usable)), index=usable.index)
    picked = where.reindex(rows).to_numpy()  # position in usable, NaN for rows not usable
    codes = np.full(len(rows), -1, dtype=np.int64)
    levels: list[str] = []
    ids: list[int] = []
    for row in order.itertuples(index=False):
        mask = masks[int(row.cluster)]
        level = len(levels)
        levels.append(f"cluster {int(row.cluster)}: {row.rule}")
        ids.append(int(row.cluster))
        hit = np.zeros(len(rows), dtype=bool)
        valid = ~np.isnan(picked)
        hit[valid] = mask[picked[valid].astype(np.int64)]
        codes[(codes < 0) & hit] = level
    return {"codes": codes.tolist(), "levels": levels, "clusters": ids}


#: Integers beyond this lose digits as JavaScript numbers; the map also carries them as text.
_JS_SAFE_INTEGER = 2**53 - 1


def number_column(values: pd.Series) -> dict[str, Any]:
    """A numeric metadata column for the map: ``values`` (colour scale and tooltip) and, when some integer is
    beyond JavaScript's exact range, ``text`` (the tooltip's exact digits). Integers stay exact (a seed
    1788123457 is not shown as 1788000000); other numbers keep 4 significant digits but every digit of their
    integer part."""
    numbers = pd.to_numeric(values, errors="coerce")
    floats = numbers.to_numpy(dtype=float, na_value=np.nan)
    finite = floats[np.isfinite(floats)]
    if pd.api.types.is_integer_dtype(numbers.dtype) or (len(finite) and bool(np.all(finite == np.round(finite)))):
        exact = [None if pd.isna(v) or not math.isfinite(float(v)) else int(v) for v in numbers.tolist()]
        column: dict[str, Any] = {"kind": "number", "values": exact}
        if any(v is not None and abs(v) > _JS_SAFE_INTEGER for v in exact):
            column["values"] = [None if v is None else float(v) for v in exact]
            column["text"] = [None if v is None else str(v) for v in exact]
        return column
    return {"kind": "number", "values": round_list(floats, digits=4)}


def round_list(values: np.ndarray, digits: int = 4) -> list[float | None]:
    """Floats with ``digits`` significant digits, but never fewer than their integer part has (12345.678 ->
    12345.68 with 4), for compact JSON; NaN/inf -> None."""
    values = np.asarray(values, dtype=float)
    out: list[float | None] = []
    for v in values.tolist():
        if not math.isfinite(v):
            out.append(None)
            continue
        whole = int(math.floor(math.log10(abs(v)))) + 1 if v else 0
        out.append(float(f"{v:.{max(digits, whole + 2)}g}"))
    return out
