"""Open-set scores side by side on the runs of benchmarks/catalogue_assignment.py.

    python benchmarks/catalogue_assignment.py mnist-rc --out runs/catalogue-mnist-rc   # first: runs + features
    python benchmarks/open_set_scores.py mnist-rc --out runs/catalogue-mnist-rc

``rca-gpu assign`` calls a new image ``unknown`` when its distance to the nearest reference image of the cause
its neighbours vote for exceeds the catalogue's radius (:mod:`rca_gpu.catalogue.assign`). This script puts
that rule beside others computed from the same reference set (what a run stores) and, for each run of the
catalogue benchmark (the full run and one run per left-out cause), scores the seed-1 failures with them.

Calibrated rules (an unknown decision at each alpha; the vote, which cause, is the product's for all three):

- ``catalogue radius`` (the product): distance to the voted cause's nearest reference image, against one
  split-conformal radius for the catalogue (held-out nearest-reference distances of the reference images);
- ``per-cause radius``: HUDD's per-cluster radius, as rca-gpu had it before: mean distance to the 5 nearest
  reference images of the voted cause, against that cause's own split-conformal radius;
- ``global kNN-1``: distance to the nearest reference image of any cause, against the catalogue radius.

Other scores from the out-of-distribution literature, compared by how well they can separate at all (no
calibration needed for that):

- ``cosine kNN-1`` / ``cosine kNN-10``: distance to the 1st / 10th nearest reference image after L2
  normalisation of the features (Sun et al., "Out-of-distribution detection with deep nearest neighbors",
  ICML 2022);
- ``Mahalanobis``: smallest Mahalanobis distance to a cluster mean, one shared Ledoit-Wolf covariance of the
  reference images around their cluster means (Lee et al., NeurIPS 2018);
- ``LDA metric kNN-1``: nearest reference image after projecting on the discriminant directions of the run's
  clusters (shrinkage 0.1), a metric learned from the catalogue itself;
- ``LOF``: local outlier factor of the image among the reference images, 5 neighbours (Breunig et al. 2000);
- ``same-label kNN-1``: nearest reference image with the same ``label`` (the DNN's expected class), when both
  sets have that column.

Columns: the unknown share of the left-out cause's failures and of the known causes' failures (same
definitions as catalogue_assignment.py) for the calibrated rules; for every score, the AUC of left-out vs
known failures and the **bound**: the share of the left-out cause's failures above the known causes' 95th
percentile, that is the most any threshold on this score could call unknown while calling at most 5 % of the
known causes' failures unknown (a threshold chosen with the truth, so no rule reaches more).

Which cause (the vote), for the known causes' failures: accuracy (share landing in a cluster their cause
dominates, the unknown decision left aside) of the product's plurality vote of the 10 nearest reference
images beside the 1-nearest reference image, a vote weighted by inverse distance, and a class-balanced vote
(each vote divided by its cause's reference count, so a cause with few reference images is not outvoted by a
large neighbour).

Last, a separability check on the seed-0 failures: for each left-out cause and the cause that received most of
its failures, 5-fold cross-validated accuracy of a linear classifier (logistic regression on standardised
features) and of the 1-nearest-neighbour rule, both trained with the truth. When the linear classifier
separates the pair and 1-NN does not, the features hold the difference but not in their neighbourhoods, which
any distance-based open-set rule reads.

Reads the features from the benchmark's cache (--out/cache); writes ``open_set_scores.md`` to --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from catalogue_assignment import NONE, dominated

CALIBRATED = ("catalogue radius", "per-cause radius", "global kNN-1")
#: share of the known causes' failures a threshold may call unknown in the bound column
BOUND_FPR = 0.05


def _sorted_distances(a: np.ndarray, b: np.ndarray, k: int, *, exclude_self: bool = False) -> np.ndarray:
    """(len(a), k) float64 distances of each row of ``a`` to its k nearest rows of ``b``."""
    import torch

    d = torch.cdist(torch.from_numpy(a), torch.from_numpy(b))
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    return torch.topk(d, min(k, b.shape[0]), dim=1, largest=False).values.numpy()


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def literature_scores(x: np.ndarray, reference: np.ndarray, clusters: np.ndarray,
                      labels: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Open-set scores of the rows of ``x`` (n, d) against the reference images (N, d) of clusters (N,).

    Higher means farther from the catalogue. ``labels`` = (labels of x, labels of the reference images) or
    None. Methods and sources in the module docstring.
    """
    from sklearn.covariance import LedoitWolf
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.neighbors import LocalOutlierFactor

    unit_x, unit_ref = _unit(x), _unit(reference)
    scores = {"cosine kNN-1": _sorted_distances(unit_x, unit_ref, 1)[:, -1],
              "cosine kNN-10": _sorted_distances(unit_x, unit_ref, 10)[:, -1]}
    names, index = np.unique(clusters, return_inverse=True)
    means = np.stack([reference[clusters == c].mean(axis=0) for c in names])
    precision = LedoitWolf().fit(reference - means[index]).precision_
    scores["Mahalanobis"] = np.min([np.einsum("ij,jk,ik->i", x - m, precision, x - m) for m in means], axis=0)
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=0.1).fit(reference, clusters)
    scores["LDA metric kNN-1"] = _sorted_distances(lda.transform(x), lda.transform(reference), 1)[:, 0]
    scores["LOF"] = -LocalOutlierFactor(n_neighbors=5, novelty=True).fit(reference).score_samples(x)
    if labels is not None:
        x_labels, ref_labels = labels
        same = np.full(len(x), np.inf)
        for value in np.unique(x_labels):
            rows, refs = x_labels == value, ref_labels == value
            if refs.any():
                same[rows] = _sorted_distances(x[rows], reference[refs], 1)[:, 0]
        scores["same-label kNN-1"] = same
    return scores


def vote_accuracy(x: np.ndarray, reference: np.ndarray, codes: np.ndarray, cause_ids: np.ndarray,
                  product_vote: np.ndarray, correct) -> dict[str, np.ndarray]:
    """Per vote rule, (n,) bool: whether each row's voted cause is right (``correct(causes)`` decides)."""
    import torch

    d, nearest = torch.topk(torch.cdist(torch.from_numpy(x), torch.from_numpy(reference)), 10, dim=1,
                            largest=False)
    d, nearest = d.numpy(), nearest.numpy()
    voters = codes[nearest]
    sizes = np.bincount(codes, minlength=len(cause_ids))
    out = {"plurality of 10 (product)": correct(product_vote), "1-nearest": correct(cause_ids[voters[:, 0]])}
    for name, weight in (("inverse distance, 10", 1 / (d + 1e-9)), ("class-balanced, 10", 1 / sizes[voters])):
        tally = np.zeros((len(x), len(cause_ids)))
        np.add.at(tally, (np.repeat(np.arange(len(x)), voters.shape[1]), voters.ravel()), weight.ravel())
        out[name] = correct(cause_ids[tally.argmax(axis=1)])
    return out


def separability(x: np.ndarray, causes: np.ndarray, a: str, b: str) -> dict:
    """5-fold CV accuracy of logistic regression and of 1-NN telling cause ``a`` from ``b`` (truth known)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = np.isin(causes, [a, b])
    y = causes[rows] == a
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    linear = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    return {"pair": f"{a} / {b}", "images": int(rows.sum()),
            "linear": float(cross_val_score(linear, x[rows], y, cv=folds).mean()),
            "1-NN": float(cross_val_score(KNeighborsClassifier(1), x[rows], y, cv=folds).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["mnist-rc", "shapes-sim"])
    parser.add_argument("--out", type=Path, required=True, help="the --out of catalogue_assignment.py")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    args = parser.parse_args()

    from sklearn.metrics import roc_auc_score

    from rca_gpu.catalogue.assign import Assigner
    from rca_gpu.catalogue.causes import load_catalogue
    from rca_gpu.catalogue.reference import radius, read_reference
    from rca_gpu.data.sources import load_source
    from rca_gpu.engine.device import resolve_device
    from rca_gpu.features.compute import compute_features
    from rca_gpu.progress import Reporter
    from rca_gpu.spec import build_run_spec

    if not (args.out / "run" / "run.json").is_file():
        raise SystemExit(f"no finished catalogue benchmark in {args.out}: run catalogue_assignment.py first")
    spec = build_run_spec(device="cpu", workers=1, seed=0)

    def encoded(seed: str):
        source = load_source(args.out / "data" / seed / "manifest.parquet")
        features = compute_features(spec.pipeline.features, source, spec, resolve_device("cpu"),
                                    args.out / "cache", Reporter(enabled=False))
        return features.matrix.numpy().astype(np.float64), source.table.iloc[features.positions]

    x, new_table = encoded("seed1")
    new_causes = new_table["root_cause"].astype(str).to_numpy()
    runs = [args.out / "run", *sorted(args.out.glob("run-without-*"))]

    rows, receivers, votes = [], {}, []
    for run_dir in runs:
        left = run_dir.name.removeprefix("run-without-") if run_dir.name != "run" else None
        catalogue = load_catalogue(run_dir)
        stored = read_reference(catalogue.run)
        assigner = Assigner.from_catalogue(catalogue, stored)
        product = assigner.assign(x.astype(np.float32))
        owners = dominated(run_dir)
        is_known = np.isin(new_causes, sorted(c for c in owners if c not in (NONE, left)))
        is_left = new_causes == left
        reference = assigner.features.astype(np.float64)
        causes = assigner.causes
        voted = product["nearest_cause"].to_numpy()
        # per-cause radius: mean distance to the 5 nearest of the voted cause; radius from the same, held out
        per_cause = np.zeros(len(x))
        held_out_per_cause = {}
        for cause in np.unique(causes):
            members = reference[causes == cause]
            k = max(1, min(5, len(members) - 1))
            rows_of = voted == cause
            if rows_of.any():
                per_cause[rows_of] = _sorted_distances(x[rows_of], members, k).mean(axis=1)
            held_out_per_cause[cause] = (_sorted_distances(members, members, k, exclude_self=True).mean(axis=1)
                                         if len(members) > 1 else np.zeros(0))
        nearest_any = _sorted_distances(x, reference, 1)[:, 0]
        for alpha in args.alphas:
            assigner.alpha = alpha
            per_cause_radius = np.array([radius(held_out_per_cause[c], alpha) for c in voted])
            unknown = {
                "catalogue radius": (assigner.assign(x.astype(np.float32))["status"] == "unknown").to_numpy(),
                "per-cause radius": per_cause > per_cause_radius,
                "global kNN-1": nearest_any > assigner.radius,
            }
            for name, flagged in unknown.items():
                row = {"left_out": left or "-", "alpha": alpha, "score": name,
                       "unknown_known": float(flagged[is_known].mean())}
                if left:
                    row["unknown_left_out"] = float(flagged[is_left].mean())
                rows.append(row)
        cause_clusters = {c: root for root, cs in owners.items() for c in cs}
        codes = np.searchsorted(assigner.cause_ids, causes)
        for name, right in vote_accuracy(x, reference, codes, assigner.cause_ids, voted,
                                         lambda vote, cause_clusters=cause_clusters: np.array(
                [cause_clusters.get(int(c)) == root for c, root in zip(vote, new_causes, strict=True)])).items():
            votes.append({"left_out": left or "-", "vote": name, "accuracy": float(right[is_known].mean())})
        if not left:
            continue
        # which cause received most of the left-out cause's failures (for the separability check)
        went = pd.Series(product.loc[is_left & (product["status"] != "unknown"), "cause"].map(
            cause_clusters)).value_counts()
        if len(went):
            receivers[left] = str(went.index[0])
        labels = None
        if "label" in new_table.columns:
            run_table = pd.read_parquet(run_dir / "clusters.parquet", columns=["id", "label"]).set_index("id")
            labels = (new_table["label"].to_numpy(), run_table.loc[
                stored.ids[catalogue.cause_of(stored.ids) >= 0], "label"].to_numpy())
        scores = {"catalogue radius": product["distance"].to_numpy(), "per-cause radius": per_cause,
                  "global kNN-1": nearest_any, **literature_scores(x, reference, causes, labels)}
        truth = np.r_[np.ones(is_left.sum()), np.zeros(is_known.sum())]
        for name, values in scores.items():
            threshold = np.quantile(values[is_known], 1 - BOUND_FPR)
            rows.append({"left_out": left, "alpha": np.nan, "score": name,
                         "auc": float(roc_auc_score(truth, np.r_[values[is_left], values[is_known]])),
                         "bound": float((values[is_left] > threshold).mean())})
    table = pd.DataFrame(rows)
    order = list(dict.fromkeys(table["score"]))
    lines = [f"## open-set scores: {args.dataset} ({args.out})", ""]
    calibrated = table[table["alpha"].notna()]
    for value, title in (("unknown_left_out", "unknown share of the left-out cause"),
                         ("unknown_known", "unknown share of the known causes")):
        view = calibrated.pivot_table(index=["score", "alpha"], columns="left_out", values=value)
        lines += [f"{title}:", "", view.to_markdown(floatfmt=".3f"), ""]
    separation = table[table["alpha"].isna()]
    for value, title in (("auc", "AUC left-out vs known"),
                         ("bound", f"bound: share of the left-out cause above the known causes' "
                                   f"{1 - BOUND_FPR:.0%} quantile (threshold chosen with the truth)")):
        view = separation.pivot_table(index="score", columns="left_out", values=value).reindex(
            [s for s in order if s in set(separation["score"])])
        lines += [f"{title}:", "", view.to_markdown(floatfmt=".3f"), ""]
    view = pd.DataFrame(votes).pivot_table(index="vote", columns="left_out", values="accuracy")
    lines += ["vote accuracy on the known causes' failures (unknown decision left aside):", "",
              view.to_markdown(floatfmt=".3f"), ""]
    x0, old_table = encoded("seed0")
    old_causes = old_table["root_cause"].astype(str).to_numpy()
    pairs = pd.DataFrame([separability(x0, old_causes, left, to) for left, to in receivers.items()])
    lines += ["separability on the seed-0 failures (left-out cause / cause that received most of it; 5-fold CV "
              "accuracy, truth known):", "", pairs.to_markdown(index=False, floatfmt=".3f"), ""]
    text = "\n".join(lines)
    (args.out / "open_set_scores.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
