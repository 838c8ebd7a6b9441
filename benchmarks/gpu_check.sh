#!/usr/bin/env bash
# The GPU check in one command, for a machine with CUDA torch and CuPy (planned to fit 10 minutes on an
# H100/H200; each benchmark step has its own timeout):
#   1. `rca-gpu doctor --json` (device decision, versions, known mismatches),
#   2. tests/test_gpu.py on a strict GPU device (CuPy expected; cuML, cuVS and FAISS-GPU tested when installed,
#      and required when named in RCA_GPU_EXPECT, e.g. RCA_GPU_EXPECT=cupy,cuml,cuvs on a RAPIDS image),
#   3. the backend of every stage (benchmarks/gpu_check_backends.py): three pipelines run, and each stage must
#      have run where this stack runs it (cuML where installed, else the torch backend), from run.json,
#   4. extraction throughput (ResNet-50 and MobileNetV2 at 224 px, fp32 and bf16), kNN backends, and kNN /
#      UMAP / DBSCAN at 100k and 1M points plus one run end to end (benchmarks/gpu_check_scale.py).
# Writes $OUT/summary.md (GPU, versions, pass/fail/skip counts, backends, figures) and the raw logs beside it.
# Exit status: non-zero when CUDA is missing, when a GPU test fails, when every GPU test skipped, or when a
# stage ran on an unexpected backend.
# Pure-Python wheels the machine lacks (umap-learn, fast-hdbscan, typer, rich, ...) can be carried
# in .whl/ (benchmarks/fetch_gpu_wheels.sh; under 64 MiB in all).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-/tmp/numba_cache}" RCA_GPU_EXPECT="${RCA_GPU_EXPECT:-cupy}"
rm -f "$OUT"/gpu_tests.xml "$OUT"/extraction.md "$OUT"/knn.md "$OUT"/summary.md "$OUT"/backends.md "$OUT"/scale.md

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "nvidia-smi: not available"; } \
  > "$OUT/gpu.txt"
cuda=0
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>> "$OUT/gpu.txt" && cuda=1

"$PY" -m rca_gpu.cli doctor --json > "$OUT/doctor.json" 2> "$OUT/doctor.log"
echo "doctor exit status: $?" >> "$OUT/doctor.log"

"$PY" -m pytest tests/test_gpu.py -q -rs -o addopts="" -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" 2>&1 \
  | tee "$OUT/gpu_tests.txt"

bench=0
backends=0
if [ "$cuda" = 1 ]; then
  timeout 150 "$PY" benchmarks/gpu_check_backends.py "$OUT" > "$OUT/backends.log" 2>&1 || backends=1
  timeout 90 "$PY" benchmarks/extraction_throughput.py --device cuda --models resnet50 mobilenet_v2 \
    --precisions fp32 bf16 --image-size 224 --batch-size 256 --batches 5 --out "$OUT/extraction.md" \
    > "$OUT/extraction.log" 2>&1 || bench=1
  timeout 60 "$PY" benchmarks/knn_backends.py --device auto --sizes 10000 100000 --dims 1280 --repeats 2 \
    > "$OUT/knn.md" 2> "$OUT/knn.log" || bench=1
  timeout 200 "$PY" benchmarks/gpu_check_scale.py --sizes 100000 1000000 --budget 150 --out "$OUT/scale.md" \
    > "$OUT/scale.log" 2>&1 || bench=1
fi

"$PY" benchmarks/gpu_check_summary.py "$OUT" --cuda "$cuda" --benchmarks-failed "$bench" \
  --backends-failed "$backends"
