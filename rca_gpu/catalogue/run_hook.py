"""What a run adds for the catalogue, right after its clusters are chosen: the stability of each cluster
(cluster_summary.parquet) and the reference set that later assigns new images (reference.*).

:func:`keep_for_catalogue` is the one call the pipeline makes; it writes its files into the run folder under
the run's id and returns the run.json section.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rca_gpu.progress import Reporter

log = logging.getLogger("rca_gpu")

#: Fewest usable images whose clusters' stability is scored: a resample of 80 % of fewer images leaves a
#: handful of points, and Jaccard values of clusters of one or two images say nothing. Below it stability is
#: not scored (null, as with ``--stability 0``) and run.json ``catalogue.stability_not_scored`` says why.
STABILITY_MIN_IMAGES = 10


@dataclass
class CatalogueParts:
    """The run.json ``catalogue`` section and the per-cluster summary (None when stability is off)."""

    info: dict[str, Any]
    summary: pd.DataFrame | None


def keep_for_catalogue(spec, failures, features, graph, selection, labels: np.ndarray, device, out: Path,
                       run_id: str, *, timer=None, reporter=None) -> CatalogueParts:
    """Score the stability of the run's clusters and write the reference set.

    Parameters
    ----------
    spec: the RunSpec (``stability``: resamples, None = automatic, 0 = off; ``seed``).
    failures, features, graph: the run's FailureSet, Features and feature kNN graph.
    selection: the chosen setting (``reduce_params``, ``cluster_params``, ``embedding``, ``trials``); when its
        ``criterion`` is "none" (nothing searched: too few distinct images) stability is not scored, nor
        below :data:`STABILITY_MIN_IMAGES` usable images (``info["stability_not_scored"]`` says why).
    labels: (n,) int64 final labels (-1 noise), aligned with ``features.matrix``.
    """
    from rca_gpu import outputs
    from rca_gpu.catalogue.reference import write_reference
    from rca_gpu.catalogue.stability import SUMMARY_FILE, default_resamples, run_stability

    out = Path(out)
    info: dict[str, Any] = {}
    summary = None
    resamples = getattr(spec, "stability", None)
    started = time.perf_counter()
    # a selection that searched nothing (too few distinct images) has no setting to re-cluster with
    searched = getattr(selection, "criterion", None) != "none"
    n_images = len(labels)
    if resamples == 0:
        why = "switched off (--stability 0)"
    elif not searched:
        why = "nothing was searched (too few distinct images): no setting to re-cluster with"
    elif n_images < STABILITY_MIN_IMAGES:
        why = (f"{n_images} usable images, fewer than {STABILITY_MIN_IMAGES}: resamples of so few images give "
               "meaningless Jaccard values")
    elif not (labels >= 0).any():
        why = "no cluster (every image is noise)"
    else:
        why = None
    if why is None:
        if resamples is None:
            resamples = default_resamples(spec.pipeline.reduce.name, getattr(selection, "trials", None))
        reporter = reporter or Reporter(enabled=False)
        with reporter.task("stability: re-clustering subsets", total=resamples) as advance:
            stability = run_stability(
                features.matrix, graph, labels,
                reduce_name=spec.pipeline.reduce.name, reduce_params=dict(selection.reduce_params),
                cluster_name=spec.pipeline.cluster.name, cluster_params=dict(selection.cluster_params),
                chosen_embedding=selection.embedding, device=device, seed=spec.seed, resamples=resamples,
                progress=advance, merge_step=getattr(selection, "merge_step", False),
            )
        summary = stability.table
        outputs.write_parquet(out / SUMMARY_FILE, summary, run_id=run_id)
        info["stability"] = stability.info
        log.info("stability: %d resamples, %d of %d clusters below %.1f", stability.info["resamples"],
                 stability.info["n_unstable"], len(summary), stability.info["unstable_below"])
    else:  # the file is written all the same: one row per cluster, stability unscored (null)
        info["stability"] = None
        info["stability_not_scored"] = why
        log.info("stability not scored: %s", why)
        outputs.write_parquet(out / SUMMARY_FILE, unscored_summary(labels), run_id=run_id)
    if timer is not None:
        timer.add("stability", started)
    started = time.perf_counter()
    ids = failures.table["id"].to_numpy()[features.positions]
    info["reference"] = write_reference(out, run_id, features.matrix, ids, labels, seed=spec.seed)
    if timer is not None:
        timer.add("reference_set", started)
    return CatalogueParts(info, summary)


def unscored_summary(labels: np.ndarray) -> pd.DataFrame:
    """cluster_summary.parquet when stability is not scored (``--stability 0``, nothing searched, fewer than
    :data:`STABILITY_MIN_IMAGES` usable images, or no cluster): one row per cluster with its ``size``;
    ``stability`` null (NaN), ``unstable`` null (nullable boolean), ``resamples`` 0. The columns and dtypes of a
    scored summary, so readers need no second case.

    ``labels``: (n,) int final labels, -1 = noise (no row).
    """
    labels = np.asarray(labels, dtype=np.int64)
    clusters, sizes = np.unique(labels[labels >= 0], return_counts=True)
    return pd.DataFrame({
        "cluster": clusters.astype(np.int64),
        "size": sizes.astype(np.int64),
        "stability": np.full(len(clusters), np.nan, dtype=np.float64),
        "unstable": pd.array([pd.NA] * len(clusters), dtype="boolean"),
        "resamples": np.zeros(len(clusters), dtype=np.int64),
    })
