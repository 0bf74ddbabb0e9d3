//! Metric: remote workers by count. H "hosts", each a host agent on this machine reached
//! through the command prefix `env HOSTN=i`, with W workers each, beside
//! `multiprocessing.Pool(H x W)` (fork) at the same worker count.
//!
//! Each size runs in a process of its own (this binary in [`child`] mode), so that the
//! thread count and CPU time it reports are the pool's alone, the agents are its children,
//! and a size that hangs is killed with everything it started (after [`size_limit`]) while
//! the next size goes on. The child prints its figures as JSON lines as it measures them,
//! so a size cut short keeps what it measured.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ppool::{ProcessPool, Remote, pool_entry};
use serde_json::{Value, json};

use super::{Ctx, py_args};
use crate::BenchResult;
use crate::children::{self, REMOTE_SCALE};
use crate::procs;
use crate::report::fmt_value;
use crate::results::{Better, Cell, Column, MetricResult, Table, TableRow};
use crate::stats::median;

/// Sleeps `ms` milliseconds; returns which worker ran it (index, pid).
#[pool_entry]
fn nap(ms: u64) -> (u64, u32) {
    thread::sleep(Duration::from_millis(ms));
    let index = ppool::worker_index().map_or(u64::MAX, |i| i as u64);
    (index, std::process::id())
}

/// The tiny task.
#[pool_entry]
fn inc(x: u64) -> u64 {
    x.wrapping_add(1)
}

/// (hosts, workers per host) of a full run, and of `--quick`.
const SIZES: &[(usize, usize)] = &[(4, 4), (16, 16), (64, 16)];
const QUICK_SIZES: &[(usize, usize)] = &[(4, 4)];
/// Overrides the sizes: `PPOOL_BENCH_SCALE_SIZES=4x4,16x16`.
const SIZES_ENV: &str = "PPOOL_BENCH_SCALE_SIZES";
/// Overrides the limit of one size's run, in seconds.
const LIMIT_ENV: &str = "PPOOL_BENCH_SCALE_LIMIT_SECS";
/// How long one size's run (ppool or Python) may take before it is killed.
const SIZE_LIMIT: Duration = Duration::from_secs(900);
/// Longest wait for one answer of the first wave, inside the child.
const WAVE_WAIT: Duration = Duration::from_secs(600);

/// The sleeping task's length, and how many per worker the efficiency batch has.
const NAP_MS: u64 = 50;
const WAVES: usize = 4;
/// The tiny-task batch grows until it takes this long.
const TINY_SECS: f64 = 1.0;
const QUICK_TINY_SECS: f64 = 0.25;
const TINY_START: u64 = 20_000;
const TINY_MAX: u64 = 50_000_000;

/// The variable of the prefix that names the host, and the one that marks one run's
/// processes (agents and workers inherit both).
const HOST_VAR: &str = "HOSTN";
const RUN_VAR: &str = "PPOOL_BENCH_SCALE_RUN";

/// Which sides a row of the table has a value for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum For {
    Both,
    Ppool,
    Mp,
}

/// The rows of the table: label, the key the sides print the value under, and which.
const ROWS: &[(&str, &str, For)] = &[
    ("workers", "workers", For::Both),
    ("start: build() / Pool(N), ms", "start ms", For::Both),
    ("first wave: all used, ms", "first wave ms", For::Both),
    ("workers used in first wave", "workers used", For::Both),
    ("efficiency, 4 waves x 50 ms, %", "efficiency %", For::Both),
    ("tiny tasks/s", "tiny tasks/s", For::Both),
    ("tiny: tasks in the batch", "tiny tasks", For::Both),
    ("tiny: mp chunksize", "tiny chunksize", For::Mp),
    ("supervisor threads (max)", "threads", For::Both),
    (
        "supervisor CPU/task, tiny, us",
        "tiny cpu us/task",
        For::Both,
    ),
    (
        "supervisor CPU/task, 50 ms, us",
        "sleep cpu us/task",
        For::Both,
    ),
    ("RSS per worker, MiB", "rss per worker MiB", For::Both),
    ("RSS per agent, MiB", "rss per agent MiB", For::Ppool),
    ("join, ms", "join ms", For::Both),
    ("processes left after join", "left after join", For::Ppool),
    ("whole run of the size, s", "run s", For::Both),
];

/// The sizes to run: [`SIZES_ENV`] if set, else by `--quick`.
fn sizes(ctx: &Ctx) -> BenchResult<Vec<(usize, usize)>> {
    let Ok(spec) = std::env::var(SIZES_ENV) else {
        return Ok(ctx.opts.size(SIZES, QUICK_SIZES).to_vec());
    };
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let bad = || format!("{SIZES_ENV}: bad size {s:?} (want HOSTSxWORKERS)");
            let (h, w) = s.split_once('x').ok_or_else(bad)?;
            let h: usize = h.parse().map_err(|_| bad())?;
            let w: usize = w.parse().map_err(|_| bad())?;
            if h == 0 || w == 0 {
                return Err(bad().into());
            }
            Ok((h, w))
        })
        .collect()
}

fn size_limit() -> Duration {
    std::env::var(LIMIT_ENV)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(SIZE_LIMIT, Duration::from_secs)
}

/// One column of the table while it is measured.
struct Side {
    name: String,
    ppool: bool,
    error: Option<String>,
}

/// What one run of one side at one size produced.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) values: Vec<(String, f64)>,
    pub(crate) notes: Vec<String>,
    pub(crate) error: Option<String>,
}

pub(crate) fn remote_scale(ctx: &Ctx) -> MetricResult {
    let mut m = MetricResult::new(
        "remote_scale",
        "Remote workers by count: H host agents x W workers through a command prefix on this \
         machine, beside multiprocessing.Pool(H*W) (fork)",
        "per row",
        Better::Higher,
    );
    m.mixed_units = true;
    let sizes = match sizes(ctx) {
        Ok(sizes) => sizes,
        Err(e) => {
            m.note(format!("skipped: {e}"));
            return m;
        }
    };
    let reps = ctx.opts.reps.min(3);
    let limit = size_limit();
    let tiny_secs = ctx.opts.size(TINY_SECS, QUICK_TINY_SECS);
    m.note(format!(
        "ppool HxW: H hosts, each a host agent on this machine started through the prefix \
         `env {HOST_VAR}=i {RUN_VAR}=<run>` (Remote::command), W workers each; no local \
         workers; default settings. Medians of {reps} repetitions, each size in a fresh process, limited to \
         {limit:?}"
    ));
    m.note(format!(
        "start: build() returning / mp Pool(N) returning. first wave: N tasks sleeping \
         {NAP_MS} ms submitted at once (call_with / apply_async), time from the first \
         submission until the last distinct worker (by pid) first answered; ideal {NAP_MS} ms"
    ));
    m.note(format!(
        "efficiency: {WAVES}N tasks sleeping {NAP_MS} ms in one batch (ppool batch, mp map \
         with its default chunksize, 1 here), ideal {} ms / wall time",
        WAVES as u64 * NAP_MS
    ));
    m.note(format!(
        "tiny: inc(x) = x+1 over 0..n in one batch (ppool entry().batch with its adaptive \
         chunks; mp pool.map with map's default chunksize, ceil(n / 4N)), n doubled from \
         {TINY_START} until the batch takes >= {tiny_secs} s"
    ));
    m.note(
        "supervisor threads: most entries seen in /proc/self/task, sampled every 20 ms from \
         before start until before join (the sampler itself not counted). supervisor \
         CPU/task: the process's own user+sys CPU time (CLOCK_PROCESS_CPUTIME_ID, which is \
         what getrusage(RUSAGE_SELF) sums; children not included) around the batch, per task",
    );
    m.note(format!(
        "RSS: mean VmRSS; agents = children of the supervisor carrying {RUN_VAR}, workers = \
         their children (mp: the pool's worker processes). left after join: processes still \
         carrying {RUN_VAR} right after join() returned (should be 0). whole run: the \
         size's process from start to exit, build and join included"
    ));
    let python = match &ctx.python {
        Ok(env) => Some(env),
        Err(why) => {
            m.note(why.clone());
            None
        }
    };
    let mut columns: Vec<Side> = Vec::new();
    for &(hosts, per_host) in &sizes {
        let n = hosts * per_host;
        let mut sides = vec![Side {
            name: format!("ppool {hosts}x{per_host}"),
            ppool: true,
            error: None,
        }];
        if python.is_some() {
            sides.push(Side {
                name: format!("mp.Pool({n})"),
                ppool: false,
                error: None,
            });
        }
        for rep in 0..reps {
            let mut order: Vec<usize> = (0..sides.len()).collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let side = &mut sides[i];
                if side.error.is_some() {
                    continue;
                }
                eprintln!("  {} (rep {}/{reps})", side.name, rep + 1);
                let outcome = match (i, python) {
                    (0, _) => run_ppool(&side.name, hosts, per_host, tiny_secs, limit),
                    (_, Some(env)) => run_mp(env, &side.name, n, tiny_secs, limit),
                    (_, None) => continue,
                };
                let line: Vec<String> = outcome
                    .values
                    .iter()
                    .map(|(k, v)| format!("{k} {}", fmt_value(*v)))
                    .collect();
                eprintln!("    {}", line.join(", "));
                for (key, value) in &outcome.values {
                    m.record(&format!("{}: {key}", side.name), *value);
                }
                for note in outcome.notes {
                    m.note(note);
                }
                if let Some(e) = outcome.error {
                    let e = format!("repetition {}: {e}", rep + 1);
                    eprintln!("    {}: error: {e}", side.name);
                    m.note(format!("{}: {e}; its later repetitions skipped", side.name));
                    side.error = Some(e);
                }
            }
        }
        columns.extend(sides);
    }
    m.table = Some(table(&m, &columns));
    m
}

/// The medians, one column per side and size.
fn table(m: &MetricResult, columns: &[Side]) -> Table {
    let rows = ROWS
        .iter()
        .map(|&(label, key, applies)| TableRow {
            label: label.to_owned(),
            cells: columns
                .iter()
                .map(|c| {
                    let sides = if c.ppool { For::Ppool } else { For::Mp };
                    if applies != For::Both && applies != sides {
                        return Cell::NotApplicable;
                    }
                    m.samples(&format!("{}: {key}", c.name))
                        .and_then(median)
                        .map_or(Cell::Missing, Cell::Value)
                })
                .collect(),
        })
        .collect();
    Table {
        columns: columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                error: c.error.clone(),
            })
            .collect(),
        rows,
    }
}

/// Distinguishes the runs of this bench process, for [`RUN_VAR`].
static RUNS: AtomicUsize = AtomicUsize::new(0);

fn run_ppool(
    name: &str,
    hosts: usize,
    per_host: usize,
    tiny_secs: f64,
    limit: Duration,
) -> Outcome {
    let tag = format!(
        "{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let mut cmd = match children::self_command(REMOTE_SCALE) {
        Ok(cmd) => cmd,
        Err(e) => return Outcome::failed(e.to_string()),
    };
    cmd.args([
        hosts.to_string(),
        per_host.to_string(),
        tag.clone(),
        tiny_secs.to_string(),
    ]);
    let mut out = run_child(name, &mut cmd, limit);
    // Whatever of the run outlived it (after a kill, or a failure past build) goes now.
    let left = procs::with_env(RUN_VAR, &tag);
    if !left.is_empty() {
        out.notes.push(format!(
            "{name}: {} processes of a run were still there after it ended, and were killed",
            left.len()
        ));
        procs::kill_all(&left);
    }
    out
}

fn run_mp(
    env: &crate::anchors::python::PythonEnv,
    name: &str,
    n: usize,
    tiny_secs: f64,
    limit: Duration,
) -> Outcome {
    let args = py_args(&[
        ("workers", n.to_string()),
        ("nap-ms", NAP_MS.to_string()),
        ("waves", WAVES.to_string()),
        ("min-secs", tiny_secs.to_string()),
        ("max-tiny", TINY_MAX.to_string()),
    ]);
    let mut cmd = env.command("remote_scale", &args);
    let mut out = run_child(name, &mut cmd, limit);
    // anchors.py says so whenever mpire is missing; this metric does not use mpire.
    out.notes.retain(|n| !n.contains("mpire"));
    out
}

/// Runs a child that prints JSON lines (`{"at": step}`, `{"values": {..}}`,
/// `{"error": why}`, `{"notes": [..]}`) and gathers them.
pub(crate) fn run_child(name: &str, cmd: &mut std::process::Command, limit: Duration) -> Outcome {
    let mut step = String::from("start");
    let mut out = Outcome::default();
    let started = Instant::now();
    let lines = children::run_lines(cmd, limit, |line| {
        let json = serde_json::from_str::<Value>(line).unwrap_or_default();
        if let Some(at) = json.get("at").and_then(Value::as_str) {
            eprintln!("    {name}: {at}");
        }
    });
    let lines = match lines {
        Ok(lines) => lines,
        Err(e) => return Outcome::failed(format!("cannot run: {e}")),
    };
    out.values
        .push(("run s".to_owned(), started.elapsed().as_secs_f64()));
    for line in &lines.lines {
        let Ok(json) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(at) = json.get("at").and_then(Value::as_str) {
            step = at.to_owned();
        }
        if let Some(values) = json.get("values").and_then(Value::as_object) {
            for (k, v) in values {
                if let Some(v) = v.as_f64() {
                    out.values.push((k.clone(), v));
                }
            }
        }
        if let Some(notes) = json.get("notes").and_then(Value::as_array) {
            out.notes
                .extend(notes.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        if let Some(e) = json.get("error").and_then(Value::as_str) {
            out.error = Some(format!("{step}: {e}"));
        }
    }
    if let (Err(e), None) = (&lines.end, &out.error) {
        out.error = Some(format!("{e} (during {step})"));
    }
    out
}

impl Outcome {
    pub(crate) fn failed(why: String) -> Outcome {
        Outcome {
            error: Some(why),
            ..Outcome::default()
        }
    }
}

// ---- the child: one size, measured in a process of its own ----

/// Prints one JSON line on stdout and flushes it (for [`run_child`] in the parent).
pub(crate) fn emit(json: Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{json}");
    let _ = stdout.flush();
}

fn at(step: &str) {
    emit(json!({ "at": step }));
}

fn values(pairs: &[(&str, f64)]) {
    let map: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    emit(json!({ "values": map }));
}

/// Reports `e` as this run's error and leaves at once, without dropping the pool: the
/// parent clears up whatever of the run is left.
fn fail(e: impl std::fmt::Display) -> ! {
    emit(json!({ "error": e.to_string() }));
    std::process::exit(3)
}

/// Child mode `REMOTE_SCALE HOSTS WORKERS_PER_HOST TAG TINY_SECS`.
pub(crate) fn child(args: &[String]) -> BenchResult<()> {
    let [hosts, per_host, tag, tiny_secs] = args else {
        return Err("remote_scale child needs HOSTS WORKERS TAG TINY_SECS".into());
    };
    let hosts: usize = hosts.parse()?;
    let per_host: usize = per_host.parse()?;
    let tiny_secs: f64 = tiny_secs.parse()?;
    let me = i32::try_from(std::process::id())?;

    let sampler = ThreadSampler::start();
    let threads_before = procs::thread_count().saturating_sub(1);
    at("build");
    let mut builder = ProcessPool::<nap>::builder().name("bench-scale");
    for i in 0..hosts {
        builder = builder.remote(
            Remote::command([
                "env".to_owned(),
                format!("{HOST_VAR}={i}"),
                format!("{RUN_VAR}={tag}"),
            ])
            .workers(per_host),
        );
    }
    let started = Instant::now();
    let pool = builder.build().unwrap_or_else(|e| fail(e));
    let build = started.elapsed();
    values(&[
        ("start ms", build.as_secs_f64() * 1e3),
        ("workers", pool.n_jobs() as f64),
        ("threads before start", threads_before as f64),
        (
            "threads after start",
            procs::thread_count().saturating_sub(1) as f64,
        ),
    ]);
    if let Err(e) = measure(&pool, me, tag, tiny_secs) {
        fail(e);
    }
    values(&[("threads", sampler.stop().saturating_sub(1) as f64)]);

    at("join");
    let started = Instant::now();
    if let Err(e) = pool.join() {
        fail(format!("join: {e}"));
    }
    let join = started.elapsed();
    let left = procs::with_env(RUN_VAR, tag);
    let agents_left = left.iter().filter(|p| p.ppid == me).count();
    values(&[
        ("join ms", join.as_secs_f64() * 1e3),
        ("left after join", left.len() as f64),
        ("agents left after join", agents_left as f64),
    ]);
    if !left.is_empty() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !procs::with_env(RUN_VAR, tag).is_empty() {
            thread::sleep(Duration::from_millis(50));
        }
        let later = procs::with_env(RUN_VAR, tag).len();
        values(&[("left 5 s after join", later as f64)]);
    }
    drop(pool);
    Ok(())
}

/// Everything between build and join.
fn measure(pool: &ProcessPool<nap>, me: i32, tag: &str, tiny_secs: f64) -> BenchResult<()> {
    let n = pool.n_jobs();

    at("first wave");
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    for _ in 0..n {
        let tx = tx.clone();
        pool.call_with(NAP_MS, move |r| {
            let _ = tx.send((Instant::now(), r));
        });
    }
    drop(tx);
    let mut first: HashMap<u32, Instant> = HashMap::new();
    let mut last = started;
    for k in 0..n {
        match rx.recv_timeout(WAVE_WAIT) {
            Ok((t, Ok((_, pid)))) => {
                first.entry(pid).or_insert(t);
                last = last.max(t);
            }
            Ok((_, Err(e))) => return Err(format!("first wave: a task failed: {e}").into()),
            Err(_) => {
                return Err(format!(
                    "first wave: {k} of {n} tasks answered, then none for {WAVE_WAIT:?}"
                )
                .into());
            }
        }
    }
    let all_used = first.values().max().copied().unwrap_or(started);
    values(&[
        ("first wave ms", ms_since(started, all_used)),
        ("workers used", first.len() as f64),
        ("first wave all answered ms", ms_since(started, last)),
    ]);

    at("sleeping tasks");
    let tasks = WAVES * n;
    let cpu = procs::cpu_time();
    let started = Instant::now();
    let out: Vec<(u64, u32)> = pool.batch(vec![NAP_MS; tasks]).wait()?;
    let wall = started.elapsed();
    let cpu = procs::cpu_time().saturating_sub(cpu);
    if out.len() != tasks {
        return Err("sleeping tasks: the batch returned a wrong count".into());
    }
    let used: HashSet<u32> = out.iter().map(|&(_, pid)| pid).collect();
    let ideal = Duration::from_millis(NAP_MS * WAVES as u64);
    values(&[
        (
            "efficiency %",
            100.0 * ideal.as_secs_f64() / wall.as_secs_f64(),
        ),
        ("sleep cpu us/task", cpu.as_secs_f64() * 1e6 / tasks as f64),
        ("sleep workers used", used.len() as f64),
    ]);

    at("tiny tasks");
    let tiny = pool.entry::<inc>();
    let mut count = TINY_START;
    loop {
        let ticks = procs::user_sys_ticks();
        let cpu = procs::cpu_time();
        let started = Instant::now();
        let out: Vec<u64> = tiny.batch(0..count).wait()?;
        let wall = started.elapsed().as_secs_f64();
        let cpu = procs::cpu_time().saturating_sub(cpu);
        let ticks_after = procs::user_sys_ticks();
        if out.len() as u64 != count || out.last() != Some(&count) {
            return Err("tiny tasks: the batch returned wrong results".into());
        }
        drop(out);
        if wall >= tiny_secs || count >= TINY_MAX {
            let mut v = vec![
                ("tiny tasks/s", count as f64 / wall.max(1e-9)),
                ("tiny cpu us/task", cpu.as_secs_f64() * 1e6 / count as f64),
                ("tiny tasks", count as f64),
            ];
            if let (Some((u0, s0)), Some((u1, s1))) = (ticks, ticks_after) {
                let (user, sys) = (u1.saturating_sub(u0), s1.saturating_sub(s0));
                if user + sys > 0 {
                    v.push(("tiny sys %", 100.0 * sys as f64 / (user + sys) as f64));
                }
            }
            values(&v);
            break;
        }
        let grown = (count as f64 * 1.3 * tiny_secs / wall.max(1e-9)) as u64;
        count = grown.max(count * 2).min(TINY_MAX);
    }

    at("memory");
    let found = procs::with_env(RUN_VAR, tag);
    let agents: HashSet<i32> = found
        .iter()
        .filter(|p| p.ppid == me)
        .map(|p| p.pid)
        .collect();
    let mean_mib = |rss: Vec<u64>| {
        (!rss.is_empty()).then(|| rss.iter().sum::<u64>() as f64 / rss.len() as f64 / 1024.0)
    };
    let agent_rss = mean_mib(
        found
            .iter()
            .filter(|p| agents.contains(&p.pid))
            .filter_map(|p| p.rss_kib)
            .collect(),
    );
    let worker_rss: Vec<u64> = found
        .iter()
        .filter(|p| agents.contains(&p.ppid))
        .filter_map(|p| p.rss_kib)
        .collect();
    let workers_found = worker_rss.len();
    let worker_rss = mean_mib(worker_rss);
    let mut v = vec![
        ("agents found", agents.len() as f64),
        ("workers found", workers_found as f64),
        (
            "other processes found",
            found.len().saturating_sub(agents.len() + workers_found) as f64,
        ),
    ];
    if let Some(mib) = agent_rss {
        v.push(("rss per agent MiB", mib));
    }
    if let Some(mib) = worker_rss {
        v.push(("rss per worker MiB", mib));
    }
    if let Some(kib) = procs::status_kib(me, "VmRSS") {
        v.push(("supervisor rss MiB", kib as f64 / 1024.0));
    }
    values(&v);
    Ok(())
}

fn ms_since(start: Instant, end: Instant) -> f64 {
    end.saturating_duration_since(start).as_secs_f64() * 1e3
}

/// A thread that counts this process's threads every 20 ms and keeps the most it saw
/// (itself included).
struct ThreadSampler {
    most: Arc<Mutex<(usize, bool)>>,
    handle: thread::JoinHandle<()>,
}

impl ThreadSampler {
    fn start() -> ThreadSampler {
        let most = Arc::new(Mutex::new((procs::thread_count(), false)));
        let shared = Arc::clone(&most);
        let handle = thread::spawn(move || {
            loop {
                let now = procs::thread_count();
                {
                    let Ok(mut state) = shared.lock() else { return };
                    state.0 = state.0.max(now);
                    if state.1 {
                        return;
                    }
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        ThreadSampler { most, handle }
    }

    /// Stops the sampler; the most threads it saw.
    fn stop(self) -> usize {
        if let Ok(mut state) = self.most.lock() {
            state.1 = true;
        }
        let _ = self.handle.join();
        self.most.lock().map_or(0, |state| state.0)
    }
}
