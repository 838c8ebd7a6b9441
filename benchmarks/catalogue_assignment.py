"""How well are new failures assigned to the known causes of a run, and are unseen causes kept apart?

    python benchmarks/catalogue_assignment.py mnist-rc   --out runs/catalogue-mnist-rc
    python benchmarks/catalogue_assignment.py shapes-sim --out runs/catalogue-shapes-sim

Makes the benchmark twice (seed 0: the failures of the run; seed 1: new failures, other images, other
drawn parameters, its own DUT), unless --data holds them already. Then:

1. the run: the default pipeline (``rca-gpu run``'s, via :func:`rca_gpu.pipeline.cluster_and_write`, so
   its stability and reference set are written as usual) on the seed-0 failures;
2. assignment of every seed-1 failure to the run's catalogue, with the functions ``rca-gpu assign`` uses
   (:class:`rca_gpu.catalogue.assign.Assigner` on the run's reference set; the seed-1 features are encoded
   once by the run's extractor and reused);
3. for each injected cause L in turn (or those given with --leave-out): a run on the seed-0 failures
   without L (stability off, same pipeline), and the assignment of the seed-1 failures to it.

Figures (the cause ``none``, failures of unmodified inputs, is left out of every figure: it has no visual
cause and dominates no cluster):

- accuracy on known causes: among seed-1 failures whose root cause dominates at least one cluster of the
  run (is the majority of it), the share assigned to a cluster their cause dominates (unknown counts as
  wrong);
- unknown share of known causes: the share of those failures that come back ``unknown``;
- unknown share of the left-out cause: the share of seed-1 failures of L that come back ``unknown``;
- AUC left-out vs known: how well the open-set score (distance / radius of the nearest cause) ranks the
  left-out cause's failures above the known causes' failures, at any threshold (1 = fully separable).

Writes ``results.md`` and ``rows.parquet`` to --out; features are cached under --out/cache, and finished
runs in --out are reused (they are seeded), so scoring other alphas costs only the assignment.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

NONE = "none"


def _finished(run_dir: Path, spec) -> bool:
    """A finished run of this pipeline and stability setting is in ``run_dir``."""
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return False
    recorded = info.get("spec") or {}
    return recorded.get("pipeline") == str(spec.pipeline) and recorded.get("stability") == spec.stability


def make_or_open(name: str, folder: Path, seed: int, n: int) -> Path:
    from rca_gpu.datasets import make_dataset

    manifest = folder / "manifest.parquet"
    if manifest.is_file():
        return manifest
    return make_dataset(name, folder, n=n, seed=seed)


def subset(failures, features, keep: np.ndarray):
    """A FailureSet and Features restricted to the usable rows ``keep`` (positions into failures)."""
    import torch

    from rca_gpu.data.sources import FailureSet
    from rca_gpu.features.extract import Features

    rows = np.flatnonzero(np.isin(features.positions, keep))
    table = failures.table.iloc[features.positions[rows]].reset_index(drop=True)
    sub_failures = FailureSet(table=table, source=f"{failures.source} (subset)", kind=failures.kind)
    matrix = features.matrix[torch.as_tensor(rows)]
    return sub_failures, Features(matrix, np.arange(len(rows)), {}, dict(features.info))


def dominated(run_dir: Path) -> dict[str, set[int]]:
    """root cause -> clusters of the run in which it is the majority."""
    clusters = pd.read_parquet(run_dir / "clusters.parquet")
    clusters = clusters[clusters["cluster"] >= 0]
    out: dict[str, set[int]] = {}
    for cluster, group in clusters.groupby("cluster"):
        top = group["root_cause"].astype(str).value_counts().index[0]
        out.setdefault(top, set()).add(int(cluster))
    return out


def score(run_dir: Path, new_features, new_causes: np.ndarray, left_out: str | None, alpha: float) -> dict:
    from rca_gpu.catalogue.assign import Assigner
    from rca_gpu.catalogue.causes import load_catalogue
    from rca_gpu.catalogue.reference import read_reference

    catalogue = load_catalogue(run_dir)
    assigner = Assigner.from_catalogue(catalogue, read_reference(catalogue.run), alpha=alpha)
    result = assigner.assign(new_features.matrix)
    owners = dominated(run_dir)
    known = sorted(c for c in owners if c not in (NONE, left_out))
    is_known = np.isin(new_causes, known)
    correct = np.array([cause in owners.get(root, set())
                        for root, cause in zip(new_causes, result["cause"], strict=True)])
    unknown = (result["status"] == "unknown").to_numpy()
    row = {
        "left_out": left_out or "-",
        "alpha": alpha,
        "clusters": len(catalogue.causes),
        "known_causes": len(known),
        "causes_without_cluster": ", ".join(sorted(set(np.unique(new_causes)) - set(known) - {NONE, left_out}))
        or "-",
        "new_known": int(is_known.sum()),
        "accuracy_known": float(correct[is_known].mean()),
        "unknown_known": float(unknown[is_known].mean()),
    }
    if left_out:
        from sklearn.metrics import roc_auc_score

        mask = new_causes == left_out
        row["new_left_out"] = int(mask.sum())
        row["unknown_left_out"] = float(unknown[mask].mean())
        # how well distance / radius separates the left-out cause from the known ones at any threshold
        ratio = (result["distance"] / result["radius"]).to_numpy()
        labels = np.r_[np.ones(mask.sum()), np.zeros(is_known.sum())]
        row["auc_left_out_vs_known"] = float(roc_auc_score(labels, np.r_[ratio[mask], ratio[is_known]]))
        # where the left-out cause's images went when they were not called unknown
        assigned = result.loc[mask & ~unknown, "cause"].to_numpy()
        cluster_cause = {c: root for root, cs in owners.items() for c in cs}
        went = pd.Series([cluster_cause.get(int(c), "?") for c in assigned]).value_counts()
        row["left_out_assigned_to"] = ", ".join(f"{k} ({v})" for k, v in went.head(3).items()) or "-"
    per_cause = {
        root: (float(correct[new_causes == root].mean()), float(unknown[new_causes == root].mean()))
        for root in known
    }
    return row, per_cause


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["mnist-rc", "shapes-sim"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="folder with seed0/ and seed1/ (made when missing); "
                        "default OUT/data")
    parser.add_argument("--n", type=int, default=1500, help="failures per seed")
    parser.add_argument("--pipeline", default=None, help="default: rca-gpu run's default pipeline")
    parser.add_argument("--leave-out", nargs="*", default=None, help="causes to leave out, one run each "
                        "(default: every injected cause)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--alphas", type=float, nargs="+", default=None,
                        help="open-set alphas to score (default: the product's ALPHA, then 0.05)")
    args = parser.parse_args()

    import torch

    from rca_gpu.catalogue.reference import ALPHA
    from rca_gpu.data.sources import load_source
    from rca_gpu.engine.device import resolve_device
    from rca_gpu.features.compute import compute_features
    from rca_gpu.pipeline import cluster_and_write, feature_graph, library_versions
    from rca_gpu.progress import Reporter
    from rca_gpu.spec import build_run_spec

    data = args.data or args.out / "data"
    manifests = {seed: make_or_open(args.dataset, data / f"seed{seed}", seed, args.n) for seed in (0, 1)}
    spec = build_run_spec(pipeline=args.pipeline, device="cpu", workers=args.workers, seed=0)
    device = resolve_device("cpu")
    quiet = Reporter(enabled=False)
    failures = {seed: load_source(m) for seed, m in manifests.items()}
    started = time.perf_counter()
    features = {seed: compute_features(spec.pipeline.features, failures[seed], spec, device,
                                       args.out / "cache", quiet) for seed in (0, 1)}
    extraction = time.perf_counter() - started
    new_causes = failures[1].table["root_cause"].astype(str).to_numpy()[features[1].positions]
    old_causes = failures[0].table["root_cause"].astype(str).to_numpy()
    injected = [c for c in pd.unique(old_causes) if c != NONE]
    leave_out = injected if args.leave_out is None else args.leave_out

    alphas = args.alphas or [ALPHA, 0.05]
    rows, per_cause_rows, seconds, stability = [], [], {}, None
    for left in [None, *leave_out]:
        run_dir = args.out / ("run" if left is None else f"run-without-{left}")
        run_spec = spec if left is None else spec.replace(stability=0)
        if _finished(run_dir, run_spec):  # runs are seeded: a finished one is reused, only assignment reruns
            info = json.loads((run_dir / "run.json").read_text())
            seconds[left or "-"] = info["seconds"].get("total")
        else:
            keep = np.flatnonzero(old_causes != left) if left else failures[0].usable_positions
            run_failures, run_features = subset(failures[0], features[0], keep)
            graph = feature_graph(run_features, run_spec, run_spec.pipeline.reduce, device)
            result = cluster_and_write(run_spec, run_failures, run_features, graph, device, run_dir)
            seconds[left or "-"] = result.run_info["seconds"]["total"]
            info = result.run_info
        for alpha in alphas:
            row, per_cause = score(run_dir, features[1], new_causes, left, alpha)
            row["purity"] = (info.get("metrics") or {}).get("weighted_purity")
            row["noise"] = (info.get("metrics") or {}).get("noise_share")
            rows.append(row)
            if left is None and alpha == alphas[0]:
                per_cause_rows = [{"cause": c, "accuracy": a, "unknown": u} for c, (a, u) in per_cause.items()]
            print(row, flush=True)
        if left is None and (run_dir / "cluster_summary.parquet").is_file():
            stability = pd.read_parquet(run_dir / "cluster_summary.parquet")
            reduce_cluster = info["seconds"].get("reduce_cluster")
            stability_seconds = info["seconds"].get("stability")

    table = pd.DataFrame(rows)
    table = table.iloc[np.argsort(table["alpha"].map(alphas.index).to_numpy(), kind="stable")]  # by alpha
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(args.out / "rows.parquet")
    versions = library_versions()
    lines = [
        f"## catalogue assignment: {args.dataset}",
        "",
        f"- run: {spec.pipeline} on {len(failures[0])} seed-0 failures; new failures: {len(failures[1])} of "
        f"seed 1 ({int(np.isin(new_causes, injected).sum())} with an injected cause)",
        f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads (shared machine); torch "
        f"{versions.get('torch')}, umap-learn {versions.get('umap-learn')}, "
        f"scikit-learn {versions.get('scikit-learn')}",
        f"- extraction of both seeds {extraction:.0f} s (cached on re-runs); seconds per run (all stages after "
        f"extraction): {seconds}",
        "",
        f"Full run, per known cause, alpha {alphas[0]} (accuracy = assigned to a cluster the cause dominates):",
        "",
        pd.DataFrame(per_cause_rows).to_markdown(index=False, floatfmt=".3f"),
        "",
        "Full run (left_out '-') and one run per left-out cause, for each alpha:",
        "",
        table.to_markdown(index=False, floatfmt=".3f"),
        "",
    ]
    if stability is not None:
        lines += [f"Stability of the full run's clusters (mean best-match Jaccard) vs their purity; stability took "
                  f"{stability_seconds} s next to {reduce_cluster} s for reduce + cluster:", ""]
        clusters = pd.read_parquet(args.out / "run" / "clusters.parquet")
        clusters = clusters[clusters["cluster"] >= 0]
        purity = clusters.groupby("cluster")["root_cause"].agg(lambda s: s.value_counts(normalize=True).iloc[0])
        top = clusters.groupby("cluster")["root_cause"].agg(lambda s: s.value_counts().index[0])
        view = stability.assign(purity=stability["cluster"].map(purity), root_cause=stability["cluster"].map(top))
        lines += [view.to_markdown(index=False, floatfmt=".3f"), ""]
    text = "\n".join(lines)
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
