#!/usr/bin/env bash
# Checks the systemd units in this folder with `systemd-analyze verify`.
#
# The units start /usr/local/bin/baton-*, which a CI machine does not have,
# and systemd refuses a unit whose ExecStart is not executable; so the units
# are copied to a temporary folder with ExecStart pointing at the binaries
# built in the target dir (or at `true` when they are not built). The user
# `baton` need not exist: verify does not look it up.
#
# Fails when systemd reports anything about our units, including what it
# only warns about (an unknown key or a bad value is ignored by systemd at
# run time, which is worse than failing here). Messages about other units
# (the system's own) are printed but do not fail the run.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v systemd-analyze >/dev/null; then
  echo "systemd-analyze is missing: install the systemd package" >&2
  exit 1
fi

bin_dir="$(pwd)/${CARGO_TARGET_DIR:-target}/debug"
case "${CARGO_TARGET_DIR:-}" in /*) bin_dir="$CARGO_TARGET_DIR/debug" ;; esac
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

units=()
for unit in scripts/systemd/*.service; do
  name="$(basename "$unit")"
  binary="${name%.service}"
  # A template (baton-runner@.service) is checked as one of its instances.
  case "$binary" in *@) binary="${binary%@}"; name="${binary}@verify.service" ;; esac
  target="$bin_dir/$binary"
  [ -x "$target" ] || target="$(command -v true)"
  sed "s#/usr/local/bin/$binary #$target #" "$unit" >"$tmp/$name"
  units+=("$tmp/$name")
done

status=0
output="$(systemd-analyze verify "${units[@]}" 2>&1)" || status=$?
ours="$(printf '%s\n' "$output" | grep -F -e "$tmp/" -e "baton-" || true)"
if [ -n "$ours" ]; then
  echo "systemd-analyze verify found problems in the units:" >&2
  printf '%s\n' "$ours" >&2
  exit 1
fi
[ -z "$output" ] || printf '%s\n' "$output"
if [ "$status" -ne 0 ]; then
  echo "warning: systemd-analyze verify exited $status without naming our units; not failing" >&2
fi
echo "systemd units verified: ${units[*]##*/}"
