"""Open-set scores side by side on the runs of benchmarks/catalogue_assignment.py.

    python benchmarks/catalogue_assignment.py mnist-rc --out runs/catalogue-mnist-rc   # first: runs + features
    python benchmarks/open_set_scores.py mnist-rc --out runs/catalogue-mnist-rc

``rca-gpu assign`` calls a new image ``unknown`` when its distance to the nearest reference image of the cause
its neighbours vote for exceeds the catalogue's radius (:mod:`rca_gpu.catalogue.assign`). This script puts
that rule beside others computed from the same reference set (nothing else is stored in a run). For every run
of the catalogue benchmark (the full run and one run per left-out cause) and each alpha, it scores the seed-1
failures with:

- ``catalogue radius`` (the product): distance to the voted cause's nearest reference image, against one
  split-conformal radius for the catalogue (held-out nearest-reference distances of the reference images);
- ``per-cause radius``: HUDD's per-cluster radius, as rca-gpu had it before: mean distance to the 5 nearest
  reference images of the voted cause, against that cause's own split-conformal radius (the same distance
  held out on its reference images);
- ``global kNN-1``: distance to the nearest reference image of any cause, against the catalogue radius.

The vote (which cause) is the product's for all three; only the unknown decision differs. Columns: the
unknown share of the left-out cause's failures and of the known causes' failures (same definitions as
catalogue_assignment.py), and the AUC of each score (distance / radius) for left-out vs known.
Reads the features from the benchmark's cache (--out/cache); writes ``open_set_scores.md`` to --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from catalogue_assignment import NONE, dominated


def _sorted_distances(a: np.ndarray, b: np.ndarray, k: int, *, exclude_self: bool = False) -> np.ndarray:
    """(len(a), k) float64 distances of each row of ``a`` to its k nearest rows of ``b``."""
    import torch

    d = torch.cdist(torch.from_numpy(a), torch.from_numpy(b))
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    return torch.topk(d, k, dim=1, largest=False).values.numpy()


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
    from rca_gpu.device import resolve_device
    from rca_gpu.pipeline import compute_features
    from rca_gpu.progress import Reporter
    from rca_gpu.spec import build_run_spec

    spec = build_run_spec(device="cpu", workers=1, seed=0)
    new = load_source(args.out / "data" / "seed1" / "manifest.parquet")
    features = compute_features(spec.pipeline.features, new, spec, resolve_device("cpu"), args.out / "cache",
                                Reporter(enabled=False))
    x = features.matrix.numpy().astype(np.float64)
    new_causes = new.table["root_cause"].astype(str).to_numpy()[features.positions]
    runs = [args.out / "run", *sorted(args.out.glob("run-without-*"))]
    if not (args.out / "run" / "run.json").is_file():
        raise SystemExit(f"no finished catalogue benchmark in {args.out}: run catalogue_assignment.py first")

    rows = []
    for run_dir in runs:
        left = run_dir.name.removeprefix("run-without-") if run_dir.name != "run" else None
        catalogue = load_catalogue(run_dir)
        assigner = Assigner.from_catalogue(catalogue, read_reference(catalogue.run))
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
        scores = {"catalogue radius": product["distance"].to_numpy(), "per-cause radius": per_cause,
                  "global kNN-1": nearest_any}
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
                    ratio = scores[name] / (per_cause_radius if name == "per-cause radius" else assigner.radius)
                    labels = np.r_[np.ones(is_left.sum()), np.zeros(is_known.sum())]
                    row["unknown_left_out"] = float(flagged[is_left].mean())
                    row["auc"] = float(roc_auc_score(labels, np.r_[ratio[is_left], ratio[is_known]]))
                rows.append(row)
    table = pd.DataFrame(rows)
    lines = [f"## open-set scores: {args.dataset} ({args.out})", ""]
    for value, title in (("unknown_left_out", "unknown share of the left-out cause"),
                         ("unknown_known", "unknown share of the known causes"), ("auc", "AUC left-out vs known")):
        view = table.pivot_table(index=["score", "alpha"], columns="left_out", values=value)
        if value == "auc":
            view = view.xs(args.alphas[0], level="alpha")
        lines += [f"{title}:", "", view.to_markdown(floatfmt=".3f"), ""]
    text = "\n".join(lines)
    (args.out / "open_set_scores.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
