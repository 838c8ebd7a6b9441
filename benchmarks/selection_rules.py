"""How well does automatic hyper-parameter selection pick, against the known root causes?

    python benchmarks/selection_rules.py BENCH/manifest.parquet --features mobilenet_v2 lrp ae \
        --out runs/selection-mnist-rc

For every (features x reducer x clusterer) pipeline it scores ALL candidate settings the search tries
(the same grids as rca_gpu.tuning) with the internal criterion and with the ground truth, then compares
which candidate each rule picks:

- ``max``: the candidate with the highest internal score (plain silhouette x (1 - noise));
- ``finest-peak``: rca_gpu's rule (:func:`rca_gpu.tuning.choose`);
- ``oracle``: the candidate with the best ground-truth study score (an upper bound no rule can see).

Writes ``trials.parquet`` (every candidate) and ``rules.md`` (mean ground-truth metrics per rule) to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd


def collect(manifest: Path, features: list[str], cache: Path, seed: int) -> pd.DataFrame:
    from rca_gpu.data.sources import load_source
    from rca_gpu.device import as_numpy, resolve_device
    from rca_gpu.evaluate import evaluate
    from rca_gpu.pipeline import compute_features, feature_graph
    from rca_gpu.progress import Reporter
    from rca_gpu.spec import build_run_spec, make_cluster, make_reduce
    from rca_gpu.tuning import (cached_reduce, embedding_graph_source, label_candidates, reducer_candidates,
                                validity)

    failures = load_source(manifest)
    device = resolve_device("cpu")
    rows = []
    for text in features:
        started = time.perf_counter()
        spec = build_run_spec(pipeline=f"{text}+umap+dbscan", device="cpu", workers=1, seed=seed)
        feats = compute_features(spec.pipeline.features, failures, spec, device, cache, Reporter(False))
        graph = feature_graph(feats, spec, make_reduce("umap"), device)
        causes = failures.table["root_cause"].astype(str).to_numpy()[feats.positions]
        for reducer in ("umap", "pca", "none"):
            for reduce_params in reducer_candidates(make_reduce(reducer), feats.matrix, seed=seed):
                embedding, _ = cached_reduce(feats.matrix, reducer, reduce_params, device, graph, seed, None)
                points = np.asarray(as_numpy(embedding), dtype=np.float32)
                graphs = embedding_graph_source(embedding, graph if reducer == "none" else None, device)
                for clusterer in ("dbscan", "hdbscan", "kmeans", "ward"):
                    cluster_spec = make_cluster(clusterer)
                    labelled, _ = label_candidates(embedding, cluster_spec, graphs, feats.n, device, seed)
                    for cluster_params, labels in labelled:
                        score, silhouette = validity(points, labels, seed=seed)
                        truth = evaluate(labels, causes).summary
                        rows.append({
                            "features": text, "reducer": reducer, "clusterer": clusterer,
                            "reduce_params": json.dumps(reduce_params), "cluster_params": json.dumps(cluster_params),
                            "n_clusters": truth["n_clusters"], "noise_share": truth["noise_share"], "score": score,
                            "silhouette": silhouette, "study_score": truth["study_score"],
                            "weighted_purity": truth["weighted_purity"], "coverage": truth["coverage"],
                            "coverage_injected": truth["coverage_injected"], "ari": truth["ari_with_noise"],
                        })
        print(f"{text}: {time.perf_counter() - started:.0f} s", flush=True)
    return pd.DataFrame(rows)


def compare(trials: pd.DataFrame) -> pd.DataFrame:
    from rca_gpu.tuning import Trial, choose

    picks = []
    for key, group in trials.groupby(["features", "reducer", "clusterer"], sort=True):
        group = group.reset_index(drop=True)
        as_trials = [Trial({}, {}, int(r.n_clusters), float(r.noise_share), r.silhouette, float(r.score))
                     for r in group.itertuples()]
        chosen = {
            "max": int(group["score"].idxmax()),
            "finest-peak": choose(as_trials),
            "oracle": int(group["study_score"].idxmax()),
        }
        for rule, index in chosen.items():
            row = group.loc[index]
            picks.append({"features": key[0], "reducer": key[1], "clusterer": key[2], "rule": rule,
                          **{c: row[c] for c in ("study_score", "weighted_purity", "coverage_injected", "ari",
                                                 "n_clusters", "noise_share")}})
    return pd.DataFrame(picks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--features", nargs="+", default=["mobilenet_v2", "lrp", "ae"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, help="features cache to reuse (e.g. a study's OUT/cache)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    trials_path = args.out / "trials.parquet"
    trials = pd.read_parquet(trials_path) if trials_path.exists() else collect(
        args.manifest, args.features, args.cache or args.out / "cache", args.seed)
    trials.to_parquet(trials_path)
    picks = compare(trials)
    summary = picks.groupby("rule")[["study_score", "weighted_purity", "coverage_injected", "ari", "n_clusters",
                                      "noise_share"]].mean().round(3)
    default = picks[(picks.features == "mobilenet_v2") & (picks.reducer == "umap") & (picks.clusterer == "dbscan")]
    text = [
        f"# Selection rules on {args.manifest} ({trials.groupby(['features', 'reducer', 'clusterer']).ngroups} "
        f"pipelines, {len(trials)} candidates)", "",
        "Mean over pipelines of the ground-truth metrics of the candidate each rule picks:", "",
        summary.to_markdown(), "",
        "The default pipeline (mobilenet_v2+umap+dbscan):", "",
        default.set_index("rule").drop(columns=["features", "reducer", "clusterer"]).round(3).to_markdown(), "",
    ]
    (args.out / "rules.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
