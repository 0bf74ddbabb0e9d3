//! Reliability of the supervisor against settings at their extremes and against entries that
//! break their worker's channel, with real worker processes.
//!
//! - Every duration setting at zero, one nanosecond and `Duration::MAX`: it works (a call
//!   succeeds, `join()` returns, the exit hooks' results are there) or it is a clear
//!   `InvalidConfig`; nothing panics, nothing hangs. A duration too large to add to the
//!   current time means "no limit".
//! - `shutdown()` stops now, even while a worker runs its exit hook or a replacement its
//!   initializer, without a limit on either.
//! - An entry that scribbles over its worker's progress word (the shared-memory transport's
//!   account of which task runs) never gets the next, innocent task blamed for its worker's
//!   death: a job the worker never took out of its channel never started.
//!
//! Every wait a defect could make endless is bounded: the scenario runs on a helper thread
//! that is given up on, and every test has a deadline. No test asserts speed.

use ppool::{Error, ExitCause, ProcessPool, Transport, pool_entry};
use ppool_tests::TempDir;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

ppool::test_support!();

use ppool_tests::within;

/// A bound for what should take well under a second; a defect means "never".
const LIMIT: Duration = Duration::from_secs(60);

const NANO: Duration = Duration::from_nanos(1);

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

/// Defect: `exit_timeout(Duration::MAX)` was reported to panic a pool thread during `join()`,
/// which then returned `Ok` with no exit hook's result. Every hook's result must be there, the
/// wait for it unlimited (the links are now handed "no limit", never a huge duration).
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
        let workers = pool.n_jobs();
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
        assert!(results_len <= workers, "exit_timeout({what}): {results:?}");
        if timeout == Duration::MAX {
            assert_eq!(
                results_len, workers,
                "exit_timeout(MAX): every hook's result"
            );
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

// ---------------------------------------------------------------------------------------------
// shutdown() stops now, whatever a worker's hook is doing
// ---------------------------------------------------------------------------------------------

/// An exit hook that says it runs (a file `lingering-<pid>` in `dir`), then runs for an hour.
#[pool_entry]
fn linger(dir: String) -> u32 {
    let _ = std::fs::write(format!("{dir}/lingering-{}", std::process::id()), b"");
    std::thread::sleep(Duration::from_secs(3600));
    std::process::id()
}

/// An initializer that, once `dir` holds a file `hang`, says it runs (a file
/// `starting-<pid>`), then runs for an hour.
#[pool_entry]
fn hang_once_told(dir: String) {
    if std::path::Path::new(&dir).join("hang").exists() {
        let _ = std::fs::write(format!("{dir}/starting-{}", std::process::id()), b"");
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[pool_entry]
fn exit_with(code: i32) -> u32 {
    std::process::exit(code)
}

/// The pid in the name of the first file of `dir` that starts with `prefix`, once there is
/// one.
fn pid_file(dir: &TempDir, prefix: &str) -> u32 {
    let started = Instant::now();
    loop {
        let found = dir
            .files()
            .iter()
            .find_map(|f| f.strip_prefix(prefix).and_then(|p| p.parse().ok()));
        if let Some(pid) = found {
            return pid;
        }
        assert!(started.elapsed() < LIMIT, "no {prefix} file in {dir:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Defect: a worker retiring at `join` was out of `shutdown`'s reach while its exit hook ran,
/// so a `shutdown()` meanwhile waited for the hook: up to `exit_timeout`, and for ever under
/// `exit_timeout(Duration::MAX)`.
#[test]
fn shutdown_during_join_kills_a_worker_in_its_exit_hook_even_without_an_exit_timeout() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("linger");
    let pool = Arc::new(
        ProcessPool::<square>::builder()
            .n_jobs(1)
            .worker_exit::<linger>(dir.arg())
            .exit_timeout(Duration::MAX)
            .build()
            .expect("a pool"),
    );
    assert_eq!(pool.call(2).expect("a call"), 4);
    let joining = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || pool.join())
    };
    let pid = pid_file(&dir, "lingering-");
    let stopping = Arc::clone(&pool);
    within(LIMIT, "shutdown while an exit hook runs", move || {
        stopping.shutdown()
    });
    wait_gone(pid);
    let joined = within(LIMIT, "the join under way", move || joining.join());
    joined.expect("join's thread").expect("join");
    let results = pool.worker_exit_results::<linger>().expect("the hook");
    assert!(results.is_empty(), "the hook was killed: {results:?}");
}

/// Defect: a replacement worker was out of `shutdown`'s reach until it was ready, so a
/// `shutdown()` while its initializer ran waited for the initializer: up to `init_timeout`,
/// and for ever under `init_timeout(Duration::MAX)`.
#[test]
fn shutdown_kills_a_replacement_in_its_initializer_even_without_an_init_timeout() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("hang-init");
    let pool = Arc::new(
        ProcessPool::<exit_with>::builder()
            .n_jobs(1)
            .initializer::<hang_once_told>(dir.arg())
            .init_timeout(Duration::MAX)
            .build()
            .expect("a pool"),
    );
    std::fs::write(dir.path().join("hang"), b"").expect("the file that says hang");
    match pool.call(7) {
        Err(Error::WorkerDied {
            cause: ExitCause::Code(7),
            ..
        }) => {}
        other => panic!("expected the worker to die with code 7, got {other:?}"),
    }
    // Its replacement is now in its initializer, for an hour.
    let pid = pid_file(&dir, "starting-");
    let stopping = Arc::clone(&pool);
    within(LIMIT, "shutdown while a replacement starts", move || {
        stopping.shutdown()
    });
    wait_gone(pid);
    assert!(!pool.is_running());
}

// ---------------------------------------------------------------------------------------------
// An entry scribbles over its worker's progress word
// ---------------------------------------------------------------------------------------------

/// The layout the shared-memory transport documents: 128-byte control lines, the progress
/// word on the second, then the job ring's lines (its tail first, then its head, then its
/// bells: the data bell and the reader's sleeping flag).
const PROGRESS_LINE: usize = 128;
const JOB_TAIL: usize = 2 * 128;
const JOB_DATA_BELL: usize = 4 * 128;
const JOB_READER_SLEEPING: usize = 4 * 128 + 4;

/// What `scrawl` does to its worker's shared memory before it returns.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Scrawl {
    /// Nothing: an innocent task.
    Nothing,
    /// Writes garbage over the progress word.
    Progress,
    /// Once the worker waits for its next job (its answer is out): writes garbage over the
    /// progress word and on past it, over the job ring's tail, and wakes the worker.
    ProgressAndJobTail,
}

/// The address where this worker mapped its shared-memory region (from `/proc/self/maps`).
fn region() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let line = maps
        .lines()
        .find(|l| l.contains("memfd:ppool-shm"))
        .expect("this worker's channel is not shared memory");
    let start = line.split('-').next().expect("an address range");
    usize::from_str_radix(start, 16).expect("a hex address")
}

/// Garbage over the words of the region in `range`.
fn garble(base: usize, range: std::ops::Range<usize>) {
    for at in range.step_by(8) {
        // SAFETY: an 8-aligned word of the live mapping, which both processes only access as
        // atomics; this is the worker breaking the protocol on purpose.
        let word = unsafe { &*((base + at) as *const AtomicU64) };
        word.store(0xA5A5_A5A5_A5A5_A5A5, Ordering::SeqCst);
    }
}

/// A 4-byte word of the region.
fn word32(base: usize, at: usize) -> &'static AtomicU32 {
    // SAFETY: as for `garble`; the mapping lives as long as the worker.
    unsafe { &*((base + at) as *const AtomicU32) }
}

#[pool_entry]
fn scrawl(what: Scrawl) -> u32 {
    match what {
        Scrawl::Nothing => {}
        Scrawl::Progress => garble(region(), PROGRESS_LINE..PROGRESS_LINE + 128),
        Scrawl::ProgressAndJobTail => {
            let base = region();
            std::thread::spawn(move || {
                let started = Instant::now();
                while word32(base, JOB_READER_SLEEPING).load(Ordering::SeqCst) == 0 {
                    if started.elapsed() > Duration::from_secs(20) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                garble(base, PROGRESS_LINE..JOB_TAIL + 8);
                let bell = word32(base, JOB_DATA_BELL);
                bell.fetch_add(1, Ordering::SeqCst);
                let _ = rustix::thread::futex::wake(
                    bell,
                    rustix::thread::futex::Flags::empty(),
                    u32::MAX,
                );
            });
        }
    }
    std::process::id()
}

/// Gone, or a zombie nobody reaped yet.
fn is_gone(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, None | Some("Z" | "X"))
}

fn wait_gone(pid: u32) {
    let started = Instant::now();
    while !is_gone(pid) {
        assert!(started.elapsed() < LIMIT, "worker {pid} still runs");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn scrawl_pool() -> ProcessPool<scrawl> {
    ProcessPool::<scrawl>::builder()
        .n_jobs(1)
        .transport(Transport::SharedMemory)
        .build()
        .expect("a pool of one worker")
}

/// An innocent task after the worker died idle: it runs on a fresh worker, unblamed.
fn assert_innocent_runs(pool: &ProcessPool<scrawl>, dead: u32, what: &str) {
    for _ in 0..3 {
        match pool.call(Scrawl::Nothing) {
            Ok(pid) => assert_ne!(pid, dead, "{what}: the dead worker answered"),
            Err(e) => panic!("{what}: an innocent task was blamed for its worker's death: {e}"),
        }
    }
}

/// Defect: a task that scribbled over its worker's progress word got `Ok`, and when the worker
/// then died idle, the next, innocent task, sent to it but never read, was blamed
/// (`WorkerDied`) instead of being sent again: the progress word could not be read, so the
/// link said "cannot tell", and recovery counted the job as started.
#[test]
fn a_job_sent_to_a_worker_whose_progress_word_is_garbage_and_that_died_idle_runs_elsewhere() {
    let _deadline = ppool_tests::deadline();
    within(LIMIT, "progress word garbage, worker killed idle", || {
        let pool = scrawl_pool();
        let pid = pool
            .call(Scrawl::Progress)
            .expect("the scribbling task itself");
        // Killed while idle (as the OOM killer or an operator might): the pool has not seen it.
        let pid_t = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
        rustix::process::kill_process(pid_t, rustix::process::Signal::KILL).expect("kill");
        wait_gone(pid);
        assert_innocent_runs(&pool, pid, "killed idle");
        assert!(
            matches!(
                pool.detected_worker_error(),
                Some(Error::WorkerDied { pid: p, cause: ExitCause::Signal(9), .. }) if p == pid
            ),
            "the death is still reported: {:?}",
            pool.detected_worker_error()
        );
        pool.join().expect("join");
    });
}

/// Defect, as reported: the scribbling task got `Ok`, and the next, innocent task got
/// `WorkerDied { Code(3) }`. The garbage went on past the progress word over the job ring's
/// tail: the worker, idle, read that tail, found it impossible ("corrupt shared memory") and
/// exited with code 3, the next job still unread in its ring; with the progress word garbage,
/// that job was counted as started and blamed.
#[test]
fn a_task_that_scribbles_over_the_progress_word_and_past_it_gets_no_innocent_task_blamed() {
    let _deadline = ppool_tests::deadline();
    within(LIMIT, "progress word and job tail garbage", || {
        let pool = scrawl_pool();
        let pid = pool
            .call(Scrawl::ProgressAndJobTail)
            .expect("the scribbling task itself");
        wait_gone(pid);
        assert_innocent_runs(&pool, pid, "exit 3 on a corrupt job ring");
        assert!(
            matches!(
                pool.detected_worker_error(),
                Some(Error::WorkerDied { pid: p, cause: ExitCause::Code(3), .. }) if p == pid
            ),
            "the worker's failure is still reported: {:?}",
            pool.detected_worker_error()
        );
        pool.join().expect("join");
    });
}
