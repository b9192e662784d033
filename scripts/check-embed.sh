#!/usr/bin/env bash
# Compares `labelfree embed` with the reference library's embeddings on a folder of images,
# for every weights file given. Needs the reference venv (tools/requirements.txt).
#   scripts/check-embed.sh PYTHON IMAGES_DIR OUT_DIR WEIGHTS.safetensors...
set -euo pipefail
py=$1; images=$2; out=$3; shift 3
mkdir -p "$out"
bin=${LABELFREE_BIN:-target/release/labelfree}
[ -x "$bin" ] || cargo build --release
for w in "$@"; do
  name=$(basename "$w" .safetensors)
  echo "== $name"
  "$bin" embed --weights "$w" --images "$images" --out "$out/$name.engine.safetensors" --batch 16
  "$py" tools/reference_embed.py --weights "$w" --images "$images" --out "$out/$name.ref.safetensors" \
    --compare "$out/$name.engine.safetensors" | tee "$out/$name.compare.txt"
done
