"""The resolved dependency set of every install flavour (locks/FLAVOUR-ARCH.txt, `make lock`), checked offline.

faiss-cpu and the faiss-gpu wheels all install the same ``faiss`` package; two of them in one environment
overwrite each other's files. A GPU flavour must also be one CUDA stack: torch, cuML, cuVS and CuPy built
for the same CUDA major.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "locks"
#: flavour -> (lock file, extra it resolves, CUDA major or None)
FLAVOURS = {
    "cpu-x86_64": ("cpu-x86_64.txt", "cpu", None),
    "cpu-aarch64": ("cpu-aarch64.txt", "cpu", None),
    "gpu-cu12": ("gpu-cu12-x86_64.txt", "gpu-cu12", 12),
    "gpu-cu13": ("gpu-cu13-x86_64.txt", "gpu-cu13", 13),
}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")


def pins(text: str) -> dict[str, str]:
    """{normalised distribution name: version} of a `uv pip compile` output."""
    found = {}
    for line in text.splitlines():
        match = _PIN.match(line.strip())
        if match:
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


def faiss_distributions(resolved: dict[str, str]) -> list[str]:
    """Every distribution that installs the ``faiss`` package (faiss-cpu, faiss-gpu, faiss-gpu-cu12-cuvs...)."""
    return sorted(name for name in resolved if name == "faiss" or name.startswith("faiss-"))


def cuda_majors(resolved: dict[str, str]) -> dict[int, list[str]]:
    """CUDA major -> the distributions that say they are built for it (by name suffix, or by their version
    for the CUDA toolkit packages that carry no suffix)."""
    majors: dict[int, list[str]] = {}
    for name, version in resolved.items():
        match = re.search(r"-cu(\d+)$", name) or re.fullmatch(r"cupy-cuda(\d+)x", name)
        if match:
            major = int(match[1])
        elif name in ("cuda-toolkit", "nvidia-cuda-runtime"):
            major = int(version.split(".")[0])
        else:
            continue
        majors.setdefault(major, []).append(name)
    return majors


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement)[0]).lower()


def _load(name: str):
    file, extra, major = FLAVOURS[name]
    path = LOCKS / file
    assert path.is_file(), f"{path} is missing: run `make lock`"
    return name, extra, major, pins(path.read_text())


@pytest.fixture(scope="module", params=sorted(FLAVOURS))
def flavour(request):
    return _load(request.param)


def test_no_flavour_installs_two_faiss_builds(flavour):
    name, _, _, resolved = flavour
    assert resolved, f"no pinned distribution found in the {name} lock"
    found = faiss_distributions(resolved)
    assert len(found) <= 1, f"the {name} install resolves {found}: they overwrite each other's faiss package"
    if name.startswith("cpu"):
        assert found == ["faiss-cpu"]
    else:
        assert "faiss-cpu" not in found


@pytest.mark.parametrize("name", [name for name, (_, _, major) in FLAVOURS.items() if major])
def test_gpu_flavour_is_one_cuda_stack(name):
    name, _, major, resolved = _load(name)
    majors = cuda_majors(resolved)
    assert set(majors) == {major}, f"the {name} install mixes CUDA majors: {majors}"
    for package in (f"cuml-cu{major}", f"cuvs-cu{major}", f"cupy-cuda{major}x", "torch"):
        assert package in resolved, f"{package} is missing from the {name} lock"


def test_lock_holds_every_requirement_of_its_flavour(flavour):
    """A lock older than pyproject.toml misses what was added since: `make lock` regenerates it."""
    name, extra, _, resolved = flavour
    project = _pyproject()["project"]
    wanted = [_name(r) for r in project["dependencies"] + project["optional-dependencies"][extra]]
    missing = [w for w in wanted if w not in resolved]
    assert not missing, f"the {name} lock lacks {missing}: run `make lock`"


def test_gpu_extra_is_the_cuda_13_stack_and_no_extra_mixes_faiss_builds():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert extras["gpu"] == ["rca-gpu[gpu-cu13]"]
    for extra, requirements in extras.items():
        names = [_name(r) for r in requirements]
        assert len(faiss_distributions(dict.fromkeys(names, ""))) <= 1, extra
        if extra.startswith("gpu"):
            assert "faiss-cpu" not in names, extra
    assert "faiss-cpu" not in [_name(r) for r in _pyproject()["project"]["dependencies"]]


def test_the_checks_catch_what_they_look_for():
    text = "faiss-cpu==1.15.1\n    # via x\nfaiss-gpu-cu12==1.14.1.post1\ntorch==2.10.0\ncupy-cuda13x==14.2.0\n"
    resolved = pins(text)
    assert faiss_distributions(resolved) == ["faiss-cpu", "faiss-gpu-cu12"]
    assert cuda_majors(resolved) == {12: ["faiss-gpu-cu12"], 13: ["cupy-cuda13x"]}


def test_install_hint_names_each_extra_with_its_cuda_major():
    """The hint printed by --device gpu names extras that exist, each with the CUDA major it installs."""
    import tomllib

    from rca_gpu.errors import GPU_INSTALL_HINT

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = re.findall(r"'rca-gpu\[([\w-]+)\]' \(CUDA (\d+)", GPU_INSTALL_HINT)
    assert len(named) == 2
    for extra, major in named:
        text = " ".join(extras[extra])
        while "rca-gpu[" in text:  # an extra made of another extra
            inner = re.search(r"rca-gpu\[([\w-]+)\]", text).group(1)
            text = text.replace(f"rca-gpu[{inner}]", " ".join(extras[inner]))
        assert f"-cu{major}" in text and f"cuda{major}x" in text, (extra, major, text)


# --- no pre-releases; each GPU lock's CPU part installs and compiles ------------------------------------

#: What the CPU fallbacks of a GPU install run on (UMAP, HDBSCAN, scikit-learn's stages): with their own
#: dependencies (:func:`dependency_closure`), the part of a GPU lock that installs and runs without a GPU.
CPU_SUBSET = ("numpy", "scipy", "scikit-learn", "numba", "llvmlite", "umap-learn", "pynndescent", "fast-hdbscan")
#: Runs in the scratch environment: the imports (umap-learn's compiles pynndescent's functions that carry
#: signatures) and a numba compilation through NumPy's functions and SciPy's LAPACK (what a numba built for
#: another NumPy breaks first).
_COMPILE_CHECK = """
import numba, numpy as np, scipy, sklearn, umap, pynndescent, fast_hdbscan

@numba.njit
def stacked_norm(x):
    return np.linalg.norm(np.vstack((x, 2 * x))) + np.linalg.svd(x)[1].sum()

assert abs(stacked_norm(np.eye(2)) - (np.sqrt(10.0) + 2.0)) < 1e-9
print("numba", numba.__version__, "numpy", np.__version__)
"""


def lock_python_versions(makefile: str) -> dict[str, str]:
    """{lock file name: CPython version} of the Makefile's ``$(call lock,FLAVOUR,EXTRAS,ARCH,PYTHON,...)`` lines,
    with ``$(LOCK_PYTHON)`` resolved."""
    default = re.search(r"^LOCK_PYTHON\s*:?=\s*(\S+)", makefile, re.MULTILINE)[1]
    return {f"{flavour}-{arch}.txt": python.replace("$(LOCK_PYTHON)", default)
            for flavour, arch, python in re.findall(r"^\t\$\(call lock,([\w-]+),[\w+-]+,(\w+),([^,]+)", makefile,
                                                    re.MULTILINE)}


def required_by(text: str) -> dict[str, set[str]]:
    """{distribution: the distributions that require it} from the ``# via`` notes of a `uv pip compile` output."""
    via: dict[str, set[str]] = {}
    current = None
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            current = re.sub(r"[-_.]+", "-", match[1]).lower()
            via[current] = set()
        elif current and line.strip().startswith("#"):
            for name in re.findall(r"^#\s+(?:via\s+)?([A-Za-z0-9][\w.-]*)$", line.strip()):
                if name != "via":
                    via[current].add(re.sub(r"[-_.]+", "-", name).lower())
    return via


def dependency_closure(text: str, roots: tuple[str, ...]) -> set[str]:
    """``roots`` and every distribution of the lock that one of them requires, directly or not."""
    via = required_by(text)
    found = {re.sub(r"[-_.]+", "-", r).lower() for r in roots}
    while True:
        more = {name for name, users in via.items() if users & found} - found
        if not more:
            return found
        found |= more


def requirement_blocks(text: str, names: tuple[str, ...]) -> str:
    """The lines of a hashed lock (``name==version \\`` and its ``--hash`` lines) of the distributions ``names``."""
    wanted = {re.sub(r"[-_.]+", "-", n).lower() for n in names}
    keep, out = False, []
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            keep = re.sub(r"[-_.]+", "-", match[1]).lower() in wanted
        elif not line.startswith("    --hash"):
            keep = False
        if keep:
            out.append(line)
    return "\n".join(out) + "\n"


def _interpreter(version: str) -> str | None:
    """A working CPython ``version`` interpreter of this machine: on PATH, under pyenv, or one uv knows."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{version}*/bin/python{version}"))
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if Path(uv).exists():
        found = subprocess.run([uv, "python", "find", version], check=False, capture_output=True, text=True)
        candidates.append(found.stdout.strip() if found.returncode == 0 else None)
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               check=False, capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:  # a pyenv shim may name an absent one
            return candidate
    return None


def test_no_lock_pins_a_pre_release(flavour):
    """A pre-release lacks the bounds of its final release: numba 0.63.0b1 let NumPy 2.5 in, which no numba
    of that line compiles against."""
    from packaging.version import Version

    name, _, _, resolved = flavour
    early = {package: version for package, version in resolved.items() if Version(version).is_prerelease}
    assert not early, f"the {name} lock pins pre-releases {early}: run `make lock` (it disallows them)"


def test_the_pre_release_check_and_the_subset_reader_work():
    from packaging.version import Version

    assert Version("0.63.0b1").is_prerelease and Version("2.0.0rc1").is_prerelease
    assert not Version("0.64.0").is_prerelease and not Version("1.0.post1").is_prerelease
    text = ("numba==0.64.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n    # via umap-learn\n"
            "torch==2.15.0 \\\n    --hash=sha256:cc\nscikit_learn==1.9.1 \\\n    --hash=sha256:dd\n")
    assert requirement_blocks(text, ("numba", "scikit-learn")) == (
        "numba==0.64.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n"
        "scikit_learn==1.9.1 \\\n    --hash=sha256:dd\n")
    lock = text + "joblib==1.5 \\\n    --hash=sha256:ee\n    # via\n    #   numba\n" \
                  "    #   rca-gpu (pyproject.toml)\n" \
                  "cloudpickle==3.1 \\\n    --hash=sha256:ff\n    # via joblib\n"
    assert dependency_closure(lock, ("umap-learn",)) == {"umap-learn", "numba", "joblib", "cloudpickle"}
    makefile = "LOCK_PYTHON := 3.11\n\t$(call lock,cpu,cpu+test,x86_64,$(LOCK_PYTHON),--c x)\n" \
               "\t$(call lock,gpu-cu13,gpu-cu13,x86_64,3.12,--no-build)\n"
    assert lock_python_versions(makefile) == {"cpu-x86_64.txt": "3.11", "gpu-cu13-x86_64.txt": "3.12"}


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", [name for name, (_, _, major) in FLAVOURS.items() if major])
def test_the_cpu_part_of_each_gpu_lock_installs_imports_and_compiles(name, tmp_path):
    """Installs the lock's CPU_SUBSET (its pinned versions and hashes) into a scratch environment of the
    lock's Python, then imports and compiles with numba there. Needs the package registry.
    Skips when no interpreter of that Python exists here, except under RCA_GPU_CHECK_LOCKS=1 (.ci/run),
    where that fails."""
    file = FLAVOURS[name][0]
    text = (LOCKS / file).read_text()
    version = lock_python_versions((ROOT / "Makefile").read_text())[file]
    python = _interpreter(version)
    if python is None:
        message = (f"needs CPython {version} (the Python of locks/{file}): install it, "
                   f"e.g. `uv python install {version}`")
        if os.environ.get("RCA_GPU_CHECK_LOCKS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    missing = [n for n in CPU_SUBSET if re.sub(r"[-_.]+", "-", n) not in pins(text)]
    assert not missing, f"locks/{file} lacks {missing}"
    (tmp_path / "subset.txt").write_text(requirement_blocks(text, tuple(dependency_closure(text, CPU_SUBSET))))
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True)
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--require-hashes", "--no-deps",
         "--only-binary", ":all:", "-r", str(tmp_path / "subset.txt")], check=False,
        capture_output=True, text=True, timeout=900,
    )
    assert installed.returncode == 0, f"locks/{file}: the CPU part does not install:\n{installed.stderr[-3000:]}"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "PYTHONPATH": ""}
    env.pop("NUMBA_CPU_NAME", None)
    checked = subprocess.run([str(venv / "bin" / "python"), "-c", _COMPILE_CHECK], check=False,
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert checked.returncode == 0, f"locks/{file}: import or numba compilation fails:\n{checked.stderr[-3000:]}"
    pinned = pins(text)
    assert checked.stdout.split() == ["numba", pinned["numba"], "numpy", pinned["numpy"]]
