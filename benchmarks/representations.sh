#!/usr/bin/env bash
# The representation study of benchmarks/RESULTS.md, section 7: every benchmark, every representation, with the
# default reducer and clusterer (umap + dbscan). Features are cached per benchmark under STUDY/cache, and the
# centring variants reuse the features of their plain twin. Usage: benchmarks/representations.sh BENCH RUNS
# (BENCH holds the benchmarks made by `rca-gpu datasets make NAME --out BENCH/NAME`).
set -euo pipefail
bench=${1:?folder of the benchmarks}
runs=${2:?folder for the studies}
features=${FEATURES:-"mobilenet_v2,mobilenet_v2(center=label),mobilenet_v2(pool=grid2),mobilenet_v2(pool=grid2,center=label),mobilenet_v2@features.14,mobilenet_v2@features.14(center=label),dut,dut(center=label),lrp,gradcam"}
for name in ${BENCHMARKS:-mnist-pairs mnist-spread digits-real mnist-rc shapes-sim}; do
  nice -n 5 rca-gpu study "$bench/$name/manifest.parquet" --out "$runs/$name" --features "$features" \
    --reducers umap --clusterers "${CLUSTERERS:-dbscan}" --workers 1 -q
done
