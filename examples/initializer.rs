//! Per-worker set-up with `initializer`, a worker-exit hook, and `worker_index`.
//!
//! ```text
//! cargo run --release --example initializer
//! ```

use ppool::{ProcessPool, pool_entry};
use std::sync::Mutex;

/// Per-worker state, set up once by the initializer.
static GREETING: Mutex<String> = Mutex::new(String::new());
/// How many tasks this worker served, reported by the exit hook.
static SERVED: Mutex<u64> = Mutex::new(0);

#[pool_entry]
fn set_up(greeting: String) {
    if let Ok(mut g) = GREETING.lock() {
        *g = greeting;
    }
}

#[pool_entry]
fn greet(name: String) -> String {
    if let Ok(mut n) = SERVED.lock() {
        *n += 1;
    }
    let greeting = GREETING.lock().map(|g| g.clone()).unwrap_or_default();
    format!(
        "{greeting}, {name} (from worker {})",
        ppool::worker_index().unwrap_or(0)
    )
}

#[pool_entry]
fn report() -> (usize, u64) {
    (
        ppool::worker_index().unwrap_or(0),
        SERVED.lock().map(|n| *n).unwrap_or(0),
    )
}

ppool::main! {
    fn main() -> Result<(), ppool::Error> {
        let pool = ProcessPool::<greet>::builder()
            .n_jobs(2)
            .initializer::<set_up>("Hello".to_string())
            .worker_exit::<report>(())
            .build()?;
        for line in pool.batch(["ann", "bob", "cy", "dee"].map(String::from)).wait()? {
            println!("{line}");
        }
        pool.join()?;
        for result in pool.worker_exit_results::<report>()? {
            let (worker, served) = result?;
            println!("worker {worker} served {served} tasks");
        }
        Ok(())
    }
}
