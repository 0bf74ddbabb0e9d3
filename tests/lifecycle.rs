//! Stopping pools with real processes: `shutdown`, drop and `join` while tasks run or wait.
//! Afterwards every task has its result, every worker is reaped, every pool thread is gone
//! and no file descriptor is left open.
//!
//! Every test here holds `SERIAL`, so that counting this process's descriptors is not
//! disturbed by another test of this binary.

use ppool::{Error, ProcessPool, pool_entry};
use ppool_tests::{TempDir, open_fds};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

ppool::test_support!();

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `<dir>/<pid>` (unless `dir` is empty), sleeps `ms`, returns the pid.
#[pool_entry]
fn hold(dir: String, ms: u64) -> u32 {
    if !dir.is_empty() {
        let _ = std::fs::write(Path::new(&dir).join(std::process::id().to_string()), b"");
    }
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// The pids the running tasks wrote into `dir`; waits until there are `n`.
fn wait_pids(dir: &TempDir, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pids: Vec<u32> = dir.files().iter().filter_map(|f| f.parse().ok()).collect();
        if pids.len() >= n {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} tasks started",
            pids.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What this process's descriptors are, for a failure message.
fn fd_list() -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let target = std::fs::read_link(e.path()).unwrap_or_default();
                    format!("{}->{}", e.file_name().to_string_lossy(), target.display())
                })
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds
}

/// The names of this process's threads that start with `prefix`.
fn threads_named(prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for task in dir.flatten() {
            if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
                let comm = comm.trim_end().to_string();
                if comm.starts_with(prefix) {
                    names.push(comm);
                }
            }
        }
    }
    names
}

/// Is there a process (even a zombie) with this pid?
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The state letter of a process, if it exists.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// After the pool is stopped: its workers are reaped (not even zombies), its threads are
/// gone, and the descriptors are back to `fds_before`.
fn assert_clean(name: &str, workers: &[u32], fds_before: usize) {
    for &pid in workers {
        assert!(
            !exists(pid),
            "worker {pid} is still there (state {:?})",
            state(pid)
        );
    }
    let mut threads = threads_named(name);
    threads.extend(threads_named("ppool-"));
    assert!(threads.is_empty(), "pool threads left: {threads:?}");
    assert_eq!(
        open_fds(),
        fds_before,
        "descriptors leaked: {:?}",
        fd_list()
    );
}

/// Starts a pool of 2 `hold` workers, keeps them busy, queues more, then stops it with `stop`.
fn stop_while_busy(name: &str, stop: impl FnOnce(ProcessPool<hold>)) {
    let _serial = serial();
    let fds_before = open_fds();
    let dir = TempDir::new(name);
    let pool = ProcessPool::<hold>::builder()
        .n_jobs(2)
        .name(name)
        .build()
        .unwrap();
    let n = pool.n_jobs();
    let (tx, rx) = mpsc::channel();
    // One long task per worker, through callbacks...
    for _ in 0..n {
        let tx = tx.clone();
        pool.call_with((dir.arg(), 30_000), move |r| {
            let _ = tx.send(r);
        });
    }
    let workers = wait_pids(&dir, n);
    // ...and more waiting behind them: callbacks, tasks and a batch.
    for _ in 0..3 {
        let tx = tx.clone();
        pool.call_with((String::new(), 0), move |r| {
            let _ = tx.send(r);
        });
    }
    drop(tx);
    let tasks: Vec<_> = (0..3).map(|_| pool.submit((String::new(), 0))).collect();
    let batch = pool.batch(vec![(String::new(), 0); 5]);

    let started = Instant::now();
    stop(pool);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "stopping took {took:?}");

    let callbacks: Vec<_> = rx.iter().collect();
    assert_eq!(callbacks.len(), n + 3, "every callback runs once");
    for r in callbacks {
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
    }
    for task in tasks {
        assert!(matches!(task.wait(), Err(Error::Closed)));
    }
    for r in batch.wait_all() {
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
    }
    drop(dir);
    assert_clean(name, &workers, fds_before);
}

#[test]
fn shutdown_while_tasks_run() {
    let _deadline = ppool_tests::deadline();
    stop_while_busy("lc-shutdown", |pool| {
        pool.shutdown();
        assert!(!pool.is_running());
        assert!(matches!(pool.call((String::new(), 0)), Err(Error::Closed)));
        let (tx, rx) = mpsc::channel();
        pool.call_with((String::new(), 0), move |r| {
            let _ = tx.send(r);
        });
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(10)),
            Ok(Err(Error::Closed))
        ));
        pool.shutdown(); // twice is fine
    });
}

#[test]
fn drop_while_tasks_run() {
    let _deadline = ppool_tests::deadline();
    stop_while_busy("lc-drop", drop);
}

#[test]
fn join_finishes_everything_then_refuses() {
    let _deadline = ppool_tests::deadline();
    let _serial = serial();
    let fds_before = open_fds();
    let dir = TempDir::new("join");
    let pool = ProcessPool::<hold>::builder()
        .n_jobs(2)
        .name("lc-join")
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..20).map(|_| pool.submit((dir.arg(), 20))).collect();
    let done = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let done = Arc::clone(&done);
        pool.call_with((String::new(), 5), move |r| {
            assert!(r.is_ok());
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    pool.join().unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 10);
    let mut workers: Vec<u32> = tasks.into_iter().map(|t| t.wait().unwrap()).collect();
    workers.sort_unstable();
    workers.dedup();
    assert!(matches!(pool.call((String::new(), 0)), Err(Error::Closed)));
    assert!(!pool.is_running());
    drop(pool);
    drop(dir);
    assert_clean("lc-join", &workers, fds_before);
}

#[test]
fn shutdown_from_a_callback_does_not_hang() {
    let _deadline = ppool_tests::deadline();
    let _serial = serial();
    let fds_before = open_fds();
    let pool = Arc::new(
        ProcessPool::<hold>::builder()
            .n_jobs(2)
            .name("lc-cbstop")
            .build()
            .unwrap(),
    );
    let workers: Vec<u32> = pool.batch(vec![(String::new(), 30); 8]).wait().unwrap();
    let (tx, rx) = mpsc::channel();
    let inner = Arc::clone(&pool);
    pool.call_with((String::new(), 0), move |r| {
        inner.shutdown();
        let _ = tx.send(r);
        // The last owner may be this callback, on one of the pool's own threads.
        drop(inner);
    });
    let r = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the callback hung");
    assert!(r.is_ok(), "{r:?}");
    assert!(matches!(pool.call((String::new(), 0)), Err(Error::Closed)));
    drop(pool);
    // The thread that ran the callback cannot join itself: let it finish.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !threads_named("lc-cbstop").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_clean("lc-cbstop", &workers, fds_before);
}

#[test]
fn recycled_workers_are_reaped() {
    let _deadline = ppool_tests::deadline();
    let _serial = serial();
    let fds_before = open_fds();
    let pool = ProcessPool::<hold>::builder()
        .n_jobs(2)
        .name("lc-recycle")
        .max_tasks_per_worker(3)
        .build()
        .unwrap();
    let mut seen: Vec<u32> = Vec::new();
    for _ in 0..10 {
        seen.extend(pool.batch(vec![(String::new(), 0); 4]).wait().unwrap());
    }
    seen.sort_unstable();
    seen.dedup();
    assert!(seen.len() > 2, "workers were not recycled: {seen:?}");
    // Retiring happens after the last result is delivered: give it a moment. Then only the
    // current workers exist; every retired one is reaped, not left a zombie.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let zombies: Vec<u32> = seen
            .iter()
            .copied()
            .filter(|&p| state(p) == Some('Z'))
            .collect();
        let alive = seen.iter().filter(|&&p| exists(p)).count();
        if zombies.is_empty() && alive <= pool.n_jobs() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "zombies {zombies:?}; {alive} of {seen:?} still exist"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(pool);
    assert_clean("lc-recycle", &seen, fds_before);
}

#[test]
fn a_pool_built_stopped_starts_on_demand() {
    let _deadline = ppool_tests::deadline();
    let _serial = serial();
    let fds_before = open_fds();
    let pool = ProcessPool::<hold>::builder()
        .n_jobs(1)
        .name("lc-later")
        .start(false)
        .build()
        .unwrap();
    assert!(!pool.is_running());
    assert!(matches!(
        pool.call((String::new(), 0)),
        Err(Error::NotStarted)
    ));
    pool.start().unwrap();
    pool.start().unwrap();
    let worker = pool.call((String::new(), 0)).unwrap();
    assert!(pool.is_running());
    drop(pool);
    assert_clean("lc-later", &[worker], fds_before);
}
