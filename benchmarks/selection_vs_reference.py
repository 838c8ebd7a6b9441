"""Automatic selection against a paper-style reference script, side by side in one process.

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
- ``rca-gpu``: the default pipeline's stages after extraction (the kNN graph, :func:`rca_gpu.tuning.select`
  with the defaults of RunSpec, and the 2-D plot embedding), as ``rca-gpu run`` calls them.

Data: planted features (rca_gpu.datasets.planted: 20 Gaussian clusters of unequal sizes in 1280 dims, unit
rows, rare clusters at 1 %, 1.5 % and 2 %) at ``--sizes`` (the reference only at ``--reference-sizes``: its
silhouette is quadratic), and MobileNetV2 features of the mnist-rc and shapes-sim benchmarks (1,500
failures each, built and extracted once into ``--cache``).

Reported per row: seconds, clusters found vs planted clusters / causes, ARI with noise as its own label,
weighted purity, coverage of injected causes, the lowest recall of the rare planted clusters, noise share;
and the cost exponent of rca-gpu fitted over the planted sizes (log seconds against log n). Writes
``results.json`` and ``results.md`` to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

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


def rca_gpu_default(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Labels of rca-gpu's default pipeline after extraction, and what the search chose."""
    from rca_gpu.engine.device import resolve_device
    from rca_gpu.pipeline import feature_graph, plot_embedding
    from rca_gpu.spec import DEFAULT_PIPELINE, build_run_spec
    from rca_gpu.tuning import select

    spec = build_run_spec(pipeline=DEFAULT_PIPELINE, device="cpu", seed=seed)
    device = resolve_device("cpu")
    features = SimpleNamespace(matrix=x, n=len(x))
    cache: dict = {}
    graph = feature_graph(features, spec, spec.pipeline.reduce, device)
    selection = select(x, graph, spec.pipeline.reduce, spec.pipeline.cluster, device, seed=seed,
                       reduce_cache=cache, sample_size=spec.sample_size)
    plot_embedding(features, np.asarray(selection.embedding), graph, device, seed, True, cache, selection)
    chosen = {"reduce": selection.reduce_params, "cluster": selection.cluster_params,
              "merges": len(selection.merges), "noise_attached": selection.noise_attached,
              "sample": (selection.sample or {}).get("size"), "seconds": selection.seconds}
    return selection.labels, chosen


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 20_000, 40_000, 80_000, 160_000])
    parser.add_argument("--reference-sizes", type=int, nargs="*", default=[10_000, 20_000])
    parser.add_argument("--benchmarks", nargs="*", default=["mnist-rc", "shapes-sim"])
    parser.add_argument("--dims", type=int, default=1280)
    parser.add_argument("--reference-space", choices=["embedding", "features"], default="embedding")
    parser.add_argument("--cache", type=Path, default=Path("runs/bench-cache"))
    parser.add_argument("--out", type=Path, default=Path("runs/selection-vs-reference"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)

    import sklearn
    import torch
    import umap

    from rca_gpu.datasets.planted import planted_features
    from rca_gpu.engine.device import resolve_device
    from rca_gpu.engine.knn import knn_graph

    # numba compiles umap-learn and pynndescent on first use: keep that out of the timings
    warm, _ = planted_features(600, dims=32, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        umap.UMAP().fit_transform(warm)
        rca_gpu_default(warm)
        knn_graph(warm, 5, resolve_device("cpu"))

    rows = []

    def record(data: str, n: int, method: str, labels, seconds: float, causes, extra=None):
        row = {"data": data, "n": n, "method": method, "seconds": round(seconds, 1), **score(labels, causes),
               **(extra or {})}
        rows.append(row)
        print(json.dumps(row), flush=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))

    for name in args.benchmarks:
        x, causes = benchmark_features(name, args.cache)
        (labels, chosen), seconds = timed(rca_gpu_default, x)
        record(name, len(x), "rca-gpu", labels, seconds, causes, {"chosen": chosen})
        labels, seconds = timed(reference, x, args.reference_space)
        record(name, len(x), "reference", labels, seconds, causes)
    for n in sorted(set(args.sizes) | set(args.reference_sizes)):
        x, planted = planted_features(n, dims=args.dims, seed=0)
        causes = np.char.add("c", planted.astype(str))
        if n in args.sizes:
            (labels, chosen), seconds = timed(rca_gpu_default, x)
            record("planted", n, "rca-gpu", labels, seconds, causes, {"chosen": chosen})
        if n in args.reference_sizes:
            labels, seconds = timed(reference, x, args.reference_space)
            record("planted", n, "reference", labels, seconds, causes)
        del x

    seeded = umap_seed_cost(planted_features, args.dims)
    planted_rows = [r for r in rows if r["data"] == "planted" and r["method"] == "rca-gpu"]
    exponent = None
    if len(planted_rows) >= 2:
        exponent = float(np.polyfit(np.log([r["n"] for r in planted_rows]),
                                    np.log([r["seconds"] for r in planted_rows]), 1)[0])
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
               f"torch {torch.__version__}, scikit-learn {sklearn.__version__}, umap-learn {umap.__version__}")
    lines = [f"Machine: {machine}", "",
             "| data | n | method | seconds | clusters / planted | ARI | weighted purity | coverage (injected) | "
             "rare recall (min) | noise |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rare = "-" if r["rare_recall_min"] is None else f"{r['rare_recall_min']:.3f}"
        lines.append(f"| {r['data']} | {r['n']:,} | {r['method']} | {r['seconds']:.1f} | {r['clusters']} / "
                     f"{r['causes']} | {r['ari']:.3f} | {r['weighted_purity']:.3f} | {r['coverage_injected']:.3f} | "
                     f"{rare} | {r['noise']:.3f} |")
    if exponent is not None:
        lines += ["", f"rca-gpu cost exponent over the planted sizes {planted_rows[0]['n']:,}-"
                      f"{planted_rows[-1]['n']:,}: {exponent:.2f}"]
    for n in args.reference_sizes:
        times = {r["method"]: r["seconds"] for r in rows if r["data"] == "planted" and r["n"] == n}
        if "reference" in times and "rca-gpu" in times:
            lines.append(f"planted {n:,}: rca-gpu {times['reference'] / times['rca-gpu']:.1f}x faster than the "
                         f"reference (silhouette in the {args.reference_space})")
    lines += ["", f"UMAP on the 5,000-image search sample (n_neighbors 30, 10 components, min_dist 0, the shared kNN "
              f"graph): seeded {seeded['seeded']:.1f} s (single-threaded, identical in two fits: "
              f"{seeded['seeded_identical']}), unseeded {seeded['unseeded']:.1f} s (parallel, identical in two "
              f"fits: {seeded['unseeded_identical']})"]
    text = "\n".join(lines) + "\n"
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "exponent": exponent, "machine": machine,
                                                       "umap_seed": seeded}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
