//! The three ways to use a pool: callbacks, batches, and blocking calls from many threads.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use ppool::{ProcessPool, pool_entry};
use std::sync::mpsc;
use std::time::Instant;

/// A small CPU-bound task: the number of primes below `n`.
#[pool_entry]
fn count_primes(n: u64) -> u64 {
    (2..n)
        .filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0))
        .count() as u64
}

ppool::main! {
    fn main() -> Result<(), ppool::Error> {
        let pool = ProcessPool::<count_primes>::builder().n_jobs(-1).name("quickstart").build()?;
        println!("pool `{}` with {} worker processes", pool.name(), pool.n_jobs());

        // 1. Callback-driven: 1000 tasks, each result handed to a closure on a pool thread.
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        for i in 0..1000u64 {
            let tx = tx.clone();
            pool.call_with(1000 + i, move |result| {
                let _ = tx.send(result);
            });
        }
        drop(tx);
        let mut total = 0;
        for result in rx.iter().take(1000) {
            total += result?;
        }
        println!("callbacks: 1000 tasks, {total} primes in all, {:?}", started.elapsed());

        // 2. Batch-driven: submit everything, wait for all results in input order.
        let started = Instant::now();
        let counts = pool.batch((0..1000u64).map(|i| 1000 + i)).wait()?;
        let total: u64 = counts.iter().sum();
        let in_pool = started.elapsed();
        println!("batch:     1000 tasks, {total} primes in all, {in_pool:?}");

        // The same work in a plain loop in this process, to see what the pool bought.
        let started = Instant::now();
        let serial: u64 = (0..1000u64).map(|i| count_primes(1000 + i)).sum();
        let in_loop = started.elapsed();
        assert_eq!(serial, total, "the pool and the loop count the same primes");
        println!(
            "a plain loop: the same 1000 tasks in {in_loop:?}: the pool was {:.1}x faster on {} workers",
            in_loop.as_secs_f64() / in_pool.as_secs_f64().max(1e-9),
            pool.n_jobs()
        );

        // 3. Blocking calls from several threads at once: the pool is Send + Sync.
        let started = Instant::now();
        let threads = pool.n_jobs() * 2;
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let pool = &pool;
                    s.spawn(move || {
                        (0..1000u64)
                            .filter(|i| (*i as usize) % threads == t)
                            .map(|i| pool.call(1000 + i))
                            .sum::<Result<u64, ppool::Error>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .sum::<Result<u64, _>>()
        })?;
        println!("calls:     1000 tasks from {threads} threads, {total} primes in all, {:?}", started.elapsed());

        // One round trip, for scale.
        let started = Instant::now();
        let rounds = 2000;
        for _ in 0..rounds {
            pool.call(2)?;
        }
        println!("one call round trip: {:?}", started.elapsed() / rounds);

        pool.join()
    }
}
