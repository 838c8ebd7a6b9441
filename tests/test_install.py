"""The lock files that `make venv`, `.ci/run` and the CPU image install from (locks/, written by `make lock`),
checked offline: complete, hashed, and holding the torch build this machine kind installs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"x86_64": ROOT / "locks" / "cpu-x86_64.txt", "aarch64": ROOT / "locks" / "cpu-aarch64.txt"}
TORCH = {"x86_64": ("2.14.1", "0.29.1"), "aarch64": ("2.9.1", "0.24.1")}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _entries(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, [hashes])} of a `uv pip compile --generate-hashes` output."""
    out: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            current = _norm(match[1])
            out[current] = (match[2], [])
        elif current and line.strip().startswith("--hash=sha256:"):
            out[current][1].append(line.strip().split(":", 1)[1].rstrip(" \\"))
    return out


@pytest.fixture(scope="module", params=sorted(LOCKS))
def lock(request):
    return request.param, _entries(LOCKS[request.param])


def test_every_pin_is_exact_and_hashed(lock):
    arch, entries = lock
    assert len(entries) > 40
    unhashed = [name for name, (_, hashes) in entries.items() if not hashes]
    assert not unhashed, f"pins without hashes in the {arch} lock: {unhashed}"
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for _, hashes in entries.values() for h in hashes)


def test_lock_pins_the_torch_build_of_its_machine_kind(lock):
    arch, entries = lock
    assert (entries["torch"][0], entries["torchvision"][0]) == TORCH[arch]


def test_lock_holds_every_requirement_of_the_project(lock):
    """A lock older than pyproject.toml misses what was added since: `make lock` regenerates it."""
    arch, entries = lock
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    names = [_norm(re.match(r"[A-Za-z0-9._-]+", r)[0]) for r in wanted]
    missing = [n for n in names if n != "rca-gpu" and n not in entries]
    assert not missing, f"the {arch} lock lacks {missing}: run `make lock`"


def test_installs_go_through_the_lock_with_hashes():
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes --no-deps -r $(LOCK)" in makefile
    docker = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    assert '--require-hashes --no-deps -r "locks/cpu-${ARCH}.txt"' in docker
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make weights" in ci and ".ci/summary.py" in ci
