"""Heatmaps of the DNN under test in the report, for runs whose features are heatmaps (lrp, gradcam, gradxinput,
ig): the heatmap over the image for each cluster's medoids and border cases, and the cluster's mean heatmap.

The features of those runs *are* the heatmaps (flattened, optionally pooled;
:func:`rca_gpu.features.heatmaps.feature_maps` lays them out again), but only the run holds them all. So the run
keeps what the report shows, right after embedding.parquet is written (:func:`keep_heatmaps`), in
``RUN_DIR/heatmaps.safetensors`` (metadata: the run id, the method and layer):

``maps``
    (R, h, w) float16: the map of each medoid and border case of every cluster (chosen exactly as the report
    chooses them, :mod:`rca_gpu.report.representatives`, from embedding.parquet), summed over channels, each
    divided by its largest absolute value (so in [-1, 1]); ``ids`` (R,) int64 or text their image ids, as
    a second tensor ``id_codes`` with the ids in the metadata when they are not integers;
``means``
    (C, h, w) float32: per cluster, the mean of those normalised maps over every member; ``clusters`` (C,) int64.

Maps larger than :data:`MAX_SIDE` per side are average-pooled to it. The file's size depends on the number of
clusters, not of images. Maps with no spatial layout (LRP at a linear layer) are not kept; the report says why.

The report draws each map over its image (the image in grey, positive values in red, negative in blue, opacity
by magnitude) into ``report_files/heatmaps/`` as PNG files, and the mean map alone, scaled to its own largest
absolute value (signed maps partly cancel in the mean).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu.data.paths import real_paths
from rca_gpu.runfiles import EMBEDDING_FILE, HEATMAPS_FILE

log = logging.getLogger("rca_gpu")

HEATMAPS_FORMAT = 1
#: Largest side of a kept map, in map cells.
MAX_SIDE = 64
#: Side of the overlay images drawn into the report, in pixels.
OVERLAY_SIZE = 160
#: Feature values turned into maps at once (bounds the memory of the mean: 2^26 float32 = 256 MiB).
_BLOCK_VALUES = 1 << 26


def has_heatmaps(features) -> bool:
    """Whether ``features`` (a run's :class:`~rca_gpu.features.extract.Features`) are heatmaps of the DNN under
    test, whose maps :func:`keep_heatmaps` reads from ``features.matrix``."""
    from rca_gpu.features.heatmaps import HEATMAP_EXTRACTORS

    return (getattr(features, "info", None) or {}).get("name") in HEATMAP_EXTRACTORS


def keep_heatmaps(out: Path, run_id: str, features) -> dict[str, Any] | None:
    """Write ``out/heatmaps.safetensors`` for a run whose features are heatmaps; None (nothing written) for other
    runs. ``features``: the run's :class:`~rca_gpu.features.base.Features` (``matrix`` rows aligned with
    embedding.parquet, which must be written already; ``info`` its extractor's description).

    Returns a summary (method, layer, map size, maps kept) or None.
    """
    from rca_gpu.features.heatmaps import feature_maps

    if not has_heatmaps(features):
        return None
    info = dict(features.info)
    matrix = features.matrix
    probe = feature_maps(matrix[:1], info)
    if probe is None:
        log.info("heatmaps: the %s maps at layer %s have no spatial layout; the report shows none",
                 info.get("name"), info.get("layer"))
        return None
    import pyarrow.parquet as pq

    from rca_gpu.report.representatives import clustering_space, representatives

    embedding = pq.read_table(Path(out) / EMBEDDING_FILE).to_pandas()
    labels = embedding["cluster"].to_numpy()
    space, _ = clustering_space(embedding)
    reps = representatives(labels, space, np.arange(len(labels)), np.random.default_rng(0))
    shown = sorted({row for label, chosen in reps.items() if label >= 0 for row in chosen.medoids + chosen.border})
    maps = _display(feature_maps(matrix[_rows(matrix, shown)], info)) if shown else np.zeros((0, 1, 1))
    ids = embedding["id"].to_numpy()[shown]
    clusters = sorted(int(c) for c in np.unique(labels) if c >= 0)
    means = np.zeros((len(clusters), *maps.shape[1:]), dtype=np.float64)
    for k, cluster in enumerate(clusters):
        members = np.flatnonzero(labels == cluster)
        step = max(1, _BLOCK_VALUES // max(int(matrix.shape[1]), 1))
        for start in range(0, len(members), step):
            block = members[start:start + step]
            means[k] += _display(feature_maps(matrix[_rows(matrix, block)], info)).sum(axis=0)
        means[k] /= max(len(members), 1)
    tensors = {"maps": maps.astype(np.float16), "means": means.astype(np.float32),
               "clusters": np.asarray(clusters, dtype=np.int64)}
    metadata = {"run_id": run_id, "format": str(HEATMAPS_FORMAT), "method": str(info.get("method", info.get("name"))),
                "extractor": str(info.get("name")), "layer": str(info.get("layer") or "input")}
    if np.issubdtype(ids.dtype, np.integer):
        tensors["ids"] = ids.astype(np.int64)
    else:
        metadata["ids"] = json.dumps([str(i) for i in ids])
    from safetensors.numpy import save_file

    from rca_gpu import outputs

    outputs.write_atomic(Path(out) / HEATMAPS_FILE, lambda tmp: save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata=metadata))
    return {"file": HEATMAPS_FILE, "maps": len(shown), "size": list(maps.shape[1:]), "method": metadata["method"],
            "layer": metadata["layer"]}


def _rows(matrix, rows) -> Any:
    """Row index in the array library of ``matrix`` (a torch tensor takes a tensor index)."""
    from rca_gpu.engine.device import kind_of, to_kind

    rows = np.asarray(rows, dtype=np.int64)
    if kind_of(matrix) == "torch":
        return to_kind(rows, "torch", torch_device=matrix.device.type)
    return rows


def _display(maps: np.ndarray) -> np.ndarray:
    """(n, C, h, w) maps -> (n, h', w') summed over channels, pooled to at most MAX_SIDE per side, each divided by
    its largest absolute value (a map of zeros stays zero)."""
    flat = maps.sum(axis=1, dtype=np.float64)
    n, h, w = flat.shape
    if max(h, w) > MAX_SIDE:
        import torch

        flat = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(flat)[:, None], (min(h, MAX_SIDE),
                                                       min(w, MAX_SIDE)))[:, 0].numpy()
    scale = np.abs(flat).reshape(n, -1).max(axis=1)
    return flat / np.where(scale > 0, scale, 1.0)[:, None, None]


# --------------------------------------------------------------------------------------------------
# Reading them back for the page
# --------------------------------------------------------------------------------------------------


@dataclass
class HeatmapViews:
    """Overlay images written for the page: clusters.parquet row position -> file name, cluster -> file name of
    its mean map, and a sentence saying what the maps are."""

    per_position: dict[int, str] = field(default_factory=dict)
    mean: dict[int, str] = field(default_factory=dict)
    note: str = ""


def heatmap_views(run, clusters: pd.DataFrame, reps, folder: Path, *, thumb_size: int = 96,
                  loader=None) -> HeatmapViews | None:
    """Draw the heatmaps of ``RUN_DIR/heatmaps.safetensors`` over their images into ``folder`` (PNG, named by
    row position, never by a name from the data); None when the run kept none. ``reps``: the report's
    representatives (cluster -> Chosen); ``loader``: position -> PIL image for runs without image files.

    Raises
    ------
    rca_gpu.runfolder.RunFolderError
        heatmaps.safetensors belongs to another run or cannot be read.
    """
    from rca_gpu.runfolder import RunFolderError

    if not run.has(HEATMAPS_FILE):
        return None
    stored = _read(run, RunFolderError)
    if folder.is_symlink():
        raise OSError(f"{folder} is a symbolic link; refusing to write through it.")
    folder.mkdir(parents=True, exist_ok=True)
    position_of = pd.Series(np.arange(len(clusters)), index=clusters["id"].astype(str).to_numpy())
    views = HeatmapViews(note=(f"Heatmaps of the DNN under test: {stored['method']} at {stored['layer']} for the "
                               "predicted class, summed over channels and scaled per image; red counts for the "
                               "prediction, blue against it. The cluster's mean heatmap averages every member's."))
    wanted = {p for label, chosen in reps.items() if label >= 0 for p in chosen.medoids + chosen.border}
    files = run.image_files(real_paths(clusters))  # the run's path rule: only files it allows are read
    for image_id, heat in zip(stored["ids"], stored["maps"], strict=True):  # equal: checked by _read
        position = position_of.get(str(image_id))
        if position is None or int(position) not in wanted:
            continue
        image = _image(files, int(position), loader)
        name = f"{int(position):07d}.png"
        _save_png(_overlay(image, heat.astype(np.float32)), folder / name)
        views.per_position[int(position)] = name
    for cluster, heat in zip(stored["clusters"], stored["means"], strict=True):
        name = f"mean-{int(cluster)}.png"
        heat = heat.astype(np.float32)
        scale = float(np.abs(heat).max()) if heat.size else 0.0
        _save_png(_overlay(None, heat / scale if scale > 0 else heat), folder / name)  # at full strength
        views.mean[int(cluster)] = name
    return views


def _save_png(image, path: Path) -> None:
    from rca_gpu import outputs

    outputs.write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def _read(run, error) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    path = run.file(HEATMAPS_FILE)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
        ids = tensors["ids"] if "ids" in tensors else np.array(json.loads(metadata.get("ids", "[]")), dtype=object)
        maps, means, clusters = tensors["maps"], tensors["means"], tensors["clusters"]
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise error(f"Cannot read {str(path)!r}: {exc}. Run `rca-gpu run` again.") from None
    if metadata.get("run_id") != run.run_id:
        raise error(f"{HEATMAPS_FILE} in {str(run.path)!r} belongs to run {metadata.get('run_id')}, but run.json to "
                    f"run {run.run_id}: the folder mixes files of different runs. Run `rca-gpu run` again.")
    if maps.ndim != 3 or means.ndim != 3 or len(ids) != len(maps) or len(clusters) != len(means):
        raise error(f"{HEATMAPS_FILE} in {str(run.path)!r} has maps of shapes {maps.shape} and {means.shape} for "
                    f"{len(ids)} ids and {len(clusters)} clusters. Run `rca-gpu run` again.")
    return {"ids": ids, "maps": maps, "means": means, "clusters": clusters,
            "method": metadata.get("method", "heatmap"), "layer": metadata.get("layer", "?")}


def _image(files, position: int, loader):
    """The image under a heatmap: from ``loader`` (in-memory runs), else the file the run's path rule allows
    (``files``: :meth:`RunFolder.image_files`), else None (the map is drawn on grey)."""
    from rca_gpu.report.thumbnails import open_image

    if loader is not None:
        image = loader(position)
        if isinstance(image, np.ndarray):
            from PIL import Image

            image = Image.fromarray(image)
        return image
    return open_image(files[position], OVERLAY_SIZE) if files[position] else None


def _overlay(image, heat: np.ndarray):
    """An RGB PIL image of OVERLAY_SIZE: ``image`` in grey (or mid-grey when None) under ``heat`` ((h, w) in
    [-1, 1], upsampled bilinearly): red where positive, blue where negative, opacity by magnitude."""
    from PIL import Image

    size = (OVERLAY_SIZE, OVERLAY_SIZE)
    if image is None:
        base = np.full((*size, 3), 235.0)
    else:
        grey = image.convert("L").resize(size, Image.Resampling.BILINEAR)
        base = np.repeat(np.asarray(grey, dtype=np.float64)[..., None], 3, axis=2) * 0.75 + 32
    field = np.asarray(Image.fromarray(np.nan_to_num(heat, nan=0.0)).resize(size, Image.Resampling.BILINEAR),
                       dtype=np.float64)
    alpha = np.clip(np.abs(field), 0, 1)[..., None] * 0.85
    colour = np.where(field[..., None] >= 0, np.array([220.0, 30, 30]), np.array([30.0, 80, 220]))
    out = base * (1 - alpha) + colour * alpha
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="RGB")
