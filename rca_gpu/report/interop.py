"""Outputs for other tools: the flat ``clusters.csv`` of a run, and an export that FiftyOne loads with its own
CSV importer.

``RUN_DIR/clusters.csv`` (written with every report, so it follows the edits of the catalogue once the report is
made again): one row per input row, ``path`` (absolute), ``id``, ``cluster`` (-1 noise and rejected), ``status``,
``cause`` and ``cause_name`` (the edited catalogue's cause and the name the engineer gave it; -1 and "" without
a cause, "" while unnamed), then ``label``, ``label_name``,
``prediction``, ``prediction_name``, ``confidence`` and ``root_cause`` when the run has them.

``rca-gpu export RUN --to DIR --format fiftyone`` writes FiftyOne's CSVDataset layout: ``DIR/data/`` (the images,
links or copies, named as by the folder export) and ``DIR/labels.csv`` with ``filepath`` (the file's name in
``data/``) and the columns of clusters.csv, then the metadata. FiftyOne reads it with::

    import fiftyone as fo
    dataset = fo.Dataset.from_dir(
        dataset_dir="DIR",
        dataset_type=fo.types.CSVDataset,
        fields={"id": None, "cluster": int, "cause": int, "cause_name": None, "status": None,
                "label": None, "prediction": None},
    )

(``fields`` names the columns to read and how to parse them, ``None`` = as text: FiftyOne's
``fiftyone.utils.csv.CSVDatasetImporter``; without it every column is read as text.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rca_gpu import outputs
from rca_gpu.data.paths import real_paths
from rca_gpu.runfiles import CLUSTERS_CSV, FIFTYONE_DATA, FIFTYONE_LABELS

if TYPE_CHECKING:  # pragma: no cover
    from rca_gpu.runfolder import RunFolder

#: Columns of clusters.parquet copied into clusters.csv when the run has them (after path .. cause_name).
OUTCOME_COPY = ("label", "label_name", "prediction", "prediction_name", "confidence", "root_cause")


def flat_table(run: RunFolder, clusters: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows of clusters.csv (see the module docstring) for an opened run."""
    from rca_gpu.catalogue.causes import load_catalogue

    clusters = run.clusters() if clusters is None else clusters
    catalogue = load_catalogue(run)
    cause = catalogue.cause_of(clusters["id"].to_numpy())
    names = np.array([catalogue.causes[int(c)].name if int(c) in catalogue.causes else "" for c in cause],
                     dtype=object)
    out = pd.DataFrame({
        "path": clusters["path"].astype(object).where(clusters["path"].notna(), "").astype(str).to_numpy(),
        "id": clusters["id"].to_numpy(),
        "cluster": np.where(clusters["status"].to_numpy() == "rejected", -1, clusters["cluster"].to_numpy()),
        "status": clusters["status"].to_numpy(),
        "cause": cause,
        "cause_name": names,
    })
    for column in OUTCOME_COPY:
        if column in clusters.columns:
            out[column] = clusters[column].to_numpy()
    return out


def write_clusters_csv(run: RunFolder, clusters: pd.DataFrame | None = None) -> Path:
    """Write ``RUN_DIR/clusters.csv`` (atomically) and return its path."""
    return outputs.write_text(run.file(CLUSTERS_CSV), flat_table(run, clusters).to_csv(index=False))


def export_fiftyone(run: RunFolder, target: Path, members: pd.DataFrame, *, mode: str) -> tuple[int, int]:
    """Write FiftyOne's CSVDataset layout of the rows ``members`` (of clusters.parquet) into ``target`` (a new or
    empty folder, checked by the caller): ``data/`` with the images and ``labels.csv``. Returns (files made,
    rows left out because their file is missing or was rejected: FiftyOne's importer refuses a row without a
    file).

    Raises
    ------
    rca_gpu.report.export.ExportError
        ``target`` holds data/ or labels.csv already.
    """
    from rca_gpu.report.placing import ExportError, place, safe_name, unique_name

    data = target / FIFTYONE_DATA
    if os.path.lexists(data) or os.path.lexists(target / FIFTYONE_LABELS):
        raise ExportError(
            f"The export folder {str(target)!r} already holds {FIFTYONE_DATA}/ or {FIFTYONE_LABELS}; pass a new "
            "--to folder for a FiftyOne export, or remove them first."
        )
    data.mkdir()
    flat = flat_table(run, run.clusters()).set_index("id", drop=False).loc[members["id"].to_numpy()]
    used: set[str] = set()
    names, kept = [], []
    files = run.image_files(real_paths(members))  # the run's path rule: only files it allows are copied
    for k, row in enumerate(members.itertuples(index=False)):
        source = files[k]
        if row.status == "rejected" or not source:
            continue
        name = unique_name(safe_name(row.id, source), used)
        destination = data / name
        if destination.resolve().parent != data.resolve():
            raise ExportError(f"Refusing to write {destination}: it resolves outside {data}.")
        place(source, destination, mode)
        names.append(name)
        kept.append(k)
    chosen = members.iloc[kept].reset_index(drop=True)
    labels = pd.concat([pd.DataFrame({"filepath": names}),
                        flat.iloc[kept].drop(columns=["path"]).reset_index(drop=True),
                        pd.DataFrame({"source_path": chosen["path"].astype(str).to_numpy()})], axis=1)
    meta = [c for c in chosen.columns
            if c not in labels.columns and c not in ("path", "cluster", "status", "reason", "input_path", "_group")]
    labels = pd.concat([labels, chosen[meta]], axis=1)
    outputs.write_text(target / FIFTYONE_LABELS, labels.to_csv(index=False))
    return len(kept), len(members) - len(kept)
