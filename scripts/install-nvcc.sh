#!/usr/bin/env bash
# Installs nvcc 13.0 from PyPI into a local virtual environment (no CUDA toolkit, no GPU needed)
# and prints the path of nvcc on its last line. Idempotent: a second run reuses the environment.
#
#   NVCC_ENV   where the environment goes (default: ${XDG_CACHE_HOME:-$HOME/.cache}/labelfree/nvcc-13.0.2)
#
# Use:  export NVCC="$(scripts/install-nvcc.sh | tail -n1)"; cargo build --release
# The PTX it makes (ISA 9.0) needs a driver of the 580 series or newer on the GPU machine.
set -euo pipefail
NVCC_ENV="${NVCC_ENV:-${XDG_CACHE_HOME:-$HOME/.cache}/labelfree/nvcc-13.0.2}"
PYTHON="${PYTHON:-python3}"
find_nvcc() {
    find "$NVCC_ENV" -type f -name nvcc -path '*/bin/*' 2>/dev/null | head -n1
}
nvcc_path="$(find_nvcc || true)"
if [ -z "$nvcc_path" ] || ! "$nvcc_path" --version >/dev/null 2>&1; then
    echo "installing nvcc 13.0.2 from PyPI into $NVCC_ENV" >&2
    "$PYTHON" -m venv "$NVCC_ENV"
    "$NVCC_ENV/bin/pip" install --quiet --disable-pip-version-check \
        "cuda-toolkit[nvcc,crt,nvvm,cudart,cccl]==13.0.2" >&2
    nvcc_path="$(find_nvcc)"
fi
if [ -z "$nvcc_path" ]; then
    echo "install-nvcc: no nvcc found under $NVCC_ENV after installing" >&2
    exit 1
fi
"$nvcc_path" --version | tail -n2 >&2
echo "$nvcc_path"
