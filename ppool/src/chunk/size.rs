//! How many tasks go into one job. Tiny tasks travel in chunks so the channel's per-message
//! cost is spread; the size adapts to how long tasks take, aiming at a few milliseconds of
//! work per chunk (like joblib's auto batch size), unless the user fixes it.

use std::sync::atomic::{AtomicU64, Ordering};

/// The work one chunk should hold, in nanoseconds.
const TARGET_NANOS: u64 = 2_000_000;
/// The most tasks in one chunk.
pub(crate) const MAX_CHUNK: usize = 4096;

/// A pool's chunk policy and what it has learnt of its tasks' duration.
#[derive(Debug)]
pub(crate) struct Chunking {
    fixed: Option<usize>,
    cap: usize,
    /// Mean nanoseconds per task seen so far; 0 before the first chunk comes back.
    nanos_per_task: AtomicU64,
}

impl Chunking {
    /// `fixed`: the user's `chunk_size`; `cap`: the most tasks a chunk may hold (a worker
    /// recycled after n tasks gets chunks of at most n).
    pub(crate) fn new(fixed: Option<usize>, cap: Option<u64>) -> Self {
        let cap = cap.map_or(MAX_CHUNK, |c| (c.min(MAX_CHUNK as u64) as usize).max(1));
        Chunking {
            fixed,
            cap,
            nanos_per_task: AtomicU64::new(0),
        }
    }

    /// The same policy, with nothing learnt yet (for another entry's tasks).
    pub(crate) fn fresh(&self) -> Chunking {
        Chunking {
            fixed: self.fixed,
            cap: self.cap,
            nanos_per_task: AtomicU64::new(0),
        }
    }

    /// The chunk size for a stream of unknown length.
    pub(crate) fn for_stream(&self) -> usize {
        if let Some(n) = self.fixed {
            return n;
        }
        let per_task = self.nanos_per_task.load(Ordering::Relaxed);
        TARGET_NANOS
            .checked_div(per_task)
            .map_or(1, |n| (n as usize).clamp(1, self.cap))
    }

    /// The chunk size for `len` tasks on `workers` workers: four chunks a worker, so the load
    /// stays balanced, but, once the tasks' duration is known, no more work per chunk than the
    /// target and no less than an eighth of it. Below that, a chunk costs more to send than to
    /// run, and spreading tiny tasks over more workers (a thousand of them on many hosts,
    /// say) only adds messages: a few workers do them faster.
    pub(crate) fn for_len(&self, len: usize, workers: usize) -> usize {
        if let Some(n) = self.fixed {
            return n;
        }
        let balanced = len.div_ceil(4 * workers.max(1)).max(1);
        let per_task = self.nanos_per_task.load(Ordering::Relaxed);
        let Some(by_time) = TARGET_NANOS.checked_div(per_task) else {
            return balanced.min(self.cap);
        };
        let by_time = (by_time as usize).max(1);
        let floor = (by_time / 8).max(1);
        balanced.clamp(floor, by_time).min(self.cap)
    }

    /// Learns from a chunk of `count` tasks that kept a worker busy `busy_nanos`.
    pub(crate) fn observe(&self, busy_nanos: u64, count: u32) {
        if count == 0 || self.fixed.is_some() {
            return;
        }
        let sample = (busy_nanos / u64::from(count)).max(1);
        let old = self.nanos_per_task.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 3 + sample) / 4
        };
        self.nanos_per_task.store(new.max(1), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
