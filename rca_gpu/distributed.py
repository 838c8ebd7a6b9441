"""Dask: feature extraction spread over workers, the kNN graph on RAPIDS Dask GPU workers.

    rca-gpu run SOURCE --out OUT --dask local             # a cluster on this machine
    rca-gpu run SOURCE --out OUT --dask tcp://HOST:8786   # a running scheduler (docker/compose.dask.yml)

What runs where
---------------
- Extraction: the rows still to encode are cut into shards of whole batches (at most SHARD_ROWS rows, fewer
  so that every worker gets about four shards). Each worker encodes its shards with the ordinary engine
  (:func:`rca_gpu.features.extract.extract_features`, same batches, same bad-image accounting) and sends back
  (positions, features, rejections). The client writes each finished shard, as it arrives, into the same
  Parquet shard cache under the same key as a single process would: an interrupted run resumes from the
  finished shards, with or without Dask, and ``--no-cache`` keeps them in memory only. Workers read the
  image files themselves, so they need them at the same paths (a shared file system); array sources travel
  with their shard. Only the client writes the cache.
- kNN graph: when every worker has a GPU with cuML (dask-cuda workers, ``pip install 'rca-gpu[dask-gpu]'``),
  cuML's Dask ``NearestNeighbors`` computes it with the feature matrix split over the workers' GPUs.
  Otherwise it is computed on the client, as in a single process.
- Reduction, clustering, hyper-parameter selection and the outputs run on the client, as in a single process
  (on the client's GPU when it has one).

The RAPIDS path (``dask_cuda``, ``cuml.dask``) is imported only when the workers report a GPU; the CPU test
suite exercises the extraction path on a ``distributed.LocalCluster``, not the GPU path.

Extractors that look at the whole source before encoding cannot be split: ``ae`` trains on every image, and
``lrp`` / ``gradcam`` without ``@LAYER`` choose their layer on a sample of all images (name the layer).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rca_gpu.errors import RcaError, SpecError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from distributed import Client

    from rca_gpu.data.sources import FailureSet
    from rca_gpu.engine.knn import KnnGraph
    from rca_gpu.features.base import ExtractionContext
    from rca_gpu.features.extract import Features
    from rca_gpu.pipeline import RunResult
    from rca_gpu.progress import Reporter
    from rca_gpu.spec import FeatureSpec, RunSpec

log = logging.getLogger("rca_gpu")

#: Shards per worker aimed at, so that a slow worker does not hold up the end of the extraction.
SHARDS_PER_WORKER = 4
SCHEMES = ("tcp", "tls", "ucx", "inproc")
#: The port of a scheduler address that names none (Dask's own default).
DEFAULT_PORT = 8786
#: Seconds to open a connection to a scheduler, and to wait for its handshake (:func:`probe_scheduler`), and
#: for ``distributed`` to connect after that: a wrong address is answered within 30 s.
CONNECT_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 5.0
CLIENT_TIMEOUT = "15s"
#: The longest handshake a scheduler is expected to send (bytes).
MAX_HANDSHAKE = 1 << 20
INSTALL_HINT = "pip install 'rca-gpu[dask]' (CPU workers) or 'rca-gpu[dask-gpu]' (dask-cuda workers)"


class DaskError(RcaError, RuntimeError):
    """The Dask scheduler cannot be reached or used."""


# --------------------------------------------------------------------------------------------------
# Connecting
# --------------------------------------------------------------------------------------------------


def check_address(address: str) -> str:
    """``local``, or a scheduler address checked before any connection, in its plain form.

    A scheduler address is ``SCHEME://HOST[:PORT]`` with SCHEME one of tcp, tls, ucx (HOST a host name, an
    IPv4 address or a bracketed IPv6 address; PORT in 1..65535, default :data:`DEFAULT_PORT`), or an
    ``inproc://`` address of a scheduler in this process. No user, path, query or spaces.

    Returns
    -------
    str
        ``local``, or the address with its scheme in lower case and its port written out
        (``TCP://Host`` -> ``tcp://Host:8786``).

    Raises
    ------
    SpecError
        "The --dask option must be 'local' or a scheduler address SCHEME://HOST:PORT ...: <what is wrong>.
        Got '...' instead."
    """
    import re
    from urllib.parse import urlsplit

    from rca_gpu.errors import printable

    def fail(why: str) -> SpecError:
        return SpecError(
            f"The --dask option must be 'local' or a scheduler address SCHEME://HOST:PORT with SCHEME one of "
            f"{', '.join(SCHEMES)}, e.g. tcp://scheduler:{DEFAULT_PORT}: {why}. Got {printable(repr(address))} instead."
        )

    if not isinstance(address, str):
        raise fail("it is not text")
    if address == "local":
        return address
    if address != address.strip() or any(c.isspace() or not c.isprintable() for c in address):
        raise fail("it holds spaces or control characters")
    if "://" not in address:
        raise fail(f"it has no scheme; write tcp://{address}" if address else "it is empty")
    scheme = address.split("://", 1)[0].lower()
    if scheme in ("http", "https", "ws", "wss"):
        raise fail(f"{scheme}:// is a web address (the dashboard is served on port 8787); the scheduler listens "
                   f"on tcp://HOST:{DEFAULT_PORT}")
    if scheme not in SCHEMES:
        raise fail(f"the scheme {scheme!r} is not one of them")
    rest = address.split("://", 1)[1]
    if scheme == "inproc":
        if not rest:
            raise fail("inproc:// names no scheduler")
        return f"inproc://{rest}"
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        port = parts.port
    except ValueError as exc:  # a port that is no number or out of range, an unclosed bracket
        if "IPv6" in str(exc) or "IPv4" in str(exc):
            raise fail("the host in brackets is not an IPv6 address") from None
        raise fail("the port is not a number in 1..65535") from None
    if parts.username is not None or parts.password is not None:
        raise fail("a user name has no place in it")
    if parts.path or parts.query or parts.fragment or rest.endswith(("?", "#")):
        raise fail("a path, query or fragment has no place in it")
    host = parts.hostname or ""
    if not host:
        raise fail("it names no host")
    bracketed = rest.startswith("[")
    if not bracketed and not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9\-_.]*[A-Za-z0-9])?", host):
        raise fail(f"the host {host!r} is not a host name or an IPv4 address")
    if bracketed:
        import ipaddress

        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise fail(f"[{host}] is not an IPv6 address") from None
    if port is None:
        if rest.rstrip("]").endswith(":"):
            raise fail("the port after ':' is missing")
        port = DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise fail(f"the port {port} is not in 1..65535")
    shown = f"[{host}]" if bracketed else host
    return f"{scheme}://{shown}:{port}"


def probe_scheduler(address: str, *, connect_timeout: float = CONNECT_TIMEOUT,
                    handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Check, before ``distributed`` connects, that a ``tcp://`` address answers like a Dask scheduler.

    A Dask scheduler sends its handshake as soon as a connection opens: an 8-byte little-endian length, then
    that many bytes of frames (a count, their lengths, a msgpack message naming ``pickle-protocol``). Another
    service either sends nothing (an HTTP server, an echo server: ``distributed`` would wait for minutes) or
    something else (a banner, whose first 8 bytes ``distributed`` would take for a length of exabytes and try
    to allocate). At most :data:`MAX_HANDSHAKE` bytes are read. Other schemes are left to ``distributed``.

    Raises
    ------
    DaskError
        The host cannot be resolved or reached within ``connect_timeout`` seconds, or the service sends no Dask
        handshake within ``handshake_timeout`` seconds; one line naming the address and what answered.
    """
    import socket
    import struct

    if not address.startswith("tcp://"):
        return
    check_address(address)
    host, _, port = address[len("tcp://"):].rpartition(":")
    host = host.strip("[]")
    fix = ("Check the address and that the scheduler runs (dask scheduler, or docker compose -f "
           "docker/compose.dask.yml up), or use --dask local.")
    try:
        connection = socket.create_connection((host, int(port)), timeout=connect_timeout)
    except socket.gaierror as exc:
        raise DaskError(f"Cannot reach the Dask scheduler at {address}: the host {host!r} is unknown "
                        f"({exc.strerror or exc}). {fix}") from None
    except TimeoutError:
        raise DaskError(f"Cannot reach the Dask scheduler at {address}: no answer within {connect_timeout:g} s. "
                        f"{fix}") from None
    except OSError as exc:
        raise DaskError(f"Cannot reach the Dask scheduler at {address} ({exc.strerror or exc}). {fix}") from None
    with connection:
        connection.settimeout(handshake_timeout)
        try:
            head = _read_exactly(connection, 8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            body = _read_exactly(connection, length) if 16 <= length <= MAX_HANDSHAKE else b""
        except TimeoutError:
            raise DaskError(
                f"The service at {address} is not a Dask scheduler: it sent no Dask handshake within "
                f"{handshake_timeout:g} s (an HTTP server, such as the dashboard on port 8787, or another service "
                f"waiting for a request answers like this). Pass the scheduler's address, port {DEFAULT_PORT} by "
                "default."
            ) from None
        except OSError as exc:
            raise DaskError(f"The service at {address} closed the connection ({exc.strerror or exc}) instead of "
                            f"sending a Dask handshake: it is not a Dask scheduler. {fix}") from None
    if not head:
        raise DaskError(f"The service at {address} closed the connection without a Dask handshake: it is not a Dask "
                        f"scheduler. {fix}")
    if not _is_handshake(body, length):
        from rca_gpu.errors import printable

        raise DaskError(
            f"The service at {address} is not a Dask scheduler: it answered {printable(repr(head[:8]))[:40]}..., "
            f"not a Dask handshake. Pass the scheduler's address, port {DEFAULT_PORT} by default."
        )


def _read_exactly(connection, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only when the peer closes the connection."""
    data = b""
    while len(data) < size:
        block = connection.recv(min(size - len(data), 1 << 16))
        if not block:
            break
        data += block
    return data


def _is_handshake(body: bytes, length: int) -> bool:
    """Whether ``body`` (the ``length`` bytes after the length) holds Dask's frames of a handshake."""
    import struct

    if len(body) != length or length < 16:
        return False
    count = struct.unpack("<Q", body[:8])[0]
    if not 1 <= count <= 64 or 8 * (count + 1) > length:
        return False
    sizes = struct.unpack(f"<{count}Q", body[8:8 * (count + 1)])
    return 8 * (count + 1) + sum(sizes) == length and b"pickle-protocol" in body


@contextlib.contextmanager
def connect(address: str, *, timeout: str = CLIENT_TIMEOUT) -> Iterator[Client]:
    """A ``distributed.Client`` for ``address``, closed (with its local cluster) on exit.

    ``local`` starts a cluster on this machine: dask-cuda's LocalCUDACluster (one worker per GPU) when
    dask-cuda is installed and CUDA is visible, else a LocalCluster of single-threaded worker processes. A
    ``tcp://`` address is first checked to answer like a Dask scheduler (:func:`probe_scheduler`, at most
    CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT seconds), then ``distributed`` connects within ``timeout``.

    Raises
    ------
    SpecError
        The address is neither ``local`` nor a scheduler address (:func:`check_address`).
    DaskError
        dask.distributed is missing, the address answers like no Dask scheduler, or the scheduler does not
        answer within the timeouts.
    """
    address = check_address(address)
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise DaskError(f"--dask needs dask.distributed: {INSTALL_HINT}.") from None
    cluster = None
    try:
        if address == "local":
            cluster = _local_cuda_cluster() or LocalCluster(
                n_workers=max(1, min(4, os.cpu_count() or 1)), threads_per_worker=1, processes=True,
                dashboard_address=None,
            )
            client = Client(cluster)
        else:
            probe_scheduler(address)
            client = Client(address, timeout=timeout)
    except DaskError:
        raise
    except Exception as exc:  # noqa: BLE001 - distributed raises OSError, TimeoutError, ValueError, ...
        if cluster is not None:
            cluster.close()
        raise DaskError(
            f"Cannot reach the Dask scheduler at {address} ({type(exc).__name__}: {exc}). Start one (docker compose "
            "-f docker/compose.dask.yml up) or use --dask local."
        ) from None
    try:
        log.info("dask: %d worker(s) at %s", len(client.scheduler_info().get("workers", {})),
                 client.scheduler.address)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _local_cuda_cluster():
    import importlib.util

    if importlib.util.find_spec("dask_cuda") is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    from dask_cuda import LocalCUDACluster

    return LocalCUDACluster(dashboard_address=None)


def worker_count(client: Client) -> int:
    return max(1, len(client.scheduler_info().get("workers", {})))


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------


def check_splittable(spec: FeatureSpec) -> None:
    """SpecError for extractors whose preparation looks at the whole source (see the module docstring)."""
    if spec.name == "ae":
        raise SpecError(
            "The 'ae' extractor trains its autoencoder on every source image before encoding, so its extraction "
            "cannot be split over Dask workers. Run it without --dask."
        )
    if spec.name in ("lrp", "gradcam") and not spec.layer:
        raise SpecError(
            f"The '{spec.name}' extractor chooses its layer on a sample of all images, which Dask workers cannot "
            f"share. Name the layer ({spec.name}@LAYER), or run without --dask."
        )


def shard_size(todo: int, workers: int, batch_size: int, largest: int | None = None) -> int:
    """Rows per shard: whole batches (so a shard's batches are the single process's batches), about
    SHARDS_PER_WORKER shards per worker, at most ``largest`` (the cache's SHARD_ROWS)."""
    from rca_gpu.features.extract import SHARD_ROWS

    largest = largest or SHARD_ROWS
    wanted = math.ceil(todo / max(1, workers * SHARDS_PER_WORKER))
    batches = max(1, min(math.ceil(wanted / batch_size), max(1, largest // batch_size)))
    return batches * batch_size


def extract_features_dask(
    spec: FeatureSpec,
    context: ExtractionContext,
    client: Client,
    *,
    cache_dir: Path | None = None,
    shard_rows: int | None = None,
) -> Features:
    """Encode every usable row of ``context.failures`` on the Dask workers of ``client``.

    Returns the same :class:`~rca_gpu.features.extract.Features` as the single-process engine (rows
    ascending by position, float32 on ``context.device``); ``info["dask"]`` says how it was split.
    ``shard_rows`` overrides the shard size (whole batches).

    No usable row gives empty Features (0 rows) with every row's reason, as the single-process engine does.

    Raises
    ------
    SpecError
        The extractor cannot be split (:func:`check_splittable`).
    """
    import torch

    from rca_gpu.engine.device import to_kind
    from rca_gpu.features import create_extractor
    from rca_gpu.features.extract import Features, _Rows, _ShardStore, cache_key, drop_nonfinite_rows

    check_splittable(spec)
    started = time.perf_counter()
    failures = context.failures
    extractor = create_extractor(spec, context)
    extractor.prepare()  # the client's copy: the cache key and run.json's description of the extractor
    rejected: dict[int, str] = dict(failures.rejected)
    store = None
    done = np.empty(0, dtype=np.int64)
    if cache_dir is not None:
        key = cache_key(spec, extractor, context)
        store = _ShardStore(Path(cache_dir) / f"features-{spec.name}-{key}", skip=failures.rejected, key=key)
        done, cached_rejected = store.index()
        rejected.update(cached_rejected)
        if len(done):
            log.info("features: %d of %d images from cache %s", len(done), len(failures), store.folder)
    usable = failures.usable_positions
    todo = usable[~np.isin(usable, done) & ~np.isin(usable, np.fromiter(rejected, np.int64, len(rejected)))]
    workers = worker_count(client)
    size = shard_rows or shard_size(len(todo), workers, context.batch_size)
    shards = [todo[i:i + size] for i in range(0, len(todo), size)]

    settings = {"precision": context.precision, "seed": context.seed, "batch_size": context.batch_size,
                "model_ref": context.model_ref, "cuda": context.device.type == "cuda",
                "source": failures.source, "kind": failures.kind, "root": failures.root,
                "max_image_memory": context.max_image_memory}
    futures = [
        client.submit(encode_shard, spec, settings, _rows(failures, shard), _images(failures, shard), shard,
                      _file_paths(failures, shard), pure=False, key=f"rca-gpu-features-{i}-{os.urandom(4).hex()}")
        for i, shard in enumerate(shards)
    ]
    in_memory = None if store is not None else _Rows(todo, context.device)  # without a cache: rows kept in memory
    notes: dict[int, str] = {}
    dims = None
    reporter = context.reporter
    progress = (reporter.task(f"features {spec} on {workers} Dask worker(s)", total=len(todo)) if reporter
                else contextlib.nullcontext(None))
    from distributed import as_completed

    try:
        with progress as advance:
            for future in as_completed(futures):
                positions, matrix, bad, shard_notes, properties = future.result()
                future.release()
                rejected.update(bad)
                notes.update(shard_notes)
                if len(positions):
                    dims = int(matrix.shape[1])
                if store is not None:
                    rows = positions.tolist()
                    store.write([*rows, *bad], [*([None] * len(rows)), *bad.values()],
                                [*(shard_notes.get(p) for p in rows), *([None] * len(bad))],
                                matrix if len(rows) else None, dims or 1, properties if len(rows) else None)
                else:
                    assert in_memory is not None, "made whenever there is no cache"
                    in_memory.add(positions, torch.from_numpy(matrix), properties)
                if advance:
                    advance(len(positions) + len(bad))
    except BaseException:
        client.cancel(futures)
        raise
    from_cache = len(done)
    if store is not None:  # everything, this run's shards and earlier ones, read back from the cache
        positions, matrix_np, cached_rejected, cached_notes, properties = store.load()
        rejected.update(cached_rejected)
        notes.update(cached_notes)
        result: tuple[np.ndarray, Any, np.ndarray | None] = (np.empty(0, dtype=np.int64), None, None)
        if matrix_np is not None:
            kept_matrix, kept = drop_nonfinite_rows(matrix_np, positions, rejected, source=str(spec))
            del matrix_np
            result = (kept, to_kind(np.ascontiguousarray(kept_matrix), "torch", torch_device=context.device.type),
                      properties[np.isin(positions, kept)] if properties is not None else None)
    else:
        assert in_memory is not None, "made whenever there is no cache"
        result = in_memory.result()
    positions, matrix, properties = result
    from rca_gpu.data.decoding import image_budget

    info = {**extractor.describe(), "precision": context.precision, "from_cache": from_cache,
            "cache": str(store.folder) if store else None, "max_image_memory": image_budget(context.max_image_memory),
            "dask": {"scheduler": client.scheduler.address, "workers": workers, "shards": len(shards),
                     "shard_rows": size}}
    if matrix is None:
        # no usable image: the caller reports it with every row's reason, as for a single process
        info["dims"] = dims or 0
        return Features(torch.empty((0, dims or 0), dtype=torch.float32, device=context.device),
                        np.empty(0, dtype=np.int64), rejected, info, time.perf_counter() - started, from_cache,
                        notes)
    for position in positions.tolist():
        rejected.pop(position, None)
    info["dims"] = int(matrix.shape[1])
    from rca_gpu.features.extract import normalise_scale

    matrix = normalise_scale(matrix, info)
    usable_notes = {p: n for p, n in notes.items() if p not in rejected}
    return Features(matrix, positions, rejected, info, time.perf_counter() - started, from_cache, usable_notes,
                    properties)


def _rows(failures: FailureSet, positions: np.ndarray) -> pd.DataFrame:
    return failures.table[["id", "path"]].iloc[positions].reset_index(drop=True)


def _file_paths(failures: FailureSet, positions: np.ndarray) -> list[str] | None:
    return None if failures.file_paths is None else [failures.file_paths[p] for p in positions.tolist()]


def _images(failures: FailureSet, positions: np.ndarray) -> np.ndarray | None:
    return None if failures.images is None else np.ascontiguousarray(failures.images[positions])


def encode_shard(spec: FeatureSpec, settings: dict[str, Any], table: pd.DataFrame, images: np.ndarray | None,
                 positions: np.ndarray, file_paths: list[str] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, dict[int, str], dict[int, str], np.ndarray | None]:
    """Runs on a worker: encode one shard with the ordinary engine.

    Returns (positions of the encoded rows, their (k, d) float32 features, {position: reason} of the
    rejected rows, {position: note} of rows read with a note, their (k, p) image properties or None),
    positions being the client's row positions.
    """
    import torch

    from rca_gpu.data.sources import FailureSet
    from rca_gpu.engine.device import as_numpy
    from rca_gpu.features.base import ExtractionContext
    from rca_gpu.features.extract import extract_features

    _limit_threads()
    shard = FailureSet(table=table, source=settings["source"], kind=settings["kind"], images=images,
                       root=settings["root"], file_paths=file_paths)
    device = torch.device("cuda" if settings["cuda"] and torch.cuda.is_available() else "cpu")
    context = ExtractionContext(failures=shard, device=device, precision=settings["precision"],
                                seed=settings["seed"], batch_size=settings["batch_size"], workers=0,
                                model_ref=settings["model_ref"],
                                max_image_memory=settings.get("max_image_memory"))
    features = extract_features(spec, context, cache_dir=None, normalise=False)  # the client scales every row
    matrix = np.asarray(as_numpy(features.matrix), dtype=np.float32)
    return (positions[features.positions], matrix, {int(positions[p]): r for p, r in features.rejected.items()},
            {int(positions[p]): n for p, n in (features.notes or {}).items()}, features.properties)


def _limit_threads() -> None:
    """In a worker process, torch uses the worker's threads, not every core (workers would oversubscribe)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    if worker.address.startswith("inproc://"):  # threads of the client's own process: leave torch alone
        return
    import torch

    threads = int(getattr(worker.state, "nthreads", 0) or getattr(worker, "nthreads", 1) or 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# kNN graph on GPU workers
# --------------------------------------------------------------------------------------------------


def _worker_has_cuml() -> bool:
    try:
        import cuml.dask.neighbors  # noqa: F401
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - anything missing or broken means no GPU path on this worker
        return False


def gpu_workers(client: Client) -> bool:
    """Whether every worker has a CUDA GPU and cuML's Dask estimators."""
    answers = client.run(_worker_has_cuml)
    return bool(answers) and all(answers.values())


def knn_graph_dask(matrix: Any, k: int, client: Client) -> KnnGraph | None:
    """The kNN graph (self first, Euclidean) computed by cuML's Dask NearestNeighbors on the workers' GPUs,
    or None when the workers have no GPU (the caller then computes it on the client)."""
    if not gpu_workers(client):
        log.info("dask: the workers have no GPU with cuML; the kNN graph is computed on the client")
        return None
    import cupy
    import dask.array as da
    from cuml.dask.neighbors import NearestNeighbors

    from rca_gpu.engine.device import as_numpy
    from rca_gpu.engine.knn import KnnGraph, _self_first_numpy

    started = time.perf_counter()
    host = np.ascontiguousarray(as_numpy(matrix), dtype=np.float32)
    n = len(host)
    k = min(k, n)
    rows = math.ceil(n / worker_count(client))
    data = client.persist(da.from_array(host, chunks=(rows, host.shape[1])).map_blocks(
        cupy.asarray, meta=cupy.empty((0, 0), dtype=cupy.float32)))
    model = NearestNeighbors(n_neighbors=k, client=client).fit(data)
    distances, indices = model.kneighbors(n_neighbors=k)  # the indexed rows themselves, in row order
    distances, indices = client.compute(
        [distances.map_blocks(cupy.asnumpy, meta=np.empty((0, 0), np.float32)),
         indices.map_blocks(cupy.asnumpy, meta=np.empty((0, 0), np.int64))], sync=True)
    indices, distances = _self_first_numpy(np.asarray(indices, dtype=np.int64), np.asarray(distances, np.float32))
    return KnnGraph(indices, distances, "cuml-dask", time.perf_counter() - started)


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


def run_dask(spec: RunSpec, source: Any, out: str | Path, *, address: str, reporter: Reporter | None = None,
             cache_dir: str | Path | None = None, shard_rows: int | None = None, report: bool = True
             ) -> RunResult:
    """:func:`rca_gpu.pipeline.run` (same checks, same outputs) with extraction on the Dask workers at
    ``address`` and, when they have GPUs with cuML, the kNN graph there too."""
    from rca_gpu.features.compute import extraction_context
    from rca_gpu.pipeline import run
    from rca_gpu.tuning import effective_k

    check_splittable(spec.pipeline.features)
    with connect(address) as client:

        def extract(feature_spec, failures, run_spec, device, cache, reporter):
            context = extraction_context(failures, run_spec, device, cache, reporter)
            return extract_features_dask(feature_spec, context, client, cache_dir=cache, shard_rows=shard_rows)

        def knn(features, run_spec, device):
            return knn_graph_dask(features.matrix, effective_k(run_spec.knn_k, run_spec.pipeline.reduce), client)

        return run(spec, source, out, reporter=reporter, cache_dir=cache_dir, extract=extract, knn=knn,
                   report=report)
