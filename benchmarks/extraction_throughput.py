"""Feature-extraction throughput (images/s) of the transfer-learning backbones, fp32 vs bf16 autocast.

    python benchmarks/extraction_throughput.py --device cuda --models resnet50 mobilenet_v2 \
        --precisions fp32 bf16 --image-size 224 --batch-size 128 --out results.md

Measures the model step the engine runs (channels_last, inference_mode, optional bf16 autocast) on
pre-made batches, so decoding is excluded; ``--runtime`` picks the backbone's runtime (torch by default, the
path this table has always measured; ``auto`` or ``onnxruntime`` for ONNX Runtime on the CPU in fp32, see
benchmarks/extraction_paths.py); warm-up batches are not timed; the median of --repeats timed
passes is reported. All configurations are measured in one process, side by side.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=5, help="timed batches per pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", default="none", help="throughput does not depend on the weights")
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime", "auto"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from rca_gpu.data.sources import from_arrays
    from rca_gpu.features.backbones import BackboneExtractor
    from rca_gpu.features.base import ExtractionContext
    from rca_gpu.spec import make_features

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    lines = [
        f"machine: {name}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads; "
        f"batch {args.batch_size}; {args.image_size} px; runtime {args.runtime}; median of {args.repeats} x "
        f"{args.batches} batches",
        "",
        "| model | precision | images/s | ms/batch |",
        "|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    import numpy as np

    failures = from_arrays(np.zeros((1, 8, 8), dtype=np.uint8))
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    batch = batch.to(device).contiguous(memory_format=torch.channels_last)
    for model_name in args.models:
        spec = make_features(model_name, weights=args.weights, image_size=args.image_size, runtime=args.runtime)
        for precision in args.precisions:
            context = ExtractionContext(failures=failures, device=device, precision=precision)
            extractor = BackboneExtractor(spec, context)
            extractor.prepare()
            autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

            def step(extractor=extractor, autocast=autocast):  # this iteration's, bound now
                with torch.inference_mode(), autocast:
                    out = extractor.encode(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return out

            for _ in range(2):
                step()
            rates = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                for _ in range(args.batches):
                    step()
                elapsed = time.perf_counter() - started
                rates.append(args.batches * args.batch_size / elapsed)
            rate = statistics.median(rates)
            line = f"| {model_name} | {precision} | {rate:.1f} | {1000 * args.batch_size / rate:.1f} |"
            lines.append(line)
            print(line, flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
