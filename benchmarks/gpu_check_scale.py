"""Figures of benchmarks/gpu_check.sh at scale: kNN graph, UMAP and DBSCAN at each size, and one run end to
end from brought features, on the device ``--device auto`` resolves to; each row names the backend that ran
(run.json's device.backends), so a figure never hides a CPU fall-back.

    python benchmarks/gpu_check_scale.py --sizes 100000 1000000 --out OUT/scale.md [--dims 10] [--budget 420]

Data: ``n`` points in ``--dims`` dimensions around 20 Gaussian centres (the shape of a UMAP embedding, where
DBSCAN and the kNN graph run in the default pipeline); UMAP reads 64-dimensional points of the same
centres. A step that would run on the CPU above CPU_UMAP_MAX points (UMAP without cuML) is not run and the
table says so; a step started after ``--budget`` seconds is skipped likewise, so the check fits its time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: UMAP on the CPU (no cuML) is measured up to this many points; above, it would take the check's time.
CPU_UMAP_MAX = 100_000


def blobs(n: int, dims: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (20, dims)).astype(np.float32)
    return centres[rng.integers(0, 20, n)] + rng.normal(0, 1, (n, dims)).astype(np.float32)


def timed(step):
    started = time.perf_counter()
    result = step()
    return result, time.perf_counter() - started


def ran(device, stage: str) -> str:
    """The backends that ran ``stage`` ("cluster dbscan"...) on ``device``, from its record."""
    return "; ".join(", ".join(labels) for key, labels in device.backends.items() if key.startswith(stage))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dims", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds after which no step starts")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    import torch

    from rca_gpu.engine import registry
    from rca_gpu.engine.device import as_torch, resolve_device
    from rca_gpu.engine.knn import knn_graph

    started = time.perf_counter()
    rows = []

    def over() -> bool:
        return time.perf_counter() - started > args.budget

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    for n in args.sizes:
        device = resolve_device(args.device)
        where = device.torch_device
        x = as_torch(blobs(n, args.dims), where)
        if over():
            rows.append(f"| {n:,} | kNN, UMAP, DBSCAN | not run: past the {args.budget:.0f} s budget | |")
            continue
        graph, seconds = timed(lambda x=x, device=device: knn_graph(x, 31, device))
        sync()
        rows.append(f"| {n:,} | kNN graph (k=31, {args.dims}-d, exact) | {seconds:.2f} | {graph.backend} |")
        kth = np.sort(graph.numpy()[1][:, 10])
        eps = float(kth[int(0.7 * len(kth))])
        _, seconds = timed(lambda x=x, device=device, eps=eps: registry.cluster(
            x, "dbscan", {"eps": eps, "min_samples": 10}, device))
        sync()
        rows.append(f"| {n:,} | DBSCAN (min_samples=10, eps at the 0.7 quantile) | {seconds:.2f} | "
                    f"{ran(device, 'cluster dbscan')} |")
        if not device.cuml and n > CPU_UMAP_MAX:
            rows.append(f"| {n:,} | UMAP (64-d -> 10-d) | not run: UMAP runs on the CPU without cuML | |")
        elif over():
            rows.append(f"| {n:,} | UMAP (64-d -> 10-d) | not run: past the {args.budget:.0f} s budget | |")
        else:
            wide = as_torch(blobs(n, 64, seed=1), where)
            wide_graph = knn_graph(wide, 15, device)
            _, seconds = timed(lambda wide=wide, wide_graph=wide_graph, device=device: registry.reduce(
                wide, "umap", {"n_neighbors": 15, "n_components": 10, "min_dist": 0.0}, device, knn=wide_graph))
            sync()
            rows.append(f"| {n:,} | UMAP (64-d -> 10-d, 15 neighbours) | {seconds:.2f} | "
                        f"{ran(device, 'reduce umap')} |")
        del x, graph
    end_to_end = min(args.sizes)
    if over():
        rows.append(f"| {end_to_end:,} | end to end | not run: past the {args.budget:.0f} s budget | |")
    else:
        from rca_gpu.launch import run_features
        from rca_gpu.spec import build_run_spec

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "features.npy"
            np.save(path, blobs(end_to_end, 128, seed=2))
            spec = build_run_spec(pipeline="umap+dbscan", device=args.device, stability=0, cache_features=False)
            _, seconds = timed(lambda: run_features(spec, path, Path(folder) / "run", report=False))
            info = (Path(folder) / "run" / "run.json").read_text()
        backends = json.loads(info)["device"].get("backends", {})
        labels = "; ".join(stage + ": " + ", ".join(ran_on) for stage, ran_on in backends.items())
        rows.append(f"| {end_to_end:,} | end to end: `umap+dbscan` on brought 128-d features (search, no "
                    f"stability, no report) | {seconds:.2f} | {labels} |")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (CPU)"
    lines = [f"Device: {gpu}; `python benchmarks/gpu_check_scale.py --sizes {' '.join(map(str, args.sizes))}`",
             "", "| points | step | seconds | backend |", "|---|---|---|---|", *rows, ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
