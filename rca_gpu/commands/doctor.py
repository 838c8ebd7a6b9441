"""``rca-gpu doctor``: what this installation will compute on, and whether its GPU stack is consistent.

Prints the device decision and why, the CUDA and driver versions, the GPU's compute capability, which GPU
libraries import, which backend each stage would use, and the known mismatches:

- two FAISS builds installed (faiss-cpu and a faiss-gpu wheel install the same ``faiss`` package and
  overwrite each other's files);
- a FAISS build without machine code or PTX for this GPU (its first GPU call aborts the process);
- torch and the RAPIDS libraries (cuML, cuVS, CuPy) built for different CUDA majors;
- a GPU library that is installed but does not import, or whose test search fails on this GPU.

Exit status 0 when the installation is consistent, 1 with the reasons when not. ``--require-gpu`` also
counts a missing GPU or a missing cuML as a problem (for GPU machines and images).
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import json
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from rca_gpu.commands.options import QuietOpt

#: Distributions whose versions the report lists (normalised names, prefixes).
_LISTED = ("torch", "torchvision", "cupy", "cuml", "cuvs", "libcuvs", "libcuml", "rmm", "faiss", "onnx2torch",
           "umap-learn", "fast-hdbscan", "scikit-learn")


@dataclass
class Report:
    """Everything ``doctor`` found; ``problems`` decide the exit status, ``warnings`` do not."""

    facts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.facts, "problems": self.problems, "warnings": self.warnings, "consistent": not self.problems}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> dict[str, str]:
    """{normalised name: version} of every installed distribution."""
    found = {}
    for dist in metadata.distributions():
        name = dist.name
        if name:
            found[_normalise(name)] = dist.version
    return found


def faiss_distributions(installed: dict[str, str]) -> list[str]:
    """Installed distributions that provide the ``faiss`` package (faiss-cpu, faiss-gpu-cu12, ...)."""
    return sorted(n for n in installed if n == "faiss" or n.startswith("faiss-"))


def rapids_cuda_majors(installed: dict[str, str]) -> dict[str, int]:
    """{distribution: CUDA major} for the GPU libraries whose name says which CUDA they were built for."""
    majors = {}
    for name in installed:
        match = re.fullmatch(r"(?:lib)?(?:cuml|cuvs|raft|pylibraft|rmm|librmm|faiss-gpu)-cu(\d+)(?:-cuvs)?", name)
        match = match or re.fullmatch(r"cupy-cuda(\d+)x", name)
        if match:
            majors[name] = int(match[1])
    return majors


def _library_files(distribution: str) -> list:
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        return []
    return [f for f in files if ".so" in f.name]


def device_code(distribution: str) -> list:
    """The GPU architectures the shared libraries of an installed distribution carry code for."""
    from rca_gpu.fatbin import library_archs

    found = set()
    for file in _library_files(distribution):
        path = file.locate()
        try:
            found.update(library_archs(path.read_bytes()))
        except OSError:
            continue
    return sorted(found)


def _driver_version() -> str | None:
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],  # noqa: S607
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout.strip()
            return out.splitlines()[0] if out else None
        except (subprocess.SubprocessError, OSError):
            return None
    return None


def _import(module: str) -> tuple[bool, str]:
    """(imports, version or the error) for a module that is installed."""
    try:
        loaded = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken CUDA library raises many kinds of errors
        return False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return True, str(getattr(loaded, "__version__", "?"))


def faiss_problems(installed: dict[str, str], code: dict[str, list], capability: int | None) -> list[str]:
    """Two FAISS builds, or a FAISS build without code for this GPU (``capability`` e.g. 90; None: no GPU)."""
    from rca_gpu.fatbin import describe, runs_on

    faiss = faiss_distributions(installed)
    problems = []
    if len(faiss) > 1:
        problems.append(
            f"{len(faiss)} FAISS builds are installed ({', '.join(faiss)}); they install the same 'faiss' package "
            f"and overwrite each other's files. Keep one: pip uninstall -y {' '.join(faiss)}, then reinstall one "
            "(faiss-cpu for 'rca-gpu[cpu]'; the GPU extras need none)."
        )
    for name in faiss:
        archs = code.get(name) or []
        if archs and capability is not None and not runs_on(archs, capability):
            problems.append(
                f"{name} {installed[name]} carries GPU code for {describe(archs)} only; this GPU is sm_{capability}, "
                "where its first GPU call aborts the process. rca-gpu does not use it (see the kNN test searches), "
                f"but remove it: pip uninstall -y {name}."
            )
    return problems


def cuda_major_problems(majors: dict[str, int], torch_version: str, torch_cuda: str | None) -> tuple[list, list]:
    """(problems, warnings) about CUDA majors: torch vs the RAPIDS libraries, and RAPIDS among themselves."""
    problems, warnings = [], []
    if torch_cuda:
        torch_major = int(torch_cuda.split(".")[0])
        other = {n: m for n, m in majors.items() if m != torch_major}
        if other:
            problems.append(
                f"torch {torch_version} is built for CUDA {torch_cuda}, but "
                + ", ".join(f"{n} for CUDA {m}" for n, m in sorted(other.items()))
                + f": one process would load two CUDA stacks. Install the extra of torch's CUDA: "
                f"pip install 'rca-gpu[gpu-cu{torch_major}]' (after removing the others), or a torch built for "
                f"CUDA {sorted(set(other.values()))[0]}."
            )
    elif majors:
        warnings.append("torch is a CPU-only build, so the GPU libraries installed here are not used.")
    if len(set(majors.values())) > 1:
        problems.append(
            "GPU libraries for different CUDA majors are installed: "
            + ", ".join(f"{n} (CUDA {m})" for n, m in sorted(majors.items()))
            + ". Keep one extra: gpu-cu12 or gpu-cu13."
        )
    return problems, warnings


def gather(require_gpu: bool = False) -> Report:
    """Inspect this installation (imports torch and the GPU libraries that are installed)."""
    import importlib.util

    import torch

    import rca_gpu
    from rca_gpu.engine.device import probe_knn_backends, resolve_device
    from rca_gpu.errors import RcaError
    from rca_gpu.fatbin import describe

    report = Report()
    facts = report.facts
    installed = installed_distributions()
    facts["rca_gpu"] = rca_gpu.__version__ if hasattr(rca_gpu, "__version__") else installed.get("rca-gpu", "?")
    facts["python"] = platform.python_version()
    facts["platform"] = f"{platform.system()} {platform.machine()}"
    facts["distributions"] = {
        n: v for n, v in sorted(installed.items()) if any(n == p or n.startswith(p + "-") for p in _LISTED)
    }

    # CUDA, driver, GPU ------------------------------------------------------------------------------------
    cuda_build = torch.version.cuda
    facts["torch"] = torch.__version__
    facts["torch_cuda"] = cuda_build
    gpu = torch.cuda.is_available()
    facts["gpu"] = torch.cuda.get_device_name() if gpu else None
    capability = torch.cuda.get_device_capability() if gpu else None
    facts["compute_capability"] = f"{capability[0]}.{capability[1]}" if capability else None
    facts["driver"] = _driver_version() if gpu else None
    if gpu:
        try:
            import ctypes

            version = ctypes.c_int()
            ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version))
            facts["driver_cuda"] = f"{version.value // 1000}.{version.value % 1000 // 10}"
        except OSError:
            facts["driver_cuda"] = None

    # FAISS builds and one CUDA major ---------------------------------------------------------------------
    number = capability[0] * 10 + capability[1] if capability else None
    faiss = faiss_distributions(installed)
    facts["faiss_distributions"] = faiss
    for name in faiss:
        facts[f"{name}_device_code"] = describe(device_code(name))
    report.problems.extend(faiss_problems(installed, {n: device_code(n) for n in faiss}, number))
    majors = rapids_cuda_majors(installed)
    facts["cuda_majors"] = majors
    problems, warnings = cuda_major_problems(majors, torch.__version__, cuda_build)
    report.problems.extend(problems)
    report.warnings.extend(warnings)

    # imports ---------------------------------------------------------------------------------------------
    imports = {}
    for module in ("cupy", "cuml", "cuvs", "rmm", "faiss", "onnx2torch"):
        if importlib.util.find_spec(module) is None:
            imports[module] = "not installed"
            continue
        ok, detail = _import(module)
        if ok and detail == "?":
            detail = next((v for n, v in installed.items() if n == module or n.startswith(module)), "?")
        imports[module] = detail if ok else f"fails to import: {detail}"
        if not ok:
            (report.problems if gpu else report.warnings).append(f"{module} is installed but fails to import: {detail}")
    facts["imports"] = imports

    # device decision and stage backends ------------------------------------------------------------------
    try:
        device = resolve_device("auto")
    except RcaError as exc:  # pragma: no cover - auto does not raise today; kept for safety
        report.problems.append(str(exc))
        return report
    facts["device"] = device.to_dict()
    if gpu:
        facts["knn_probes"] = {b: ("works" if ok else why) for b, (ok, why) in probe_knn_backends().items()}
        for backend, (ok, why) in probe_knn_backends().items():
            if not ok and why != "not installed":
                report.problems.append(f"{backend} is installed but its test search fails on this GPU: {why}")
    facts["stages"] = stage_backends(device)
    if require_gpu:
        if not gpu:
            report.problems.append("--require-gpu: torch sees no CUDA GPU (torch build: "
                                   f"{'CUDA ' + cuda_build if cuda_build else 'CPU only'}).")
        elif not device.cuml:
            report.problems.append("--require-gpu: cuML is not usable on this GPU: " + device.reason)
    return report


def stage_backends(device: Any) -> dict[str, str]:
    """What each stage would run on with default settings: the kNN backend ``auto`` picks for 10,000 x 1280
    features, then every registered reducer and clusterer card that can do work (one that only passes its input
    on, such as the reducer 'none', is left out)."""
    from rca_gpu.engine import registry
    from rca_gpu.engine.knn import choose_backend

    name = choose_backend(10_000, 1280, device)
    backend, library = registry.planned_backend("knn", name, device)
    stages = {"knn": f"{name} ({backend}, {library})"}
    for cards in (registry.reducers(), registry.clusterers()):
        for card in cards.values():
            if getattr(card, "identity", False):
                continue
            backend, library = registry.planned_backend(card.stage, card.name, device)
            stages[f"{card.stage} {card.name}"] = f"{backend} ({library})"
    return stages


def render(report: Report, *, quiet: bool = False) -> str:
    """The report as plain text lines (what the command prints); with ``quiet`` only the warnings, the
    problems and the verdict (``consistent`` or ``inconsistent: N problem(s)``)."""
    lines = [] if quiet else _fact_lines(report.facts)
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    if report.problems:
        lines.extend(f"problem: {problem}" for problem in report.problems)
        lines.append(f"inconsistent: {len(report.problems)} problem(s)")
    else:
        lines.append("consistent")
    return "\n".join(lines)


def _fact_lines(f: dict[str, Any]) -> list[str]:
    """What the report found, one line per fact: versions, device decision, GPU, libraries, stage backends."""
    lines = [f"rca-gpu {f.get('rca_gpu')} on Python {f.get('python')} ({f.get('platform')})"]
    device = f.get("device") or {}
    lines.append(f"device (auto): {device.get('torch_device', '?')}; {device.get('reason', '')}")
    for note in device.get("notes", []):
        lines.append(f"  note: {note}")
    gpu = f.get("gpu")
    if gpu:
        lines.append(f"GPU: {gpu}, compute capability {f.get('compute_capability')}, driver {f.get('driver')} "
                     f"(CUDA {f.get('driver_cuda')})")
    else:
        lines.append("GPU: none visible to torch")
    build = "CUDA " + f["torch_cuda"] if f.get("torch_cuda") else "CPU only"
    lines.append(f"torch {f.get('torch')}, built for {build}")
    lines.append("GPU libraries: " + ", ".join(f"{m} {v}" for m, v in f.get("imports", {}).items()))
    if f.get("cuda_majors"):
        lines.append("CUDA major by library: " + ", ".join(f"{n} {m}" for n, m in f["cuda_majors"].items()))
    faiss = f.get("faiss_distributions") or []
    lines.append("FAISS: " + (", ".join(f"{n} ({f.get(n + '_device_code')})" for n in faiss) or "not installed"))
    if f.get("knn_probes"):
        lines.append("kNN test searches on the GPU: " + ", ".join(f"{b} {r}" for b, r in f["knn_probes"].items()))
    lines.append("stage backends (default settings):")
    for stage, backend in f.get("stages", {}).items():
        lines.append(f"  {stage:<16} {backend}")
    return lines


def doctor_command(
    require_gpu: Annotated[bool, typer.Option("--require-gpu", help="Also fail without a CUDA GPU and cuML "
                           "(for GPU machines and images).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Check the installation: device decision, CUDA/driver, GPU libraries, stage backends, known mismatches.

    Exit status 0 when consistent, 1 with the reasons when not. With --quiet only the warnings, the problems
    and the verdict are printed (--json still prints the whole report).
    """
    import logging

    logging.getLogger("rca_gpu").setLevel(logging.ERROR)  # the report says it all, once
    report = gather(require_gpu=require_gpu)
    typer.echo(json.dumps(report.to_dict(), indent=2, default=str) if as_json else render(report, quiet=quiet))
    raise typer.Exit(1 if report.problems else 0)
