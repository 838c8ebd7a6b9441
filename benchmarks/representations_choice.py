"""Can a criterion that does not know the causes choose the pipeline per data set? Candidates: the default
``mobilenet_v2(center=auto,pool=grid2)+umap+dbscan`` and its twins (``pool=grid2`` without centring; each with
``pca+hdbscan``), all clustered by benchmarks/representations.py; each criterion picks one candidate per
benchmark from the labels and the features alone, and its pick is scored against the causes.

    python benchmarks/representations_choice.py --results runs/representations --maps runs/maps

``--results`` is the ``--out`` folder of benchmarks/representations.py (OUT/NAME/results*.parquet hold each
candidate's labels); ``--maps`` the 7 x 7 maps that script clustered (its ``--maps``). ``center=label`` is
what ``center=auto`` does on every benchmark (they all have a ``label`` column).

Criteria (none reads ``root_cause``):

* ``silhouette``: the silhouette (Euclidean) of the clustered images in one space common to all candidates,
  the L2-normalised 2 x 2 grid of the last map (``mobilenet_v2(pool=grid2)``), noise left out;
* ``silhouette, noise as a cluster``: the same with the noise as one more cluster;
* ``agreement``: the mean ARI (noise as a label) between the candidate's labels and the other candidates';
* ``clusters >= 3``: ``pca+hdbscan`` where it finds at least 3 clusters, else the default (a rule read off
  these benchmarks, hence no evidence for data sets beyond them);
* ``knn consistency``: the share of each image's 15 nearest neighbours in the common space that share its
  cluster (noise counts as a cluster); a local criterion, yet one that favours few clusters too (one cluster
  scores 1).

With ``--bench`` (the benchmarks' folder), also the bound of RESULTS.md's last table: how well the causes can be
told apart in the common space when the truth is known, the ARI between the causes and the cross-validated
predictions of a linear probe (PCA to 100 dimensions, then a logistic regression; 5 stratified folds, seed 0).

Writes OUT/choice.parquet (benchmark x candidate: ARI, score, clusters and every criterion) and prints the
tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

BENCHMARKS = ("mnist-rc", "shapes-sim", "mnist-pairs", "mnist-spread", "digits-real")
DEFAULT = "mobilenet_v2(center=label,pool=grid2)"
HDBSCAN = "mobilenet_v2(pool=grid2)+pca+hdbscan"
CANDIDATES = (DEFAULT, "mobilenet_v2(pool=grid2)", HDBSCAN, "mobilenet_v2(center=label,pool=grid2)+pca+hdbscan")
NEIGHBOURS = 15


def common_space(maps_file: Path) -> np.ndarray:
    """(n, 5120) float32: the L2-normalised 2 x 2 adaptive average of the (n, 1280, 7, 7) maps."""
    import torch

    maps = torch.from_numpy(np.load(maps_file)).view(-1, 1280, 7, 7)
    return torch.nn.functional.normalize(torch.nn.functional.adaptive_avg_pool2d(maps, 2).flatten(1),
                                         dim=1).numpy()


def silhouette(space: np.ndarray, labels: np.ndarray, noise_as_cluster: bool) -> float:
    from sklearn.metrics import silhouette_score

    keep = np.ones(len(labels), bool) if noise_as_cluster else labels >= 0
    if len(np.unique(labels[keep])) < 2:
        return -1.0
    return float(silhouette_score(space[keep], labels[keep]))


def knn_consistency(neighbours: np.ndarray, labels: np.ndarray) -> float:
    return float((labels[neighbours] == labels[:, None]).mean())


def nearest(space: np.ndarray, k: int) -> np.ndarray:
    import torch

    points = torch.from_numpy(space)
    distances = torch.cdist(points, points)
    distances.fill_diagonal_(float("inf"))
    return distances.topk(k, largest=False).indices.numpy()


def probe(space: np.ndarray, causes: np.ndarray, seed: int = 0) -> float:
    """ARI between ``causes`` and a linear probe's cross-validated predictions from ``space`` (the bound)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import adjusted_rand_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(PCA(100, random_state=seed), LogisticRegression(max_iter=2000))
    found = cross_val_predict(model, space, causes, cv=StratifiedKFold(5, shuffle=True, random_state=seed))
    return float(adjusted_rand_score(causes, found))


def criteria(name: str, results: Path, maps: Path, bench: Path | None = None) -> list[dict]:
    from sklearn.metrics import adjusted_rand_score

    frames = [pd.read_parquet(f) for f in sorted((results / name).glob("results*.parquet"))]
    table = pd.concat(frames).drop_duplicates("representation", keep="last").set_index("representation")
    needed = [c for c in (DEFAULT, HDBSCAN) if c not in table.index]
    if needed:
        raise SystemExit(f"{results / name} lacks {needed}: run benchmarks/representations.py for them first")
    present = [c for c in CANDIDATES if c in table.index]
    space = common_space(maps / f"{name}.npy")
    neighbours = nearest(space, NEIGHBOURS)
    labels = {c: np.asarray(table.loc[c, "labels"]) for c in present}
    bound = None
    if bench is not None:
        causes = pd.read_parquet(bench / name / "manifest.parquet", columns=["root_cause"])["root_cause"]
        bound = probe(space, causes.astype(str).to_numpy())
    rows = []
    for candidate in present:
        mine = labels[candidate]
        rows.append({
            "benchmark": name, "candidate": candidate, "clusters": int(table.loc[candidate, "n_clusters"]),
            "ARI": float(table.loc[candidate, "ari_with_noise"]), "score": float(table.loc[candidate, "study_score"]),
            "silhouette": silhouette(space, mine, noise_as_cluster=False),
            "silhouette, noise as a cluster": silhouette(space, mine, noise_as_cluster=True),
            "agreement": float(np.mean([adjusted_rand_score(mine, labels[o]) for o in present if o != candidate])),
            "knn consistency": knn_consistency(neighbours, mine), "bound: linear probe ARI": bound,
        })
    return rows


def pick(rows: pd.DataFrame, criterion: str) -> str:
    """The candidate a criterion picks on one benchmark's rows."""
    if criterion == "clusters >= 3":
        return HDBSCAN if rows.set_index("candidate").loc[HDBSCAN, "clusters"] >= 3 else DEFAULT
    return str(rows.loc[rows[criterion].idxmax(), "candidate"])


CRITERIA = ("silhouette", "silhouette, noise as a cluster", "agreement", "knn consistency", "clusters >= 3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--maps", type=Path, required=True)
    parser.add_argument("--bench", type=Path, help="the benchmarks' folder: adds the linear probe's bound")
    parser.add_argument("--benchmarks", nargs="*", default=list(BENCHMARKS))
    args = parser.parse_args()
    table = pd.DataFrame([row for name in args.benchmarks
                          for row in criteria(name, args.results, args.maps, args.bench)])
    table.to_parquet(args.results / "choice.parquet")
    pd.set_option("display.width", 250)
    print(table.round(3).to_markdown(index=False))
    picks = []
    for name, rows in table.groupby("benchmark", sort=False):
        rows = rows.reset_index(drop=True)
        by = rows.set_index("candidate")
        line = {"benchmark": name, "default ARI": by.loc[DEFAULT, "ARI"],
                "best ARI": rows["ARI"].max(), "best": rows.loc[rows["ARI"].idxmax(), "candidate"],
                "bound": rows["bound: linear probe ARI"].iloc[0]}
        for criterion in CRITERIA:
            chosen = pick(rows, criterion)
            line[criterion] = f"{by.loc[chosen, 'ARI']:.3f} ({chosen})"
            line[criterion + " ARI"] = by.loc[chosen, "ARI"]
        picks.append(line)
    picks = pd.DataFrame(picks)
    print()
    shown = picks[["benchmark", "default ARI", "best ARI", "best", *CRITERIA, "bound"]]
    print(shown.to_markdown(index=False, floatfmt=".3f"))
    print()
    means = {"default": picks["default ARI"].mean(), "best per benchmark": picks["best ARI"].mean(),
             **{c: picks[c + " ARI"].mean() for c in CRITERIA}}
    worst = {c: (picks[c + " ARI"] - picks["default ARI"]).min() for c in CRITERIA}
    print(pd.DataFrame({"mean ARI": means, "worst gain over the default": worst}).to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
