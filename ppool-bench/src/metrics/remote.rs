//! Metric: workers on other hosts over ssh, beside the same ssh session carrying raw bytes.
//! Runs when `PPOOL_BENCH_SSH_HOSTS` (or the test cluster's `PPOOL_TEST_SSH_HOSTS`) names
//! hosts that `ssh` (or `PPOOL_SSH`) reaches; the test cluster of `.ci/cluster` serves.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::{Ctx, Measured, Runners, note_shutdown, per_second, ready};
use crate::BenchResult;
use crate::ppool_side::{EchoPool, SquarePool};
use crate::results::{Better, MetricResult};

/// The hosts to measure on, if any.
fn hosts() -> Vec<String> {
    std::env::var("PPOOL_BENCH_SSH_HOSTS")
        .or_else(|_| std::env::var("PPOOL_TEST_SSH_HOSTS"))
        .map(|h| h.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// `ssh host cat`: the raw ping-pong over the same kind of session.
struct RawSsh(Child);

impl RawSsh {
    fn start(host: &str) -> BenchResult<RawSsh> {
        let ssh = std::env::var_os("PPOOL_SSH").unwrap_or_else(|| "ssh".into());
        let child = Command::new(ssh)
            .args(["-T", "-o", "BatchMode=yes", host, "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut raw = RawSsh(child);
        raw.median_micros(100)?;
        Ok(raw)
    }

    fn median_micros(&mut self, n: u64) -> BenchResult<f64> {
        let mut samples = Vec::with_capacity(n as usize);
        let mut reply = [0u8; 8];
        for i in 0..n {
            let start = Instant::now();
            let stdin = self.0.stdin.as_mut().ok_or("no stdin")?;
            stdin.write_all(&i.to_le_bytes())?;
            stdin.flush()?;
            self.0
                .stdout
                .as_mut()
                .ok_or("no stdout")?
                .read_exact(&mut reply)?;
            samples.push(start.elapsed());
        }
        Ok(crate::stats::median_micros(&mut samples))
    }
}

impl Drop for RawSsh {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A sync `call` to a worker on another host, beside raw ssh ping-pong.
pub(crate) fn ssh_rtt(ctx: &Ctx) -> MetricResult {
    let mut m = MetricResult::new(
        "ssh_rtt",
        "Sync round trip to a worker on another host, over ssh",
        "us per round trip",
        Better::Lower,
    );
    let hosts = hosts();
    let Some(host) = hosts.first() else {
        m.note("skipped: no hosts (PPOOL_BENCH_SSH_HOSTS)");
        return m;
    };
    let n = ctx.opts.size(5_000, 1_000);
    m.note(format!(
        "host {host}; {n} round trips per sample, medians of per-round-trip samples; raw: \
         8 bytes through `ssh {host} cat`"
    ));
    let pool = ready(&mut m, "ppool", EchoPool::on_host(host));
    let mut raw = ready(&mut m, "raw ssh", RawSsh::start(host));
    let mut runners = Runners::default();
    if let Some(pool) = &pool {
        runners.add("ppool", move || {
            Ok(Measured::one(
                "ppool call over ssh (median)",
                pool.median_micros(n)?,
            ))
        });
    }
    if let Some(raw) = raw.as_mut() {
        runners.add("raw ssh", move || {
            Ok(Measured::one(
                "raw ssh ping-pong (median)",
                raw.median_micros(n)?,
            ))
        });
    }
    runners.run(&mut m, ctx.opts.reps);
    if let Some(pool) = pool {
        note_shutdown(&mut m, "ppool", pool.finish());
    }
    m
}

/// Tiny tasks in bulk on every host, two workers each.
pub(crate) fn ssh_bulk(ctx: &Ctx) -> MetricResult {
    let mut m = MetricResult::new(
        "ssh_bulk",
        "Tiny tasks in bulk on other hosts over ssh: batch(0..N).wait() on square(u64)",
        "tasks per second",
        Better::Higher,
    );
    let hosts = hosts();
    if hosts.is_empty() {
        m.note("skipped: no hosts (PPOOL_BENCH_SSH_HOSTS)");
        return m;
    }
    let n: u64 = ctx.opts.size(100_000, 20_000);
    m.note(format!(
        "N = {n}; 2 workers on each of {}",
        hosts.join(", ")
    ));
    let pool = ready(&mut m, "ppool", SquarePool::on_hosts(&hosts, 2));
    let mut runners = Runners::default();
    if let Some(pool) = &pool {
        runners.add("ppool", move || {
            Ok(Measured::one(
                "ppool batch over ssh",
                per_second(n, pool.batch(n)?),
            ))
        });
    }
    runners.run(&mut m, ctx.opts.reps);
    if let Some(pool) = pool {
        note_shutdown(&mut m, "ppool", pool.finish());
    }
    m
}
