"""The tables of benchmarks/RESULTS.md, section 7, from ``benchmarks/representations.py``'s results.parquet.

    python benchmarks/representation_summary.py runs/representations/results.parquet

Per benchmark, one row per representation: clusters, weighted purity, coverage of the injected causes, noise,
ARI (noise as a label of its own), the study score, and the targets that concern the benchmark:

* every benchmark: clusters <= 1.3 x injected causes, weighted purity >= 0.95, injected coverage 1.0, noise
  <= 5 %, ARI >= 0.8;
* mnist-spread: the fewest clusters that together hold >= 90 % of the spread cause (target <= 2);
* mnist-pairs: per pair, whether each cause's dominant cluster is >= 0.9 pure (then the two differ).

Then the mean over the benchmarks per representation, and two unsupervised criteria that could pick the
representation per benchmark (the highest silhouette of the chosen clustering in its embedding; the highest
mean ARI with the other representations' clusterings) against the fixed best.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

PAIRS = (("rotated_left", "rotated_right"), ("shifted_left", "shifted_right"), ("band_top", "band_bottom"))
SPREAD = "low_resolution"


def causes_of(benchmark: str, bench: str) -> np.ndarray:
    """The root cause of each usable image, in the order of the results' labels (no image is rejected in the
    benchmarks, so the positions are 0..n-1)."""
    return pd.read_parquet(f"{bench}/{benchmark}/manifest.parquet", columns=["root_cause"])["root_cause"].astype(
        str).to_numpy()


def clusters_holding(labels: np.ndarray, share: float = 0.9) -> int:
    """The fewest clusters (noise counts against) that together hold ``share`` of ``labels``; 0 if none can."""
    counts = np.sort(np.bincount(labels[labels >= 0]))[::-1] if (labels >= 0).any() else np.zeros(0, int)
    need = share * len(labels)
    return int(np.searchsorted(np.cumsum(counts), need) + 1) if counts.sum() >= need else 0


def dominant_purity(labels: np.ndarray, causes: np.ndarray, cause: str) -> tuple[int, float]:
    mine = labels[(causes == cause) & (labels >= 0)]
    if not len(mine):
        return -1, 0.0
    cluster = int(np.bincount(mine).argmax())
    return cluster, float((causes[labels == cluster] == cause).mean())


def checks(row: pd.Series, causes: np.ndarray) -> dict:
    labels = np.asarray(row["labels"])
    injected = len(set(causes) - {"none"})
    out = {"clusters": row["n_clusters"], "purity": row["weighted_purity"], "coverage": row["coverage_injected"],
           "noise": row["noise_share"], "ARI": row["ari_with_noise"], "score": row["study_score"]}
    met = [out["clusters"] <= 1.3 * injected, (out["purity"] or 0) >= 0.95, out["coverage"] == 1.0,
           out["noise"] <= 0.05, out["ARI"] >= 0.8]
    if SPREAD in causes:
        held = clusters_holding(labels[causes == SPREAD])
        out["spread: clusters for 90 %"] = held if held else "-"
        met.append(0 < held <= 2)
    for first, second in PAIRS:
        if first in causes and second in causes:
            (c1, p1), (c2, p2) = dominant_purity(labels, causes, first), dominant_purity(labels, causes, second)
            apart = c1 != c2 and min(p1, p2) >= 0.9
            out[f"{first.split('_')[0]} pair"] = f"{'apart' if apart else 'mixed'} {min(p1, p2):.2f}"
            met.append(apart)
    out["targets met"] = f"{sum(met)}/{len(met)}"
    out["all"] = all(met)
    return out


def main(path: str, bench: str = "bench") -> None:
    results = pd.read_parquet(path)
    tables = []
    for benchmark, group in results.groupby("benchmark", sort=False):
        causes = causes_of(benchmark, bench)
        rows = [{"representation": r["representation"], **checks(r, causes),
                 "bound": r.get("bound_ari_true_k"), "seconds": r["seconds_cluster"]} for _, r in group.iterrows()]
        table = pd.DataFrame(rows).sort_values("score", ascending=False)
        print(f"#### {benchmark} ({len(causes)} failures, {len(set(causes) - {'none'})} injected causes)\n")
        print(table.drop(columns=["all"]).to_markdown(index=False, floatfmt=".3f"))
        print()
        tables.append(table.assign(benchmark=benchmark))
        # unsupervised choice per benchmark
        labels = {r["representation"]: np.asarray(r["labels"]) for _, r in group.iterrows()}
        agreement = {a: np.mean([adjusted_rand_score(labels[a], labels[b]) for b in labels if b != a and "+" not in b])
                     for a in labels}
        silhouettes = dict(zip(group["representation"], group["silhouette"], strict=True))
        tables[-1]["agreement"] = tables[-1]["representation"].map(agreement)
        tables[-1]["silhouette"] = tables[-1]["representation"].map(silhouettes)
    joined = pd.concat(tables)
    other_stages = joined[joined["representation"].str.contains("+", regex=False)]
    joined = joined[~joined["representation"].str.contains("+", regex=False)]  # the default umap + dbscan
    everywhere = joined.groupby("representation")["benchmark"].nunique() == joined["benchmark"].nunique()
    joined = joined[joined["representation"].map(everywhere)]
    mean = joined.groupby("representation", sort=False).agg(
        score=("score", "mean"), ARI=("ARI", "mean"), min_ARI=("ARI", "min"), purity=("purity", "mean"),
        coverage=("coverage", "mean"), noise=("noise", "mean"), clusters=("clusters", "mean"),
        benchmarks_all_targets=("all", "sum"), seconds=("seconds", "mean"),
    ).sort_values("score", ascending=False)
    print(f"#### Mean over the {joined['benchmark'].nunique()} benchmarks (umap + dbscan; representations run on "
          "every benchmark)\n")
    print(mean.reset_index().to_markdown(index=False, floatfmt=".3f"))
    print()
    best = mean.index[0]
    print("#### Choosing the representation per benchmark without the causes\n")
    lines = []
    for benchmark, table in joined.groupby("benchmark", sort=False):
        table = table.reset_index(drop=True)
        has_silhouette = table["silhouette"].notna().any()
        by_silhouette = table.loc[table["silhouette"].fillna(-1).idxmax()] if has_silhouette else None
        by_agreement = table.loc[table["agreement"].idxmax()]
        fixed = table[table["representation"] == best].iloc[0]
        lines.append({"benchmark": benchmark, f"fixed ({best}) ARI": fixed["ARI"],
                      "highest silhouette": by_silhouette["representation"] if by_silhouette is not None else "-",
                      "its ARI": by_silhouette["ARI"] if by_silhouette is not None else None,
                      "highest agreement": by_agreement["representation"], "its ARI ": by_agreement["ARI"]})
    print(pd.DataFrame(lines).to_markdown(index=False, floatfmt=".3f"))
    if len(other_stages):
        print("\n#### Other reducers and clusterers on the same representations\n")
        print(other_stages[["benchmark", "representation", "clusters", "purity", "coverage", "noise", "ARI",
                            "targets met", "seconds"]].to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main(*sys.argv[1:])
