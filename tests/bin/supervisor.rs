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

/// The processes whose parent is this one: the pool's workers, as it starts nothing else.
fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
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
        let workers = children();
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
