//! Steering tasks: cancelling one, and taking results as they complete, with real workers.

use ppool::{Error, ProcessPool, pool_entry};
use ppool_tests::TempDir;
use std::path::Path;
use std::time::{Duration, Instant};

ppool::test_support!();

/// Creates `<dir>/<name>` (so the test knows the task ran), sleeps `ms`, returns `ms`.
#[pool_entry]
fn mark_and_nap(dir: String, name: String, ms: u64) -> u64 {
    let _ = std::fs::write(Path::new(&dir).join(name), b"ran");
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn wait_for(path: &Path) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_cancelled_queued_task_never_runs() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("cancel-queued");
    let pool = ProcessPool::<mark_and_nap>::new(1).unwrap();
    let first = pool.submit((dir.arg(), "first".into(), 300));
    let second = pool.submit((dir.arg(), "second".into(), 0));
    assert!(second.cancel());
    assert!(!second.cancel(), "a second cancel changes nothing");
    assert!(matches!(second.wait(), Err(Error::Cancelled)));
    assert_eq!(
        first.wait().unwrap(),
        300,
        "the task before it is unaffected"
    );
    pool.join().unwrap();
    assert!(
        !dir.path().join("second").exists(),
        "the cancelled task ran"
    );
}

#[test]
fn a_cancelled_running_task_ends_at_once_and_the_pool_goes_on() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("cancel-running");
    let pool = ProcessPool::<mark_and_nap>::new(1).unwrap();
    let task = pool.submit((dir.arg(), "long".into(), 60_000));
    wait_for(&dir.path().join("long"));
    let started = Instant::now();
    assert!(task.cancel());
    assert!(matches!(task.wait(), Err(Error::Cancelled)));
    let after = pool.call((dir.arg(), "after".into(), 1));
    assert!(matches!(after, Ok(1)), "{after:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the cancelled task's worker was not replaced in time"
    );
    // Killed on purpose: replaced, but not a worker failure.
    let insights = pool.insights();
    assert_eq!(insights.workers[0].restarts, 1, "{insights}");
    assert_eq!(insights.workers[0].failures, 0, "{insights}");
    assert_eq!(pool.detected_worker_error(), None);
}

#[test]
fn cancel_after_the_task_finished_is_false_and_keeps_the_result() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("cancel-late");
    let pool = ProcessPool::<mark_and_nap>::new(1).unwrap();
    let task = pool.submit((dir.arg(), "quick".into(), 0));
    let started = Instant::now();
    while !task.is_done() {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!task.cancel());
    assert_eq!(task.wait().unwrap(), 0);
}

#[test]
fn as_completed_yields_every_task_once_in_finishing_order() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("as-completed");
    let pool = ProcessPool::<mark_and_nap>::new(2).unwrap();
    let naps = [2_000u64, 50, 300, 10];
    let tasks: Vec<ppool::Task<u64>> = naps
        .iter()
        .enumerate()
        .map(|(k, &ms)| pool.submit((dir.arg(), format!("t{k}"), ms)))
        .collect();
    let got: Vec<(usize, u64)> = ppool::as_completed(tasks)
        .map(|(k, r)| (k, r.unwrap()))
        .collect();
    let mut indices: Vec<usize> = got.iter().map(|(k, _)| *k).collect();
    for (k, ms) in &got {
        assert_eq!(*ms, naps[*k], "task {k} got another task's result");
    }
    assert_eq!(
        indices.last(),
        Some(&0),
        "the 2 s task finishes last: {got:?}"
    );
    indices.sort_unstable();
    assert_eq!(indices, [0, 1, 2, 3]);
}

#[pool_entry]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[pool_entry]
fn boom(why: String) -> u32 {
    if why == "abort" {
        std::process::abort();
    }
    panic!("{why}")
}

#[test]
fn one_pool_runs_several_entries_on_the_same_workers() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("entries");
    let pool = ProcessPool::<mark_and_nap>::new(2).unwrap();
    assert_eq!(pool.entry::<add>().call((2, 3)).unwrap(), 5);
    assert_eq!(
        pool.entry::<add>().batch([(1, 2), (3, 4)]).wait().unwrap(),
        [3, 7]
    );
    let streamed: Vec<i64> = pool
        .entry::<add>()
        .map((0..100).map(|i| (i, i)))
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(streamed, (0..100).map(|i| 2 * i).collect::<Vec<_>>());
    assert_eq!(pool.entry::<add>().submit((5, 5)).wait().unwrap(), 10);
    let (tx, rx) = std::sync::mpsc::channel();
    pool.entry::<add>().call_with((7, 8), move |r| {
        let _ = tx.send(r);
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap(),
        15
    );
    // The pool's own entry still works in between, on the same workers.
    assert_eq!(pool.call((dir.arg(), "own".into(), 1)).unwrap(), 1);
    assert_eq!(
        pool.entry::<mark_and_nap>()
            .call((dir.arg(), "self".into(), 2))
            .unwrap(),
        2
    );
}

#[test]
fn failures_in_another_entry_name_that_entry() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<mark_and_nap>::new(1).unwrap();
    match pool.entry::<boom>().call("oops".into()) {
        Err(Error::Panicked { entry, message, .. }) => {
            assert!(entry.ends_with("boom"), "{entry}");
            assert_eq!(message, "oops");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    match pool.entry::<boom>().call("abort".into()) {
        Err(Error::WorkerDied { entry, .. }) => assert!(entry.ends_with("boom"), "{entry}"),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(
        pool.entry::<add>().call((1, 1)).unwrap(),
        2,
        "the pool goes on"
    );
}

#[test]
fn a_batch_can_be_waited_for_with_a_timeout() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("batch-timeout");
    let pool = ProcessPool::<mark_and_nap>::new(2).unwrap();
    let batch = pool.batch([
        (dir.arg(), "a".to_string(), 1_500),
        (dir.arg(), "b".to_string(), 0),
    ]);
    assert!(
        batch.wait_timeout(Duration::from_millis(50)).is_none(),
        "a 1.5 s task cannot be done in 50 ms"
    );
    let got = batch.wait_timeout(Duration::from_secs(60));
    assert_eq!(got.map(|r| r.unwrap()), Some(vec![1_500, 0]));
    // Handed out once: after that, every way of waiting says so (never an empty `Ok`).
    assert_eq!(
        batch.wait_timeout(Duration::ZERO),
        Some(Err(Error::AlreadyTaken))
    );
    assert_eq!(
        batch.wait_all(),
        [Err(Error::AlreadyTaken), Err(Error::AlreadyTaken)]
    );
}

#[test]
fn insights_show_each_worker_state_pid_and_memory() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("insights");
    let pool = ProcessPool::<mark_and_nap>::new(2).unwrap();
    let running = pool.submit((dir.arg(), "busy".into(), 1_000));
    wait_for(&dir.path().join("busy"));
    let queued: Vec<_> = (0..3)
        .map(|k| pool.submit((dir.arg(), format!("q{k}"), 300)))
        .collect();
    let insights = pool.insights();
    assert_eq!(insights.workers.len(), 2);
    for w in &insights.workers {
        let pid = w.pid.expect("a running worker has a pid");
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {} pid {pid}",
            w.index
        );
        assert!(w.resident_bytes.is_some_and(|b| b > 0), "{w:?}");
    }
    assert!(
        insights
            .workers
            .iter()
            .any(|w| w.state == ppool::WorkerState::Busy),
        "{insights}"
    );
    assert!(insights.in_flight_tasks >= 1, "{insights}");
    assert!(insights.to_string().contains("busy"), "{insights}");
    running.wait().unwrap();
    for t in queued {
        t.wait().unwrap();
    }
    let after = pool.insights();
    assert_eq!(after.queued_jobs, 0);
    assert_eq!(after.in_flight_tasks, 0, "{after}");
}

/// A result is handed out once: waiting again says so with its own error, not `Closed`.
#[test]
fn a_result_already_handed_out_is_already_taken() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<add>::new(1).unwrap();
    let task = pool.submit((2, 3));
    assert_eq!(task.wait_timeout(Duration::from_secs(30)), Some(Ok(5)));
    assert_eq!(
        task.wait_timeout(Duration::from_millis(10)),
        Some(Err(Error::AlreadyTaken))
    );
    assert_eq!(task.wait(), Err(Error::AlreadyTaken));
    let again = pool.submit((1, 1));
    assert!(again.wait_timeout(Duration::from_secs(30)).is_some());
    let got: Vec<_> = ppool::as_completed(vec![again]).collect();
    assert_eq!(got, [(0, Err(Error::AlreadyTaken))]);
}

/// `join_timeout`: done in time is `Ok` with every result in; not done is `JoinTimeout` about
/// when asked, with the pool still finishing (no task lost, no new one taken), and `join`
/// then waits for the rest.
#[test]
fn join_timeout_returns_in_time_and_loses_nothing() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("join-timeout");
    let pool = ProcessPool::<mark_and_nap>::new(1).unwrap();
    let quick = pool.submit((dir.arg(), "quick".into(), 0));
    assert_eq!(quick.wait(), Ok(0));
    let slow = pool.submit((dir.arg(), "slow".into(), 1500));
    let queued = pool.submit((dir.arg(), "queued".into(), 0));
    wait_for(&dir.path().join("slow"));
    let started = Instant::now();
    let e = pool.join_timeout(Duration::from_millis(200)).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, Error::JoinTimeout { .. }), "{e}");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(
        matches!(pool.call((dir.arg(), "late".into(), 0)), Err(Error::Closed)),
        "a joining pool takes no new task"
    );
    assert_eq!(pool.join_timeout(Duration::from_secs(30)), Ok(()));
    assert_eq!(slow.wait(), Ok(1500));
    assert_eq!(queued.wait(), Ok(0));
    assert!(!dir.path().join("late").exists());
    assert!(!pool.is_running());

    let idle = ProcessPool::<mark_and_nap>::new(1).unwrap();
    assert_eq!(
        idle.join_timeout(Duration::ZERO).or_else(|_| idle.join()),
        Ok(())
    );
}

/// `pool.batch(..).await`, on a runtime with one thread: the batch wakes it.
#[test]
fn a_batch_is_a_future() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("batch-future");
    let pool = ProcessPool::<mark_and_nap>::new(2).unwrap();
    let batch = pool.batch((0..6).map(|i| (dir.arg(), format!("t{i}"), 20 * i)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let got = runtime.block_on(async { batch.await });
    assert_eq!(got, Ok(vec![0, 20, 40, 60, 80, 100]));
}

/// Writes `<dir>/<n>.start`, sleeps `ms`, writes `<dir>/<n>.done`.
#[pool_entry]
fn start_nap_done(dir: String, n: u32, ms: u64) -> u32 {
    let dir = Path::new(&dir);
    let _ = std::fs::write(dir.join(format!("{n}.start")), b"");
    std::thread::sleep(Duration::from_millis(ms));
    let _ = std::fs::write(dir.join(format!("{n}.done")), b"");
    n
}

/// A cancel that lands just as a driver picks the task up (after it looked at the flag, before
/// the watchdog knew the task ran) still stops it: a task whose `cancel` said `true` never
/// finishes. Cancels are spread over the first ~200 µs after `submit`, where that window is.
#[test]
fn a_task_cancelled_as_it_is_picked_up_never_finishes() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("cancel-race");
    let pool = ProcessPool::<start_nap_done>::new(2).unwrap();
    let mut cancelled = Vec::new();
    for n in 0..300u32 {
        let task = pool.submit((dir.arg(), n, 60));
        let spin = Instant::now();
        let wait = Duration::from_micros(u64::from(n * 37 % 200));
        while spin.elapsed() < wait {
            std::hint::spin_loop();
        }
        if task.cancel() {
            assert_eq!(task.wait(), Err(Error::Cancelled), "task {n}");
            cancelled.push(n);
        }
    }
    // Anything still running would finish within its 60 ms.
    std::thread::sleep(Duration::from_millis(300));
    let finished: Vec<u32> = cancelled
        .iter()
        .copied()
        .filter(|n| dir.path().join(format!("{n}.done")).exists())
        .collect();
    assert!(cancelled.len() > 250, "{} cancelled", cancelled.len());
    assert!(
        finished.is_empty(),
        "cancelled yet ran to the end: {finished:?}"
    );
    assert_eq!(
        pool.call((dir.arg(), 9999, 0)),
        Ok(9999),
        "the pool goes on"
    );
}

/// `join_timeout` does not wait past its timeout for a `call_with` callback that runs long:
/// it says so, and a later `join` waits for it.
#[test]
fn join_timeout_does_not_wait_for_a_slow_callback() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("join-timeout-callback");
    let pool = ProcessPool::<mark_and_nap>::new(1).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    pool.call_with((dir.arg(), "cb".into(), 0), move |r| {
        std::thread::sleep(Duration::from_millis(1500));
        let _ = tx.send(r);
    });
    wait_for(&dir.path().join("cb"));
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    let e = pool.join_timeout(Duration::from_millis(200)).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            e,
            Error::JoinTimeout {
                callbacks: true,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("callbacks did not finish"), "{e}");
    assert_eq!(pool.join(), Ok(()));
    assert_eq!(
        rx.try_recv().ok(),
        Some(Ok(0)),
        "join waited for the callback"
    );
}
