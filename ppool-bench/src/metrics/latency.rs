//! Metric 1: synchronous round trip with one task in flight, free and pinned to one CPU.

use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::{Ctx, Measured, Runners, WORKERS, json_f64, micros_per, note_shutdown, py_args, ready};
use crate::BenchResult;
use crate::anchors::procspawn::ProcspawnPool;
use crate::anchors::raw_pipe::RawPipeChild;
use crate::anchors::shm_pingpong::ShmPingPong;
use crate::children::{self, PINNED_RTT};
use crate::ppool_side::EchoPool;
use crate::results::{Better, MetricResult};
use ppool::Transport;

const UNIT: &str = "us per round trip";

/// `pool.call(x)` on `echo(u64) -> u64` vs raw pipe ping-pong, a shared-memory spinning
/// ping-pong (the floor), procspawn and Python. ppool, the raw pipe and the floor are the
/// medians of per-round-trip samples: a pipe's mean is dominated by the few round trips in a
/// hundred that wait ~100 µs for the scheduler.
pub(crate) fn sync_rtt(ctx: &Ctx) -> MetricResult {
    let mut m = MetricResult::new(
        "sync_rtt",
        "Sync round trip, one task in flight, 2 workers",
        UNIT,
        Better::Lower,
    );
    let n = ctx.opts.size(100_000, 10_000);
    let n_procspawn = ctx.opts.size(5_000, 1_000);
    let n_python = ctx.opts.size(20_000, 5_000);
    m.note(format!(
        "8-byte payloads; {n} round trips per sample (procspawn {n_procspawn}, Python {n_python})"
    ));
    m.note(
        "ppool, the raw pipe and the shared-memory floor: median of per-round-trip samples; \
         procspawn and Python: mean",
    );
    m.note("procspawn: Pool::spawn(x, |x| x).join(), its cheapest reusable round trip");
    m.note("shared-memory floor: two processes spinning on two shared words, nothing else");

    let ppool = ready(&mut m, "ppool", EchoPool::new(WORKERS));
    let pipes = ready(
        &mut m,
        "ppool (pipes)",
        EchoPool::over(WORKERS, Transport::Pipes),
    );
    let mut raw = ready(&mut m, "raw pipe", RawPipeChild::echo());
    let mut floor = ready(&mut m, "shared-memory floor", ShmPingPong::start());
    let procspawn = ready(&mut m, "procspawn", ProcspawnPool::new(WORKERS));
    let mut runners = Runners::default();
    if let Some(pool) = &ppool {
        runners.add("ppool", move || {
            Ok(Measured::one("ppool call (median)", pool.median_micros(n)?))
        });
    }
    if let Some(pool) = &pipes {
        runners.add("ppool (pipes)", move || {
            Ok(Measured::one(
                "ppool call over pipes (median)",
                pool.median_micros(n)?,
            ))
        });
    }
    if let Some(raw) = raw.as_mut() {
        runners.add("raw pipe", move || {
            Ok(Measured::one(
                "raw pipe ping-pong (median)",
                raw.ping_pong_median(n)?,
            ))
        });
    }
    if let Some(floor) = floor.as_mut() {
        runners.add("shared-memory floor", move || {
            Ok(Measured::one(
                "shared-memory spin ping-pong (median)",
                floor.median_micros(n)?,
            ))
        });
    }
    if let Some(pool) = &procspawn {
        runners.add("procspawn", move || {
            let t = pool.round_trips(n_procspawn)?;
            Ok(Measured::one("procspawn Pool", micros_per(t, n_procspawn)))
        });
    }
    runners.add_python(
        ctx,
        &mut m,
        "sync_rtt",
        py_args(&[("n", n_python.to_string())]),
    );
    runners.run(&mut m, ctx.opts.reps);
    for (name, pool) in [("ppool", ppool), ("ppool (pipes)", pipes)] {
        if let Some(pool) = pool {
            note_shutdown(&mut m, name, pool.finish());
        }
    }
    m
}

/// ppool and the raw pipe again, with the whole process tree pinned to CPU 0.
pub(crate) fn sync_rtt_pinned(ctx: &Ctx) -> MetricResult {
    let mut m = MetricResult::new(
        "sync_rtt_pinned",
        "Sync round trip, all processes pinned to CPU 0 (taskset -c 0)",
        UNIT,
        Better::Lower,
    );
    let n = ctx.opts.size(100_000, 10_000);
    let has_taskset = Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_taskset {
        m.note("skipped: `taskset` (util-linux) is not installed");
        return m;
    }
    m.note(format!(
        "{n} round trips per sample, measured in a child started as `taskset -c 0 <bench> {PINNED_RTT}`"
    ));
    let mut runners = Runners::default();
    runners.add("pinned child", move || {
        let exe = children::self_exe()?;
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"])
            .arg(exe)
            .arg(PINNED_RTT)
            .arg(n.to_string());
        let out: Value = serde_json::from_str(children::capture_stdout(&mut cmd)?.trim())?;
        let mut measured = Measured::default();
        for name in [
            "ppool call (median)",
            "ppool call over pipes (median)",
            "raw pipe ping-pong (median)",
        ] {
            measured
                .values
                .push((name.to_owned(), json_f64(&out, name)?));
        }
        Ok(measured)
    });
    runners.run(&mut m, ctx.opts.reps);
    m
}

/// Child mode (run under `taskset`): measures each and prints the median µs per round trip
/// as JSON. No shared-memory floor here: on one CPU a spinning peer only waits for its
/// time slice.
pub(crate) fn pinned_child(n: u64) -> BenchResult<()> {
    let pool = EchoPool::new(WORKERS)?;
    let pipes = EchoPool::over(WORKERS, Transport::Pipes)?;
    let mut raw = RawPipeChild::echo()?;
    raw.ping_pong(1000)?;
    let ppool_us = pool.median_micros(n)?;
    let pipes_us = pipes.median_micros(n)?;
    let raw_us = raw.ping_pong_median(n)?;
    pool.finish()?;
    pipes.finish()?;
    println!(
        "{}",
        json!({
            "ppool call (median)": ppool_us,
            "ppool call over pipes (median)": pipes_us,
            "raw pipe ping-pong (median)": raw_us,
        })
    );
    Ok(())
}
