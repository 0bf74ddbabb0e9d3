//! Anchor: the `procspawn` crate (1.0.2).
//!
//! `procspawn::spawn` starts a fresh process per call, so for round trips we use its
//! reusable `procspawn::Pool`: each `Pool::spawn` still creates two new ipc-channel
//! channels and ships the call to a pooled worker, which is the cheapest reusable
//! round trip procspawn offers.

use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use crate::BenchResult;

/// Must run early in `main`: in a procspawn worker this serves the call and exits.
pub(crate) fn init() {
    ::procspawn::ProcConfig::new().pass_args(false).init();
}

/// A `procspawn::Pool` with a fixed number of processes.
#[derive(Debug)]
pub(crate) struct ProcspawnPool {
    pool: ::procspawn::Pool,
}

impl ProcspawnPool {
    pub(crate) fn new(workers: usize) -> BenchResult<ProcspawnPool> {
        let pool = ::procspawn::Pool::new(workers)?;
        Ok(ProcspawnPool { pool })
    }

    /// `n` sequential `spawn(x).join()` round trips of a `u64`; returns the total time.
    pub(crate) fn round_trips(&self, n: u64) -> BenchResult<Duration> {
        let start = Instant::now();
        for i in 0..n {
            let got = self.pool.spawn(i, |x: u64| x).join()?;
            if got != i {
                return Err("procspawn echo returned a wrong value".into());
            }
        }
        Ok(start.elapsed())
    }

    /// One echo round trip of `payload` as `serde_bytes::ByteBuf`; times only the call.
    pub(crate) fn echo_bytes(&self, payload: &[u8]) -> BenchResult<Duration> {
        let arg = ByteBuf::from(payload.to_vec());
        let start = Instant::now();
        let back = self.pool.spawn(arg, |b: ByteBuf| b).join()?;
        let elapsed = start.elapsed();
        if back.as_slice() != payload {
            return Err("procspawn echo returned different bytes".into());
        }
        Ok(elapsed)
    }

    /// `payload` one way as `serde_bytes::ByteBuf`, the worker answering with its page sum
    /// (one byte of each 4 KiB page); times only the call.
    pub(crate) fn page_sum(&self, payload: &[u8]) -> BenchResult<Duration> {
        let arg = ByteBuf::from(payload.to_vec());
        let start = Instant::now();
        let sum = self
            .pool
            .spawn(arg, |b: ByteBuf| {
                crate::metrics::shared_broadcast::page_sum(&b)
            })
            .join()?;
        let elapsed = start.elapsed();
        if sum != crate::metrics::shared_broadcast::page_sum(payload) {
            return Err("procspawn page sum returned a wrong sum".into());
        }
        Ok(elapsed)
    }
}

impl Drop for ProcspawnPool {
    fn drop(&mut self) {
        self.pool.shutdown();
    }
}
