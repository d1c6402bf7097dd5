#!/usr/bin/env bash
# The whole test suite: unit tests of every crate and the integration tests in
# tests/, which start the real binaries (so those are built first).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo test --workspace "$@"
