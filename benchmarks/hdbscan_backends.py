"""fast_hdbscan against scikit-learn's HDBSCAN on the CPU: labels, determinism and warm time, side by side.

    python benchmarks/hdbscan_backends.py [--sizes 400 2000 5000] [--repeats 3]

Both get rca_gpu's ``min_samples`` convention (the point counts itself; fast_hdbscan is handed one less,
rca_gpu.engine.limits.hdbscan_library_min_samples). Data: what each pipeline hands HDBSCAN, from planted features
(rca_gpu.datasets.planted, 1,280-d, 8 groups): their 10-d UMAP embedding, their 32 and 50 principal
components, the features themselves; a noisy 64-d set; Gaussian blobs in 5-d with 10 % uniform noise; and a
real set, scikit-learn's digits (1,797 x 64) and their 10-d UMAP embedding. For each set and
``min_cluster_size`` it prints the ARI between the two libraries, each one's ARI to the truth and noise
share, whether a second fast_hdbscan call on the same data gives the same labels, and the median seconds of
warm calls (numba compiled beforehand). fast_hdbscan switches to pynndescent's approximate kNN graph above
30 dimensions (fast_hdbscan/hdbscan.py), which is where the two can differ.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np


def _time(fn, repeats: int) -> tuple[float, np.ndarray]:
    fn()  # warm: compilation and first-touch out of the timing
    times, labels = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        labels = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 2000, 5000])
    parser.add_argument("--sizes-of-clusters", type=int, nargs="+", default=[5, 15, 40], dest="mcs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import fast_hdbscan
    import sklearn
    import umap
    from sklearn.cluster import HDBSCAN
    from sklearn.datasets import load_digits, make_blobs
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score

    import rca_gpu  # noqa: F401  (first: it fixes numba's code-generation target)
    from rca_gpu.datasets.planted import planted_features
    from rca_gpu.engine.limits import hdbscan_library_min_samples

    sets = []
    for n in args.sizes:
        # what each pipeline hands HDBSCAN: UMAP's 10-d output, PCA's components, the features themselves
        x, y = planted_features(n, n_clusters=8, dims=1280, rare=(), seed=n)
        sets.append((f"planted {n} x 1280: UMAP 10-d", umap.UMAP(n_components=10, random_state=0).fit_transform(x), y))
        for d in (32, 50):
            sets.append((f"planted {n} x 1280: PCA {d}-d", PCA(n_components=d, random_state=0).fit_transform(x), y))
        sets.append((f"planted {n} x 1280", x, y))
        blobs, truth = make_blobs(n_samples=n, centers=8, n_features=5, cluster_std=1.5, random_state=n)
        noise = np.random.default_rng(n).uniform(blobs.min(0), blobs.max(0), size=(n // 10, 5))
        sets.append((f"blobs {n} x 5 + 10 % noise", np.vstack([blobs, noise]), np.r_[truth, np.full(n // 10, -1)]))
    # a noisy 64-d set, where fast_hdbscan's approximate graph shows (two fits of the same data differ)
    x, y = planted_features(2000, n_clusters=8, dims=64, rare=(), seed=2)
    sets.append(("planted 2000 x 64 + noise", x + np.random.default_rng(0).normal(0, 0.5, x.shape) * x.std(), y))
    digits = load_digits()
    sets.append(("digits 1797 x 64", digits.data, digits.target))
    sets.append(("digits 1797 x 64: UMAP 10-d", umap.UMAP(n_components=10, random_state=0).fit_transform(digits.data),
                 digits.target))
    sets = [(name, np.asarray(x, dtype=np.float64), y) for name, x, y in sets]

    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}; "
          f"fast_hdbscan {getattr(fast_hdbscan, '__version__', '?')}, "
          f"scikit-learn {sklearn.__version__}; median of {args.repeats} warm calls\n")
    print("| data | min_cluster_size | ARI fast vs sklearn | ARI fast | ARI sklearn | noise fast | noise sklearn "
          "| fast repeatable | s fast | s sklearn |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for name, x, y in sets:
        for size in args.mcs:
            library = hdbscan_library_min_samples(None, size)

            def fast(x=x, size=size, library=library):
                return fast_hdbscan.HDBSCAN(min_cluster_size=size, min_samples=library).fit_predict(x)

            def reference(x=x, size=size, library=library):  # scikit-learn counts the point itself
                return HDBSCAN(min_cluster_size=size, min_samples=library + 1, copy=True).fit_predict(x)

            seconds_fast, labels_fast = _time(fast, args.repeats)
            seconds_sk, labels_sk = _time(reference, args.repeats)
            again = fast()
            print(f"| {name} | {size} | {adjusted_rand_score(labels_fast, labels_sk):.3f} | "
                  f"{adjusted_rand_score(y, labels_fast):.3f} | {adjusted_rand_score(y, labels_sk):.3f} | "
                  f"{np.mean(labels_fast < 0):.2f} | {np.mean(labels_sk < 0):.2f} | "
                  f"{'yes' if np.array_equal(again, labels_fast) else 'NO'} | {seconds_fast:.3f} | {seconds_sk:.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
