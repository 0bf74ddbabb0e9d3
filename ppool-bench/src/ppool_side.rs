//! The ppool side of every metric: the pool entries and the code driving them.

use std::fs;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ppool::{ProcessPool, Remote, Transport, pool_entry};
use serde_json::json;

use crate::BenchResult;

#[pool_entry]
fn echo(x: u64) -> u64 {
    x
}

#[pool_entry]
fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

#[pool_entry]
fn echo_bytes(v: Vec<u8>) -> Vec<u8> {
    v
}

#[pool_entry]
fn spin(iters: u64) -> u64 {
    crate::kernel::spin(iters)
}

/// How long to wait for `call_with` callbacks before giving up.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(300);

/// `ProcessPool<echo>`: one `u64` round trip at a time.
#[derive(Debug)]
pub(crate) struct EchoPool(ProcessPool<echo>);

impl EchoPool {
    pub(crate) fn new(workers: usize) -> BenchResult<EchoPool> {
        EchoPool::over(workers, Transport::SharedMemory)
    }

    /// One worker on `host`, over ssh.
    pub(crate) fn on_host(host: &str) -> BenchResult<EchoPool> {
        let pool = ProcessPool::<echo>::builder()
            .remote(Remote::ssh(host).workers(1))
            .build()?;
        for i in 0..100 {
            pool.call(i)?;
        }
        Ok(EchoPool(pool))
    }

    /// A pool whose workers are reached over `transport`.
    pub(crate) fn over(workers: usize, transport: Transport) -> BenchResult<EchoPool> {
        let pool = ProcessPool::<echo>::builder()
            .n_jobs(workers)
            .name("bench-echo")
            .transport(transport)
            .build()?;
        for i in 0..100 {
            pool.call(i)?;
        }
        Ok(EchoPool(pool))
    }

    /// The median of `n` sequential `pool.call(i)`, in microseconds.
    pub(crate) fn median_micros(&self, n: u64) -> BenchResult<f64> {
        let mut samples = Vec::with_capacity(n as usize);
        for i in 0..n {
            let start = Instant::now();
            if self.0.call(i)? != i {
                return Err("ppool echo returned a wrong value".into());
            }
            samples.push(start.elapsed());
        }
        Ok(crate::stats::median_micros(&mut samples))
    }

    pub(crate) fn finish(self) -> BenchResult<()> {
        self.0.join()?;
        Ok(())
    }
}

/// `ProcessPool<square>`: tiny tasks.
#[derive(Debug)]
pub(crate) struct SquarePool(ProcessPool<square>);

impl SquarePool {
    pub(crate) fn new(workers: usize) -> BenchResult<SquarePool> {
        SquarePool::over(workers, Transport::SharedMemory)
    }

    /// A pool whose workers are reached over `transport`.
    pub(crate) fn over(workers: usize, transport: Transport) -> BenchResult<SquarePool> {
        let pool = ProcessPool::<square>::builder()
            .n_jobs(workers)
            .transport(transport)
            .build()?;
        pool.batch(0..1000u64).wait()?;
        Ok(SquarePool(pool))
    }

    /// A pool of `workers` workers on each of `hosts`, over ssh, and none here.
    pub(crate) fn on_hosts(hosts: &[String], workers: usize) -> BenchResult<SquarePool> {
        let mut builder = ProcessPool::<square>::builder();
        for host in hosts {
            builder = builder.remote(Remote::ssh(host).workers(workers));
        }
        let pool = builder.build()?;
        pool.batch(0..1000u64).wait()?;
        Ok(SquarePool(pool))
    }

    /// `pool.batch(0..n).wait()`; returns the total time.
    pub(crate) fn batch(&self, n: u64) -> BenchResult<Duration> {
        let start = Instant::now();
        let out: Vec<u64> = self.0.batch(0..n).wait()?;
        let elapsed = start.elapsed();
        let ok = out.len() as u64 == n
            && out
                .iter()
                .enumerate()
                .step_by(997)
                .all(|(i, &y)| y == square_of(i as u64));
        if !ok {
            return Err("ppool batch returned wrong results".into());
        }
        Ok(elapsed)
    }

    /// Submits `n` tasks one by one with `call_with`; returns the time until the last
    /// callback ran.
    pub(crate) fn call_with_all(&self, n: u64) -> BenchResult<Duration> {
        let (done_tx, done_rx) = mpsc::channel::<bool>();
        let start = Instant::now();
        for i in 0..n {
            let done = done_tx.clone();
            self.0.call_with(i, move |r: Result<u64, ppool::Error>| {
                // The receiver outlives every callback unless we already gave up.
                done.send(matches!(r, Ok(y) if y == square_of(i))).ok();
            });
        }
        drop(done_tx);
        let mut bad = 0u64;
        for _ in 0..n {
            match done_rx.recv_timeout(CALLBACK_TIMEOUT) {
                Ok(ok) => bad += u64::from(!ok),
                Err(e) => return Err(format!("call_with callbacks stopped arriving: {e}").into()),
            }
        }
        let elapsed = start.elapsed();
        if bad > 0 {
            return Err(format!("{bad} call_with callbacks got an error or a wrong value").into());
        }
        Ok(elapsed)
    }

    pub(crate) fn finish(self) -> BenchResult<()> {
        self.0.join()?;
        Ok(())
    }
}

/// `ProcessPool<echo_bytes>`: large payloads.
#[derive(Debug)]
pub(crate) struct BytesPool(ProcessPool<echo_bytes>);

impl BytesPool {
    pub(crate) fn new(workers: usize) -> BenchResult<BytesPool> {
        BytesPool::over(workers, Transport::SharedMemory)
    }

    /// A pool whose workers are reached over `transport`.
    pub(crate) fn over(workers: usize, transport: Transport) -> BenchResult<BytesPool> {
        let pool = ProcessPool::<echo_bytes>::builder()
            .n_jobs(workers)
            .transport(transport)
            .build()?;
        pool.call(vec![1, 2, 3])?;
        Ok(BytesPool(pool))
    }

    /// One echo round trip of `payload`; the copy made to pass it by value is not timed.
    pub(crate) fn echo(&self, payload: &[u8]) -> BenchResult<Duration> {
        let arg = payload.to_vec();
        let start = Instant::now();
        let back = self.0.call(arg)?;
        let elapsed = start.elapsed();
        if back != payload {
            return Err("ppool echo_bytes returned different bytes".into());
        }
        Ok(elapsed)
    }

    pub(crate) fn finish(self) -> BenchResult<()> {
        self.0.join()?;
        Ok(())
    }
}

/// `ProcessPool<spin>`: CPU-bound tasks.
#[derive(Debug)]
pub(crate) struct SpinPool(ProcessPool<spin>);

impl SpinPool {
    pub(crate) fn new(workers: usize) -> BenchResult<SpinPool> {
        let pool = ProcessPool::<spin>::new(workers)?;
        pool.batch(vec![1000u64; workers * 2]).wait()?;
        Ok(SpinPool(pool))
    }

    /// Runs `tasks` tasks of `iters` iterations as one batch; returns the wall time.
    pub(crate) fn run(&self, iters: u64, tasks: usize) -> BenchResult<Duration> {
        let start = Instant::now();
        let out: Vec<u64> = self.0.batch(vec![iters; tasks]).wait()?;
        let elapsed = start.elapsed();
        if out.len() != tasks || out.iter().any(|&y| y != crate::kernel::spin(iters)) {
            return Err("ppool spin returned wrong results".into());
        }
        Ok(elapsed)
    }

    pub(crate) fn finish(self) -> BenchResult<()> {
        self.0.join()?;
        Ok(())
    }
}

fn square_of(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// Child mode: a whole program that starts a pool of 2, runs 2 tasks and shuts down.
pub(crate) fn startup_child() -> BenchResult<()> {
    let pool = ProcessPool::<square>::new(2)?;
    let out: Vec<u64> = pool.batch(0..2u64).wait()?;
    pool.join()?;
    if out != [0, 1] {
        return Err("startup child got wrong results".into());
    }
    Ok(())
}

/// Child mode: consumes `pool.map(0..n)` and prints the growth of its own peak RSS
/// (VmHWM, reset first through /proc/self/clear_refs) over VmRSS before the pool
/// existed, as JSON.
pub(crate) fn map_rss_child(n: u64) -> BenchResult<()> {
    let hwm_reset = fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_before = status_kib("VmRSS")?;
    // Default settings: adaptive chunks and the default stream window.
    let pool = ProcessPool::<square>::builder()
        .n_jobs(2)
        .name("bench-map-rss")
        .build()?;
    let start = Instant::now();
    let (mut sum, mut expected, mut count) = (0u64, 0u64, 0u64);
    for (i, r) in (0..n).zip(pool.map(0..n)) {
        sum = sum.wrapping_add(r?);
        expected = expected.wrapping_add(square_of(i));
        count += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let hwm_after = status_kib("VmHWM")?;
    pool.join()?;
    if count != n || sum != expected {
        return Err(format!("map yielded {count} items (wanted {n}) or wrong values").into());
    }
    let growth_mib = hwm_after.saturating_sub(rss_before) as f64 / 1024.0;
    let report = json!({
        "growth_mib": growth_mib,
        "rss_before_kib": rss_before,
        "hwm_after_kib": hwm_after,
        "hwm_reset": hwm_reset,
        "items_per_sec": n as f64 / secs.max(1e-12),
    });
    println!("{report}");
    Ok(())
}

/// A `kB` field of /proc/self/status.
fn status_kib(field: &str) -> BenchResult<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| format!("{field} not in /proc/self/status"))?;
    Ok(value.parse()?)
}
