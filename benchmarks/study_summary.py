"""Summarise pipeline studies for benchmarks/RESULTS.md.

    python benchmarks/study_summary.py runs/study-mnist-rc runs/study-shapes-sim [--top 15]

For each study folder (written by ``rca-gpu study``): the top of the ranking, the best pipeline of each
feature set, the averages per reducer and per clusterer, and where the paper's best pipeline
(transfer learning + UMAP + DBSCAN, here ``mobilenet_v2+umap+dbscan``) ranks. Prints Markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

COLUMNS = {
    "rank": "rank",
    "pipeline": "pipeline",
    "study_score": "score",
    "weighted_purity": "purity (w)",
    "coverage": "coverage",
    "coverage_injected": "coverage (injected)",
    "n_clusters": "clusters",
    "noise_share": "noise",
    "ari_with_noise": "ARI",
}
PAPER_BEST = "mobilenet_v2+umap+dbscan"


def _table(frame: pd.DataFrame) -> str:
    shown = frame[list(COLUMNS)].rename(columns=COLUMNS).copy()
    shown["pipeline"] = "`" + shown["pipeline"] + "`"
    return shown.to_markdown(index=False, floatfmt=".3f")


def summarise(folder: Path, top: int) -> str:
    table = pd.read_parquet(folder / "study.parquet")
    ok = table[table["status"] == "ok"].copy()
    lines = [f"### {folder.name}: {len(ok)} of {len(table)} pipelines ran", ""]
    lines += [f"Top {top}:", "", _table(ok.head(top)), ""]
    best_per_features = ok.sort_values("rank").groupby("features", sort=False).head(1)
    lines += ["Best pipeline of each feature set:", "", _table(best_per_features), ""]
    for column in ("reducer", "clusterer"):
        means = ok.groupby(column)[["study_score", "weighted_purity", "coverage", "n_clusters", "noise_share"]]
        lines += [f"Mean over the pipelines of each {column}:", "",
                  means.mean().round(3).to_markdown(floatfmt=".3f"), ""]
    paper = ok[ok["pipeline"] == PAPER_BEST]
    if len(paper):
        row = paper.iloc[0]
        lines += [f"The paper's best pipeline, `{PAPER_BEST}`, ranks {int(row['rank'])} of {len(ok)}: score "
                  f"{row['study_score']:.3f}, weighted purity {row['weighted_purity']:.3f}, coverage "
                  f"{row['coverage']:.3f} (injected causes {row['coverage_injected']:.3f}), "
                  f"{int(row['n_clusters'])} clusters, noise {row['noise_share']:.3f}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("studies", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print("\n".join(summarise(folder, args.top) for folder in args.studies))


if __name__ == "__main__":
    main()
