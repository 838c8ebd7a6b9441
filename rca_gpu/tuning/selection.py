"""What the automatic selection returns: the chosen setting, every image's label, every trial."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rca_gpu.engine.knn import KnnGraph
from rca_gpu.tuning.criteria import DEFAULT_CRITERION, Trial


@dataclass
class Extension:
    """The sample and each other image's nearest sample images in the features (sample-and-extend)."""

    sample: np.ndarray  # (s,) rows of the sample
    rest: np.ndarray  # (n - s,) the other rows
    indices: np.ndarray  # (n - s, k) nearest sample rows (positions within the sample)
    distances: np.ndarray  # (n - s, k)
    graph: KnnGraph  # of the sample


@dataclass
class Selection:
    """The chosen setting, the labels of every image, its embedding, and every trial.

    ``labels`` (n,) int64 (-1 = noise) and ``embedding`` (n, c) cover every input row. When the search ran
    on a sample, ``sample`` describes it (size, how the other images were assigned) and ``extension``
    holds what placing more points needs (see :func:`rca_gpu.tuning.extend.place_all`).
    """

    reduce_params: dict[str, Any]
    cluster_params: dict[str, Any]
    labels: np.ndarray
    embedding: Any
    reduce_info: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)
    criterion: str = DEFAULT_CRITERION
    seconds: dict[str, float] = field(default_factory=dict)
    merges: list[dict[str, Any]] = field(default_factory=list)
    noise_attached: int = 0
    sample: dict[str, Any] | None = None
    knn: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    #: said on the terminal and in run.json's "warnings": the clustering is not what the search normally gives
    #: (no cluster found; one cluster without a search)
    warning: str = ""
    #: the merge and noise steps of the 'merged' rule ran on the clusterer's labels
    merge_step: bool = False
    #: the merge step changed the clusterer's labels (the resolved pipeline then names select=merged)
    relabelled: bool = False
    #: nothing was searched (fewer than MIN_DISTINCT distinct images): no setting to re-run
    searched: bool = True
    extension: Extension | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion,
            "chosen": {"reduce": self.reduce_params, "cluster": self.cluster_params},
            "merges": self.merges,
            "noise_attached": self.noise_attached,
            "sample": self.sample,
            "note": self.note,
            "n_trials": len(self.trials),
            "trials": [t.to_dict() for t in self.trials],
        }
