//! Metric `shared`: shared inputs (`pool.share`, `pool.share_bytes`).
//!
//! 1. One large value to every worker ([`shared_broadcast`]): 2 local workers, and 4
//!    command-prefix hosts of 4 workers, beside the value in every task's arguments and
//!    Python's ways of doing it.
//! 2. Tiny tasks that carry a `SharedBytes` handle against the same tasks without one.
//! 3. 10 MiB and 100 MiB handed to a worker as `SharedBytes` and as `Vec<u8>`, against
//!    procspawn and a raw pipe.
//!
//! The figures are in tables of medians, and the goals of shared inputs, as ratios, in the
//! last one.

use std::time::{Duration, Instant};

use ppool::{ProcessPool, SharedBytes, pool_entry};

use super::shared_broadcast::{
    self, Kind, Layout, MP_INIT, MP_INIT_SPAWN, MS, PSS, STREAM, page_sum, pattern,
};
use super::{Ctx, Measured, Runners, WORKERS, note_shutdown, per_second, ready};
use crate::BenchResult;
use crate::anchors::procspawn::ProcspawnPool;
use crate::anchors::raw_pipe::RawPipeChild;
use crate::ppool_side::BytesPool;
use crate::results::{Better, Cell, Column, MetricResult, Table, TableRow};
use crate::stats::median;

const MIB: usize = 1024 * 1024;

/// The two layouts of part 1.
const LOCAL: Layout = Layout {
    hosts: 0,
    per_host: 2,
};
const HOSTS: Layout = Layout {
    hosts: 4,
    per_host: 4,
};

/// Picks parts: `PPOOL_BENCH_SHARED_PARTS=broadcast,tiny,payloads` (all by default).
const PARTS_ENV: &str = "PPOOL_BENCH_SHARED_PARTS";
const PARTS: [&str; 3] = ["broadcast", "tiny", "payloads"];

/// The parts to run, from the value of [`PARTS_ENV`] (`None`: all).
fn parts(spec: Option<&str>) -> Result<Vec<&'static str>, String> {
    let Some(spec) = spec else {
        return Ok(PARTS.to_vec());
    };
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            PARTS
                .into_iter()
                .find(|p| *p == s)
                .ok_or_else(|| format!("{PARTS_ENV}: no part {s:?} (parts: {})", PARTS.join(", ")))
        })
        .collect()
}

/// The goals of shared inputs.
const MEMORY_GOAL: f64 = 1.10;
const STREAM_GOAL: f64 = 1.05;
const BROADCAST_GOAL: f64 = 1.0 / 3.0;
const TINY_GOAL: f64 = 1.5;

pub(crate) fn shared(ctx: &Ctx) -> MetricResult {
    let mut m = MetricResult::new(
        "shared",
        "Shared inputs: one large value to every worker, a handle in tiny tasks, 10/100 MiB \
         payloads",
        "per row",
        Better::Lower,
    );
    m.mixed_units = true;
    let parts = match parts(std::env::var(PARTS_ENV).ok().as_deref()) {
        Ok(parts) => parts,
        Err(e) => {
            m.note(format!("skipped: {e}"));
            return m;
        }
    };
    if parts.len() < PARTS.len() {
        m.note(format!("only {} ({PARTS_ENV})", parts.join(", ")));
    }
    let size = ctx.opts.size(256 * MIB, 64 * MIB);
    let reps = ctx.opts.reps.min(3);
    let python = match &ctx.python {
        Ok(env) => Some(env),
        Err(why) => {
            m.note(why.clone());
            None
        }
    };
    if parts.contains(&"broadcast") {
        broadcast_notes(&mut m, size, reps);
        for layout in [LOCAL, HOSTS] {
            eprintln!(
                "  broadcast of {} MiB to {} workers ({})",
                size / MIB,
                layout.workers(),
                layout.name()
            );
            let table = shared_broadcast::run(&mut m, python, layout, size, reps);
            let title = if layout.hosts == 0 {
                format!(
                    "broadcast {} MiB to {} local workers (Python: same N)",
                    size / MIB,
                    layout.per_host
                )
            } else {
                format!(
                    "broadcast {} MiB to {} hosts x {} workers (Python: {} local workers)",
                    size / MIB,
                    layout.hosts,
                    layout.per_host,
                    layout.workers()
                )
            };
            m.tables.push((title, table));
        }
    }
    if parts.contains(&"tiny") {
        let tiny = tiny(ctx, &mut m);
        m.tables
            .push(("tiny tasks on 2 local workers".to_owned(), tiny));
    }
    if parts.contains(&"payloads") {
        let payloads = payloads(ctx, &mut m);
        m.tables
            .push(("10 MiB and 100 MiB to one worker of 2".to_owned(), payloads));
    }
    let goals = goals(&m);
    m.tables
        .push(("goals (ratio <= goal is met)".to_owned(), goals));
    m
}

/// What the broadcast tables mean.
fn broadcast_notes(m: &mut MetricResult, size: usize, reps: usize) {
    m.note(format!(
        "broadcast: a value of {} MiB; each worker runs one task that reads one byte of every \
         4 KiB page, notes the time (CLOCK_MONOTONIC) and waits at a barrier (a marker file, \
         then a release file) so that every worker gets exactly one task and holds the value \
         while memory is read. Time: from handing the value over (share / share_bytes; the \
         first submission; mp map; Pool(initializer) or WorkerPool creation, which includes \
         forking the workers) until the last worker had read it. Medians of {reps} \
         repetitions ({heavy} for the value in every task to 16 workers, ppool's and mp's), \
         ppool in a fresh process each",
        size / MIB,
        heavy = reps.min(shared_broadcast::HEAVY_REPS),
    ));
    m.note(
        "ppool columns: share_bytes = pool.share_bytes(vec), SharedBytes in the tasks; \
         Shared<Vec> = pool.share(vec), Shared<Vec<u8>> in the tasks (decoded into a Vec once \
         per worker, so one copy per worker by design); Vec per task = the bytes in every \
         task's arguments (a Vec<u8> on the wire, serialized as bytes from one Arc, so no copy \
         per task on the program's side; decoded into a Vec<u8> in the worker); initializer \
         = the same bytes given to Builder::initializer, so each worker receives them once \
         (timed from build(), which starts the workers, as mp's initializer columns are from \
         Pool()); mp initializer spawn = mp.Pool(initializer=, initargs=) under the spawn \
         start method, which pickles the value to each worker, while under fork the workers \
         inherit the parent's pages and nothing is passed",
    );
    m.note(
        "host memory: growth of PSS (or RSS) summed over a host's processes, from before the \
         value existed to when every worker holds it, divided by its size. Local host: the \
         program and its workers (the program's own copy of the value counts); remote host: \
         its agent and its workers, the worst host; Python: the parent and its workers (the \
         initializer and mpire baselines are the same pool without the value). PSS counts a \
         page shared by k processes 1/k in each, so the sum counts it once; RSS counts it k \
         times. Bytes into a host's stream: rchar of its agent (/proc/<pid>/io) over the \
         same span, the worst host",
    );
    m.note(format!(
        "4x4 hosts: 4 host agents on this machine through the prefix `env HOSTN=i ...`, 4 \
         workers each, no local worker; its Python columns are the same Python anchors with \
         {} local workers",
        HOSTS.workers()
    ));
}

// ---- part 2: a handle in a tiny task ----

#[pool_entry]
fn plain(x: u64) -> u64 {
    x.wrapping_mul(x)
}

#[pool_entry]
fn with_handle(s: SharedBytes, x: u64) -> u64 {
    x.wrapping_mul(x) ^ u64::from(s[x as usize % s.len()])
}

const TINY_PLAIN: &str = "tiny: g(x), tasks/s";
const TINY_SHARED: &str = "tiny: f(s, x), tasks/s";

/// `batch` of tiny tasks `g(x)` against `f(s: SharedBytes, x)`, on one pool of 2 workers.
fn tiny(ctx: &Ctx, m: &mut MetricResult) -> Table {
    let n: u64 = ctx.opts.size(500_000, 100_000);
    m.note(format!(
        "tiny: one batch of {n} tasks g(x: u64) -> u64 (x*x) or f(s: SharedBytes, x: u64) -> \
         u64 (x*x ^ one byte of s, a shared 1 MiB), interleaved on the same pool of {WORKERS} \
         local workers; cost = g's tasks/s / f's"
    ));
    let setup = || -> BenchResult<_> {
        let pool = ProcessPool::<plain>::builder()
            .n_jobs(WORKERS)
            .name("bench-shared-tiny")
            .build()?;
        let s = pool.share_bytes(pattern(MIB))?;
        pool.batch(0..1000u64).wait()?;
        pool.entry::<with_handle>()
            .batch((0..1000u64).map(|x| (s.clone(), x)))
            .wait()?;
        Ok((pool, s))
    };
    let Some((pool, s)) = ready(m, "tiny", setup()) else {
        return Table::default();
    };
    let expected = |x: u64| x.wrapping_mul(x) ^ u64::from(s[x as usize % s.len()]);
    let mut runners = Runners::default();
    runners.add("g(x)", || {
        let start = Instant::now();
        let out = pool.batch(0..n).wait()?;
        let elapsed = start.elapsed();
        if out.len() as u64 != n || out[n as usize - 1] != (n - 1).wrapping_mul(n - 1) {
            return Err("g: wrong results".into());
        }
        Ok(Measured::one(TINY_PLAIN, per_second(n, elapsed)))
    });
    runners.add("f(s, x)", || {
        let view = pool.entry::<with_handle>();
        let start = Instant::now();
        let out = view.batch((0..n).map(|x| (s.clone(), x))).wait()?;
        let elapsed = start.elapsed();
        if out.len() as u64 != n || out[n as usize - 1] != expected(n - 1) {
            return Err("f: wrong results".into());
        }
        Ok(Measured::one(TINY_SHARED, per_second(n, elapsed)))
    });
    runners.run(m, ctx.opts.reps);
    drop(s);
    note_shutdown(m, "tiny", pool.join().map_err(Into::into));
    let g = med(m, TINY_PLAIN);
    let f = med(m, TINY_SHARED);
    Table {
        columns: ["g(x)", "f(s, x)", "cost g/f"]
            .iter()
            .map(|&name| Column {
                name: name.to_owned(),
                error: None,
            })
            .collect(),
        rows: vec![TableRow {
            label: "tasks/s".to_owned(),
            cells: vec![cell(g), cell(f), cell(ratio(g, f))],
        }],
    }
}

// ---- part 3: one payload to one worker ----

#[pool_entry]
fn sum_shared(s: SharedBytes) -> u64 {
    page_sum(&s)
}

#[pool_entry]
fn sum_vec(v: Vec<u8>) -> u64 {
    page_sum(&v)
}

const SHARED_ONE: &str = "ppool SharedBytes, share + call";
const VEC_ONE: &str = "ppool Vec<u8> in, sum out";
const VEC_ECHO: &str = "ppool Vec<u8> echo";
const PS_ONE: &str = "procspawn ByteBuf in, sum out";
const PS_ECHO: &str = "procspawn ByteBuf echo";
const RAW_ONE: &str = "raw pipe one way";
const PAYLOAD_ROWS: [&str; 6] = [SHARED_ONE, VEC_ONE, VEC_ECHO, PS_ONE, PS_ECHO, RAW_ONE];
/// The ratio rows: label, ppool side, procspawn side.
const PAYLOAD_RATIOS: [(&str, &str, &str); 3] = [
    ("SharedBytes / procspawn in+sum", SHARED_ONE, PS_ONE),
    ("Vec<u8> in+sum / procspawn in+sum", VEC_ONE, PS_ONE),
    ("Vec<u8> echo / procspawn echo", VEC_ECHO, PS_ECHO),
];
const PAYLOAD_MIBS: [usize; 2] = [10, 100];

fn payload_key(mib: usize, what: &str) -> String {
    format!("{mib} MiB: {what}, MiB/s")
}

/// 10 and 100 MiB handed over: as `SharedBytes` (share_bytes + call, the worker answering
/// with its page sum), as `Vec<u8>` (one way with the same answer, and the echo), against
/// procspawn (the same two) and a raw pipe one way.
fn payloads(ctx: &Ctx, m: &mut MetricResult) -> Table {
    m.note(
        "payloads: MiB/s of payload moved per operation (an echo moves it twice), median of \
         per-operation samples after one untimed operation; the copy the caller makes to pass the payload by value is not \
         timed; `in, sum out` answers with one byte of each 4 KiB page summed; SharedBytes \
         times pool.share_bytes(vec) and pool.call(handle) together",
    );
    let pool = ready(m, "ppool", sum_pool());
    let echo = ready(m, "ppool echo", BytesPool::new(WORKERS));
    let procspawn = ready(m, "procspawn", ProcspawnPool::new(WORKERS));
    let mut raw = ready(m, "raw pipe", RawPipeChild::sink());
    for mib in PAYLOAD_MIBS {
        let payload = pattern(mib * MIB);
        let payload = &payload;
        let (rounds, reps) = if mib >= 100 {
            (ctx.opts.size(2, 1), ctx.opts.reps.min(3))
        } else {
            (ctx.opts.size(5, 2), ctx.opts.reps)
        };
        eprintln!("  {mib} MiB, {rounds} operations per repetition");
        let mut runners = Runners::default();
        if let Some(pool) = &pool {
            let key = payload_key(mib, SHARED_ONE);
            add_op(&mut runners, key, rounds, mib, rate_one, move || {
                shared_op(pool, payload)
            });
            let key = payload_key(mib, VEC_ONE);
            add_op(&mut runners, key, rounds, mib, rate_one, move || {
                vec_op(pool, payload)
            });
        }
        if let Some(echo) = &echo {
            let key = payload_key(mib, VEC_ECHO);
            add_op(&mut runners, key, rounds, mib, rate_two, move || {
                echo.echo(payload)
            });
        }
        if let Some(ps) = &procspawn {
            let key = payload_key(mib, PS_ONE);
            add_op(&mut runners, key, rounds, mib, rate_one, move || {
                ps.page_sum(payload)
            });
            let key = payload_key(mib, PS_ECHO);
            add_op(&mut runners, key, rounds, mib, rate_two, move || {
                ps.echo_bytes(payload)
            });
        }
        if let Some(raw) = raw.as_mut() {
            let key = payload_key(mib, RAW_ONE);
            add_op(&mut runners, key, rounds, mib, rate_one, move || {
                raw.send_one_way(payload)
            });
        }
        runners.run(m, reps);
    }
    if let Some(pool) = pool {
        note_shutdown(m, "ppool", pool.join().map_err(Into::into));
    }
    if let Some(echo) = echo {
        note_shutdown(m, "ppool echo", echo.finish());
    }
    let columns = PAYLOAD_MIBS
        .iter()
        .map(|mib| Column {
            name: format!("{mib} MiB"),
            error: None,
        })
        .collect();
    let mut rows: Vec<TableRow> = PAYLOAD_ROWS
        .iter()
        .map(|&what| TableRow {
            label: format!("{what}, MiB/s"),
            cells: PAYLOAD_MIBS
                .iter()
                .map(|&mib| cell(med(m, &payload_key(mib, what))))
                .collect(),
        })
        .collect();
    rows.extend(PAYLOAD_RATIOS.iter().map(|&(label, a, b)| {
        TableRow {
            label: format!("ratio {label}"),
            cells: PAYLOAD_MIBS
                .iter()
                .map(|&mib| {
                    cell(ratio(
                        med(m, &payload_key(mib, a)),
                        med(m, &payload_key(mib, b)),
                    ))
                })
                .collect(),
        }
    }));
    Table { columns, rows }
}

/// Adds a runner doing `rounds` operations, each one sample of `key` (MiB/s by `rate`), after
/// one untimed operation the first time (first-touch page faults, lazily made buffers).
fn add_op<'a>(
    runners: &mut Runners<'a>,
    key: String,
    rounds: u32,
    mib: usize,
    rate: fn(usize, Duration) -> f64,
    mut op: impl FnMut() -> BenchResult<Duration> + 'a,
) {
    let label = key.clone();
    let mut warm = false;
    runners.add(&label, move || {
        if !warm {
            op()?;
            warm = true;
        }
        let mut measured = Measured::default();
        for _ in 0..rounds {
            measured.values.push((key.clone(), rate(mib, op()?)));
        }
        Ok(measured)
    });
}

fn rate_one(mib: usize, t: Duration) -> f64 {
    mib as f64 / t.as_secs_f64().max(1e-12)
}

fn rate_two(mib: usize, t: Duration) -> f64 {
    2.0 * mib as f64 / t.as_secs_f64().max(1e-12)
}

fn sum_pool() -> BenchResult<ProcessPool<sum_shared>> {
    let pool = ProcessPool::<sum_shared>::builder()
        .n_jobs(WORKERS)
        .name("bench-shared-payload")
        .build()?;
    let s = pool.share_bytes(vec![1; 3 * shared_broadcast::PAGE])?;
    pool.call(s)?;
    pool.entry::<sum_vec>().call(vec![1; 3])?;
    Ok(pool)
}

fn shared_op(pool: &ProcessPool<sum_shared>, payload: &[u8]) -> BenchResult<Duration> {
    let arg = payload.to_vec();
    let start = Instant::now();
    let s = pool.share_bytes(arg)?;
    let sum = pool.call(s)?;
    let elapsed = start.elapsed();
    if sum != page_sum(payload) {
        return Err("ppool sum_shared returned a wrong sum".into());
    }
    Ok(elapsed)
}

fn vec_op(pool: &ProcessPool<sum_shared>, payload: &[u8]) -> BenchResult<Duration> {
    let arg = payload.to_vec();
    let start = Instant::now();
    let sum = pool.entry::<sum_vec>().call(arg)?;
    let elapsed = start.elapsed();
    if sum != page_sum(payload) {
        return Err("ppool sum_vec returned a wrong sum".into());
    }
    Ok(elapsed)
}

// ---- the goals ----

/// `a / b` when both are there, finite, and `b` is not zero.
pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (a.is_finite() && b.is_finite() && b != 0.0).then(|| a / b)
}

/// Whether `ratio` meets a goal of at most `limit`: "yes", "no", or "-" without a ratio.
pub(crate) fn verdict(ratio: Option<f64>, limit: f64) -> &'static str {
    match ratio {
        Some(r) if r <= limit => "yes",
        Some(_) => "no",
        None => "-",
    }
}

fn med(m: &MetricResult, key: &str) -> Option<f64> {
    m.samples(key).and_then(median)
}

fn cell(v: Option<f64>) -> Cell {
    v.map_or(Cell::Missing, Cell::Value)
}

/// One row of the goals table: what, the ratio, and its limit (`None`: reported only).
fn goal_row(label: String, r: Option<f64>, limit: Option<f64>) -> TableRow {
    TableRow {
        label,
        cells: vec![
            cell(r),
            limit.map_or(Cell::NotApplicable, |l| Cell::Text(format!("<= {l:.2}"))),
            limit.map_or(Cell::NotApplicable, |l| {
                Cell::Text(verdict(r, l).to_owned())
            }),
        ],
    }
}

fn goals(m: &MetricResult) -> Table {
    let k = |layout: Layout, column: &str, figure: &str| {
        med(m, &shared_broadcast::key(layout, column, figure))
    };
    let bytes = Kind::Bytes.column();
    let mut rows = vec![
        goal_row(
            format!("memory of the local host / size, {bytes}, 2 workers"),
            k(LOCAL, bytes, PSS),
            Some(MEMORY_GOAL),
        ),
        goal_row(
            format!("memory of a remote host / size, {bytes}, 4x4"),
            k(HOSTS, bytes, PSS),
            Some(MEMORY_GOAL),
        ),
        goal_row(
            format!("bytes into a host's stream / size, {bytes}, 4x4"),
            k(HOSTS, bytes, STREAM),
            Some(STREAM_GOAL),
        ),
        goal_row(
            format!("time 4x4, {bytes} / ppool Vec per task"),
            ratio(k(HOSTS, bytes, MS), k(HOSTS, Kind::Args.column(), MS)),
            Some(BROADCAST_GOAL),
        ),
        // The value passed once per worker through an initializer: ppool's own, and mp's
        // under spawn (which pickles it to each worker). Under fork, mp passes nothing: the
        // workers inherit the parent's pages, which no other host can.
        goal_row(
            format!("time 4x4, {bytes} / ppool {}", Kind::Init.column()),
            ratio(k(HOSTS, bytes, MS), k(HOSTS, Kind::Init.column(), MS)),
            Some(BROADCAST_GOAL),
        ),
        goal_row(
            format!("time 4x4, {bytes} / {MP_INIT_SPAWN} (16 workers)"),
            ratio(k(HOSTS, bytes, MS), k(HOSTS, MP_INIT_SPAWN, MS)),
            Some(BROADCAST_GOAL),
        ),
        goal_row(
            format!("time 4x4, {bytes} / {MP_INIT} fork (16 workers)"),
            ratio(k(HOSTS, bytes, MS), k(HOSTS, MP_INIT, MS)),
            None,
        ),
        goal_row(
            "time 2 local, share_bytes / ppool Vec per task".to_owned(),
            ratio(k(LOCAL, bytes, MS), k(LOCAL, Kind::Args.column(), MS)),
            None,
        ),
        goal_row(
            format!("time 2 local, {bytes} / {MP_INIT}"),
            ratio(k(LOCAL, bytes, MS), k(LOCAL, MP_INIT, MS)),
            None,
        ),
        goal_row(
            "tiny tasks: cost of a SharedBytes handle (g/f tasks/s)".to_owned(),
            ratio(med(m, TINY_PLAIN), med(m, TINY_SHARED)),
            Some(TINY_GOAL),
        ),
    ];
    for mib in PAYLOAD_MIBS {
        for (label, a, b) in PAYLOAD_RATIOS {
            rows.push(goal_row(
                format!("{mib} MiB, MiB/s {label}"),
                ratio(med(m, &payload_key(mib, a)), med(m, &payload_key(mib, b))),
                None,
            ));
        }
    }
    Table {
        columns: ["ratio", "goal", "met"]
            .iter()
            .map(|&name| Column {
                name: name.to_owned(),
                error: None,
            })
            .collect(),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_need_both_sides() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(ratio(Some(3.0), None), None);
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(Some(f64::NAN), Some(1.0)), None);
    }

    #[test]
    fn parts_by_name() {
        assert_eq!(parts(None), Ok(PARTS.to_vec()));
        assert_eq!(parts(Some("tiny, payloads")), Ok(vec!["tiny", "payloads"]));
        assert!(parts(Some("nope")).is_err());
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(Some(1.0), 1.1), "yes");
        assert_eq!(verdict(Some(1.1), 1.1), "yes");
        assert_eq!(verdict(Some(1.2), 1.1), "no");
        assert_eq!(verdict(None, 1.1), "-");
    }

    #[test]
    fn goals_read_the_medians() {
        let mut m = MetricResult::new("shared", "t", "per row", Better::Lower);
        for v in [0.9, 1.0, 1.3] {
            m.record(&shared_broadcast::key(LOCAL, "share_bytes", PSS), v);
        }
        m.record(&shared_broadcast::key(HOSTS, "share_bytes", MS), 100.0);
        m.record(&shared_broadcast::key(HOSTS, "Vec per task", MS), 400.0);
        m.record(TINY_PLAIN, 3e6);
        m.record(TINY_SHARED, 1e6);
        let t = goals(&m);
        assert_eq!(t.rows[0].cells[0], Cell::Value(1.0));
        assert_eq!(t.rows[0].cells[2], Cell::Text("yes".into()));
        assert_eq!(t.rows[1].cells[0], Cell::Missing);
        assert_eq!(t.rows[1].cells[2], Cell::Text("-".into()));
        assert_eq!(t.rows[3].cells[0], Cell::Value(0.25));
        assert_eq!(t.rows[3].cells[2], Cell::Text("yes".into()));
        let tiny = t
            .rows
            .iter()
            .find(|r| r.label.starts_with("tiny"))
            .expect("row");
        assert_eq!(tiny.cells[0], Cell::Value(3.0));
        assert_eq!(tiny.cells[2], Cell::Text("no".into()));
    }

    #[test]
    fn page_sums_read_one_byte_a_page() {
        let mut v = vec![0u8; 3 * shared_broadcast::PAGE + 1];
        v[0] = 1;
        v[shared_broadcast::PAGE] = 2;
        v[shared_broadcast::PAGE + 1] = 100;
        v[3 * shared_broadcast::PAGE] = 4;
        assert_eq!(page_sum(&v), 7);
    }
}
