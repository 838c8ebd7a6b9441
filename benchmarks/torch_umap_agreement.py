"""The torch UMAP (the GPU backend where cuML is absent) against umap-learn, run on the CPU with torch's CPU
tensors: do the clusters found in its embedding agree with those found in umap-learn's?

    OMP_WAIT_POLICY=PASSIVE python benchmarks/torch_umap_agreement.py --out runs/torch-umap

For each data set, each UMAP setting the default pipeline searches (30 neighbours, 10 dimensions, min_dist
0.0 and 0.1: rca_gpu.engine.cluster.dbscan.UMAP_GRID_DBSCAN) and each seed, one embedding by umap-learn
(:class:`rca_gpu.engine.reduce.umap.UmapLearn`) and one by torch (:class:`~rca_gpu.engine.reduce.umap.TorchUMAP`),
both fed the same kNN graph of the features; each embedding is clustered by scikit-learn's DBSCAN at every
candidate the engine's search tries on it (min_samples 5, 10, 20 x the eps quantiles of that embedding) and by
K-means at k = the number of true causes. Reported, as ARI between the partitions:

- ``ceiling``: umap-learn against umap-learn with another seed (mean over the pairs of seeds): how far two
  runs of the CPU path agree with each other;
- ``torch``: torch against umap-learn (mean over every pair of seeds, the same seed included);
- ARI and weighted purity of each to the true causes (K-means; DBSCAN at the candidate best for umap-learn).

DBSCAN's figures are the median and the lowest over its candidates. Data: planted features
(rca_gpu.datasets.planted, 1,500 points in 20 clusters with rare ones, 256 dimensions) and the default
pipeline's MobileNetV2 features of mnist-rc and shapes-sim (1,500 failures, seed 0; built and extracted once
into ``--cache``, as benchmarks/selection_vs_reference.py does). ``--timing`` then times one fit of each at
the given sizes (planted features, 30 neighbours, 10 dimensions). Writes ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from itertools import combinations, product
from pathlib import Path

import numpy as np

SETTINGS = ({"n_neighbors": 30, "n_components": 10, "min_dist": 0.0},
            {"n_neighbors": 30, "n_components": 10, "min_dist": 0.1})


def data_set(name: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, d) float32, true causes (n,) str) of one data set."""
    if name == "planted":
        from rca_gpu.datasets.planted import planted_features

        x, labels = planted_features(1500, dims=256, seed=0)
        return x, labels.astype(str)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from selection_vs_reference import benchmark_features

    return benchmark_features(name, cache)


def embeddings(x: np.ndarray, params: dict, seeds: list[int]) -> dict[str, list[np.ndarray]]:
    """{"umap-learn": [...], "torch": [...]}: one embedding per seed by each, from one kNN graph."""
    import torch

    from rca_gpu.engine.device import cpu_device
    from rca_gpu.engine.knn import knn_graph
    from rca_gpu.engine.reduce.umap import TorchUMAP, UmapLearn

    indices, distances = knn_graph(x, params["n_neighbors"], cpu_device()).numpy()
    out: dict[str, list[np.ndarray]] = {"umap-learn": [], "torch": []}
    graph = (torch.from_numpy(indices), torch.from_numpy(distances))
    for seed in seeds:
        out["torch"].append(TorchUMAP(**params, seed=seed).fit_transform(torch.from_numpy(x), knn=graph).numpy())
        out["umap-learn"].append(UmapLearn(**params, seed=seed).fit_transform(x, knn=(indices, distances)))
    return out


def partitions(embedding: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Labels of ``embedding`` by DBSCAN at each candidate of the search and by K-means at k."""
    from sklearn.cluster import DBSCAN, KMeans

    from rca_gpu.engine.cluster.dbscan import DBSCAN_EPS_QUANTILES, DBSCAN_MIN_SAMPLES
    from rca_gpu.engine.device import cpu_device
    from rca_gpu.engine.knn import knn_graph

    _, distances = knn_graph(embedding, max(DBSCAN_MIN_SAMPLES) + 1, cpu_device()).numpy()
    out = {}
    for min_samples, q in product(DBSCAN_MIN_SAMPLES, DBSCAN_EPS_QUANTILES):
        eps = max(float(np.quantile(distances[:, min_samples], q)), 1e-6)
        out[f"dbscan m={min_samples} q={q}"] = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(embedding)
    out[f"kmeans k={k}"] = KMeans(n_clusters=k, n_init=4, random_state=0).fit_predict(embedding)
    return out


def compare(runs: dict[str, list[dict[str, np.ndarray]]], causes: np.ndarray) -> dict:
    """Per clusterer setting: ceiling and torch agreement (mean pair ARI), truth ARI and purity of each."""
    from sklearn.metrics import adjusted_rand_score

    from rca_gpu.metrics import evaluate

    cpu, gpu = runs["umap-learn"], runs["torch"]
    out = {}
    for setting in cpu[0]:
        ceiling = [adjusted_rand_score(a[setting], b[setting]) for a, b in combinations(cpu, 2)]
        torch_vs = [adjusted_rand_score(g[setting], c[setting]) for g in gpu for c in cpu]
        truth = {name: [evaluate(r[setting], causes).summary for r in rs] for name, rs in runs.items()}
        out[setting] = {
            "ceiling": float(np.mean(ceiling)), "ceiling_min": float(np.min(ceiling)),
            "torch": float(np.mean(torch_vs)), "torch_min": float(np.min(torch_vs)),
            **{f"{name} truth ari": float(np.mean([s["ari_with_noise"] for s in summaries]))
               for name, summaries in truth.items()},
            **{f"{name} purity": float(np.mean([s["weighted_purity"] for s in summaries]))
               for name, summaries in truth.items()},
            **{f"{name} noise": float(np.mean([s["noise_share"] for s in summaries]))
               for name, summaries in truth.items()},
        }
    return out


def timing(sizes: list[int]) -> list[dict]:
    """Seconds of one fit of each implementation on planted features of each size (after a warm-up fit)."""
    import torch

    from rca_gpu.datasets.planted import planted_features
    from rca_gpu.engine.device import cpu_device
    from rca_gpu.engine.knn import knn_graph
    from rca_gpu.engine.reduce.umap import TorchUMAP, UmapLearn

    params = SETTINGS[0]
    warm, _ = planted_features(300, dims=256, seed=1)
    rows = []
    for n in [0, *sizes]:
        x = warm if n == 0 else planted_features(n, dims=256, seed=0)[0]
        indices, distances = knn_graph(x, 30, cpu_device()).numpy()
        started = time.perf_counter()
        UmapLearn(**params, seed=0).fit_transform(x, knn=(indices, distances))
        cpu = time.perf_counter() - started
        started = time.perf_counter()
        TorchUMAP(**params, seed=0).fit_transform(torch.from_numpy(x),
                                                  knn=(torch.from_numpy(indices), torch.from_numpy(distances)))
        gpu = time.perf_counter() - started
        if n:  # n == 0: the warm-up (numba's compilation or cache load, torch's first calls)
            rows.append({"n": n, "umap-learn s": round(cpu, 2), "torch (CPU) s": round(gpu, 2)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/torch-umap"))
    parser.add_argument("--cache", type=Path, default=Path("runs/bench-cache"))
    parser.add_argument("--data", nargs="+", default=["planted", "mnist-rc", "shapes-sim"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--timing", type=int, nargs="*", default=[1500, 5000])
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    from rca_gpu import jit_cache

    jit_cache.load("umap")
    args.out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                 "load_average": os.getloadavg(), "python": platform.python_version(),
                                 "torch": torch.__version__, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")},
                     "seeds": args.seeds, "agreement": {}}
    lines = ["| data | UMAP min_dist | clusterer | ceiling (umap-learn seeds) | torch vs umap-learn | "
             "truth ARI umap-learn / torch | purity umap-learn / torch |", "|---|---|---|---|---|---|---|"]
    for name in args.data:
        x, causes = data_set(name, args.cache)
        k = len(np.unique(causes))
        for params in SETTINGS:
            started = time.perf_counter()
            fitted = embeddings(x, params, args.seeds)
            runs = {impl: [partitions(e, k) for e in es] for impl, es in fitted.items()}
            scores = compare(runs, causes)
            key = f"{name} min_dist={params['min_dist']}"
            results["agreement"][key] = scores
            dbscan = {s: v for s, v in scores.items() if s.startswith("dbscan")}
            best = max(dbscan, key=lambda s: dbscan[s]["umap-learn truth ari"])
            median = {f: float(np.median([v[f] for v in dbscan.values()])) for f in ("ceiling", "torch")}
            lowest = {f: float(np.min([v[f] for v in dbscan.values()])) for f in ("ceiling", "torch")}
            kmeans = scores[f"kmeans k={k}"]
            lines.append(f"| {name} | {params['min_dist']} | DBSCAN, {len(dbscan)} candidates: median (lowest) | "
                         f"{median['ceiling']:.3f} ({lowest['ceiling']:.3f}) | {median['torch']:.3f} "
                         f"({lowest['torch']:.3f}) | {dbscan[best]['umap-learn truth ari']:.3f} / "
                         f"{dbscan[best]['torch truth ari']:.3f} | {dbscan[best]['umap-learn purity']:.3f} / "
                         f"{dbscan[best]['torch purity']:.3f} |")
            lines.append(f"| {name} | {params['min_dist']} | K-means k={k} | {kmeans['ceiling']:.3f} | "
                         f"{kmeans['torch']:.3f} | {kmeans['umap-learn truth ari']:.3f} / "
                         f"{kmeans['torch truth ari']:.3f} | {kmeans['umap-learn purity']:.3f} / "
                         f"{kmeans['torch purity']:.3f} |")
            print(lines[-2], lines[-1], f"({time.perf_counter() - started:.0f} s)", sep="\n", flush=True)
    if args.timing:
        results["timing"] = timing(args.timing)
        lines += ["", "| points | umap-learn s | torch (CPU tensors) s |", "|---:|---:|---:|"]
        lines += [f"| {r['n']:,} | {r['umap-learn s']} | {r['torch (CPU) s']} |" for r in results["timing"]]
    results["machine"]["load_average_end"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
