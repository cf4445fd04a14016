#!/usr/bin/env bash
# Store figures (BENCHMARKS.md, "Store (issue 6)"): the sustained flush rate of a journal into
# PostgreSQL, side by side into the machine's stock server and into a tuned one this script
# starts beside it (its own cluster, port PG_TUNED_PORT, data under ROOT; stopped on exit).
#
#   scripts/bench-store.sh [journal|stock|tuned|both]   (default: both)
#
# The journal (`paycore flush-bench-journal`) is written once per USERS/TRANSFERS/LEGS and kept
# under ROOT; each flush writes into a fresh schema, dropped afterwards. Release binary
# PAYCORE (default target/release/paycore, built if missing). Bounded: one journal, one flush
# per store and run. RECONCILE=1 also runs `paycore reconcile` on the flushed store.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-500000}
TRANSFERS=${TRANSFERS:-3000000}
LEGS=${LEGS:-1024}
SHARDS=${SHARDS:-2}
ROOT=${ROOT:-/var/tmp/pc-store-bench}
PAYCORE=${PAYCORE:-target/release/paycore}
PG_STOCK=${PG_STOCK:-postgres://postgres@127.0.0.1:5432/test}
PG_TUNED_PORT=${PG_TUNED_PORT:-5433}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
# Extra `paycore flush` flags (e.g. --flush-batch-records-max 131072).
FLUSH_ARGS=${FLUSH_ARGS:-}
what=${1:-both}

[ -x "$PAYCORE" ] || cargo build --release -p paycore >/dev/null 2>&1
mkdir -p "$ROOT"
JOURNAL="$ROOT/journal-u$USERS-t$TRANSFERS-l$LEGS"
if [ ! -d "$JOURNAL" ]; then
  "$PAYCORE" flush-bench-journal --data-dir "$JOURNAL" --shards "$SHARDS" --users "$USERS" \
    --transfers "$TRANSFERS" --legs-in-flight-max "$LEGS"
fi
[ "$what" = journal ] && exit 0

as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# The tuned server: what a dedicated PostgreSQL for paycore would run with on this machine
# (memory for the wallet table and the indexes, checkpoints spaced out so that fewer pages are
# written whole to the WAL). Durability settings stay the defaults (fsync, full_page_writes).
start_tuned() {
  local data="$ROOT/pg-tuned"
  if [ ! -f "$data/PG_VERSION" ]; then
    mkdir -p "$data"; [ "$(id -u)" = 0 ] && chown postgres "$ROOT" "$data"
    as_postgres "$PG_BIN/initdb" -D "$data" -U postgres --auth trust >/dev/null
  fi
  as_postgres "$PG_BIN/pg_ctl" -D "$data" -l "$ROOT/pg-tuned.log" -w start -o "\
    -p $PG_TUNED_PORT -k /tmp -c listen_addresses=127.0.0.1 \
    -c shared_buffers=4GB -c max_wal_size=16GB -c checkpoint_timeout=30min \
    -c wal_buffers=64MB" >/dev/null
  trap 'as_postgres "$PG_BIN/pg_ctl" -D "$ROOT/pg-tuned" -m fast -w stop >/dev/null' EXIT
}

flush() { # label url
  local schema="bench_$(date +%s)"
  echo "== $1: $JOURNAL ($(du -sh "$JOURNAL" | cut -f1)) -> $2 schema $schema"
  /usr/bin/time -f "flusher: %e s wall, %U s user, %S s sys, %M KiB peak RSS" \
    "$PAYCORE" flush --data-dir "$JOURNAL" --shards "$SHARDS" --once --postgres-url "$2" \
    --postgres-schema "$schema" ${FLUSH_ARGS:-}
  # Client transfers (and deposits) whose movement the origin shard recorded as applied: the
  # "transfers/s" of BENCHMARKS.md is this count over the flush time.
  psql "$2" -qAt -F ' ' -c "SELECT kind, status, CASE WHEN idempotency_key IS NULL THEN 'leg' ELSE 'client' END, count(*) FROM $schema.transactions GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
  # How the wallet updates went: heap-only (HOT, no index entry) or not; table and index sizes.
  psql "$2" -qAt -F ' ' -c "SELECT 'wallets: updates', n_tup_upd, 'hot', n_tup_hot_upd,
      'size', pg_size_pretty(pg_total_relation_size(relid)) FROM pg_stat_user_tables
      WHERE schemaname = '$schema' AND relname = 'wallets'"
  if [ -n "${RECONCILE:-}" ]; then
    /usr/bin/time -f "reconcile: %e s wall, %M KiB peak RSS" "$PAYCORE" reconcile \
      --data-dir "$JOURNAL" --shards "$SHARDS" --quiet --postgres-url "$2" \
      --postgres-schema "$schema" --report "$ROOT/reconcile-$schema.json" | tail -3
  fi
  PGOPTIONS=--client-min-messages=warning psql "$2" -qAtc "DROP SCHEMA $schema CASCADE" >/dev/null
}

case "$what" in
  stock) flush stock "$PG_STOCK" ;;
  tuned) start_tuned; flush tuned "postgres://postgres@127.0.0.1:$PG_TUNED_PORT/postgres" ;;
  both) flush stock "$PG_STOCK"
        start_tuned; flush tuned "postgres://postgres@127.0.0.1:$PG_TUNED_PORT/postgres" ;;
  *) echo "usage: $0 [journal|stock|tuned|both]" >&2; exit 2 ;;
esac
