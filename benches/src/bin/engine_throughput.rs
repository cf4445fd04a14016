//! A plain timed loop (std::time::Instant) over the same fixture as the criterion benchmarks,
//! to cross-check them: prints commands/s per workload, for a number of runs.
//!
//! `cargo run --release -p paycore-benches --bin engine_throughput -- \
//!     [--wallets 1000000] [--live-keys 8000000] [--count 5000000] [--runs 3] [--only transfers|deposits|holds]
//!     [--without-events]`
//!
//! `--without-events` applies with `Effects::without_events()`, as replay and the snapshot
//! replica do (the live writer keeps events).
//!
//! `--live-keys` sets the command clock step (24 h / live keys) and so the steady-state size of
//! the idempotency table; the table is filled to it untimed before the first run.

use std::time::Duration;

use paycore_benches::{Fixture, Mix, Picker, peak_rss_bytes, rss_bytes, timed};

/// Which workloads to run (`--only`, e.g. to profile one under callgrind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    All,
    Transfers,
    Deposits,
    Holds,
}

struct Args {
    wallets: usize,
    live_keys: u64,
    count: u64,
    runs: u32,
    only: Only,
    open_holds: usize,
    without_events: bool,
}

const USAGE: &str =
    "engine_throughput [--wallets 1000000] [--live-keys 8000000] [--count 5000000] \
[--runs 3] [--only transfers|deposits|holds] [--open-holds 100000] [--without-events]

One thread applies transfers (uniform and Zipf 1.0), deposits and hold + capture pairs to an
engine of --wallets wallets whose idempotency table is kept at --live-keys entries, and prints
commands/s per workload for each of --runs runs of --count commands.";

/// Exits with the usage and status 2 (a bad flag is the caller's mistake, not a crash).
fn usage_error(message: &str) -> ! {
    eprintln!("engine_throughput: {message}\n\n{USAGE}");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        wallets: 1_000_000,
        live_keys: 8_000_000,
        count: 5_000_000,
        runs: 3,
        only: Only::All,
        open_holds: 100_000,
        without_events: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage_error(&format!("{flag} needs a value")))
                .replace('_', "")
        };
        match flag.as_str() {
            "--wallets" => {
                args.wallets = value()
                    .parse()
                    .unwrap_or_else(|_| usage_error("--wallets takes a number"))
            }
            "--live-keys" => {
                args.live_keys = value()
                    .parse()
                    .unwrap_or_else(|_| usage_error("--live-keys takes a number"))
            }
            "--count" => {
                args.count = value()
                    .parse()
                    .unwrap_or_else(|_| usage_error("--count takes a number"))
            }
            "--runs" => {
                args.runs = value()
                    .parse()
                    .unwrap_or_else(|_| usage_error("--runs takes a number"))
            }
            "--without-events" => {
                args.without_events = true;
                continue;
            }
            "--open-holds" => {
                args.open_holds = value()
                    .parse()
                    .unwrap_or_else(|_| usage_error("--open-holds takes a number"))
            }
            "--only" => {
                args.only = match value().as_str() {
                    "transfers" => Only::Transfers,
                    "deposits" => Only::Deposits,
                    "holds" => Only::Holds,
                    other => usage_error(&format!("--only transfers|deposits|holds, not {other}")),
                }
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => usage_error(&format!("unknown argument {other}")),
        }
    }
    args
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn main() {
    let args = parse_args();
    let start = std::time::Instant::now();
    let mut fixture = Fixture::new(args.wallets, args.live_keys);
    let opened = start.elapsed();
    if args.without_events {
        fixture.effects = paycore_engine::Effects::without_events();
    }
    let mut picker = Picker::new(args.wallets, 0x5eed);
    fixture.warm_up_idempotency(&mut picker);
    let (transfers, deposits, holds) = match args.only {
        Only::All => (true, true, true),
        Only::Transfers => (true, false, false),
        Only::Deposits => (false, true, false),
        Only::Holds => (false, false, true),
    };
    if holds {
        fixture.open_holds(&mut picker, args.open_holds);
    }
    println!(
        "setup: {} wallets opened and funded in {:.2?} ({:.0} commands/s incl. key generation); \
         {} idempotency entries, {} open holds after warm-up at {:.2?}; RSS {} MiB",
        args.wallets,
        opened,
        rate(2 * args.wallets as u64 + 1, opened),
        fixture.engine.idempotency_entries(),
        fixture.engine.open_hold_count(),
        start.elapsed(),
        rss_bytes() >> 20
    );
    for run in 1..=args.runs {
        let mut line = format!("run {run}:");
        let mixes: &[Mix] = if transfers {
            &[Mix::Uniform, Mix::Zipf]
        } else {
            &[]
        };
        for &mix in mixes {
            let t = timed(&mut fixture, args.count, 1, |f, n| {
                f.transfer_chunk(&mut picker, mix, n)
            });
            line += &format!(
                " transfer/{} {:.3} M/s;",
                mix.name(),
                rate(args.count, t) / 1e6
            );
        }
        if deposits {
            let t = timed(&mut fixture, args.count, 1, |f, n| {
                f.deposit_chunk(&mut picker, n)
            });
            line += &format!(" deposit {:.3} M/s;", rate(args.count, t) / 1e6);
        }
        if holds {
            // Holds placed long ago (in command time) may have expired meanwhile.
            fixture.refresh_holds(&mut picker, args.open_holds);
            let pairs = args.count / 2;
            let t = timed(&mut fixture, pairs, 2, |f, n| {
                f.hold_capture_chunk(&mut picker, n)
            });
            line += &format!(
                " hold+capture {:.3} M pairs/s ({:.3} M commands/s);",
                rate(pairs, t) / 1e6,
                rate(2 * pairs, t) / 1e6
            );
        }
        println!("{line}");
    }
    println!(
        "done: {} commands applied, {} rejected {:?}; {} idempotency entries ({} evicted early); \
         peak RSS {} MiB",
        fixture.applied,
        fixture.rejected(),
        fixture.rejections,
        fixture.engine.idempotency_entries(),
        fixture.engine.idempotency_evicted_early(),
        peak_rss_bytes() >> 20
    );
}
