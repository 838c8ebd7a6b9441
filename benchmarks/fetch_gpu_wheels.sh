#!/usr/bin/env bash
# Download the pure-Python wheels benchmarks/gpu_check.sh can carry to a GPU machine that lacks them.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform any -d .whl umap-learn pynndescent fast-hdbscan kneed tomli-w typer click rich shellingham \
  markdown-it-py mdurl
