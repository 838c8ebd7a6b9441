"""Shared test setup. GPU tests (marker ``gpu``) are skipped with a reason when CUDA is absent.

Markers (pyproject.toml): ``slow``, ``gpu``, and ``quality`` for the tests that assert the quality of a
clustering (ARI, purity, coverage, recall, cluster and noise counts, stability, assignment shares), which
.ci/run runs under every CPU code-generation target (rca_gpu.cpu_target) so that a pass on one CPU family
only cannot land.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# numba-compiled libraries (umap-learn, pynndescent, fast_hdbscan) compile once and reuse this cache.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "rca_gpu" / "numba"))
# rca_gpu first: it fixes numba's code-generation target before any test module imports a numba library
import rca_gpu  # noqa: F401


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing entirely
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: no GPU visible to torch on this machine")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not item.keywords: it holds folder names too
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _record_ari(request):
    """With RCA_GPU_QUALITY_LOG=FILE, appends every ARI a test computes (test id, value) to FILE as JSON lines:
    how far each quality test stands from its bound under a given CPU target (benchmarks/RESULTS.md)."""
    log = os.environ.get("RCA_GPU_QUALITY_LOG")
    scorer = getattr(request.module, "adjusted_rand_score", None)
    if not log or scorer is None:
        yield
        return
    import json

    def recorded(*args, **kwargs):
        value = scorer(*args, **kwargs)
        with open(log, "a") as out:
            out.write(json.dumps({"test": request.node.nodeid, "ari": round(float(value), 4)}) + "\n")
        return value

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(request.module, "adjusted_rand_score", recorded)
        yield


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def planted_blobs(n_per: int = 60, centers: int = 4, dim: int = 8, spread: float = 0.3, seed: int = 0):
    """Well-separated Gaussian blobs: (points float32, planted labels)."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(
        n_samples=n_per * centers, centers=centers, n_features=dim, cluster_std=spread,
        center_box=(-10, 10), random_state=seed,
    )
    return x.astype(np.float32), y


# --- fixtures for the ground-truth benchmarks (section owned by the datasets module) ---


@pytest.fixture(scope="session")
def datasets_cache(tmp_path_factory) -> Path:
    """A DUT cache private to the test session: the first build in a session trains its DUT from scratch."""
    return tmp_path_factory.mktemp("rca_gpu_cache")


@pytest.fixture(scope="session")
def mnist_rc_small(datasets_cache, tmp_path_factory) -> Path:
    """mnist-rc with 400 failures, default proportions, seed 0; returns its manifest.parquet.

    The DUT is trained fresh into ``datasets_cache``, so later builds in the session with seed 0 reuse it.
    """
    from rca_gpu.datasets import make_dataset

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RCA_GPU_CACHE", str(datasets_cache))
        return make_dataset("mnist-rc", tmp_path_factory.mktemp("mnist_rc_small"), n=400, seed=0)


# --- fixtures for the catalogue (section owned by the catalogue) ---

CATALOGUE_PIPELINE = "pixels(image_size=16)+pca(n_components=5)+kmeans(k=3)"


@pytest.fixture(scope="session")
def catalogue_images(tmp_path_factory) -> Path:
    """16-px pattern images (a bright bar whose place is the group) as PNG folders: ``run/`` holds groups 0-2
    (30 each), ``new/`` fresh draws of groups 0-3 (12 each; group 3 is a cause the run never saw)."""
    from helpers import pattern_images, write_pngs

    root = tmp_path_factory.mktemp("catalogue_images")
    images, labels = pattern_images(n_per=30, groups=4, size=16, seed=0)
    keep = labels < 3
    write_pngs(root / "run", images[keep], labels[keep])
    images, labels = pattern_images(n_per=12, groups=4, size=16, seed=1)
    write_pngs(root / "new", images, labels)
    return root


@pytest.fixture(scope="session")
def catalogue_run(catalogue_images, tmp_path_factory) -> Path:
    """A finished run on ``catalogue_images/run`` (3 clusters, stability from 4 resamples). Tests that edit
    it work on a copy."""
    from rca_gpu.pipeline import run
    from rca_gpu.spec import build_run_spec

    out = tmp_path_factory.mktemp("catalogue_run") / "run"
    spec = build_run_spec(pipeline=CATALOGUE_PIPELINE, device="cpu", workers=0, stability=4,
                          cache_features=False)
    run(spec, catalogue_images / "run", out)
    return out

