"""Cheaper stability against full clusterboot: agreement of per-cluster stability, and the seconds of each.

    python benchmarks/stability_agreement.py --out runs/stability-agreement

For each data set the default pipeline's selection runs once (umap + dbscan, rule "merged"); then the
stability of its clusters is scored (:func:`rca_gpu.catalogue.stability.run_stability`, B resamples of 80 %)
by:

- ``full``: Hennig's clusterboot as the run did before: every resample refits UMAP from scratch on its images
  (resamples drawn from all images, or a seeded 10,000 of them);
- ``full, seed 1``: the same with another seed: how far two full runs agree with each other (the ceiling);
- ``search sample + refit``: resamples drawn from the search's sample (runs above 5,000 images), reusing the
  sample's kNN graph;
- ``warm E``: the same resamples, UMAP started from the run's positions of the resample's images with E
  epochs of layout optimisation;
- ``embedding``: the same resamples, re-clustering the resample's rows of the chosen embedding (no UMAP).

Agreement with ``full``: Pearson and Spearman correlation of per-cluster stability, the share of clusters on
which the unstable flag (stability < 0.6) agrees, and the mean absolute difference. Data: planted features
(rca_gpu.datasets.planted) with look-alike groups so that some clusters are unstable, and the demo's
MobileNetV2 features of mnist-rc (1,500 failures; built and extracted once into ``--cache``, as
benchmarks/selection_vs_reference.py does). Writes ``results.json`` and ``results.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np


def selection_of(x: np.ndarray, seed: int = 0):
    """The default pipeline's selection on ``x`` and its ordered labels, as ``rca-gpu run`` makes them."""
    from types import SimpleNamespace

    from rca_gpu.engine.device import resolve_device
    from rca_gpu.pipeline import feature_graph, order_labels
    from rca_gpu.spec import DEFAULT_PIPELINE, build_run_spec
    from rca_gpu.tuning import select

    spec = build_run_spec(pipeline=DEFAULT_PIPELINE, device="cpu", seed=seed)
    device = resolve_device("cpu")
    graph = feature_graph(SimpleNamespace(matrix=x, n=len(x)), spec, spec.pipeline.reduce, device)
    started = time.perf_counter()
    selection = select(x, graph, spec.pipeline.reduce, spec.pipeline.cluster, device, seed=seed,
                       sample_size=spec.sample_size)
    return spec, device, graph, selection, order_labels(selection.labels), time.perf_counter() - started


def stability_of(x, graph, labels, selection, device, *, method: str, resamples: int, seed: int = 0,
                 on_sample: bool = False, epochs: int = 0):
    from rca_gpu.catalogue.stability import run_stability

    ext = selection.extension
    started = time.perf_counter()
    result = run_stability(
        x, graph, labels, reduce_name="umap", reduce_params=dict(selection.reduce_params), cluster_name="dbscan",
        cluster_params=dict(selection.cluster_params), chosen_embedding=selection.embedding, device=device,
        seed=seed, resamples=resamples, merge_step=selection.merge_step, method=method, warm_epochs=epochs,
        search_sample=(ext.sample, ext.graph) if on_sample and ext is not None else None,
    )
    return result.table["stability"].to_numpy(), time.perf_counter() - started


def agreement(reference: np.ndarray, other: np.ndarray, below: float = 0.6) -> dict:
    from scipy.stats import pearsonr, spearmanr

    ok = np.isfinite(reference) & np.isfinite(other)
    a, b = reference[ok], other[ok]
    constant = np.ptp(a) == 0 or np.ptp(b) == 0
    return {
        "pearson": None if constant else round(float(pearsonr(a, b)[0]), 3),
        "spearman": None if constant else round(float(spearmanr(a, b)[0]), 3),
        "flags_agree": round(float(np.mean((a < below) == (b < below))), 3),
        "flags": f"{int((a < below).sum())} / {int((b < below).sum())}",
        "mean_abs_diff": round(float(np.mean(np.abs(a - b))), 3),
    }


def data_sets(names: list[str], cache: Path):
    from rca_gpu.datasets.planted import planted_features

    for name in names:
        if name.startswith("planted-"):
            n = int(name.split("-")[1])
            # six look-alike groups and a wide spread: some clusters are unstable
            x, _ = planted_features(n, dims=128, look_alike=6, look_alike_cosine=0.9, spread=2.5, seed=0)
            yield name, x
        else:
            from selection_vs_reference import benchmark_features

            yield name, benchmark_features(name, cache)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="*", default=["planted-3000", "planted-10000", "mnist-rc"])
    parser.add_argument("--resamples", type=int, default=10)
    parser.add_argument("--epochs", type=int, nargs="*", default=[30, 100])
    parser.add_argument("--cache", type=Path, default=Path("runs/bench-cache"))
    parser.add_argument("--out", type=Path, default=Path("runs/stability-agreement"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, x in data_sets(args.data, args.cache):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, device, graph, selection, labels, search_seconds = selection_of(x)
            sampled = selection.extension is not None
            variants = [("full", dict(method="refit")), ("full, seed 1", dict(method="refit", seed=1))]
            if sampled:
                variants.append(("search sample + refit", dict(method="refit", on_sample=True)))
            variants += [(f"warm {e}", dict(method="warm", epochs=e, on_sample=True)) for e in args.epochs]
            variants.append(("embedding", dict(method="embedding", on_sample=True)))
            reference = None
            for label, options in variants:
                values, seconds = stability_of(x, graph, labels, selection, device, resamples=args.resamples,
                                               **options)
                reference = values if reference is None else reference
                row = {"data": name, "n": len(x), "clusters": int(labels.max() + 1), "variant": label,
                       "seconds": round(seconds, 1), "search_seconds": round(search_seconds, 1),
                       **agreement(reference, values), "stability": [round(float(v), 3) for v in values]}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "stability"}), flush=True)
                (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    lines = [f"B = {args.resamples} resamples of 80 %; agreement with `full` on the same data", "",
             "| data | n | clusters | variant | seconds | search seconds | Pearson | Spearman | unstable flags agree "
             "| unstable (full / variant) | mean abs diff |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['data']} | {r['n']:,} | {r['clusters']} | {r['variant']} | {r['seconds']} | "
                     f"{r['search_seconds']} | {r['pearson']} | {r['spearman']} | {r['flags_agree']} | {r['flags']} "
                     f"| {r['mean_abs_diff']} |")
    text = "\n".join(lines) + "\n"
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
