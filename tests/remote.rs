//! Workers on other hosts, with real processes on the test cluster of `.ci/cluster`: two hosts
//! in network namespaces (`node1`, `node2`) whose links can be cut, reached over ssh and as the
//! two nodes of a Slurm cluster. Pools over `Remote::ssh`, `Remote::command` and
//! `Remote::slurm`; a host (or Slurm node) cut in the middle of a batch, with and without
//! retries; a supervisor SIGKILLed; hosts that cannot be reached, that print noise before the
//! agent starts, or that run another build; bad settings; a host agent started by hand.
//!
//! The tests that need the cluster are `#[ignore]`d, so a plain `cargo test` lists them as
//! ignored instead of passing them unrun. To run them, as root:
//!
//! ```sh
//! bash .ci/cluster/up && . /tmp/ppool-cluster/env   # or $PPOOL_CLUSTER_STATE/env
//! cargo test -p ppool-tests --test remote -- --ignored --test-threads=1
//! bash .ci/cluster/down
//! ```
//!
//! Run that way without the cluster's environment, each of them fails, saying so. The tests
//! that use the cluster take turns (one lock): a cut host, or a process one test leaves
//! behind, would disturb another. A task tells which host ran it by its network namespace
//! (`/proc/self/ns/net`), which differs per host.
//!
//! A Slurm test runs twice: as itself, which runs this test binary again, inside `salloc`,
//! for that one test (with `PPOOL_REMOTE_TEST_INNER` naming it), and checks that it passed;
//! and there, inside the allocation, where it builds its pool and does its checks.
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

/// A host name that does not resolve.
const NOWHERE: &str = "ppool-no-such-host.invalid";

/// A launcher program that does not exist.
const NO_LAUNCHER: &str = "ppool-no-such-launcher";

/// Set, to the test's name, in the child process in which a test runs again (inside
/// `salloc`, or as the supervisor that the test SIGKILLs).
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

/// Sleeps `ms` milliseconds, then says where it ran: a call that holds its worker a while.
#[pool_entry]
fn nap_where(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    here()
}

/// Appends `i` and the network namespace it runs in to the log named by
/// `$PPOOL_REMOTE_TEST_LOG` (one `write` of a whole line, `O_APPEND`: lines from several hosts
/// never interleave), sleeps `ms` milliseconds, and returns `i`.
#[pool_entry]
fn log_then_sleep(i: u64, ms: u64) -> u64 {
    let path = std::env::var(LOG_ENV).expect("the log's path in the environment");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open the log {path}: {e}"));
    log.write_all(format!("{i} {}\n", here()).as_bytes())
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

/// How to bring the cluster up, for the message of a test that finds it missing.
const HOW_TO_RUN: &str = "this test needs the test cluster of .ci/cluster: as root, \
    `bash .ci/cluster/up`, then source its env file (/tmp/ppool-cluster/env, or \
    $PPOOL_CLUSTER_STATE/env), then `cargo test -p ppool-tests --test remote -- --ignored`";

/// The cluster, from its environment; fails the test when that is not set (the test was run
/// without the cluster: it cannot pass without running), or only partly.
fn cluster() -> Cluster {
    let Ok(hosts) = std::env::var("PPOOL_TEST_SSH_HOSTS") else {
        panic!("PPOOL_TEST_SSH_HOSTS is not set, so the test cluster is not up: {HOW_TO_RUN}");
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
    Cluster {
        hosts,
        netns,
        cut: var("PPOOL_TEST_CUT"),
        heal: var("PPOOL_TEST_HEAL"),
        _turn: turn(),
    }
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

/// `squares` tasks run right, only in `namespaces`; and one slow call per worker at once,
/// which takes every worker, runs in every namespace of `namespaces` and only there. (A
/// batch of tiny tasks may rightly stay on a few workers, so it cannot show that every host
/// takes work.)
fn assert_ran_on_exactly(pool: &ProcessPool<square_where>, squares: u64, namespaces: &[&str]) {
    let want: BTreeSet<&str> = namespaces.iter().copied().collect();
    let ran = run_squares(pool, squares);
    println!("tasks per namespace: {ran:?}");
    let batch: BTreeSet<&str> = ran.keys().map(String::as_str).collect();
    assert!(
        batch.is_subset(&want),
        "the batch ran in {batch:?}, not only in {want:?}"
    );
    let slow: Vec<String> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..pool.n_jobs())
            .map(|_| s.spawn(|| pool.entry::<nap_where>().call(500).expect("a slow call")))
            .collect();
        calls
            .into_iter()
            .map(|call| call.join().expect("a caller"))
            .collect()
    });
    println!("one slow call per worker at once ran in: {slow:?}");
    assert_eq!(
        slow.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        want,
        "one slow call per worker at once: these hosts, and only they, ran one"
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

/// Where each index ran, once per line of the log: `i` ran `runs[&i].len()` times.
fn runs(log: &std::path::Path) -> HashMap<u64, Vec<String>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut runs: HashMap<u64, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let (i, ns) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("not a whole line in the log: {line:?}"));
        let i: u64 = i.parse().expect("an index in the log");
        runs.entry(i).or_default().push(ns.to_string());
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

/// The arguments that run `test` alone, ignored or not, with its output shown.
fn only(test: &str) -> [&str; 5] {
    [
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]
}

/// Starts `test` again in a child process of this test binary, with `INNER_ENV` set to its
/// name, in its own process group, stdout and stderr piped.
fn start_inner(test: &str) -> Child {
    Command::new(std::env::current_exe().expect("this test binary"))
        .args(only(test))
        .env(INNER_ENV, test)
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

/// True in the child process in which `test` runs again (see [`start_inner`] and
/// [`in_allocation`]).
fn is_inner(test: &str) -> bool {
    std::env::var(INNER_ENV).ok().as_deref() == Some(test)
}

// ---------------------------------------------------------------------------------------------
// Pools over ssh and command prefixes
// ---------------------------------------------------------------------------------------------

/// Two ssh hosts with two workers each and none local make four workers; a batch of 10,000
/// tasks comes back right, one slow call per worker at once runs on both hosts, and the
/// insights name both hosts.
#[test]
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn ssh_pool_on_two_hosts_runs_a_batch_on_both() {
    let _deadline = ppool_tests::deadline();
    let c = cluster();
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
/// workers, a correct batch, slow calls at once on both, and each host named by its prefix
/// joined by spaces.
#[test]
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn command_prefix_pool_on_two_hosts_runs_a_batch_on_both() {
    let _deadline = ppool_tests::deadline();
    let c = cluster();
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
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn local_and_remote_workers_in_one_pool() {
    let _deadline = ppool_tests::deadline();
    let c = cluster();
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
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn copy_program_puts_the_build_on_the_host_once_and_runs_it() {
    let _deadline = ppool_tests::deadline();
    let c = cluster();
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
    /// Where each index ran (see [`runs`]), once host 1 has none of our processes left.
    runs: HashMap<u64, Vec<String>>,
    /// The indexes of the workers that were on host 1, the cut one.
    cut_workers: BTreeSet<usize>,
    /// The network namespace of host 1.
    cut_ns: String,
    /// The network namespace of host 2, which stays.
    kept_ns: String,
}

/// The index of the task run after the cut.
const AFTER: u64 = 1_000_000;

/// Runs 200 tasks of about 50 ms on a pool over `remotes` (two workers on each of host 1 and
/// host 2, where the insights name them `cut_host` and `kept_host`; `host_timeout` 3 s,
/// `retries(retries)`) and cuts host 1 0.5 s into the batch. Checks that the pool goes on
/// with host 2 alone, then heals host 1 and checks that within 15 s none of our processes is
/// left there; only then reads the log, so that a task host 1 ran late still shows.
fn cut_mid_batch(
    c: &Cluster,
    remotes: Vec<Remote>,
    (cut_host, kept_host): (&str, &str),
    retries: u32,
) -> CutRun {
    const TASKS: u64 = 200;
    let dir = TempDir::new("remote-cut");
    let log = dir.path().join("log");
    let (cut_ns, kept_ns) = (c.ns_id(1), c.ns_id(2));
    let mut builder = ProcessPool::<log_then_sleep>::builder()
        .host_timeout(Duration::from_secs(3))
        .retries(retries)
        .env(LOG_ENV, &log);
    for remote in remotes {
        builder = builder.remote(remote);
    }
    let pool = builder.build().expect("a pool on host 1 and host 2");
    let workers = pool.insights().workers;
    let on = |host: &str| -> BTreeSet<usize> {
        workers
            .iter()
            .filter(|w| w.host == host)
            .map(|w| w.index)
            .collect()
    };
    let cut_workers = on(cut_host);
    assert_eq!(
        cut_workers.len(),
        2,
        "two workers on {cut_host}: {workers:?}"
    );
    assert_eq!(
        on(kept_host).len(),
        2,
        "two workers on {kept_host}: {workers:?}"
    );
    assert_eq!(workers.len(), 4, "no worker elsewhere: {workers:?}");
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
    cutter.join().expect("cutting host 1");
    println!("retries({retries}): the batch took {took:?} with {cut_host} cut after 0.5 s");
    assert_eq!(results.len() as u64, TASKS, "every task has one result");
    // The pool goes on, with host 2 only.
    assert_eq!(pool.call((AFTER, 0)), Ok(AFTER));
    assert_eq!(pool.entry::<netns>().call(()), Ok(kept_ns.clone()));
    healer.heal();
    let left = left_behind(&[c.ns(1).to_string()], Duration::from_secs(15));
    assert!(
        left.is_empty(),
        "15 s after {cut_host} healed, processes of ours are still there: {left:?}"
    );
    let runs = runs(&log);
    assert_eq!(
        runs.get(&AFTER),
        Some(&vec![kept_ns.clone()]),
        "the task after the cut ran once, on {kept_host}"
    );
    CutRun {
        results,
        runs,
        cut_workers,
        cut_ns,
        kept_ns,
    }
}

impl CutRun {
    /// With `retries(0)`: every task has one result, either its own value or `WorkerDied`
    /// with `ExitCause::Lost` from a worker of the cut host (at least one); no task ran
    /// twice; every `Ok` task did run; a lost task never ran on the host that stayed, and
    /// every task that ran there is `Ok`.
    fn assert_only_the_cut_hosts_tasks_failed(&self) {
        let mut lost = Vec::new();
        for (i, result) in (0u64..).zip(&self.results) {
            let ran = self.runs.get(&i).map_or(&[][..], Vec::as_slice);
            match result {
                Ok(v) => {
                    assert_eq!(*v, i, "task {i} got another task's result");
                    assert!(!ran.is_empty(), "task {i} is Ok but never ran");
                }
                Err(Error::WorkerDied {
                    cause: ExitCause::Lost,
                    worker,
                    ..
                }) => {
                    assert!(
                        self.cut_workers.contains(worker),
                        "task {i} lost on worker {worker}, which was not on the cut host \
                         (its workers: {:?})",
                        self.cut_workers
                    );
                    assert!(
                        ran.iter().all(|ns| *ns == self.cut_ns),
                        "task {i} is lost with the cut host, but ran in {ran:?}"
                    );
                    lost.push(i);
                }
                Err(e) => panic!("task {i}: expected Ok or a lost host, got {e:?} ({e})"),
            }
            if ran.contains(&self.kept_ns) {
                assert!(
                    result.is_ok(),
                    "task {i} ran on the host that stayed: {result:?}"
                );
            }
        }
        println!("{} tasks lost with the cut host: {lost:?}", lost.len());
        assert!(!lost.is_empty(), "no task was lost with the cut host");
        let mut twice: Vec<(u64, &Vec<String>)> = self
            .runs
            .iter()
            .filter(|(_, ran)| ran.len() > 1)
            .map(|(&i, ran)| (i, ran))
            .collect();
        twice.sort_unstable();
        assert!(
            twice.is_empty(),
            "tasks that ran twice, and where: {twice:?}"
        );
        let kept = self
            .runs
            .values()
            .filter(|ran| ran[0] == self.kept_ns)
            .count();
        let cut = self
            .runs
            .values()
            .filter(|ran| ran[0] == self.cut_ns)
            .count();
        println!("tasks run on the cut host: {cut}, on the other: {kept}");
    }

    /// With `retries(n)`: every task ends `Ok` with its own value and ran at least once.
    fn assert_no_task_was_lost(&self) {
        for (i, result) in (0u64..).zip(&self.results) {
            assert_eq!(result, &Ok(i), "task {i}");
            assert!(self.runs.contains_key(&i), "task {i} is Ok but never ran");
        }
    }
}

/// Host 1 and host 2 over ssh, two workers each.
fn ssh_pair(c: &Cluster) -> Vec<Remote> {
    vec![
        Remote::ssh(c.host(1)).workers(2),
        Remote::ssh(c.host(2)).workers(2),
    ]
}

/// With `retries(0)`, a host cut mid-batch: only tasks it held fail, each with `WorkerDied`
/// and `ExitCause::Lost` (at least one), no task ran twice, every `Ok` task did run, the
/// pool goes on with the other host, and once the host is healed its agent and workers are
/// gone.
#[test]
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn a_host_cut_mid_batch_fails_only_its_tasks_and_runs_nothing_twice() {
    let _deadline = ppool_tests::deadline();
    let c = cluster();
    let hosts = (c.host(1), c.host(2));
    cut_mid_batch(&c, ssh_pair(&c), hosts, 0).assert_only_the_cut_hosts_tasks_failed();
}

/// With `retries(3)`, the same cut loses nothing: every task ends `Ok` with its own value
/// and ran at least once.
#[test]
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn a_host_cut_mid_batch_with_retries_loses_no_task() {
    let _deadline = ppool_tests::deadline();
    let c = cluster();
    let hosts = (c.host(1), c.host(2));
    cut_mid_batch(&c, ssh_pair(&c), hosts, 3).assert_no_task_was_lost();
}

// ---------------------------------------------------------------------------------------------
// The supervisor is SIGKILLed
// ---------------------------------------------------------------------------------------------

/// A supervisor SIGKILLed with a pool on node1 and node2: within 15 s no agent or worker of
/// it is left on either host. The supervisor is this test run again in a child process: a
/// pool on node1 and node2 whose workers have all answered, then `READY`, then a long sleep.
#[test]
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn hosts_clean_up_when_the_supervisor_is_sigkilled() {
    const TEST: &str = "hosts_clean_up_when_the_supervisor_is_sigkilled";
    let _deadline = ppool_tests::deadline();
    let c = cluster();
    if is_inner(TEST) {
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
        panic!("the supervisor was not killed within 60 s of READY");
    }
    let mut child = start_inner(TEST);
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
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn unreachable_hosts_fail_the_build_with_an_error_naming_them() {
    let _deadline = ppool_tests::deadline();
    let c = cluster();
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
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn shell_noise_before_the_agent_is_skipped() {
    let _deadline = ppool_tests::deadline();
    let c = cluster();
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
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn println_in_an_entry_does_not_break_results_over_ssh() {
    let _deadline = ppool_tests::deadline();
    let c = cluster();
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
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn a_host_running_another_build_is_refused() {
    let _deadline = ppool_tests::deadline();
    let c = cluster();
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
/// starts: no workers on a host, an empty host name, an empty command prefix,
/// and Slurm outside an allocation (checked only when this process is not in one). Nothing
/// is reached, so this test needs no cluster: the hosts named do not exist.
#[test]
fn bad_remote_settings_are_invalid_config() {
    let _deadline = ppool_tests::deadline();
    let mut cases = vec![
        ("workers(0) on an ssh host", Remote::ssh(NOWHERE).workers(0)),
        (
            "workers(0) on a command host",
            Remote::command([NO_LAUNCHER]).workers(0),
        ),
        ("an empty ssh host", Remote::ssh("").workers(1)),
        (
            "an empty command prefix",
            Remote::command(Vec::<String>::new()).workers(1),
        ),
    ];
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
/// within 10 s. It runs here, so this test needs no cluster.
#[test]
fn hand_typed_host_agent_exits_with_a_message() {
    let _deadline = ppool_tests::deadline();
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

/// The test Slurm: its nodes, `node1` and `node2`, are host 1 and host 2 (their slurmds run
/// in those hosts' network namespaces).
#[derive(Debug)]
struct Slurm {
    /// The node names, in the order of the hosts.
    nodes: Vec<String>,
}

impl Slurm {
    /// The name of the Slurm node that host `n` is (1 or 2, as the scripts count).
    fn node(&self, n: usize) -> &str {
        &self.nodes[n - 1]
    }
}

/// The test Slurm, from the cluster's environment; fails the test when that is not set.
fn slurm() -> Slurm {
    if std::env::var("PPOOL_TEST_SLURM").ok().as_deref() != Some("1") {
        panic!("PPOOL_TEST_SLURM is not 1, so there is no test Slurm: {HOW_TO_RUN}");
    }
    assert!(
        std::env::var_os("SLURM_CONF").is_some(),
        "PPOOL_TEST_SLURM=1 but SLURM_CONF is not set: source the cluster's whole env file"
    );
    let nodes: Vec<String> = std::env::var("PPOOL_TEST_SLURM_NODES")
        .expect("PPOOL_TEST_SLURM_NODES: source the cluster's whole env file")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(nodes.len(), 2, "two Slurm nodes: {nodes:?}");
    Slurm { nodes }
}

/// The deadline of a Slurm test: the usual one inside the allocation, and twice that for the
/// test that waits for the allocation and then for the test inside it.
fn slurm_deadline(test: &str) -> ppool_tests::Deadline {
    let secs = std::env::var(ppool_tests::DEADLINE_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&s: &u64| s > 0)
        .unwrap_or(ppool_tests::DEFAULT_DEADLINE_SECS);
    ppool_tests::deadline_secs(if is_inner(test) { secs } else { 2 * secs })
}

/// `sinfo`'s `NODE STATE` lines, and whether every node answers and can take a job (not
/// down, drained, silent or still completing a job: a node that missed a ping while it was
/// cut is `idle*` until it answers again, and a job that ran on it completes only then).
fn slurm_nodes_ready() -> (bool, String) {
    let out = bounded(20, "sinfo", &["-h", "-N", "-o", "%N %T"]);
    let listing = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let ready = out.status.success()
        && !listing.is_empty()
        && listing.lines().all(|line| {
            let state = line.split_whitespace().nth(1).unwrap_or("");
            ["idle", "mixed", "allocated"].contains(&state)
        });
    (ready, format!("{listing} ({})", text(&out)))
}

/// Runs the calling test, `test`, inside `salloc <salloc_args> --no-kill`: this test binary
/// again, for that test alone, with `INNER_ENV` naming it; checks that it passed there, and
/// returns `None` (the test is done). Inside the allocation, returns the cluster and the
/// Slurm for the test to build its pool and do its checks.
fn in_allocation(test: &str, salloc_args: &[&str]) -> Option<(Cluster, Slurm)> {
    let c = cluster();
    let s = slurm();
    if is_inner(test) {
        assert!(
            std::env::var_os("SLURM_JOB_ID").is_some(),
            "{INNER_ENV} is set but SLURM_JOB_ID is not: not inside an allocation"
        );
        return Some((c, s));
    }
    // A node cut by an earlier test may still be marked silent, or completing that test's
    // job: wait until both take jobs.
    let waited = Instant::now();
    let (mut ready, mut listing) = slurm_nodes_ready();
    while !ready && waited.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(500));
        (ready, listing) = slurm_nodes_ready();
    }
    assert!(
        ready,
        "the Slurm nodes do not all take jobs 90 s on: {listing}"
    );
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["--kill-after=5", "120", "salloc"])
        .args(salloc_args)
        .args(["--no-kill", "-J", "ppool-remote-test"])
        .arg(std::env::current_exe().expect("this test binary"))
        .args(only(test))
        .env(INNER_ENV, test)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run salloc");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "salloc {salloc_args:?}: {:?} after {:?}; the test inside printed:\n{}\n{}",
        out.status,
        started.elapsed(),
        stdout.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert_ne!(out.status.code(), Some(124), "salloc hangs");
    // salloc exits as the test binary did; the summary says the one test ran, and passed.
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "the test inside the allocation did not pass (its output is above)"
    );
    None
}

/// The CPUs of each node of the allocation, from `SLURM_JOB_CPUS_PER_NODE` (`2(x2)`, `4,2`).
fn cpus_per_node() -> Vec<usize> {
    let value = std::env::var("SLURM_JOB_CPUS_PER_NODE").expect("SLURM_JOB_CPUS_PER_NODE");
    let mut cpus = Vec::new();
    for part in value.split(',') {
        let (n, times) = match part.split_once("(x") {
            Some((n, times)) => (n, times.trim_end_matches(')')),
            None => (part, "1"),
        };
        let n: usize = n.parse().expect("a CPU count");
        let times: usize = times.parse().expect("a repeat count");
        cpus.extend(std::iter::repeat_n(n, times));
    }
    cpus
}

/// The nodes of the allocation, in order, by `scontrol show hostnames`.
fn allocated_nodes() -> Vec<String> {
    let list = std::env::var("SLURM_JOB_NODELIST").expect("SLURM_JOB_NODELIST");
    let out = bounded(20, "scontrol", &["show", "hostnames", &list]);
    assert!(
        out.status.success(),
        "scontrol show hostnames: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A `Remote::slurm()` pool inside a one-node allocation (`salloc -N1 -n2`) has one worker
/// per CPU given there, names that node in the insights, and runs a batch there and only
/// there: the other node of the cluster runs nothing.
#[test]
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn slurm_pool_runs_on_the_allocation() {
    const TEST: &str = "slurm_pool_runs_on_the_allocation";
    let _deadline = slurm_deadline(TEST);
    let Some((c, s)) = in_allocation(TEST, &["-N1", "-n2"]) else {
        return;
    };
    let nodes = allocated_nodes();
    let cpus = cpus_per_node();
    assert_eq!(nodes.len(), 1, "one node: {nodes:?}");
    let n = 1 + s
        .nodes
        .iter()
        .position(|node| *node == nodes[0])
        .unwrap_or_else(|| panic!("{nodes:?} is not one of the cluster's nodes {s:?}"));
    let pool = ProcessPool::<square_where>::builder()
        .remote(Remote::slurm())
        .build()
        .expect("a pool on the allocation");
    println!("n_jobs {} for {nodes:?} with CPUs {cpus:?}", pool.n_jobs());
    assert_workers_on(&pool, &[(s.node(n), cpus[0])]);
    assert_ran_on_exactly(&pool, 1_000, &[&c.ns_id(n)]);
}

/// A `Remote::slurm()` pool inside a two-node allocation (`salloc -N2
/// --ntasks-per-node=2`) has one worker per CPU given on each node and names both nodes in
/// the insights; a batch of 10,000 comes back right, and one slow call per worker at once
/// runs on both nodes: in both nodes' network namespaces, and nowhere else.
#[test]
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn slurm_pool_runs_on_both_nodes_of_the_allocation() {
    const TEST: &str = "slurm_pool_runs_on_both_nodes_of_the_allocation";
    let _deadline = slurm_deadline(TEST);
    let Some((c, s)) = in_allocation(TEST, &["-N2", "--ntasks-per-node=2"]) else {
        return;
    };
    let nodes = allocated_nodes();
    let cpus = cpus_per_node();
    assert_eq!(nodes, s.nodes, "both nodes, in order");
    assert_eq!(cpus.len(), 2, "CPUs of each node: {cpus:?}");
    let pool = ProcessPool::<square_where>::builder()
        .remote(Remote::slurm())
        .build()
        .expect("a pool on the allocation");
    println!("n_jobs {} for {nodes:?} with CPUs {cpus:?}", pool.n_jobs());
    assert_workers_on(&pool, &[(s.node(1), cpus[0]), (s.node(2), cpus[1])]);
    assert_ran_on_exactly(&pool, 10_000, &[&c.ns_id(1), &c.ns_id(2)]);
}

/// Slurm nodes 1 and 2 of a two-node allocation, two workers each.
fn slurm_pair() -> Vec<Remote> {
    vec![Remote::slurm().workers_per_node(2)]
}

/// With `retries(0)`, a Slurm node cut in the middle of a batch, inside a two-node
/// allocation: only the tasks that node held fail, each with `WorkerDied` and
/// `ExitCause::Lost` from one of its workers; no task runs twice; the pool goes on with the
/// other node; and once the node is healed, no process of ours is left on it.
#[test]
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn a_slurm_node_cut_mid_batch_fails_only_its_tasks_and_runs_nothing_twice() {
    const TEST: &str = "a_slurm_node_cut_mid_batch_fails_only_its_tasks_and_runs_nothing_twice";
    let _deadline = slurm_deadline(TEST);
    let Some((c, s)) = in_allocation(TEST, &["-N2", "--ntasks-per-node=2"]) else {
        return;
    };
    assert_eq!(allocated_nodes(), s.nodes, "both nodes, in order");
    let nodes = (s.node(1), s.node(2));
    cut_mid_batch(&c, slurm_pair(), nodes, 0).assert_only_the_cut_hosts_tasks_failed();
}

/// With `retries(3)`, the same cut of a Slurm node loses nothing: every task ends `Ok` with
/// its own value and ran at least once.
#[test]
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn a_slurm_node_cut_mid_batch_with_retries_loses_no_task() {
    const TEST: &str = "a_slurm_node_cut_mid_batch_with_retries_loses_no_task";
    let _deadline = slurm_deadline(TEST);
    let Some((c, s)) = in_allocation(TEST, &["-N2", "--ntasks-per-node=2"]) else {
        return;
    };
    assert_eq!(allocated_nodes(), s.nodes, "both nodes, in order");
    let nodes = (s.node(1), s.node(2));
    cut_mid_batch(&c, slurm_pair(), nodes, 3).assert_no_task_was_lost();
}

/// `add_remote` over ssh during a batch: host 2 joins a pool on host 1 and runs part of the
/// batch; every task runs; `join` leaves nothing on either host.
#[test]
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn ssh_host_added_during_a_batch_runs_part_of_it() {
    let _deadline = ppool_tests::deadline();
    let c = cluster();
    let (ns1, ns2) = (c.ns_id(1), c.ns_id(2));
    let pool = ProcessPool::<nap_where>::builder()
        .remote(Remote::ssh(c.host(1)).workers(2))
        .chunk_size(1)
        .build()
        .expect("a pool on node1");
    let batch = pool.batch(std::iter::repeat_n(30u64, 120));
    pool.add_remote(Remote::ssh(c.host(2)).workers(2))
        .expect("node2 joins");
    assert_eq!(pool.n_jobs(), 4);
    let ran = batch.wait().expect("the batch");
    assert_eq!(ran.len(), 120);
    assert!(ran.iter().all(|ns| *ns == ns1 || *ns == ns2), "{ran:?}");
    assert!(ran.contains(&ns2), "node2 ran none of the batch");
    pool.join().expect("join");
    let left = left_behind(
        &[c.ns(1).to_string(), c.ns(2).to_string()],
        Duration::from_secs(10),
    );
    assert!(left.is_empty(), "left after join: {left:?}");
}

/// With `rejoin(true)`, a host cut until it is down (lost, then not started again) rejoins
/// once healed, and runs tasks again; its history says lost, down, back.
#[test]
#[ignore = "needs the test cluster: as root, bash .ci/cluster/up and source its env file"]
fn an_ssh_host_cut_then_healed_rejoins() {
    let _deadline = ppool_tests::deadline_secs(300);
    let c = cluster();
    let ns1 = c.ns_id(1);
    let pool = ProcessPool::<nap_where>::builder()
        .remote(Remote::ssh(c.host(1)).workers(2))
        .remote(Remote::ssh(c.host(2)).workers(2))
        .host_timeout(Duration::from_secs(3))
        .rejoin(true)
        .chunk_size(1)
        .build()
        .expect("a pool on node1 and node2");
    let host1 = |pool: &ProcessPool<nap_where>| {
        pool.insights()
            .hosts
            .into_iter()
            .find(|h| h.name == c.host(1))
            .expect("node1 in insights")
    };
    let down = |h: &ppool::HostInsights| {
        h.history
            .iter()
            .any(|c| matches!(c.event, ppool::HostEvent::Down { .. }))
    };
    let mut healer = c.cut(1);
    let started = Instant::now();
    while !(host1(&pool).running == 0 && down(&host1(&pool))) {
        assert!(
            started.elapsed() < Duration::from_secs(110),
            "node1 not down after 110 s: {:#?}",
            host1(&pool)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The pool goes on with node2 meanwhile.
    assert!(pool.call(1).is_ok());
    healer.heal();
    let started = Instant::now();
    while host1(&pool).running < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "node1 did not rejoin within 120 s of healing: {:#?}",
            host1(&pool)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // One task per job, every worker busy: node1's two take their share.
    let ran = pool
        .batch(std::iter::repeat_n(50u64, 40))
        .wait()
        .expect("a batch");
    assert!(
        ran.contains(&ns1),
        "node1 ran nothing after rejoining: {ran:?}"
    );
    let history = host1(&pool).history;
    assert!(
        matches!(
            history.last().map(|c| &c.event),
            Some(ppool::HostEvent::Back)
        ),
        "{history:#?}"
    );
    pool.join().expect("join");
}
