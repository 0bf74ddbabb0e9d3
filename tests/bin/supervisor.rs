//! A helper for the fault tests: a `ppool::main!` program that starts a pool, prints its
//! worker pids on one line (`workers <pid> <pid> ...`), then sleeps until it is killed.
//!
//! `ppool-test-supervisor [n_jobs]` (default 2). Started with `--ppool-worker` it is a worker
//! (or, started by hand, says that it cannot be one).

use ppool::{ProcessPool, pool_entry};
use std::io::Write;
use std::time::Duration;

#[pool_entry]
fn pid() -> u32 {
    std::process::id()
}

ppool::main! {
    fn main() -> Result<(), ppool::Error> {
        let n_jobs: usize = std::env::args()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(2);
        let pool = ProcessPool::<pid>::new(n_jobs)?;
        // Every worker answers, so all of them are up.
        let answered = pool.batch(vec![(); 4 * pool.n_jobs()]).wait()?;
        assert!(answered.iter().all(|&p| p != std::process::id()));
        let workers: Vec<u32> = ppool_tests::children().into_iter().map(|(pid, _)| pid).collect();
        let line: Vec<String> = workers.iter().map(u32::to_string).collect();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "workers {}", line.join(" "));
        let _ = out.flush();
        drop(out);
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}
