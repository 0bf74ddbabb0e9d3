//! Remote workers through local command prefixes: every host is a host agent started on this
//! machine by a command such as `env PPOOL_PREFIX_TAG=… <program>`, exactly as ssh or srun
//! would start it, so these tests need no root and no cluster. They cover what a launcher can
//! do to a pool: stop reading, relay slowly, hang, print on the stream, and what a pool must do
//! to its hosts: end their agents on `join`, and never leave a caller's thread changed.
//!
//! They also cover the remote path as a user meets it (calls, batches, streams, cancel, an
//! agent killed mid-batch with and without retries, shell noise, another build, bad
//! settings), so that every `cargo test --workspace` runs it, root or not; the ssh and Slurm
//! tests of `tests/remote.rs` need the test cluster.
//!
//! Each test tags its hosts with a value of its own in `PPOOL_PREFIX_TAG`, and finds their
//! agents and workers by it in `/proc`.

use ppool::{Error, ExitCause, ProcessPool, Remote, pool_entry};
use ppool_tests::{eventually, signal};
use std::time::{Duration, Instant};

ppool::test_support!();

const TAG: &str = "PPOOL_PREFIX_TAG";
const RELAY: &str = env!("CARGO_BIN_EXE_ppool-test-relay");

/// The length of what it was given.
#[pool_entry]
fn length(bytes: Vec<u8>) -> usize {
    bytes.len()
}

/// `n` bytes, each `b`.
#[pool_entry]
fn make(n: usize, b: u8) -> Vec<u8> {
    vec![b; n]
}

/// Sleeps `ms`, then returns it.
#[pool_entry]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Writes a line to stderr, then returns `x`.
#[pool_entry]
fn say(x: u64) -> u64 {
    eprintln!("a line from task {x}");
    x
}

/// `PPOOL_PREFIX_TAG=<tag>.<this process's pid>`.
fn env_tag(tag: &str) -> String {
    ppool_tests::env_tag(TAG, tag)
}

/// The prefix `env PPOOL_PREFIX_TAG=<tag>.<pid>`.
fn tagged(tag: &str) -> Vec<String> {
    ppool_tests::tagged_prefix(TAG, tag)
}

/// The live processes whose environment holds `PPOOL_PREFIX_TAG=<tag>.<pid>`, as
/// `(pid, parent)`.
fn with_tag(tag: &str) -> Vec<(u32, u32)> {
    ppool_tests::processes_with_env(&env_tag(tag))
}

/// The agents of `tag`'s hosts: its processes whose parent is this test process.
fn agents(tag: &str) -> Vec<u32> {
    ppool_tests::children_with_env(&env_tag(tag), std::process::id())
}

/// Runs `f` on a thread of its own and gives its result, or `None` if it did not return
/// within `limit` (the thread is left behind: the test then fails on that).
fn returns_within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// Item: a host that stops reading while a large message is written to it is lost within its
/// host timeout; the call fails with `Lost`, and `cancel`, `insights` and `shutdown` return.
#[test]
fn a_host_that_stops_reading_a_large_message_is_lost_and_nothing_waits_behind_it() {
    let _deadline = ppool_tests::deadline();
    let tag = "stops-reading";
    let pool = std::sync::Arc::new(
        ProcessPool::<length>::builder()
            .remote(Remote::command(tagged(tag)).workers(2))
            .host_timeout(Duration::from_secs(2))
            .build()
            .expect("the pool starts"),
    );
    assert_eq!(pool.call(vec![1; 10]).expect("a call"), 10);
    let agent = agents(tag);
    assert_eq!(agent.len(), 1, "one agent: {agent:?}");
    signal(agent[0], libc::SIGSTOP);
    let big = pool.submit(vec![1u8; 16 << 20]);
    let other = pool.submit(vec![2u8; 16 << 20]);
    // The stream is full and nobody reads it: a cancel must not wait behind those bytes.
    let cancelled = returns_within(Duration::from_secs(5), move || other.cancel());
    assert_eq!(cancelled, Some(true), "cancel waited behind a stuck write");
    let p = std::sync::Arc::clone(&pool);
    assert!(
        returns_within(Duration::from_secs(5), move || p.insights()).is_some(),
        "insights waited behind a stuck write"
    );
    let outcome = returns_within(Duration::from_secs(30), move || big.wait());
    match outcome {
        Some(Err(Error::WorkerDied {
            cause: ExitCause::Lost,
            ..
        })) => {}
        other => panic!("the call on a stopped host: {other:?}"),
    }
    signal(agent[0], libc::SIGCONT);
    let p = std::sync::Arc::clone(&pool);
    assert!(
        returns_within(Duration::from_secs(15), move || p.shutdown()).is_some(),
        "shutdown hung"
    );
    assert!(
        eventually(Duration::from_secs(10), || with_tag(tag).is_empty()),
        "processes of the lost host are left: {:?}",
        with_tag(tag)
    );
}

/// Item: a cancel while a host receives a large transfer returns at once; the transfer goes
/// on and its task succeeds.
#[test]
fn cancel_does_not_wait_for_a_transfer_in_progress() {
    let _deadline = ppool_tests::deadline();
    let tag = "cancel-during-transfer";
    // 2 MB/s: a 12 MiB argument takes about 6 s to cross.
    let mut prefix = vec![RELAY.to_string(), "2000000".into(), "--".into()];
    prefix.extend(tagged(tag));
    let pool = ProcessPool::<length>::builder()
        .remote(Remote::command(prefix).workers(2))
        .host_timeout(Duration::from_secs(2))
        .build()
        .expect("the pool starts");
    let big = pool.submit(vec![7u8; 12 << 20]);
    std::thread::sleep(Duration::from_millis(300));
    let small = pool.submit(vec![1u8; 4]);
    let started = Instant::now();
    small.cancel();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "cancel took {took:?} behind a transfer"
    );
    assert!(matches!(small.wait(), Err(Error::Cancelled)));
    assert_eq!(big.wait().expect("the large task"), 12 << 20);
    pool.join().expect("join");
}

/// Item: a healthy but slow link is not a lost host, however long one message takes to
/// cross it: progress on a message is not silence, either way.
#[test]
fn a_slow_link_is_not_a_lost_host() {
    let _deadline = ppool_tests::deadline();
    let tag = "slow-link";
    // 3 MB/s, host timeout 2 s: each 12 MiB message takes about 4 s.
    let mut prefix = vec![RELAY.to_string(), "3000000".into(), "--".into()];
    prefix.extend(tagged(tag));
    let pool = ProcessPool::<length>::builder()
        .remote(Remote::command(prefix).workers(1))
        .host_timeout(Duration::from_secs(2))
        .build()
        .expect("the pool starts");
    assert_eq!(
        pool.call(vec![1u8; 12 << 20]).expect("a large argument"),
        12 << 20
    );
    let results = pool.entry::<make>();
    let back = results.call((12 << 20, 5)).expect("a large result");
    assert_eq!(back.len(), 12 << 20);
    assert!(back.iter().all(|&b| b == 5));
    pool.join().expect("join");
}

/// Item: `copy_program(true)` through a launcher that hangs fails `build()` with a reason
/// instead of hanging.
#[test]
fn copying_through_a_hanging_launcher_fails_the_build() {
    let _deadline = ppool_tests::deadline();
    let started = Instant::now();
    let built = ProcessPool::<length>::builder()
        .remote(
            Remote::command(["sh", "-c", "exec sleep 1000"])
                .workers(1)
                .copy_program(true),
        )
        .host_timeout(Duration::from_secs(1))
        .build();
    match built {
        Err(Error::Spawn {
            message: reason, ..
        }) => {
            assert!(reason.contains("copy"), "{reason}");
        }
        other => panic!("a hanging copy: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// Item: `Duration::MAX` means "no limit" for every timeout of a remote pool: it builds,
/// runs, and joins.
#[test]
fn unbounded_timeouts_work_with_remote_hosts() {
    let _deadline = ppool_tests::deadline();
    let tag = "unbounded";
    let pool = ProcessPool::<nap>::builder()
        .remote(Remote::command(tagged(tag)).workers(2))
        .host_timeout(Duration::MAX)
        .init_timeout(Duration::MAX)
        .exit_timeout(Duration::MAX)
        .task_timeout(Duration::MAX)
        .worker_exit::<nap>(1)
        .build()
        .expect("a remote pool with unbounded timeouts");
    assert_eq!(
        pool.batch([1, 2, 3]).wait().expect("a batch"),
        vec![1, 2, 3]
    );
    pool.join().expect("join");
    // Each worker's exit hook ran, without a limit, and its result came back.
    let hooks = pool.worker_exit_results::<nap>().expect("the exit hooks");
    assert_eq!(hooks.len(), 2, "{hooks:?}");
    assert!(hooks.iter().all(|h| h == &Ok(1)), "{hooks:?}");
    assert!(with_tag(tag).is_empty(), "{:?}", with_tag(tag));
}

/// The peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Item: text on the launcher's stdout (after the agent ended, in the middle of the stream, or
/// stderr merged into it) costs no memory, and a host whose stream it broke is lost with an
/// error that says what came.
#[test]
fn text_on_the_stream_allocates_nothing_and_says_what_came() {
    let _deadline = ppool_tests::deadline();
    let before = peak_rss();
    // After the agent exits.
    let after_exit = ProcessPool::<nap>::builder()
        .remote(
            Remote::command([
                "sh",
                "-c",
                "\"$@\"; echo 'Warning: the agent has ended'; sleep 1",
                "sh",
                "env",
                &env_tag("after-exit"),
            ])
            .workers(1),
        )
        .build()
        .expect("the pool starts");
    assert_eq!(after_exit.call(1).expect("a call"), 1);
    after_exit.join().expect("join");
    // In the middle of the stream: the start fails, or the host is lost later, and either
    // way the error quotes what came.
    let mid = ProcessPool::<nap>::builder()
        .remote(
            Remote::command([
                "sh",
                "-c",
                "\"$@\" & sleep 2; echo 'Warning: a launcher speaks'; wait",
                "sh",
                "env",
                &env_tag("mid-stream"),
            ])
            .workers(1),
        )
        .build();
    let said = match mid {
        Err(e) => e.to_string(),
        Ok(mid) => {
            std::thread::sleep(Duration::from_millis(2500));
            let lost = mid.call(1);
            assert!(
                matches!(
                    lost,
                    Err(Error::WorkerDied {
                        cause: ExitCause::Lost,
                        ..
                    }) | Err(Error::Spawn { .. })
                        | Err(Error::Closed)
                ),
                "a call after text broke the stream: {lost:?}"
            );
            mid.detected_worker_error()
                .map_or_else(String::new, |e| e.to_string())
        }
    };
    assert!(
        said.contains("Warning:"),
        "the error does not say what came: {said}"
    );
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 256 << 20,
        "the peak resident memory grew by {grown} bytes"
    );
    // stderr merged into stdout: the agent sees it and says so.
    let merged = ProcessPool::<say>::builder()
        .remote(
            Remote::command([
                "sh",
                "-c",
                "exec \"$@\" 2>&1",
                "sh",
                "env",
                &env_tag("merged"),
            ])
            .workers(1),
        )
        .build();
    match merged {
        Err(Error::Spawn { message, .. }) => {
            assert!(message.contains("same pipe as its stdout"), "{message}");
        }
        other => panic!("stderr merged into the stream: {other:?}"),
    }
    for tag in ["after-exit", "mid-stream", "merged"] {
        assert!(
            eventually(Duration::from_secs(10), || with_tag(tag).is_empty()),
            "{tag}: {:?}",
            with_tag(tag)
        );
    }
}

/// Item: `join()` and `shutdown()` end the hosts' agents and reap their launchers before they
/// return, not when the pool value is dropped.
#[test]
fn join_and_shutdown_end_the_agents() {
    let _deadline = ppool_tests::deadline();
    for (tag, join) in [("join-ends", true), ("shutdown-ends", false)] {
        let pool = ProcessPool::<nap>::builder()
            .remote(Remote::command(tagged(&format!("{tag}-a"))).workers(2))
            .remote(Remote::command(tagged(&format!("{tag}-b"))).workers(2))
            .build()
            .expect("the pool starts");
        assert_eq!(pool.batch([1, 2, 3, 4]).wait().expect("a batch").len(), 4);
        assert_eq!(agents(&format!("{tag}-a")).len(), 1);
        if join {
            pool.join().expect("join");
        } else {
            pool.shutdown();
        }
        for host in ["a", "b"] {
            let left = with_tag(&format!("{tag}-{host}"));
            assert!(left.is_empty(), "{tag}: processes left: {left:?}");
        }
        // The pool value still lives here: nothing waited for its drop.
        assert!(!pool.is_running());
    }
}

/// The signals blocked on the calling thread, from `/proc/thread-self/status`.
fn blocked_here() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Item: a remote pool's `build`, `call` and `cancel` leave SIGPIPE as they found it on the
/// caller's thread.
#[test]
fn a_callers_thread_keeps_its_signal_mask() {
    let _deadline = ppool_tests::deadline();
    let mask = std::thread::spawn(|| {
        let before = blocked_here();
        let pool = ProcessPool::<nap>::builder()
            .remote(Remote::command(tagged("mask")).workers(1))
            .build()
            .expect("the pool starts");
        assert_eq!(pool.call(1).expect("a call"), 1);
        let t = pool.submit(2_000);
        std::thread::sleep(Duration::from_millis(100));
        t.cancel();
        let after = blocked_here();
        pool.join().expect("join");
        (before, after)
    })
    .join()
    .expect("the thread");
    let pipe = 1u64 << (libc::SIGPIPE - 1);
    assert_eq!(mask.0 & pipe, 0, "SIGPIPE was blocked before");
    assert_eq!(
        mask.1 & pipe,
        0,
        "the pool left SIGPIPE blocked on the caller's thread"
    );
}

// ---------------------------------------------------------------------------------------------
// The remote path as a user meets it, on hosts anyone can start.
// ---------------------------------------------------------------------------------------------

/// A `ppool::main!` program of another build than this test binary (other entries).
const OTHER_BUILD: &str = env!("CARGO_BIN_EXE_ppool-test-supervisor");

/// `x * x`, and the value of `PPOOL_PREFIX_TAG` where it ran (without the pid): which host it
/// was.
#[pool_entry]
fn square_where(x: u64) -> (u64, String) {
    let tag = std::env::var(TAG).unwrap_or_default();
    let host = tag.rsplit_once('.').map_or(tag.as_str(), |(host, _)| host);
    (x * x, host.to_string())
}

/// Appends `i` to the file `log` (one `write` of a whole line, `O_APPEND`), sleeps `ms`, and
/// returns `i`.
#[pool_entry]
fn log_then_sleep(log: String, i: u64, ms: u64) -> u64 {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log)
        .unwrap_or_else(|e| panic!("cannot open the log {log}: {e}"));
    file.write_all(format!("{i}\n").as_bytes())
        .expect("the log takes a line");
    drop(file);
    std::thread::sleep(Duration::from_millis(ms));
    i
}

/// Sleeps `ms`, then says where it ran, as `square_where` does.
#[pool_entry]
fn nap_where(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    square_where(0).1
}

fn two_hosts(tag: &str) -> ppool::Builder<square_where> {
    ProcessPool::<square_where>::builder()
        .remote(Remote::command(tagged(&format!("{tag}-a"))).workers(2))
        .remote(Remote::command(tagged(&format!("{tag}-b"))).workers(2))
}

/// `call`, a batch, both streams and a cancel on two command-prefix hosts: every result right,
/// and both hosts used.
#[test]
fn calls_batches_streams_and_cancel_on_two_hosts() {
    let _deadline = ppool_tests::deadline();
    let pool = two_hosts("use").build().expect("the pool starts");
    assert_eq!(pool.n_jobs(), 4);
    assert_eq!(pool.call(7).expect("a call").0, 49);
    let batch = pool.batch(0..2_000u64).wait().expect("a batch");
    assert_eq!(
        batch.iter().map(|r| r.0).collect::<Vec<_>>(),
        (0..2_000u64).map(|x| x * x).collect::<Vec<_>>()
    );
    // Four calls at once, each holding a worker for a while, take all four: both hosts.
    let slow: Vec<String> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..4)
            .map(|_| s.spawn(|| pool.entry::<nap_where>().call(500).expect("a slow call")))
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().expect("a caller"))
            .collect()
    });
    let hosts: std::collections::BTreeSet<&str> = slow.iter().map(String::as_str).collect();
    assert_eq!(
        hosts.into_iter().collect::<Vec<_>>(),
        vec!["use-a", "use-b"],
        "four slow calls at once on four idle workers did not use both hosts"
    );
    let ordered: Vec<u64> = pool
        .map(0..500u64)
        .map(|r| r.expect("a streamed result").0)
        .collect();
    assert_eq!(ordered, (0..500u64).map(|x| x * x).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = pool
        .map_unordered(0..500u64)
        .map(|r| r.expect("a streamed result").0)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, ordered);
    let naps = pool.entry::<nap>();
    let long = naps.submit(30_000);
    std::thread::sleep(Duration::from_millis(200));
    assert!(long.cancel());
    assert!(matches!(long.wait(), Err(Error::Cancelled)));
    assert_eq!(pool.call(3).expect("the pool goes on").0, 9);
    let workers = pool.insights();
    let named: Vec<String> = workers.workers.iter().map(|w| w.host.clone()).collect();
    assert!(
        named
            .iter()
            .all(|h| h.contains("use-a") || h.contains("use-b")),
        "{named:?}"
    );
    pool.join().expect("join");
}

/// The lines of a log: the task indices written, each as often as it ran.
fn log_lines(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// A host whose agent is SIGKILLed in the middle of a batch: under `retries(0)` only the
/// tasks it held fail, with `Lost`, and no task runs twice; under `retries(2)` every task
/// succeeds. The other host serves on, and nothing of the killed host is left.
#[test]
fn an_agent_killed_mid_batch_fails_only_its_tasks() {
    let _deadline = ppool_tests::deadline();
    for retries in [0, 2] {
        let tag = format!("killed-{retries}");
        let dir = ppool_tests::TempDir::new("remote-killed");
        let log = dir.path().join("log");
        let pool = ProcessPool::<log_then_sleep>::builder()
            .remote(Remote::command(tagged(&format!("{tag}-a"))).workers(2))
            .remote(Remote::command(tagged(&format!("{tag}-b"))).workers(2))
            .retries(retries)
            .build()
            .expect("the pool starts");
        let path = log.to_string_lossy().into_owned();
        let batch = pool.batch((0..40u64).map(|i| (path.clone(), i, 100)));
        std::thread::sleep(Duration::from_millis(350));
        let victim = agents(&format!("{tag}-a"));
        assert_eq!(victim.len(), 1, "{victim:?}");
        let its_workers: Vec<u32> = with_tag(&format!("{tag}-a"))
            .into_iter()
            .filter(|&(_, parent)| parent == victim[0])
            .map(|(pid, _)| pid)
            .collect();
        assert_eq!(its_workers.len(), 2, "{its_workers:?}");
        signal(victim[0], libc::SIGKILL);
        let results = batch.wait_all();
        assert_eq!(results.len(), 40);
        let lost = results
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Err(Error::WorkerDied {
                        cause: ExitCause::Lost,
                        ..
                    })
                )
            })
            .count();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        if retries == 0 {
            assert!(lost >= 1, "no task of the killed host failed");
            assert_eq!(ok + lost, 40, "{results:?}");
            let mut ran = log_lines(&log);
            let all = ran.len();
            ran.sort_unstable();
            ran.dedup();
            assert_eq!(ran.len(), all, "a task ran twice without retries");
        } else {
            assert_eq!(ok, 40, "{results:?}");
        }
        for (i, r) in results.iter().enumerate() {
            if let Ok(v) = r {
                assert_eq!(*v, i as u64);
            }
        }
        // Its workers end by themselves once their agent is gone (the pool may have started
        // a new agent there since: the host's launcher still works).
        let alive = |pid: &u32| {
            with_tag(&format!("{tag}-a"))
                .iter()
                .any(|&(p, _)| p == *pid)
        };
        assert!(
            eventually(Duration::from_secs(10), || !its_workers.iter().any(alive)),
            "workers of the killed agent are left"
        );
        pool.join().expect("join");
    }
}

/// Text a login shell prints before the agent starts is skipped; a host whose program is
/// another build is refused with an error that names it.
#[test]
fn shell_noise_is_skipped_and_another_build_is_refused() {
    let _deadline = ppool_tests::deadline();
    let noisy = [
        "sh",
        "-c",
        "echo login noise; echo more noise; exec \"$@\"",
        "sh",
        "env",
        &env_tag("noisy"),
    ];
    let pool = ProcessPool::<square_where>::builder()
        .remote(Remote::command(noisy).workers(2))
        .build()
        .expect("a pool on a host that prints noise first");
    assert_eq!(pool.batch(0..100u64).wait().expect("a batch").len(), 100);
    pool.join().expect("join");
    let other = ProcessPool::<square_where>::builder()
        .remote(
            Remote::command(tagged("other-build"))
                .workers(1)
                .program(OTHER_BUILD),
        )
        .host_timeout(Duration::from_secs(5))
        .build();
    match other {
        Err(Error::Spawn { message, .. }) => {
            assert!(message.contains("another build"), "{message}");
            assert!(
                message.contains("other-build"),
                "the host is not named: {message}"
            );
        }
        other => panic!("a host of another build: {other:?}"),
    }
    assert!(eventually(Duration::from_secs(10), || with_tag(
        "other-build"
    )
    .is_empty()));
}

/// Settings that cannot work are `InvalidConfig` before anything starts.
#[test]
fn bad_remote_settings_are_invalid_config() {
    let _deadline = ppool_tests::deadline();
    let cases = [
        ("workers(0)", Remote::command(tagged("bad")).workers(0)),
        (
            "an empty prefix",
            Remote::command(Vec::<String>::new()).workers(1),
        ),
        ("an empty ssh host", Remote::ssh("").workers(1)),
    ];
    for (what, remote) in cases {
        match ProcessPool::<square_where>::builder()
            .remote(remote)
            .build()
        {
            Err(Error::InvalidConfig { .. }) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    match ProcessPool::<square_where>::builder()
        .remote(Remote::command(tagged("bad")).workers(1))
        .debug(true)
        .build()
    {
        Err(Error::InvalidConfig { .. }) => {}
        other => panic!("debug mode with remote hosts: {other:?}"),
    }
    assert!(with_tag("bad").is_empty());
}

/// An idle remote worker that dies is replaced at once, from its host's report, not when a
/// task next finds it dead: no task is bounced or delayed by it.
#[test]
fn an_idle_remote_worker_that_dies_is_replaced_before_a_task_needs_it() {
    let _deadline = ppool_tests::deadline();
    let tag = "idle-death";
    let pool = ProcessPool::<nap>::builder()
        .remote(Remote::command(tagged(tag)).workers(2))
        .build()
        .expect("the pool starts");
    assert_eq!(pool.batch([1, 1]).wait().expect("a batch").len(), 2);
    let agent = agents(tag)[0];
    let workers = ppool_tests::children_with_env(&env_tag(tag), agent);
    assert_eq!(workers.len(), 2, "{workers:?}");
    signal(workers[0], libc::SIGKILL);
    let replaced = eventually(Duration::from_secs(20), || {
        let insights = pool.insights();
        insights.workers.iter().map(|w| w.restarts).sum::<u64>() == 1
            && insights.workers.iter().all(|w| {
                w.state == ppool::WorkerState::Idle && w.pid.is_some_and(|p| p != workers[0])
            })
    });
    assert!(replaced, "{:#?}", pool.insights().workers);
    let now = ppool_tests::children_with_env(&env_tag(tag), agent);
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(!now.contains(&workers[0]));
    assert_eq!(pool.batch([1; 8]).wait().expect("a batch").len(), 8);
    pool.join().expect("join");
}

/// Writes this worker's pid to `<dir>/started`, waits until `<dir>/go` exists, and returns
/// its pid.
#[pool_entry]
fn hold(dir: String) -> u32 {
    let dir = std::path::Path::new(&dir);
    let pid = std::process::id();
    let fresh = dir.join(format!("started.{pid}"));
    std::fs::write(&fresh, pid.to_string()).expect("the marker is written");
    std::fs::rename(&fresh, dir.join("started")).expect("the marker is in place");
    while !dir.join("go").exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    pid
}

/// A worker that does not read its job ring (stopped) while the pool sends it a job four
/// times the ring's size holds up none of the host's other workers: the other worker of the
/// host finishes the task it held and twenty more while that job still waits in the agent;
/// the job runs once its worker goes on.
#[test]
fn a_worker_whose_ring_is_full_holds_up_no_other_worker_of_its_host() {
    let _deadline = ppool_tests::deadline();
    let tag = "full-ring";
    let dir = ppool_tests::TempDir::new("full-ring");
    let pool = std::sync::Arc::new(
        ProcessPool::<length>::builder()
            .remote(Remote::command(tagged(tag)).workers(2))
            .build()
            .expect("the pool starts"),
    );
    let agent = agents(tag);
    assert_eq!(agent.len(), 1, "one agent: {agent:?}");
    let workers = ppool_tests::children_with_env(&env_tag(tag), agent[0]);
    assert_eq!(workers.len(), 2, "two workers: {workers:?}");
    // One worker holds a task until told to go on.
    let held = pool.entry::<hold>().submit(dir.arg());
    let started = dir.path().join("started");
    assert!(
        eventually(Duration::from_secs(30), || started.exists()),
        "the held task did not start"
    );
    let busy: u32 = std::fs::read_to_string(&started)
        .expect("the marker")
        .parse()
        .expect("a pid");
    let stopped = *workers
        .iter()
        .find(|&&pid| pid != busy)
        .expect("the other worker");
    // The other stops reading its ring, and is sent, being the only idle worker, a job
    // larger than its ring: the agent cannot write it all.
    signal(stopped, libc::SIGSTOP);
    let big = pool.submit(vec![3u8; 4 << 20]);
    let holds_it =
        |w: &ppool::WorkerInsights| w.pid == Some(stopped) && w.state == ppool::WorkerState::Busy;
    assert!(
        eventually(Duration::from_secs(30), || pool
            .insights()
            .workers
            .iter()
            .any(holds_it)),
        "the large job did not go to the stopped worker: {}",
        pool.insights()
    );
    // The held task ends, and the busy worker takes twenty more: the stopped worker, which
    // holds the large job (more than its budget), takes none of them.
    std::fs::write(dir.path().join("go"), b"").expect("go");
    let p = std::sync::Arc::clone(&pool);
    let more = ppool_tests::within(
        Duration::from_secs(60),
        "the busy worker's tasks",
        move || p.batch(vec![vec![1u8; 10]; 20]).wait(),
    );
    assert_eq!(more.expect("twenty small tasks"), vec![10; 20]);
    assert_eq!(held.wait().expect("the held task"), busy);
    assert!(!big.is_done(), "the stopped worker answered");
    signal(stopped, libc::SIGCONT);
    assert_eq!(big.wait().expect("the large job"), 4 << 20);
    let pool = std::sync::Arc::into_inner(pool).expect("the only handle");
    pool.join().expect("join");
    assert!(
        eventually(Duration::from_secs(10), || with_tag(tag).is_empty()),
        "{:?}",
        with_tag(tag)
    );
}

/// Holds `mib` MiB of its own memory for `ms` milliseconds.
#[pool_entry]
fn hog(mib: usize, ms: u64) -> usize {
    let held: Vec<u8> = vec![1u8; mib << 20];
    std::thread::sleep(Duration::from_millis(ms));
    held.iter().step_by(4096).map(|&b| usize::from(b)).sum()
}

/// A remote worker over `worker_memory_limit` fails its task with `MemoryLimit`, as a local
/// one does, and the pool goes on with its replacement.
#[test]
fn a_remote_worker_over_its_memory_limit_fails_its_task_and_the_pool_goes_on() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<hog>::builder()
        .remote(Remote::command(tagged("memory")).workers(1))
        .worker_memory_limit(100 << 20)
        .build()
        .expect("the pool starts");
    let over = pool.call((300, 5_000));
    assert!(
        matches!(over, Err(Error::MemoryLimit { .. })),
        "300 MiB against a limit of 100: {over:?}"
    );
    assert_eq!(pool.call((10, 0)).ok(), Some(10 << 8));
    pool.join().expect("join");
}

/// The CPUs this worker may run on.
#[pool_entry]
fn where_pinned(_x: u32) -> Vec<usize> {
    ppool_tests::my_cpus()
}

/// `cpu_affinity` pins remote workers to CPUs of their host; a host without them fails the
/// build with `Spawn`, naming the CPUs it has.
#[test]
fn cpu_affinity_pins_remote_workers_and_a_host_without_the_cpus_says_which_it_has() {
    let _deadline = ppool_tests::deadline();
    let last = *ppool_tests::my_cpus().last().expect("a CPU");
    let pool = ProcessPool::<where_pinned>::builder()
        .remote(Remote::command(tagged("pinned")).workers(2))
        .cpu_affinity([last])
        .build()
        .expect("the pool starts");
    for pinned in pool.batch(0..4).wait().expect("a batch") {
        assert_eq!(pinned, [last]);
    }
    pool.join().expect("join");
    let refused = ProcessPool::<where_pinned>::builder()
        .remote(Remote::command(tagged("unpinnable")).workers(1))
        .cpu_affinity([1000])
        .build();
    match refused {
        Err(Error::Spawn { message, .. }) => {
            assert!(message.contains("CPU 1000"), "{message}");
            assert!(message.contains("it has CPUs"), "{message}");
        }
        other => panic!("a CPU the host lacks: {other:?}"),
    }
    assert!(eventually(Duration::from_secs(10), || with_tag(
        "unpinnable"
    )
    .is_empty()));
}

/// With `min_workers`, a pool starts with the hosts it can get: a host whose launcher fails
/// is a warning and an entry of `insights().hosts` with its error, and the pool runs on the
/// others. Without it, or with more than the others hold, `build` fails.
#[test]
fn min_workers_starts_a_pool_with_the_hosts_it_can_get() {
    let _deadline = ppool_tests::deadline();
    let builder = || {
        ProcessPool::<square_where>::builder()
            .remote(Remote::command(tagged("min-a")).workers(2))
            .remote(Remote::command(["false"]).workers(2))
            .remote(Remote::command(tagged("min-c")).workers(2))
    };
    let pool = builder().min_workers(4).build().expect("four of six start");
    assert_eq!(pool.n_jobs(), 6);
    let insights = pool.insights();
    let hosts: Vec<(&str, usize, bool)> = insights
        .hosts
        .iter()
        .map(|h| (h.name.as_str(), h.running, h.error.is_some()))
        .collect();
    assert_eq!(hosts.len(), 3, "{hosts:?}");
    assert_eq!(hosts.iter().filter(|h| h.2).count(), 1, "{hosts:?}");
    assert!(
        hosts.iter().any(|h| h.0 == "false" && h.1 == 0 && h.2),
        "{hosts:?}"
    );
    let failed = insights
        .hosts
        .iter()
        .find(|h| h.name == "false")
        .expect("false");
    assert!(
        matches!(
            failed.history.first().map(|c| &c.event),
            Some(ppool::HostEvent::NotStarted { .. })
        ),
        "{failed:#?}"
    );
    let ran: Vec<(u64, String)> = pool.batch(0..40).wait().expect("a batch");
    assert!(ran.iter().enumerate().all(|(i, r)| r.0 == (i * i) as u64));
    assert!(ran.iter().any(|r| r.1.starts_with("min-a")));
    assert!(ran.iter().any(|r| r.1.starts_with("min-c")));
    pool.join().expect("join");
    for (what, built) in [
        ("without min_workers", builder().build()),
        ("min_workers(5)", builder().min_workers(5).build()),
    ] {
        match built {
            Err(Error::Spawn { .. }) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    for tag in ["min-a", "min-c"] {
        assert!(
            eventually(Duration::from_secs(10), || with_tag(tag).is_empty()),
            "{tag}"
        );
    }
}

/// Sleeps `ms`, then says where it ran (the host's tag, or "" here).
#[pool_entry]
fn nap_there(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    let tag = std::env::var(TAG).unwrap_or_default();
    tag.rsplit_once('.')
        .map_or(tag.as_str(), |(host, _)| host)
        .to_string()
}

/// A host added to a running pool during a batch takes the batch's queued tasks at once;
/// every task runs once, and `join` ends the joined host's agent too.
#[test]
fn add_remote_during_a_batch_takes_its_queued_tasks() {
    let _deadline = ppool_tests::deadline();
    let pool = std::sync::Arc::new(
        ProcessPool::<nap_there>::builder()
            .n_jobs(1)
            .chunk_size(1)
            .build()
            .expect("the pool starts"),
    );
    let batch = pool.batch(std::iter::repeat_n(50u64, 60));
    pool.add_remote(Remote::command(tagged("joined")).workers(3))
        .expect("the host joins");
    assert_eq!(pool.n_jobs(), 4);
    let ran = batch.wait().expect("the batch");
    assert_eq!(ran.len(), 60);
    let joined = ran.iter().filter(|h| *h == "joined").count();
    let here = ran.iter().filter(|h| h.is_empty()).count();
    assert_eq!(joined + here, 60, "{ran:?}");
    assert!(
        joined > here,
        "the joined host's 3 workers ran {joined}, the local one {here}"
    );
    let insights = pool.insights();
    assert!(insights.hosts.iter().any(|h| h.name.contains("joined")
        && h.running == 3
        && matches!(
            h.history.first().map(|c| &c.event),
            Some(ppool::HostEvent::Joined)
        )));
    // A host that cannot start is a Spawn error that names it; the pool goes on.
    match pool.add_remote(Remote::command(["false"]).workers(1)) {
        Err(Error::Spawn { message, .. }) => assert!(message.contains("false"), "{message}"),
        other => panic!("a launcher that fails: {other:?}"),
    }
    assert_eq!(pool.batch([1, 1, 1]).wait().expect("a batch").len(), 3);
    pool.join().expect("join");
    assert!(with_tag("joined").is_empty(), "{:?}", with_tag("joined"));
}

/// `retire_host` during a batch: the host takes no new task, its running ones finish and are
/// delivered, no task is lost or runs twice, and its agent and workers are gone when it
/// returns; the other host runs the rest.
#[test]
fn retire_host_during_a_batch_loses_nothing_and_ends_the_host() {
    let _deadline = ppool_tests::deadline();
    let dir = ppool_tests::TempDir::new("retire");
    let log = dir.path().join("log").to_string_lossy().into_owned();
    let pool = ProcessPool::<log_then_sleep>::builder()
        .remote(Remote::command(tagged("retire-a")).workers(2))
        .remote(Remote::command(tagged("retire-b")).workers(2))
        .chunk_size(1)
        .retries(1)
        .build()
        .expect("the pool starts");
    let leaving = pool
        .insights()
        .hosts
        .iter()
        .find(|h| h.name.contains("retire-a"))
        .map(|h| h.name.clone())
        .expect("host a");
    let batch = pool.batch((0..40).map(|i| (log.clone(), i, 40)));
    std::thread::sleep(Duration::from_millis(150));
    pool.retire_host(&leaving).expect("retired");
    assert!(
        with_tag("retire-a").is_empty(),
        "{:?}",
        with_tag("retire-a")
    );
    let done = batch.wait().expect("the batch");
    assert_eq!(done, (0..40).collect::<Vec<u64>>());
    let mut ran = log_lines(std::path::Path::new(&log));
    ran.sort_unstable();
    assert_eq!(ran, (0..40).collect::<Vec<u64>>(), "each task ran once");
    let insights = pool.insights();
    let a = insights
        .hosts
        .iter()
        .find(|h| h.name == leaving)
        .expect("a");
    assert_eq!(a.running, 0);
    assert!(
        matches!(
            a.history.last().map(|c| &c.event),
            Some(ppool::HostEvent::Retired)
        ),
        "{a:#?}"
    );
    assert!(matches!(
        pool.retire_host("nowhere"),
        Err(Error::InvalidConfig { .. })
    ));
    assert_eq!(
        pool.batch([(log.clone(), 99, 0)])
            .wait()
            .expect("after")
            .len(),
        1
    );
    pool.join().expect("join");
    assert!(with_tag("retire-b").is_empty());
}

/// With `rejoin(true)`, a host that was lost and could not be started again (its launcher
/// fails while a gate file exists) is tried again in the background, and its workers rejoin
/// once it answers.
#[test]
fn a_lost_host_rejoins_when_it_answers_again() {
    let _deadline = ppool_tests::deadline();
    let dir = ppool_tests::TempDir::new("rejoin");
    let gate = dir.path().join("gate");
    let mut prefix = tagged("rejoin");
    prefix.extend([
        format!("PPOOL_TEST_GATE={}", gate.display()),
        "sh".into(),
        "-c".into(),
        "test -e \"$PPOOL_TEST_GATE\" && exit 1; exec \"$0\" \"$@\"".into(),
    ]);
    let pool = ProcessPool::<square_where>::builder()
        .remote(Remote::command(prefix).workers(2))
        .rejoin(true)
        .build()
        .expect("the pool starts");
    assert!(pool.call(3).expect("a call").1.starts_with("rejoin"));
    let running =
        |pool: &ProcessPool<square_where>| pool.insights().hosts.first().map_or(0, |h| h.running);
    std::fs::write(&gate, b"closed").expect("the gate");
    for agent in agents("rejoin") {
        signal(agent, libc::SIGKILL);
    }
    assert!(
        eventually(Duration::from_secs(30), || running(&pool) == 0),
        "{:#?}",
        pool.insights().hosts
    );
    std::fs::remove_file(&gate).expect("the gate opens");
    assert!(
        eventually(Duration::from_secs(30), || running(&pool) == 2),
        "{:#?}",
        pool.insights().hosts
    );
    assert!(pool.call(4).expect("a call").1.starts_with("rejoin"));
    // The host's history says so, in order, with times.
    let history = pool.insights().hosts[0].history.clone();
    let kinds: Vec<&str> = history
        .iter()
        .map(|c| match c.event {
            ppool::HostEvent::Lost { .. } => "lost",
            ppool::HostEvent::Down { .. } => "down",
            ppool::HostEvent::Back => "back",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["lost", "down", "back"], "{history:#?}");
    assert!(history.windows(2).all(|w| w[0].at <= w[1].at));
    pool.join().expect("join");
    assert!(eventually(Duration::from_secs(10), || with_tag("rejoin").is_empty()));
}

/// What this worker's initializer was given, kept.
static KEPT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

#[pool_entry]
fn keep_bytes(bytes: Vec<u8>) {
    let _ = KEPT.set(bytes);
}

/// The length and the byte sum of what this worker's initializer kept.
#[pool_entry]
fn kept(_x: u32) -> (usize, u64) {
    KEPT.get()
        .map_or((0, 0), |k| (k.len(), k.iter().map(|&b| u64::from(b)).sum()))
}

#[test]
fn an_initializer_argument_larger_than_a_control_message_reaches_every_remote_worker() {
    // A worker's greeting travels to its host in one control message; one of 20 MiB is past
    // what control messages alone may hold (16 MiB), and within a frame.
    let len = 20 << 20;
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let sum: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
    let pool = ProcessPool::<kept>::builder()
        .remote(Remote::command(tagged("bigint")).workers(2))
        .initializer::<keep_bytes>(bytes)
        .build()
        .expect("a pool whose remote workers take a 20 MiB initializer argument");
    let got = pool.batch(0..8).wait().expect("tasks");
    assert!(got.iter().all(|&g| g == (len, sum)), "{:?}", &got[..2]);
    pool.join().expect("join");
    assert!(eventually(Duration::from_secs(5), || with_tag("bigint").is_empty()));
}
