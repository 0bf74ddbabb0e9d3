//! Regression tests for known defects, one or a few per defect, with real worker processes.
//!
//! Each test names its defect in its doc comment. On a library that has the defect the test
//! fails; it never hangs: every wait that the defect could make endless is bounded (the call
//! runs on a helper thread that is given up on, or the scenario runs in a child process that
//! is killed), and every test has a deadline. The bounds are generous ("within 5 s" where the
//! defect means "never" or "15 s"): no test asserts speed.
//!
//! Scenarios that could abort or kill their process (a stack overflow, SIGPIPE) run in a child
//! process: a helper binary of this package, or this test binary re-run on one of its
//! `#[ignore]`d `inner_*` tests.

use ppool::{Error, ProcessPool, pool_entry};
use ppool_tests::TempDir;
use serde::{Deserialize, Deserializer, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

ppool::test_support!();

use ppool_tests::within;

const SECOND: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Like [`within`], and also says how long `f` took.
fn timed<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    within(limit, what, move || {
        let started = Instant::now();
        let value = f();
        (value, started.elapsed())
    })
}

/// No core files for the crashes we cause on purpose.
fn no_core_dump() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Core);
    let _ = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: limit.maximum,
        },
    );
}

/// A `Vm*` line of `/proc/<pid>/status`, in KiB (`field` is e.g. `"VmRSS"`).
fn vm_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Polls until `pid`'s resident memory is below `kib`; returns the last value seen.
fn rss_falls_below(pid: u32, kib: u64, limit: Duration) -> Option<u64> {
    let deadline = Instant::now() + limit;
    loop {
        let rss = vm_kib(pid, "VmRSS");
        if rss.is_some_and(|r| r < kib) || Instant::now() >= deadline {
            return rss;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How a child process ended, for a message.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(13)) => "was killed by signal 13 (SIGPIPE)".to_string(),
        (None, Some(6)) => "was killed by signal 6 (SIGABRT; a stack overflow aborts)".to_string(),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("{status:?}"),
    }
}

/// Starts `command` with its output piped and waits for it at most `limit`; kills it and
/// panics, with what it wrote, if it is still running then.
fn output_within(command: &mut Command, limit: Duration, what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{what}: still running after {limit:?}; it hangs.\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// Re-runs this test binary on one of its `#[ignore]`d tests, in a child process.
fn run_inner(test: &str, limit: Duration) -> Output {
    let exe = std::env::current_exe().expect("this test binary");
    output_within(
        Command::new(exe)
            .args([
                test,
                "--ignored",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_remove("RUST_MIN_STACK")
            .env_remove("PPOOL_WORKER_CHANNEL"),
        limit,
        test,
    )
}

/// Asserts that a child process exited 0, showing what it wrote if not.
fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} {}.\nstdout:\n{}\nstderr:\n{}",
        describe(out.status),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills, when dropped, the process whose pid an entry wrote into a file.
struct KillPidInFile(PathBuf);

impl Drop for KillPidInFile {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(pid) = pid.filter(|&p| p > 1) {
            // SAFETY: kill(2) with a plain pid.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entries
// ---------------------------------------------------------------------------------------------

/// Sleeps `ms` milliseconds, then returns the worker's pid.
#[pool_entry]
fn nap(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Aborts its worker.
#[pool_entry]
fn die() -> u32 {
    no_core_dump();
    std::process::abort()
}

/// An initializer that takes `ms` milliseconds.
#[pool_entry]
fn slow_init(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[pool_entry]
fn square(x: u64) -> u64 {
    x * x
}

/// Returns its argument.
#[pool_entry]
fn echo(v: Vec<u8>) -> Vec<u8> {
    v
}

/// `n` bytes (touched), the first four of which are the worker's pid (little-endian).
#[pool_entry]
fn sized(n: u64) -> Vec<u8> {
    let mut v = vec![1u8; n as usize];
    if let Some(head) = v.get_mut(..4) {
        head.copy_from_slice(&std::process::id().to_le_bytes());
    }
    v
}

fn pid_in(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[..4].try_into().expect("at least 4 bytes"))
}

#[pool_entry]
fn whoami() -> Option<usize> {
    ppool::worker_index()
}

/// Allocates and touches `mib` MiB, holds them `ms` milliseconds.
#[pool_entry]
fn hog(mib: usize, ms: u64) -> u32 {
    let block = vec![1u8; mib << 20];
    std::thread::sleep(Duration::from_millis(ms));
    std::hint::black_box(block);
    std::process::id()
}

/// Whether `PPOOL_WORKER_CHANNEL` is set in the worker's environment, and in that of a
/// process the worker starts.
#[pool_entry]
fn channel_env() -> (bool, bool) {
    let own = std::env::var_os("PPOOL_WORKER_CHANNEL").is_some();
    let child = Command::new("sh")
        .args(["-c", "test -n \"${PPOOL_WORKER_CHANNEL+set}\""])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (own, child)
}

/// What `fork_then` does after it forked.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Then {
    /// Aborts the worker.
    Abort,
    /// Sleeps a minute.
    Hang,
}

/// Forks a child that keeps every descriptor of the worker (no exec, so close-on-exec does
/// not apply) and sleeps 15 s; writes its pid into `pidfile`; then does `then`.
#[pool_entry]
fn fork_then(pidfile: String, then: Then) -> u32 {
    // SAFETY: the child only calls async-signal-safe functions (sleep, _exit).
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: as above.
        unsafe {
            libc::sleep(15);
            libc::_exit(0)
        }
    }
    if child > 0 {
        let _ = std::fs::write(&pidfile, child.to_string());
    }
    match then {
        Then::Abort => {
            no_core_dump();
            std::process::abort()
        }
        Then::Hang => std::thread::sleep(Duration::from_secs(60)),
    }
    std::process::id()
}

/// A result type whose `Deserialize` panics on 13 and fails (with its own message) on 14.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Touchy(u32);

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            13 => panic!("Touchy refuses to be deserialized from 13"),
            14 => Err(serde::de::Error::custom("Touchy rejects 14")),
            v => Ok(Touchy(v)),
        }
    }
}

/// Sleeps `ms` milliseconds, then returns `Touchy(x)` and the worker's pid.
#[pool_entry]
fn touchy(x: u32, ms: u64) -> (Touchy, u32) {
    std::thread::sleep(Duration::from_millis(ms));
    (Touchy(x), std::process::id())
}

/// A linked list as deep as one likes: (de)serialized by serde's derived, recursive code;
/// built, measured and dropped without recursion.
#[derive(Serialize, Deserialize)]
struct Nest {
    child: Option<Box<Nest>>,
}

impl Nest {
    fn deep(depth: u32) -> Nest {
        let mut nest = Nest { child: None };
        for _ in 1..depth {
            nest = Nest {
                child: Some(Box::new(nest)),
            };
        }
        nest
    }

    fn depth(&self) -> u32 {
        let mut depth = 1;
        let mut at = self;
        while let Some(child) = &at.child {
            depth += 1;
            at = child;
        }
        depth
    }
}

impl Drop for Nest {
    fn drop(&mut self) {
        let mut next = self.child.take();
        while let Some(mut nest) = next {
            next = nest.child.take();
        }
    }
}

#[pool_entry]
fn nest(depth: u32) -> Nest {
    Nest::deep(depth)
}

// ---------------------------------------------------------------------------------------------
// 1. join() with a watchdog
// ---------------------------------------------------------------------------------------------

/// Defect: with a `task_timeout`, `join()` never returns: it joins the watchdog thread before
/// telling it to stop.
#[test]
fn join_returns_with_a_task_timeout() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<nap>::builder()
        .n_jobs(2)
        .task_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    assert!(pool.call(0).is_ok());
    let r = within(
        10 * SECOND,
        "join() of a pool with a task_timeout",
        move || pool.join(),
    );
    assert!(r.is_ok(), "{r:?}");
}

/// Defect: with a `worker_memory_limit`, `join()` never returns (the watchdog thread again).
#[test]
fn join_returns_with_a_memory_limit() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<nap>::builder()
        .n_jobs(2)
        .worker_memory_limit(1 << 30)
        .build()
        .unwrap();
    assert!(pool.call(0).is_ok());
    let r = within(
        10 * SECOND,
        "join() of a pool with a worker_memory_limit",
        move || pool.join(),
    );
    assert!(r.is_ok(), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// 2. SIGPIPE
// ---------------------------------------------------------------------------------------------

/// Defect: the supervisor writes to the pipe of a worker that died idle; in a program that
/// restored the default SIGPIPE disposition, that kills the whole program (signal 13).
#[test]
fn a_worker_dying_idle_does_not_kill_a_program_with_default_sigpipe() {
    let _deadline = ppool_tests::deadline();
    let out = output_within(
        &mut Command::new(env!("CARGO_BIN_EXE_ppool-test-sigpipe")),
        60 * SECOND,
        "the SIGPIPE helper",
    );
    assert_success(&out, "the program with SIG_DFL for SIGPIPE");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for k in 0..=4 {
        assert!(
            stdout.contains(&format!("call {k}: Ok(")),
            "call {k} after its idle worker was killed did not succeed:\n{stdout}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A forked child keeps the channel
// ---------------------------------------------------------------------------------------------

/// Defect: an entry that forks (without exec) leaves a child holding the channel, so the
/// worker's death is seen only when the channel closes, i.e. when that child exits (15 s).
#[test]
fn a_forked_child_does_not_hide_its_worker_death() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("fork-abort");
    let pidfile = dir.path().join("child");
    let pool = ProcessPool::<fork_then>::new(1).unwrap();
    // Dropped before the pool: the forked child goes first, whatever happens.
    let _child = KillPidInFile(pidfile.clone());
    let arg = pidfile.to_string_lossy().into_owned();
    let (r, took) = timed(
        5 * SECOND,
        "a call whose worker aborted after forking a sleeping child",
        move || pool.call((arg, Then::Abort)),
    );
    assert!(
        matches!(r, Err(Error::WorkerDied { .. })),
        "expected WorkerDied, got {r:?} after {took:?}"
    );
}

/// Defect: the same with a `task_timeout`: the worker is killed on time, but its task ends
/// with `Timeout` only once the forked child exits.
#[test]
fn a_forked_child_does_not_delay_a_timeout() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("fork-hang");
    let pidfile = dir.path().join("child");
    let pool = ProcessPool::<fork_then>::builder()
        .n_jobs(1)
        .task_timeout(2 * SECOND)
        .build()
        .unwrap();
    let _child = KillPidInFile(pidfile.clone());
    let arg = pidfile.to_string_lossy().into_owned();
    let (r, took) = timed(
        8 * SECOND,
        "a call past its 2 s timeout, whose worker forked a sleeping child",
        move || pool.call((arg, Then::Hang)),
    );
    assert!(
        matches!(r, Err(Error::Timeout { .. })),
        "expected Timeout, got {r:?} after {took:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A result whose Deserialize panics or fails
// ---------------------------------------------------------------------------------------------

fn touchy_pool(chunk_size: Option<usize>) -> Arc<ProcessPool<touchy>> {
    let mut builder = ProcessPool::<touchy>::builder().n_jobs(2);
    if let Some(n) = chunk_size {
        builder = builder.chunk_size(n);
    }
    Arc::new(builder.build().unwrap())
}

/// After a failed result: both workers still serve (two calls at once run on two processes,
/// within a few tries, in case a worker is still being replaced) and `join()` returns.
fn assert_pool_whole(pool: Arc<ProcessPool<touchy>>) {
    let p = Arc::clone(&pool);
    let pids = within(
        10 * SECOND,
        "two calls at once after the failed result",
        move || {
            let mut pids = Vec::new();
            for _ in 0..5 {
                let (a, b) = (Arc::clone(&p), Arc::clone(&p));
                let other = std::thread::spawn(move || a.call((1, 300)));
                let rb = b.call((2, 300));
                let ra = other.join().expect("a call panicked");
                let (ta, pa) = ra.expect("a call after the failed result");
                let (tb, pb) = rb.expect("a call after the failed result");
                assert_eq!((ta, tb), (Touchy(1), Touchy(2)));
                pids.push((pa, pb));
                if pa != pb {
                    break;
                }
            }
            pids
        },
    );
    assert!(
        pids.iter().any(|(a, b)| a != b),
        "two calls at once ran on one worker, {} times: the other one is lost ({pids:?})",
        pids.len()
    );
    let r = within(5 * SECOND, "join() after the failed result", move || {
        pool.join()
    });
    assert!(r.is_ok(), "{r:?}");
}

/// Defect: a result type whose `Deserialize` panics kills the thread that decodes it; the
/// task of `submit(..)` never ends and its worker's slot is lost.
#[test]
fn a_panicking_result_deserialize_fails_submit() {
    let _deadline = ppool_tests::deadline();
    let pool = touchy_pool(None);
    let p = Arc::clone(&pool);
    let r = within(5 * SECOND, "submit(13).wait()", move || {
        p.submit((13, 0)).wait()
    });
    assert!(r.is_err(), "{r:?}");
    assert_pool_whole(pool);
}

/// Defect: the same for a blocking `call`: the panic comes out of `call` instead of an `Err`.
#[test]
fn a_panicking_result_deserialize_fails_call() {
    let _deadline = ppool_tests::deadline();
    let pool = touchy_pool(None);
    let p = Arc::clone(&pool);
    let r = within(5 * SECOND, "call(13)", move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.call((13, 0))))
    });
    match r {
        Ok(r) => assert!(r.is_err(), "{r:?}"),
        Err(_) => panic!("call(13) panicked instead of returning an Err"),
    }
    assert_pool_whole(pool);
}

/// Defect: the same for `call_with`: the callback is never called.
#[test]
fn a_panicking_result_deserialize_fails_call_with() {
    let _deadline = ppool_tests::deadline();
    let pool = touchy_pool(None);
    let (tx, rx) = mpsc::channel();
    pool.call_with((13, 0), move |r| {
        let _ = tx.send(r);
    });
    let r = match rx.recv_timeout(5 * SECOND) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("call_with(13): the callback was not called within 5 s")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            panic!("call_with(13): the callback was dropped without being called")
        }
    };
    assert!(r.is_err(), "{r:?}");
    assert_pool_whole(pool);
}

fn assert_batch_fails_only_13(pool: Arc<ProcessPool<touchy>>) {
    let p = Arc::clone(&pool);
    let results = within(5 * SECOND, "batch([1, 13, 2]).wait_all()", move || {
        p.batch([(1, 0), (13, 0), (2, 0)]).wait_all()
    });
    assert_eq!(results.len(), 3);
    assert!(
        matches!(&results[0], Ok((Touchy(1), _))),
        "{:?}",
        results[0]
    );
    assert!(results[1].is_err(), "{:?}", results[1]);
    assert!(
        matches!(&results[2], Ok((Touchy(2), _))),
        "{:?}",
        results[2]
    );
    assert_pool_whole(pool);
}

/// Defect: the same for `batch`: `wait_all()` never returns.
#[test]
fn a_panicking_result_deserialize_fails_its_batch_task_alone() {
    let _deadline = ppool_tests::deadline();
    assert_batch_fails_only_13(touchy_pool(None));
}

/// Defect: the same for `batch`, with the panicking result in the middle of a chunk.
#[test]
fn a_panicking_result_deserialize_fails_its_batch_task_alone_in_a_chunk() {
    let _deadline = ppool_tests::deadline();
    assert_batch_fails_only_13(touchy_pool(Some(3)));
}

/// A `Deserialize` that returns its own error fails that task alone, with an `Err`, through
/// every way of running it.
#[test]
fn a_failing_result_deserialize_fails_that_task_alone() {
    let _deadline = ppool_tests::deadline();
    let pool = touchy_pool(Some(3));
    let p = Arc::clone(&pool);
    let (submitted, called, batch) = within(5 * SECOND, "tasks whose result fails", move || {
        let submitted = p.submit((14, 0)).wait();
        let called = p.call((14, 0));
        let batch = p.batch([(1, 0), (14, 0), (2, 0)]).wait_all();
        (submitted, called, batch)
    });
    assert!(
        matches!(submitted, Err(Error::Codec { .. })),
        "{submitted:?}"
    );
    assert!(matches!(called, Err(Error::Codec { .. })), "{called:?}");
    assert!(matches!(&batch[0], Ok((Touchy(1), _))), "{batch:?}");
    assert!(matches!(&batch[1], Err(Error::Codec { .. })), "{batch:?}");
    assert!(matches!(&batch[2], Ok((Touchy(2), _))), "{batch:?}");
    let (tx, rx) = mpsc::channel();
    pool.call_with((14, 0), move |r| {
        let _ = tx.send(r);
    });
    let r = rx
        .recv_timeout(5 * SECOND)
        .expect("the callback of call_with");
    assert!(matches!(r, Err(Error::Codec { .. })), "{r:?}");
    assert_pool_whole(pool);
}

/// Defect (contract: "an error raised by a type's own Serialize/Deserialize keeps its
/// message"): the message of a `Deserialize` error is lost on the way.
#[test]
fn a_failing_result_deserialize_keeps_its_message() {
    let _deadline = ppool_tests::deadline();
    let pool = touchy_pool(None);
    let r = within(5 * SECOND, "call(14)", move || pool.call((14, 0)));
    let e = r.expect_err("14 cannot be deserialized");
    assert!(e.to_string().contains("Touchy rejects 14"), "{e}");
}

/// Takes a `Touchy`, which the worker decodes.
#[pool_entry]
fn touchy_arg(t: Touchy) -> u32 {
    t.0
}

/// The same on the worker's side: an argument whose `Deserialize` fails there comes back as
/// `Codec` with its message, and the worker goes on.
#[test]
fn a_failing_argument_deserialize_in_the_worker_keeps_its_message() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<touchy_arg>::new(1).unwrap();
    let r = within(5 * SECOND, "call(Touchy(14))", move || {
        let failed = pool.call(Touchy(14));
        (failed, pool.call(Touchy(3)))
    });
    match r.0 {
        Err(Error::Codec { ref message, .. }) => {
            assert_eq!(message, "Touchy rejects 14", "{:?}", r.0)
        }
        ref other => panic!("expected Codec, got {other:?}"),
    }
    assert_eq!(r.1, Ok(3));
}

// ---------------------------------------------------------------------------------------------
// 5. A deeply nested result
// ---------------------------------------------------------------------------------------------

/// How deep the nested result is: deep enough that recursive decoding overflows a thread's
/// default 2 MiB stack.
const NEST_DEPTH: u32 = 50_000;

/// Defect: decoding a deeply nested result recurses without limit on a pool thread, and the
/// stack overflow aborts the whole program. Run in a child process (`inner_deep_results`).
#[test]
fn a_deeply_nested_result_does_not_abort_the_program() {
    let _deadline = ppool_tests::deadline();
    let out = run_inner("inner_deep_results", 90 * SECOND);
    assert_success(&out, "the program that received a deeply nested result");
}

/// Run by `a_deeply_nested_result_does_not_abort_the_program`: each way of running a task
/// gets a result `NEST_DEPTH` deep (the worker has a big stack, so it can encode it); each
/// must come back `Ok` or as a clear `Err`.
#[test]
#[ignore = "run in a child process by a_deeply_nested_result_does_not_abort_the_program"]
fn inner_deep_results() {
    let _deadline = ppool_tests::deadline();
    let pool = Arc::new(
        ProcessPool::<nest>::builder()
            .n_jobs(1)
            .env("RUST_MIN_STACK", (1u64 << 30).to_string())
            .build()
            .unwrap(),
    );
    let check = |how: &str, r: Result<u32, Error>| {
        println!("{how}: {r:?}");
        match r {
            Ok(depth) => assert_eq!(depth, NEST_DEPTH, "{how}"),
            Err(e) => assert!(!e.to_string().is_empty(), "{how}"),
        }
    };
    let p = Arc::clone(&pool);
    let r = within(60 * SECOND, "submit", move || {
        p.submit(NEST_DEPTH).wait().map(|n| n.depth())
    });
    check("submit", r);
    let (tx, rx) = mpsc::channel();
    pool.call_with(NEST_DEPTH, move |r| {
        let _ = tx.send(r.map(|n| n.depth()));
    });
    check(
        "call_with",
        rx.recv_timeout(60 * SECOND)
            .expect("the callback of call_with"),
    );
    let p = Arc::clone(&pool);
    let r = within(60 * SECOND, "batch", move || {
        let mut all = p.batch([NEST_DEPTH]).wait_all();
        all.pop().expect("one result").map(|n| n.depth())
    });
    check("batch", r);
    let p = Arc::clone(&pool);
    let r = within(60 * SECOND, "call from a thread", move || {
        p.call(NEST_DEPTH).map(|n| n.depth())
    });
    check("call from a thread", r);
}

// ---------------------------------------------------------------------------------------------
// 6. stderr without newlines
// ---------------------------------------------------------------------------------------------

const STDERR_HELPER: &str = env!("CARGO_BIN_EXE_ppool-test-stderr");

/// Defect: a worker's stderr is forwarded by searching the whole unfinished line again after
/// every read, so output without newlines takes quadratic time, and the worker, blocked on its
/// full stderr pipe, with it.
#[test]
fn stderr_without_newlines_is_forwarded_in_linear_time() {
    let _deadline = ppool_tests::deadline();
    const MIB: usize = 32;
    let mut child = Command::new(STDERR_HELPER)
        .args(["flood", &MIB.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the stderr helper");
    let mut stderr = child.stderr.take().expect("stderr");
    let counted = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut xs = 0usize;
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            xs += buf[..n].iter().filter(|&&b| b == b'x').count();
        }
        xs
    });
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(30 * SECOND);
    // Once the call is back, the helper joins its pool and exits, and what the worker wrote
    // last is forwarded by then.
    let exit_by = Instant::now() + if line.is_ok() { 20 * SECOND } else { SECOND };
    while child.try_wait().ok().flatten().is_none() && Instant::now() < exit_by {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let status = child.wait().expect("wait");
    let line = line.unwrap_or_else(|_| {
        panic!("a call whose entry wrote {MIB} MiB to stderr without a newline did not return within 30 s")
    });
    let ms: u64 = line
        .strip_prefix("returned after ")
        .and_then(|l| l.strip_suffix(" ms"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?} ({})", describe(status)));
    assert!(
        ms < 10_000,
        "a call whose entry wrote {MIB} MiB to stderr without a newline took {ms} ms"
    );
    let xs = counted.join().expect("the stderr reader");
    assert!(
        xs >= MIB << 20,
        "only {xs} of {} bytes reached stderr",
        MIB << 20
    );
}

/// Defect: a worker's stderr is forwarded only line by line, so a progress line ended by
/// `\r` shows only when the worker exits.
#[test]
fn a_progress_line_ended_by_cr_shows_while_the_task_runs() {
    let _deadline = ppool_tests::deadline();
    let mut child = Command::new(STDERR_HELPER)
        .arg("progress")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the stderr helper");
    let (tx, rx) = mpsc::channel::<(&str, Instant)>();
    let mut stderr = child.stderr.take().expect("stderr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let err_tx = tx.clone();
    let all = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut told = false;
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut all = all.lock().unwrap();
            all.extend_from_slice(&buf[..n]);
            if !told && String::from_utf8_lossy(&all).contains("progress 50%") {
                told = true;
                let _ = err_tx.send(("progress", Instant::now()));
            }
        }
    });
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "returned" {
                let _ = tx.send(("returned", Instant::now()));
            }
        }
    });
    let mut progress = None;
    let mut returned = None;
    let deadline = Instant::now() + 30 * SECOND;
    while progress.is_none() || returned.is_none() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(("progress", at)) => progress = Some(at),
            Ok((_, at)) => returned = Some(at),
            Err(_) => break,
        }
    }
    // The helper exits by itself; give it a moment to flush what it holds, then stop it.
    let exited = Instant::now() + 5 * SECOND;
    while child.try_wait().ok().flatten().is_none() && Instant::now() < exited {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let returned = returned.unwrap_or_else(|| panic!("the helper's call did not return: {text}"));
    let progress = progress.unwrap_or_else(|| panic!("`progress 50%` never showed: {text:?}"));
    assert!(
        progress + Duration::from_millis(1500) < returned,
        "`progress 50%\\r` showed only {} after the call returned (the task wrote it 3 s before \
         returning)",
        if progress >= returned {
            format!("{:?}", progress - returned)
        } else {
            format!("-{:?}", returned - progress)
        }
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Re-entrant calls from callbacks
// ---------------------------------------------------------------------------------------------

/// How a callback calls its pool again.
#[derive(Debug, Clone, Copy)]
enum Again {
    Call,
    Submit,
    Batch,
}

fn again(pool: &ProcessPool<square>, how: Again) -> Result<Vec<u64>, Error> {
    match how {
        Again::Call => pool.call(3).map(|y| vec![y]),
        Again::Submit => pool.submit(3).wait().map(|y| vec![y]),
        Again::Batch => pool.batch([1, 2, 3]).wait(),
    }
}

/// `2 * n_jobs` `call_with` callbacks, each of which uses the pool again as `how` says: each
/// must end (the inner use works or fails) within 5 s, and the pool must work afterwards.
fn reenter(n_jobs: usize, how: Again) {
    let pool = Arc::new(
        ProcessPool::<square>::builder()
            .n_jobs(n_jobs)
            .build()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let callbacks = 2 * n_jobs as u64;
    for x in 0..callbacks {
        let (p, tx) = (Arc::clone(&pool), tx.clone());
        pool.call_with(x, move |outer| {
            let inner = again(&p, how);
            let _ = tx.send((x, outer, inner));
        });
    }
    let deadline = Instant::now() + 5 * SECOND;
    for _ in 0..callbacks {
        let (x, outer, inner) = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                panic!("{how:?} from inside a call_with callback ({n_jobs} workers) hangs")
            });
        assert_eq!(outer, Ok(x * x));
        if let Ok(values) = inner {
            let expected = match how {
                Again::Batch => vec![1, 4, 9],
                Again::Call | Again::Submit => vec![9],
            };
            assert_eq!(values, expected, "{how:?}");
        }
    }
    let r = within(
        5 * SECOND,
        "a call after the re-entrant callbacks",
        move || pool.call(4),
    );
    assert_eq!(r, Ok(16));
}

/// Defect: a `call_with` callback runs on the thread that drives the (only) worker; a `call`
/// made from it waits for that very thread, for ever.
#[test]
fn call_from_a_callback_does_not_hang() {
    let _deadline = ppool_tests::deadline();
    reenter(1, Again::Call);
}

/// Defect: the same with `submit(..).wait()`.
#[test]
fn submit_from_a_callback_does_not_hang() {
    let _deadline = ppool_tests::deadline();
    reenter(1, Again::Submit);
}

/// Defect: the same with `batch(..).wait()`.
#[test]
fn batch_from_a_callback_does_not_hang() {
    let _deadline = ppool_tests::deadline();
    reenter(1, Again::Batch);
}

/// Defect: the same with two workers whose callbacks all call the pool.
#[test]
fn calls_from_every_callback_of_two_workers_do_not_hang() {
    let _deadline = ppool_tests::deadline();
    reenter(2, Again::Call);
    reenter(2, Again::Submit);
    reenter(2, Again::Batch);
}

/// Defect: `join()` from a callback waits for the other drivers, which wait for the
/// callback's own worker to be idle: a deadlock with two workers or more.
#[test]
fn join_from_a_callback_does_not_hang() {
    let _deadline = ppool_tests::deadline();
    for n_jobs in [1, 2] {
        let pool = Arc::new(ProcessPool::<square>::new(n_jobs).unwrap());
        let (tx, rx) = mpsc::channel();
        let p = Arc::clone(&pool);
        pool.call_with(5, move |outer| {
            let joined = p.join();
            let _ = tx.send((outer, joined));
        });
        let (outer, joined) = rx.recv_timeout(5 * SECOND).unwrap_or_else(|_| {
            panic!(
                "join() inside a call_with callback ({n_jobs} workers) did not return within 5 s"
            )
        });
        assert_eq!(outer, Ok(25));
        eprintln!("join() inside a callback ({n_jobs} workers): {joined:?}");
        let r = within(
            5 * SECOND,
            "join() after a join() inside a callback",
            move || pool.join(),
        );
        eprintln!("join() after it ({n_jobs} workers): {r:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Chunks and max_frame_size
// ---------------------------------------------------------------------------------------------

const FRAME_LIMIT: usize = 256 * 1024;
const ITEM: usize = 40 * 1024;

fn byte_args(n: usize, len: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8; len]).collect()
}

fn echo_pool() -> Arc<ProcessPool<echo>> {
    Arc::new(
        ProcessPool::<echo>::builder()
            .n_jobs(2)
            .max_frame_size(FRAME_LIMIT)
            .build()
            .unwrap(),
    )
}

/// Panics with the first failures of `results` if any.
fn assert_all_echoed(results: &[Result<Vec<u8>, Error>], args: &[Vec<u8>], what: &str) {
    let failed: Vec<(usize, &Error)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        .collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} tasks failed, the first: {:?}",
        failed.len(),
        results.len(),
        failed.first()
    );
    assert_eq!(results.len(), args.len());
    for (r, a) in results.iter().zip(args) {
        assert_eq!(r.as_ref().ok(), Some(a), "{what}: a wrong result");
    }
}

/// Defect: `batch` puts several arguments into one chunk regardless of `max_frame_size`, and a
/// chunk above it fails every one of its tasks.
#[test]
fn batch_chunks_respect_max_frame_size() {
    let _deadline = ppool_tests::deadline();
    let pool = echo_pool();
    let args = byte_args(100, ITEM);
    let sent = args.clone();
    let results = within(30 * SECOND, "batch of 100 × 40 KiB", move || {
        pool.batch(sent).wait_all()
    });
    assert_all_echoed(&results, &args, "batch of 100 × 40 KiB, limit 256 KiB");
}

/// Defect: the same for `map`.
#[test]
fn map_chunks_respect_max_frame_size() {
    let _deadline = ppool_tests::deadline();
    let pool = echo_pool();
    let args = byte_args(100, ITEM);
    let sent = args.clone();
    let results = within(30 * SECOND, "map of 100 × 40 KiB", move || {
        pool.map(sent).collect::<Vec<_>>()
    });
    assert_all_echoed(&results, &args, "map of 100 × 40 KiB, limit 256 KiB");
}

/// Defect: the results of one chunk together exceed `max_frame_size`, and every task of the
/// chunk past the limit fails.
#[test]
fn chunk_results_respect_max_frame_size() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<sized>::builder()
        .n_jobs(2)
        .max_frame_size(FRAME_LIMIT)
        .build()
        .unwrap();
    let results = within(30 * SECOND, "100 results of 40 KiB", move || {
        pool.batch(vec![ITEM as u64; 100]).wait_all()
    });
    let failed: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 100 tasks returning 40 KiB each failed (limit 256 KiB), the first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(results.iter().flatten().all(|v| v.len() == ITEM));
}

/// Defect: an argument above `max_frame_size` fails its whole chunk, not itself alone.
#[test]
fn an_argument_above_the_frame_limit_fails_alone() {
    let _deadline = ppool_tests::deadline();
    let pool = echo_pool();
    let mut args = byte_args(10, 1024);
    args[5] = vec![5; 300 * 1024];
    let sent = args.clone();
    let results = within(
        30 * SECOND,
        "a batch with one oversized argument",
        move || pool.batch(sent).wait_all(),
    );
    assert!(
        results[5].is_err(),
        "the 300 KiB argument: {:?}",
        results[5]
    );
    for (i, r) in results.iter().enumerate().filter(|(i, _)| *i != 5) {
        assert_eq!(
            r.as_ref().ok(),
            Some(&args[i]),
            "task {i} of the batch: {r:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Smaller ones
// ---------------------------------------------------------------------------------------------

/// Defect (9a): `debug(true)` silently ignores `task_timeout`; it must refuse it
/// (`InvalidConfig`) or honour it.
#[test]
fn debug_mode_refuses_or_honours_task_timeout() {
    let _deadline = ppool_tests::deadline();
    let built = ProcessPool::<nap>::builder()
        .debug(true)
        .task_timeout(SECOND)
        .build();
    match built {
        Err(Error::InvalidConfig { .. }) => {}
        Err(other) => panic!("expected InvalidConfig or a working pool, got {other:?}"),
        Ok(pool) => {
            let r = within(10 * SECOND, "a 3 s task with a 1 s timeout", move || {
                pool.call(3000)
            });
            assert!(
                matches!(r, Err(Error::Timeout { .. })),
                "debug(true) accepted task_timeout(1 s) and ignored it: a 3 s task gave {r:?}"
            );
        }
    }
}

/// Defect (9a): `debug(true)` silently ignores `worker_memory_limit`; it must refuse it
/// (`InvalidConfig`) or honour it.
#[test]
fn debug_mode_refuses_or_honours_memory_limit() {
    let _deadline = ppool_tests::deadline();
    let built = ProcessPool::<hog>::builder()
        .debug(true)
        .worker_memory_limit(64 << 20)
        .build();
    match built {
        Err(Error::InvalidConfig { .. }) => {}
        Err(other) => panic!("expected InvalidConfig or a working pool, got {other:?}"),
        Ok(pool) => {
            let r = within(
                10 * SECOND,
                "a 256 MiB task with a 64 MiB limit",
                move || pool.call((256, 500)),
            );
            assert!(
                matches!(r, Err(Error::MemoryLimit { .. })),
                "debug(true) accepted worker_memory_limit(64 MiB) and ignored it: a 256 MiB \
                 task gave {r:?}"
            );
        }
    }
}

/// Defect (9a): in debug mode `ppool::worker_index()` is `None` inside a task; the task runs
/// as worker 0.
#[test]
fn debug_mode_tasks_run_as_worker_0() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<whoami>::builder()
        .debug(true)
        .build()
        .unwrap();
    let r = within(10 * SECOND, "a debug-mode call", move || pool.call(()));
    assert_eq!(r, Ok(Some(0)));
}

/// Defect (9b): an argument above `max_frame_size` is reported as `Error::Protocol`, a worker
/// failure, though no worker failed; and its message should give the size and the limit.
#[test]
fn an_oversized_argument_is_no_worker_failure() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<echo>::builder()
        .n_jobs(1)
        .max_frame_size(FRAME_LIMIT)
        .build()
        .unwrap();
    let e = within(10 * SECOND, "a call with a 300 KiB argument", move || {
        pool.call(vec![0; 300 * 1024])
    })
    .expect_err("an argument above the limit");
    assert!(!matches!(e, Error::Protocol { .. }), "{e:?}");
    assert!(!e.is_worker_failure(), "{e:?}");
    let text = e.to_string();
    let numbers: Vec<u64> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        numbers.contains(&(FRAME_LIMIT as u64)) || text.contains("256 KiB"),
        "the limit is not in: {text}"
    );
    assert!(
        numbers
            .iter()
            .any(|&n| (300 * 1024..400 * 1024).contains(&n))
            || text.contains("300 KiB"),
        "the size is not in: {text}"
    );
}

/// Defect (9c): a worker keeps the buffer of its largest result for good: after a 300 MiB
/// result its resident memory stays above 300 MiB.
#[test]
fn a_worker_gives_back_the_memory_of_a_large_result() {
    let _deadline = ppool_tests::deadline();
    let pool = Arc::new(ProcessPool::<sized>::new(1).unwrap());
    let worker = pid_in(&pool.call(8).unwrap());
    let p = Arc::clone(&pool);
    let big = within(60 * SECOND, "a 300 MiB result", move || p.call(300 << 20)).unwrap();
    assert_eq!((big.len(), pid_in(&big)), (300 << 20, worker));
    drop(big);
    let rss = rss_falls_below(worker, 100 << 10, 5 * SECOND);
    assert!(
        rss.is_some_and(|kib| kib < 100 << 10),
        "the worker's resident memory is {rss:?} KiB 5 s after a 300 MiB result"
    );
}

/// Defect (9c): the supervisor keeps the buffer of the largest result it read for good.
/// Measured in a child process (`inner_supervisor_memory`), where no other test allocates.
#[test]
fn the_supervisor_gives_back_the_memory_of_a_large_result() {
    let _deadline = ppool_tests::deadline();
    let out = run_inner("inner_supervisor_memory", 90 * SECOND);
    assert_success(&out, "the supervisor that received a 300 MiB result");
}

/// Run by `the_supervisor_gives_back_the_memory_of_a_large_result`.
#[test]
#[ignore = "run in a child process by the_supervisor_gives_back_the_memory_of_a_large_result"]
fn inner_supervisor_memory() {
    let _deadline = ppool_tests::deadline();
    let me = std::process::id();
    let pool = ProcessPool::<sized>::new(1).unwrap();
    let _ = pool.call(8).unwrap();
    let before = vm_kib(me, "VmRSS").expect("VmRSS");
    let big = pool.call(300 << 20).unwrap();
    assert_eq!(big.len(), 300 << 20);
    drop(big);
    let rss = rss_falls_below(me, before + (100 << 10), 5 * SECOND);
    println!("supervisor VmRSS: {before} KiB before, {rss:?} KiB after a 300 MiB result");
    assert!(
        rss.is_some_and(|kib| kib < before + (100 << 10)),
        "the supervisor's resident memory is {rss:?} KiB 5 s after a 300 MiB result \
         ({before} KiB before it)"
    );
}

/// Defect (9d): `call` returns a task's `WorkerDied` only once the replacement worker is
/// ready, here after its 2 s initializer.
#[test]
fn a_crash_is_reported_before_the_replacement_is_ready() {
    let _deadline = ppool_tests::deadline();
    let pool = Arc::new(
        ProcessPool::<die>::builder()
            .n_jobs(1)
            .initializer::<slow_init>(2000)
            .build()
            .unwrap(),
    );
    let p = Arc::clone(&pool);
    let (r, took) = timed(20 * SECOND, "a call whose worker aborts", move || {
        p.call(())
    });
    assert!(matches!(r, Err(Error::WorkerDied { .. })), "{r:?}");
    assert!(
        took < Duration::from_millis(1500),
        "the crash was reported after {took:?}: after the replacement's 2 s initializer"
    );
}

/// Defect (9e): `PPOOL_WORKER_CHANNEL` stays in a worker's environment, so the processes its
/// entries start inherit it.
#[test]
fn the_channel_variable_does_not_leak_into_entries() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<channel_env>::new(1).unwrap();
    let (own, child) = within(10 * SECOND, "channel_env()", move || pool.call(())).unwrap();
    assert!(
        !own,
        "PPOOL_WORKER_CHANNEL is set in the environment of an entry"
    );
    assert!(
        !child,
        "PPOOL_WORKER_CHANNEL is set in the environment of a process an entry starts"
    );
}

/// Defect (9f): `cpu_affinity` with a CPU this machine does not have passes `build()`'s
/// checks and fails as `Error::Spawn` when the workers start.
#[test]
fn cpu_affinity_beyond_the_machine_is_invalid_config() {
    let _deadline = ppool_tests::deadline();
    let allowed = rustix::thread::sched_getaffinity(None).expect("sched_getaffinity");
    if allowed.is_set(63) {
        eprintln!("skipped: CPU 63 is usable here");
        return;
    }
    match ProcessPool::<nap>::builder()
        .n_jobs(1)
        .cpu_affinity([63])
        .build()
    {
        Err(Error::InvalidConfig { setting, .. }) => assert_eq!(setting, "cpu_affinity"),
        Err(other) => panic!("expected InvalidConfig, got {other:?}"),
        Ok(_) => panic!("a pool pinned to CPU 63 was built on a machine without it"),
    }
}

/// Lets exactly these descriptors survive into the child.
fn inherit_fds(command: &mut Command, fds: [RawFd; 2]) {
    // SAFETY: only `fcntl` runs between fork and exec, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            for fd in fds {
                rustix::io::fcntl_setfd(BorrowedFd::borrow_raw(fd), rustix::io::FdFlags::empty())?;
            }
            Ok(())
        });
    }
}

/// Defect (9g): a worker believes the length in the header of the greeting frame and keeps
/// reading garbage into memory until it has it all (here up to 1.5 GiB), instead of refusing
/// a greeting far larger than a greeting can be.
#[test]
fn a_hand_started_worker_fed_a_huge_header_stays_small() {
    let _deadline = ppool_tests::deadline();
    let (task_r, mut task_w) = std::io::pipe().unwrap();
    let (mut result_r, result_w) = std::io::pipe().unwrap();
    let fds = [task_r.as_raw_fd(), result_w.as_raw_fd()];
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "__ppool_worker",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(
            "PPOOL_WORKER_CHANNEL",
            format!("{},{},{}", fds[0], fds[1], u32::MAX),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    inherit_fds(&mut command, fds);
    let mut child = command
        .spawn()
        .expect("cannot start this binary as a worker");
    drop((task_r, result_w));
    let pid = child.id();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = task_w.write_all(&(3u32 << 29).to_le_bytes()); // 1.5 GiB
        let garbage = vec![0xab_u8; 1 << 20];
        while started.elapsed() < 12 * SECOND {
            if task_w.write_all(&garbage).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = result_r.read_to_end(&mut sink);
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let said = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut peak_kib = 0;
    let status = loop {
        if let Some(hwm) = vm_kib(pid, "VmHWM") {
            peak_kib = peak_kib.max(hwm);
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if started.elapsed() > 10 * SECOND {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let text = said.join().unwrap_or_default();
    eprintln!("the worker fed a 1.5 GiB header peaked at {peak_kib} KiB resident ({status:?})");
    let status =
        status.unwrap_or_else(|| panic!("the worker still ran after 10 s; stderr: {text}"));
    assert!(!status.success(), "{}; stderr: {text}", describe(status));
    assert!(
        peak_kib < 64 << 10,
        "the worker's resident memory peaked at {} MiB reading a greeting that claims 1.5 GiB \
         ({}); stderr: {text}",
        peak_kib >> 10,
        describe(status)
    );
}

// ---------------------------------------------------------------------------------------------
// Found by a second hostile pass
// ---------------------------------------------------------------------------------------------

#[pool_entry]
fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Two `join()` calls at once: the second returned at once, and the first then stopped the
/// drivers with tasks still queued, which failed with a stale `Spawn` error.
#[test]
fn two_joins_at_once_both_wait_and_lose_nothing() {
    let _deadline = ppool_tests::deadline();
    let pool = Arc::new(ProcessPool::<nap_ms>::new(2).unwrap());
    let tasks: Vec<_> = (0..40).map(|_| pool.submit(5)).collect();
    let other = {
        let p = Arc::clone(&pool);
        std::thread::spawn(move || p.join())
    };
    let mine = within(30 * SECOND, "join", {
        let p = Arc::clone(&pool);
        move || p.join()
    });
    assert!(mine.is_ok(), "{mine:?}");
    assert!(matches!(other.join(), Ok(Ok(()))));
    for (k, task) in tasks.into_iter().enumerate() {
        let r = task.wait();
        assert!(matches!(r, Ok(5)), "task {k}: {r:?}");
    }
}

#[pool_entry]
fn nap_then_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Concurrent `shutdown()` calls: some returned while a worker process was still alive.
#[test]
fn every_shutdown_returns_only_once_the_workers_are_gone() {
    let _deadline = ppool_tests::deadline();
    let pool = Arc::new(ProcessPool::<nap_then_pid>::new(2).unwrap());
    let mut pids: Vec<u32> = pool.batch([100, 100, 100, 100]).wait().unwrap();
    pids.sort_unstable();
    pids.dedup();
    for _ in 0..4 {
        pool.call_with(5_000, |_| {});
    }
    std::thread::sleep(Duration::from_millis(50));
    let stoppers: Vec<_> = (0..8)
        .map(|_| {
            let p = Arc::clone(&pool);
            let pids = pids.clone();
            std::thread::spawn(move || {
                p.shutdown();
                // Right after this call returned, no worker may be left, not even a zombie.
                pids.into_iter()
                    .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
                    .collect::<Vec<u32>>()
            })
        })
        .collect();
    for s in stoppers {
        let alive = s.join().expect("a shutdown thread");
        assert!(
            alive.is_empty(),
            "workers left after shutdown returned: {alive:?}"
        );
    }
}

/// The stderr forwarder's thread did not block SIGPIPE: a program with the default SIGPIPE
/// whose stderr was a closed pipe (`prog 2>&1 | head`) was killed by the library.
#[test]
fn forwarding_worker_stderr_to_a_closed_pipe_does_not_kill_the_program() {
    let _deadline = ppool_tests::deadline();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ppool-test-sigpipe"))
        .arg("stderr")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the SIGPIPE helper");
    // Close our end of its stderr: every forwarded line now meets a broken pipe.
    drop(child.stderr.take());
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "{}: {stdout}", describe(status));
    assert!(stdout.contains("call 19: Ok(1000)"), "{stdout}");
}

#[pool_entry]
fn slow_init_writing_pid(path: String) {
    let _ = std::fs::write(&path, std::process::id().to_string());
    std::thread::sleep(Duration::from_millis(300));
}

#[pool_entry]
fn my_pid() -> u32 {
    std::process::id()
}

/// A replacement killed from outside while its initializer ran left the slot dead for good:
/// every later call failed with that one start-up error.
#[test]
fn a_replacement_killed_while_it_starts_is_started_again() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("restart-kill");
    let pidfile = dir.path().join("pid");
    let path = pidfile.to_string_lossy().into_owned();
    let pool = ProcessPool::<my_pid>::builder()
        .n_jobs(1)
        .initializer::<slow_init_writing_pid>(path)
        .build()
        .unwrap();
    let first = pool.call(()).unwrap();
    let _ = std::fs::remove_file(&pidfile);
    kill(first);
    // The next call finds the worker dead and starts a replacement, which writes its pid as
    // its initializer starts: kill it there.
    let p = Arc::new(pool);
    let call = {
        let p = Arc::clone(&p);
        std::thread::spawn(move || p.call(()))
    };
    let started = Instant::now();
    let replacement = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
        {
            break pid;
        }
        assert!(started.elapsed() < 20 * SECOND, "no replacement started");
        std::thread::sleep(Duration::from_millis(5));
    };
    kill(replacement);
    let first_call = call.join().expect("the call thread");
    let after = within(30 * SECOND, "calls after the kills", {
        let p = Arc::clone(&p);
        move || (0..3).map(|_| p.call(())).collect::<Vec<_>>()
    });
    assert!(
        after.iter().all(Result::is_ok),
        "{first_call:?} then {after:?}"
    );
    assert!(p.is_running());
}

fn kill(pid: u32) {
    // SAFETY: kill(2) with the pid of a worker of this test's pool.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

#[pool_entry]
fn fork_and_both_return() -> u32 {
    // SAFETY: the child only returns into the worker, which must end it quietly.
    let child = unsafe { libc::fork() };
    if child == 0 {
        return 1000;
    }
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: reaps the child forked above.
    unsafe {
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    7
}

/// A forked child that returned from the entry served on the worker's channel: the caller got
/// the child's result, and the next task was blamed for the mix-up.
#[test]
fn a_forked_child_returning_from_the_entry_never_answers() {
    let _deadline = ppool_tests::deadline();
    let pool = Arc::new(ProcessPool::<fork_and_both_return>::new(1).unwrap());
    let got = within(30 * SECOND, "calls to an entry whose child returns", {
        let p = Arc::clone(&pool);
        move || (0..3).map(|_| p.call(())).collect::<Vec<_>>()
    });
    for (k, r) in got.iter().enumerate() {
        assert!(matches!(r, Ok(7)), "call {k}: {r:?}");
    }
}

#[pool_entry]
fn depth_of(nest: Nest) -> u32 {
    nest.depth()
}

/// Encoding a deeply nested argument overflowed the caller's stack and aborted the program:
/// serde_stacker's serializer grows the stack only inside sequences and maps, not through
/// `Option`s, newtypes or fields. Run in a child process (`inner_deep_arguments`).
#[test]
fn a_deeply_nested_argument_does_not_abort_the_program() {
    let _deadline = ppool_tests::deadline();
    let out = run_inner("inner_deep_arguments", 90 * SECOND);
    assert_success(&out, "the program that sent deeply nested arguments");
}

/// Run by `a_deeply_nested_argument_does_not_abort_the_program`: arguments 1,000 deep from a
/// thread with a 64 KiB stack, and 200,000 deep from a 2 MiB one, in `call` and `batch`.
#[test]
#[ignore = "run in a child process by a_deeply_nested_argument_does_not_abort_the_program"]
fn inner_deep_arguments() {
    let _deadline = ppool_tests::deadline();
    let pool = Arc::new(ProcessPool::<depth_of>::new(1).unwrap());
    for (depth, stack) in [(1_000, 64 << 10), (200_000, 2 << 20)] {
        let p = Arc::clone(&pool);
        let got = std::thread::Builder::new()
            .stack_size(stack)
            .spawn(move || {
                let one = p.call(Nest::deep(depth));
                let many = p.batch([Nest::deep(depth), Nest::deep(3)]).wait();
                (one, many)
            })
            .expect("a thread")
            .join()
            .expect("the thread returned");
        match got {
            (Ok(one), Ok(many)) => {
                assert_eq!(one, depth);
                assert_eq!(many, [depth, 3]);
            }
            // The worker may run out of stack decoding so deep a value: that is its death,
            // not the program's.
            (one, many) => {
                for r in [one.map(|_| ()), many.map(|_| ())] {
                    assert!(
                        matches!(r, Ok(()) | Err(Error::WorkerDied { .. })),
                        "depth {depth}: {r:?}"
                    );
                }
            }
        }
    }
}
