//! Metrics 2–4: tiny tasks in bulk, `call_with` callbacks, and 10 MiB payloads.

use std::time::Duration;

use super::{Ctx, Measured, Runners, WORKERS, note_shutdown, per_second, py_args, ready};
use crate::anchors::procspawn::ProcspawnPool;
use crate::anchors::raw_pipe::RawPipeChild;
use crate::ppool_side::{BytesPool, SquarePool};
use crate::results::{Better, MetricResult};
use ppool::Transport;

const MIB: usize = 1024 * 1024;

/// `pool.batch(0..n).wait()` on `square` vs a pipelined raw pipe stream and Python `map`.
pub(crate) fn bulk_tiny(ctx: &Ctx) -> MetricResult {
    let mut m = MetricResult::new(
        "bulk_tiny",
        "Tiny tasks in bulk: batch(0..N).wait() on square(u64), 2 workers",
        "tasks per second",
        Better::Higher,
    );
    let n: u64 = ctx.opts.size(1_000_000, 200_000);
    m.note(format!(
        "N = {n}; raw pipe: N 8-byte messages written in 64 KiB writes while one child \
         echoes them (messages/s); Python: map with default chunking"
    ));
    let ppool = ready(&mut m, "ppool", SquarePool::new(WORKERS));
    let pipes = ready(
        &mut m,
        "ppool (pipes)",
        SquarePool::over(WORKERS, Transport::Pipes),
    );
    let mut raw = ready(&mut m, "raw pipe", RawPipeChild::echo());
    let mut runners = Runners::default();
    if let Some(pool) = &ppool {
        runners.add("ppool", move || {
            Ok(Measured::one("ppool batch", per_second(n, pool.batch(n)?)))
        });
    }
    if let Some(pool) = &pipes {
        runners.add("ppool (pipes)", move || {
            Ok(Measured::one(
                "ppool batch over pipes",
                per_second(n, pool.batch(n)?),
            ))
        });
    }
    if let Some(raw) = raw.as_mut() {
        runners.add("raw pipe", move || {
            Ok(Measured::one(
                "raw pipe stream",
                per_second(n, raw.stream(n)?),
            ))
        });
    }
    runners.add_python(ctx, &mut m, "bulk_tiny", py_args(&[("n", n.to_string())]));
    runners.run(&mut m, ctx.opts.reps);
    for (name, pool) in [("ppool", ppool), ("ppool (pipes)", pipes)] {
        if let Some(pool) = pool {
            note_shutdown(&mut m, name, pool.finish());
        }
    }
    m
}

/// `call_with` one task at a time, counting completions, vs Python `apply_async`.
pub(crate) fn call_with(ctx: &Ctx) -> MetricResult {
    let mut m = MetricResult::new(
        "call_with",
        "call_with: tasks submitted one by one, completion callbacks, 2 workers",
        "tasks per second",
        Better::Higher,
    );
    let n: u64 = ctx.opts.size(20_000, 5_000);
    m.note(format!(
        "{n} tasks of square(u64); timed until the last callback ran (Python: apply_async + callback)"
    ));
    let ppool = ready(&mut m, "ppool", SquarePool::new(WORKERS));
    let mut runners = Runners::default();
    if let Some(pool) = &ppool {
        runners.add("ppool", move || {
            Ok(Measured::one(
                "ppool call_with",
                per_second(n, pool.call_with_all(n)?),
            ))
        });
    }
    runners.add_python(ctx, &mut m, "call_with", py_args(&[("n", n.to_string())]));
    runners.run(&mut m, ctx.opts.reps);
    if let Some(pool) = ppool {
        note_shutdown(&mut m, "ppool", pool.finish());
    }
    m
}

/// Echo of a 10 MiB buffer vs procspawn (`serde_bytes`), a one-way raw pipe and Python.
pub(crate) fn echo_10mb(ctx: &Ctx) -> MetricResult {
    let m = MetricResult::new(
        "echo_10mb",
        "10 MiB echo round trip (Vec<u8> in, Vec<u8> out), 2 workers",
        "MiB/s",
        Better::Higher,
    );
    echo(ctx, m, 10, ctx.opts.size(5, 2), true)
}

/// The same with 100 MiB: no Python anchors (they take minutes at this size).
pub(crate) fn echo_100mb(ctx: &Ctx) -> MetricResult {
    let m = MetricResult::new(
        "echo_100mb",
        "100 MiB echo round trip (Vec<u8> in, Vec<u8> out), 2 workers",
        "MiB/s",
        Better::Higher,
    );
    echo(ctx, m, 100, ctx.opts.size(2, 1), false)
}

/// `mib` MiB echoed `rounds` times per sample, ppool (both transports) against procspawn, a
/// raw pipe one way, and, if `python`, the Python anchors.
fn echo(ctx: &Ctx, mut m: MetricResult, mib: usize, rounds: u32, python: bool) -> MetricResult {
    m.note(format!(
        "echo throughput counts the payload both ways: 2 x {mib} MiB / round-trip time; \
         raw pipe is one way only: {mib} MiB / time until the reader has it all; \
         {rounds} round trips per sample"
    ));
    let payload: Vec<u8> = (0..mib * MIB)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 12) as u8)
        .collect();
    let echo_rate = |total: Duration| (2 * mib) as f64 * f64::from(rounds) / total.as_secs_f64();
    let ppool = ready(&mut m, "ppool", BytesPool::new(WORKERS));
    let pipes = ready(
        &mut m,
        "ppool (pipes)",
        BytesPool::over(WORKERS, Transport::Pipes),
    );
    let procspawn = ready(&mut m, "procspawn", ProcspawnPool::new(WORKERS));
    let mut raw = ready(&mut m, "raw pipe", RawPipeChild::sink());
    let mut runners = Runners::default();
    let payload = &payload;
    for (label, name, pool) in [
        ("ppool", "ppool call", &ppool),
        ("ppool (pipes)", "ppool call over pipes", &pipes),
    ] {
        if let Some(pool) = pool {
            runners.add(label, move || {
                let total = (0..rounds)
                    .map(|_| pool.echo(payload))
                    .sum::<Result<Duration, _>>()?;
                Ok(Measured::one(name, echo_rate(total)))
            });
        }
    }
    if let Some(pool) = &procspawn {
        runners.add("procspawn", move || {
            let total = (0..rounds)
                .map(|_| pool.echo_bytes(payload))
                .sum::<Result<Duration, _>>()?;
            Ok(Measured::one(
                "procspawn Pool (serde_bytes)",
                echo_rate(total),
            ))
        });
    }
    if let Some(raw) = raw.as_mut() {
        runners.add("raw pipe", move || {
            let mut total = Duration::ZERO;
            for _ in 0..rounds {
                total += raw.send_one_way(payload)?;
            }
            let rate = mib as f64 * f64::from(rounds) / total.as_secs_f64();
            Ok(Measured::one("raw pipe one way", rate))
        });
    }
    if python {
        let args = py_args(&[("mib", mib.to_string()), ("rounds", rounds.to_string())]);
        runners.add_python(ctx, &mut m, "echo_10mb", args);
    }
    runners.run(&mut m, ctx.opts.reps);
    for (name, pool) in [("ppool", ppool), ("ppool (pipes)", pipes)] {
        if let Some(pool) = pool {
            note_shutdown(&mut m, name, pool.finish());
        }
    }
    m
}
