"""Throughput (images/s) of LRP and Grad-CAM heatmaps next to plain inference of the same DUT.

    python benchmarks/heatmap_throughput.py --models mnist_cnn mobilenet_v2 --batch-size 32 \
        --repeats 5 --out benchmarks/heatmap_throughput.md

Times the step the extractors run per batch (``lrp_relevance`` / ``gradcam_maps`` at one internal layer,
predicted class) against ``model(x)`` under ``torch.inference_mode()``, on the same pre-made batch, so
decoding is excluded. One warm-up pass is not timed; each configuration is timed ``--repeats`` times over
``--batches`` batches and the median is reported. Each result is forced to finish before the clock stops
(``.item()``), so the numbers are right on CUDA as well. Models use random weights: throughput does not
depend on them (`mnist_cnn` is the architecture of the mnist-rc DUT; MobileNetV2 uses its ImageNet
weights when the torch cache holds them, so that the check below is meaningful). The "check" column: for LRP
the median relative gap between the layer's total relevance and the predicted logit, for Grad-CAM the smallest
map value (never negative).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

NOTES = (
    "Relevance gap: 0 for a net that conserves relevance (tests/test_heatmaps.py checks that on a bias-free net). "
    "The epsilon/z+ rules give every bias its share, so biases absorb relevance: most of it in the mnist-rc DUT "
    "with random weights, and in MobileNetV2 "
    "before features.14 through the biases of the convolutions its batch norms are merged into. That is a "
    "property of LRP on these nets, not a loss in the extraction. The CPU is shared with other jobs, so "
    "absolute numbers vary between runs; the ratios to inference vary less."
)


def build(name: str) -> tuple[nn.Module, str, tuple[int, int, int], str, str]:
    """(model, weights, input shape, LRP layer, Grad-CAM layer) for a benchmark model name."""
    torch.manual_seed(0)  # random weights are the same on every run of this script
    if name == "mnist_cnn":  # the DUT architecture of the mnist-rc benchmark; features.6 is its last conv
        from rca_gpu.datasets.models import mnist_cnn

        return mnist_cnn().eval(), "random", (1, 28, 28), "features.6", "features.6"
    if name == "mobilenet_v2":
        from torchvision.models import mobilenet_v2

        try:  # ImageNet weights when the torch cache holds them (make weights): realistic relevance
            return (
                mobilenet_v2(weights="IMAGENET1K_V1").eval(),
                "ImageNet",
                (3, 224, 224),
                "features.14",
                "features.18",
            )
        except Exception:  # noqa: BLE001 - offline without the cached checkpoint: random weights time the same
            return mobilenet_v2(weights=None).eval(), "random", (3, 224, 224), "features.14", "features.18"
    raise SystemExit(f"unknown model {name!r}: use mnist_cnn or mobilenet_v2")


def timed(step: Callable[[], torch.Tensor], *, batches: int, repeats: int) -> list[float]:
    """Seconds per batch of ``step``, one value per repeat; one untimed warm-up pass first."""
    for _ in range(max(1, batches // 2)):
        step().sum().item()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            step().sum().item()  # waits for the device, whichever it is
        out.append((time.perf_counter() - start) / batches)
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(name: str, device: torch.device, batch_size: int, batches: int, repeats: int) -> list[str]:
    """Table rows for one model: inference, LRP and Grad-CAM on the same batch."""
    from rca_gpu.features.heatmaps import gradcam_maps, lrp_relevance, make_composite

    model, weights, shape, lrp_layer, cam_layer = build(name)
    model = model.to(device)
    batch = torch.rand(batch_size, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    batch = batch.contiguous(memory_format=torch.channels_last)
    composite = make_composite(model, "epsilon_plus")

    def infer() -> torch.Tensor:
        with torch.inference_mode():
            return model(batch)

    def lrp() -> torch.Tensor:
        return lrp_relevance(model, batch, [lrp_layer], composite=composite).layers[lrp_layer]

    def gradcam() -> torch.Tensor:
        return gradcam_maps(model, batch, [cam_layer])[0][cam_layer]

    result = lrp_relevance(model, batch, [lrp_layer], composite=composite)
    logit = result.logits.gather(1, result.predicted[:, None]).squeeze(1)
    total = result.layers[lrp_layer].flatten(1).sum(1)
    gap = ((total - logit).abs() / logit.abs().clamp_min(1e-12)).median()
    steps = (
        ("inference", infer, "-", ""),
        ("LRP epsilon_plus (zennit)", lrp, lrp_layer, f"relevance gap {float(gap):.1e}"),
        ("Grad-CAM (captum)", gradcam, cam_layer, f"min {float(gradcam().min()):.1e}"),
    )
    rows, base = [], None
    for method, step, layer, check in steps:
        seconds = statistics.median(timed(step, batches=batches, repeats=repeats))
        base = base or seconds
        rows.append(
            f"| {name} | {weights} | {'x'.join(map(str, shape))} | {method} | {layer} | "
            f"{batch_size / seconds:,.0f} | {seconds * 1000:,.1f} | {seconds / base:.1f} | {check} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["mnist_cnn", "mobilenet_v2"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="write the Markdown result here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from importlib.metadata import version

    device = torch.device(args.device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    header = [
        (
            f"- machine: {machine}; {os.cpu_count()} logical CPUs, torch using {torch.get_num_threads()} "
            f"threads; load average at start {os.getloadavg()[0]:.2f}"
        ),
        (
            f"- versions: Python {platform.python_version()}, torch {torch.__version__}, "
            f"zennit {version('zennit')}, captum {version('captum')}"
        ),
        f"- batch {args.batch_size}; median of {args.repeats} repeats x {args.batches} batches; warm-up excluded",
        "",
        "| model | weights | input | method | layer | images/s | ms/batch | x slower than inference | check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows = []
    for name in args.models:
        rows += measure(name, device, args.batch_size, args.batches, args.repeats)
    if not args.out:
        return
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    lines = ["# Heatmap extraction throughput", "", "Reproduce with:", "", "```", command, "```", ""]
    lines += [*header, *rows, "", f"Load average at the end: {os.getloadavg()[0]:.2f}. {NOTES}", ""]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
