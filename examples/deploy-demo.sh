#!/usr/bin/env bash
# Delivering a release (SPEC §12), on one machine: a release goes from `main`
# through staging (deployed at once) to production (after approval, one
# canary host of two first); then a bad release's canary health check fails
# and the canary is rolled back, while the second host never gets it.
# Runners labelled as hosts stand in for the machines. Everything it starts is
# stopped when it exits; its files live in a temp dir (KEEP=1 keeps them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

echo "==> building (debug)"
cargo build --workspace --bins
# Where cargo put them: CARGO_TARGET_DIR when set (a shared build cache).
bin="${CARGO_TARGET_DIR:-$root/target}/debug"
work=$(mktemp -d -t baton-deploy-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "==> files kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
baton() { "$bin/baton" "$@"; }

# Waits until the newest deployment of VERSION in ENV has STATE (60 s at most).
wait_deployment() {
  for _ in $(seq 600); do
    if baton deployments --env "$2" --json | python3 -c '
import json, sys
version, state = sys.argv[1], sys.argv[2]
found = [d for d in json.load(sys.stdin) if d["version"] == version and d["kind"] == sys.argv[3]]
sys.exit(0 if found and found[0]["state"] == state else 1)' "$1" "$3" "${4:-release}"; then
      return 0
    fi
    sleep 0.1
  done
  echo "$1 never became $3 in $2; logs are in $work" >&2
  KEEP=1
  exit 1
}

# Commits what is staged, submits it on main and waits for its test to pass.
release() {
  git -C "$repo" commit -q -m "$1"
  local commit id
  commit=$(git -C "$repo" rev-parse HEAD)
  id=$(baton submit "$repo" "$commit" --branch main)
  for _ in $(seq 600); do
    baton show "$id" --json | grep -q '"state": *"passed"' && return 0
    sleep 0.1
  done
  echo "the test of $commit did not pass" >&2
  exit 1
}

echo "==> a repository whose deploy step records which host got which release"
repo="$work/repo"
git init -q -b main "$repo"
git -C "$repo" config user.email demo@example.com
git -C "$repo" config user.name "Baton Demo"
mkdir -p "$repo/tests"
printf 'import unittest\n\nclass T(unittest.TestCase):\n    def test_ok(self):\n        pass\n' >"$repo/tests/test_ok.py"
git -C "$repo" add -A

cat >"$work/dispatcher.toml" <<TOML
[[repo]]
url = "$repo"
deploy = "echo \$BATON_ENVIRONMENT \$BATON_HOST \$BATON_RELEASE >> $work/hosts.log"
post_deploy = "test ! -e broken-in-\$BATON_ENVIRONMENT"   # the health check

[[repo.environment]]
name = "staging"
labels = ["deploy", "staging"]
auto = true

[[repo.environment]]
name = "production"
labels = ["deploy", "prod"]
auto = true
after = "staging"
approval = true
canary = 1
auto_rollback = true
TOML

"$bin/baton-dispatcher" --listen 127.0.0.1:0 --http off --data-dir "$work/data" --config "$work/dispatcher.toml" \
  >"$work/dispatcher.addr" 2>"$work/dispatcher.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/dispatcher.addr" ] && break; sleep 0.05; done
export BATON_DISPATCHER=$(head -n 1 "$work/dispatcher.addr")
for host in ci:test stage-1:deploy,staging prod-1:deploy,prod prod-2:deploy,prod; do
  "$bin/baton-runner" --dispatcher "$BATON_DISPATCHER" --work-dir "$work/${host%%:*}" \
    --name "${host%%:*}" --labels "${host#*:}" 2>"$work/${host%%:*}.log" &
  pids+=($!)
done
for _ in $(seq 100); do [ "$(baton runners --json | grep -o '"idle"' | wc -l)" = 4 ] && break; sleep 0.1; done

echo "==> r1: a passing commit on main is deployed to staging at once; production waits"
release "a good release"
wait_deployment r1 staging deployed
wait_deployment r1 production waiting
echo "\$ baton deployments"
baton deployments
echo "\$ baton approve $repo r1 --env production"
baton approve "$repo" r1 --env production >/dev/null
wait_deployment r1 production deployed
echo "\$ cat hosts.log   # the canary prod-1 first, then prod-2"
cat "$work/hosts.log"

echo "==> r2: healthy in staging, but its health check fails in production"
touch "$repo/broken-in-production"
git -C "$repo" add -A
release "a release that breaks production"
wait_deployment r2 staging deployed
wait_deployment r2 production waiting
baton approve "$repo" r2 --env production >/dev/null
wait_deployment r2 production failed
wait_deployment r1 production deployed rollback
echo "\$ baton deployments --env production"
baton deployments --env production
echo "\$ cat hosts.log   # prod-1 got r2 and then r1 back; prod-2 never got r2"
cat "$work/hosts.log"
