"""The whole default run against a paper-style reference script, side by side in one process.

    flock /work/coord/bench.lock python benchmarks/selection_vs_reference.py --out runs/selection-vs-reference

Two methods, on the same features, everything after feature extraction timed:

- ``reference``: what a careful script from the paper's era does: umap-learn with its defaults (it builds
  its own kNN graph; no seed, so it runs its parallel code paths), then scikit-learn DBSCAN over a grid of
  10 eps values (quantiles 0.1 ... 0.9 and 0.95 of each point's distance to its min_samples-th neighbour in
  the embedding) x min_samples 5 / 10 / 20, each scored by the exact silhouette of every image in the 2-D
  embedding (noise as a label of its own; quadratic in n), the highest score chosen. This reproduces the
  quality of the reference measured when the selection was first reviewed (20 clusters for 20 planted, ARI
  0.99, noise under 1 %). ``--reference-space features`` computes the silhouette in the feature space instead
  (slower still);
- ``rca-gpu``: the whole default ``rca-gpu run --features FILE.npy`` (rca_gpu.api.run: the kNN graph, the
  search, stability with its default resamples, the plot embedding, the outputs, the reference set and
  report.html), with the seconds of each stage from its run.json.

Data: planted features (rca_gpu.datasets.planted: 20 Gaussian clusters of unequal sizes in 1280 dims, unit
rows, rare clusters at 1 %, 1.5 % and 2 %) at ``--sizes`` (the reference only at ``--reference-sizes``: its
silhouette is quadratic), and, with ``--benchmarks``, MobileNetV2 features of the mnist-rc and shapes-sim
benchmarks (1,500 failures each, built and extracted once into ``--cache``). ``--repeat`` runs each pair
again (the order alternates), so that a ratio is read from measurements taken side by side.

Reported per row: seconds, clusters found vs planted clusters / causes, ARI with noise as its own label,
weighted purity, coverage of injected causes, the lowest recall of the rare planted clusters, noise share,
and for rca-gpu the stability resamples and the seconds per stage; then the whole-run ratio per size. Writes
``results.json`` and ``results.md`` to ``--out`` and prints the table with the load average seen.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np

import rca_gpu  # noqa: F401  # before umap: it sets numba's CPU target before anything compiles

REFERENCE_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
REFERENCE_MIN_SAMPLES = (5, 10, 20)
RARE = ("c17", "c18", "c19")  # the rare planted clusters (rca_gpu.datasets.planted puts them last)


def reference(x: np.ndarray, space: str = "embedding") -> np.ndarray:
    """Labels of the paper-style reference (see the module docstring); ``space``: where the silhouette of
    every image (noise as a label of its own) is computed, the 2-D "embedding" or the "features"."""
    import umap
    from sklearn.cluster import DBSCAN
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import NearestNeighbors

    embedding = umap.UMAP().fit_transform(x)
    distances, _ = NearestNeighbors(n_neighbors=max(REFERENCE_MIN_SAMPLES) + 1).fit(embedding).kneighbors(embedding)
    points = x if space == "features" else embedding
    best, best_labels = -np.inf, np.full(len(x), -1)
    for min_samples in REFERENCE_MIN_SAMPLES:
        for q in REFERENCE_QUANTILES:
            eps = float(np.quantile(distances[:, min_samples], q))
            labels = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(embedding)
            if len(np.unique(labels)) < 2:
                continue
            score = silhouette_score(points, labels)
            if score > best:
                best, best_labels = score, labels
    return best_labels


def rca_gpu_run(x: np.ndarray, work: Path, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Labels of the whole default ``rca-gpu run --features`` on ``x`` (written to ``work``/features.npy), and
    its run.json's choice, stability resamples and seconds per stage."""
    import shutil

    import pandas as pd

    from rca_gpu import api

    work.mkdir(parents=True, exist_ok=True)
    path = work / "features.npy"
    np.save(path, x)
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    result = api.run(features=path, out=out, device="cpu", seed=seed)
    clusters = pd.read_parquet(out / "clusters.parquet")
    labels = clusters["cluster"].to_numpy()
    info = result.run_info
    stability = (info.get("catalogue") or {}).get("stability") or {}
    chosen = {"reduce": info["tuning"]["chosen"]["reduce"], "cluster": info["tuning"]["chosen"]["cluster"],
              "resamples": stability.get("resamples"), "seconds": info["seconds"],
              "search_seconds": info["tuning"]["seconds"]}
    return labels, chosen


def score(labels: np.ndarray, causes: np.ndarray) -> dict:
    from rca_gpu.metrics import evaluate

    result = evaluate(labels, causes)
    summary = result.summary
    recall = result.per_cause.set_index("root_cause")["recall"]
    rare = [float(recall[c]) for c in RARE if c in recall.index]
    return {
        "clusters": int(summary["n_clusters"]), "causes": int(summary["n_causes"]),
        "ari": float(summary["ari_with_noise"]), "weighted_purity": summary["weighted_purity"],
        "coverage_injected": summary["coverage_injected"], "noise": float(summary["noise_share"]),
        "rare_recall_min": min(rare) if rare else None,
    }


def benchmark_features(name: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """MobileNetV2 features and root causes of a ground-truth benchmark (1,500 failures, seed 0)."""
    from rca_gpu.data.sources import load_source
    from rca_gpu.datasets import make_dataset
    from rca_gpu.engine.device import as_numpy, resolve_device
    from rca_gpu.features.compute import compute_features
    from rca_gpu.progress import Reporter
    from rca_gpu.spec import DEFAULT_PIPELINE, build_run_spec

    stored = cache / f"{name}-mobilenet_v2.npz"
    if stored.exists():
        data = np.load(stored, allow_pickle=False)
        return data["x"], data["causes"]
    manifest = cache / name / "manifest.parquet"
    if not manifest.exists():
        make_dataset(name, cache / name, n=1500, seed=0)
    failures = load_source(manifest)
    spec = build_run_spec(pipeline=DEFAULT_PIPELINE, device="cpu", workers=1, seed=0)
    features = compute_features(spec.pipeline.features, failures, spec, resolve_device("cpu"),
                                cache / f"{name}-features", Reporter(False))
    x = np.asarray(as_numpy(features.matrix), dtype=np.float32)
    causes = failures.table["root_cause"].astype(str).to_numpy()[features.positions].astype(str)
    np.savez(stored, x=x, causes=causes)
    return x, causes


def umap_seed_cost(planted_features, dims: int) -> dict:
    """Seconds of one UMAP fit on a search-sized sample with and without a seed (umap-learn runs its
    optimisation single-threaded when given a seed), and whether two fits give the same embedding."""
    import umap

    from rca_gpu.engine.device import resolve_device
    from rca_gpu.engine.knn import knn_graph

    x, _ = planted_features(5000, dims=dims, seed=1)
    indices, distances = knn_graph(x, 30, resolve_device("cpu")).numpy()
    out = {}
    for name, seed in (("seeded", 0), ("unseeded", None)):
        fits, seconds = [], []
        for _ in range(2):
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fits.append(umap.UMAP(n_neighbors=30, n_components=10, min_dist=0.0, random_state=seed,
                                      precomputed_knn=(indices, distances, None)).fit_transform(x))
            seconds.append(time.perf_counter() - started)
        out[name], out[f"{name}_identical"] = min(seconds), bool(np.array_equal(fits[0], fits[1]))
    return out


def timed(function, *args):
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = function(*args)
    return out, time.perf_counter() - started


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages (uptime's), as text."""
    import os

    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 20_000])
    parser.add_argument("--reference-sizes", type=int, nargs="*", default=[10_000, 20_000])
    parser.add_argument("--benchmarks", nargs="*", default=[], help="e.g. mnist-rc shapes-sim")
    parser.add_argument("--dims", type=int, default=1280)
    parser.add_argument("--repeat", type=int, default=1, help="pairs per size, order alternating")
    parser.add_argument("--reference-space", choices=["embedding", "features"], default="embedding")
    parser.add_argument("--umap-seed", action="store_true", help="also time seeded against unseeded UMAP")
    parser.add_argument("--cache", type=Path, default=Path("runs/bench-cache"))
    parser.add_argument("--out", type=Path, default=Path("runs/selection-vs-reference"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)

    import sklearn
    import torch
    import umap

    from rca_gpu.datasets.planted import planted_features

    # numba compiles umap-learn and pynndescent on first use: keep that out of the timings
    warm, _ = planted_features(600, dims=32, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        umap.UMAP().fit_transform(warm)
        rca_gpu_run(warm, args.out / "work")

    rows = []

    def record(data: str, n: int, method: str, labels, seconds: float, causes, extra=None):
        row = {"data": data, "n": n, "method": method, "seconds": round(seconds, 1), **score(labels, causes),
               "load": load_average(), **(extra or {})}
        rows.append(row)
        print(json.dumps(row), flush=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))

    def pair(data: str, x: np.ndarray, causes, both: bool, order: int) -> None:
        methods = ["rca-gpu", "reference"] if both else ["rca-gpu"]
        for method in methods[::-1] if order % 2 else methods:
            if method == "rca-gpu":
                (labels, chosen), seconds = timed(rca_gpu_run, x, args.out / "work")
                record(data, len(x), method, labels, seconds, causes, {"chosen": chosen})
            else:
                labels, seconds = timed(reference, x, args.reference_space)
                record(data, len(x), method, labels, seconds, causes)

    for name in args.benchmarks:
        x, causes = benchmark_features(name, args.cache)
        for order in range(args.repeat):
            pair(name, x, causes, True, order)
    for n in sorted(set(args.sizes) | set(args.reference_sizes)):
        x, planted = planted_features(n, dims=args.dims, seed=0)
        causes = np.char.add("c", planted.astype(str))
        for order in range(args.repeat):
            pair("planted", x, causes, n in args.reference_sizes, order)
        del x

    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
               f"torch {torch.__version__}, scikit-learn {sklearn.__version__}, umap-learn {umap.__version__}")
    text = summary(rows, machine, args.reference_space)
    if args.umap_seed:
        seeded = umap_seed_cost(planted_features, args.dims)
        text += (f"\nUMAP on the 5,000-image search sample (n_neighbors 30, 10 components, min_dist 0, the shared "
                 f"kNN graph): seeded {seeded['seeded']:.1f} s (single-threaded, identical in two fits: "
                 f"{seeded['seeded_identical']}), unseeded {seeded['unseeded']:.1f} s (parallel, identical in two "
                 f"fits: {seeded['unseeded_identical']})\n")
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "machine": machine}, indent=1))
    print(text)


def summary(rows: list[dict], machine: str, space: str) -> str:
    """The results table, the seconds per stage of each rca-gpu run, and the whole-run ratio per data set."""
    lines = [f"Machine: {machine}", "",
             "| data | n | method | seconds | clusters / planted | ARI | weighted purity | coverage (injected) | "
             "rare recall (min) | noise | stability resamples | load average |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rare = "-" if r["rare_recall_min"] is None else f"{r['rare_recall_min']:.3f}"
        resamples = (r.get("chosen") or {}).get("resamples", "-")
        lines.append(f"| {r['data']} | {r['n']:,} | {r['method']} | {r['seconds']:.1f} | {r['clusters']} / "
                     f"{r['causes']} | {r['ari']:.3f} | {r['weighted_purity']:.3f} | {r['coverage_injected']:.3f} | "
                     f"{rare} | {r['noise']:.3f} | {resamples} | {r['load']} |")
    runs = [r for r in rows if r["method"] == "rca-gpu"]
    if runs:
        stages = list(dict.fromkeys(k for r in runs for k in r["chosen"]["seconds"] if k != "total"))
        lines += ["", "rca-gpu seconds per stage (run.json `seconds`; search = `reduce_cluster`, its parts in "
                      "`tuning.seconds`):", "",
                  "| data | n | " + " | ".join(stages) + " | total | search: knn / reduce / cluster / score / "
                  "merge / extend |", "|---|---|" + "---|" * (len(stages) + 2)]
        for r in runs:
            sec, tuning = r["chosen"]["seconds"], r["chosen"]["search_seconds"]
            parts = " / ".join(f"{tuning.get(k, 0):.1f}" for k in ("knn", "reduce", "cluster", "score", "merge",
                                                                    "extend"))
            lines.append(f"| {r['data']} | {r['n']:,} | " + " | ".join(f"{sec.get(k, 0):.1f}" for k in stages)
                         + f" | {sec.get('total', 0):.1f} | {parts} |")
    lines.append("")
    for key in dict.fromkeys((r["data"], r["n"]) for r in rows):
        times = {m: [r["seconds"] for r in rows if (r["data"], r["n"]) == key and r["method"] == m]
                 for m in ("rca-gpu", "reference")}
        if times["rca-gpu"] and times["reference"]:
            ratios = [ref / own for own, ref in zip(times["rca-gpu"], times["reference"], strict=False)]
            lines.append(f"{key[0]} {key[1]:,}: whole run {', '.join(f'{v:.1f}x' for v in ratios)} faster than the "
                         f"reference (silhouette in the {space}; pairs measured side by side)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
