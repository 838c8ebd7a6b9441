"""Limits of the GPU libraries, checked where an adapter is built so that ``--device auto`` can fall back.

A limit that a library only hits while fitting (a C++ assertion, an ``abort()`` inside FAISS) cannot be
caught and retried on the CPU. Each function here raises :class:`~rca_gpu.errors.UnsupportedOnGPU` with the
reason before any GPU work starts; the registry then falls back to the CPU twin under ``--device auto`` and
reports the reason under ``--device gpu``. Sources are cited per limit.
"""

from __future__ import annotations

from rca_gpu.errors import UnsupportedOnGPU

#: FAISS-GPU selects the k nearest with warp-level sorting networks: k (and nprobe) at most
#: GPU_MAX_SELECTION_K = 2048 (faiss/gpu/utils/DeviceDefs.cuh); a larger k fails inside FAISS.
FAISS_GPU_MAX_K = 2048

#: cuML HDBSCAN.fit: ``if not (1 <= min_samples <= 1023): raise ValueError`` (python/cuml/cuml/cluster/
#: hdbscan/hdbscan.pyx, 25.x-26.x); the value checked is the one handed to cuML, after the translation of
#: :func:`hdbscan_library_min_samples`.
CUML_HDBSCAN_MIN_SAMPLES = (1, 1023)

#: cuML UMAP's spectral initialisation asserts ``n_samples > n_components`` (cpp/src/umap/init_embed/
#: spectral_algo.cuh); the assertion surfaces as a RuntimeError in the middle of fit.
UMAP_SPECTRAL_RULE = "n_samples > n_components"

#: cuVS brute-force search counts queries in a uint32 (python/cuvs/cuvs/neighbors/brute_force).
CUVS_MAX_QUERIES = 2**32 - 1


def check_faiss_gpu_k(k: int) -> None:
    """FAISS-GPU returns at most FAISS_GPU_MAX_K neighbours per query."""
    if k > FAISS_GPU_MAX_K:
        raise UnsupportedOnGPU(f"FAISS-GPU finds at most {FAISS_GPU_MAX_K} neighbours per point, {k} were asked for")


def check_cuvs_queries(n_samples: int) -> None:
    if n_samples > CUVS_MAX_QUERIES:
        raise UnsupportedOnGPU(f"cuVS brute force searches at most {CUVS_MAX_QUERIES} queries, got {n_samples}")


def check_umap_init(n_samples: int, n_components: int, init: str) -> None:
    """cuML UMAP: spectral initialisation needs more samples than output dimensions."""
    if init == "spectral" and not n_samples > n_components:
        raise UnsupportedOnGPU(
            f"cuML UMAP's spectral initialisation needs {UMAP_SPECTRAL_RULE}; got {n_samples} images for "
            f"n_components={n_components}"
        )


def hdbscan_library_min_samples(min_samples: int | None, min_cluster_size: int) -> int:
    """The ``min_samples`` to hand fast_hdbscan or cuML for rca_gpu's ``min_samples``.

    rca_gpu's convention (docs/gpu.md, "min_samples"), the same for DBSCAN and HDBSCAN and the same as
    scikit-learn's: ``min_samples`` counts the point itself. A point is a DBSCAN core point when at least
    ``min_samples`` points, itself included, lie within ``eps``; an HDBSCAN core distance is the distance to
    the ``min_samples``-th nearest point, itself included (the point is its own nearest, at distance 0).

    fast_hdbscan and cuML count only the other points: both search ``min_samples + 1`` neighbours including
    the point and take the last (fast_hdbscan/boruvka.py: ``k=min_samples + 1``; cuML cpp/src/hdbscan/
    runner.h hands ``min_samples + 1`` to cuVS, whose core distance is neighbour ``min_samples + 1 - 1`` of a
    self-inclusive search, cpp/src/neighbors/detail/reachability.cuh). So they get ``min_samples - 1``.

    - ``min_samples == 1`` (the point alone): the libraries refuse 0, and their 1 gives the same tree, since
      a mutual reachability distance ``max(core_a, core_b, d(a, b))`` with each core distance at most the
      distance to the nearest other point always equals ``d(a, b)``, as with core distances of 0.
    - not set: ``min_cluster_size`` other points, as both libraries default to (= ``min_cluster_size + 1``
      in rca_gpu's count), so results without the parameter are the libraries' own.
    """
    if min_samples is None:
        return int(min_cluster_size)
    return max(1, int(min_samples) - 1)


def check_cuml_hdbscan(library_min_samples: int) -> None:
    low, high = CUML_HDBSCAN_MIN_SAMPLES
    if not low <= library_min_samples <= high:
        raise UnsupportedOnGPU(
            f"cuML HDBSCAN needs {low} <= min_samples <= {high} other points (min_samples <= {high + 1} "
            f"counting the point itself); got {library_min_samples} other points"
        )


#: Share of the free GPU memory one DBSCAN batch may use. cuML's own default (``max_mbytes_per_batch=None``)
#: is 80% of the TOTAL memory minus the data set (cpp/src/dbscan/dbscan.cuh: "The estimate is: 80% * total -
#: dataset", from cudaMemGetInfo's total), which overshoots whenever torch, CuPy or the RMM pool already
#: hold memory, and the batch then fails with an out-of-memory error halfway through the fit.
DBSCAN_FREE_MEMORY_SHARE = 0.8
#: The smallest batch handed to cuML (MB): below this the batches are too small to be worth the GPU.
DBSCAN_MIN_BATCH_MB = 64


def dbscan_batch_mbytes(free_bytes: int, n_samples: int, n_features: int) -> int:
    """``max_mbytes_per_batch`` (MB, 10**6 bytes, as cuML counts) for cuML DBSCAN from the FREE GPU memory.

    cuML's formula with free instead of total memory: DBSCAN_FREE_MEMORY_SHARE of ``free_bytes`` (from
    ``cupy.cuda.runtime.memGetInfo()``) minus the float32 data set of ``n_samples`` x ``n_features``, at
    least DBSCAN_MIN_BATCH_MB.
    """
    dataset = int(n_samples) * int(n_features) * 4
    return max(DBSCAN_MIN_BATCH_MB, int((DBSCAN_FREE_MEMORY_SHARE * free_bytes - dataset) // 1_000_000))
