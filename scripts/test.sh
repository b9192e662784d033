#!/usr/bin/env bash
# The test command of the README: installs nvcc from PyPI into a cached environment (no CUDA
# toolkit or GPU needed), builds with every kernel compiled (a kernel that does not compile
# fails here), and runs the test suite. Kernel tests skip when the machine has no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="$(bash scripts/install-nvcc.sh | tail -n1)"
export NVCC
export LABELFREE_REQUIRE_KERNELS=1
cargo test "$@"
