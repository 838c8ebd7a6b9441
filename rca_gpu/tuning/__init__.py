"""Automatic hyper-parameter selection for the parameters a pipeline spec leaves open.

MEASUREMENTS-PLACEHOLDER
"""

from __future__ import annotations

from rca_gpu.tuning.criteria import (BAND, CRITERIA, DEFAULT_CRITERION, FRAGMENT_PENALTY, MAX_CLUSTERS_SOFT,
                                     NOISE_CAP, SILHOUETTE_SAMPLE, Trial, choose, choose_base, choose_max, validity)
from rca_gpu.tuning.graph import attach_noise, link_counts, merge_unseparated
from rca_gpu.tuning.search import (DBSCAN_EPS_QUANTILES, DBSCAN_MIN_SAMPLES, HDBSCAN_MIN_CLUSTER_SIZES,
                                   MIN_MEAN_CLUSTER_SIZE, PCA_MAX_COMPONENTS, PCA_VARIANCE, SAMPLE_SIZE, UMAP_GRID,
                                   UMAP_GRID_DBSCAN, Selection, cached_reduce, cluster_candidates, criterion_of,
                                   effective_k, embedding_graph_source, label_candidates, pca_components,
                                   place_in_umap, reducer_candidates, select, unite_duplicates,
                                   within_cluster_distance)


__all__ = [
    "BAND", "CRITERIA", "DBSCAN_EPS_QUANTILES", "DBSCAN_MIN_SAMPLES", "DEFAULT_CRITERION", "FRAGMENT_PENALTY",
    "HDBSCAN_MIN_CLUSTER_SIZES", "MAX_CLUSTERS_SOFT", "MIN_MEAN_CLUSTER_SIZE", "NOISE_CAP", "PCA_MAX_COMPONENTS",
    "PCA_VARIANCE", "SAMPLE_SIZE", "SILHOUETTE_SAMPLE", "Selection", "Trial", "UMAP_GRID", "UMAP_GRID_DBSCAN",
    "attach_noise", "cached_reduce", "choose", "choose_base", "choose_max", "cluster_candidates", "criterion_of",
    "effective_k", "embedding_graph_source", "label_candidates", "link_counts", "merge_unseparated",
    "pca_components", "place_in_umap", "reducer_candidates", "select", "unite_duplicates", "validity",
    "within_cluster_distance",
]
