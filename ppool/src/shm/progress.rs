//! The progress word: the worker publishes the job and the task it starts and finishes, so
//! that when it dies the supervisor can tell which task was running, which finished and which
//! never started.
//!
//! It lies in the region's progress line (see `region`): two slots, each a seqlock: slot
//! `v & 1` holds version `v` with `seq = 2v` once complete (`2v - 1` while being written), the
//! job, and `counts = started | finished << 32`; `select = v` names the latest complete slot.
//! The worker is its only writer (invariant 2), and a reader never sees it torn (invariant 7;
//! the invariants are listed in `mapping`).

use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use super::mapping::Mapping;
use super::region::{
    P_SELECT, P_SLOT_BYTES, P_SLOTS, PROGRESS, RingError, S_COUNTS, S_JOB, S_SEQ, corrupt,
};

/// Reads of the progress word before a reader gives up on a writer that keeps changing it.
const PROGRESS_TRIES: u32 = 1000;

/// Where a worker is in its current job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The job.
    pub(crate) job: u64,
    /// One more than the index of the last task that started (0: none): as tasks run in
    /// order, tasks `started..` never did.
    pub(crate) started: u32,
    /// One more than the index of the last task that finished (0: none): tasks `..finished`
    /// did, and their results went out before. Never more than `started`.
    pub(crate) finished: u32,
}

impl Progress {
    /// The task that started last and did not finish, if any.
    #[cfg(test)]
    pub(crate) fn running(&self) -> Option<u32> {
        (self.started > self.finished).then(|| self.started - 1)
    }
}

/// The worker's side of the progress word.
#[derive(Debug)]
pub(crate) struct ProgressWriter {
    map: Arc<Mapping>,
    /// The version last published.
    version: u64,
    /// What was last published.
    state: Progress,
}

impl ProgressWriter {
    /// The writer of the progress word in `map`, a fresh region's (invariant 10).
    pub(super) fn new(map: Arc<Mapping>) -> Self {
        ProgressWriter {
            map,
            version: 0,
            state: Progress::default(),
        }
    }

    /// Tells that task `index` of `job` starts (tasks of a job run in order).
    pub(crate) fn started(&mut self, job: u64, index: u32) {
        self.switch_job(job);
        self.state.started = index.saturating_add(1);
        self.state.finished = self.state.finished.min(self.state.started);
        self.publish();
    }

    /// Tells that task `index` of `job` finished.
    #[cfg(test)]
    pub(crate) fn finished(&mut self, job: u64, index: u32) {
        self.switch_job(job);
        self.state.finished = index.saturating_add(1);
        self.state.started = self.state.started.max(self.state.finished);
        self.publish();
    }

    /// Starts counting afresh for a job other than the current one.
    fn switch_job(&mut self, job: u64) {
        if job != self.state.job {
            self.state = Progress {
                job,
                ..Progress::default()
            };
        }
    }

    /// Writes the state into the slot `select` does not name, then names it (invariant 7).
    fn publish(&mut self) {
        let version = self.version.wrapping_add(1);
        let slot = PROGRESS + P_SLOTS + (version & 1) as usize * P_SLOT_BYTES;
        let seq = self.map.u64_at(slot + S_SEQ);
        seq.store(version.wrapping_mul(2).wrapping_sub(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.map
            .u64_at(slot + S_JOB)
            .store(self.state.job, Ordering::Relaxed);
        let counts = u64::from(self.state.started) | u64::from(self.state.finished) << 32;
        self.map
            .u64_at(slot + S_COUNTS)
            .store(counts, Ordering::Relaxed);
        seq.store(version.wrapping_mul(2), Ordering::Release);
        self.map
            .u64_at(PROGRESS + P_SELECT)
            .store(version, Ordering::Release);
        self.version = version;
    }
}

/// The supervisor's side of the progress word.
#[derive(Debug)]
pub(crate) struct ProgressReader {
    map: Arc<Mapping>,
}

impl ProgressReader {
    /// The reader of the progress word in `map`.
    pub(super) fn new(map: Arc<Mapping>) -> Self {
        ProgressReader { map }
    }

    /// The worker's latest progress. Never torn: a worker that died mid-update shows its
    /// previous state. An error when the word is inconsistent, or keeps changing for longer
    /// than an honest worker could make it.
    pub(crate) fn read(&self) -> Result<Progress, RingError> {
        for attempt in 0..PROGRESS_TRIES {
            let version = self.map.u64_at(PROGRESS + P_SELECT).load(Ordering::Acquire);
            let slot = PROGRESS + P_SLOTS + (version & 1) as usize * P_SLOT_BYTES;
            let seq = self.map.u64_at(slot + S_SEQ);
            let before = seq.load(Ordering::Acquire);
            let job = self.map.u64_at(slot + S_JOB).load(Ordering::Relaxed);
            let counts = self.map.u64_at(slot + S_COUNTS).load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            let after = seq.load(Ordering::Relaxed);
            if before == after && before == version.wrapping_mul(2) {
                let progress = Progress {
                    job,
                    started: counts as u32,
                    finished: (counts >> 32) as u32,
                };
                if progress.finished > progress.started {
                    return Err(corrupt(format!(
                        "progress says {} tasks finished of {} started",
                        progress.finished, progress.started
                    )));
                }
                return Ok(progress);
            }
            if attempt < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        Err(corrupt(format!(
            "the progress word stayed inconsistent over {PROGRESS_TRIES} reads"
        )))
    }
}

#[cfg(test)]
mod tests;
