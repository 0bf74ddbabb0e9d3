//! Workers on other hosts, with real processes on the test cluster of `.ci/cluster`: two ssh
//! hosts in network namespaces (`node1`, `node2`) whose links can be cut, which are also the
//! two nodes of a Slurm cluster. Pools over `Remote::ssh`, `Remote::command` and
//! `Remote::slurm`; a host cut in the middle of a batch, with and without retries; a
//! supervisor SIGKILLed; hosts that cannot be reached, that print noise before the agent
//! starts, or that run another build; a host agent started by hand.
//!
//! Every test skips (it prints `skipped: <why>` and passes) unless the cluster's environment
//! is present: as root, `bash .ci/cluster/up`, then source `<state>/env`, as `.ci/run` does.
//! The tests that use the cluster take turns (one lock): a cut host, or a process one test
//! leaves behind, would disturb another. A task tells which host ran it by its network
//! namespace (`/proc/self/ns/net`), which differs per host.
//!
//! The only time bounds asserted are those that are the point (a lost host is given up, and
//! a host's processes stop, within seconds rather than never); they are generous.

use ppool::{Error, ExitCause, Insights, ProcessPool, Remote, pool_entry};
use ppool_tests::TempDir;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

ppool::test_support!();

/// A `ppool::main!` program of another build than this test binary (other entries): the
/// helper of `tests/faults.rs`. (`ppool-test-rebuilt` deletes its own executable when it runs
/// as a program, so it is not used here.)
const HELPER: &str = env!("CARGO_BIN_EXE_ppool-test-supervisor");

/// The file `log_then_sleep` appends to.
const LOG_ENV: &str = "PPOOL_REMOTE_TEST_LOG";

/// Set by an outer test for the `#[ignore]`d inner test it runs in a child process.
const INNER_ENV: &str = "PPOOL_REMOTE_TEST_INNER";

// ---------------------------------------------------------------------------------------------
// Entries
// ---------------------------------------------------------------------------------------------

/// This process's network namespace, such as `net:[4026532281]`: one per host of the cluster.
fn here() -> String {
    match std::fs::read_link("/proc/self/ns/net") {
        Ok(link) => link.to_string_lossy().into_owned(),
        Err(e) => panic!("cannot read /proc/self/ns/net: {e}"),
    }
}

/// Where it runs.
#[pool_entry]
fn netns() -> String {
    here()
}

/// `x * x`, and where it was computed.
#[pool_entry]
fn square_where(x: u64) -> (u64, String) {
    (x * x, here())
}

/// Appends `i` to the log named by `$PPOOL_REMOTE_TEST_LOG` (one `write` of a whole line,
/// `O_APPEND`: lines from several hosts never interleave), sleeps `ms` milliseconds, and
/// returns `i`.
#[pool_entry]
fn log_then_sleep(i: u64, ms: u64) -> u64 {
    let path = std::env::var(LOG_ENV).expect("the log's path in the environment");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open the log {path}: {e}"));
    log.write_all(format!("{i}\n").as_bytes())
        .expect("the log takes a line");
    drop(log);
    std::thread::sleep(Duration::from_millis(ms));
    i
}

/// Prints a lot on stdout, some of it bytes that look like a frame header and ppool's
/// magic, then returns `i`.
#[pool_entry]
fn chatty(i: u64) -> u64 {
    let mut out = std::io::stdout().lock();
    for line in 0..50 {
        let _ = writeln!(out, "task {i} line {line}: this is not a frame");
    }
    let _ = out.write_all(&16u32.to_le_bytes());
    let _ = out.write_all(b"PPL\x01\x0e\0\0\0\0\0\0\0\xff\xfe");
    let _ = out.write_all(&u32::MAX.to_le_bytes());
    let _ = out.flush();
    drop(out);
    println!("task {i} done");
    i
}

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

/// The test cluster, from the environment `.ci/cluster/up` writes. While it lives, no other
/// test of this binary uses the cluster.
#[derive(Debug)]
struct Cluster {
    /// The ssh host aliases (`node1 node2`).
    hosts: Vec<String>,
    /// Their network namespaces, in the same order.
    netns: Vec<String>,
    /// The `cut` script.
    cut: String,
    /// The `heal` script.
    heal: String,
    _turn: MutexGuard<'static, ()>,
}

/// The cluster, or `None` (having printed why the test skips) when its environment is not
/// set. A partial environment is a broken setup, not a reason to skip: it fails the test.
fn cluster() -> Option<Cluster> {
    let Ok(hosts) = std::env::var("PPOOL_TEST_SSH_HOSTS") else {
        println!(
            "skipped: PPOOL_TEST_SSH_HOSTS is not set, so the test cluster is not up \
             (as root: `bash .ci/cluster/up`, then source its env file)"
        );
        return None;
    };
    let var = |key: &str| {
        std::env::var(key).unwrap_or_else(|_| {
            panic!(
                "PPOOL_TEST_SSH_HOSTS is set but {key} is not: source the cluster's whole env file"
            )
        })
    };
    let _ = var("PPOOL_SSH");
    let hosts: Vec<String> = hosts.split_whitespace().map(String::from).collect();
    let netns: Vec<String> = var("PPOOL_TEST_NETNS")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert!(
        hosts.len() >= 2 && netns.len() == hosts.len(),
        "expected two or more hosts, each with a namespace: hosts {hosts:?}, namespaces {netns:?}"
    );
    Some(Cluster {
        hosts,
        netns,
        cut: var("PPOOL_TEST_CUT"),
        heal: var("PPOOL_TEST_HEAL"),
        _turn: turn(),
    })
}

/// The turn of the calling test on the cluster (and on Slurm).
fn turn() -> MutexGuard<'static, ()> {
    static CLUSTER: Mutex<()> = Mutex::new(());
    CLUSTER.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Cluster {
    /// The ssh alias of host `n` (1 or 2, as the scripts count).
    fn host(&self, n: usize) -> &str {
        &self.hosts[n - 1]
    }

    /// The network namespace of host `n`.
    fn ns(&self, n: usize) -> &str {
        &self.netns[n - 1]
    }

    /// The id of host `n`'s network namespace, as `here()` reports it there.
    fn ns_id(&self, n: usize) -> String {
        let out = bounded(
            10,
            "ip",
            &["netns", "exec", self.ns(n), "readlink", "/proc/self/ns/net"],
        );
        assert!(
            out.status.success(),
            "readlink in {}: {}",
            self.ns(n),
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A guard that heals host `n` when dropped.
    fn healer(&self, n: usize) -> Healer {
        Healer {
            script: self.heal.clone(),
            n,
            healed: false,
        }
    }

    /// Cuts host `n`'s link; the guard heals it, also when the test fails.
    fn cut(&self, n: usize) -> Healer {
        let healer = self.healer(n);
        run_script(&self.cut, n);
        healer
    }
}

/// Heals a host when dropped (or at [`Healer::heal`]), so that no test leaves it cut.
#[derive(Debug)]
struct Healer {
    script: String,
    n: usize,
    healed: bool,
}

impl Healer {
    fn heal(&mut self) {
        run_script(&self.script, self.n);
        self.healed = true;
    }
}

impl Drop for Healer {
    fn drop(&mut self) {
        if !self.healed {
            // No panic here: this may run while a failed test unwinds.
            let out = bounded(20, "bash", &[&self.script, &self.n.to_string()]);
            if !out.status.success() {
                eprintln!("could not heal host {}: {}", self.n, text(&out));
            }
        }
    }
}

/// Runs `bash <script> <n>` (cut or heal) and fails the test if it fails.
fn run_script(script: &str, n: usize) {
    let out = bounded(20, "bash", &[script, &n.to_string()]);
    assert!(out.status.success(), "bash {script} {n}: {}", text(&out));
}

/// Runs a command under `timeout`, with stdin at /dev/null, and returns its output.
fn bounded(secs: u64, program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("--kill-after=5")
        .arg(secs.to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// A command's status, stdout and stderr, for a failure message.
fn text(out: &Output) -> String {
    format!(
        "{:?}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// This test binary's file name, which every agent and worker it starts has in its
/// command line.
fn exe_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .expect("the test binary's file name")
}

/// `(pid, command line)` of the processes of this test binary in network namespace `ns`.
fn ours_in(ns: &str) -> Vec<(u32, String)> {
    let me = exe_name();
    let out = bounded(10, "ip", &["netns", "pids", ns]);
    assert!(out.status.success(), "ip netns pids {ns}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter_map(|pid| {
            // A zombie's command line is empty: it does not count.
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            line.contains(&me)
                .then(|| (pid, line.trim_end().to_string()))
        })
        .collect()
}

/// Waits up to `timeout` until no process of this test binary is left in any of the
/// namespaces; returns `(namespace, pid, command line)` of those still there then, after
/// SIGKILLing them so that they do not disturb the next test.
fn left_behind(namespaces: &[String], timeout: Duration) -> Vec<(String, u32, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<(String, u32, String)> = namespaces
            .iter()
            .flat_map(|ns| {
                ours_in(ns)
                    .into_iter()
                    .map(move |(pid, line)| (ns.clone(), pid, line))
            })
            .collect();
        if left.is_empty() {
            return left;
        }
        if Instant::now() >= deadline {
            for (_, pid, _) in &left {
                // SAFETY: kill(2) on a process of this test binary, found a moment ago.
                unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            }
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many workers each host has, by the host names the insights give.
fn hosts(insights: &Insights) -> BTreeMap<String, usize> {
    let mut hosts = BTreeMap::new();
    for w in &insights.workers {
        *hosts.entry(w.host.clone()).or_insert(0) += 1;
    }
    hosts
}

/// `[(name, count)]` as a map, to compare with [`hosts`].
fn expect_hosts(rows: &[(&str, usize)]) -> BTreeMap<String, usize> {
    rows.iter().map(|&(h, n)| (h.to_string(), n)).collect()
}

/// The pool has exactly the workers of `rows` (host, count), and `n_jobs()` counts them all.
fn assert_workers_on(pool: &ProcessPool<square_where>, rows: &[(&str, usize)]) {
    assert_eq!(pool.n_jobs(), rows.iter().map(|&(_, n)| n).sum::<usize>());
    assert_eq!(hosts(&pool.insights()), expect_hosts(rows));
}

/// `squares` tasks run, and every namespace of `namespaces`, and only they, ran some.
fn assert_ran_on_exactly(pool: &ProcessPool<square_where>, squares: u64, namespaces: &[&str]) {
    let ran = run_squares(pool, squares);
    println!("tasks per namespace: {ran:?}");
    assert_eq!(
        ran.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        namespaces.iter().copied().collect::<BTreeSet<_>>(),
        "these hosts, and only they, ran tasks"
    );
}

/// Runs `squares` tasks of `square_where`, checks every result, and returns how many tasks
/// each network namespace ran.
fn run_squares(pool: &ProcessPool<square_where>, squares: u64) -> BTreeMap<String, u64> {
    let results = pool.batch(0..squares).wait().expect("every task succeeds");
    assert_eq!(results.len() as u64, squares, "one result per task");
    let mut ran = BTreeMap::new();
    for (x, (square, ns)) in (0..squares).zip(results) {
        assert_eq!(square, x * x, "task {x} got another task's result");
        *ran.entry(ns).or_insert(0) += 1;
    }
    ran
}

/// The error of a build that should have failed.
fn build_err<T>(built: Result<T, Error>, what: &str) -> Error {
    match built {
        Ok(_) => panic!("{what}: the pool was built, but the build should have failed"),
        Err(e) => e,
    }
}

/// The message of an `Error::Spawn`; fails the test on any other error.
fn spawn_message(e: &Error) -> &str {
    match e {
        Error::Spawn { message, .. } => message,
        other => panic!("expected Error::Spawn, got {other:?} ({other})"),
    }
}

/// How many times each index is in the log.
fn runs(log: &std::path::Path) -> HashMap<u64, u32> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut runs = HashMap::new();
    for line in text.lines() {
        let i: u64 = line.parse().expect("a whole line in the log");
        *runs.entry(i).or_insert(0) += 1;
    }
    runs
}

/// Sends every line of `from` down a channel, from a thread.
fn lines(from: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Everything the channel holds within `wait`, joined, for a failure message.
fn drain(rx: &Receiver<String>, wait: Duration) -> String {
    let until = Instant::now() + wait;
    let mut all = Vec::new();
    while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        all.push(line);
    }
    all.join("\n")
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

/// Starts `--exact <test> --ignored --nocapture` of this test binary, with `INNER_ENV` set
/// to `inner`, in its own process group, stdout and stderr piped.
fn start_inner(test: &str, inner: &str) -> Child {
    Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_ENV, inner)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("cannot re-run this test binary")
}

/// SIGKILLs a process group when dropped: the inner test's, so that a failing outer test
/// leaves nothing running.
#[derive(Debug)]
struct KillGroup(i32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of our own child; ESRCH if it is empty.
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

/// True in the child an outer test started for `inner`; otherwise says the test skips.
fn is_inner(inner: &str, outer: &str) -> bool {
    if std::env::var(INNER_ENV).ok().as_deref() == Some(inner) {
        return true;
    }
    println!("skipped: this test runs only inside `{outer}`");
    false
}

// ---------------------------------------------------------------------------------------------
// Pools over ssh and command prefixes
// ---------------------------------------------------------------------------------------------

/// Two ssh hosts with two workers each and none local make four workers; a batch of 10,000
/// tasks comes back right, both hosts ran some of it, and the insights name both hosts.
#[test]
fn ssh_pool_on_two_hosts_runs_a_batch_on_both() {
    let _deadline = ppool_tests::deadline();
    let Some(c) = cluster() else { return };
    let (ns1, ns2) = (c.ns_id(1), c.ns_id(2));
    let pool = ProcessPool::<square_where>::builder()
        .remote(Remote::ssh(c.host(1)).workers(2))
        .remote(Remote::ssh(c.host(2)).workers(2))
        .build()
        .expect("a pool on node1 and node2");
    assert_workers_on(&pool, &[(c.host(1), 2), (c.host(2), 2)]);
    assert_ran_on_exactly(&pool, 10_000, &[&ns1, &ns2]);
}

/// The same two hosts reached through a command prefix (`ip netns exec <ns>`): four
/// workers, a correct batch run on both, and each host named by its prefix joined by spaces.
#[test]
fn command_prefix_pool_on_two_hosts_runs_a_batch_on_both() {
    let _deadline = ppool_tests::deadline();
    let Some(c) = cluster() else { return };
    let (ns1, ns2) = (c.ns_id(1), c.ns_id(2));
    let p1 = ["ip", "netns", "exec", c.ns(1)];
    let p2 = ["ip", "netns", "exec", c.ns(2)];
    let (h1, h2) = (p1.join(" "), p2.join(" "));
    let pool = ProcessPool::<square_where>::builder()
        .remote(Remote::command(p1).workers(2))
        .remote(Remote::command(p2).workers(2))
        .build()
        .expect("a pool on both namespaces");
    assert_workers_on(&pool, &[(h1.as_str(), 2), (h2.as_str(), 2)]);
    assert_ran_on_exactly(&pool, 10_000, &[&ns1, &ns2]);
}

/// A local worker beside a remote one: `n_jobs()` counts both, the insights name
/// `localhost` and the ssh host, and the tasks run only there.
#[test]
fn local_and_remote_workers_in_one_pool() {
    let _deadline = ppool_tests::deadline();
    let Some(c) = cluster() else { return };
    let ns1 = c.ns_id(1);
    let pool = ProcessPool::<square_where>::builder()
        .n_jobs(1)
        .remote(Remote::ssh(c.host(1)).workers(1))
        .build()
        .expect("a pool with one local and one remote worker");
    assert_workers_on(&pool, &[("localhost", 1), (c.host(1), 1)]);
    let ran = run_squares(&pool, 2_000);
    println!("tasks per namespace: {ran:?}");
    let allowed = BTreeSet::from([here(), ns1]);
    assert!(
        ran.keys().all(|ns| allowed.contains(ns)),
        "tasks ran in {ran:?}, not only in {allowed:?}"
    );
}

/// `copy_program(true)`: the build is copied to the host's `~/.cache/ppool/<build>/` once,
/// by a command of its own, and the host's workers run the copy; a second pool finds it there
/// and copies nothing.
#[test]
fn copy_program_puts_the_build_on_the_host_once_and_runs_it() {
    let _deadline = ppool_tests::deadline();
    let Some(c) = cluster() else { return };
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cache = std::path::Path::new(&home).join(".cache/ppool");
    let _ = std::fs::remove_dir_all(&cache);
    let start = || {
        ProcessPool::<square_where>::builder()
            .remote(Remote::ssh(c.host(1)).workers(1).copy_program(true))
            .build()
            .expect("a pool that copies its program to node1")
    };
    let pool = start();
    assert_eq!(pool.call(7).map(|(sq, _)| sq), Ok(49));
    let pid = pool.insights().workers[0].pid.expect("the worker's pid");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("the worker's executable");
    assert!(
        exe.starts_with(&cache),
        "the worker runs {}, not a copy under {}",
        exe.display(),
        cache.display()
    );
    let copied = std::fs::metadata(&exe)
        .and_then(|m| m.modified())
        .expect("the copy's time");
    drop(pool);
    let pool = start();
    assert_eq!(pool.call(8).map(|(sq, _)| sq), Ok(64));
    let again = std::fs::metadata(&exe)
        .and_then(|m| m.modified())
        .expect("the copy's time");
    assert_eq!(copied, again, "the second pool copied the program again");
    let entries = std::fs::read_dir(exe.parent().expect("a folder"))
        .expect("the cache folder")
        .count();
    assert_eq!(entries, 1, "a temporary file was left in the cache");
}

// ---------------------------------------------------------------------------------------------
// A host cut in the middle of a batch
// ---------------------------------------------------------------------------------------------

/// What a batch with a host cut in its middle gave.
#[derive(Debug)]
struct CutRun {
    /// One result per task, in order.
    results: Vec<Result<u64, Error>>,
    /// How many times each index is in the log, once node1 has none of our processes left.
    runs: HashMap<u64, u32>,
}

/// The index of the task run after the cut.
const AFTER: u64 = 1_000_000;

/// Runs 200 tasks of about 50 ms on node1 and node2 (two workers each, `host_timeout` 3 s,
/// `retries(retries)`) and cuts node1 0.5 s into the batch. Checks that the pool goes on
/// with node2, then heals node1 and checks that within 15 s none of our processes is left
/// there; only then reads the log, so that a task node1 ran late still shows.
fn cut_mid_batch(c: &Cluster, retries: u32) -> CutRun {
    const TASKS: u64 = 200;
    let dir = TempDir::new("remote-cut");
    let log = dir.path().join("log");
    let ns2 = c.ns_id(2);
    let pool = ProcessPool::<log_then_sleep>::builder()
        .remote(Remote::ssh(c.host(1)).workers(2))
        .remote(Remote::ssh(c.host(2)).workers(2))
        .host_timeout(Duration::from_secs(3))
        .retries(retries)
        .env(LOG_ENV, &log)
        .build()
        .expect("a pool on node1 and node2");
    // Declared after the pool, so that it heals before the pool is dropped.
    let mut healer = c.healer(1);
    let cutter = {
        let script = c.cut.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            run_script(&script, 1);
        })
    };
    let started = Instant::now();
    let results = pool.batch((0..TASKS).map(|i| (i, 50))).wait_all();
    let took = started.elapsed();
    cutter.join().expect("cutting node1");
    println!("retries({retries}): the batch took {took:?} with node1 cut after 0.5 s");
    assert_eq!(results.len() as u64, TASKS, "every task has one result");
    // The pool goes on, with node2 only.
    assert_eq!(pool.call((AFTER, 0)), Ok(AFTER));
    assert_eq!(pool.entry::<netns>().call(()), Ok(ns2));
    healer.heal();
    let left = left_behind(&[c.ns(1).to_string()], Duration::from_secs(15));
    assert!(
        left.is_empty(),
        "15 s after node1 healed, processes of ours are still there: {left:?}"
    );
    CutRun {
        results,
        runs: runs(&log),
    }
}

/// With `retries(0)`, a host cut mid-batch: every task has one result, either its own value
/// or `WorkerDied` with `ExitCause::Lost` (at least one is lost), no task ran twice, every
/// `Ok` task did run, the pool goes on with the other host, and once the host is healed its
/// agent and workers are gone.
#[test]
fn a_host_cut_mid_batch_fails_only_its_tasks_and_runs_nothing_twice() {
    let _deadline = ppool_tests::deadline();
    let Some(c) = cluster() else { return };
    let r = cut_mid_batch(&c, 0);
    let mut lost = Vec::new();
    for (i, result) in (0u64..).zip(&r.results) {
        match result {
            Ok(v) => {
                assert_eq!(*v, i, "task {i} got another task's result");
                assert!(r.runs.contains_key(&i), "task {i} is Ok but never ran");
            }
            Err(Error::WorkerDied {
                cause: ExitCause::Lost,
                ..
            }) => lost.push(i),
            Err(e) => panic!("task {i}: expected Ok or a lost host, got {e:?} ({e})"),
        }
    }
    println!("{} tasks lost with node1: {lost:?}", lost.len());
    assert!(!lost.is_empty(), "no task was lost with the cut host");
    let mut twice: Vec<u64> = r
        .runs
        .iter()
        .filter(|&(_, &n)| n > 1)
        .map(|(&i, _)| i)
        .collect();
    twice.sort_unstable();
    assert!(twice.is_empty(), "tasks that ran twice: {twice:?}");
}

/// With `retries(3)`, the same cut loses nothing: every task ends `Ok` with its own value
/// and ran at least once.
#[test]
fn a_host_cut_mid_batch_with_retries_loses_no_task() {
    let _deadline = ppool_tests::deadline();
    let Some(c) = cluster() else { return };
    let r = cut_mid_batch(&c, 3);
    for (i, result) in (0u64..).zip(&r.results) {
        assert_eq!(result, &Ok(i), "task {i}");
        assert!(r.runs.contains_key(&i), "task {i} is Ok but never ran");
    }
}

// ---------------------------------------------------------------------------------------------
// The supervisor is SIGKILLed
// ---------------------------------------------------------------------------------------------

/// Run by `hosts_clean_up_when_the_supervisor_is_sigkilled` in a child: a pool on node1 and
/// node2 whose workers have all answered, then `READY`, then a long sleep.
#[test]
#[ignore = "run by hosts_clean_up_when_the_supervisor_is_sigkilled"]
fn inner_supervisor_for_kill() {
    let _deadline = ppool_tests::deadline();
    if !is_inner("kill", "hosts_clean_up_when_the_supervisor_is_sigkilled") {
        return;
    }
    let Some(c) = cluster() else { return };
    let pool = ProcessPool::<netns>::builder()
        .remote(Remote::ssh(c.host(1)).workers(2))
        .remote(Remote::ssh(c.host(2)).workers(2))
        .build()
        .expect("a pool on node1 and node2");
    pool.call(()).expect("a call");
    pool.batch(vec![(); 4 * pool.n_jobs()])
        .wait()
        .expect("every worker answers");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "READY");
    let _ = out.flush();
    drop(out);
    std::thread::sleep(Duration::from_secs(60));
}

/// A supervisor SIGKILLed with a pool on node1 and node2: within 15 s no agent or worker of
/// it is left on either host.
#[test]
fn hosts_clean_up_when_the_supervisor_is_sigkilled() {
    let _deadline = ppool_tests::deadline();
    let Some(c) = cluster() else { return };
    let mut child = start_inner("inner_supervisor_for_kill", "kill");
    // Whatever else the child started (ssh clients) is in its group: it all goes at the end.
    let _group = KillGroup(child.id() as i32);
    let stdout = lines(child.stdout.take().expect("stdout"));
    let stderr = lines(child.stderr.take().expect("stderr"));
    let until = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let ready = loop {
        match stdout.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(line) if line.trim_end().ends_with("READY") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the inner supervisor did not print READY; stdout:\n{}\nstderr:\n{}",
            seen.join("\n"),
            drain(&stderr, Duration::from_secs(2))
        );
    }
    for ns in &c.netns {
        assert!(
            !ours_in(ns).is_empty(),
            "no process of this test binary in {ns} while the pool runs (pids: {})",
            text(&bounded(10, "ip", &["netns", "pids", ns]))
        );
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let killed = Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(10), "the killed supervisor");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let left = left_behind(&c.netns, Duration::from_secs(15));
    println!("hosts checked {:?} after the SIGKILL", killed.elapsed());
    assert!(
        left.is_empty(),
        "15 s after the supervisor's SIGKILL, processes of ours are still on the hosts: {left:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Hosts that cannot serve
// ---------------------------------------------------------------------------------------------

/// A host that does not resolve fails the build with `Error::Spawn` naming it in under 30 s;
/// so does a host whose link is cut at build time, in under 20 s.
#[test]
fn unreachable_hosts_fail_the_build_with_an_error_naming_them() {
    let _deadline = ppool_tests::deadline();
    let Some(c) = cluster() else { return };
    const NOWHERE: &str = "ppool-no-such-host.invalid";
    let started = Instant::now();
    let e = build_err(
        ProcessPool::<netns>::builder()
            .remote(Remote::ssh(NOWHERE).workers(1))
            .build(),
        "a host that does not exist",
    );
    let took = started.elapsed();
    println!("{NOWHERE}: {e} (after {took:?})");
    assert!(spawn_message(&e).contains(NOWHERE), "{e}");
    assert!(took < Duration::from_secs(30), "took {took:?}");

    let _healer = c.cut(2);
    let started = Instant::now();
    let e = build_err(
        ProcessPool::<netns>::builder()
            .remote(Remote::ssh(c.host(2)).workers(1))
            .build(),
        "a host cut at build time",
    );
    let took = started.elapsed();
    println!("cut {}: {e} (after {took:?})", c.host(2));
    assert!(spawn_message(&e).contains(c.host(2)), "{e}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

/// A host whose login prints text before the agent starts (here `sh -c 'echo ...; exec
/// "$@"'` in the prefix) still works: the noise is skipped.
#[test]
fn shell_noise_before_the_agent_is_skipped() {
    let _deadline = ppool_tests::deadline();
    let Some(c) = cluster() else { return };
    let ns1 = c.ns_id(1);
    let prefix = [
        "ip",
        "netns",
        "exec",
        c.ns(1),
        "sh",
        "-c",
        "echo login noise; echo more noise >&1; exec \"$@\"",
        "sh",
    ];
    let pool = ProcessPool::<square_where>::builder()
        .remote(Remote::command(prefix).workers(2))
        .build()
        .expect("a pool on a host that prints noise first");
    assert_workers_on(&pool, &[(prefix.join(" ").as_str(), 2)]);
    assert_ran_on_exactly(&pool, 1_000, &[&ns1]);
}

/// Entries that print a lot on stdout, some of it bytes that look like frames, do not break
/// the channel over ssh: every result is right and the pool goes on.
#[test]
fn println_in_an_entry_does_not_break_results_over_ssh() {
    let _deadline = ppool_tests::deadline();
    let Some(c) = cluster() else { return };
    let pool = ProcessPool::<chatty>::builder()
        .remote(Remote::ssh(c.host(1)).workers(1))
        .remote(Remote::ssh(c.host(2)).workers(1))
        .build()
        .expect("a pool on node1 and node2");
    let results = pool.batch(0..500u64).wait().expect("every task succeeds");
    assert_eq!(results, (0..500).collect::<Vec<u64>>());
    assert_eq!(pool.call(7), Ok(7));
}

/// A host whose program is of another build (other entries) fails the build with
/// `Error::Spawn` that names the host and says "another build".
#[test]
fn a_host_running_another_build_is_refused() {
    let _deadline = ppool_tests::deadline();
    let Some(c) = cluster() else { return };
    let started = Instant::now();
    let e = build_err(
        ProcessPool::<netns>::builder()
            .remote(
                Remote::command(["ip", "netns", "exec", c.ns(1)])
                    .workers(1)
                    .program(HELPER),
            )
            .host_timeout(Duration::from_secs(5))
            .build(),
        "a host running another build",
    );
    println!("{e} (after {:?})", started.elapsed());
    let message = spawn_message(&e);
    assert!(message.contains(c.ns(1)), "the host is not named: {e}");
    assert!(message.contains("another build"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Settings that cannot work are refused with `Error::InvalidConfig` before anything
/// starts: no workers on a host, an empty host name, an empty command prefix, and Slurm
/// outside an allocation (checked only when this process is not in one).
#[test]
fn bad_remote_settings_are_invalid_config() {
    let _deadline = ppool_tests::deadline();
    let Some(c) = cluster() else { return };
    let mut cases = vec![
        (
            "workers(0) on an ssh host",
            Remote::ssh(c.host(1)).workers(0),
        ),
        (
            "workers(0) on a command host",
            Remote::command(["ip", "netns", "exec", c.ns(1)]).workers(0),
        ),
        ("an empty ssh host", Remote::ssh("").workers(1)),
        (
            "an empty command prefix",
            Remote::command(Vec::<String>::new()).workers(1),
        ),
    ];
    let limited = build_err(
        ProcessPool::<netns>::builder()
            .remote(Remote::ssh(c.host(1)).workers(1))
            .worker_memory_limit(1 << 30)
            .build(),
        "a memory limit with remote hosts",
    );
    assert!(
        matches!(&limited, Error::InvalidConfig { setting, .. } if *setting == "worker_memory_limit"),
        "a memory limit, which remote hosts cannot enforce yet: {limited:?}"
    );
    if std::env::var_os("SLURM_JOB_ID").is_none() {
        cases.push(("Remote::slurm() outside an allocation", Remote::slurm()));
    } else {
        println!("not checking Remote::slurm() outside an allocation: SLURM_JOB_ID is set");
    }
    for (what, remote) in cases {
        let started = Instant::now();
        let e = build_err(ProcessPool::<netns>::builder().remote(remote).build(), what);
        println!("{what}: {e}");
        assert!(
            matches!(e, Error::InvalidConfig { .. }),
            "{what}: expected InvalidConfig, got {e:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: refused only after {:?}",
            started.elapsed()
        );
    }
}

/// A host agent command line typed by hand (`PPOOL_HOST_AGENT=1 <program> --ppool-worker`,
/// stdin at /dev/null or garbage) says so on stderr, mentioning ppool, and exits non-zero
/// within 10 s.
#[test]
fn hand_typed_host_agent_exits_with_a_message() {
    let _deadline = ppool_tests::deadline();
    let Some(_c) = cluster() else { return };
    let inputs: [Option<&[u8]>; 3] = [
        None,
        Some(&b"\x05\0\0\0garbage on stdin\n\xff\xfe"[..]),
        Some(&[0xffu8; 4][..]),
    ];
    for input in inputs {
        let started = Instant::now();
        let mut child = Command::new("timeout")
            .args(["--kill-after=5", "15", HELPER, "--ppool-worker"])
            .env("PPOOL_HOST_AGENT", "1")
            .env_remove("PPOOL_WORKER_CHANNEL")
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the helper binary");
        if let (Some(bytes), Some(mut pipe)) = (input, child.stdin.take()) {
            // The agent may exit before reading: a broken pipe is fine.
            let _ = pipe.write_all(bytes);
        }
        let out = child.wait_with_output().expect("the agent's output");
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!(
            "stdin {input:?}: {:?} after {took:?}: {}",
            out.status,
            stderr.trim()
        );
        assert_ne!(out.status.code(), Some(124), "the agent hangs: {stderr}");
        assert!(took < Duration::from_secs(10), "took {took:?}: {stderr}");
        assert!(!out.status.success(), "{:?}: {stderr}", out.status);
        assert!(
            out.status.code().is_some(),
            "it crashed: {:?}: {stderr}",
            out.status
        );
        assert!(stderr.contains("ppool"), "unclear message: {stderr:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Slurm
// ---------------------------------------------------------------------------------------------

/// The test Slurm's node names, in the order of the hosts, or `None` (having printed why the
/// test skips).
fn slurm() -> Option<Vec<String>> {
    if std::env::var("PPOOL_TEST_SLURM").ok().as_deref() != Some("1") {
        println!(
            "skipped: PPOOL_TEST_SLURM is not 1, so there is no test Slurm \
             (as root: `bash .ci/cluster/up`, then source its env file)"
        );
        return None;
    }
    assert!(
        std::env::var_os("SLURM_CONF").is_some(),
        "PPOOL_TEST_SLURM=1 but SLURM_CONF is not set: source the cluster's whole env file"
    );
    let nodes = std::env::var("PPOOL_TEST_SLURM_NODES").expect("PPOOL_TEST_SLURM_NODES");
    Some(nodes.split_whitespace().map(String::from).collect())
}

/// Run by `slurm_pool_runs_on_the_allocation` inside `salloc`: a `Remote::slurm()` pool
/// with one worker per CPU of the allocation runs a batch of 1,000 on the allocation's one
/// node, then prints `SLURM OK`.
#[test]
#[ignore = "run by slurm_pool_runs_on_the_allocation"]
fn inner_slurm_pool() {
    let _deadline = ppool_tests::deadline();
    if !is_inner("slurm", "slurm_pool_runs_on_the_allocation") {
        return;
    }
    let Some(nodes) = slurm() else { return };
    assert!(
        std::env::var_os("SLURM_JOB_ID").is_some(),
        "not inside an allocation"
    );
    let node = std::env::var("SLURM_JOB_NODELIST").expect("SLURM_JOB_NODELIST");
    assert!(nodes.contains(&node), "{node} is not one of {nodes:?}");
    let pool = ProcessPool::<square_where>::builder()
        .remote(Remote::slurm())
        .build()
        .expect("a pool on the allocation");
    let cpus = std::env::var("SLURM_JOB_CPUS_PER_NODE").unwrap_or_default();
    println!(
        "n_jobs {} for SLURM_JOB_CPUS_PER_NODE={cpus}",
        pool.n_jobs()
    );
    match cpus.trim().parse::<usize>() {
        Ok(cpus) => assert_eq!(pool.n_jobs(), cpus, "one worker per CPU given"),
        Err(_) => assert!(pool.n_jobs() >= 1),
    }
    assert_eq!(
        hosts(&pool.insights()),
        expect_hosts(&[(node.as_str(), pool.n_jobs())])
    );
    let ran = run_squares(&pool, 1_000);
    println!("tasks per namespace: {ran:?}");
    println!("SLURM OK");
}

/// A `Remote::slurm()` pool inside `salloc -N1 -n2 --no-kill` runs a batch on the node of
/// the allocation and names it in the insights (the checks run in `inner_slurm_pool`).
#[test]
fn slurm_pool_runs_on_the_allocation() {
    let _deadline = ppool_tests::deadline();
    let Some(_nodes) = slurm() else { return };
    let _turn = turn();
    let exe = std::env::current_exe().expect("this test binary");
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["--kill-after=5", "100", "salloc", "-N1", "-n2", "--no-kill"])
        .args(["-J", "ppool-remote-test"])
        .arg(&exe)
        .args(["--exact", "inner_slurm_pool", "--ignored", "--nocapture"])
        .arg("--test-threads=1")
        .env(INNER_ENV, "slurm")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run salloc");
    println!("salloc: {:?} after {:?}", out.status, started.elapsed());
    assert_ne!(out.status.code(), Some(124), "salloc hangs: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("SLURM OK"),
        "{}",
        text(&out)
    );
}
