//! Criterion benchmarks of one engine thread over 1 M funded wallets.
//!
//! `cargo bench -p paycore-benches --bench engine`
//!
//! One [`Fixture`] (engine, 1 M wallets, sequencer state) is built once and shared by every
//! benchmark; each `iter_custom` call generates its commands (fresh idempotency keys, random
//! wallets) untimed in chunks of 4 Ki and times only their application. The command clock
//! advances `24 h / LIVE_KEYS` per command, so the idempotency table sits at its steady state of
//! ~8 M live keys (one insert and one eviction per command) and never reaches its capacity.
//!
//! - `transfer/uniform`, `transfer/zipf_1.0`: one iteration = one transfer between two different
//!   wallets drawn uniformly / from Zipf(1.0) (sender and receiver drawn independently).
//! - `deposit`: one iteration = one deposit to a uniformly drawn wallet.
//! - `hold_capture_pair`: one iteration = capture of the oldest of 100 k open holds (in full, to
//!   a random wallet) + a new hold (7-day expiry) on a random wallet. Its throughput counts 2
//!   elements per iteration, so criterion's elem/s is commands/s and its time is per pair.

use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use paycore_benches::{Fixture, Mix, Picker, timed};

const WALLETS: usize = 1_000_000;
/// Idempotency keys inside the 24 h window in steady state (the capacity is 16 Mi).
const LIVE_KEYS: u64 = 8_000_000;
const OPEN_HOLDS: usize = 100_000;

fn engine(c: &mut Criterion) {
    let setup = std::time::Instant::now();
    let mut fixture = Fixture::new(WALLETS, LIVE_KEYS);
    let mut picker = Picker::new(WALLETS, 0x5eed);
    fixture.warm_up_idempotency(&mut picker);
    fixture.open_holds(&mut picker, OPEN_HOLDS);
    eprintln!(
        "setup: {WALLETS} wallets, {} idempotency entries, {OPEN_HOLDS} open holds in {:.1?}",
        fixture.engine.idempotency_entries(),
        setup.elapsed()
    );
    assert_eq!(
        fixture.rejected(),
        0,
        "setup rejections: {:?}",
        fixture.rejections
    );

    let mut group = c.benchmark_group("engine_1M_wallets");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));

    group.throughput(Throughput::Elements(1));
    for mix in [Mix::Uniform, Mix::Zipf] {
        group.bench_function(format!("transfer/{}", mix.name()), |b| {
            b.iter_custom(|iters| {
                timed(&mut fixture, iters, 1, |f, n| {
                    f.transfer_chunk(&mut picker, mix, n)
                })
            })
        });
    }
    group.bench_function("deposit", |b| {
        b.iter_custom(|iters| {
            timed(&mut fixture, iters, 1, |f, n| {
                f.deposit_chunk(&mut picker, n)
            })
        })
    });
    group.throughput(Throughput::Elements(2));
    fixture.refresh_holds(&mut picker, OPEN_HOLDS);
    group.bench_function("hold_capture_pair", |b| {
        b.iter_custom(|iters| {
            timed(&mut fixture, iters, 2, |f, n| {
                f.hold_capture_chunk(&mut picker, n)
            })
        })
    });
    group.finish();

    eprintln!(
        "after benchmarks: {} commands applied, {} rejected {:?}; {} idempotency entries \
         (capacity {}, {} evicted early), {} open holds",
        fixture.applied,
        fixture.rejected(),
        fixture.rejections,
        fixture.engine.idempotency_entries(),
        fixture.engine.config().idempotency_entries_max,
        fixture.engine.idempotency_evicted_early(),
        fixture.engine.open_hold_count(),
    );
    assert_eq!(
        fixture.rejected(),
        0,
        "benchmarks must measure applied commands"
    );
    assert_eq!(
        fixture.engine.idempotency_evicted_early(),
        0,
        "the idempotency table must not reach its capacity"
    );
}

criterion_group!(benches, engine);
criterion_main!(benches);
