#!/usr/bin/env bash
# Builds, HERE (the GPU machine has no Rust), everything the GPU machine runs, into gpu-bundle/:
#   gpu-bundle/labelfree      stripped release binary with every kernel (gpu-check, bench)
#   gpu-bundle/run.sh         the runner (scripts/gpu-run.sh)
#   gpu-bundle/coco128/       the sample photos and random soft labels (training throughput)
# (compute-sanitizer runs `labelfree gpu-check`, the same checks as tests/cuda_kernels.rs, so
# the bundle stays under the device tool's 64 MiB.)
# Then, with the device tool:  run(command="bash gpu-bundle/run.sh", carry=["gpu-bundle"])
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="$(bash scripts/install-nvcc.sh | tail -n1)"
export NVCC LABELFREE_REQUIRE_KERNELS=1
COCO128="${COCO128:-../shared/data/coco128/train2017}"
cargo build --release
rm -rf gpu-bundle && mkdir -p gpu-bundle/coco128
cp target/release/labelfree gpu-bundle/labelfree
strip gpu-bundle/labelfree
cp scripts/gpu-run.sh gpu-bundle/run.sh
cp tools/bench_torch_gpu.py tools/bench_torch_train_gpu.py gpu-bundle/
cp "$COCO128"/*.jpg gpu-bundle/coco128/
# Random soft labels (seeded), one row per photo, in the scores-CSV format `train` reads.
python3 - "$COCO128" > gpu-bundle/coco128/labels.csv <<'PY'
import os, random, sys
random.seed(0)
names = sorted(f for f in os.listdir(sys.argv[1]) if f.endswith(".jpg"))
print(",".join(["path"] + [f"class{i}" for i in range(80)]))
for n in names:
    print(",".join([n] + [f"{random.random():.4f}" for _ in range(80)]))
PY
du -sh gpu-bundle/*
