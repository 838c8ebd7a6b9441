"""No compile stall: a new process with a filled numba cache compiles nothing for any reducer or clusterer.

The timings of benchmarks/compile_stall.py (RESULTS.md) say how long a first call takes; here the bound is
held loosely, in a fresh process: the first call of each stage compiles no numba function once a process
before it filled the cache (except the two functions umap-learn compiles at import, EAGER_AT_IMPORT), and
takes at most FIRST_CALL_SLACK seconds more than the second call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "compile_stall.py"
#: Functions a library compiles at import, whatever the cache: umap-learn declares these two with an explicit
#: signature, so numba compiles them when umap.utils is imported, before rca_gpu.jit_cache can switch their
#: cache on (benchmarks/RESULTS.md, "Compile stall", gives their seconds).
EAGER_AT_IMPORT = {"umap.utils.tau_rand_int", "umap.utils.tau_rand"}
#: Seconds the first call (library imports included) may take beyond the second in a process with a filled
#: cache. Loose on purpose: on a machine at load average 20 the first UMAP call took 24 s more than the second
#: with nothing compiled but EAGER_AT_IMPORT; the firm check is the number of functions numba compiles.
FIRST_CALL_SLACK = 60.0


def _fresh_process(stage: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_NAME", "RCA_GPU_CPU_TARGET")}
    env["PYTHONPATH"] = str(BENCHMARK.parents[1])
    done = subprocess.run([sys.executable, str(BENCHMARK), "--worker", stage], env=env, capture_output=True,
                          text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("stage", ["umap", "hdbscan", "hdbscan-10d", "dbscan", "kmeans", "ward", "pca"])
def test_a_new_process_with_a_filled_cache_compiles_nothing(stage):
    _fresh_process(stage)  # fills the cache (NUMBA_CACHE_DIR of the test session) if nothing did before
    again = _fresh_process(stage)
    assert set(again["first_compiled_names"]) <= EAGER_AT_IMPORT, again
    assert again["second_compiled"] == 0, again
    assert again["first"] - again["second"] <= FIRST_CALL_SLACK, again
