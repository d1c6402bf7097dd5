#!/usr/bin/env bash
# Measures the figures of SPEC §8 against the real release binaries.
#
#   scripts/bench.sh                          every scenario (under 10 minutes on 2 cores)
#   scripts/bench.sh throughput --reps 5      one scenario, more samples
#   scripts/bench.sh --list                   the scenarios
#
# Builds the workspace's binaries in release mode first (baton-bench finds
# the daemons next to itself), then runs target/release/baton-bench with the
# arguments given. Figures go to stdout, progress to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
exec "${CARGO_TARGET_DIR:-target}/release/baton-bench" "$@"
