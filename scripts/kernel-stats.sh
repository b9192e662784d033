#!/usr/bin/env bash
# Compiles every kernels/*.cu to SASS with ptxas (no GPU needed) and prints a markdown table of
# registers per thread, static shared memory, stack and spills per kernel, for sm_80 and sm_90
# (Hopper-only files, *.sm90a.cu, for sm_90a). Usage: scripts/kernel-stats.sh [ARCH...]
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="${NVCC:-$(bash scripts/install-nvcc.sh | tail -n1)}"
ARCHS=("${@:-sm_80 sm_90}")
ARCHS=(${ARCHS[@]})
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for src in kernels/*.cu; do
    base="$(basename "$src" .cu)"
    for arch in "${ARCHS[@]}"; do
        a="$arch"
        case "$base" in *.sm90a) [ "$arch" = sm_90 ] || continue; a=sm_90a ;; esac
        "$NVCC" -cubin -O3 -std=c++17 -Ikernels -arch="$a" -Xptxas -v "$src" -o "$tmp/$base.$a.cubin" \
            > "$tmp/$base.$a.log" 2>&1 || { cat "$tmp/$base.$a.log" >&2; exit 1; }
        sed "s|^|$base $a |" "$tmp/$base.$a.log" >> "$tmp/all.log"
    done
done
python3 - "$tmp/all.log" <<'PY'
import re, sys
rows, cur = [], None
for line in open(sys.argv[1]):
    file, arch, rest = line.split(" ", 2)
    m = re.search(r"Compiling entry function '(\w+)' for '(\w+)'", rest)
    if m:
        cur = {"file": file, "kernel": m.group(1), "arch": m.group(2)}
        rows.append(cur)
        continue
    if cur is None:
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", rest)
    if m:
        cur["stack"], cur["spill_st"], cur["spill_ld"] = m.groups()
    m = re.search(r"Used (\d+) registers", rest)
    if m:
        cur["regs"] = m.group(1)
        s = re.search(r"(\d+) bytes smem", rest)
        cur["smem"] = s.group(1) if s else "0"
print("| file | kernel | arch | registers | static smem (B) | stack (B) | spill st/ld (B) |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['file']} | {r['kernel']} | {r['arch']} | {r.get('regs','?')} | {r.get('smem','?')} | {r.get('stack','?')} | {r.get('spill_st','?')}/{r.get('spill_ld','?')} |")
PY
