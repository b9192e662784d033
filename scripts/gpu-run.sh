#!/usr/bin/env bash
# The runner for the GPU machine (built by scripts/gpu-check.sh; builds nothing). Writes its
# files under $OUT (default gpu-out/) and prints a short table last.
set -uo pipefail
B="$(cd "$(dirname "$0")" && pwd)"
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
date -u +%Y-%m-%dT%H:%MZ | tee -a "$OUT/device.txt"

# cuBLAS (the reference GEMM) is loaded at run time: when no CUDA toolkit is installed, use the
# libcublas that PyTorch's wheels bring (nvidia-cublas), if any.
if ! ldconfig -p 2>/dev/null | grep -q libcublas; then
    CUBLAS_DIR="$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null || true)"
    [ -n "$CUBLAS_DIR" ] && export LD_LIBRARY_PATH="$CUBLAS_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" && echo "libcublas from $CUBLAS_DIR"
fi

echo "== kernel checks and microbenchmarks (native GEMM) =="
"$B/labelfree" gpu-check --bench --json "$OUT/gpu-check.json" | tee "$OUT/gpu-check.md"
echo "== encoder throughput =="
for dt in bf16 f32; do
    "$B/labelfree" --device cuda --dtype "$dt" bench --archs ViT-B-16,ViT-B-32,RN50 --batches 1,8,64,256,512 --runs 10 \
        --json "$OUT/bench-$dt.json" | tee "$OUT/bench-$dt.txt"
done
"$B/labelfree" --device cuda --dtype bf16 bench --archs RN50x64 --batches 1,8,64,256 --runs 5 \
    --json "$OUT/bench-rn50x64-bf16.json" | tee "$OUT/bench-rn50x64-bf16.txt"
"$B/labelfree" --device cuda --dtype bf16 --gemm cublas bench --archs ViT-B-16 --batches 256 --runs 10 \
    --json "$OUT/bench-bf16-cublas.json" | tee "$OUT/bench-bf16-cublas.txt"
if python3 -c "import torch, open_clip" 2>/dev/null; then
    echo "== PyTorch (eager, bf16 autocast, SDPA), same card =="
    python3 "$B/bench_torch_gpu.py" --archs ViT-B-16,ViT-B-32,RN50 --batches 1,8,64,256,512 | tee "$OUT/torch.jsonl"
else
    echo "no torch + open_clip on this machine: PyTorch comparison skipped" | tee "$OUT/torch.jsonl"
fi
# Each full batch replays the step captured as one CUDA graph; --eager-steps launches every kernel
# of every step (same results): the difference is the step's launch overhead.
for run in bf16:graph bf16:eager f32:graph; do
    dt="${run%%:*}"
    mode="${run##*:}"
    flag=""
    [ "$mode" = eager ] && flag="--eager-steps"
    echo "== ResNet-50 training ($dt, $mode steps, CAM head, Adam), coco128 photos at 448, batch 32 =="
    "$B/labelfree" --device cuda --dtype "$dt" train --labels "$B/coco128/labels.csv" --root "$B/coco128" \
        --epochs 3 --batch 32 --size 448 --consistency-from 1 $flag --out "$OUT/train-$dt-$mode" 2>&1 \
        | tail -n 8 | sed "s/^/$dt $mode: /" | tee "$OUT/train-$dt-$mode.txt"
done
if python3 -c "import torch, torchvision" 2>/dev/null; then
    echo "== PyTorch ResNet-50 training (channels-last; bf16 autocast and f32), same card =="
    python3 "$B/bench_torch_train_gpu.py" --batches 16,32 --size 448 | tee "$OUT/torch-train.jsonl"
else
    echo "no torch + torchvision on this machine: PyTorch training comparison skipped" | tee "$OUT/torch-train.jsonl"
fi
SAN="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n1)"
if [ -n "$SAN" ]; then
    for tool in memcheck racecheck; do
        echo "== compute-sanitizer $tool =="
        "$SAN" --tool "$tool" --error-exitcode 9 "$B/labelfree" gpu-check > "$OUT/sanitizer-$tool.txt" 2>&1
        echo "$tool exit $?" | tee -a "$OUT/sanitizer.txt"
        tail -n 3 "$OUT/sanitizer-$tool.txt"
    done
else
    echo "compute-sanitizer not found" | tee "$OUT/sanitizer.txt"
fi
echo "== summary =="
cat "$OUT/device.txt"
grep -c "| yes |" "$OUT/gpu-check.md" | sed 's/^/kernel checks passed: /'
grep -E "NO|ERROR" "$OUT/gpu-check.md" | head -n 20
grep -h " 256 " "$OUT"/bench-*.txt
grep '"batch": 256' "$OUT/torch.jsonl" 2>/dev/null
grep -h "epoch 3/3" "$OUT"/train-*.txt
grep -h '"batch": 32' "$OUT/torch-train.jsonl" 2>/dev/null
cat "$OUT/sanitizer.txt"
