"""Short text descriptions of a group of images for the terminal tables (run summary, causes)."""

from __future__ import annotations

import pandas as pd

#: Metadata columns whose most common values describe a cluster in the terminal summaries.
SUMMARY_COLUMNS = ("root_cause", "label", "prediction", "folder")


def common_values(group: pd.DataFrame, top: int = 3) -> dict[str, str]:
    """For each of SUMMARY_COLUMNS present in ``group`` (a slice of clusters.parquet): its ``top`` most common
    values with their counts, as text "a (3), b (1)"."""
    out = {}
    for column in SUMMARY_COLUMNS:
        if column in group.columns:
            counts = group[column].astype(str).value_counts()
            out[column] = ", ".join(f"{k} ({v})" for k, v in counts.head(top).items())
    return out
