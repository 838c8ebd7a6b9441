"""The first call of each reducer and clusterer in a new process, against the second: the compile stall.

    python benchmarks/compile_stall.py [--tree DIR] [--stages umap pca none dbscan hdbscan hdbscan-10d kmeans ward]

For each stage, two fresh processes share one new numba cache folder: the first meets an empty cache (the
first run on a machine), the second one filled by the first (every later run). Each process calls the stage
(rca_gpu.engine.registry.reduce / cluster, the functions a run calls) twice on 400 x 32 planted
features (the size in which the stall was reported; ``hdbscan-10d``: their 10-d UMAP-sized slice, the shape
a UMAP pipeline hands HDBSCAN) and reports the seconds of each call, library imports included, and how many
functions numba compiled during each (numba's compile events). ``--tree`` runs another checkout of rca_gpu
(e.g. the main branch, for the figures before a change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("umap", "pca", "none", "dbscan", "hdbscan", "hdbscan-10d", "kmeans", "ward")


def worker(stage: str) -> None:
    from numba.core import event

    import rca_gpu  # noqa: F401  (first, as a program using rca_gpu would)
    from rca_gpu.datasets.planted import planted_features
    from rca_gpu.engine.device import cpu_device
    from rca_gpu.engine.knn import knn_graph
    from rca_gpu.engine.registry import cluster, reduce

    device = cpu_device()
    x, _ = planted_features(400, n_clusters=4, dims=32, rare=(), seed=0)
    out = {}
    for call, data in (("first", x), ("second", x[::-1].copy())):
        with event.install_recorder("numba:compile") as recorded:
            started = time.perf_counter()
            if stage in ("umap", "pca", "none"):
                params = {"n_neighbors": 15, "n_components": 10, "min_dist": 0.0} if stage == "umap" else {}
                if stage == "pca":
                    params = {"n_components": 10}
                reduce(data, stage, params, device, knn=knn_graph(data, 15, device), seed=0)
            else:
                name = stage.split("-")[0]
                points = data[:, :10] if stage == "hdbscan-10d" else data
                params = {"dbscan": {"eps": 0.5, "min_samples": 5}, "hdbscan": {"min_cluster_size": 10},
                          "kmeans": {"k": 4}, "ward": {"k": 4}}[name]
                cluster(points, name, params, device, seed=0)
            out[call] = round(time.perf_counter() - started, 2)
        out[f"{call}_compiled"] = sum(1 for _, e in recorded.buffer if e.is_start)
    print(json.dumps(out))


def measure(stage: str, tree: str, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_NAME", "RCA_GPU_CPU_TARGET")}
    env.update(PYTHONPATH=tree, NUMBA_CACHE_DIR=str(cache))
    done = subprocess.run([sys.executable, __file__, "--worker", stage], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]),
                        help="the checkout whose rca_gpu runs (default: this one)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    revision = subprocess.run(["git", "-C", args.tree, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False).stdout.strip()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}; rca_gpu from {args.tree} ({revision})\n")
    print("| stage | empty cache: 1st s | 2nd s | compiled 1st | filled cache: 1st s | 2nd s | 1st - 2nd s "
          "| compiled 1st |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for stage in args.stages:
        with tempfile.TemporaryDirectory() as cache:
            cold = measure(stage, args.tree, Path(cache))
            warm = measure(stage, args.tree, Path(cache))
        print(f"| {stage} | {cold['first']:.1f} | {cold['second']:.1f} | {cold['first_compiled']} | "
              f"{warm['first']:.1f} | {warm['second']:.1f} | {warm['first'] - warm['second']:.1f} | "
              f"{warm['first_compiled']} |", flush=True)


if __name__ == "__main__":
    main()
