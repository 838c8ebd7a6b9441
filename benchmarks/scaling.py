"""How rca-gpu scales with the number of failures: planted features through --features, and extraction.

    # everything after extraction: planted features (rca_gpu.datasets.planted) through `rca-gpu run --features`
    python benchmarks/scaling.py features --sizes 10000 20000 40000 80000 160000 320000 1000000 --dims 256 1280 \
        --out benchmarks/scaling-features.json
    # extraction: N small PNG files through MobileNetV2 (32 px), memory of the extraction alone
    python benchmarks/scaling.py extraction --sizes 10000 100000 --out benchmarks/scaling-extraction.json
    # listing a folder of N empty files and reading a manifest of N rows, now and the former way
    python benchmarks/scaling.py sources --sizes 1000000 --out benchmarks/scaling-sources.json
    # the Markdown tables of benchmarks/RESULTS.md from the JSON files
    python benchmarks/scaling.py table benchmarks/scaling-features.json benchmarks/scaling-extraction.json

Each run is a child process (`python -m rca_gpu.cli run ...`, or the extraction below) started on its own, so
its peak resident memory is its own: ``ru_maxrss`` from ``os.wait4`` (exact, the child's main process) and
the peak of the whole process tree sampled every 0.2 s (DataLoader workers included). Per-stage seconds come
from the run's run.json. Quality: the ARI between the clusters and the planted clusters with noise as a
label of its own, the number of clusters found against the 20 planted, the noise share, and the recall of
each rare planted cluster (the share of its rows in the cluster that holds most of them). The cost exponent
is the least-squares slope of log(seconds after extraction) against log(n) over the sizes from --fit-from on.

A size whose run exceeds --timeout-min is recorded as timed out and the larger sizes of that dimension are
skipped; a size whose planted matrix alone would exceed --max-matrix-gib is skipped with that reason. Runs
on a GPU node with --device gpu (the same script; results name the GPU). Run it alone: under
``flock /work/coord/bench.lock`` on shared machines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30


# --------------------------------------------------------------------------------------------------
# Measuring a child process
# --------------------------------------------------------------------------------------------------


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        total = root.memory_info().rss
        for child in root.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        return total
    except psutil.Error:
        return 0


def _vm_hwm() -> int:
    """This process's peak resident memory in bytes (VmHWM: the high-water mark of its own address space,
    unlike ru_maxrss, which on Linux starts from the parent's peak at fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _report_peak_at_exit() -> None:
    import atexit

    atexit.register(lambda: print(f"VMHWM {_vm_hwm()}", flush=True))


def peak_child(module: str, argv: list[str]) -> None:
    """Child mode: run ``python -m module argv...`` and print its VmHWM when it exits."""
    import runpy

    _report_peak_at_exit()
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def measure(command: list[str], *, timeout_s: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command``; return wall seconds, exit code, peak RSS of its main process (VmHWM, printed by the
    child; ru_maxrss as a fallback) and of its process tree (sampled), its last output lines; exit code None
    when it was stopped at ``timeout_s``."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **(env or {})}, cwd=REPO)
    peak_tree = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not stop.is_set():
            peak_tree = max(peak_tree, _tree_rss(process.pid))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    timed_out = False
    deadline = started + timeout_s
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            timed_out = True
            process.kill()
            pid, status, usage = os.wait4(process.pid, 0)
            break
        time.sleep(0.2)
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    reader.join(timeout=5)
    process.returncode = os.waitstatus_to_exitcode(status)
    hwm = [int(line.split()[1]) for line in output if line.startswith("VMHWM ")]
    return {
        "exit_code": None if timed_out else process.returncode,
        "timed_out": timed_out,
        "wall_s": round(wall, 1),
        "peak_rss_gib": round((hwm[-1] if hwm else usage.ru_maxrss * 1024) / GIB, 3),
        "peak_rss_source": "VmHWM" if hwm else "ru_maxrss (floored at the parent's peak)",
        "peak_tree_rss_gib": round(peak_tree / GIB, 3),
        "tail": "".join(output[-15:]),
    }


def machine() -> dict[str, Any]:
    info = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        meminfo = Path("/proc/meminfo").read_text().split()
        info["memory_gib"] = round(int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024 / GIB, 1)
    except (OSError, ValueError):
        pass
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name() if "
                            "torch.cuda.is_available() else '')"], capture_output=True, text=True)
    if probe.stdout.strip():  # asked in a child, so that this process stays small
        info["gpu"] = probe.stdout.strip()
    info["load_average_at_start"] = os.getloadavg()
    return info


# --------------------------------------------------------------------------------------------------
# Planted features through --features
# --------------------------------------------------------------------------------------------------


def planted_files(n: int, dims: int, folder: Path, seed: int) -> tuple[Path, Path, np.ndarray]:
    """features.npy and metadata.parquet (id, root_cause) of planted_features(n, dims), written without
    holding the matrix in memory (the rows go straight into a memory-mapped .npy)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rca_gpu.datasets.planted import planted_features

    features = folder / "features.npy"
    x = np.lib.format.open_memmap(features, mode="w+", dtype=np.float32, shape=(n, dims))
    _, labels = planted_features(n, dims=dims, seed=seed, out=x)
    x.flush()
    del x
    names = pa.array([f"planted-{v:02d}" for v in range(int(labels.max()) + 1)])
    metadata = folder / "metadata.parquet"
    pq.write_table(pa.table({"id": pa.array(np.arange(n)),
                             "root_cause": pa.DictionaryArray.from_arrays(pa.array(labels.astype(np.int32)), names)}),
                   metadata)
    return features, metadata, labels


def quality(out: Path, labels: np.ndarray, n_rare: int = 3) -> dict[str, Any]:
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score

    clusters = pd.read_parquet(out / "clusters.parquet", columns=["cluster", "status"])
    found = clusters["cluster"].to_numpy()
    planted = int(labels.max()) + 1
    recall = {}
    for rare in range(planted - n_rare, planted):
        members = found[labels == rare]
        members = members[members >= 0]
        share = np.bincount(members).max() / (labels == rare).sum() if members.size else 0.0
        recall[str(rare)] = round(float(share), 3)
    return {
        "ari": round(float(adjusted_rand_score(labels, found)), 4),  # noise (-1) is a label of its own
        "clusters": int(len(np.unique(found[found >= 0]))),
        "planted": planted,
        "noise_share": round(float((found < 0).mean()), 4),
        "rare_recall": recall,
    }


def run_features(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    work = Path(args.work or tempfile.mkdtemp(prefix="rca-scaling-"))
    for dims in args.dims:
        for n in sorted(args.sizes):
            row: dict[str, Any] = {"kind": "features", "n": n, "dims": dims, "pipeline": args.pipeline,
                                   "device": args.device, "matrix_gib": round(n * dims * 4 / GIB, 3)}
            if row["matrix_gib"] > args.max_matrix_gib:
                row["skipped"] = f"the {n} x {dims} float32 matrix alone is {row['matrix_gib']} GiB > --max-matrix-gib"
                results.append(row)
                print(json.dumps(row), flush=True)
                continue
            if any(r.get("timed_out") and r["dims"] == dims for r in results):
                row["skipped"] = "a smaller size of this dimension timed out"
                results.append(row)
                print(json.dumps(row), flush=True)
                continue
            folder = work / f"{n}x{dims}"
            folder.mkdir(parents=True, exist_ok=True)
            features, metadata, labels = planted_files(n, dims, folder, args.seed)
            out = folder / "out"
            command = [sys.executable, str(Path(__file__).resolve()), "_peak", "rca_gpu.cli", "run", "--features",
                       str(features), "--metadata",
                       str(metadata), "--out", str(out), "--pipeline", args.pipeline, "--device", args.device,
                       "--seed", str(args.seed), "--quiet"]
            row.update(measure(command, timeout_s=args.timeout_min * 60))
            if row["exit_code"] == 0:
                info = json.loads((out / "run.json").read_text())
                row["seconds"] = info["seconds"]
                row["after_extraction_s"] = round(
                    sum(v for k, v in info["seconds"].items() if k not in ("load_features", "total")), 1)
                row["tuning_seconds"] = info["tuning"].get("seconds")
                row["resolved_pipeline"] = info["resolved_pipeline"]
                row["knn_backend"] = info["knn"]["backend"]
                row["sampling"] = info["tuning"].get("sample") or info.get("sample")
                row["versions"] = {k: info["versions"].get(k) for k in ("rca-gpu", "torch", "numpy", "scikit-learn",
                                                                       "umap-learn", "faiss-cpu", "cuml-cu12")}
                row.update(quality(out, labels))
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "tail"}), flush=True)
            if row["exit_code"] not in (0, None):
                print(row["tail"], flush=True)
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    return results


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------


def make_images(n: int, folder: Path, seed: int = 0, size: int = 32) -> None:
    """n small grayscale PNGs (size x size) in sub-folders of 1000, a bright bar at one of 4 places."""
    from PIL import Image

    marker = folder / ".complete"
    if marker.exists():
        return
    rng = np.random.default_rng(seed)
    band = size // 4
    for start in range(0, n, 1000):
        sub = folder / f"d{start // 1000:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(start, min(n, start + 1000)):
            image = rng.integers(0, 40, size=(size, size), dtype=np.uint8)
            g = i % 4
            image[g * band:(g + 1) * band] = 220
            Image.fromarray(image).save(sub / f"img_{i:07d}.png", optimize=False)
    marker.write_text(str(n))


def extraction_child(folder: str, pipeline: str, cache: str, batch_size: int, workers: int) -> None:
    """Child mode: list the folder, extract features with the shard cache, print one JSON line."""
    _report_peak_at_exit()
    from rca_gpu.data.sources import load_source
    from rca_gpu.engine.device import resolve_device
    from rca_gpu.features.compute import compute_features
    from rca_gpu.progress import Reporter
    from rca_gpu.spec import build_run_spec

    spec = build_run_spec(pipeline=pipeline, device="cpu", batch_size=batch_size, workers=workers)
    started = time.perf_counter()
    failures = load_source(folder)
    listed = time.perf_counter() - started
    rss_after_listing = _vm_hwm()
    features = compute_features(spec.pipeline.features, failures, spec, resolve_device("cpu"), Path(cache),
                                Reporter(enabled=False))
    import psutil

    rss_end = psutil.Process().memory_info().rss  # the matrix is all there now, decoding and shards are done
    print("RESULT " + json.dumps({"n": len(failures), "usable": features.n, "dims": int(features.matrix.shape[1]),
                      "matrix_gib": features.n * int(features.matrix.shape[1]) * 4 / GIB,
                      "list_s": round(listed, 2), "extract_s": round(features.seconds, 1),
                      "peak_rss_after_listing_gib": rss_after_listing / GIB, "rss_end_gib": rss_end / GIB}),
          flush=True)


def run_extraction(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    work = Path(args.work or tempfile.mkdtemp(prefix="rca-scaling-"))
    for n in sorted(args.sizes):
        images = work / f"images-{n}"
        started = time.perf_counter()
        make_images(n, images)
        made = time.perf_counter() - started
        cache = work / f"cache-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        command = [sys.executable, str(Path(__file__).resolve()), "_extract", str(images), args.pipeline,
                   str(cache), str(args.batch_size), str(args.workers)]
        row = {"kind": "extraction", "n": n, "pipeline": args.pipeline, "batch_size": args.batch_size,
               "workers": args.workers, "images_made_s": round(made, 1)}
        row.update(measure(command, timeout_s=args.timeout_min * 60))
        if row["exit_code"] == 0:
            child = json.loads(next(line for line in row["tail"].splitlines() if line.startswith("RESULT "))[7:])
            row.update(child)
            row["peak_rss_minus_matrix_gib"] = round(row["peak_rss_gib"] - child["matrix_gib"], 3)
            row["peak_tree_rss_minus_matrix_gib"] = round(row["peak_tree_rss_gib"] - child["matrix_gib"], 3)
            row["rss_end_minus_matrix_gib"] = round(child["rss_end_gib"] - child["matrix_gib"], 3)
            row["images_per_s"] = round(child["usable"] / child["extract_s"], 1)
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "tail"}), flush=True)
        shutil.rmtree(cache, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(images, ignore_errors=True)
    return results


# --------------------------------------------------------------------------------------------------
# Sources: listing a folder, reading a manifest
# --------------------------------------------------------------------------------------------------


def make_empty_files(n: int, folder: Path) -> Path:
    """n empty .png files in 100 sub-folders and a manifest.parquet naming them (listing reads no pixel)."""
    import pandas as pd

    marker = folder / ".complete"
    manifest = folder / "manifest.parquet"
    if marker.exists():
        return manifest
    per = math.ceil(n / 100)
    names = []
    for i in range(n):
        sub = folder / f"d{i // per:03d}"
        if i % per == 0:
            sub.mkdir(parents=True, exist_ok=True)
        name = f"d{i // per:03d}/img_{i:07d}.png"
        (folder / name).touch()
        names.append(name)
    pd.DataFrame({"path": names, "root_cause": [f"c{i % 20}" for i in range(n)]}).to_parquet(manifest)
    marker.write_text(str(n))
    return manifest


def sources_child(mode: str, target: str) -> None:
    """Child mode: load one source the current way or the former way; print seconds and memory."""
    import pandas as pd

    from rca_gpu.data.sources import IMAGE_EXTENSIONS, load_source

    _report_peak_at_exit()
    base = _vm_hwm() / 1024
    started = time.perf_counter()
    if mode == "current":
        rows = len(load_source(target))
    elif mode == "former-folder":  # what the folder source did before: Path objects from rglob, sorted
        folder = Path(target)
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        table = pd.DataFrame({"id": np.arange(len(files)), "path": [str(p.resolve()) for p in files],
                              "folder": [str(p.parent.relative_to(folder)) for p in files]})
        rows = len(table)
    else:  # "former-manifest": the per-row Path.resolve() loop the manifest source used before
        frame = pd.read_parquet(target)
        base_dir = Path(target).parent.resolve()
        resolved, rejected = [], {}
        for pos, raw in enumerate(frame["path"].tolist()):
            candidate = (base_dir / Path(raw).expanduser()).resolve()
            resolved.append(str(candidate))
            if not candidate.is_relative_to(base_dir) or not candidate.is_file():
                rejected[pos] = "bad"
        table = pd.concat([pd.DataFrame({"id": np.arange(len(frame)), "path": resolved,
                                         "input_path": frame["path"].astype(str).tolist()}),
                           frame.drop(columns=["path"])], axis=1)
        rows = len(table)
    seconds = time.perf_counter() - started
    peak = _vm_hwm() / 1024
    print("RESULT " + json.dumps({"rows": rows, "seconds": round(seconds, 1),
                                  "above_imports_mib": round((peak - base) / 1024)}), flush=True)


def run_sources(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    work = Path(args.work or tempfile.mkdtemp(prefix="rca-scaling-"))
    for n in sorted(args.sizes):
        folder = work / f"empty-{n}"
        manifest = make_empty_files(n, folder)
        for kind, target, modes in (("folder", folder, ("current", "former-folder")),
                                    ("manifest", manifest, ("current", "former-manifest"))):
            for mode in modes:
                command = [sys.executable, str(Path(__file__).resolve()), "_sources", mode, str(target)]
                row = {"kind": "sources", "source": kind, "how": mode.split("-")[0], "n": n}
                row.update(measure(command, timeout_s=args.timeout_min * 60))
                if row["exit_code"] == 0:
                    row.update(json.loads(next(line for line in row["tail"].splitlines()
                                               if line.startswith("RESULT "))[7:]))
                results.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "tail"}), flush=True)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return results


# --------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------


def cost_exponent(rows: list[dict[str, Any]], key: str, fit_from: int) -> float | None:
    points = [(r["n"], r[key]) for r in rows if r.get(key) and r["n"] >= fit_from]
    if len(points) < 2:
        return None
    slope = np.polyfit(np.log([p[0] for p in points]), np.log([p[1] for p in points]), 1)[0]
    return round(float(slope), 2)


def table(paths: list[Path], fit_from: int) -> str:
    lines = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        rows = data["results"]
        lines.append(f"From `{data['command']}` ({data['machine'].get('cpu', '?')}, {data['machine']['cpus']} "
                     f"cores, {data['machine'].get('memory_gib', '?')} GiB"
                     + (f", {data['machine']['gpu']}" if data["machine"].get("gpu") else "") + "):")
        lines.append("")
        if rows and rows[0]["kind"] == "sources":
            lines += ["| source | rows | how | seconds | peak memory above the imports MiB |", "|---|---|---|---|---|"]
            for r in rows:
                lines.append(f"| {r['source']} | {r['n']:,} | {r['how']} | {r.get('seconds', 'failed')} | "
                             f"{r.get('above_imports_mib', '')} |")
        elif rows and rows[0]["kind"] == "features":
            lines += ["| n | dims | wall s | load s | kNN s | reduce+cluster s | plot s | after extraction s | "
                      "peak RSS GiB | matrix GiB | clusters / planted | noise | ARI | rare recall |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                if "skipped" in r or r.get("exit_code") != 0:
                    why = r.get("skipped") or ("timed out after %.0f min" % (r["wall_s"] / 60) if r.get("timed_out")
                                               else f"failed (exit {r.get('exit_code')})")
                    lines.append(f"| {r['n']:,} | {r['dims']} | {why} |" + " |" * 11)
                    continue
                s = r["seconds"]
                lines.append(
                    f"| {r['n']:,} | {r['dims']} | {r['wall_s']:.0f} | {s.get('load_features', 0):.1f} | "
                    f"{s.get('knn', 0):.0f} | {s.get('reduce_cluster', 0):.0f} | {s.get('plot_embedding', 0):.0f} | "
                    f"{r['after_extraction_s']:.0f} | {r['peak_rss_gib']:.2f} | {r['matrix_gib']:.2f} | "
                    f"{r['clusters']} / {r['planted']} | {r['noise_share']:.1%} | {r['ari']:.3f} | "
                    f"{min(r['rare_recall'].values()):.2f} |")
            lines.append("")
            for dims in sorted({r["dims"] for r in rows}):
                done = [r for r in rows if r["dims"] == dims and r.get("exit_code") == 0]
                exponent = cost_exponent(done, "after_extraction_s", fit_from)
                if exponent is not None:
                    sizes = [r["n"] for r in done if r["n"] >= fit_from]
                    lines.append(f"Cost exponent after extraction, {dims} dims, n = {min(sizes):,} .. {max(sizes):,}: "
                                 f"**{exponent}**.")
        else:
            lines += ["| n images | dims | list s | extract s | images/s | peak RSS GiB | matrix GiB | "
                      "peak RSS - matrix GiB | RSS at the end - matrix GiB | process tree peak - matrix GiB |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                if r.get("exit_code") != 0:
                    lines.append(f"| {r['n']:,} | failed or timed out |" + " |" * 8)
                    continue
                lines.append(f"| {r['n']:,} | {r['dims']} | {r['list_s']} | {r['extract_s']} | {r['images_per_s']} | "
                             f"{r['peak_rss_gib']:.3f} | {r['matrix_gib']:.3f} | "
                             f"{r['peak_rss_minus_matrix_gib']:.3f} | "
                             f"{r.get('rss_end_minus_matrix_gib', float('nan')):.3f} | "
                             f"{r['peak_tree_rss_minus_matrix_gib']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_peak":
        peak_child(sys.argv[2], sys.argv[3:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_sources":
        sources_child(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_extract":
        folder, pipeline, cache, batch, workers = sys.argv[2:7]
        extraction_child(folder, pipeline, cache, int(batch), int(workers))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    features = commands.add_parser("features", help="planted features through rca-gpu run --features")
    features.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 40_000])
    features.add_argument("--dims", type=int, nargs="+", default=[256])
    features.add_argument("--pipeline", default="umap+dbscan", help="the default pipeline for --features")
    features.add_argument("--max-matrix-gib", type=float, default=8.0)
    extraction = commands.add_parser("extraction", help="small PNG files through extraction")
    extraction.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    extraction.add_argument("--pipeline", default="mobilenet_v2(image_size=32)+umap+dbscan",
                            help="only the feature stage is run")
    extraction.add_argument("--batch-size", type=int, default=64)
    extraction.add_argument("--workers", type=int, default=2)
    sources = commands.add_parser("sources", help="listing a folder and reading a manifest of n files")
    sources.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    for sub in (features, extraction, sources):
        sub.add_argument("--device", default="cpu", help="cpu | gpu | auto (passed to rca-gpu run)")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--timeout-min", type=float, default=90.0)
        sub.add_argument("--work", type=Path, help="folder for the generated files (default: a temporary one)")
        sub.add_argument("--keep", action="store_true", help="keep the generated files and run folders")
        sub.add_argument("--out", type=Path, help="JSON file for the results")
        sub.add_argument("--fit-from", type=int, default=40_000)
    tables = commands.add_parser("table", help="Markdown tables from result files")
    tables.add_argument("files", type=Path, nargs="+")
    tables.add_argument("--fit-from", type=int, default=40_000)
    args = parser.parse_args()
    if args.command == "table":
        print(table(args.files, args.fit_from))
        return
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "rca_gpu" / "numba"))
    info = machine()
    results = {"features": run_features, "extraction": run_extraction, "sources": run_sources}[args.command](args)
    payload = {"command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:]), "machine": info,
               "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "results": results}
    if args.out:
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(table([args.out], args.fit_from) if args.out else json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
