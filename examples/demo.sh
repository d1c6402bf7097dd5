#!/usr/bin/env bash
# The local demo, in the spirit of "500 Lines or Less": a test repository with
# a passing and a failing test, the dispatcher, a runner manager that brings
# runners with the work (a pool of 1 to 2) and the observer on loopback, a few commits, and the results as `baton` shows them.
# Everything it starts is stopped when it exits; its files live in a temp dir.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# cargo's own progress lines show while it builds: the first build takes minutes.
echo "==> building (debug); KEEP=1 keeps the demo's files and logs afterwards"
cargo build --workspace --bins
# Where cargo put them: CARGO_TARGET_DIR when set (a shared build cache).
bin="${CARGO_TARGET_DIR:-$root/target}/debug"
work=$(mktemp -d -t baton-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Managed runners outlive their manager on purpose (a restarted manager
  # adopts them): stop them by their pid files.
  for f in "$work"/runners/*/manager.pid; do
    [ -e "$f" ] && kill "$(cut -d' ' -f1 "$f")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "==> files kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

baton() { "$bin/baton" "$@"; }

# Waits until a commit's newest task has ended; fails after 60 s.
wait_done() {
  for _ in $(seq 600); do
    if baton show "$1" --json 2>/dev/null | grep -Eq '"state": ?"(passed|failed|error|aborted)"'; then
      return 0
    fi
    sleep 0.1
  done
  echo "commit $1 did not finish in 60 s; logs are in $work" >&2
  KEEP=1
  exit 1
}

echo "==> making a test repository in $work/repo"
repo="$work/repo"
git init -q -b main "$repo"
git -C "$repo" config user.email demo@example.com
git -C "$repo" config user.name "Baton Demo"
mkdir -p "$repo/tests"
cat > "$repo/tests/test_math.py" <<'PY'
import unittest

class MathTest(unittest.TestCase):
    def test_add(self):
        self.assertEqual(1 + 1, 2)

    def test_multiply(self):
        self.assertEqual(2 * 3, 6)
PY
git -C "$repo" add -A
git -C "$repo" commit -q -m "two passing tests"
first=$(git -C "$repo" rev-parse HEAD)

echo "==> starting baton-dispatcher, baton-runner-manager (pool demo: 1 to 2 runners) and baton-observer --watch"
"$bin/baton-dispatcher" --listen 127.0.0.1:0 --data-dir "$work/data" \
  >"$work/dispatcher.addr" 2>"$work/dispatcher.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/dispatcher.addr" ] && break; sleep 0.05; done
addr=$(head -n 1 "$work/dispatcher.addr")
export BATON_DISPATCHER="$addr"
echo "    dispatcher listening on $addr"
# The web report service (pages, /api/v1/, /metrics): the default address
# 127.0.0.1:8080 unless it is taken, printed as the second line.
http=$(sed -n 's/^http: //p' "$work/dispatcher.addr")
[ -n "$http" ] && echo "    web report at http://$http/ (open it: it updates live)"
# The manager starts runners demo-1, demo-2 as tasks wait, and drains the
# second one after 10 s of idleness (each runner logs to its work dir).
"$bin/baton-runner-manager" --dispatcher "$addr" --work-root "$work/runners" \
  --pool demo::1:2 --idle-timeout 10s 2>"$work/manager.log" &
pids+=($!)
"$bin/baton-observer" --dispatcher "$addr" --watch --state-file "$work/observer.json" "$repo" \
  2>"$work/observer.log" &
pids+=($!)

wait_done "$first"
echo "==> committing a failing test"
cat > "$repo/tests/test_broken.py" <<'PY'
import unittest

class BrokenTest(unittest.TestCase):
    def test_subtract(self):
        self.assertEqual(5 - 3, 1)
PY
git -C "$repo" add -A
git -C "$repo" commit -q -m "a failing test"
broken=$(git -C "$repo" rev-parse HEAD)
wait_done "$broken"

echo "==> fixing it"
sed -i 's/5 - 3, 1/5 - 3, 2/' "$repo/tests/test_broken.py"
git -C "$repo" commit -q -am "fix the failing test"
fixed=$(git -C "$repo" rev-parse HEAD)
wait_done "$fixed"

echo "==> a slow test: kill -9 the runner running it; the manager replaces it and the task runs again"
cat > "$repo/.baton.toml" <<'TOML'
[test]
command = "sleep 2; python3 -m unittest discover -s tests -v"
TOML
git -C "$repo" add -A
git -C "$repo" commit -q -m "a slow test run"
slow=$(git -C "$repo" rev-parse HEAD)
for _ in $(seq 300); do
  # Until the observer has submitted the commit, `baton show` says it knows
  # no such task (and fails): keep asking.
  runner=$(baton show "$slow" --json 2>/dev/null | sed -nE 's/.*"runner": ?"([a-z0-9-]+)".*/\1/p' | head -n 1 || true)
  [ -n "$runner" ] && break
  sleep 0.05
done
echo "    task is running on $runner; kill -9 it"
victim=$(cut -d' ' -f1 "$work/runners/$runner/manager.pid")
kill -9 "$victim" 2>/dev/null || true
wait_done "$slow"
baton show "${slow:0:10}" | grep -E '^(state|attempts|runner):'

echo "==> kill -9 the dispatcher and start it again on the same data dir and port"
{ kill -9 "${pids[0]}"; wait "${pids[0]}"; } 2>/dev/null || true
"$bin/baton-dispatcher" --listen "$addr" --http "${http:-off}" --data-dir "$work/data" >/dev/null 2>>"$work/dispatcher.log" &
pids+=($!)
for _ in $(seq 100); do baton status >/dev/null 2>&1 && break; sleep 0.05; done

echo
echo "\$ baton tasks   # after the restart: nothing lost"
baton tasks
echo
echo "\$ baton show ${broken:0:10}"
baton show "${broken:0:10}" || true
echo
echo "\$ baton log <the failing task>"
broken_id=$(baton show "$broken" --json | sed -nE 's/.*"id": ?([0-9]+).*/\1/p' | head -n 1)
baton log "$broken_id" | tail -n 12 || true
echo
echo "\$ baton runners"
baton runners
echo
echo "\$ baton status"
baton status
echo
echo "==> result files in the data dir:"
ls "$work/data/test_results"

# On a terminal, keep everything running so the web report can be explored.
if [ -t 0 ] && [ -n "${http:-}" ]; then
  echo
  echo "==> the daemons keep running: open http://$http/ (press Enter to stop them)"
  read -r _ || true
fi
