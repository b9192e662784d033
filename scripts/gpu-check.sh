#!/usr/bin/env bash
# Builds, HERE (the GPU machine has no Rust), everything the GPU machine runs, into gpu-bundle/:
#   gpu-bundle/labelfree      stripped release binary with every kernel (gpu-check, bench)
#   gpu-bundle/cuda_kernels   the CUDA test binary (for compute-sanitizer)
#   gpu-bundle/run.sh         the runner (scripts/gpu-run.sh)
# Then, with the device tool:  run(command="bash gpu-bundle/run.sh", carry=["gpu-bundle"])
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="$(bash scripts/install-nvcc.sh | tail -n1)"
export NVCC LABELFREE_REQUIRE_KERNELS=1
cargo build --release
test_bin="$(cargo test --release --no-run --test cuda_kernels --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "cuda_kernels" and m.get("executable"):
        print(m["executable"])' | tail -n1)"
rm -rf gpu-bundle && mkdir -p gpu-bundle
cp target/release/labelfree gpu-bundle/labelfree
cp "$test_bin" gpu-bundle/cuda_kernels
strip gpu-bundle/labelfree gpu-bundle/cuda_kernels
cp scripts/gpu-run.sh gpu-bundle/run.sh
cp tools/bench_torch_gpu.py gpu-bundle/
du -sh gpu-bundle/*
