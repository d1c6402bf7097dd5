#!/usr/bin/env bash
# The whole test suite: unit tests of every crate and the integration tests in
# tests/, which start the real binaries (so those are built first).
#
# Ends with one line, `N passed, N failed[, N ignored] in Ns`, summed over
# every test binary, and exits with cargo's status. Every binary runs even
# after one fails (--no-fail-fast), so the total is the whole suite's.
# Doc tests are not run: no crate has any (`--lib --bins --tests`).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
cargo build --workspace --bins
output=$(mktemp)
trap 'rm -f "$output"' EXIT
status=0
cargo test --workspace --no-fail-fast --lib --bins --tests "$@" 2>&1 | tee "$output" || status=${PIPESTATUS[0]}
awk -v seconds=$((SECONDS - started)) '
  /^test result: / {
    for (i = 1; i <= NF; i++) {
      if ($(i + 1) ~ /^passed;/) passed += $i
      if ($(i + 1) ~ /^failed;/) failed += $i
      if ($(i + 1) ~ /^ignored;/) ignored += $i
    }
  }
  END {
    line = sprintf("%d passed, %d failed", passed, failed)
    if (ignored > 0) line = line sprintf(", %d ignored", ignored)
    printf "%s in %ds\n", line, seconds
  }
' "$output"
exit "$status"
