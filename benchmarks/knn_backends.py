"""Which kNN backend should ``auto`` pick on this machine? Times every backend side by side in one run.

    python benchmarks/knn_backends.py [--sizes 2000 10000 50000] [--dims 1280 10] [--k 30] [--repeats 3]

Prints a Markdown table (median seconds, recall@k against exact search) with the machine and versions.
The same process measures all backends on the same data, so ratios hold on a noisy machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 50000])
    parser.add_argument("--dims", type=int, nargs="+", default=[1280, 10])
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from rca_gpu.engine.device import as_torch, resolve_device
    from rca_gpu.engine.knn import choose_backend, knn_graph

    device = resolve_device(args.device)
    if device.on_gpu:  # GPU libraries only once their test search passed on this GPU (resolve_device)
        backends = ["torch"] + [name for name, ok in (("cuvs", device.cuvs), ("faiss", device.faiss_gpu),
                                                      ("cuml", device.cuml_knn)) if ok]
    else:
        backends = ["torch"] + (["faiss", "faiss-hnsw"] if device.faiss_cpu else []) + ["kdtree"]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {device.reason}; torch {torch.__version__}, faiss {_faiss_version()}\n")
    print("| n | d | backend | median s | recall@k | auto picks |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for dim in args.dims:
        for n in args.sizes:
            # clustered data, like image features: 50 centres plus noise
            centres = rng.normal(size=(50, dim)).astype(np.float32)
            x = centres[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
            data = as_torch(x, device.torch_device) if device.on_gpu else x
            exact = None
            auto = choose_backend(n, dim, device)
            for backend in backends:
                if backend == "kdtree" and dim > 64:
                    continue
                times = []
                graph = None
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    graph = knn_graph(data, args.k, device, backend)
                    if device.on_gpu:
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - started)
                indices = graph.numpy()[0]
                if exact is None:
                    exact = indices
                recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(indices, exact, strict=True)]))
                print(f"| {n} | {dim} | {backend} | {statistics.median(times):.3f} | {recall:.4f} | "
                      f"{'yes' if backend == auto else ''} |", flush=True)


def _faiss_version() -> str:
    try:  # the GPU check machine has no FAISS: torch (and cuML) backends only
        import faiss
    except ImportError:
        return "not installed"
    return faiss.__version__


if __name__ == "__main__":
    main()
