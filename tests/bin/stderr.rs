//! A helper for the defect tests: a one-worker pool whose entry writes to stderr without a
//! newline.
//!
//! - `ppool-test-stderr flood <MiB>`: the entry writes that many MiB of `x` and no newline,
//!   then returns; prints `returned after <ms> ms` on stdout when the call is back.
//! - `ppool-test-stderr progress`: the entry writes `progress 50%\r`, sleeps 3 s and returns;
//!   prints `calling` before the call and `returned` after it, on stdout.
//!
//! Started with `--ppool-worker` it is a worker.

use ppool::{ProcessPool, pool_entry};
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Scrawl {
    /// This many MiB of `x`, no newline.
    Flood(usize),
    /// `progress 50%\r`, then a nap of this many milliseconds.
    Progress(u64),
}

#[pool_entry]
fn scrawl(what: Scrawl) -> u32 {
    let mut err = std::io::stderr().lock();
    match what {
        Scrawl::Flood(mib) => {
            let block = vec![b'x'; 1 << 20];
            for _ in 0..mib {
                let _ = err.write_all(&block);
            }
        }
        Scrawl::Progress(ms) => {
            let _ = err.write_all(b"progress 50%\r");
            let _ = err.flush();
            drop(err);
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
    std::process::id()
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

ppool::main! {
    fn main() -> Result<(), ppool::Error> {
        let mut args = std::env::args().skip(1);
        let mode = args.next().unwrap_or_default();
        let pool = ProcessPool::<scrawl>::new(1)?;
        match mode.as_str() {
            "flood" => {
                let mib = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
                let started = Instant::now();
                pool.call(Scrawl::Flood(mib))?;
                say(&format!("returned after {} ms", started.elapsed().as_millis()));
            }
            "progress" => {
                say("calling");
                pool.call(Scrawl::Progress(3000))?;
                say("returned");
            }
            other => {
                eprintln!("usage: ppool-test-stderr flood <MiB> | progress (not {other:?})");
                std::process::exit(2);
            }
        }
        pool.join()
    }
}
