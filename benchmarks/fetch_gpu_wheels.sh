#!/usr/bin/env bash
# Download the wheels benchmarks/gpu_check.sh carries to a bare GPU machine (CUDA torch and CuPy, no RAPIDS,
# no internet): the pure-Python packages rca-gpu needs beyond them; with --with-numba also numba and
# llvmlite (compiled, about 45 MB together) for a machine without them (umap-learn, pynndescent and
# fast-hdbscan need numba). Fails when .whl/ would exceed 64 MiB, what one device call may carry.
#   benchmarks/fetch_gpu_wheels.sh [--with-numba] [--python-version 3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=3.12
numba=0
while [ $# -gt 0 ]; do
  case "$1" in
    --with-numba) numba=1 ;;
    --python-version) python_version="$2"; shift ;;
    *) echo "error: unknown option $1 (use --with-numba, --python-version X.Y)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
  --platform any -d .whl umap-learn pynndescent fast-hdbscan kneed tomli-w typer click rich shellingham \
  markdown-it-py mdurl
if [ "$numba" = 1 ]; then
  python3 -m pip download --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl "numba==0.64.0" "llvmlite==0.46.0"  # the pins of locks/gpu-cu13-x86_64.txt
fi
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "$(ls .whl/*.whl | wc -l) wheels, $((total / 1048576)) MiB in .whl/"
if [ "$total" -gt $((64 * 1048576)) ]; then
  echo "error: .whl/ holds $((total / 1048576)) MiB, more than the 64 MiB a device call carries; remove what the machine has" >&2
  exit 1
fi
