#!/usr/bin/env bash
# Hot standby figures, side by side in one run (BENCHMARKS.md, "Hot standby"):
#  1. throughput and latency with no standby, an async standby and a sync standby
#     (closed loop, batch 1 and batch 64, 64 in flight, DURATION_SECS each);
#  2. catch-up speed of a standby started after the primary journaled a load;
#  3. `paycore promote` on that standby (its own timing) after the primary is killed.
# Release binaries; nodes and the load generator share this machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION_SECS=${DURATION_SECS:-10}
WALLETS=${WALLETS:-20000}
ROOT=${ROOT:-/var/tmp/pc-standby-bench}
PRIMARY=127.0.0.1:7411
STANDBY=127.0.0.1:7412
cargo build --release -p paycore -p paycore-loadgen >/dev/null 2>&1
BIN=target/release/paycore
LOADGEN=target/release/paycore-loadgen
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_for() { # file pattern
  for _ in $(seq 1 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for $2 in $1" >&2; cat "$1" >&2; return 1
}

start_primary() { # mode
  "$BIN" node --data-dir "$ROOT/a" --shards 2 --listen "$PRIMARY" --replication "$1" \
    >"$ROOT/a.out" 2>"$ROOT/a.err" &
  pids+=($!); wait_for "$ROOT/a.out" "QUIC on"
}

start_standby() {
  "$BIN" node --data-dir "$ROOT/b" --shards 2 --listen "$STANDBY" --standby-of "$PRIMARY" \
    --primary-trust "$ROOT/a/tls/cert.der" --replication-token-file "$ROOT/a/replication.token" \
    --replication async >"$ROOT/b.out" 2>"$ROOT/b.err" &
  pids+=($!); wait_for "$ROOT/b.out" "QUIC on"
}

load() { # label batch
  "$LOADGEN" --server "$PRIMARY" --trust "$ROOT/a/tls/cert.der" --wallets "$WALLETS" \
    --mode closed --batch "$2" --concurrency 64 --duration-secs "$DURATION_SECS" \
    --durability fsync --run-id "$1-b$2" --json "$ROOT/$1-b$2.json" --no-progress >/dev/null
  python3 - "$ROOT/$1-b$2.json" "$1" "$2" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); l = s["latency_us"]; o = s["outcomes"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {s['transfers_per_sec']:,.0f} | {l['p50']/1000:.2f} ms | {l['p99']/1000:.2f} ms | {l['max']/1000:.1f} ms | {o['timeouts']+o['client_errors']+o['busy']} |")
PY
}

echo "| standby | batch | transfers/s | p50 | p99 | max | busy/timeouts/errors |"
echo "|---|---|---|---|---|---|---|"
for mode in off async sync; do
  rm -rf "$ROOT"; mkdir -p "$ROOT"
  start_primary "$mode"
  if [ "$mode" != off ]; then start_standby; fi
  load "$mode" 1
  load "$mode" 64
  cleanup; pids=(); sleep 1
done

# Catch-up: a primary with a journaled load, then a new standby.
rm -rf "$ROOT"; mkdir -p "$ROOT"
start_primary async
"$LOADGEN" --server "$PRIMARY" --trust "$ROOT/a/tls/cert.der" --wallets "$WALLETS" --mode closed \
  --batch 64 --concurrency 64 --duration-secs "$DURATION_SECS" --run-id catchup --no-progress >/dev/null
records=$("$BIN" status --server "$PRIMARY" --trust "$ROOT/a/tls/cert.der" --json \
  | python3 -c 'import json,sys; print(sum(s["last_sequence"] for s in json.load(sys.stdin)["shards"]))')
started=$(date +%s.%N)
start_standby
for _ in $(seq 1 1200); do
  lag=$("$BIN" status --server "$PRIMARY" --trust "$ROOT/a/tls/cert.der" --json \
    | python3 -c 'import json,sys; print(sum(s["standby_lag_records"] for s in json.load(sys.stdin)["shards"]))' 2>/dev/null || echo 1)
  [ "$lag" = 0 ] && break; sleep 0.1
done
finished=$(date +%s.%N)
python3 -c "r=$records; t=$finished-$started; print(f'catch-up: {r:,} records in {t:.2f} s (standby start included) = {r/t:,.0f} records/s')"

# Promotion after the primary is killed.
kill -9 "${pids[0]}"
"$BIN" promote --server "$STANDBY" --trust "$ROOT/b/tls/cert.der" --json
