//! No task runs twice unasked: workers SIGKILLed from outside in the middle of chunks, with a
//! side-effect log that each task appends its index to.
//!
//! With `retries(0)`, a task that has started never starts again. When a worker dies, only
//! the task it was running fails (`WorkerDied`); tasks sent ahead that had not started run on
//! another worker; the results of tasks that had finished are kept. Over pipes, which cannot
//! tell which tasks started, every task of the dead worker's job without a result fails
//! instead: still none runs twice.

use ppool::{Error, ProcessPool, Transport, pool_entry};
use ppool_tests::TempDir;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

ppool::test_support!();

/// The file the tasks append to.
const LOG_ENV: &str = "PPOOL_EXACTLY_ONCE_LOG";

/// Appends `i` to the log (one `write` of a whole line, `O_APPEND`: lines never interleave),
/// then works for about `spin_us` microseconds.
#[pool_entry]
fn append(i: u64, spin_us: u64) -> u64 {
    let path = std::env::var(LOG_ENV).expect("the log's path");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("the log opens");
    log.write_all(format!("{i}\n").as_bytes())
        .expect("the log takes a line");
    let until = Instant::now() + Duration::from_micros(spin_us);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
    i
}

/// How many times each index is in the log.
fn runs(log: &std::path::Path) -> HashMap<u64, u32> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut runs = HashMap::new();
    for line in text.lines() {
        let i: u64 = line.parse().expect("a whole line");
        *runs.entry(i).or_insert(0) += 1;
    }
    runs
}

/// What a run saw.
struct Run {
    kills: usize,
    failed: Vec<u64>,
    twice: Vec<u64>,
    lost: Vec<u64>,
}

/// Runs `tasks` tasks on 2 workers over `transport` while another thread SIGKILLs a worker
/// every `every`, `kills` times, and checks every task's result against the log.
fn run(transport: Transport, tasks: u64, spin_us: u64, kills: usize, every: Duration) -> Run {
    let dir = TempDir::new("exactly-once");
    let log = dir.path().join("log");
    let pool = Arc::new(
        ProcessPool::<append>::builder()
            .n_jobs(2)
            .transport(transport)
            .env(LOG_ENV, &log)
            .build()
            .expect("the pool starts"),
    );
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let (pool, done) = (Arc::clone(&pool), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut killed = 0;
            let mut turn = 0;
            while killed < kills && !done.load(Ordering::Acquire) {
                std::thread::sleep(every);
                let workers = pool.insights().workers;
                turn += 1;
                let pid = workers
                    .iter()
                    .cycle()
                    .skip(turn % workers.len().max(1))
                    .take(workers.len())
                    .find_map(|w| w.pid);
                if let Some(pid) = pid {
                    // SAFETY: kill(2) on a worker's pid; it is ours, and alive or a zombie
                    // its driver has not reaped yet.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    killed += 1;
                }
            }
            killed
        })
    };
    let results = pool.batch((0..tasks).map(|i| (i, spin_us))).wait_all();
    done.store(true, Ordering::Release);
    let kills = killer.join().expect("the killer thread");
    let runs = runs(&log);
    let mut failed = Vec::new();
    let mut lost = Vec::new();
    for (i, r) in (0..tasks).zip(&results) {
        match r {
            Ok(v) => {
                assert_eq!(*v, i, "task {i} got another task's result");
                if !runs.contains_key(&i) {
                    lost.push(i);
                }
            }
            Err(Error::WorkerDied { .. }) => failed.push(i),
            Err(e) => panic!("task {i}: {e}"),
        }
    }
    assert_eq!(results.len() as u64, tasks, "every task has one result");
    let mut twice: Vec<u64> = runs
        .iter()
        .filter(|&(_, &n)| n > 1)
        .map(|(&i, _)| i)
        .collect();
    twice.sort_unstable();
    // The pool goes on.
    assert_eq!(pool.call((u64::MAX, 0)), Ok(u64::MAX));
    Run {
        kills,
        failed,
        twice,
        lost,
    }
}

#[test]
fn sigkilled_workers_on_shared_memory_fail_only_the_running_task_and_rerun_nothing() {
    let _deadline = ppool_tests::deadline();
    for round in 0..3 {
        let r = run(
            Transport::SharedMemory,
            20_000,
            20,
            6,
            Duration::from_millis(40),
        );
        println!(
            "round {round}: {} kills, {} failed, {} ran twice",
            r.kills,
            r.failed.len(),
            r.twice.len()
        );
        assert!(
            r.twice.is_empty(),
            "tasks that ran twice: {:?}; failed: {:?}",
            r.twice,
            r.failed
        );
        assert!(r.lost.is_empty(), "Ok without a run: {:?}", r.lost);
        assert!(
            r.failed.len() <= r.kills,
            "{} tasks failed for {} kills: {:?}",
            r.failed.len(),
            r.kills,
            r.failed
        );
    }
}

#[test]
fn sigkilled_workers_on_pipes_rerun_nothing_either() {
    let _deadline = ppool_tests::deadline();
    let r = run(Transport::Pipes, 20_000, 20, 6, Duration::from_millis(40));
    println!(
        "pipes: {} kills, {} failed, {} ran twice",
        r.kills,
        r.failed.len(),
        r.twice.len()
    );
    assert!(r.twice.is_empty(), "tasks that ran twice: {:?}", r.twice);
    assert!(r.lost.is_empty(), "Ok without a run: {:?}", r.lost);
}

#[test]
fn with_retries_the_killed_task_runs_again_and_every_task_succeeds() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("exactly-once-retries");
    let log = dir.path().join("log");
    let pool = ProcessPool::<append>::builder()
        .n_jobs(1)
        .retries(1)
        .env(LOG_ENV, &log)
        .build()
        .expect("the pool starts");
    // Task 1 runs for long enough to be killed while it runs, the others are quick.
    let pid = pool.insights().workers[0].pid.expect("a pid");
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) on our worker's pid.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let tasks = [(0, 0), (1, 2_000_000), (2, 0)];
    let results = pool.batch(tasks).wait_all();
    killer.join().expect("the killer");
    assert_eq!(results, [Ok(0), Ok(1), Ok(2)]);
    let runs = runs(&log);
    assert_eq!(runs.get(&0), Some(&1));
    assert_eq!(runs.get(&1), Some(&2), "the killed task ran again, once");
    assert_eq!(runs.get(&2), Some(&1));
}
