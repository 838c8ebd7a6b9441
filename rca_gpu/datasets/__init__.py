"""Offline ground-truth failure benchmarks: images a DNN fails on, each with its known root cause.

Five seeded benchmarks (docs/datasets.md), each written as a folder with ``manifest.parquet`` (one row per
failing image, its
``root_cause`` and every generating parameter), the PNGs, and the DNN under test (``dut_state.pt``, the weights of a
known architecture of ``rca_gpu.datasets.models``, and ``dut.pt`` as TorchScript)::

    from rca_gpu.datasets import list_datasets, make_dataset
    manifest = make_dataset("mnist-rc", "bench/mnist", n=1500, seed=0)

This module is plain data: torch is imported only when a benchmark is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rca_gpu.datasets.digits_real import INFO as _DIGITS_REAL
from rca_gpu.datasets.info import NONE, CauseInfo, DatasetInfo
from rca_gpu.datasets.mnist_pairs import INFO as _MNIST_PAIRS
from rca_gpu.datasets.mnist_rc import INFO as _MNIST_RC
from rca_gpu.datasets.mnist_spread import INFO as _MNIST_SPREAD
from rca_gpu.datasets.shapes_sim import INFO as _SHAPES_SIM
from rca_gpu.errors import SpecError
from rca_gpu.outputs import writes_to

DATASETS: dict[str, DatasetInfo] = {
    info.name: info for info in (_MNIST_RC, _SHAPES_SIM, _MNIST_PAIRS, _MNIST_SPREAD, _DIGITS_REAL)
}

__all__ = ["DATASETS", "NONE", "CauseInfo", "DatasetInfo", "dataset_differences", "get_dataset", "list_datasets",
           "make_dataset"]


def list_datasets() -> list[DatasetInfo]:
    """All benchmarks, with their causes, default proportions and image format."""
    return list(DATASETS.values())


def get_dataset(name: str) -> DatasetInfo:
    """The benchmark called ``name``; SpecError naming the choices otherwise."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise SpecError(
            f"Unknown dataset {name!r}. Choose one of: {', '.join(DATASETS)} (see 'rca-gpu datasets list')."
        ) from None


@writes_to("out", "rca-gpu datasets make")
def make_dataset(
    name: str,
    out: str | Path,
    *,
    n: int | None = None,
    seed: int = 0,
    proportions: Mapping[str, float] | None = None,
    include_passing: bool = False,
    reporter=None,
) -> Path:
    """Generate benchmark ``name`` into folder ``out`` and return the path of its manifest.parquet.

    Parameters
    ----------
    n:
        Number of failures (rows of the manifest); the dataset's ``default_n`` when None.
    seed:
        Determines everything: data split, DUT weights, drawn parameters. The same seed reproduces
        manifest.parquet and every PNG byte for byte.
    proportions:
        Share of the FAILURES per cause (``none`` included), any positive weights; replaces the defaults
        entirely, so unlisted causes get none.
    include_passing:
        Also write inputs the DUT got right under the same conditions to ``passing/`` and passing.parquet
        (about as many per cause as failures).
    reporter:
        A :class:`rca_gpu.progress.Reporter` for progress bars on training, sampling and writing.
    """
    from rca_gpu.datasets.building import build

    return build(
        get_dataset(name),
        out,
        n=n,
        seed=seed,
        proportions=proportions,
        include_passing=include_passing,
        reporter=reporter,
    )


def dataset_differences(
    folder: str | Path,
    name: str,
    *,
    n: int | None = None,
    seed: int = 0,
    proportions: Mapping[str, float] | None = None,
) -> list[str]:
    """How the benchmark in ``folder`` differs from what ``make_dataset(name, folder, n=..., seed=...,
    proportions=...)`` would write, e.g. ``["n 200 (asked 250)"]``; empty when it matches.

    Compares the dataset's name, n (None: the dataset's ``default_n``), seed and resolved proportions with
    those recorded in ``folder/dataset.json``. A folder without a readable dataset.json (or without
    manifest.parquet) yields ``["no benchmark"]``, so the caller makes one.

    Raises
    ------
    SpecError
        ``name`` is unknown or ``proportions`` invalid (as :func:`make_dataset`).
    """
    from rca_gpu.datasets.proportions import resolve_proportions
    from rca_gpu.runfiles import DATASET_INFO, DATASET_MANIFEST, json_object

    info = get_dataset(name)
    folder = Path(folder)
    recorded = json_object(folder / DATASET_INFO)  # within the limits of every output file, else None
    if not isinstance(recorded, dict) or not (folder / DATASET_MANIFEST).is_file():
        return ["no benchmark"]
    wanted = {
        "name": name,
        "n": info.default_n if n is None else n,
        "seed": seed,
        "proportions": {
            cause: round(share, 6)
            for cause, share in resolve_proportions(info.cause_names, info.default_proportions, proportions).items()
        },
    }
    return [
        f"{key} {recorded.get(key)!r} (asked {value!r})"
        for key, value in wanted.items()
        if recorded.get(key) != value
    ]
