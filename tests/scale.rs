//! A pool of a thousand workers over 64 hosts, each host a host agent started on this
//! machine through a command prefix: it starts, runs a batch and a stream, and `join` leaves
//! no process of any host. In a binary of its own, so that its thousand processes do not
//! disturb the measurements of other tests (the peak memory of `remote_prefix`'s).

use ppool::{ProcessPool, Remote, pool_entry};
use std::time::Instant;

ppool::test_support!();

const TAG: &str = "PPOOL_SCALE_TAG";

/// `x * x`, and the host it ran on (the value of `PPOOL_SCALE_TAG`).
#[pool_entry]
fn square_where(x: u64) -> (u64, String) {
    (x * x, std::env::var(TAG).unwrap_or_default())
}

fn env_tag(tag: &str) -> String {
    ppool_tests::env_tag(TAG, tag)
}

fn tagged(tag: &str) -> Vec<String> {
    ppool_tests::tagged_prefix(TAG, tag)
}

/// The live processes whose environment holds `PPOOL_SCALE_TAG=<tag>.<pid>`.
fn with_tag(tag: &str) -> Vec<(u32, u32)> {
    ppool_tests::processes_with_env(&env_tag(tag))
}

/// A thousand workers over 64 hosts (agents on this machine) start with two supervisor threads
/// per host, run a batch and a stream, and `join` leaves no process of any host. The times
/// are printed, not asserted.
#[test]
fn a_thousand_workers_on_sixty_four_hosts() {
    let _deadline = ppool_tests::deadline_secs(300);
    let mut builder = ProcessPool::<square_where>::builder();
    let (hosts, per) = (64, 16);
    for h in 0..hosts {
        builder = builder.remote(Remote::command(tagged(&format!("big-{h}"))).workers(per));
    }
    let started = Instant::now();
    let pool = builder.build().expect("1024 workers start");
    println!("built 64 x 16 in {:?}", started.elapsed());
    assert_eq!(pool.n_jobs(), hosts * per);
    // A host costs its reader and writer threads, whatever its number of workers.
    let threads = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .count();
    assert!(
        threads <= 2 * hosts + 16,
        "{threads} threads for {hosts} hosts of {per} workers"
    );
    // An agent forwards its workers' answers from one thread per group of workers, not one
    // per worker.
    let me = std::process::id();
    for h in 0..hosts {
        let agent = with_tag(&format!("big-{h}"))
            .into_iter()
            .find(|&(_, parent)| parent == me)
            .map(|(pid, _)| pid)
            .expect("an agent per host");
        let names = thread_names(agent);
        let forwarders = names
            .iter()
            .filter(|n| {
                n.starts_with("ppool-forward")
                    || n.strip_prefix("ppool-agent-")
                        .is_some_and(|slot| slot.bytes().all(|b| b.is_ascii_digit()))
            })
            .count();
        assert_eq!(forwarders, 1, "agent {agent}: {names:?}");
    }
    let started = Instant::now();
    let batch = pool.batch(0..20_000u64).wait().expect("a batch");
    println!("a batch of 20000 in {:?}", started.elapsed());
    assert_eq!(batch.len(), 20_000);
    assert!(
        batch
            .iter()
            .enumerate()
            .all(|(i, r)| r.0 == (i as u64) * (i as u64))
    );
    let streamed = pool.map(0..5_000u64).filter(|r| r.is_ok()).count();
    assert_eq!(streamed, 5_000);
    let started = Instant::now();
    pool.join().expect("join");
    println!("joined in {:?}", started.elapsed());
    let left: usize = (0..64).map(|h| with_tag(&format!("big-{h}")).len()).sum();
    assert_eq!(left, 0, "processes left after join");
}

/// The names of process `pid`'s threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|name| name.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}
