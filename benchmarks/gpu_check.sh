#!/usr/bin/env bash
# The GPU check, in one command, for a machine with CUDA torch and CuPy (no cuML, no FAISS needed):
#   1. the GPU tests that can run there (zero-copy torch -> CuPy, torch kNN and PCA on CUDA vs CPU;
#      the cuML agreement tests skip themselves when cuML is absent),
#   2. extraction throughput, ResNet-50 and MobileNetV2 at 224 px, fp32 and bf16,
#   3. kNN backends on the GPU.
# Results go to $OUT (default runs/gpu_check). Pure-Python wheels the machine lacks (umap-learn,
# pynndescent, fast-hdbscan, kneed, tomli-w) can be carried in .whl/ (benchmarks/fetch_gpu_wheels.sh).
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
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
"$PY" -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
  >> "$OUT/gpu.txt" 2>&1
status=0
"$PY" -m pytest tests/test_gpu.py -q -rs -o addopts="" -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.txt" || status=1
"$PY" benchmarks/extraction_throughput.py --device cuda --models resnet50 mobilenet_v2 --precisions fp32 bf16 \
  --image-size 224 --batch-size 256 --batches 10 --out "$OUT/extraction.md" 2>&1 | tee "$OUT/extraction.log" || status=1
"$PY" benchmarks/knn_backends.py --device auto --sizes 10000 100000 --dims 1280 --repeats 3 2>&1 \
  | tee "$OUT/knn.md" || status=1
exit $status
