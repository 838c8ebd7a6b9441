"""The CPU extraction paths of the default backbone side by side, on a benchmark's real images.

    python benchmarks/extraction_paths.py --bench bench --benchmarks mnist-rc shapes-sim --images 256 \
        --paths torch:224 onnxruntime:224 torch:160 onnxruntime:160 torch:224:bf16 --rounds 3

``bench`` holds benchmarks made by ``rca-gpu datasets make NAME --out bench/NAME``. Each path is
``RUNTIME:IMAGE_SIZE[:PRECISION]`` (fp32 unless named; bf16 is torch's autocast) of the default feature stage
(``mobilenet_v2@features.18(pool=grid2)``, the extraction of the default pipeline; centring comes after and
costs nothing), run through the engine that
``rca-gpu run`` uses (:func:`rca_gpu.features.extract.extract_features`: decoding in DataLoader workers, the
model step, no cache) on the same seeded sample of ``--images`` images. The paths are timed in turn, round
after round (``--rounds``), so that a change of the machine's load reaches every path alike; each path's
time is the median over the rounds, and its ratio to the first path is the median of the per-round ratios.

Columns: preparation (weights, graph, and for ONNX Runtime the export; timed separately, median of the
rounds), images/s of the extraction without preparation, the ratio to the first path, the projected seconds
for the whole benchmark (1,500 images: preparation + n / rate), and the largest absolute difference of the
features from the torch path at the same size (L2-normalised rows; "-" where there is none).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from pathlib import Path


def subset(failures, count: int, seed: int):
    """The FailureSet of ``count`` rows drawn without replacement (seeded), in their source order."""
    import numpy as np

    rows = np.sort(np.random.default_rng(seed).choice(len(failures), size=min(count, len(failures)),
                                                     replace=False))
    table = failures.table.iloc[rows].reset_index(drop=True)
    return dataclasses.replace(failures, table=table, rejected={}, file_paths=None, _fingerprint=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--benchmarks", nargs="+", default=["mnist-rc", "shapes-sim"])
    parser.add_argument("--paths", nargs="+", default=["torch:224", "onnxruntime:224"],
                        help="RUNTIME:IMAGE_SIZE[:PRECISION]; the first is the reference of the ratios")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from rca_gpu.data.sources import load_source
    from rca_gpu.features import create_extractor
    from rca_gpu.features.base import ExtractionContext
    from rca_gpu.features.extract import extract_features
    from rca_gpu.spec.grammar import parse_feature_stage

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [(runtime, int(side), (rest or ["fp32"])[0]) for runtime, side, *rest in (p.split(":") for p in args.paths)]
    load = os.getloadavg()
    lines = [
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; batch {args.batch_size}, {args.workers} DataLoader workers; "
        f"{args.images} images per path, {args.rounds} rounds; load average at start "
        f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
        "",
        "| benchmark | path | preparation s | images/s | x first path | s for 1,500 | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for name in args.benchmarks:
        failures = subset(load_source(args.bench / name / "manifest.parquet"), args.images, args.seed)
        contexts = [ExtractionContext(failures=failures, device=torch.device("cpu"), batch_size=args.batch_size,
                                      workers=args.workers, seed=args.seed, precision=precision)
                    for _, _, precision in paths]
        specs = [parse_feature_stage(f"mobilenet_v2@features.18(pool=grid2,image_size={side},runtime={runtime})")
                 for runtime, side, _ in paths]
        prepare: dict[int, list[float]] = {i: [] for i in range(len(paths))}
        rates: dict[int, list[float]] = {i: [] for i in range(len(paths))}
        ratios: dict[int, list[float]] = {i: [] for i in range(len(paths))}
        features: dict[int, torch.Tensor] = {}
        extract_features(specs[0], contexts[0])  # warm-up: imports, first model load, worker start
        for _ in range(args.rounds):
            round_rates = []
            for i, (spec, context) in enumerate(zip(specs, contexts, strict=True)):
                started = time.perf_counter()
                create_extractor(spec, context).prepare()
                prepare[i].append(time.perf_counter() - started)
                started = time.perf_counter()
                result = extract_features(spec, context)
                seconds = time.perf_counter() - started - prepare[i][-1]  # the same preparation, done again inside
                rate = result.n / max(seconds, 1e-9)
                rates[i].append(rate)
                round_rates.append(rate)
                features.setdefault(i, result.matrix)
            for i, rate in enumerate(round_rates):
                ratios[i].append(rate / round_rates[0])
        for i, (runtime, side, precision) in enumerate(paths):
            same_size = next((j for j, (r, s, p) in enumerate(paths) if (r, s, p) == ("torch", side, "fp32")), None)
            diff = "-" if same_size is None or same_size == i else \
                f"{float((features[i] - features[same_size]).abs().max()):.1e}"
            prep, rate = statistics.median(prepare[i]), statistics.median(rates[i])
            label = f"{runtime}:{side}" + ("" if precision == "fp32" else f":{precision}")
            line = (f"| {name} | {label} | {prep:.1f} | {rate:.1f} | {statistics.median(ratios[i]):.2f} | "
                    f"{prep + 1500 / rate:.0f} | {diff} |")
            lines.append(line)
            print(line, flush=True)
    load = os.getloadavg()
    lines.append(f"\nload average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(lines[-1].strip())
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
