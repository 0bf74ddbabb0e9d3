//! Metrics 6–7: whole-process startup, and memory of a lazy `map` over many items.

use std::process::Command;

use serde_json::Value;

use super::{Ctx, Measured, Runners, json_f64, py_args};
use crate::BenchResult;
use crate::children::{self, MAP_RSS, REEXEC_TWICE, STARTUP};
use crate::report::fmt_value;
use crate::results::{Better, MetricResult};
use crate::stats::median;

type MakeCommand = Box<dyn Fn() -> BenchResult<Command>>;

/// One kind of process whose whole wall time is measured.
struct TimedProcess {
    name: String,
    make: MakeCommand,
    failed: bool,
}

/// Wall time of a process that starts a pool of 2, runs 2 tasks and shuts down.
pub(crate) fn startup(ctx: &Ctx) -> MetricResult {
    let mut m = MetricResult::new(
        "startup",
        "Startup: whole process that starts a pool of 2, runs 2 tasks, shuts down",
        "ms per process",
        Better::Lower,
    );
    let runs = ctx.opts.size(20, 5);
    m.note(format!(
        "median of {runs} processes per sample, spawn to exit; raw re-exec: the bench \
         binary starting 2 children of itself that exit at once; Python: `python -c` \
         in the virtualenv"
    ));
    let mut procs = vec![
        TimedProcess::new("ppool", Box::new(|| children::self_command(STARTUP))),
        TimedProcess::new(
            "raw re-exec x2",
            Box::new(|| children::self_command(REEXEC_TWICE)),
        ),
    ];
    match &ctx.python {
        Ok(env) => match env.run("startup_code", &[]) {
            Ok(out) => {
                for note in out.notes {
                    m.note(note);
                }
                for (name, code) in out.values {
                    let Value::String(code) = code else { continue };
                    let env = env.clone();
                    let make = move || {
                        let mut cmd = env.interpreter();
                        cmd.arg("-c").arg(&code);
                        Ok(cmd)
                    };
                    procs.push(TimedProcess::new(&name, Box::new(make)));
                }
            }
            Err(e) => m.note(format!("python anchors skipped: {e}")),
        },
        Err(why) => m.note(why.clone()),
    }
    let mut runners = Runners::default();
    runners.add("processes", move || Ok(time_all(&mut procs, runs)));
    runners.run(&mut m, ctx.opts.reps);
    m
}

impl TimedProcess {
    fn new(name: &str, make: MakeCommand) -> TimedProcess {
        TimedProcess {
            name: name.to_owned(),
            make,
            failed: false,
        }
    }
}

/// Times every process `runs` times, interleaved; one median per process kind.
fn time_all(procs: &mut [TimedProcess], runs: usize) -> Measured {
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); procs.len()];
    let mut measured = Measured::default();
    for run in 0..runs {
        let mut order: Vec<usize> = (0..procs.len()).collect();
        if run % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let p = &mut procs[i];
            if p.failed {
                continue;
            }
            match (p.make)().and_then(|mut cmd| children::time_process(&mut cmd)) {
                Ok(t) => times[i].push(t.as_secs_f64() * 1e3),
                Err(e) => {
                    p.failed = true;
                    measured
                        .notes
                        .push(format!("{} failed and was dropped: {e}", p.name));
                }
            }
        }
    }
    for (p, t) in procs.iter().zip(&times) {
        if let (false, Some(ms)) = (p.failed, median(t)) {
            measured.values.push((p.name.clone(), ms));
        }
    }
    measured
}

/// Peak RSS growth of a process consuming `pool.map(0..N)`.
pub(crate) fn map_rss(ctx: &Ctx) -> MetricResult {
    let mut m = MetricResult::new(
        "map_rss",
        "Lazy map over N u64 items: peak RSS growth of the parent, 2 workers",
        "MiB",
        Better::Lower,
    );
    let n: u64 = ctx.opts.size(10_000_000, 1_000_000);
    m.note(format!(
        "N = {n}; growth = VmHWM after the map - VmRSS before the pool, in a fresh child \
         process (VmHWM reset through /proc/self/clear_refs); ppool uses its defaults (adaptive chunks), \
         Python mp.Pool.imap(chunksize=1000) for comparison"
    ));
    let mut runners = Runners::default();
    runners.add("ppool", move || {
        let mut cmd = children::self_command(MAP_RSS)?;
        cmd.arg(n.to_string());
        let out: Value = serde_json::from_str(children::capture_stdout(&mut cmd)?.trim())?;
        let mut measured = Measured::one("ppool map", json_f64(&out, "growth_mib")?);
        if out.get("hwm_reset").and_then(Value::as_bool) == Some(false) {
            measured
                .notes
                .push("ppool: could not reset VmHWM; growth is against the earlier peak".into());
        }
        eprintln!(
            "  ppool map: {} items/s",
            fmt_value(json_f64(&out, "items_per_sec")?)
        );
        Ok(measured)
    });
    let args = py_args(&[("n", n.to_string()), ("chunk", "1000".to_owned())]);
    runners.add_python(ctx, &mut m, "map_rss", args);
    runners.run(&mut m, ctx.opts.reps);
    m
}
