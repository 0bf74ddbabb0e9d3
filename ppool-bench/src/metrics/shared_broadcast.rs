//! Part 1 of the `shared` metric: one large value to every worker of a pool, by
//! `share_bytes`, by `share` (a typed value), by value in every task's arguments, and by
//! value to an initializer (once per worker), beside Python's `multiprocessing.Pool` (the
//! value in every task, or given once to an `initializer`, under fork and under spawn) and
//! mpire's `shared_objects`.
//!
//! Every worker runs one task that reads one byte of each 4 KiB page of the value, notes the
//! time (CLOCK_MONOTONIC, one clock for every process of the machine), leaves a marker file
//! named by its pid in a directory, and waits there until the program creates `release`.
//! So each worker gets exactly one task (a blocked worker takes no other), the time until the
//! last worker read the value is taken in the workers themselves, and the memory of the
//! host's processes is read while every worker still holds the value.
//!
//! Each ppool run is a process of its own (this binary in [`child`] mode): its pool, its
//! agents and workers are its alone, and whatever a failed run leaves is killed by the
//! environment variable they all carry.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ppool::{Builder, Entry, ProcessPool, Remote, Shared, SharedBytes, Task, pool_entry};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value, json};
use std::sync::OnceLock;

use super::py_args;
use super::remote_scale::{Outcome, emit, run_child};
use crate::BenchResult;
use crate::anchors::python::PythonEnv;
use crate::children::{self, SHARED_BROADCAST};
use crate::procs::{self, Memory};
use crate::report::fmt_value;
use crate::results::{Cell, Column, MetricResult, Table, TableRow};
use crate::stats::median;

/// The page size the readers step by.
pub(crate) const PAGE: usize = 4096;
/// The file whose creation lets the waiting workers return.
const RELEASE: &str = "release";
/// How long a worker waits at the barrier before its task fails.
const BARRIER_WAIT: Duration = Duration::from_secs(120);
/// How long the program waits for every worker to arrive.
const ARRIVE_WAIT: Duration = Duration::from_secs(100);
/// How long one run (a ppool child, or the Python anchors of one layout) may take.
const RUN_LIMIT: Duration = Duration::from_secs(180);
/// The variable of the prefix that names the host, and the one that marks one run's
/// processes (the child, its agents and workers inherit it).
const HOST_VAR: &str = "HOSTN";
const RUN_VAR: &str = "PPOOL_BENCH_SHARED_RUN";

/// One byte of each page of `bytes`, summed: every page read once.
pub(crate) fn page_sum(bytes: &[u8]) -> u64 {
    bytes.iter().step_by(PAGE).map(|&b| u64::from(b)).sum()
}

/// The value: `len` bytes, every page written (so resident before it is shared).
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 12) as u8)
        .collect()
}

/// A large buffer in a task's arguments, by value: the wire form of a `Vec<u8>` sent as
/// bytes (what `serde_bytes` writes), one `Arc` on the sending side (no copy per task on
/// the program's side), a fresh `Vec<u8>` in the worker.
#[derive(Debug, Clone)]
pub(crate) struct Payload(Arc<Vec<u8>>);

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
        Ok(Payload(Arc::new(bytes.into_vec())))
    }
}

/// What a reader returns: its pid, when it had read the value (ns), its page sum.
type Read = Result<(u32, u64, u64), String>;

/// Reads `bytes`, arrives at the barrier in `dir`, waits for the release.
fn read_and_wait(bytes: &[u8], dir: &str) -> Read {
    let sum = page_sum(bytes);
    let at = procs::monotonic_ns();
    arrive(Path::new(dir), at)?;
    Ok((std::process::id(), at, sum))
}

/// Leaves this process's marker (`dir/<pid>`, holding `at`) and waits for `dir/release`.
fn arrive(dir: &Path, at: u64) -> Result<(), String> {
    let pid = std::process::id();
    let tmp = dir.join(format!(".{pid}"));
    fs::write(&tmp, at.to_string()).map_err(|e| format!("marker: {e}"))?;
    fs::rename(&tmp, dir.join(pid.to_string())).map_err(|e| format!("marker: {e}"))?;
    let release = dir.join(RELEASE);
    let deadline = Instant::now() + BARRIER_WAIT;
    while !release.exists() {
        if Instant::now() > deadline {
            return Err(format!("not released within {BARRIER_WAIT:?}"));
        }
        thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// How many workers have arrived in `dir`.
fn arrived(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .count()
    })
}

#[pool_entry]
fn read_shared(bytes: SharedBytes, dir: String) -> Read {
    read_and_wait(&bytes, &dir)
}

#[pool_entry]
fn read_typed(value: Shared<Vec<u8>>, dir: String) -> Read {
    read_and_wait(&value, &dir)
}

#[pool_entry]
fn read_owned(value: Payload, dir: String) -> Read {
    read_and_wait(&value.0, &dir)
}

/// What the initializer of this worker kept: when it had read the value (ns), its page sum,
/// and the value.
static KEPT: OnceLock<(u64, u64, Payload)> = OnceLock::new();

/// The initializer: reads the value it was given, notes when, keeps it.
#[pool_entry]
fn keep(value: Payload) {
    let sum = page_sum(&value.0);
    let _ = KEPT.set((procs::monotonic_ns(), sum, value));
}

/// A task of a pool whose initializer kept the value: arrives at the barrier with the time
/// the initializer had read it.
#[pool_entry]
fn read_kept(dir: String) -> Read {
    let Some((at, sum, _)) = KEPT.get() else {
        return Err("this worker's initializer kept no value".into());
    };
    arrive(Path::new(&dir), *at)?;
    Ok((std::process::id(), *at, *sum))
}

/// Sleeps `ms`; returns its worker's pid (to start every worker before anything is timed).
#[pool_entry]
fn hello(ms: u64) -> u32 {
    thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// How the value reaches ppool's workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `pool.share_bytes(vec)`, `SharedBytes` in the tasks.
    Bytes,
    /// `pool.share(vec)`, `Shared<Vec<u8>>` in the tasks (decoded once per worker).
    Typed,
    /// The bytes themselves in every task's arguments.
    Args,
    /// The bytes given to an initializer (`Builder::initializer`), once per worker.
    Init,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Bytes, Kind::Typed, Kind::Args, Kind::Init];

    /// Whether it sends the value once per task or worker (the slow anchors).
    fn by_value(self) -> bool {
        matches!(self, Kind::Args | Kind::Init)
    }

    fn arg(self) -> &'static str {
        match self {
            Kind::Bytes => "bytes",
            Kind::Typed => "typed",
            Kind::Args => "args",
            Kind::Init => "init",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.arg() == s)
    }

    /// Its column in the tables.
    pub(crate) fn column(self) -> &'static str {
        match self {
            Kind::Bytes => "share_bytes",
            Kind::Typed => "Shared<Vec>",
            Kind::Args => "Vec per task",
            Kind::Init => "initializer",
        }
    }
}

/// The Python contenders' columns, as `anchors.py shared_broadcast` names them.
pub(crate) const MP_TASK: &str = "mp per task";
pub(crate) const MP_INIT: &str = "mp initializer";
pub(crate) const MP_INIT_SPAWN: &str = "mp initializer spawn";
pub(crate) const MPIRE: &str = "mpire shared";
const PY_COLUMNS: [&str; 4] = [MP_TASK, MP_INIT, MP_INIT_SPAWN, MPIRE];

/// Where the workers are: `hosts` command-prefix hosts of `per_host` workers each, or
/// (`hosts == 0`) `per_host` local workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) hosts: usize,
    pub(crate) per_host: usize,
}

impl Layout {
    pub(crate) fn workers(self) -> usize {
        self.per_host * self.hosts.max(1)
    }

    /// The prefix of its figures' names, and its table's title.
    pub(crate) fn name(self) -> String {
        if self.hosts == 0 {
            format!("{} local", self.per_host)
        } else {
            format!("{}x{} hosts", self.hosts, self.per_host)
        }
    }
}

/// The key of a figure: `<layout>: <column>: <key>`.
pub(crate) fn key(layout: Layout, column: &str, figure: &str) -> String {
    format!("{}: {column}: {figure}", layout.name())
}

/// The figures each run reports, as rows of the table: label, key.
pub(crate) const ROWS: &[(&str, &str)] = &[
    ("until every worker read it, ms", MS),
    ("  of which share() itself, ms", "share ms"),
    ("workers that read it (one task each)", "workers"),
    ("host memory, PSS summed / size", PSS),
    ("host memory, RSS summed / size", "rss x"),
    ("bytes into a host's stream / size", STREAM),
    ("hosts", "hosts"),
    ("program (supervisor) PSS growth / size", "supervisor pss x"),
];
pub(crate) const MS: &str = "ms";
pub(crate) const PSS: &str = "pss x";
pub(crate) const STREAM: &str = "stream x";

/// Repetitions of the value in every task's arguments (ppool and mp) to more than a few
/// workers: at 16 workers one takes about 15 s here.
pub(crate) const HEAVY_REPS: usize = 2;
const HEAVY_WORKERS: usize = 4;

/// Whether repetition `rep` (from 0) of `layout` still runs the by-value anchors.
fn runs_heavy(layout: Layout, rep: usize) -> bool {
    layout.workers() <= HEAVY_WORKERS || rep < HEAVY_REPS
}

/// Runs every contender of `layout` `reps` times, interleaved, recording into `m`; returns
/// the table of medians. Past [`HEAVY_REPS`], the by-value anchors of a layout of more than
/// [`HEAVY_WORKERS`] workers are left out.
pub(crate) fn run(
    m: &mut MetricResult,
    python: Option<&PythonEnv>,
    layout: Layout,
    size: usize,
    reps: usize,
) -> Table {
    let n = layout.workers();
    let mut columns: Vec<Column> = Kind::ALL
        .iter()
        .map(|k| Column {
            name: k.column().to_owned(),
            error: None,
        })
        .collect();
    // The Python anchors run in one process per repetition; their columns share its fate.
    let sides = Kind::ALL.len() + usize::from(python.is_some());
    for rep in 0..reps {
        let mut order: Vec<usize> = (0..sides).collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for side in order {
            let (label, outcome) = match Kind::ALL.get(side) {
                Some(&kind) => {
                    if columns[side].error.is_some()
                        || (kind.by_value() && !runs_heavy(layout, rep))
                    {
                        continue;
                    }
                    (kind.column(), run_ppool(kind, layout, size))
                }
                None => match python {
                    Some(env) => ("python", run_python(env, n, size, runs_heavy(layout, rep))),
                    None => continue,
                },
            };
            eprintln!(
                "  {} {label} (rep {}/{reps}): {}",
                layout.name(),
                rep + 1,
                outcome
                    .values
                    .iter()
                    .filter(|(k, _)| k != "run s")
                    .map(|(k, v)| format!("{k} {}", fmt_value(*v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for (name, value) in &outcome.values {
                if name == "run s" {
                    continue;
                }
                let full = if side < Kind::ALL.len() {
                    key(layout, label, name)
                } else {
                    // anchors.py names its figures `<column>: <key>`.
                    format!("{}: {name}", layout.name())
                };
                m.record(&full, *value);
            }
            for note in outcome.notes {
                m.note(note);
            }
            if let Some(e) = outcome.error {
                let e = format!("{} {label}, repetition {}: {e}", layout.name(), rep + 1);
                // A run skipped for memory may fit in a later repetition.
                let skipped = e.contains("skipped: needs");
                eprintln!("    error: {e}");
                m.note(e.clone());
                if side < Kind::ALL.len() && !skipped {
                    columns[side].error = Some(e);
                }
            }
        }
    }
    for py in PY_COLUMNS {
        if python.is_some() {
            columns.push(Column {
                name: py.to_owned(),
                error: None,
            });
        }
    }
    let rows = ROWS
        .iter()
        .map(|&(label, figure)| TableRow {
            label: label.to_owned(),
            cells: columns
                .iter()
                .map(|c| {
                    m.samples(&key(layout, &c.name, figure))
                        .and_then(median)
                        .map_or(Cell::NotApplicable, Cell::Value)
                })
                .collect(),
        })
        .collect();
    Table { columns, rows }
}

/// Memory the machine keeps free beyond what a run needs.
const MEMORY_MARGIN: u64 = 2 << 30;

/// About the most memory one ppool run takes, in copies of the value (from runs of this
/// metric): the program's value and its memfd, one memfd per remote host, one decoded copy
/// per worker for a typed value; by value, the program keeps every task's encoded
/// arguments, and each worker a received frame and the decoded copy.
pub(crate) fn copies_needed(kind: Kind, layout: Layout) -> usize {
    let n = layout.workers();
    match kind {
        Kind::Bytes => 2 + layout.hosts,
        Kind::Typed => 2 + layout.hosts + n,
        Kind::Args | Kind::Init => 1 + 3 * n,
    }
}

/// `Err` with a note if the machine has less memory available than `copies` of `size`
/// and a margin.
fn room_for(copies: usize, size: usize) -> Result<(), String> {
    let need = (copies * size) as u64 + MEMORY_MARGIN;
    match procs::mem_available() {
        Some(available) if available < need => Err(format!(
            "skipped: needs about {:.1} GiB, the machine has {:.1} GiB available",
            need as f64 / f64::from(1 << 30),
            available as f64 / f64::from(1 << 30)
        )),
        _ => Ok(()),
    }
}

/// Distinguishes the runs of this bench process.
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty directory for one run's markers.
fn marker_dir() -> BenchResult<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "ppool-bench-shared-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn run_ppool(kind: Kind, layout: Layout, size: usize) -> Outcome {
    if let Err(why) = room_for(copies_needed(kind, layout), size) {
        return Outcome::failed(why);
    }
    let dir = match marker_dir() {
        Ok(dir) => dir,
        Err(e) => return Outcome::failed(format!("marker directory: {e}")),
    };
    let tag = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut cmd = match children::self_command(SHARED_BROADCAST) {
        Ok(cmd) => cmd,
        Err(e) => return Outcome::failed(e.to_string()),
    };
    cmd.args([
        kind.arg().to_owned(),
        layout.hosts.to_string(),
        layout.per_host.to_string(),
        size.to_string(),
    ])
    .arg(&dir)
    .env(RUN_VAR, &tag);
    let mut out = run_child(kind.column(), &mut cmd, RUN_LIMIT);
    // Whatever of the run outlived it (after a failure or a kill) goes now.
    let left = procs::with_env(RUN_VAR, &tag);
    if !left.is_empty() {
        out.notes.push(format!(
            "{} {}: {} processes of a run were left after it ended, and were killed",
            layout.name(),
            kind.column(),
            left.len()
        ));
        procs::kill_all(&left);
    }
    let _ = fs::remove_dir_all(&dir);
    out
}

fn run_python(env: &PythonEnv, workers: usize, size: usize, per_task: bool) -> Outcome {
    let dir = match marker_dir() {
        Ok(dir) => dir,
        Err(e) => return Outcome::failed(format!("marker directory: {e}")),
    };
    let args = py_args(&[
        ("workers", workers.to_string()),
        ("bytes", size.to_string()),
        ("dir", dir.to_string_lossy().into_owned()),
        ("wave-timeout", ARRIVE_WAIT.as_secs().to_string()),
        ("margin", MEMORY_MARGIN.to_string()),
        ("per-task", u8::from(per_task).to_string()),
    ]);
    let mut cmd = env.command("shared_broadcast", &args);
    let out = run_child("python", &mut cmd, RUN_LIMIT);
    let _ = fs::remove_dir_all(&dir);
    out
}

// ---- the child: one contender, one layout, in a process of its own ----

/// Child mode `SHARED_BROADCAST KIND HOSTS PER_HOST BYTES DIR`: prints
/// `{"values": {...}}`, or `{"error": why}` and exits with 3 (leaving the pool to the parent,
/// which kills what is left by [`RUN_VAR`]).
pub(crate) fn child(args: &[String]) -> BenchResult<()> {
    let [kind, hosts, per_host, size, dir] = args else {
        return Err("shared broadcast child needs KIND HOSTS PER_HOST BYTES DIR".into());
    };
    let kind = Kind::parse(kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
    let layout = Layout {
        hosts: hosts.parse()?,
        per_host: per_host.parse()?,
    };
    let size: usize = size.parse()?;
    match measure(kind, layout, size, Path::new(dir)) {
        Ok(values) => {
            let map: serde_json::Map<String, Value> = values
                .into_iter()
                .map(|(k, v)| (k.to_owned(), json!(v)))
                .collect();
            emit(json!({ "values": map }));
            Ok(())
        }
        Err(e) => {
            // Lets any worker still waiting go.
            let _ = fs::write(Path::new(dir).join(RELEASE), "");
            emit(json!({ "error": e.to_string() }));
            std::process::exit(3)
        }
    }
}

/// The processes of each host: local, this process and its children; remote, each agent (a
/// child of this process) and its children. Each list starts with the agent, if any.
fn hosts(me: i32, tag: &str, local: bool) -> Vec<Vec<i32>> {
    let found = procs::with_env(RUN_VAR, tag);
    if local {
        let mut host = vec![me];
        host.extend(found.iter().filter(|p| p.ppid == me).map(|p| p.pid));
        return vec![host];
    }
    found
        .iter()
        .filter(|p| p.ppid == me)
        .map(|agent| {
            let mut host = vec![agent.pid];
            host.extend(found.iter().filter(|p| p.ppid == agent.pid).map(|p| p.pid));
            host
        })
        .collect()
}

fn memory_of(pids: &[i32]) -> Memory {
    pids.iter().filter_map(|&pid| procs::memory(pid)).sum()
}

/// What the child holds while the tasks run (and so the value stays alive).
#[allow(dead_code)]
enum Held {
    Bytes(SharedBytes),
    Typed(Shared<Vec<u8>>),
    Args(Payload),
}

fn measure(
    kind: Kind,
    layout: Layout,
    size: usize,
    dir: &Path,
) -> BenchResult<Vec<(&'static str, f64)>> {
    let me = i32::try_from(std::process::id())?;
    let tag = std::env::var(RUN_VAR)?;
    let local = layout.hosts == 0;
    if kind == Kind::Init {
        return measure_init(layout, size, dir, me, &tag);
    }
    let pool = builder::<read_shared>(layout, &tag).build()?;
    let n = pool.n_jobs();
    if n != layout.workers() {
        return Err(format!("the pool has {n} workers, not {}", layout.workers()).into());
    }
    // Every worker started and used once.
    let hello: HashSet<u32> = pool
        .entry::<hello>()
        .batch(vec![50; n])
        .wait()?
        .into_iter()
        .collect();
    let hosts = hosts(me, &tag, local);
    let before: Vec<Memory> = hosts.iter().map(|h| memory_of(h)).collect();
    let supervisor_before = procs::memory(me).unwrap_or_default();
    let agents: Vec<i32> = if local {
        Vec::new()
    } else {
        hosts.iter().map(|h| h[0]).collect()
    };
    let read_before: Vec<u64> = agents
        .iter()
        .map(|&a| procs::bytes_read(a).unwrap_or(0))
        .collect();

    let value = pattern(size);
    let expected = page_sum(&value);
    let d = dir.to_string_lossy().into_owned();
    let start = procs::monotonic_ns();
    let mut shared_at = start;
    let (held, tasks): (Held, Vec<Task<Read>>) = match kind {
        Kind::Bytes => {
            let s = pool.share_bytes(value)?;
            shared_at = procs::monotonic_ns();
            let tasks = (0..n)
                .map(|_| pool.submit((s.clone(), d.clone())))
                .collect();
            (Held::Bytes(s), tasks)
        }
        Kind::Typed => {
            let view = pool.entry::<read_typed>();
            let s = view.share(value)?;
            shared_at = procs::monotonic_ns();
            let tasks = (0..n)
                .map(|_| view.submit((s.clone(), d.clone())))
                .collect();
            (Held::Typed(s), tasks)
        }
        Kind::Args => {
            let view = pool.entry::<read_owned>();
            let p = Payload(Arc::new(value));
            let tasks = (0..n)
                .map(|_| view.submit((p.clone(), d.clone())))
                .collect();
            (Held::Args(p), tasks)
        }
        Kind::Init => return Err("an initializer's value is measured apart".into()),
    };
    // Until every worker holds the value (or a task ended: an error, since none returns
    // before the release).
    let deadline = Instant::now() + ARRIVE_WAIT;
    while arrived(dir) < n {
        if tasks.iter().any(Task::is_done) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {n} workers read the value within {ARRIVE_WAIT:?}",
                arrived(dir)
            )
            .into());
        }
        thread::sleep(Duration::from_millis(2));
    }
    let after: Vec<Memory> = hosts.iter().map(|h| memory_of(h)).collect();
    let supervisor_after = procs::memory(me).unwrap_or_default();
    let read_after: Vec<u64> = agents
        .iter()
        .map(|&a| procs::bytes_read(a).unwrap_or(0))
        .collect();
    let (pids, last) = release(dir, tasks, start, expected)?;
    if pids.len() != n {
        return Err(format!(
            "{n} tasks ran on {} workers (one each expected; {} answered hello)",
            pids.len(),
            hello.len()
        )
        .into());
    }
    drop(held);

    let size_kib = size as f64 / 1024.0;
    let grown = |pick: fn(&Memory) -> u64| {
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| pick(a).saturating_sub(pick(b)) as f64 / size_kib)
            .fold(0.0, f64::max)
    };
    let mut values = vec![
        (MS, (last - start) as f64 / 1e6),
        ("workers", pids.len() as f64),
        (PSS, grown(|m| m.pss_kib)),
        ("rss x", grown(|m| m.rss_kib)),
        ("hosts", hosts.len() as f64),
        (
            "processes per host",
            hosts.iter().map(Vec::len).max().unwrap_or(0) as f64,
        ),
        (
            "supervisor pss x",
            supervisor_after
                .pss_kib
                .saturating_sub(supervisor_before.pss_kib) as f64
                / size_kib,
        ),
    ];
    if kind != Kind::Args {
        values.push(("share ms", (shared_at - start) as f64 / 1e6));
    }
    if !local {
        let most = read_before
            .iter()
            .zip(&read_after)
            .map(|(b, a)| a.saturating_sub(*b))
            .max()
            .unwrap_or(0);
        values.push((STREAM, most as f64 / size as f64));
    }
    pool.join()?;
    Ok(values)
}

/// Lets the waiting readers go, and checks what each read: the pids of the workers that
/// ran them, and when the last had read the value (`start` if none did).
fn release(
    dir: &Path,
    tasks: Vec<Task<Read>>,
    start: u64,
    expected: u64,
) -> BenchResult<(HashSet<u32>, u64)> {
    fs::write(dir.join(RELEASE), "")?;
    let mut pids = HashSet::new();
    let mut last = start;
    for task in tasks {
        let (pid, at, sum) = task.wait()??;
        if sum != expected {
            return Err("a worker read other bytes".into());
        }
        pids.insert(pid);
        last = last.max(at);
    }
    Ok((pids, last))
}

/// A builder of the pool of `layout`, its processes marked with `tag`.
fn builder<E: Entry>(layout: Layout, tag: &str) -> Builder<E> {
    let builder = ProcessPool::<E>::builder().name("bench-shared");
    if layout.hosts == 0 {
        return builder.n_jobs(layout.per_host);
    }
    (0..layout.hosts).fold(builder, |builder, i| {
        builder.remote(
            Remote::command([
                "env".to_owned(),
                format!("{HOST_VAR}={i}"),
                format!("{RUN_VAR}={tag}"),
            ])
            .workers(layout.per_host),
        )
    })
}

/// The value given to an initializer: timed from `build()` (which starts the workers, and
/// each runs the initializer) until the last initializer had read it, as mp's initializer
/// columns are timed from `Pool()`. Memory is not compared (no pool exists before the
/// value), and the bytes into a host's stream are all its agent read.
fn measure_init(
    layout: Layout,
    size: usize,
    dir: &Path,
    me: i32,
    tag: &str,
) -> BenchResult<Vec<(&'static str, f64)>> {
    let value = pattern(size);
    let expected = page_sum(&value);
    let start = procs::monotonic_ns();
    let pool = builder::<read_kept>(layout, tag)
        .initializer::<keep>(Payload(Arc::new(value)))
        .build()?;
    let n = pool.n_jobs();
    let d = dir.to_string_lossy().into_owned();
    let tasks: Vec<Task<Read>> = (0..n).map(|_| pool.submit(d.clone())).collect();
    let deadline = Instant::now() + ARRIVE_WAIT;
    while arrived(dir) < n && !tasks.iter().any(Task::is_done) {
        if Instant::now() > deadline {
            return Err(format!("{} of {n} workers arrived", arrived(dir)).into());
        }
        thread::sleep(Duration::from_millis(2));
    }
    let (pids, last) = release(dir, tasks, start, expected)?;
    if pids.len() != n {
        return Err(format!("{n} tasks ran on {} workers", pids.len()).into());
    }
    let hosts = hosts(me, tag, layout.hosts == 0);
    let mut values = vec![
        (MS, (last - start) as f64 / 1e6),
        ("workers", pids.len() as f64),
        ("hosts", hosts.len() as f64),
    ];
    if layout.hosts > 0 {
        let most = hosts
            .iter()
            .map(|h| procs::bytes_read(h[0]).unwrap_or(0))
            .max()
            .unwrap_or(0);
        values.push((STREAM, most as f64 / size as f64));
    }
    pool.join()?;
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_and_keys() {
        let local = Layout {
            hosts: 0,
            per_host: 2,
        };
        let hosts = Layout {
            hosts: 4,
            per_host: 4,
        };
        assert_eq!((local.workers(), hosts.workers()), (2, 16));
        assert_eq!(key(local, "share_bytes", MS), "2 local: share_bytes: ms");
        assert_eq!(key(hosts, MP_TASK, PSS), "4x4 hosts: mp per task: pss x");
        assert_eq!(copies_needed(Kind::Bytes, hosts), 6);
        assert_eq!(copies_needed(Kind::Args, local), 7);
        assert!(room_for(0, 0).is_ok());
        assert!(runs_heavy(local, 4) && runs_heavy(hosts, 1) && !runs_heavy(hosts, 2));
        assert!(room_for(1 << 20, 1 << 30).is_err());
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.arg()), Some(kind));
        }
    }

    #[test]
    fn payloads_travel_as_bytes() -> BenchResult<()> {
        let p = Payload(Arc::new(vec![1, 2, 3]));
        let wire = postcard::to_allocvec(&p)?;
        assert_eq!(wire, postcard::to_allocvec(&vec![1u8, 2, 3])?);
        let back: Payload = postcard::from_bytes(&wire)?;
        assert_eq!(*back.0, [1, 2, 3]);
        Ok(())
    }

    #[test]
    fn readers_arrive_and_wait_for_the_release() -> BenchResult<()> {
        let dir = marker_dir()?;
        fs::write(dir.join(RELEASE), "")?;
        let (pid, at, sum) = read_and_wait(&[7u8; 2 * PAGE], &dir.to_string_lossy())?;
        assert_eq!((pid, sum), (std::process::id(), 14));
        assert!(at > 0 && arrived(&dir) == 1);
        fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
