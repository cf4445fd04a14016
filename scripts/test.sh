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
# Build every test binary first, then flush the build's dirty pages: right after a cold build the
# disk is busy writing gigabytes of artifacts, and the tests that fsync (journal, crash, node)
# would otherwise wait behind that writeback for tens of seconds.
cargo test --workspace --no-run --quiet
sync
# Doc tests first (nextest does not run them), so the run ends with nextest's summary line.
cargo test --workspace --doc --quiet
cargo nextest run --workspace --no-fail-fast "$@"
