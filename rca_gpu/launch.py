"""Which run ``rca-gpu run`` starts: images or features brought by the user, in one process or on Dask.

    rca-gpu run SOURCE ...                         images: rca_gpu.pipeline.run
    rca-gpu run SOURCE ... --dask ADDRESS          images, extraction on Dask workers: rca_gpu.distributed
    rca-gpu run --features FILE ...                features brought by the user: no extraction
    rca-gpu run --features FILE --dask ADDRESS     the same, kNN graph on Dask GPU workers when there are some
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rca_gpu.errors import SpecError
from rca_gpu.spec import PRECOMPUTED

if TYPE_CHECKING:  # pragma: no cover
    from rca_gpu.pipeline import RunResult
    from rca_gpu.progress import Reporter
    from rca_gpu.spec import RunSpec

#: The pipeline ``--features`` runs when neither --pipeline nor the config names one.
FEATURES_PIPELINE = "umap+dbscan"


def pipeline_for_features(pipeline: str | None, config: str | os.PathLike | None) -> str | None:
    """The pipeline to build the spec with when ``--features`` is given: FEATURES_PIPELINE when neither the
    command line nor the config file (TOML) names one, else what was named."""
    from rca_gpu.spec import load_config

    if pipeline is None and not (load_config(config) if config else {}).get("pipeline"):
        return FEATURES_PIPELINE
    return pipeline


def run_inputs(
    spec: RunSpec,
    source: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    features: str | os.PathLike | None = None,
    metadata: str | os.PathLike | None = None,
    dask: str | None = None,
    reporter: Reporter | None = None,
    report: bool = True,
) -> RunResult:
    """Start the run that the inputs ask for (see the module docstring); report.html unless ``report`` is False.

    Raises
    ------
    SpecError
        Both or neither of SOURCE and ``features``; ``metadata`` without ``features``; a pipeline with a
        feature extractor given ``features``, or without one given images; a bad ``dask`` address.
    """
    if dask is not None:
        from rca_gpu.distributed import check_address

        check_address(dask)
    if features is not None:
        if source is not None:
            raise SpecError(
                f"Pass either SOURCE ({source}) or --features FILE, not both. Image paths and metadata for the "
                "features go in the features file or in --metadata."
            )
        return run_features(spec, features, out, metadata=metadata, dask=dask, reporter=reporter, report=report)
    if metadata is not None:
        raise SpecError("--metadata describes the rows of --features FILE; pass --features too, or drop --metadata.")
    if source is None:
        raise SpecError("Pass SOURCE (a folder of images or a manifest), or --features FILE with your own features.")
    if spec.pipeline.features.name == PRECOMPUTED:
        raise SpecError(
            f"The pipeline {str(spec.pipeline)!r} has no feature extractor, so it needs --features FILE. To run on "
            "the images of SOURCE, name one, e.g. --pipeline mobilenet_v2+umap+dbscan."
        )
    if dask is not None:
        from rca_gpu.distributed import run_dask

        return run_dask(spec, Path(source), Path(out), address=dask, reporter=reporter, report=report)
    from rca_gpu.pipeline import run

    return run(spec, Path(source), Path(out), reporter=reporter, report=report)


def run_features(
    spec: RunSpec,
    features: str | os.PathLike,
    out: str | os.PathLike,
    *,
    metadata: str | os.PathLike | None = None,
    dask: str | None = None,
    reporter: Reporter | None = None,
    report: bool = True,
) -> RunResult:
    """Run the pipeline of ``spec`` (feature stage ``precomputed``) on the features in ``features``
    (.parquet / .npy, see :mod:`rca_gpu.features.precomputed`), writing the usual outputs to ``out``."""
    from rca_gpu.engine.device import resolve_device
    from rca_gpu.features.precomputed import load_features
    from rca_gpu.pipeline import Timer, run_on_features

    if spec.pipeline.features.name != PRECOMPUTED:
        raise SpecError(
            f"--features FILE replaces the feature stage, but the pipeline {str(spec.pipeline)!r} names the "
            f"extractor '{spec.pipeline.features.name}'. Write it without one, e.g. --pipeline {FEATURES_PIPELINE}."
        )
    from rca_gpu.runfolder import check_run_out_folder
    from rca_gpu.spec import check_backends, check_paths

    timer = Timer()
    started_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    out = check_run_out_folder(Path(out), {"--features": features, "--metadata": metadata})  # before reading
    check_paths(spec)
    device = resolve_device(spec.device)
    check_backends(spec, device)
    t = time.perf_counter()
    failures, loaded = load_features(features, metadata=metadata, image_root=spec.image_root, device=device)
    timer.add("load_features", t)
    graph = None
    if dask is not None and 2 <= loaded.n <= spec.sample_size:  # above it the search needs no full graph
        from rca_gpu.distributed import connect, knn_graph_dask
        from rca_gpu.tuning import effective_k

        with connect(dask) as client:
            t = time.perf_counter()
            graph = knn_graph_dask(loaded.matrix, effective_k(spec.knn_k, spec.pipeline.reduce), client)
            if graph is not None:
                timer.add("knn", t)
    return run_on_features(spec, failures, loaded, device, Path(out), timer=timer, reporter=reporter,
                           started_at=started_at, graph=graph, report=report, release_matrix=True)
