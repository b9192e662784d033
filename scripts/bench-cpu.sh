#!/usr/bin/env bash
# The CPU encoder comparison of benches/RESULTS.md: labelfree and PyTorch/open_clip, same
# archs, batch, threads and protocol (random weights, one warm-up, median of RUNS passes),
# alternated ROUNDS times in one sitting so that machine noise hits both alike.
#   scripts/bench-cpu.sh PYTHON [THREADS=2] [BATCH=8] [RUNS=3] [ROUNDS=2]
set -euo pipefail
py=$1; threads=${2:-2}; batch=${3:-8}; runs=${4:-3}; rounds=${5:-2}
archs=${ARCHS:-ViT-B-16,ViT-B-32,RN50}
cargo build --release --quiet
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%Y-%m-%dT%H:%MZ)"
for r in $(seq "$rounds"); do
  echo "-- round $r: labelfree"
  target/release/labelfree --threads "$threads" bench --archs "$archs" --batch "$batch" --runs "$runs"
  echo "-- round $r: pytorch"
  "$py" tools/bench_torch.py --archs "$archs" --batch "$batch" --threads "$threads" --runs "$runs" 2>&1 | grep -v WARNING
done
