"""How long does the report take to build, how large is it, and how fast does it open, at 10k and 200k images?

    python benchmarks/report_scale.py [--sizes 10000 200000] [--work runs/bench-report] [--map-points 20000]

For each size it writes synthetic 32x32 PNG images (20 groups that differ in colour, brightness and blur),
a run folder with their clusters.parquet (metadata and image properties), embedding.parquet (x, y and a
5-D clustering space) and run.json, then times:

- explanations (rules for 20 clusters over metadata and image properties, written to explanations.parquet),
- the first report build (thumbnails made), and a second one (thumbnails reused),
- the page in headless Chromium: from navigation until the map is drawn (`#map[data-ready='1']`).

Prints a Markdown table and the machine and versions. Images are reused between runs of the script.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

GROUPS = 20
SIZE = 32


def synthetic_images(folder: Path, n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """n PNGs in ``folder`` (reused when present); returns paths, group per image, properties (n, p)."""
    from PIL import Image, ImageFilter

    from rca_gpu.data.properties import image_properties

    rng = np.random.default_rng(seed)
    groups = rng.integers(0, GROUPS, n)
    colours = rng.integers(20, 235, (GROUPS, 3))
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"img_{i:06d}.png") for i in range(n)]
    noise_seeds = rng.integers(0, 2**31, n)

    def one(i: int) -> np.ndarray:
        g = int(groups[i])
        local = np.random.default_rng(int(noise_seeds[i]))
        pixels = np.clip(colours[g] + local.normal(0, 12 + 2 * g, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        if g % 4 == 0:
            image = image.filter(ImageFilter.GaussianBlur(1.5))
        if not Path(paths[i]).is_file():
            image.save(paths[i])
        return image_properties(image)

    with ThreadPoolExecutor() as pool:
        properties = np.stack(list(pool.map(one, range(n), chunksize=256)))
    return paths, groups, properties


def fake_run(out: Path, paths: list[str], groups: np.ndarray, properties: np.ndarray, seed: int = 0) -> None:
    """A finished run folder (format of rca_gpu.runfolder) over the synthetic images."""
    from rca_gpu import outputs
    from rca_gpu.data.properties import PROPERTY_COLUMNS
    from rca_gpu.runfolder import RUN_FORMAT, new_run_id

    rng = np.random.default_rng(seed)
    n = len(paths)
    run_id = new_run_id()
    labels = groups.copy()
    labels[rng.random(n) < 0.05] = -1  # 5 % noise
    clusters = pd.DataFrame({
        "id": np.arange(n), "path": paths, "cluster": labels,
        "status": np.where(labels >= 0, "clustered", "noise"), "reason": "",
        "camera": np.where(groups % 3 == 0, "night", rng.choice(["day", "dusk"], n)),
        "site": rng.choice([f"site-{k}" for k in range(8)], n), "score": rng.random(n),
        "root_cause": [f"cause-{g % 10}" for g in groups],
    })
    clusters = pd.concat([clusters, pd.DataFrame(properties, columns=PROPERTY_COLUMNS)], axis=1)
    centres = rng.normal(0, 8, (GROUPS, 5))
    space = centres[groups] + rng.normal(0, 1, (n, 5))
    embedding = pd.DataFrame({"id": np.arange(n), "cluster": labels, "x": space[:, 0], "y": space[:, 1]})
    embedding = pd.concat([embedding, pd.DataFrame(space, columns=[f"e{i}" for i in range(5)])], axis=1)
    if out.exists():
        shutil.rmtree(out)
    outputs.write_parquet(out / "clusters.parquet", clusters, run_id=run_id)
    outputs.write_parquet(out / "embedding.parquet", embedding, run_id=run_id)
    counts = {"input_rows": n, "usable": n, "rejected": 0, "clustered": int((labels >= 0).sum()),
              "noise": int((labels < 0).sum()), "clusters": GROUPS}
    outputs.write_json(out / "run.json", {"rca_gpu_run": RUN_FORMAT, "run_id": run_id, "seed": seed,
                                          "counts": counts, "resolved_pipeline": "synthetic",
                                          "source": {"given": "synthetic"}, "plot_embedding": "synthetic"})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-report"))
    parser.add_argument("--map-points", type=int, default=None)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()

    from rca_gpu.report.browser import find_chromium, open_report
    from rca_gpu.report.build import MAP_POINTS, build_report, write_explanations
    from rca_gpu.runfolder import open_run

    map_points = args.map_points or MAP_POINTS
    chromium = None if args.no_browser else find_chromium()
    versions = {name: _version(name) for name in ("plotly", "pillow", "scikit-learn", "pandas", "playwright")}
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; Python {platform.python_version()}; "
          + ", ".join(f"{k} {v}" for k, v in versions.items())
          + (f"; {_chromium_version(chromium)}" if chromium else ""))
    print(f"map points drawn at most: {map_points}\n")
    print("| images | make images s | explanations s | report s (first) | thumbnails | report s (again) "
          "| report.html MB | with files MB | page load s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for n in args.sizes:
        started = time.perf_counter()
        paths, groups, properties = synthetic_images(args.work / f"images-{n}", n)
        make_s = time.perf_counter() - started
        out = args.work / f"run-{n}"
        fake_run(out, paths, groups, properties)
        run = open_run(out)
        started = time.perf_counter()
        write_explanations(run)
        explain_s = time.perf_counter() - started
        started = time.perf_counter()
        first = build_report(out, map_points=map_points)
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        build_report(out, map_points=map_points)
        again_s = time.perf_counter() - started
        load_s = None
        if chromium:
            with open_report(first.path, timeout_s=300) as (page, log):
                load_s = log.load_seconds
                if log.console_errors:
                    print(f"console errors: {log.console_errors}", file=sys.stderr)
        row = {"n": n, "make_images_s": make_s, "explain_s": explain_s, "report_first_s": first_s,
               "thumbnails": first.n_thumbnails, "report_again_s": again_s,
               "html_mb": first.path.stat().st_size / 2**20, "total_mb": first.bytes / 2**20,
               "page_load_s": load_s, "steps_first": first.seconds}
        results.append(row)
        print(f"| {n} | {make_s:.1f} | {explain_s:.1f} | {first_s:.1f} | {first.n_thumbnails} | {again_s:.1f} | "
              f"{row['html_mb']:.1f} | {row['total_mb']:.1f} | "
              f"{'-' if load_s is None else f'{load_s:.1f}'} |", flush=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    print("\nsteps of the first build (s): " + "; ".join(
        f"{r['n']}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["steps_first"].items()) for r in results))


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def _chromium_version(path: str) -> str:
    import subprocess

    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "chromium"


if __name__ == "__main__":
    main()
