//! The three ways to use a pool: callbacks, batches, and blocking calls from many threads,
//! each timed against the same work in a plain loop.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! Each worker gets 500 tasks, about a quarter of a second of CPU work in release, so that
//! the speed-up shows what the pool does rather than start-up and scheduling noise: close to
//! n× on n idle cores. Every result is checked against a sieve.

use ppool::{ProcessPool, pool_entry};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A CPU-bound task: the number of primes below `n`, by trial division (about half a
/// millisecond for the `n` below, in release).
#[pool_entry]
fn count_primes(n: u64) -> u64 {
    (2..n)
        .filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0))
        .count() as u64
}

/// Tasks per worker, up to `MAX_WORKERS_FED` workers: past that the work stops growing, so
/// the plain loop stays a few seconds long. A build without optimizations runs a tenth of
/// them, as each takes about ten times as long.
const TASKS_PER_WORKER: usize = if cfg!(debug_assertions) { 50 } else { 500 };
const MAX_WORKERS_FED: usize = 16;
/// Task `i` counts the primes below `FIRST + i`.
const FIRST: u64 = 20_000;
/// How many blocking calls the round trip is the median of.
const ROUND_TRIPS: usize = 1000;

ppool::main! {
    fn main() -> Result<(), ppool::Error> {
        // Start-up is timed on its own: `build` returns once every worker is ready.
        let started = Instant::now();
        let pool = ProcessPool::<count_primes>::builder().n_jobs(-1).name("quickstart").build()?;
        println!(
            "{:<21}{} worker processes, started in {:.1?}",
            format!("pool `{}`:", pool.name()),
            pool.n_jobs(),
            started.elapsed()
        );

        let n_tasks = TASKS_PER_WORKER * pool.n_jobs().min(MAX_WORKERS_FED);
        let tasks: Vec<u64> = (FIRST..).take(n_tasks).collect();
        let expected = primes_below_each(&tasks);
        // For the results that come back in any order: each with its task's index.
        let numbered: Vec<(usize, u64)> = expected.iter().copied().enumerate().collect();

        // The baseline: the same tasks in a plain loop in this process (the idle workers sleep).
        let started = Instant::now();
        let counts: Vec<u64> = tasks.iter().map(|&n| count_primes(n)).collect();
        let in_loop = started.elapsed();
        assert_eq!(counts, expected, "the plain loop counts the primes right");
        let total: u64 = expected.iter().sum();
        println!("{:<21}{n_tasks} tasks in {in_loop:.1?}, {total} primes in all", "a plain loop:");
        let report = |way: &str, took: Duration| {
            println!(
                "{way:<21}{n_tasks} tasks in {took:.1?}, {:.2}x as fast as the plain loop",
                in_loop.as_secs_f64() / took.as_secs_f64().max(1e-9),
            );
        };

        // 1. Callback-driven: each result is handed to a closure on a pool thread.
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        for (i, &n) in tasks.iter().enumerate() {
            let tx = tx.clone();
            pool.call_with(n, move |result| {
                let _ = tx.send((i, result));
            });
        }
        drop(tx);
        let mut answered = rx
            .iter()
            .take(n_tasks)
            .map(|(i, result)| Ok((i, result?)))
            .collect::<Result<Vec<_>, ppool::Error>>()?;
        report("callbacks:", started.elapsed());
        answered.sort_unstable();
        assert_eq!(answered, numbered, "the callbacks got every count, and right");

        // 2. Batch-driven: submit everything, wait for all results in input order.
        let started = Instant::now();
        let counts = pool.batch(tasks.iter().copied()).wait()?;
        report("batch:", started.elapsed());
        assert_eq!(counts, expected, "the batch got every count right");

        // 3. Blocking calls from several threads at once: the pool is Send + Sync.
        let threads = pool.n_jobs() * 2;
        let started = Instant::now();
        let mut answered: Vec<(usize, u64)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (pool, tasks) = (&pool, &tasks);
                    s.spawn(move || {
                        (t..n_tasks)
                            .step_by(threads)
                            .map(|i| Ok((i, pool.call(tasks[i])?)))
                            .collect::<Result<Vec<_>, ppool::Error>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect::<Result<Vec<_>, _>>()
        })?
        .into_iter()
        .flatten()
        .collect();
        report(&format!("calls, {threads} threads:"), started.elapsed());
        answered.sort_unstable();
        assert_eq!(answered, numbered, "the calls got every count, and right");

        // For scale: the round trip of one blocking call, the median of many.
        let mut round_trips = Vec::with_capacity(ROUND_TRIPS);
        for _ in 0..ROUND_TRIPS {
            let started = Instant::now();
            let count = pool.call(3)?;
            round_trips.push(started.elapsed());
            assert_eq!(count, 1, "one prime below 3");
        }
        round_trips.sort_unstable();
        println!(
            "{:<21}{:.1?} (the median of {ROUND_TRIPS} calls with next to no work)",
            "a call's round trip:",
            round_trips[ROUND_TRIPS / 2]
        );

        pool.join()
    }
}

/// The number of primes below each of `ns`, from a sieve of Eratosthenes: the answers every
/// way of running the tasks is checked against.
fn primes_below_each(ns: &[u64]) -> Vec<u64> {
    let limit = ns.iter().copied().max().unwrap_or(0) as usize;
    let mut composite = vec![false; limit];
    let mut below = Vec::with_capacity(limit + 1); // below[k]: the primes below k
    let mut found = 0;
    for k in 0..=limit {
        below.push(found);
        if k >= 2 && k < limit && !composite[k] {
            found += 1;
            for multiple in (k * k..limit).step_by(k) {
                composite[multiple] = true;
            }
        }
    }
    ns.iter().map(|&n| below[n as usize]).collect()
}
