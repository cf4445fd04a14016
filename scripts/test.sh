#!/usr/bin/env bash
# The whole test suite: what README.md calls "run the tests" and what .ci/run runs.
# Installs nothing today: the engine's tests need only cargo and cargo-nextest, which a fresh
# machine of this kind has. Later issues add the services they need here (and only here).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "cargo-nextest missing: installing it (one time)" >&2
    cargo install --locked cargo-nextest
fi
# --- NATS JetStream (issue 19, paycore-publish) -------------------------------------------
# The publisher's tests start a nats-server of their own (free port, temp folder); anything
# else that wants a broker finds one at 127.0.0.1:4222: start `nats-server -js` there when
# none answers (stopped when this script exits).
if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
    if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
        (apt-get update -qq && apt-get install -y -qq nats-server) >/dev/null 2>&1 || true
    fi
    NATS_SERVER_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)
    if [ -x "$NATS_SERVER_BIN" ]; then
        NATS_DIR=$(mktemp -d)
        "$NATS_SERVER_BIN" -js -a 127.0.0.1 -p 4222 -sd "$NATS_DIR" >/dev/null 2>&1 &
        NATS_PID=$!
        trap 'kill "$NATS_PID" 2>/dev/null; rm -rf "$NATS_DIR"' EXIT
        for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.1; done
    fi
fi
# --- end NATS -------------------------------------------------------------------------------

# Build every test binary first, then flush the build's dirty pages: right after a cold build the
# disk is busy writing gigabytes of artifacts, and the tests that fsync (journal, crash, node)
# would otherwise wait behind that writeback for tens of seconds.
cargo test --workspace --no-run --quiet
sync
# Doc tests first (nextest does not run them), so the run ends with nextest's summary line.
cargo test --workspace --doc --quiet
cargo nextest run --workspace --no-fail-fast "$@"
