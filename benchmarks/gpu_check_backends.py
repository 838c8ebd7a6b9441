"""Which backend ran each stage, for benchmarks/gpu_check.sh: runs a few pipelines on the GPU, reads each
run.json's ``device.backends`` (rca_gpu.engine.dispatch.record) and fails when any stage ran on another
backend than the one this machine must use.

    python benchmarks/gpu_check_backends.py OUT [--expect rapids|torch] [--images N]

``--expect`` (default: rapids when cuML imports, else torch) names the stack: "rapids" (cuML, cuVS) or
"torch" (CUDA torch and CuPy without RAPIDS: the torch backend runs kNN, UMAP, PCA, DBSCAN and K-means on the
GPU; HDBSCAN runs on the CPU, which the table says). Writes OUT/backends.md and exits 1 when a stage ran
elsewhere, a GPU fit fell back to the CPU, the device was simulated, or a run failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

#: pipeline -> the stages it runs, with the "backend library" each must run on, per stack. A kNN row names
#: the backend auto picks; "knn *" accepts any GPU kNN backend of the stack.
PIPELINES = ("pixels(image_size=32)+umap+dbscan", "pixels(image_size=32)+umap+hdbscan",
             "pixels(image_size=32)+pca+kmeans")
EXPECTED: dict[str, dict[str, list[str]]] = {
    "rapids": {
        "knn *": ["gpu cuvs", "gpu faiss-gpu", "gpu torch"],
        "reduce umap": ["gpu cuml"], "reduce pca": ["gpu torch"],
        "cluster dbscan": ["gpu cuml"], "cluster hdbscan": ["gpu cuml"], "cluster kmeans": ["gpu cuml"],
    },
    "torch": {
        "knn *": ["gpu torch", "gpu faiss-gpu"],
        "reduce umap": ["gpu torch"], "reduce pca": ["gpu torch"],
        "cluster dbscan": ["gpu torch"], "cluster hdbscan": ["cpu fast_hdbscan"], "cluster kmeans": ["gpu torch"],
    },
}


def unexpected(device: dict, expect: str) -> list[str]:
    """Reasons the ``device`` section of one run.json breaks the ``expect`` stack's table (empty: none).

    Every stage in ``device["backends"]`` must be in the table and have run on exactly one of the allowed
    backends; a run without any recorded backend, with a GPU fit that fell back, or on the simulated GPU
    fails as well.
    """
    table = EXPECTED[expect]
    backends = device.get("backends") or {}
    reasons = []
    if not backends:
        reasons.append("run.json records no backend (device.backends is empty)")
    if device.get("simulated"):
        reasons.append("the device was the simulated GPU, not this GPU")
    for line in device.get("fallbacks") or []:
        reasons.append(f"a GPU fit fell back: {line}")
    for stage, ran in sorted(backends.items()):
        key = "knn *" if stage.startswith("knn ") else stage
        allowed = table.get(key)
        if allowed is None:
            reasons.append(f"{stage}: no backend expected for this stage on the {expect} stack, ran on {ran}")
            continue
        wrong = [label for label in ran if label not in allowed]
        if wrong:
            reasons.append(f"{stage}: ran on {', '.join(wrong)}; expected {' or '.join(allowed)} ({expect} stack)")
    return reasons


def detect_stack() -> str:
    """"rapids" when cuML imports in a child process, else "torch"."""
    found = subprocess.run([sys.executable, "-c", "import cuml"], capture_output=True, check=False)
    return "rapids" if found.returncode == 0 else "torch"


def write_images(folder: Path, n: int) -> None:
    """``n`` 32-px pattern images in 4 planted groups (tests/helpers.py's bars)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import pattern_images, write_pngs

    images, labels = pattern_images(n_per=max(1, n // 4), groups=4, size=32, seed=0)
    write_pngs(folder, images, labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--expect", choices=sorted(EXPECTED), default=None)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--device", default="auto", help="auto (default) or gpu")
    args = parser.parse_args(argv)
    expect = args.expect or detect_stack()
    args.out.mkdir(parents=True, exist_ok=True)
    images = args.out / "backend_images"
    if not images.is_dir():
        write_images(images, args.images)
    rows, failed = [], False
    for i, pipeline in enumerate(PIPELINES):
        run_dir = args.out / f"backend_run_{i}"
        done = subprocess.run([sys.executable, "-m", "rca_gpu.cli", "run", str(images), "--out", str(run_dir),
                               "--pipeline", pipeline, "--device", args.device, "--stability", "2", "-q"],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            reasons = [f"the run failed ({done.returncode}): " + (done.stderr.strip().splitlines() or ["?"])[-1]]
            backends = {}
        else:
            device = json.loads((run_dir / "run.json").read_text())["device"]
            reasons, backends = unexpected(device, expect), device.get("backends") or {}
        failed = failed or bool(reasons)
        ran = "; ".join(f"{stage}: {', '.join(labels)}" for stage, labels in sorted(backends.items()))
        rows.append(f"| {pipeline} | {ran or '-'} | {'ok' if not reasons else 'FAILED: ' + '; '.join(reasons)} |")
    lines = [f"Stack expected: {expect} (rca_gpu run --device {args.device}, {args.images} images)", "",
             "| pipeline | backend per stage (run.json device.backends) | verdict |", "|---|---|---|", *rows, ""]
    (args.out / "backends.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
