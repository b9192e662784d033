#!/usr/bin/env bash
# The test command of the README: installs nvcc from PyPI into a cached environment (no CUDA
# toolkit or GPU needed), builds with every kernel compiled (a kernel that does not compile
# fails here), checks the formatting (rustfmt.toml) and the lints (clippy, warnings as errors),
# and runs the test suite. Kernel tests run on the GPU when there is one, else on the PTX
# simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="$(bash scripts/install-nvcc.sh | tail -n1)"
export NVCC
export LABELFREE_REQUIRE_KERNELS=1
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --check || { echo "formatting differs from rustfmt.toml: run cargo fmt" >&2; exit 1; }
else
    echo "warning: rustfmt is not installed (rustup component add rustfmt): formatting NOT checked" >&2
fi
# Lints on every target (lib, bins, tests, benches, examples), warnings as errors.
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --all-targets -- -D warnings || { echo "clippy found warnings: fix them (see above)" >&2; exit 1; }
else
    echo "warning: clippy is not installed (rustup component add clippy): lints NOT checked" >&2
fi
cargo test "$@"
