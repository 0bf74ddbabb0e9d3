//! Workers on other hosts. With `PPOOL_HOSTS="node1 node2"` (hosts that `ssh` reaches with
//! keys, sharing this program's filesystem), two workers on each; without it, the same pool
//! through a command prefix that runs the host agent on this machine, so that the example
//! runs anywhere. Inside a Slurm allocation (`salloc -N2 cargo run --example remote_hosts`),
//! on every node of it.
//!
//! `cargo run --release --example remote_hosts`

use ppool::{ProcessPool, Remote, pool_entry};
use std::time::Duration;

/// Where the task ran.
#[pool_entry]
fn where_am_i(x: u64) -> (u64, String) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    (
        x * x,
        format!("{} (pid {})", host.trim(), std::process::id()),
    )
}

ppool::main! {
    fn main() -> Result<(), ppool::Error> {
        let mut builder = ProcessPool::<where_am_i>::builder()
            .n_jobs(1)
            .host_timeout(Duration::from_secs(10));
        match std::env::var("PPOOL_HOSTS") {
            // Inside a Slurm allocation: every node of it.
            Err(_) if std::env::var_os("SLURM_JOB_ID").is_some() => {
                builder = builder.remote(Remote::slurm());
            }
            Ok(hosts) => {
                for host in hosts.split_whitespace() {
                    builder = builder.remote(Remote::ssh(host).workers(2));
                }
            }
            // Any command that runs a program with its stdio forwarded is a launcher.
            Err(_) => {
                builder = builder.remote(Remote::command(["sh", "-c", "exec \"$@\"", "sh"]).workers(2));
            }
        }
        let pool = builder.build()?;
        println!("{} workers", pool.n_jobs());
        let results = pool.batch(0..1000).wait()?;
        let mut seen: Vec<&str> = results.iter().map(|(_, at)| at.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert!(results.iter().zip(0u64..).all(|((sq, _), x)| *sq == x * x));
        println!("1000 tasks ran in {} worker processes:", seen.len());
        for at in seen {
            println!("  {at}");
        }
        println!("{}", pool.insights());
        pool.join()
    }
}
