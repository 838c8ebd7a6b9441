"""What keying the feature cache on the images' bytes costs, next to what it replaced and to extraction.

    rca-gpu datasets make mnist-rc --out bench/mnist-rc        # the 1,500-image demo set
    python benchmarks/content_digest.py bench/mnist-rc/manifest.parquet --repeats 5

Measures, side by side in one process, on the same source (its files in the page cache after the first
pass; the first, cold pass is reported apart):

* ``listing``: reading the source (``load_source``), what every run does anyway;
* ``stat key``: the former cache key of the files, (path, size, mtime) of every row;
* ``content digest``: the cache key now, blake2b of every file's bytes
  (:meth:`rca_gpu.data.sources.FailureSet.fingerprint`);
* ``extraction``: the default extractor (MobileNetV2, ImageNet weights, fp32, CPU) on the same images,
  once (``--no-extraction`` leaves it out), for scale.

The median of ``--repeats`` passes is reported for each; bytes read and files are printed with them, and
blake2b's rate over 64 MiB in memory (what larger images cost per byte).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import time
from pathlib import Path


def stat_key(failures) -> str:
    """The former key: (path, size, mtime_ns) of every row, as rca_gpu hashed it before the content digest."""
    digest = hashlib.sha256()
    for path in failures.paths:
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except (OSError, TypeError, ValueError):
            size = mtime = -1
        digest.update(f"{path}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def timed(function, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", type=Path, help="folder of images or manifest")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-extraction", action="store_true")
    args = parser.parse_args()

    from rca_gpu.data.sources import load_source

    failures = load_source(args.source)
    usable = [failures.paths[p] for p in failures.usable_positions.tolist()]
    size = sum(os.path.getsize(p) for p in usable)
    started = time.perf_counter()
    failures.fingerprint()  # the first pass may read from disk: reported apart
    first = time.perf_counter() - started

    def digest() -> None:
        load_source(args.source).fingerprint()  # a fresh FailureSet: the digest is kept per object

    rows = [("listing (load_source)", *timed(lambda: load_source(args.source), args.repeats))]
    rows.append(("stat key (former)", *timed(lambda: stat_key(failures), args.repeats)))
    listing = rows[0][1]
    median, times = timed(digest, args.repeats)
    rows.append(("listing + content digest (now)", median, times))
    if not args.no_extraction:
        rows.append(("extraction, mobilenet_v2 fp32 CPU", *timed(lambda: extract(failures), 1)))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; {len(usable)} files, {size / 2**20:.1f} MiB; median of {args.repeats}"
    )
    print(f"first content digest (cold page cache possible): {first * 1000:.1f} ms")
    print("| step | median | per image | passes (s) |")
    print("|---|---|---|---|")
    for name, value, times in rows:
        print(
            f"| {name} | {value * 1000:.1f} ms | {value / len(usable) * 1e6:.1f} us | "
            f"{', '.join(f'{t:.3f}' for t in times)} |"
        )
    print(
        f"digest alone (listing + digest - listing): {(median - listing) * 1000:.1f} ms, "
        f"{(median - listing) / len(usable) * 1e6:.1f} us per image"
    )
    block = os.urandom(64 * 2**20)
    seconds, _ = timed(lambda: hashlib.blake2b(block, digest_size=16).digest(), args.repeats)
    print(f"blake2b over 64 MiB in memory: {64 / seconds:.0f} MiB/s (what larger images cost per byte)")


def extract(failures) -> None:
    import torch

    from rca_gpu.features.base import ExtractionContext
    from rca_gpu.features.extract import extract_features
    from rca_gpu.spec import make_features

    context = ExtractionContext(failures=failures, device=torch.device("cpu"), workers=0, batch_size=64)
    extract_features(make_features("mobilenet_v2"), context, cache_dir=None)


if __name__ == "__main__":
    main()
