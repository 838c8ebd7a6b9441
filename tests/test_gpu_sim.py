"""The GPU path run end to end on the simulated GPU (rca_gpu.engine.simgpu): every stage dispatched to its
GPU adapter, CuPy / cuML / cuVS replaced by stand-ins that compute on the CPU and refuse host round trips.

The first test is the one that failed before the registry chose the stability step's neighbour search:
under --device gpu the step asked for the CPU-only KD-tree, after the whole search, and no clusters were
written.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import pattern_images, write_pngs
from typer.testing import CliRunner

from rca_gpu.cli import app
from rca_gpu.engine import simgpu
from rca_gpu.spec import DEFAULT_PIPELINE

runner = CliRunner()
#: every stage of the default pipeline and of its stability step, with what must run it on the GPU
GPU_BACKENDS = {"knn cuvs": ["gpu cuvs"], "reduce umap": ["gpu cuml"], "cluster dbscan": ["gpu cuml"]}


@pytest.fixture
def sim_gpu(monkeypatch):
    """The simulated GPU for this test only (the stand-ins leave sys.modules afterwards)."""
    monkeypatch.setenv(simgpu.SIMULATE_ENV, "1")
    yield
    simgpu.uninstall()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim_images")
    pictures, labels = pattern_images(n_per=25, groups=3, size=32, seed=0)
    write_pngs(root / "run", pictures, labels)
    pictures, labels = pattern_images(n_per=4, groups=3, size=32, seed=1)
    write_pngs(root / "new", pictures, labels)
    return root


def _run(images, out, device: str, pipeline: str = DEFAULT_PIPELINE, *extra: str):
    return runner.invoke(app, ["run", str(images / "run"), "--out", str(out), "--pipeline", pipeline,
                               "--device", device, "--workers", "0", "-q", *extra])


def test_default_pipeline_stability_report_and_catalogue_run_on_the_gpu_adapters(sim_gpu, images, tmp_path):
    result = _run(images, tmp_path / "run", "gpu", DEFAULT_PIPELINE, "--stability", "3")
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    device = info["device"]
    assert device["simulated"] and device["requested"] == "gpu" and device["fallbacks"] == []
    assert device["backends"] == GPU_BACKENDS  # nothing ran on a CPU implementation
    assert info["catalogue"]["stability"]["resamples"] == 3
    assert (tmp_path / "run" / "clusters.parquet").stat().st_size > 0
    assert "<html" in (tmp_path / "run" / "report.html").read_text()[:2000].lower()
    assigned = runner.invoke(app, ["assign", str(tmp_path / "run"), str(images / "new"), "--out",
                                   str(tmp_path / "assign"), "--device", "gpu", "--workers", "0", "-q"])
    assert assigned.exit_code == 0, assigned.output
    assert (tmp_path / "assign" / "assignments.parquet").stat().st_size > 0


@pytest.mark.parametrize("pipeline, stages", [
    ("pixels(image_size=16)+umap+hdbscan", {"reduce umap": ["gpu cuml"], "cluster hdbscan": ["gpu cuml"]}),
    ("pixels(image_size=16)+pca+kmeans", {"reduce pca": ["gpu torch"], "cluster kmeans": ["gpu cuml"]}),
])
def test_other_cards_run_on_their_gpu_adapters_with_stability(sim_gpu, images, tmp_path, pipeline, stages):
    result = _run(images, tmp_path / "run", "gpu", pipeline, "--stability", "2")
    assert result.exit_code == 0, result.output
    device = json.loads((tmp_path / "run" / "run.json").read_text())["device"]
    for stage, backends in stages.items():
        assert device["backends"][stage] == backends
    assert all(ran == ["gpu " + ran[0].split()[1]] for ran in device["backends"].values()), device["backends"]


@pytest.mark.parametrize("pipeline, stages", [
    (DEFAULT_PIPELINE, {"knn torch": ["gpu torch"], "reduce umap": ["gpu torch"], "cluster dbscan": ["gpu torch"]}),
    ("pixels(image_size=16)+pca+kmeans", {"reduce pca": ["gpu torch"], "cluster kmeans": ["gpu torch"]}),
])
def test_without_rapids_the_torch_backend_takes_the_gpu_stages(images, tmp_path, monkeypatch, pipeline, stages):
    monkeypatch.setenv(simgpu.SIMULATE_ENV, "torch")
    try:
        result = _run(images, tmp_path / "run", "auto", pipeline, "--stability", "2")
    finally:
        simgpu.uninstall()
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["device"]["simulated"] and not info["device"]["cuml"]
    for stage, backends in stages.items():
        assert info["device"]["backends"][stage] == backends
    assert info["catalogue"]["stability"]["resamples"] == 2


def test_a_gpu_failure_during_a_fit_falls_back_under_auto_and_is_one_error_line_under_gpu(sim_gpu, images,
                                                                                          tmp_path, monkeypatch):
    def out_of_memory(self, x):
        raise MemoryError("std::bad_alloc: out_of_memory: RMM failure at: rmm/mr/device/pool_memory_resource.hpp")

    monkeypatch.setattr(simgpu.DBSCAN, "fit_predict", out_of_memory)
    pipeline = "pixels(image_size=16)+umap(n_neighbors=15,n_components=2,min_dist=0.0)+dbscan"
    result = _run(images, tmp_path / "auto", "auto", pipeline, "--stability", "0")
    assert result.exit_code == 0, result.output
    device = json.loads((tmp_path / "auto" / "run.json").read_text())["device"]
    assert device["backends"]["cluster dbscan"] == ["cpu scikit-learn"]
    assert device["backends"]["reduce umap"] == ["gpu cuml"]
    assert device["fallbacks"] and all("cluster 'dbscan' failed on the GPU (cuml): MemoryError: std::bad_alloc"
                                       in line for line in device["fallbacks"])

    strict = _run(images, tmp_path / "gpu", "gpu", pipeline, "--stability", "0")
    assert strict.exit_code == 2
    lines = [line for line in strict.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cluster 'dbscan' failed on the GPU (cuml): MemoryError")
    assert "--device auto" in lines[0]


def test_a_stage_that_names_a_cpu_only_backend_fails_under_the_simulated_gpu(sim_gpu):
    from rca_gpu.engine.device import resolve_device
    from rca_gpu.engine.knn import knn_graph
    from rca_gpu.errors import UnsupportedOnGPU

    device = resolve_device("gpu")
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    with pytest.raises(UnsupportedOnGPU, match="knn 'kdtree' cannot run on the GPU"):
        knn_graph(x, 5, device, "kdtree")
    graph = knn_graph(x, 5, device, low_dims_tree=True)  # a preference, not a backend: the registry decides
    assert graph.backend == "cuvs-gpu" and device.backends == {"knn cuvs": ["gpu cuvs"]}


def test_gpu_arrays_refuse_host_round_trips_and_gpu_libraries_refuse_host_arrays(sim_gpu):
    from rca_gpu.engine.device import as_numpy, kind_of, resolve_device, to_kind

    resolve_device("gpu")
    import cupy
    from cuml.cluster import DBSCAN

    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    on_gpu = cupy.asarray(x)
    assert kind_of(on_gpu) == "cupy"
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(on_gpu)
    with pytest.raises(TypeError, match="mixed with a GPU array"):
        on_gpu + x
    with pytest.raises(TypeError, match="not a GPU array"):
        DBSCAN(eps=1.0, min_samples=2, output_type="cupy").fit_predict(x)
    assert np.array_equal(as_numpy(on_gpu), x)  # the one sanctioned copy to the host
    assert np.array_equal(as_numpy(to_kind(to_kind(on_gpu, "torch"), "cupy")), x)  # DLPack both ways


def test_the_stand_ins_leave_no_trace(sim_gpu):
    import importlib.util
    import sys

    from rca_gpu.engine.device import resolve_device

    resolve_device("gpu")
    assert simgpu.active() and importlib.util.find_spec("cuml") is not None
    simgpu.uninstall()
    assert not simgpu.active() and "cuml" not in sys.modules or not getattr(sys.modules["cuml"], "SIMULATED", 0)


def test_gpu_failure_tells_gpu_errors_from_data_errors():
    from rca_gpu.engine.dispatch import gpu_failure
    from rca_gpu.errors import UnsupportedOnGPU

    class CUDARuntimeError(RuntimeError):
        pass

    assert gpu_failure(MemoryError("std::bad_alloc: out_of_memory"))
    assert gpu_failure(CUDARuntimeError("cudaErrorIllegalAddress"))
    assert gpu_failure(RuntimeError("RAFT failure at file=/raft/core/detail/copy.hpp"))
    assert gpu_failure(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert gpu_failure(UnsupportedOnGPU("cuML UMAP's spectral initialisation needs n_samples > n_components"))
    assert not gpu_failure(ValueError("Input contains NaN"))
    assert not gpu_failure(RuntimeError("maximum recursion depth exceeded"))


def test_dbscan_batch_size_comes_from_free_not_total_memory():
    from rca_gpu.engine.limits import DBSCAN_MIN_BATCH_MB, dbscan_batch_mbytes

    # 80 GB card with 10 GB free: cuML's default would plan 64 GB batches (80% of the total)
    assert dbscan_batch_mbytes(10 * 10**9, 1_000_000, 10) == 8_000 - 40
    assert dbscan_batch_mbytes(10**8, 1_000_000, 10) == DBSCAN_MIN_BATCH_MB  # never below the floor


def test_a_cuda_machine_without_cuml_takes_device_gpu_on_the_torch_backend(monkeypatch):
    """As the simulated torch-only GPU does: --device gpu on CUDA without cuML resolves to the GPU (the torch
    backend runs kNN, PCA, UMAP, DBSCAN, K-means; HDBSCAN and Ward are refused, strict) instead of stopping."""
    import torch

    from rca_gpu.engine import device as devices

    monkeypatch.delenv(simgpu.SIMULATE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: (9, 0))
    monkeypatch.setattr(devices, "_cuml_importable", lambda: (False, "cuML is not installed"))
    monkeypatch.setattr(devices, "probe_knn_backends",
                        lambda: {backend: (False, "not installed") for backend in ("faiss", "cuvs", "cuml")})
    device = devices.resolve_device("gpu")
    assert device.torch_device == "cuda" and device.strict and not device.cuml and not device.simulated
    assert "PCA, UMAP, DBSCAN and K-means run on the GPU in torch and HDBSCAN and Ward on the CPU" in device.reason
    assert "refused under --device gpu" in device.reason
