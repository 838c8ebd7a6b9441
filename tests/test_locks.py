"""The resolved dependency set of every install flavour (locks/FLAVOUR-ARCH.txt, `make lock`), checked offline.

faiss-cpu and the faiss-gpu wheels all install the same ``faiss`` package; two of them in one environment
overwrite each other's files. A GPU flavour must also be one CUDA stack: torch, cuML, cuVS and CuPy built
for the same CUDA major.
"""

from __future__ import annotations

import re
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
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
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
