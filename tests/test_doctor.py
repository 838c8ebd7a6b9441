"""`rca-gpu doctor`: the report on this machine, and each known mismatch made to happen by describing it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rca_gpu.cli import app
from rca_gpu.commands import doctor
from rca_gpu.fatbin import Arch


@pytest.fixture(scope="module")
def here():
    return CliRunner().invoke(app, ["doctor"])


def test_doctor_on_this_machine_is_consistent(here):
    assert here.exit_code == 0, here.output
    text = here.output
    assert "device (auto): cpu; no CUDA device visible to torch" in text
    assert "stage backends (default settings):" in text and "cluster hdbscan" in text
    assert text.rstrip().endswith("consistent")


def test_doctor_json_and_require_gpu_without_a_gpu():
    result = CliRunner().invoke(app, ["doctor", "--json", "--require-gpu"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["consistent"] is False
    assert any("--require-gpu: torch sees no CUDA GPU" in p for p in report["problems"])
    assert report["stages"]["cluster ward"].startswith("cpu")


def test_two_faiss_builds_make_the_installation_inconsistent(monkeypatch):
    real = doctor.installed_distributions()
    monkeypatch.setattr(doctor, "installed_distributions", lambda: {**real, "faiss-gpu-cu12": "1.14.1.post1"})
    monkeypatch.setattr(doctor, "device_code", lambda name: [])
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 1
    assert "problem: 2 FAISS builds are installed (faiss-cpu, faiss-gpu-cu12)" in result.output
    # torch here is a CUDA 13 build, so a faiss-gpu-cu12 wheel is also a second CUDA stack
    assert "faiss-gpu-cu12 for CUDA 12" in result.output
    assert "inconsistent: 2 problem(s)" in result.output


def test_faiss_without_code_for_this_gpu():
    installed = {"faiss-gpu-cu12": "1.14.1.post1"}
    old = {"faiss-gpu-cu12": [Arch(70, True), Arch(80, True)]}
    (problem,) = doctor.faiss_problems(installed, old, 90)
    assert "code for sm_70, sm_80 only; this GPU is sm_90" in problem
    assert doctor.faiss_problems(installed, old, 80) == []  # an A100 is fine
    assert doctor.faiss_problems(installed, old, None) == []  # no GPU: nothing to compare with
    assert doctor.faiss_problems(installed, {"faiss-gpu-cu12": [Arch(90, True)]}, 90) == []


def test_torch_and_rapids_on_different_cuda_majors():
    majors = doctor.rapids_cuda_majors({"cuml-cu12": "26.10.0", "cupy-cuda12x": "14.2.0", "libcuvs-cu12": "26.10.0",
                                        "torch": "2.15.0", "faiss-cpu": "1.15.1"})
    assert majors == {"cuml-cu12": 12, "cupy-cuda12x": 12, "libcuvs-cu12": 12}
    problems, _ = doctor.cuda_major_problems(majors, "2.15.0", "13.0")
    assert len(problems) == 1 and "built for CUDA 13.0, but cuml-cu12 for CUDA 12" in problems[0]
    assert doctor.cuda_major_problems(majors, "2.10.0+cu128", "12.8") == ([], [])
    mixed = {**majors, "cuvs-cu13": 13}
    problems, _ = doctor.cuda_major_problems(mixed, "2.15.0", "13.0")
    assert any("different CUDA majors" in p for p in problems)
    _, warnings = doctor.cuda_major_problems(majors, "2.15.0+cpu", None)
    assert warnings and "CPU-only" in warnings[0]


def test_quiet_prints_the_warnings_problems_and_verdict_only():
    report = doctor.Report(facts={"rca_gpu": "1.0", "stages": {"cluster ward": "cpu"}},
                           warnings=["cuML missing"], problems=["2 FAISS builds are installed"])
    assert doctor.render(report, quiet=True).splitlines() == [
        "warning: cuML missing", "problem: 2 FAISS builds are installed", "inconsistent: 1 problem(s)"]
    assert "stage backends" in doctor.render(report) and "consistent" == doctor.render(doctor.Report(), quiet=True)
