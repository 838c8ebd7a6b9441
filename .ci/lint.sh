#!/usr/bin/env bash
# Lint (ruff) and type check (mypy, basic mode), both configured in pyproject.toml.
#   .ci/lint.sh                  the whole tree (ruff: rca_gpu tests benchmarks scripts; mypy: rca_gpu)
#   .ci/lint.sh PATH...          only these files or folders (mypy: those under rca_gpu/)
# Exit status 0 when both pass, 1 when either finds a problem (both always run). PYTHON picks the interpreter
# (default .venv/bin/python, as `make test` installs it).
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
if [ "$#" -gt 0 ]; then
  lint=("$@")
  types=()
  for path in "$@"; do
    case "$path" in rca_gpu|rca_gpu/*) types+=("$path") ;; esac
  done
else
  lint=(rca_gpu tests benchmarks scripts)
  types=(rca_gpu)
fi
status=0
echo "ruff check ${lint[*]}"
"$python" -m ruff check "${lint[@]}" || status=1
if [ "${#types[@]}" -gt 0 ]; then
  echo "mypy ${types[*]}"
  "$python" -m mypy "${types[@]}" || status=1
fi
exit "$status"
