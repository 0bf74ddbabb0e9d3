//! What a panic, a crash and a hang become: errors for that task, while the pool goes on.
//!
//! ```text
//! cargo run --release --example faults
//! ```

use ppool::{ProcessPool, pool_entry};
use std::time::Duration;

#[pool_entry]
fn risky(what: String) -> String {
    match what.as_str() {
        "panic" => panic!("asked to panic"),
        "abort" => std::process::abort(),
        "exit" => std::process::exit(7),
        "hang" => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
        _ => format!("{what}: fine"),
    }
}

ppool::main! {
    fn main() -> Result<(), ppool::Error> {
        let pool = ProcessPool::<risky>::builder()
            .n_jobs(2)
            .task_timeout(Duration::from_millis(500))
            .build()?;
        for what in ["ok", "panic", "abort", "exit", "hang", "still ok"] {
            match pool.call(what.to_string()) {
                Ok(line) => println!("{what:>8} -> {line}"),
                Err(e) => println!("{what:>8} -> error: {e}"),
            }
        }
        println!("\n{}", pool.insights());
        pool.join()
    }
}
