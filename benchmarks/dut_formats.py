"""The same DUT saved in every format gives the same clusters: dut, lrp and gradcam on mnist-rc's DUT as factory
+ state_dict, TorchScript, and ONNX (today's dynamo exporter at opsets 17 and 19), each clustered by the default
reducer and clusterer; ARI of each format's clusters against the factory's (RESULTS.md, section 7).

    python benchmarks/dut_formats.py --bench bench/mnist-rc --out runs/dut-formats
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
import warnings
from pathlib import Path

import numpy as np


def export_formats(manifest: Path, out: Path) -> dict[str, str]:
    import torch

    from rca_gpu.data.sources import load_source
    from rca_gpu.features.dut import load_model

    failures = load_source(manifest)
    eager = load_model(failures.dut, device="cpu")
    refs = {"factory": failures.dut, "torchscript": str(manifest.parent / "dut.pt")}
    for opset in (17, 19):
        path = out / f"dut-opset{opset}.onnx"
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(eager, (torch.rand(2, *eager.input_shape),), str(path), opset_version=opset,
                              input_names=["images"], dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True)
        refs[f"onnx (opset {opset})"] = str(path)
    return refs


def main() -> None:
    from sklearn.metrics import adjusted_rand_score

    from rca_gpu.data.sources import load_source
    from rca_gpu.engine.device import resolve_device
    from rca_gpu.engine.knn import knn_graph
    from rca_gpu.metrics import evaluate
    from rca_gpu.pipeline import compute_features, effective_k
    from rca_gpu.progress import Reporter
    from rca_gpu.spec import build_run_spec, make_features
    from rca_gpu.tuning import select

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True, help="a benchmark folder (mnist-rc)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    refs = export_formats(args.bench / "manifest.parquet", args.out)
    failures = load_source(args.bench / "manifest.parquet")
    causes = failures.table["root_cause"].astype(str).to_numpy()
    device = resolve_device("cpu")
    rows = []
    for extractor in ("dut", "lrp", "gradcam"):
        reference = None
        for name, ref in refs.items():
            spec = build_run_spec(device="cpu", workers=1, model=ref)
            started = time.perf_counter()
            features = compute_features(make_features(extractor), failures, spec, device, None, Reporter(enabled=False))
            graph = knn_graph(features.matrix, effective_k(spec.knn_k, spec.pipeline.reduce), device)
            labels = np.asarray(select(features.matrix, graph, spec.pipeline.reduce, spec.pipeline.cluster, device,
                                       seed=0).labels)
            summary = evaluate(labels, causes[features.positions]).summary
            reference = labels if reference is None else reference
            row = {"extractor": extractor, "format": name, "layer": features.info.get("layer"),
                   "model_format": features.info.get("model_format"), "clusters": summary["n_clusters"],
                   "ARI vs causes": round(summary["ari_with_noise"], 3),
                   "ARI vs factory": round(adjusted_rand_score(reference, labels), 4),
                   "seconds": round(time.perf_counter() - started, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
