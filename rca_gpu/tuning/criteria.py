"""The internal score of one candidate partition, and the rules that choose among scored candidates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rca_gpu.engine.cards import MAX_CLUSTERS, SELECT_RULES

#: Silhouette is computed on at most this many clustered points (seeded sample): O(1) in n.
SILHOUETTE_SAMPLE = 2000
#: Beyond this many clusters every cluster costs FRAGMENT_PENALTY of the score.
MAX_CLUSTERS_SOFT = MAX_CLUSTERS
FRAGMENT_PENALTY = 0.01
#: Peaks of the score scoring at least BAND x the best score compete; the finest of them is chosen.
BAND = 0.7
#: The default rule considers only candidates that leave at most this share of the images as noise.
NOISE_CAP = 0.10

#: Named rules: "merged" (default), "finest-peak" and "max"; a card may add "knee" (its ``select_rules``).
CRITERIA = SELECT_RULES
DEFAULT_CRITERION = "merged"


@dataclass
class Trial:
    """One candidate setting: what it found and its internal score."""

    reduce: dict[str, Any]
    cluster: dict[str, Any]
    n_clusters: int
    noise_share: float
    silhouette: float | None
    score: float
    chosen: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "reduce": self.reduce,
            "cluster": self.cluster,
            "n_clusters": self.n_clusters,
            "noise_share": round(self.noise_share, 4),
            "silhouette": None if self.silhouette is None else round(self.silhouette, 4),
            "score": round(self.score, 4),
        }


def validity(points: Any, labels: np.ndarray, *, seed: int = 0) -> tuple[float, float | None]:
    """(score, silhouette) of ``labels`` (host int array, -1 = noise) on ``points`` (n, d), any array kind.

    score = silhouette on a seeded sample of at most SILHOUETTE_SAMPLE clustered points x (1 - noise share)
    - FRAGMENT_PENALTY per cluster beyond MAX_CLUSTERS_SOFT; -1 when fewer than two clusters. Only the
    sampled rows of ``points`` are copied to the host.
    """
    from sklearn.metrics import silhouette_score

    from rca_gpu.engine.device import as_numpy, take_rows

    n = len(labels)
    clustered = np.flatnonzero(labels >= 0)
    n_clusters = len(np.unique(labels[clustered]))
    noise_share = 1.0 - len(clustered) / n if n else 1.0
    if n_clusters < 2 or len(clustered) <= n_clusters:
        return -1.0, None
    rng = np.random.default_rng(seed)
    sample = clustered if len(clustered) <= SILHOUETTE_SAMPLE else np.sort(
        rng.choice(clustered, SILHOUETTE_SAMPLE, replace=False))
    sample_labels = labels[sample]
    if len(np.unique(sample_labels)) < 2:
        return -1.0, None
    rows = take_rows(points, sample)
    silhouette = float(silhouette_score(np.asarray(as_numpy(rows), dtype=np.float32), sample_labels))
    penalty = FRAGMENT_PENALTY * max(0, n_clusters - MAX_CLUSTERS_SOFT)
    return silhouette * (1.0 - noise_share) - penalty, silhouette


def band_floor(best_score: float) -> float:
    """Lowest score still in the band around the best one (only the best itself when nothing is valid)."""
    return BAND * best_score if best_score > 0 else best_score


def choose(trials: list[Trial]) -> int:
    """The "finest-peak" rule: index of the finest peak of the score within BAND of the best score.

    The envelope is the best score for each number of clusters (at most MAX_CLUSTERS_SOFT). A peak is a
    cluster count whose envelope value is at least that of the nearest counts tried below and above it.
    Of the peaks scoring at least BAND x the best score, the one with the most clusters wins, and within
    it the trial with the highest score (the earliest on ties).
    """
    best_score = max(t.score for t in trials)
    floor = band_floor(best_score)
    envelope: dict[int, float] = {}
    for t in trials:
        if t.n_clusters <= MAX_CLUSTERS_SOFT and t.score > -1.0:
            envelope[t.n_clusters] = max(envelope.get(t.n_clusters, -np.inf), t.score)
    counts = sorted(envelope)
    peaks = [
        k for i, k in enumerate(counts)
        if envelope[k] >= floor
        and (i == 0 or envelope[k] >= envelope[counts[i - 1]])
        and (i == len(counts) - 1 or envelope[k] >= envelope[counts[i + 1]])
    ]
    if not peaks:
        return choose_max(trials)
    k = max(peaks)
    return max((i for i, t in enumerate(trials) if t.n_clusters == k), key=lambda i: (trials[i].score, -i))


def choose_max(trials: list[Trial]) -> int:
    """The "max" rule: the trial with the highest score (the earliest on ties)."""
    return max(range(len(trials)), key=lambda i: (trials[i].score, -i))


def choose_base(trials: list[Trial]) -> int:
    """The partition the "merged" rule starts from: the finest trial that is nearly as good as the best.

    Among the trials that leave at most NOISE_CAP of the images as noise (all valid trials when none does),
    those scoring at least BAND x the best score compete; the one with the most clusters wins, then the
    higher score, then the earlier trial. Too fine is cheap here: the merge step that follows puts back
    together what the kNN graph does not separate (rca_gpu.tuning.graph), while too coarse cannot be undone.

    When no trial has two clusters (a homogeneous set), the trial with the least noise is taken; merging and
    attaching noise then finish the job.
    """
    valid = [i for i, t in enumerate(trials) if t.score > -1.0]
    if not valid:
        single = [i for i, t in enumerate(trials) if t.n_clusters >= 1]
        if not single:
            return 0
        return min(single, key=lambda i: (trials[i].noise_share, trials[i].n_clusters, i))
    eligible = [i for i in valid if trials[i].noise_share <= NOISE_CAP] or valid
    floor = band_floor(max(trials[i].score for i in eligible))
    return max((i for i in eligible if trials[i].score >= floor),
               key=lambda i: (trials[i].n_clusters, trials[i].score, -i))


def knee_k(ks: list[int], curve: list[float]) -> int:
    """The "knee" rule (HUDD's, via kneed): the number of clusters at the knee of the within-cluster distance
    ``curve`` over ``ks`` (convex, decreasing); the k of the lowest distance when there is no knee or fewer
    than three points."""
    from kneed import KneeLocator

    knee = KneeLocator(ks, curve, curve="convex", direction="decreasing").knee if len(ks) >= 3 else None
    return int(knee) if knee is not None else ks[int(np.argmin(curve))]
