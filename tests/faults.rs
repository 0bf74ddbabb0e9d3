//! The fault matrix, with real processes: entries that panic, crash, hang, eat memory or
//! scribble on their channel; workers that cannot be replaced; a supervisor that is killed;
//! worker command lines typed by hand.
//!
//! No assertion is about how fast something is, only that it happens well within a generous
//! deadline: the machine may be busy.

use ppool::{Error, ExitCause, ProcessPool, Transport, pool_entry};
use ppool_tests::TempDir;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

ppool::test_support!();

/// The helper binary: a `ppool::main!` program that starts a pool and prints its workers.
const HELPER: &str = env!("CARGO_BIN_EXE_ppool-test-supervisor");

// ---------------------------------------------------------------------------------------------
// Entries
// ---------------------------------------------------------------------------------------------

/// What the `act` entry does in the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Act {
    /// Returns the worker's pid.
    Pid,
    /// Panics with this message.
    Panic(String),
    /// `std::process::abort()`.
    Abort,
    /// Sleeps this many milliseconds, then aborts.
    AbortAfter(u64),
    /// Writes through a bad pointer: a real segmentation fault.
    Segv,
    /// `std::process::exit(n)`.
    Exit(i32),
    /// Sends itself SIGKILL.
    KillSelf,
    /// Sleeps this many milliseconds, then returns the pid.
    Sleep(u64),
    /// Creates the file `path` (so the test knows the task is running), then sleeps `ms`.
    AnnounceThenSleep { path: String, ms: u64 },
    /// Allocates and touches `mb` MiB, holds them `hold_ms`, then returns the pid.
    Hog { mb: usize, hold_ms: u64 },
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

#[pool_entry]
fn act(what: Act) -> u32 {
    match what {
        Act::Pid => {}
        Act::Panic(message) => panic!("{message}"),
        Act::Abort => {
            no_core_dump();
            std::process::abort()
        }
        Act::AbortAfter(ms) => {
            std::thread::sleep(Duration::from_millis(ms));
            no_core_dump();
            std::process::abort()
        }
        Act::Segv => {
            no_core_dump();
            // A non-null, aligned address that is never mapped: the write faults.
            let bad = std::ptr::without_provenance_mut::<u8>(16);
            // SAFETY: not safe at all; that is the point. The process dies of SIGSEGV.
            unsafe { bad.write_volatile(1) };
            unreachable!("the write to address 16 did not fault")
        }
        Act::Exit(code) => std::process::exit(code),
        Act::KillSelf => {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
            std::thread::sleep(Duration::from_secs(60));
        }
        Act::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
        Act::AnnounceThenSleep { path, ms } => {
            let _ = std::fs::write(path, b"running");
            std::thread::sleep(Duration::from_millis(ms));
        }
        Act::Hog { mb, hold_ms } => {
            let block = vec![1u8; mb << 20];
            let deadline = Instant::now() + Duration::from_millis(hold_ms);
            while Instant::now() < deadline {
                std::hint::black_box(&block);
                std::thread::sleep(Duration::from_millis(5));
            }
            std::hint::black_box(block);
        }
    }
    std::process::id()
}

/// Records one attempt in `dir` (a file `attempt-<k>`) and returns its number `k`, from 0.
fn record_attempt(dir: &str) -> u32 {
    for k in 0.. {
        let path = Path::new(dir).join(format!("attempt-{k}"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => return k,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot record an attempt in {dir}: {e}"),
        }
    }
    unreachable!()
}

/// Fails its first `failures` attempts (by aborting, or by panicking), then returns the number
/// of the attempt that succeeded.
#[pool_entry]
fn flaky(dir: String, failures: u32, panic: bool) -> u32 {
    let k = record_attempt(&dir);
    if k < failures {
        if panic {
            panic!("attempt {k} fails");
        }
        no_core_dump();
        std::process::abort();
    }
    k
}

/// An initializer that panics when `<dir>/fail` exists.
#[pool_entry]
fn init_unless_marker(dir: String) {
    if Path::new(&dir).join("fail").exists() {
        panic!("initializer refuses: the marker file exists");
    }
}

/// What the `scribble` entry writes straight onto its result pipe.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Scribble {
    /// A header that claims 2 GiB.
    Oversized,
    /// A frame whose body is not a RESULTS message.
    Garbage,
    /// A frame of length zero.
    Empty,
    /// A RESULTS frame for a job that does not exist (well formed as of protocol version 1;
    /// should the layout change, it is malformed instead, which is a protocol error too).
    WrongJob,
    /// Half a frame, then `exit(0)`.
    TruncatedThenExit,
    /// On shared memory: a result ring's tail that is no multiple of 8.
    RingTailGarbage,
    /// On shared memory: a result ring's tail moved past bytes no record was written to.
    RingTornRecord,
}

/// The offset of the result ring's tail in a worker's region, and the ring's data: the
/// layout the shared-memory transport documents (control lines of 128 bytes; the job ring's
/// 1 MiB of data at 4096, then the result ring's).
const RESULT_TAIL: usize = 5 * 128;

/// Stores into this worker's shared-memory region, as a worker gone bad would: `poke` gets
/// the address where the worker mapped it (found in `/proc/self/maps`).
fn poke_region(poke: impl FnOnce(*mut u8)) {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let line = maps
        .lines()
        .find(|l| l.contains("memfd:ppool-shm"))
        .expect("this worker's channel is not shared memory");
    let start = line.split('-').next().expect("an address range");
    let base = usize::from_str_radix(start, 16).expect("a hex address");
    poke(base as *mut u8);
}

/// The worker's result pipe (the channel's descriptors are no longer in the environment,
/// which a worker's own children would inherit).
fn result_fd() -> RawFd {
    ppool::__private::channel_fds().expect("not in a worker").1
}

fn write_raw(fd: RawFd, mut bytes: &[u8]) {
    // SAFETY: the channel's write end stays open for the worker's whole life.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("cannot write to the result pipe: {e}"),
        }
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[pool_entry]
fn scribble(what: Scribble) -> u32 {
    let fd = result_fd();
    match what {
        Scribble::Oversized => write_raw(fd, &(2u32 << 30).to_le_bytes()),
        Scribble::Garbage => write_raw(fd, &frame(b"this is not a ppool frame")),
        Scribble::Empty => write_raw(fd, &0u32.to_le_bytes()),
        Scribble::WrongJob => {
            let mut body = vec![14u8]; // RESULTS
            body.extend_from_slice(&u64::MAX.to_le_bytes()); // job id
            body.extend_from_slice(&1u32.to_le_bytes()); // count
            body.extend_from_slice(&0u64.to_le_bytes()); // busy nanos
            body.extend_from_slice(&0u64.to_le_bytes()); // longest task nanos
            body.push(0); // outcome: ok
            body.extend_from_slice(&1u32.to_le_bytes());
            body.push(7); // the value 7, as postcard writes an u32
            write_raw(fd, &frame(&body));
        }
        Scribble::TruncatedThenExit => {
            write_raw(fd, &100u32.to_le_bytes());
            write_raw(fd, &[14, 1, 2, 3]);
            std::process::exit(0);
        }
        // SAFETY (both): the tail is an 8-aligned word of the mapping; the supervisor reads
        // it as an atomic, and this is the worker breaking the protocol on purpose.
        Scribble::RingTailGarbage => poke_region(|base| unsafe {
            let tail = base.add(RESULT_TAIL).cast::<std::sync::atomic::AtomicU64>();
            (*tail).store(12_345, std::sync::atomic::Ordering::SeqCst);
        }),
        Scribble::RingTornRecord => poke_region(|base| unsafe {
            let tail = &*base.add(RESULT_TAIL).cast::<std::sync::atomic::AtomicU64>();
            tail.fetch_add(64, std::sync::atomic::Ordering::SeqCst);
        }),
    }
    // Whatever the pool makes of it, this worker is not to answer any more.
    std::thread::sleep(Duration::from_secs(60));
    std::process::id()
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// How many attempts the tasks recorded in `dir` (files named `attempt-*`).
fn attempts(dir: &TempDir) -> usize {
    dir.files()
        .iter()
        .filter(|f| f.starts_with("attempt-"))
        .count()
}

/// `(state, ppid)` of a process, from `/proc/<pid>/stat`; `None` if there is no such process.
fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Gone, or a zombie nobody will ask anything of any more: every thread of it, since a
/// worker in a test binary serves on a libtest thread, which may outlive the main thread by a
/// moment when the process is killed.
fn is_gone(pid: u32) -> bool {
    if !matches!(proc_state(pid), None | Some(('Z' | 'X', _))) {
        return false;
    }
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    threads.flatten().all(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        matches!(state, None | Some("Z" | "X"))
    })
}

/// Polls until every pid is gone; returns those still there at the deadline.
fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| !is_gone(p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a child to exit; kills it and fails the test if it is still running at the
/// deadline.
fn wait_exit(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn pid_of(child: &Child) -> rustix::process::Pid {
    rustix::process::Pid::from_raw(child.id() as i32).expect("a child's pid is positive")
}

/// A one-worker pool of `act`.
fn one_worker() -> ProcessPool<act> {
    ProcessPool::<act>::builder()
        .n_jobs(1)
        .build()
        .expect("a pool of one worker")
}

// ---------------------------------------------------------------------------------------------
// An entry panics
// ---------------------------------------------------------------------------------------------

#[test]
fn panic_is_reported_and_the_same_worker_goes_on() {
    let _deadline = ppool_tests::deadline();
    let pool = one_worker();
    let before = pool.call(Act::Pid).unwrap();
    let e = pool.call(Act::Panic("boom 42".into())).unwrap_err();
    match &e {
        Error::Panicked {
            entry,
            worker,
            message,
            location,
            backtrace,
            ..
        } => {
            let asked = ["RUST_BACKTRACE", "RUST_LIB_BACKTRACE"]
                .iter()
                .any(|v| std::env::var_os(v).is_some_and(|v| v != "0"));
            assert!(
                asked || backtrace.is_none(),
                "no backtrace unless asked for: {backtrace:?}"
            );
            assert!(entry.ends_with("act"), "{e}");
            assert_eq!(*worker, 0, "{e}");
            assert_eq!(message, "boom 42");
            let location = location.as_deref().unwrap_or("");
            assert!(location.contains("faults.rs"), "{e}");
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    let text = e.to_string();
    assert!(text.contains("boom 42") && text.contains("act") && text.contains("worker 0"));
    assert_eq!(
        pool.call(Act::Pid).unwrap(),
        before,
        "the worker was replaced"
    );
    assert!(
        pool.detected_worker_error().is_none(),
        "a panic is no worker failure"
    );
}

// ---------------------------------------------------------------------------------------------
// An entry kills its worker
// ---------------------------------------------------------------------------------------------

/// Runs `what` on a one-worker pool; it must end as `WorkerDied` with `cause`, and the worker
/// must be replaced.
fn assert_dies(what: Act, cause: ExitCause) {
    let pool = one_worker();
    let before = pool.call(Act::Pid).unwrap();
    let e = pool.call(what.clone()).unwrap_err();
    match &e {
        Error::WorkerDied {
            entry,
            worker,
            pid,
            cause: got,
            ..
        } => {
            assert!(entry.ends_with("act"), "{e}");
            assert_eq!(*worker, 0, "{e}");
            assert_eq!(*pid, before, "{e}");
            assert_eq!(*got, cause, "{what:?}: {e}");
        }
        other => panic!("{what:?}: expected WorkerDied, got {other:?}"),
    }
    let text = e.to_string();
    assert!(text.contains("act") && text.contains("worker 0"), "{text}");
    assert!(
        matches!(pool.detected_worker_error(), Some(Error::WorkerDied { pid, .. }) if pid == before)
    );
    let after = pool.call(Act::Pid).unwrap();
    assert_ne!(after, before, "the dead worker answered");
    assert!(wait_gone(&[before], Duration::from_secs(5)).is_empty());
    assert!(pool.is_running());
}

#[test]
fn abort_is_worker_died_by_sigabrt() {
    let _deadline = ppool_tests::deadline();
    assert_dies(Act::Abort, ExitCause::Signal(6));
}

#[test]
fn segfault_is_worker_died_by_sigsegv() {
    let _deadline = ppool_tests::deadline();
    assert_dies(Act::Segv, ExitCause::Signal(11));
}

#[test]
fn exit_is_worker_died_with_its_code() {
    let _deadline = ppool_tests::deadline();
    assert_dies(Act::Exit(7), ExitCause::Code(7));
    assert_dies(Act::Exit(0), ExitCause::Code(0));
}

#[test]
fn self_sigkill_is_worker_died_by_sigkill() {
    let _deadline = ppool_tests::deadline();
    assert_dies(Act::KillSelf, ExitCause::Signal(9));
}

#[test]
fn worker_killed_from_outside_is_worker_died_and_replaced() {
    let _deadline = ppool_tests::deadline();
    let pool = one_worker();
    let before = pool.call(Act::Pid).unwrap();
    let dir = TempDir::new("outside-kill");
    let marker = dir.path().join("running");
    let task = pool.submit(Act::AnnounceThenSleep {
        path: marker.to_string_lossy().into_owned(),
        ms: 30_000,
    });
    // Kill only once the task runs: a worker killed while idle is not blamed on the next task.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = rustix::process::Pid::from_raw(before as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let started = Instant::now();
    let e = task.wait().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        matches!(
            e,
            Error::WorkerDied { pid, cause: ExitCause::Signal(9), worker: 0, .. } if pid == before
        ),
        "{e:?}"
    );
    assert_ne!(pool.call(Act::Pid).unwrap(), before);
}

/// Runs a batch of 64 tasks, two of which crash their worker, and checks each task's result.
fn crash_in_batch(pool: &ProcessPool<act>) {
    let tasks: Vec<Act> = (0..64)
        .map(|i| match i {
            10 => Act::Abort,
            40 => Act::Exit(3),
            _ => Act::Pid,
        })
        .collect();
    let results = pool.batch(tasks).wait_all();
    assert_eq!(results.len(), 64);
    for (i, r) in results.iter().enumerate() {
        match (i, r) {
            (10, Err(Error::WorkerDied { cause, .. })) => assert_eq!(*cause, ExitCause::Signal(6)),
            (40, Err(Error::WorkerDied { cause, .. })) => assert_eq!(*cause, ExitCause::Code(3)),
            (10 | 40, other) => panic!("task {i}: expected WorkerDied, got {other:?}"),
            (_, Ok(pid)) => assert_ne!(*pid, std::process::id()),
            (_, Err(e)) => panic!("task {i} should not be affected by the crashes, got {e}"),
        }
    }
    assert!(matches!(
        pool.detected_worker_error(),
        Some(Error::WorkerDied { .. })
    ));
    assert_eq!(pool.batch(vec![Act::Pid; 8]).wait().unwrap().len(), 8);
}

#[test]
fn crash_in_a_batch_fails_only_that_task_one_task_per_chunk() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<act>::builder()
        .n_jobs(2)
        .chunk_size(1)
        .build()
        .unwrap();
    crash_in_batch(&pool);
}

#[test]
fn crash_in_a_batch_fails_only_that_task_adaptive_chunks() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<act>::new(2).unwrap();
    crash_in_batch(&pool);
}

#[test]
fn crash_in_a_stream_fails_only_that_task() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<act>::new(2).unwrap();
    let tasks = (0..200).map(|i| if i == 77 { Act::Abort } else { Act::Pid });
    for (i, r) in pool.map(tasks).enumerate() {
        match (i, r) {
            (77, Err(Error::WorkerDied { .. })) => {}
            (77, other) => panic!("task 77: expected WorkerDied, got {other:?}"),
            (_, Ok(_)) => {}
            (_, Err(e)) => panic!("task {i} should not be affected by the crash, got {e}"),
        }
    }
}

#[test]
fn idle_worker_killed_from_outside_does_not_fail_the_next_task() {
    let _deadline = ppool_tests::deadline();
    let pool = one_worker();
    let before = pool.call(Act::Pid).unwrap();
    let pid = rustix::process::Pid::from_raw(before as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    // Dead (a zombie until the pool reaps it) before the next task is sent.
    assert!(wait_gone(&[before], Duration::from_secs(10)).is_empty());
    // That task never reached the dead worker: it runs on the replacement.
    let after = pool
        .call(Act::Pid)
        .expect("the task after an idle worker's death");
    assert_ne!(after, before);
    assert!(
        matches!(pool.detected_worker_error(), Some(Error::WorkerDied { pid, .. }) if pid == before),
        "the death is still reported: {:?}",
        pool.detected_worker_error()
    );
}

#[test]
fn crash_among_concurrent_calls_fails_only_that_call() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<act>::new(2).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let pool = &pool;
                s.spawn(move || {
                    let what = if i == 5 {
                        Act::AbortAfter(50)
                    } else {
                        Act::Sleep(20)
                    };
                    (i, pool.call(what))
                })
            })
            .collect();
        for h in handles {
            let (i, r) = h.join().unwrap();
            if i == 5 {
                assert!(matches!(r, Err(Error::WorkerDied { .. })), "{r:?}");
            } else {
                assert!(r.is_ok(), "call {i}: {r:?}");
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Timeouts and memory limits
// ---------------------------------------------------------------------------------------------

#[test]
fn timeout_kills_and_replaces_the_worker() {
    let _deadline = ppool_tests::deadline();
    let timeout = Duration::from_millis(300);
    let pool = ProcessPool::<act>::builder()
        .n_jobs(1)
        .task_timeout(timeout)
        .build()
        .unwrap();
    let before = pool.call(Act::Pid).unwrap();
    let started = Instant::now();
    let e = pool.call(Act::Sleep(60_000)).unwrap_err();
    let took = started.elapsed();
    match &e {
        Error::Timeout {
            entry,
            worker,
            pid,
            timeout: t,
            ..
        } => {
            assert!(entry.ends_with("act"));
            assert_eq!((*worker, *pid, *t), (0, before, timeout));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(took < timeout * 10, "the timeout took {took:?}");
    assert!(matches!(
        pool.detected_worker_error(),
        Some(Error::Timeout { .. })
    ));
    let after = pool.call(Act::Pid).unwrap();
    assert_ne!(after, before);
    assert!(wait_gone(&[before], Duration::from_secs(5)).is_empty());
    // Quick tasks are not affected by the timeout.
    assert_eq!(
        pool.batch(vec![Act::Sleep(1); 20]).wait().unwrap().len(),
        20
    );
}

#[test]
fn memory_limit_kills_and_replaces_the_worker() {
    let _deadline = ppool_tests::deadline();
    let limit = 100 << 20;
    let pool = ProcessPool::<act>::builder()
        .n_jobs(1)
        .worker_memory_limit(limit)
        .build()
        .unwrap();
    let before = pool.call(Act::Pid).unwrap();
    let e = pool
        .call(Act::Hog {
            mb: 300,
            hold_ms: 20_000,
        })
        .unwrap_err();
    match &e {
        Error::MemoryLimit {
            entry,
            worker,
            pid,
            limit: l,
            rss,
            ..
        } => {
            assert!(entry.ends_with("act"));
            assert_eq!((*worker, *pid, *l), (0, before, limit));
            assert!(*rss > limit, "{e}");
        }
        other => panic!("expected MemoryLimit, got {other:?}"),
    }
    assert_ne!(pool.call(Act::Pid).unwrap(), before);
    // A task under the limit runs.
    assert!(
        pool.call(Act::Hog {
            mb: 10,
            hold_ms: 50
        })
        .is_ok()
    );
}

// ---------------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------------

fn flaky_pool(retries: u32) -> ProcessPool<flaky> {
    ProcessPool::<flaky>::builder()
        .n_jobs(1)
        .retries(retries)
        .build()
        .unwrap()
}

#[test]
fn retries_rerun_a_task_whose_worker_died() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("retry-ok");
    let pool = flaky_pool(1);
    assert_eq!(pool.call((dir.arg(), 1, false)).unwrap(), 1);
    assert_eq!(attempts(&dir), 2);
}

#[test]
fn without_retries_a_death_is_reported() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("retry-none");
    let pool = flaky_pool(0);
    let e = pool.call((dir.arg(), 1, false)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::WorkerDied {
                cause: ExitCause::Signal(6),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(attempts(&dir), 1);
}

#[test]
fn retries_are_bounded() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("retry-bounded");
    let pool = flaky_pool(2);
    let e = pool.call((dir.arg(), 100, false)).unwrap_err();
    assert!(matches!(e, Error::WorkerDied { .. }), "{e:?}");
    assert_eq!(attempts(&dir), 3, "one attempt and two retries");
    assert!(pool.is_running());
}

#[test]
fn panics_are_not_retried() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("retry-panic");
    let pool = flaky_pool(3);
    let e = pool.call((dir.arg(), 1, true)).unwrap_err();
    match &e {
        Error::Panicked { message, .. } => assert_eq!(message, "attempt 0 fails"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(attempts(&dir), 1);
}

#[test]
fn timeouts_are_not_retried() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<act>::builder()
        .n_jobs(1)
        .retries(3)
        .task_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let e = pool.call(Act::Sleep(60_000)).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// A worker cannot be started
// ---------------------------------------------------------------------------------------------

#[test]
fn initializer_panicking_at_build_is_a_spawn_error() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("init-build");
    std::fs::write(dir.path().join("fail"), b"").unwrap();
    let started = Instant::now();
    let e = ProcessPool::<act>::builder()
        .n_jobs(2)
        .initializer::<init_unless_marker>(dir.arg())
        .build()
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20));
    match &e {
        Error::Spawn { message, .. } => {
            assert!(message.contains("init_unless_marker"), "{e}");
            assert!(message.contains("the marker file exists"), "{e}");
        }
        other => panic!("expected Spawn, got {other:?}"),
    }
}

#[test]
fn replacement_that_cannot_start_fails_pending_tasks() {
    let _deadline = ppool_tests::deadline();
    let dir = TempDir::new("init-replace");
    let pool = ProcessPool::<act>::builder()
        .n_jobs(1)
        .initializer::<init_unless_marker>(dir.arg())
        .build()
        .unwrap();
    let first = pool.call(Act::Pid).unwrap();
    // From now on, no new worker passes its initializer.
    std::fs::write(dir.path().join("fail"), b"").unwrap();
    let started = Instant::now();
    let crash = pool.submit(Act::AbortAfter(300));
    let pending: Vec<_> = (0..3).map(|_| pool.submit(Act::Pid)).collect();
    let e = crash.wait().unwrap_err();
    assert!(matches!(e, Error::WorkerDied { .. }), "{e:?}");
    for task in pending {
        match task.wait() {
            Err(Error::Spawn { message, .. }) => {
                assert!(message.contains("init_unless_marker"), "{message}");
            }
            other => panic!("expected Spawn, got {other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!pool.is_running());
    assert!(matches!(
        pool.detected_worker_error(),
        Some(Error::Spawn { .. })
    ));
    // Later calls fail at once, without starting workers in a loop.
    let started = Instant::now();
    assert!(matches!(pool.call(Act::Pid), Err(Error::Spawn { .. })));
    let (tx, rx) = std::sync::mpsc::channel();
    pool.call_with(Act::Pid, move |r| {
        let _ = tx.send(r);
    });
    let r = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(matches!(r, Err(Error::Spawn { .. })), "{r:?}");
    assert!(matches!(
        pool.batch(vec![Act::Pid; 3]).wait(),
        Err(Error::Spawn { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(wait_gone(&[first], Duration::from_secs(5)).is_empty());
}

/// With `RUST_LIB_BACKTRACE=1` in the workers' environment, a panic comes back with the
/// worker's backtrace, as text that names the entry.
#[test]
fn a_panic_brings_the_workers_backtrace_when_asked_for() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<act>::builder()
        .n_jobs(1)
        .env("RUST_LIB_BACKTRACE", "1")
        .build()
        .unwrap();
    match pool.call(Act::Panic("traced".into())) {
        Err(Error::Panicked {
            message, backtrace, ..
        }) => {
            assert_eq!(message, "traced");
            let trace = backtrace.expect("a backtrace was asked for");
            assert!(
                trace.contains("act"),
                "the backtrace names the entry:\n{trace}"
            );
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A worker breaks the protocol
// ---------------------------------------------------------------------------------------------

/// The pipe transport's frames are scribbled on through the pipe; the shared-memory
/// transport's rings through the mapping.
fn transport_for(what: Scribble) -> Transport {
    match what {
        Scribble::RingTailGarbage | Scribble::RingTornRecord => Transport::SharedMemory,
        _ => Transport::Pipes,
    }
}

fn assert_protocol_error(what: Scribble, expect: &[&str]) {
    let pool = ProcessPool::<scribble>::builder()
        .n_jobs(1)
        .transport(transport_for(what))
        .build()
        .unwrap();
    let started = Instant::now();
    let e = pool.call(what).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20));
    match &e {
        Error::Protocol {
            worker, message, ..
        } => {
            assert_eq!(*worker, 0);
            assert!(
                expect.iter().any(|x| message.contains(x)),
                "{what:?}: expected one of {expect:?} in: {e}"
            );
        }
        other => panic!("{what:?}: expected Protocol, got {other:?}"),
    }
    assert!(matches!(
        pool.detected_worker_error(),
        Some(Error::Protocol { .. })
    ));
    assert!(pool.is_running(), "{what:?}: the worker was not replaced");
}

#[test]
fn oversized_frame_is_a_protocol_error() {
    let _deadline = ppool_tests::deadline();
    assert_protocol_error(Scribble::Oversized, &["limit"]);
}

#[test]
fn garbage_frame_is_a_protocol_error() {
    let _deadline = ppool_tests::deadline();
    assert_protocol_error(Scribble::Garbage, &["RESULTS"]);
}

#[test]
fn empty_frame_is_a_protocol_error() {
    let _deadline = ppool_tests::deadline();
    assert_protocol_error(Scribble::Empty, &["empty"]);
}

#[test]
fn results_for_another_job_are_a_protocol_error() {
    let _deadline = ppool_tests::deadline();
    assert_protocol_error(Scribble::WrongJob, &["job", "malformed"]);
}

#[test]
fn a_ring_tail_out_of_bounds_is_a_protocol_error() {
    let _deadline = ppool_tests::deadline();
    assert_protocol_error(Scribble::RingTailGarbage, &["corrupt shared memory"]);
}

#[test]
fn a_ring_record_never_written_is_a_protocol_error() {
    let _deadline = ppool_tests::deadline();
    assert_protocol_error(Scribble::RingTornRecord, &["corrupt shared memory"]);
}

#[test]
fn truncated_frame_then_exit_is_worker_died() {
    let _deadline = ppool_tests::deadline();
    // The worker wrote half a frame and exited: it died; its exit status says how.
    let pool = ProcessPool::<scribble>::builder()
        .n_jobs(1)
        .transport(Transport::Pipes)
        .build()
        .unwrap();
    let e = pool.call(Scribble::TruncatedThenExit).unwrap_err();
    assert!(
        matches!(
            e,
            Error::WorkerDied {
                cause: ExitCause::Code(0),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(pool.is_running());
}

#[test]
fn the_pool_goes_on_after_protocol_errors() {
    let _deadline = ppool_tests::deadline();
    let pipes = [
        Scribble::Oversized,
        Scribble::Garbage,
        Scribble::Empty,
        Scribble::WrongJob,
        Scribble::TruncatedThenExit,
    ];
    let rings = [Scribble::RingTailGarbage, Scribble::RingTornRecord];
    for (transport, all) in [
        (Transport::Pipes, &pipes[..]),
        (Transport::SharedMemory, &rings),
    ] {
        let pool = ProcessPool::<scribble>::builder()
            .n_jobs(2)
            .transport(transport)
            .build()
            .unwrap();
        let results = pool.batch(all.iter().copied().cycle().take(10)).wait_all();
        for r in &results {
            assert!(
                r.as_ref().is_err_and(Error::is_worker_failure),
                "{transport:?}: expected a worker failure, got {r:?}"
            );
        }
        assert!(pool.is_running());
    }
}

// ---------------------------------------------------------------------------------------------
// Worker command lines typed by hand
// ---------------------------------------------------------------------------------------------

/// Runs the helper binary as a worker by hand; returns its status and stderr.
fn run_by_hand(configure: impl FnOnce(&mut Command), stdin: Option<&[u8]>) -> (ExitStatus, String) {
    let mut command = Command::new(HELPER);
    command
        .arg("--ppool-worker")
        .env_remove("PPOOL_WORKER_CHANNEL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    configure(&mut command);
    let mut child = command.spawn().expect("cannot start the helper binary");
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // The worker may exit before reading: a broken pipe is fine.
        let _ = pipe.write_all(bytes);
    }
    let mut stderr = child.stderr.take().expect("stderr");
    let status = wait_exit(
        &mut child,
        Duration::from_secs(15),
        "a worker started by hand",
    );
    let mut text = String::new();
    let _ = stderr.read_to_string(&mut text);
    (status, text)
}

fn assert_refused(status: ExitStatus, stderr: &str, why: &str) {
    assert!(
        !status.success(),
        "exit status {status:?}; stderr: {stderr}"
    );
    assert!(
        status.code().is_some(),
        "it crashed: {status:?}; stderr: {stderr}"
    );
    assert!(
        stderr.contains("ppool worker") && stderr.contains("--ppool-worker"),
        "unclear message: {stderr}"
    );
    assert!(stderr.contains(why), "expected {why:?} in: {stderr}");
    assert!(stderr.lines().count() <= 3, "not a short message: {stderr}");
}

#[test]
fn hand_started_worker_without_a_channel_exits_with_a_message() {
    let _deadline = ppool_tests::deadline();
    let (status, stderr) = run_by_hand(|_| {}, None);
    assert_refused(status, &stderr, "PPOOL_WORKER_CHANNEL is not set");
    let (status, stderr) = run_by_hand(|_| {}, Some(b"\x05\0\0\0garbage on stdin\n\xff\xfe"));
    assert_refused(status, &stderr, "PPOOL_WORKER_CHANNEL is not set");
}

#[test]
fn hand_started_worker_with_a_bad_channel_exits_with_a_message() {
    let _deadline = ppool_tests::deadline();
    for (value, why) in [
        ("garbage", "no valid read descriptor"),
        ("0,1,1048576", "standard stream"),
        ("900,901,1048576", "not open"),
        ("", "no valid read descriptor"),
    ] {
        let (status, stderr) = run_by_hand(
            |c| {
                c.env("PPOOL_WORKER_CHANNEL", value);
            },
            Some(b"garbage"),
        );
        assert_refused(status, &stderr, why);
    }
}

#[test]
fn hand_started_worker_on_non_pipe_descriptors_exits_with_a_message() {
    let _deadline = ppool_tests::deadline();
    let a = std::fs::File::open("/dev/null").unwrap();
    let b = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let fds = [a.as_raw_fd(), b.as_raw_fd()];
    let (status, stderr) = run_by_hand(
        |c| {
            c.env(
                "PPOOL_WORKER_CHANNEL",
                format!("{},{},1048576", fds[0], fds[1]),
            );
            inherit_fds(c, fds);
        },
        None,
    );
    assert_refused(status, &stderr, "not a pipe");
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

/// A HELLO body: kind 1, magic, version, build id, token, worker, pool name, entry name.
fn hello(magic: &[u8; 4], version: u32, build_id: u64, entry: &str) -> Vec<u8> {
    let mut body = vec![1u8];
    body.extend_from_slice(magic);
    body.extend_from_slice(&version.to_le_bytes());
    body.extend_from_slice(&build_id.to_le_bytes());
    body.extend_from_slice(&0x1234_5678u64.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    for s in ["by-hand", entry] {
        body.extend_from_slice(&(s.len() as u32).to_le_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    body.push(0); // no tracing forwarded
    body
}

/// Starts the helper as a worker on two real pipes, sends `greeting`, and returns its exit
/// status, everything it wrote on its result pipe, and its stderr.
fn greet_by_hand(greeting: &[u8]) -> (ExitStatus, Vec<u8>, String) {
    let (task_r, mut task_w) = std::io::pipe().unwrap();
    let (mut result_r, result_w) = std::io::pipe().unwrap();
    let fds = [task_r.as_raw_fd(), result_w.as_raw_fd()];
    let mut command = Command::new(HELPER);
    command
        .arg("--ppool-worker")
        .env(
            "PPOOL_WORKER_CHANNEL",
            format!("{},{},1048576", fds[0], fds[1]),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    inherit_fds(&mut command, fds);
    let mut child = command.spawn().expect("cannot start the helper binary");
    drop((task_r, result_w));
    let _ = task_w.write_all(greeting);
    let mut stderr = child.stderr.take().expect("stderr");
    let status = wait_exit(
        &mut child,
        Duration::from_secs(15),
        "a worker greeted by hand",
    );
    drop(task_w);
    let mut answer = Vec::new();
    result_r.read_to_end(&mut answer).unwrap();
    let mut text = String::new();
    let _ = stderr.read_to_string(&mut text);
    (status, answer, text)
}

/// Parses a REFUSE frame (kind 12, then the reason as a length-prefixed string).
fn refusal(answer: &[u8]) -> String {
    assert!(answer.len() >= 9, "no REFUSE frame: {answer:?}");
    let len = u32::from_le_bytes(answer[..4].try_into().unwrap()) as usize;
    assert_eq!(answer.len(), 4 + len, "one frame expected: {answer:?}");
    assert_eq!(answer[4], 12, "not a REFUSE frame: {answer:?}");
    let n = u32::from_le_bytes(answer[5..9].try_into().unwrap()) as usize;
    String::from_utf8(answer[9..9 + n].to_vec()).unwrap()
}

#[test]
fn worker_of_another_build_refuses_the_greeting() {
    let _deadline = ppool_tests::deadline();
    let body = hello(
        b"PPL\x01",
        ppool::__private::PROTOCOL_VERSION,
        0x0bad_b11d_dead_beef,
        "supervisor::pid",
    );
    let (status, answer, stderr) = greet_by_hand(&frame(&body));
    let why = refusal(&answer);
    assert!(why.contains("another build"), "{why}");
    assert!(!status.success(), "{status:?}");
    assert!(stderr.contains("another build"), "{stderr}");
}

#[test]
fn worker_refuses_a_greeting_that_is_not_ppool() {
    let _deadline = ppool_tests::deadline();
    for (greeting, expect) in [
        (frame(&hello(b"XXXX", 1, 1, "pid")), "magic"),
        (frame(&hello(b"PPL\x01", 99, 1, "pid")), "version 99"),
        (frame(b"\x03garbage"), "HELLO"),
    ] {
        let (status, answer, _) = greet_by_hand(&greeting);
        let why = refusal(&answer);
        assert!(why.contains(expect), "expected {expect:?} in {why:?}");
        assert!(!status.success());
    }
    // A header that claims more than the limit, and then nothing: refused as well.
    let (status, _, stderr) = greet_by_hand(&u32::MAX.to_le_bytes());
    assert!(!status.success(), "{status:?}");
    assert!(stderr.contains("ppool worker"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// The supervisor dies
// ---------------------------------------------------------------------------------------------

/// Starts the helper supervisor (in its own process group if asked) and reads its workers.
fn start_supervisor(own_group: bool) -> (Child, Vec<u32>) {
    let mut command = Command::new(HELPER);
    command
        .arg("2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if own_group {
        command.process_group(0);
    }
    let mut child = command.spawn().expect("cannot start the helper binary");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the helper supervisor did not report its workers");
        }
    };
    let workers: Vec<u32> = line
        .strip_prefix("workers ")
        .unwrap_or_else(|| panic!("unexpected line from the helper: {line:?}"))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(!workers.is_empty(), "{line:?}");
    for &w in &workers {
        assert_eq!(
            proc_state(w).map(|s| s.1),
            Some(child.id()),
            "{w} is no worker"
        );
    }
    (child, workers)
}

#[test]
fn workers_exit_when_the_supervisor_is_sigkilled() {
    let _deadline = ppool_tests::deadline();
    let (mut child, workers) = start_supervisor(false);
    rustix::process::kill_process(pid_of(&child), rustix::process::Signal::KILL).unwrap();
    let killed = Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(10), "the killed supervisor");
    assert_eq!(status.signal(), Some(9));
    let left = wait_gone(&workers, Duration::from_secs(3));
    eprintln!(
        "workers {workers:?} gone {:?} after the supervisor's SIGKILL",
        killed.elapsed()
    );
    assert!(
        left.is_empty(),
        "workers {left:?} outlived their supervisor"
    );
}

#[test]
fn ctrl_c_stops_the_supervisor_and_its_workers() {
    let _deadline = ppool_tests::deadline();
    let (mut child, workers) = start_supervisor(true);
    let group = pid_of(&child);
    rustix::process::kill_process_group(group, rustix::process::Signal::INT).unwrap();
    let status = wait_exit(
        &mut child,
        Duration::from_secs(10),
        "the supervisor after SIGINT",
    );
    assert!(!status.success(), "{status:?}");
    let left = wait_gone(&workers, Duration::from_secs(3));
    assert!(left.is_empty(), "workers {left:?} outlived Ctrl-C");
}
