"""Ground-truth evaluation of a clustering of failing images whose true root causes are known.

:func:`evaluate` scores cluster labels (``-1`` = noise) against root-cause labels; :func:`evaluate_run`
does the same for the ``clusters.parquet`` of a finished run and writes ``metrics.json`` and
``per_cause.csv`` next to it; :func:`study_score` ranks pipelines by one number that penalises
over-splitting, mixing and noise alike (the adjusted Rand index, times the coverage of the causes). The exact
definitions, with their edge-case values, are in ``docs/metrics.md``; this module and that page must agree.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from rca_gpu import outputs
from rca_gpu.errors import SourceError, SpecError, TooFewImagesError
from rca_gpu.runfiles import CLUSTERS_FILE, METRICS_FILE, PER_CAUSE_FILE

NOISE = -1
#: Root-cause label of failures without an injected cause (the benchmarks' convention).
NO_CAUSE = "none"
#: Prefix of the per-cluster count columns: ``n_<cause>`` holds how many images of ``<cause>`` a cluster has.
COUNT_PREFIX = "n_"

PER_CAUSE_COLUMNS = ("root_cause", "n_images", "recall", "n_clusters_dominated", "best_purity", "share_noise")


@dataclass(frozen=True, eq=False)  # DataFrames have no single truth value to compare by
class Evaluation:
    """The scores of one clustering against the true root causes.

    Attributes
    ----------
    summary:
        Scalar metrics, JSON-ready (plain ``int``/``float``/``None``; an undefined value is ``None``).
        Keys are listed in ``docs/metrics.md``.
    per_cluster:
        One row per cluster, noise excluded, sorted by cluster id: ``cluster``, ``size``,
        ``dominant_cause``, ``purity``, then ``n_<cause>`` (images of that cause) per cause, causes
        in sorted order.
    per_cause:
        One row per root cause, sorted by cause: ``root_cause``, ``n_images``, ``recall``,
        ``n_clusters_dominated``, ``best_purity`` (NaN when the cause dominates no cluster),
        ``share_noise``.
    counts:
        Input accounting added by :func:`evaluate_run` (rows read, rejected, without a root cause,
        evaluated); empty when :func:`evaluate` was called directly.
    """

    summary: dict[str, Any]
    per_cluster: pd.DataFrame
    per_cause: pd.DataFrame
    counts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Summary, counts (when present), per-cluster and per-cause tables as lists of records."""
        out: dict[str, Any] = {"summary": self.summary}
        if self.counts:
            out["counts"] = self.counts
        out["per_cluster"] = self.per_cluster.to_dict(orient="records")
        out["per_cause"] = self.per_cause.to_dict(orient="records")
        return _jsonable(out)

    def to_json(self, *, indent: int | None = 2) -> str:
        """The result of :meth:`to_dict` as strict JSON (NaN written as ``null``)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def evaluate(
    clusters: Sequence[int] | np.ndarray,
    root_causes: Sequence[str] | np.ndarray,
    *,
    min_purity: float = 0.5,
) -> Evaluation:
    """Score cluster labels against the true root cause of each image.

    Parameters
    ----------
    clusters:
        Cluster id per image; ``-1`` marks noise. Integers (floats with integral values are accepted).
    root_causes:
        True root cause per image, same length; converted to ``str``. Missing values are an error:
        drop those images before calling.
    min_purity:
        A cluster counts for coverage and recall only if its purity is at least this value, in [0, 1].

    Returns
    -------
    Evaluation
        Summary metrics and per-cluster / per-cause tables (definitions in ``docs/metrics.md``).

    Raises
    ------
    SpecError
        Lengths differ, a cluster id is below -1 or not an integer, a root cause is missing, or
        ``min_purity`` is outside [0, 1].
    TooFewImagesError
        No images were given.
    """
    labels, causes = _check_inputs(clusters, root_causes, min_purity)
    n_images = len(labels)

    # the causes sorted (ties resolve alphabetically) and each image's index among them; pandas' hash-based
    # factorize gives np.unique's result without sorting every image's text
    cause_idx, names = pd.factorize(causes, sort=True)
    cause_names = np.asarray(names).astype(str)
    cause_totals = np.bincount(cause_idx, minlength=len(cause_names))
    is_noise = labels == NOISE
    noise_per_cause = np.bincount(cause_idx[is_noise], minlength=len(cause_names))

    # Clusters x causes contingency table of the clustered images (rows: sorted cluster ids).
    cluster_ids = np.unique(labels[~is_noise])
    counts = np.zeros((len(cluster_ids), len(cause_names)), dtype=np.int64)
    if len(cluster_ids):
        # Columns of the sklearn table are the causes present among clustered images, in sorted order.
        present = np.unique(cause_idx[~is_noise])
        counts[:, present] = contingency_matrix(labels[~is_noise], cause_idx[~is_noise])
    sizes = counts.sum(axis=1)
    dominant = counts.argmax(axis=1)  # the first maximum wins, i.e. the alphabetically first cause
    dominant_counts = counts[np.arange(len(cluster_ids)), dominant]
    purity = dominant_counts / np.maximum(sizes, 1)
    qualifies = purity >= min_purity

    per_cluster = pd.DataFrame(
        {
            "cluster": cluster_ids.astype(np.int64),
            "size": sizes.astype(np.int64),
            "dominant_cause": cause_names[dominant].astype(object),
            "purity": purity.astype(np.float64),
        }
    )
    per_cluster = pd.concat(
        [per_cluster, pd.DataFrame(counts, columns=[f"{COUNT_PREFIX}{c}" for c in cause_names])], axis=1
    )

    # Per cause: only clusters it dominates with purity >= min_purity count (same rule as coverage).
    covered_images = np.zeros(len(cause_names), dtype=np.int64)
    np.add.at(covered_images, dominant[qualifies], dominant_counts[qualifies])
    n_dominated = np.bincount(dominant[qualifies], minlength=len(cause_names))
    best_purity = np.full(len(cause_names), np.nan)
    np.fmax.at(best_purity, dominant, purity)  # over all clusters it dominates; NaN if none
    recall = covered_images / cause_totals
    per_cause = pd.DataFrame(
        {
            "root_cause": cause_names.astype(object),
            "n_images": cause_totals.astype(np.int64),
            "recall": recall.astype(np.float64),
            "n_clusters_dominated": n_dominated.astype(np.int64),
            "best_purity": best_purity,
            "share_noise": (noise_per_cause / cause_totals).astype(np.float64),
        },
        columns=list(PER_CAUSE_COLUMNS),
    )

    n_clusters = len(cluster_ids)
    n_causes = len(cause_names)
    n_noise = int(is_noise.sum())
    n_covered = int((n_dominated > 0).sum())
    # Coverage of the injected causes only: "none" labels failures that no cause was injected into (the
    # DUT's own errors on clean inputs); they share no visual cause, so no pipeline can give them a cluster.
    injected = cause_names.astype(str) != NO_CAUSE
    coverage_injected = float((n_dominated[injected] > 0).mean()) if injected.any() else None
    # All noise points share the label -1, so "with noise" treats noise as one more cluster.
    ari_all, nmi_all = _agreement(cause_idx, labels)  # the partitions only: integer codes, not the texts
    ari_clustered: float | None = None
    nmi_clustered: float | None = None
    if n_clusters:
        ari_clustered, nmi_clustered = _agreement(cause_idx[~is_noise], labels[~is_noise])
    summary: dict[str, Any] = {
        "n_images": n_images,
        "n_clusters": n_clusters,
        "n_causes": n_causes,
        "n_noise": n_noise,
        "noise_share": n_noise / n_images,
        "clusters_per_cause": n_clusters / n_causes,
        "min_purity": float(min_purity),
        "mean_purity": float(purity.mean()) if n_clusters else None,
        "weighted_purity": float(dominant_counts.sum() / sizes.sum()) if n_clusters else None,
        "coverage": n_covered / n_causes,
        "n_causes_covered": n_covered,
        "coverage_injected": coverage_injected,
        "mean_recall": float(recall.mean()),
        "ari_with_noise": ari_all,
        "nmi_with_noise": nmi_all,
        "ari_without_noise": ari_clustered,
        "nmi_without_noise": nmi_clustered,
    }
    summary["study_score"] = study_score(summary)
    return Evaluation(summary=_jsonable(summary), per_cluster=per_cluster, per_cause=per_cause)


def study_score(summary: Mapping[str, Any]) -> float:
    """One number in [0, 1] to rank pipelines, higher is better, that penalises over-splitting as much as mixing.

    ``score = max(0, ari_with_noise) * coverage_injected`` (``coverage`` where no cause is ``none``)

    The adjusted Rand index with noise as a label of its own compares the partition with the causes pair by
    pair: splitting one cause into two clusters costs about as much as merging two causes of that size into
    one, and noise costs as one more cluster that mixes every cause. ARI weighs causes by their size, so a
    rare cause merged into a large one barely moves it; the coverage factor makes losing any cause cost
    ``1 / causes`` of the score. The former score (weighted purity x coverage x (1 - noise) x min(1, 3 x causes
    / clusters)) ranked pipelines with 20 clusters for 7 causes (ARI 0.29) above one with 6 clusters (ARI 0.98),
    because purity rewards over-splitting. No clusters at all scores 0. Definition and reasons:
    docs/metrics.md, "study_score".

    Parameters
    ----------
    summary:
        ``Evaluation.summary`` (or the ``summary`` of a ``metrics.json``); needs ``ari_with_noise``,
        ``coverage``, ``n_clusters`` (``coverage_injected`` is used when present and not None).

    Raises
    ------
    SpecError
        A key is missing.
    """
    needed = ("ari_with_noise", "coverage", "n_clusters")
    missing = [key for key in needed if key not in summary]
    if missing:
        raise SpecError(
            f"study_score needs the keys {', '.join(needed)} of an evaluation summary; "
            f"missing: {', '.join(missing)}. Pass Evaluation.summary or the 'summary' of a metrics.json."
        )
    ari = summary["ari_with_noise"]
    if int(summary["n_clusters"]) == 0 or ari is None or math.isnan(ari):
        return 0.0
    coverage = summary.get("coverage_injected")
    coverage = summary["coverage"] if coverage is None else coverage
    return max(0.0, float(ari)) * float(coverage)


# --------------------------------------------------------------------------------------------------
# Runs on disk
# --------------------------------------------------------------------------------------------------


@outputs.writes_to("run_dir", "rca-gpu evaluate", create=False)
def evaluate_run(run_dir: str | os.PathLike, *, min_purity: float = 0.5) -> Evaluation:
    """Evaluate the ``clusters.parquet`` of a run and write ``metrics.json`` and ``per_cause.csv``.

    Rows with status ``"rejected"`` (unreadable images) are left out and counted; so are rows whose
    ``root_cause`` is missing. Both files are written atomically (temporary file in ``run_dir``, then
    ``os.replace``), so a reader never sees half a file.

    Parameters
    ----------
    run_dir:
        Output folder of ``rca-gpu run``.
    min_purity:
        See :func:`evaluate`.

    Raises
    ------
    RunFolderError
        ``run_dir`` is not a finished run (no run.json), was written by another version, or its
        clusters.parquet is missing, unreadable or belongs to another run (see :mod:`rca_gpu.runfolder`).
    SourceError
        ``clusters.parquet`` lacks a required column or has no root causes.
    SpecError, TooFewImagesError
        As :func:`evaluate` (bad ``min_purity``; no image left to evaluate).
    """
    from rca_gpu.runfolder import open_run

    folder = open_run(os.fspath(run_dir))
    path = folder.file(CLUSTERS_FILE)
    table = folder.clusters()
    if "root_cause" not in table.columns:
        raise SourceError(
            f"{str(path)!r} has no root_cause column, so there is no ground truth to evaluate against. "
            "Give the source a root_cause column (one true cause per image, e.g. in the manifest) and run "
            "`rca-gpu run` again."
        )
    lacking = [col for col in ("cluster", "status") if col not in table.columns]
    if lacking:
        raise SourceError(
            f"{str(path)!r} lacks the column(s) {', '.join(lacking)}; it was not written by `rca-gpu run`. "
            "Run `rca-gpu run` again to rewrite it."
        )
    return evaluate_clusters(table, folder.path, min_purity=min_purity, run_id=folder.run_id)


def evaluate_clusters(
    table: pd.DataFrame, run_dir: str | os.PathLike, *, min_purity: float = 0.5, run_id: str | None = None
) -> Evaluation:
    """Evaluate a clusters table (as ``rca-gpu run`` writes it to ``run_dir``) and write ``metrics.json``
    and ``per_cause.csv`` to ``run_dir``. :func:`evaluate_run` reads the table from disk; a run passes the
    one it has just written, so the file is not read back."""
    run_dir = Path(run_dir).expanduser()
    path = run_dir / CLUSTERS_FILE
    rejected = table["status"].astype(str) == "rejected"
    kept = table.loc[~rejected]
    unlabelled = kept["root_cause"].isna()
    if bool(unlabelled.all()) and len(kept):
        raise SourceError(
            f"The root_cause column of {str(path)!r} is empty for every evaluated image. Fill it in the "
            "source and run `rca-gpu run` again."
        )
    kept = kept.loc[~unlabelled]
    if kept["cluster"].isna().any():
        raise SourceError(
            f"{str(path)!r} has {int(kept['cluster'].isna().sum())} non-rejected row(s) without a cluster "
            "id. Run `rca-gpu run` again to rewrite it."
        )
    if len(kept) == 0:
        raise TooFewImagesError(
            f"No image of {str(path)!r} can be evaluated: {int(rejected.sum())} of {len(table)} rows were "
            "rejected. Check the reasons in its 'reason' column."
        )
    if "reason" in table.columns:
        reasons = table.loc[rejected, "reason"].fillna("").astype(str).replace("", "unknown")
    else:
        reasons = pd.Series(["unknown"] * int(rejected.sum()), dtype=object)
    result = evaluate(
        kept["cluster"].to_numpy(dtype=np.int64),
        kept["root_cause"].astype(str).to_numpy(),
        min_purity=min_purity,
    )
    counts = {
        "n_rows": len(table),
        "n_rejected": int(rejected.sum()),
        "rejected_by_reason": {str(k): int(v) for k, v in reasons.value_counts().sort_index().items()},
        "n_without_root_cause": int(unlabelled.sum()),
        "n_evaluated": len(kept),
    }
    result = Evaluation(result.summary, result.per_cluster, result.per_cause, counts=_jsonable(counts))

    per_cause = result.per_cause if run_id is None else result.per_cause.assign(run_id=run_id)
    with outputs.together():  # metrics.json never sums up another per_cause.csv
        outputs.write_text(run_dir / PER_CAUSE_FILE, per_cause.to_csv(index=False))
        outputs.write_json(run_dir / METRICS_FILE, result.to_dict(), run_id=run_id)
    return result


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _check_inputs(
    clusters: Sequence[int] | np.ndarray, root_causes: Sequence[str] | np.ndarray, min_purity: float
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(min_purity, bool) or not isinstance(min_purity, (int, float)) or not 0 <= min_purity <= 1:
        raise SpecError(
            f"The 'min_purity' parameter of evaluate must be a number in [0, 1]. Got {min_purity!r} instead."
        )
    labels = np.asarray(clusters)
    causes = np.asarray(root_causes, dtype=object)
    if labels.ndim != 1 or causes.ndim != 1:
        raise SpecError(
            f"clusters and root_causes must be 1-D, one value per image. Got shapes {labels.shape} "
            f"and {causes.shape}."
        )
    if len(labels) != len(causes):
        raise SpecError(
            f"clusters has {len(labels)} values but root_causes has {len(causes)}; "
            "pass one cluster id and one root cause per image."
        )
    if len(labels) == 0:
        raise TooFewImagesError("Nothing to evaluate: clusters and root_causes are empty.")
    if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise SpecError(f"clusters must hold integer cluster ids (-1 = noise). Got dtype {labels.dtype}.")
    labels = labels.astype(np.int64, copy=False)
    if labels.min() < NOISE:
        raise SpecError(
            f"clusters must hold ids >= 0, or -1 for noise. Got {int(labels.min())} "
            f"({int((labels < NOISE).sum())} value(s) below -1)."
        )
    missing = pd.isna(causes)
    if missing.any():
        where = np.flatnonzero(missing)
        raise SpecError(
            f"root_causes has {len(where)} missing value(s) (first at position {int(where[0])}). "
            "Leave images with an unknown cause out of the evaluation."
        )
    return labels, causes.astype(str)


def _agreement(causes: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """ARI and NMI (arithmetic mean normalisation) of cluster labels against root causes."""
    ari = adjusted_rand_score(causes, labels)
    nmi = normalized_mutual_info_score(causes, labels, average_method="arithmetic")
    return float(ari), float(nmi)


def _jsonable(value: Any) -> Any:
    """Plain Python types for json: numpy scalars unboxed, NaN/inf -> None, containers recursed."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or value is pd.NA:
        return None
    return value if isinstance(value, str) else str(value)


