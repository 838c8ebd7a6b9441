"""Automatic hyper-parameter selection for the parameters a pipeline spec leaves open.

:func:`select` tries candidate settings (the reducer card's grid x the clusterer card's grid), scores each,
picks one by a named rule, and returns labels for every image, in four steps: :mod:`~rca_gpu.tuning.search`
(every candidate, labelled and scored), :func:`~rca_gpu.tuning.select.choose_candidate` (the rule),
:mod:`~rca_gpu.tuning.refine` (duplicates, merge and noise steps) and :mod:`~rca_gpu.tuning.extend` (from a
sample to every image). Its shape is stable for the estimator and the catalogue:
``select(features, graph, reduce_spec, cluster_spec, device, *, seed, progress, reduce_cache, criterion=None,
sample_size=SAMPLE_SIZE) -> Selection`` (``labels``, ``embedding``, ``reduce_params``, ``cluster_params``,
``trials``, ``to_dict()``). What the rules need to know of an algorithm they ask its card
(:mod:`rca_gpu.engine.cards`): its candidates, its granularity parameter, how its choice extends.

The score of a candidate (:func:`validity`, O(1) in n): silhouette on a seeded sample of at most 2,000
clustered images, in the space the clusterer saw, x (1 - noise share), minus 0.01 per cluster beyond 30;
-1 with fewer than two clusters.

The rules (``select=`` on any clusterer, rca_gpu.tuning.criteria):

- ``merged`` (default): the finest candidate with at most NOISE_CAP (10 %) noise scoring at least BAND (70 %)
  of the best (:func:`choose_base`), then the clusters that the kNN graph of the features does not separate
  merged and noise points placed by their neighbours (:mod:`rca_gpu.tuning.graph`: a cluster keeping fewer
  than half of its members' 15 nearest neighbours inside itself joins the one receiving most of them; two
  clusters join when more than 30 % of either one's neighbour edges lead into the other; an isolated cluster
  of 5 to 15 points, whose members' nearest neighbours are all members, is kept although it cannot hold 15
  neighbours; a noise point joins the cluster holding more than half of its neighbours);
- ``finest-peak``: the finest peak of the score over the number of clusters within BAND of the best (the
  former default), no merging;
- ``max``: the highest score, no merging;
- ``knee`` (Ward, the cards that list it): k at the knee of the within-cluster distance (HUDD's rule, via
  kneed).

A granularity the pipeline fixes (``k``, DBSCAN's ``eps``, HDBSCAN's ``min_cluster_size``; the card's
``granularity``) runs as set: the merge and noise steps are skipped unless ``select=merged`` is
written too, and the resolved pipeline writes ``select=merged`` whenever those steps changed the labels.

Why ``merged``, measured (benchmarks/selection_rules.py, DBSCAN on UMAP, three seeds each; RESULTS.md,
"Automatic selection"). Silhouette favours coarse partitions, so ``max`` merges look-alike causes: on mnist-rc
it returns 6 clusters for 8 causes (weighted purity 0.84, rotation and elastic warp in one cluster).
``finest-peak`` keeps such causes apart but over-splits clean structure (up to 27-28 clusters for 20
planted) and leaves 10-16 % of the images of mnist-rc and shapes-sim as noise. The finest low-noise
candidate is too fine on its own, but what it over-splits is what the kNN graph of the features does not
separate, so merging repairs it; the thresholds were chosen on these measurements. With ``merged``: 20
clusters for 20 planted (ARI 1.000) on every planted set and seed, one cluster for a single group, and 11-13
clusters for the 8 labels of mnist-rc with every injected cause covered (weighted purity 0.93-0.95).
On shapes-sim no rule reaches weighted purity 0.93 (means 0.89-0.92): in its MobileNetV2 features 90 % of the
images have more than half of their 15 nearest other images in their own cause, low contrast only 15 %.

Search cost (:mod:`rca_gpu.tuning.search`): DBSCAN searches two UMAP settings (n_neighbors 30, 10 components,
min_dist 0 or 0.1) instead of eight: the choice was the same with all eight on the planted sets and mnist-rc,
and on shapes-sim the two settings chose better (15 clusters covering every injected cause, against 19-23
clusters missing one cause on two seeds of three with all eight); the other clusterers keep the full grid
(K-means and Ward chose better with the 2-D settings on mnist-rc). Above ``sample_size`` (SAMPLE_SIZE, 5,000)
images the search runs on a seeded sample with the kNN graph of that sample, and the choice is extended to
every image (:mod:`rca_gpu.tuning.extend`), so the cost after extraction grows at most linearly: on planted
features the extension took 9 s at 10,000 images and 68 s at 160,000 (exponent 0.76), and the whole selection
took about 2 minutes at 160,000 on 2 shared cores.

Reproducibility: every random draw takes the run's seed; kNN distances are exact and independent of the thread
count (:func:`rca_gpu.engine.knn.exact_distances`), which made ``OMP_NUM_THREADS`` change the choice before.
umap-learn runs single-threaded when seeded: one fit on the 5,000-image sample took 17.1 s seeded and 14.2 s
unseeded on 2 cores, and only the seeded fits were identical twice.
"""

from __future__ import annotations

from rca_gpu.tuning.criteria import (
                                     BAND,
                                     CRITERIA,
                                     DEFAULT_CRITERION,
                                     FRAGMENT_PENALTY,
                                     MAX_CLUSTERS_SOFT,
                                     NOISE_CAP,
                                     SILHOUETTE_SAMPLE,
                                     Trial,
                                     choose,
                                     choose_base,
                                     choose_max,
                                     validity,
)
from rca_gpu.tuning.extend import place_all
from rca_gpu.tuning.graph import attach_noise, link_counts, merge_unseparated
from rca_gpu.tuning.search import (
                                     SAMPLE_SIZE,
                                     Search,
                                     cached_reduce,
                                     effective_k,
                                     embedding_graph_source,
                                     search,
                                     within_cluster_distance,
)
from rca_gpu.tuning.select import choose_candidate, criterion_of, select
from rca_gpu.tuning.selection import Selection

__all__ = [
    "BAND", "CRITERIA", "DEFAULT_CRITERION", "FRAGMENT_PENALTY", "MAX_CLUSTERS_SOFT", "NOISE_CAP", "SAMPLE_SIZE",
    "SILHOUETTE_SAMPLE", "Search", "Selection", "Trial", "attach_noise", "cached_reduce", "choose",
    "choose_base", "choose_candidate", "choose_max", "criterion_of", "effective_k", "embedding_graph_source",
    "link_counts", "merge_unseparated", "place_all", "search", "select", "validity", "within_cluster_distance",
]
