"""Which representation clusters failures by cause: every benchmark x representation, default reducer and
clusterer (umap + dbscan, every open parameter chosen by the default rule), scored against the causes.

    python benchmarks/representations.py --bench bench --out runs/representations     # RESULTS.md, section 7

``bench`` holds the five benchmarks made by ``rca-gpu datasets make NAME --out bench/NAME`` (seed 0, default n).
To fit a 2-core machine, MobileNetV2 runs ONCE per benchmark: its last feature map is extracted as
``mobilenet_v2(pool=grid7,normalize=false)`` (the 7 x 7 map itself, cached under OUT/NAME/cache), and each
backbone representation is computed from it exactly as its extractor computes it: the global average
(``mobilenet_v2``, the network's own pooling) or the N x N adaptive average (``pool=gridN``), then the L2
normalisation, then the class-conditional centring (rca_gpu.features.represent.center_features) for
``center=...``. ``--check`` compares the derived ``mobilenet_v2`` with the extractor's on the first benchmark.
The DUT's representations (``dut``, the input of its last Linear layer) are extracted by their extractor.
``--only`` runs some of the representations; ``--maps DIR`` keeps each benchmark's maps as DIR/NAME.npy (read
back instead of extracting on the next run; benchmarks/representations_choice.py reads them too).

Each representation is clustered by rca_gpu.tuning.select on its kNN graph, as `rca-gpu run` does (the labels
of a run are the selection's labels), and evaluated with rca_gpu.metrics. Writes OUT/results.parquet (one row
per benchmark x representation, metrics, target checks, seconds of kNN + search, the chosen setting, two
unsupervised criteria) and prints the tables of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

BENCHMARKS = ("mnist-rc", "shapes-sim", "mnist-pairs", "mnist-spread", "digits-real")
#: (representation, how it is computed from the map: pool side or None for the global average, centring)
BACKBONE = (
    ("mobilenet_v2", None, None),
    ("mobilenet_v2(pool=grid2)", 2, None),
    ("mobilenet_v2(center=label,pool=grid2)", 2, "label"),
    ("mobilenet_v2(center=label)", None, "label"),
)
DUT = (("dut", None), ("dut(center=label)", "label"))
#: ``--set mid``: a middle layer, which keeps the look of a corruption more than the content. Its 14 x 14 map
#: is extracted pooled to 2 x 2 (exact halves, so the global average is the mean of the four cells).
MID = (
    ("mobilenet_v2@features.14", None, None),
    ("mobilenet_v2@features.14(center=label)", None, "label"),
    ("mobilenet_v2@features.14(pool=grid2)", 2, None),
    ("mobilenet_v2@features.14(center=label,pool=grid2)", 2, "label"),
)


def backbone_matrices(maps, side, how, failures, positions):
    """The representation of ``maps`` (n, 1280, 7, 7) as its extractor computes it (see the module doc)."""
    import torch

    from rca_gpu.features.represent import center_features, class_keys

    pooled = maps.mean(dim=(2, 3)) if side is None else torch.nn.functional.adaptive_avg_pool2d(maps, side).flatten(1)
    matrix = torch.nn.functional.normalize(pooled, dim=1)
    if how:
        matrix, _ = center_features(matrix, class_keys(failures, positions, how))
    return matrix


def cluster(matrix, spec, device):
    """The default pipeline's clustering of ``matrix``: kNN graph, then the search with the default rule."""
    from rca_gpu.engine.knn import knn_graph
    from rca_gpu.pipeline import effective_k
    from rca_gpu.tuning import select

    started = time.perf_counter()
    graph = knn_graph(matrix, effective_k(spec.knn_k, spec.pipeline.reduce), device, spec.knn_backend)
    selection = select(matrix, graph, spec.pipeline.reduce, spec.pipeline.cluster, device, seed=spec.seed,
                       sample_size=spec.sample_size)
    return selection, time.perf_counter() - started


def silhouette(embedding, labels) -> float | None:
    """Silhouette of the clustered images in the chosen embedding (an unsupervised criterion)."""
    from sklearn.metrics import silhouette_score

    from rca_gpu.engine.device import as_numpy

    keep = labels >= 0
    if len(np.unique(labels[keep])) < 2:
        return None
    return float(silhouette_score(np.asarray(as_numpy(embedding))[keep], labels[keep], random_state=0,
                                  sample_size=min(2000, int(keep.sum()))))


def bound(embedding, causes: np.ndarray, seed: int = 0) -> float:
    """ARI of K-means at the true number of causes (``none`` included) on the chosen embedding: what the
    representation reaches when the truth fixes the granularity (the bound of RESULTS.md)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from rca_gpu.engine.device import as_numpy

    k = len(np.unique(causes))
    found = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(np.asarray(as_numpy(embedding)))
    return float(adjusted_rand_score(causes, found))


def mid_jobs(failures, spec, device, cache, reporter):
    """The MID representations, from one extraction of features.14 pooled to 2 x 2."""
    import torch

    from rca_gpu.features.represent import center_features, class_keys
    from rca_gpu.pipeline import compute_features
    from rca_gpu.spec import make_features

    extracted = compute_features(make_features("mobilenet_v2", "features.14", pool="grid2", normalize=False),
                                 failures, spec, device, cache, reporter)
    cells = extracted.matrix.view(-1, 160, 2, 2)
    positions = extracted.positions

    def make(side, how):
        pooled = cells.mean(dim=(2, 3)) if side is None else cells.flatten(1)
        matrix = torch.nn.functional.normalize(pooled, dim=1)
        return center_features(matrix, class_keys(failures, positions, how))[0] if how else matrix

    return [(label, lambda s=side, h=how: make(s, h), positions) for label, side, how in MID]


def run_benchmark(name: str, bench: Path, out: Path, check: bool, which: str = "last",
                  stages: str | None = None, only: list[str] | None = None,
                  maps_from: Path | None = None) -> list[dict]:
    from rca_gpu.data.sources import load_source
    from rca_gpu.engine.device import resolve_device
    from rca_gpu.pipeline import compute_features
    from rca_gpu.progress import Reporter
    from rca_gpu.spec import build_run_spec, make_features

    failures = load_source(bench / name / "manifest.parquet")
    spec = build_run_spec(device="cpu", workers=1, **({"pipeline": f"mobilenet_v2+{stages}"} if stages else {}))
    device = resolve_device("cpu")
    reporter = Reporter(enabled=False)
    cache = out / name / "cache"
    causes = failures.table["root_cause"].astype(str).to_numpy()
    done = out / name / ("results.parquet" if which == "last" else f"results-{which}.parquet")
    if stages:
        done = done.with_name(f"{done.stem}-{stages.replace('+', '-')}.parquet")
    started = time.perf_counter()
    if which == "mid":
        jobs = mid_jobs(failures, spec, device, cache, reporter)
        return _cluster_all(name, jobs, causes, spec, device, done, time.perf_counter() - started)
    if maps_from is not None and (maps_from / f"{name}.npy").exists():  # an earlier extraction (see --maps)
        import torch

        maps = torch.from_numpy(np.load(maps_from / f"{name}.npy")).view(-1, 1280, 7, 7)
        positions = np.arange(len(maps))
        if len(maps) != len(failures.table):
            raise SystemExit(f"{maps_from / name}.npy has {len(maps)} rows, {name} {len(failures.table)} images")
    else:
        extracted = compute_features(make_features("mobilenet_v2", pool="grid7", normalize=False), failures,
                                     spec, device, cache, reporter)
        maps = extracted.matrix.view(-1, 1280, 7, 7)
        positions = extracted.positions
        if maps_from is not None and len(positions) == len(failures.table):
            maps_from.mkdir(parents=True, exist_ok=True)
            np.save(maps_from / f"{name}.npy", extracted.matrix.cpu().numpy())
    extract_seconds = time.perf_counter() - started
    if check:
        plain = compute_features(make_features("mobilenet_v2"), failures, spec, device, cache, reporter)
        derived = backbone_matrices(maps, None, None, failures, positions)
        gap = float((plain.matrix - derived).abs().max())
        print(f"check: derived mobilenet_v2 vs its extractor on {name}: max |difference| {gap:.2e}", flush=True)
    suffix = f"+{stages}" if stages else ""
    jobs = [(label + suffix, lambda s=side, h=how: backbone_matrices(maps, s, h, failures, positions), positions)
            for label, side, how in BACKBONE if not only or label in only]
    if stages or (only and not any(label in only for label, _ in DUT)):  # the backbone representations only
        return _cluster_all(name, jobs, causes, spec, device, done, extract_seconds)
    dut = compute_features(make_features("dut"), failures, spec, device, cache, reporter)
    for label, how in DUT:
        if only and label not in only:
            continue

        def dut_matrix(how=how):
            if not how:
                return dut.matrix
            from rca_gpu.features.represent import center_features, class_keys

            return center_features(dut.matrix, class_keys(failures, dut.positions, how))[0]
        jobs.append((label, dut_matrix, dut.positions))
    return _cluster_all(name, jobs, causes, spec, device, done, extract_seconds)


def _cluster_all(name, jobs, causes, spec, device, done: Path, extract_seconds: float) -> list[dict]:
    from rca_gpu.metrics import evaluate

    rows = pd.read_parquet(done).to_dict("records") if done.exists() else []  # a re-run resumes
    for label, make, rows_of in jobs:
        if any(row["representation"] == label for row in rows):
            continue
        matrix = make()
        selection, seconds = cluster(matrix, spec, device)
        labels = np.asarray(selection.labels)
        summary = evaluate(labels, causes[rows_of]).summary
        rows.append({
            "benchmark": name, "representation": label, "dims": int(matrix.shape[1]), **summary,
            "seconds_cluster": round(seconds, 2), "seconds_extract": round(extract_seconds, 1),
            "silhouette": silhouette(selection.embedding, labels), "labels": labels.tolist(),
            "bound_ari_true_k": bound(selection.embedding, causes[rows_of]),
            "chosen": json.dumps(selection.to_dict()["chosen"], sort_keys=True),
        })
        print(f"{name} {label}: {summary['n_clusters']} clusters, ARI {summary['ari_with_noise']:.3f}, "
              f"purity {summary['weighted_purity'] or 0:.3f}, noise {summary['noise_share']:.3f}, "
              f"score {summary['study_score']:.3f}, {seconds:.0f} s", flush=True)
        pd.DataFrame(rows).to_parquet(done)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--benchmarks", nargs="*", default=list(BENCHMARKS))
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--set", dest="which", choices=("last", "mid"), default="last",
                        help="last: the last feature map and the DUT; mid: MobileNetV2's features.14")
    parser.add_argument("--stages", help="REDUCER+CLUSTERER instead of the default umap+dbscan (backbone only)")
    parser.add_argument("--only", nargs="*", help="the backbone representations to run (default: all of them)")
    parser.add_argument("--maps", type=Path, help="each benchmark's 7 x 7 maps as MAPS/NAME.npy, (n, 62720) float32 "
                        "in manifest order: read from there when the file exists (no extraction), else extracted "
                        "and written there (for benchmarks/representations_choice.py)")
    args = parser.parse_args()
    for position, name in enumerate(args.benchmarks):
        (args.out / name).mkdir(parents=True, exist_ok=True)
        run_benchmark(name, args.bench, args.out, args.check and position == 0, args.which, args.stages,
                      args.only, args.maps)
    frames = [pd.read_parquet(f) for n in args.benchmarks for f in sorted((args.out / n).glob("results*.parquet"))]
    pd.concat(frames).to_parquet(args.out / "results.parquet")


if __name__ == "__main__":
    main()
