//! Reliability of the supervisor against settings at their extremes, with real worker
//! processes.
//!
//! - Every duration setting at zero, one nanosecond and `Duration::MAX`: it works (a call
//!   succeeds, `join()` returns, the exit hooks' results are there) or it is a clear
//!   `InvalidConfig`; nothing panics, nothing hangs. A duration too large to add to the
//!   current time means "no limit".
//!
//! Every wait a defect could make endless is bounded: the scenario runs on a helper thread
//! that is given up on, and every test has a deadline. No test asserts speed.

use ppool::{Error, ProcessPool, pool_entry};
use std::sync::mpsc;
use std::time::Duration;

ppool::test_support!();

/// A bound for what should take well under a second; a defect means "never".
const LIMIT: Duration = Duration::from_secs(60);

const NANO: Duration = Duration::from_nanos(1);

/// Runs `f` on a helper thread and waits at most `limit` for it; panics naming `what` if it
/// has not returned by then (the thread is given up on; it may be stuck for good).
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("within: {what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("cannot start a helper thread");
    match rx.recv_timeout(limit) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: no answer within {limit:?}; it hangs")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the helper thread panicked"),
    }
}

#[pool_entry]
fn square(x: u64) -> u64 {
    x * x
}

#[pool_entry]
fn warm_up() {}

#[pool_entry]
fn goodbye() -> u32 {
    std::process::id()
}

fn assert_invalid(built: Result<ProcessPool<square>, Error>, setting: &str) {
    match built {
        Err(Error::InvalidConfig { setting: got, .. }) if got == setting => {}
        Err(other) => panic!("{setting}: expected InvalidConfig, got {other:?}"),
        Ok(_) => panic!("{setting}: expected InvalidConfig, the pool was built"),
    }
}

/// Calls `square` a few times, each either right or failed with `Timeout` when `may_time_out`,
/// then joins.
fn calls_then_join(pool: ProcessPool<square>, what: &str, may_time_out: bool) {
    let what = what.to_string();
    within(LIMIT, &what.clone(), move || {
        for x in 0..4u64 {
            match pool.call(x) {
                Ok(y) => assert_eq!(y, x * x, "{what}"),
                Err(Error::Timeout { .. }) if may_time_out => {}
                Err(e) => panic!("{what}: call({x}) failed: {e:?}"),
            }
        }
        let all = pool.batch(0..8u64).wait_all();
        for (x, r) in (0..8u64).zip(all) {
            match r {
                Ok(y) => assert_eq!(y, x * x, "{what}"),
                Err(Error::Timeout { .. }) if may_time_out => {}
                Err(e) => panic!("{what}: batch task {x} failed: {e:?}"),
            }
        }
        pool.join()
            .unwrap_or_else(|e| panic!("{what}: join: {e:?}"));
        assert!(!pool.is_running(), "{what}");
    });
}

// ---------------------------------------------------------------------------------------------
// Every duration setting at 0, 1 ns and Duration::MAX
// ---------------------------------------------------------------------------------------------

/// Defect: `task_timeout(Duration::MAX)` was accepted, then the driver thread panicked with
/// "overflow when adding duration to instant" as it armed the watchdog, and died holding its
/// worker's slot as busy: the first task got `Closed`, the next `call` hung forever.
#[test]
fn a_task_timeout_of_duration_max_never_times_out_and_never_wedges_the_pool() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<square>::builder()
        .n_jobs(1)
        .task_timeout(Duration::MAX)
        .build()
        .expect("task_timeout(Duration::MAX) means no limit");
    within(LIMIT, "calls under task_timeout(MAX)", move || {
        assert_eq!(pool.call(3).expect("the first call"), 9);
        assert_eq!(pool.call(4).expect("the second call"), 16);
        assert_eq!(pool.batch(0..10u64).wait().expect("a batch").len(), 10);
        assert!(pool.detected_worker_error().is_none());
        pool.join().expect("join");
    });
}

#[test]
fn task_timeout_at_zero_one_nanosecond_and_max() {
    let _deadline = ppool_tests::deadline();
    let builder = || ProcessPool::<square>::builder().n_jobs(2);
    assert_invalid(
        builder().task_timeout(Duration::ZERO).build(),
        "task_timeout",
    );
    // Each task may or may not beat a deadline of one nanosecond; none hangs.
    let pool = builder().task_timeout(NANO).build().expect("1 ns");
    calls_then_join(pool, "task_timeout(1 ns)", true);
    for max in [Duration::MAX, Duration::from_secs(u64::MAX)] {
        let pool = builder().task_timeout(max).build().expect("MAX");
        calls_then_join(pool, "task_timeout(MAX)", false);
    }
}

#[test]
fn init_timeout_at_zero_one_nanosecond_and_max() {
    let _deadline = ppool_tests::deadline();
    let builder = || {
        ProcessPool::<square>::builder()
            .n_jobs(2)
            .initializer::<warm_up>(())
    };
    assert_invalid(
        builder().init_timeout(Duration::ZERO).build(),
        "init_timeout",
    );
    // An initializer rarely finishes within a nanosecond: the start then fails, saying so.
    match within(LIMIT, "build with init_timeout(1 ns)", move || {
        builder().init_timeout(NANO).build()
    }) {
        Ok(pool) => calls_then_join(pool, "init_timeout(1 ns)", false),
        Err(Error::Spawn { message, .. }) => {
            assert!(message.contains("init_timeout"), "{message}")
        }
        Err(other) => panic!("init_timeout(1 ns): {other:?}"),
    }
    let pool = within(LIMIT, "build with init_timeout(MAX)", move || {
        builder().init_timeout(Duration::MAX).build()
    })
    .expect("init_timeout(Duration::MAX) means no limit");
    calls_then_join(pool, "init_timeout(MAX)", false);
}

/// Defect (its local part): `exit_timeout(Duration::MAX)` was to panic a pool thread during
/// `join()`, which returned `Ok` with no exit hook's result.
#[test]
fn exit_timeout_at_zero_one_nanosecond_and_max() {
    let _deadline = ppool_tests::deadline();
    let builder = || {
        ProcessPool::<square>::builder()
            .n_jobs(2)
            .worker_exit::<goodbye>(())
    };
    assert_invalid(
        builder().exit_timeout(Duration::ZERO).build(),
        "exit_timeout",
    );
    for (timeout, what) in [(NANO, "1 ns"), (Duration::MAX, "MAX")] {
        let pool = builder().exit_timeout(timeout).build().expect(what);
        assert_eq!(pool.call(3).expect("a call"), 9);
        let (pool, joined) = within(
            LIMIT,
            &format!("join with exit_timeout({what})"),
            move || {
                let joined = pool.join();
                (pool, joined)
            },
        );
        joined.unwrap_or_else(|e| panic!("exit_timeout({what}): join: {e:?}"));
        let results = pool
            .worker_exit_results::<goodbye>()
            .expect("goodbye is the exit hook");
        // One nanosecond is rarely enough for a hook's answer: it may be missing, never wrong.
        let results_len = results.len();
        assert!(results_len <= 2, "exit_timeout({what}): {results:?}");
        if timeout == Duration::MAX {
            assert_eq!(results.len(), 2, "exit_timeout(MAX): every hook's result");
        }
        let mut pids: Vec<u32> = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("exit_timeout({what}): {e:?}")))
            .collect();
        assert!(pids.iter().all(|&p| p > 0), "{pids:?}");
        pids.sort_unstable();
        pids.dedup();
        assert_eq!(pids.len(), results_len, "one result per worker: {pids:?}");
    }
}

#[test]
fn host_timeout_at_zero_one_nanosecond_and_max_with_local_workers() {
    let _deadline = ppool_tests::deadline();
    let builder = || ProcessPool::<square>::builder().n_jobs(2);
    assert_invalid(
        builder().host_timeout(Duration::ZERO).build(),
        "host_timeout",
    );
    assert_invalid(builder().host_timeout(NANO).build(), "host_timeout");
    let pool = builder()
        .host_timeout(Duration::MAX)
        .build()
        .expect("host_timeout(Duration::MAX) means no limit");
    calls_then_join(pool, "host_timeout(MAX)", false);
}

/// The durations the pool's methods take: `join_timeout`, and the waits of a task and of a
/// batch.
#[test]
fn join_timeout_and_waits_at_zero_one_nanosecond_and_max() {
    let _deadline = ppool_tests::deadline();
    within(LIMIT, "waits with extreme durations", || {
        let pool = ProcessPool::<square>::new(2).expect("a pool");
        for d in [Duration::ZERO, NANO, Duration::MAX] {
            let task = pool.submit(3);
            if let Some(r) = task.wait_timeout(d) {
                assert_eq!(r.expect("a task"), 9, "{d:?}");
            } else {
                assert_eq!(task.wait().expect("a task"), 9, "{d:?}");
            }
            let batch = pool.batch(0..4u64);
            match batch.wait_timeout(d) {
                Some(r) => assert_eq!(r.expect("a batch"), [0, 1, 4, 9], "{d:?}"),
                None => assert_eq!(batch.wait().expect("a batch"), [0, 1, 4, 9], "{d:?}"),
            }
        }
        pool.join_timeout(Duration::MAX).expect("join_timeout(MAX)");
        for d in [Duration::ZERO, NANO] {
            let pool = ProcessPool::<square>::new(1).expect("a pool");
            let task = pool.submit(5);
            match pool.join_timeout(d) {
                Ok(()) | Err(Error::JoinTimeout { .. }) => {}
                Err(e) => panic!("join_timeout({d:?}): {e:?}"),
            }
            pool.join().expect("join after join_timeout");
            assert_eq!(task.wait().expect("the task submitted before"), 25);
        }
    });
}
