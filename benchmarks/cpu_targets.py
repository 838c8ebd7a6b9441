"""Which CPU code-generation targets and kernel choices change rca_gpu's clusters, and what each pin costs.

    python benchmarks/cpu_targets.py [--settings generic host skylake-avx512 ...] [--repeats 1] [--quick]

Every setting (environment variables, :data:`SETTINGS`) runs the same cases in fresh processes, each setting
with its own numba cache that an untimed warm-up process fills first, so compilation stays out of the
timings. Cases (:data:`CASES`): planted features through the automatic search as ``rca-gpu run`` does it
(the search on a 1,000-row sample extended to 3,000 rows, so the extension's neighbour search and UMAP
placement run too), a UMAP fit of 5,000 x 1,280 features, and MobileNetV2 features of 64 digits (torch's own
kernels). For each case it prints whether the labels (or the embedding / features) are identical to the
first setting's, their ARI to it and to the planted groups, and the seconds with their ratio to the first
setting. Settings run one after the other per repeat, interleaved, so a load change hits all alike.
Needs an AVX-512 CPU for the skylake-avx512 and blas-skylakex settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: name -> environment. The first given is the reference. NUMBA_CPU_NAME / OPENBLAS_CORETYPE of the caller
#: are removed for every setting.
SETTINGS = {
    "generic": {"NUMBA_CPU_NAME": "generic"},  # the product default (also before rca_gpu pinned it)
    "host": {"RCA_GPU_CPU_TARGET": "host"},  # numba's own default: code for this CPU (AMD Zen 4 here)
    "skylake-avx512": {"NUMBA_CPU_NAME": "skylake-avx512", "OPENBLAS_CORETYPE": "SkylakeX"},  # Intel AVX-512
    "blas-skylakex": {"OPENBLAS_CORETYPE": "SkylakeX"},  # generic numba, OpenBLAS as on Intel AVX-512
    "blas-haswell": {"OPENBLAS_CORETYPE": "Haswell"},  # generic numba, OpenBLAS as on AVX2 CPUs
    "blas-nehalem": {"OPENBLAS_CORETYPE": "Nehalem"},  # generic numba, OpenBLAS kernels any x86-64-v2 runs
    "mkl-compatible": {"MKL_CBWR": "COMPATIBLE"},  # torch's MKL on its code path for every x86-64
    "torch-avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},  # torch as on AVX2 CPUs
}
CASES = ("finest-peak", "umap-dbscan", "umap-hdbscan", "pca-kmeans", "umap-fit", "mobilenet")


def _hash(array) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:12]


def worker(cases: list[str], quick: bool) -> None:
    """Runs in the setting's environment: one JSON line per case."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from rca_gpu.datasets.planted import planted_features
    from rca_gpu.engine.device import cpu_device
    from rca_gpu.spec import make_cluster, make_reduce
    from rca_gpu.tuning import select

    device = cpu_device()
    n = 1500 if quick else 3000
    searches = {
        "finest-peak": (1500, 64, 6, 9, make_reduce("umap"), make_cluster("dbscan", select="finest-peak"), 5000),
        "umap-dbscan": (n, 1280, 20, 1, make_reduce("umap"), make_cluster("dbscan"), 1000),
        "umap-hdbscan": (n, 1280, 20, 2, make_reduce("umap", n_neighbors=15, n_components=10, min_dist=0.0),
                         make_cluster("hdbscan"), 1000),
        "pca-kmeans": (n, 1280, 20, 3, make_reduce("pca"), make_cluster("kmeans"), 1000),
    }
    for case in cases:
        started = time.perf_counter()
        if case in searches:
            rows, dims, groups, seed, reducer, clusterer, sample = searches[case]
            x, planted = planted_features(rows, n_clusters=groups, dims=dims, rare=(), seed=seed)
            labels = select(x, None, reducer, clusterer, device, seed=0, sample_size=sample).labels
            out = {"labels": labels.tolist(), "hash": _hash(labels),
                   "ari_planted": round(float(adjusted_rand_score(planted, labels)), 4)}
        elif case == "umap-fit":
            from rca_gpu.engine.knn import knn_graph
            from rca_gpu.engine.registry import reduce

            x, _ = planted_features(2000 if quick else 5000, n_clusters=20, dims=1280, seed=4)
            graph = knn_graph(x, 15, device)
            embedding, _ = reduce(x, "umap", {"n_neighbors": 15, "n_components": 10, "min_dist": 0.0}, device,
                                  knn=graph, seed=0)
            out = {"hash": _hash(embedding), "knn": _hash(graph.numpy()[0])}
        elif case == "mobilenet":
            import torch
            import torchvision
            from sklearn.datasets import load_digits

            model = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1").eval()
            digits = torch.from_numpy(load_digits().images[:64].astype(np.float32) / 16)[:, None].repeat(1, 3, 1, 1)
            with torch.no_grad():
                features = model.features(torch.nn.functional.interpolate(digits, size=96, mode="bilinear"))
            out = {"hash": _hash(features.mean((2, 3)).numpy())}
        else:
            raise SystemExit(f"unknown case {case!r}; choose from {', '.join(CASES)}")
        out["seconds"] = round(time.perf_counter() - started, 2)
        print(json.dumps({"case": case, **out}), flush=True)


def run_setting(name: str, cases: list[str], quick: bool, cache: Path) -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CPU_NAME", "OPENBLAS_CORETYPE", "RCA_GPU_CPU_TARGET", "MKL_CBWR")}
    env.update(SETTINGS[name], NUMBA_CACHE_DIR=str(cache))
    command = [sys.executable, __file__, "--worker", "--cases", *cases] + (["--quick"] if quick else [])
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"setting {name} failed:\n{done.stderr[-3000:]}")
    return {row["case"]: row for row in map(json.loads, done.stdout.splitlines()) if row.get("case")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", default=["generic", "host", "skylake-avx512", "blas-skylakex",
                                                          "blas-nehalem", "mkl-compatible", "torch-avx2"],
                        choices=list(SETTINGS))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting (after the warm-up)")
    parser.add_argument("--quick", action="store_true", help="1,500 / 2,000 rows instead of 3,000 / 5,000")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.cases, args.quick)

    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    with tempfile.TemporaryDirectory() as scratch:
        caches = {name: Path(scratch) / name for name in args.settings}
        results: dict[str, list[dict]] = {name: [] for name in args.settings}
        for name in args.settings:  # warm-up: fills each setting's numba cache, not timed
            run_setting(name, args.cases, args.quick, caches[name])
        for _ in range(args.repeats):
            for name in args.settings:
                results[name].append(run_setting(name, args.cases, args.quick, caches[name]))

    import numba
    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}; numba {numba.__version__}, numpy {np.__version__}, "
          f"torch {torch.__version__}; {args.repeats} timed run(s) per setting, median seconds\n")
    reference = args.settings[0]
    print(f"| case | setting | same as {reference} | ARI to {reference} | ARI to planted | seconds | ratio |")
    print("|---|---|---|---:|---:|---:|---:|")
    for case in args.cases:
        base = results[reference][0][case]
        base_seconds = statistics.median(r[case]["seconds"] for r in results[reference])
        for name in args.settings:
            row = results[name][0][case]
            seconds = statistics.median(r[case]["seconds"] for r in results[name])
            same = row["hash"] == base["hash"]
            ari = (f"{adjusted_rand_score(np.array(base['labels']), np.array(row['labels'])):.4f}"
                   if "labels" in row else "")
            print(f"| {case} | {name} | {'yes' if same else 'NO'} | {ari} | {row.get('ari_planted', '')} | "
                  f"{seconds:.1f} | {seconds / base_seconds:.2f} |")


if __name__ == "__main__":
    main()
