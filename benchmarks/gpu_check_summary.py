"""Summary of a benchmarks/gpu_check.sh run: writes OUT/summary.md and exits 1 when the check did not pass.

The check passes only when CUDA is visible, no GPU test failed, at least one GPU test passed (a run where
every GPU test skipped proves nothing), every stage ran on the backend this stack must use
(gpu_check_backends.py), and the benchmarks ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path


def count_tests(junit: Path) -> dict[str, int]:
    """passed / failed / errors / skipped from a pytest --junitxml file (all zero when it is missing)."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    if not junit.is_file():
        return counts
    root = ElementTree.parse(junit).getroot()
    for suite in root.iter("testsuite"):
        total = int(suite.get("tests", 0))
        counts["failed"] += int(suite.get("failures", 0))
        counts["errors"] += int(suite.get("errors", 0))
        counts["skipped"] += int(suite.get("skipped", 0))
        counts["passed"] += total - int(suite.get("failures", 0)) - int(suite.get("errors", 0)) - int(
            suite.get("skipped", 0))
    return counts


def verdict(*, cuda: bool, counts: dict[str, int], benchmarks_failed: bool,
            backends_failed: bool = False) -> list[str]:
    """The reasons the check failed (empty: it passed)."""
    reasons = []
    if backends_failed:
        reasons.append("a stage ran on an unexpected backend, or a backend run failed (see backends.md)")
    if not cuda:
        reasons.append("CUDA is missing: torch sees no GPU")
    if counts["failed"] or counts["errors"]:
        reasons.append(f"{counts['failed']} GPU test(s) failed and {counts['errors']} errored")
    if counts["passed"] == 0:
        reasons.append(f"every GPU test skipped ({counts['skipped']} skipped, none passed)")
    if benchmarks_failed:
        reasons.append("a throughput benchmark failed (see extraction.log / knn.log)")
    return reasons


def _read(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cuda", type=int, choices=(0, 1), required=True)
    parser.add_argument("--benchmarks-failed", type=int, choices=(0, 1), default=0)
    parser.add_argument("--backends-failed", type=int, choices=(0, 1), default=0)
    args = parser.parse_args(argv)
    out: Path = args.out
    counts = count_tests(out / "gpu_tests.xml")
    reasons = verdict(cuda=bool(args.cuda), counts=counts, benchmarks_failed=bool(args.benchmarks_failed),
                      backends_failed=bool(args.backends_failed))
    try:
        doctor = json.loads(_read(out / "doctor.json") or "{}")
    except ValueError:
        doctor = {}
    versions = ", ".join(f"{k} {v}" for k, v in (doctor.get("distributions") or {}).items())
    lines = [
        "# GPU check",
        "",
        f"- result: {'PASSED' if not reasons else 'FAILED: ' + '; '.join(reasons)}",
        f"- GPU (nvidia-smi): {_read(out / 'gpu.txt') or 'unknown'}",
        f"- compute capability: {doctor.get('compute_capability')}; driver {doctor.get('driver')} "
        f"(CUDA {doctor.get('driver_cuda')}); torch {doctor.get('torch')} built for CUDA {doctor.get('torch_cuda')}",
        f"- device decision: {(doctor.get('device') or {}).get('reason')}",
        "- doctor: " + ("consistent" if doctor.get("consistent")
                        else "problems: " + "; ".join(doctor.get("problems", []))),
        f"- GPU libraries: {doctor.get('imports')}",
        f"- versions: {versions}",
        f"- GPU tests: {counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors, "
        f"{counts['skipped']} skipped (tests/test_gpu.py; skip reasons in gpu_tests.txt)",
        "",
        "## Backend of every stage",
        "",
        _read(out / "backends.md") or "not run",
        "",
        "## kNN, UMAP, DBSCAN at scale; end to end",
        "",
        _read(out / "scale.md") or "not run",
        "",
        "## Extraction throughput",
        "",
        _read(out / "extraction.md") or "not run",
        "",
        "## kNN backends",
        "",
        _read(out / "knn.md") or "not run",
        "",
    ]
    (out / "summary.md").write_text("\n".join(lines))
    print("\n".join(lines[:10]))
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())
