//! Driving one worker: send it jobs (several ahead when they are short, in one write), read
//! its results in order and deliver them, and hand failures to `recovery`.

use super::conn::Conn;
use super::recovery::{fail, recycle_if_due};
use super::{Job, Phase, Shared, Slot, lock};
use crate::error::Error;
use crate::protocol::{self, FrameError, Results, ResultsMerge};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Jobs are sent ahead only while they take less than this.
const PIPELINE_BELOW_NANOS: u64 = 1_000_000;

/// Jobs this short are sent ahead many at a time, in one write.
const TINY_JOB_NANOS: u64 = 50_000;

/// How many tiny jobs one worker may hold.
const TINY_PIPELINE: usize = 64;

/// A job written to a worker, waiting for its results.
pub(super) struct Sent {
    pub(super) job: Job,
    id: u64,
}

/// Drives worker `i`: sends `first` (and, with `top_up`, more queued jobs ahead of need),
/// delivers results as they come, and handles the worker's failure. Returns what the slot
/// holds afterwards.
pub(super) fn run(
    shared: &Shared,
    i: usize,
    mut conn: Box<Conn>,
    first: Job,
    top_up: bool,
) -> Slot {
    let mut sent: VecDeque<Sent> = VecDeque::new();
    let mut sent_bytes = 0usize;
    let mut sent_tasks = 0u64;
    let mut next = Some(first);
    // The parts of a job whose results came in several frames, and the whole once joined.
    let mut merge = ResultsMerge::default();
    let mut merged_body: Vec<u8>;
    loop {
        // Take what we hold and top up from the queue while the worker has room, then send
        // it all in one write.
        let depth = pipeline_depth(shared);
        let unsent = sent.len();
        while let Some(mut job) = next.take() {
            if job.is_cancelled() {
                job.deliver.send(Err(Error::Closed));
            } else if job.frame.len() - 4 > shared.spec.max_frame {
                // The typed layer keeps chunks within the limit; this is a single task above it.
                job.deliver.send(Err(Error::ArgumentsTooLarge {
                    entry: shared.spec.entry.to_string(),
                    size: job.frame.len() - protocol::TASKS_HEADER - 4,
                    limit: shared.spec.max_frame,
                }));
            } else {
                let id = shared.next_job.fetch_add(1, Ordering::Relaxed);
                protocol::stamp_job(&mut job.frame, id);
                let flags = if !top_up && !spin_limit(shared).is_zero() {
                    protocol::FLAG_SPIN
                } else {
                    0
                };
                protocol::set_flags(&mut job.frame, flags);
                sent_bytes += job.frame.len();
                sent_tasks += u64::from(job.count);
                if sent.is_empty() {
                    arm(shared, i, &job);
                }
                sent.push_back(Sent { job, id });
            }
            if top_up && sent.len() < depth {
                next = take_more(shared, &mut conn, sent_bytes, sent_tasks);
            }
        }
        let written = match sent.len() - unsent {
            0 => Ok(()),
            // The common case of a blocking call: no list to build.
            1 => sent
                .back()
                .map_or(Ok(()), |s| conn.send(&[s.job.frame.as_slice()])),
            _ => {
                let frames: Vec<&[u8]> = sent
                    .range(unsent..)
                    .map(|s| s.job.frame.as_slice())
                    .collect();
                conn.send(&frames)
            }
        };
        if let Err(e) = written {
            return fail(shared, i, conn, sent, e);
        }
        let Some(head) = sent.front() else { break };
        let (id, count) = (head.id, head.job.count);
        if !top_up {
            // A caller drives this worker and waits: spin for the answer if it is due soon.
            conn.spin(spin_limit(shared));
        }
        if let Err(e) = conn.recv() {
            return fail(shared, i, conn, sent, e);
        }
        let results = match Results::parse(conn.body()) {
            Ok(r) if r.job == id && fits(merge.count(), &r, count) => r,
            Ok(r) => {
                let e = FrameError::Malformed(format!(
                    "results for job {} ({} tasks) while job {id} ({count} tasks) was running",
                    r.job, r.count
                ));
                return fail(shared, i, conn, sent, e);
            }
            Err(e) => return fail(shared, i, conn, sent, e),
        };
        if results.more {
            // Results larger than one frame: keep this part and read the next.
            merge.add(&results);
            continue;
        }
        let results = if merge.is_empty() {
            results
        } else {
            merged_body = merge.finish(&results);
            match Results::parse(&merged_body) {
                Ok(r) => r,
                Err(e) => return fail(shared, i, conn, sent, e),
            }
        };
        let Some(done) = sent.pop_front() else { break };
        if shared.watchdog {
            shared.watch.disarm(i);
        }
        if let Some(head) = sent.front() {
            arm(shared, i, &head.job);
        }
        sent_bytes -= done.job.frame.len();
        sent_tasks -= u64::from(done.job.count);
        shared
            .stats
            .record(i, count, results.busy_nanos, results.max_task_nanos);
        let old = shared.job_nanos.load(Ordering::Relaxed);
        let new = if old == 0 {
            results.busy_nanos
        } else {
            (old * 7 + results.busy_nanos) / 8
        };
        shared.job_nanos.store(new.max(1), Ordering::Relaxed);
        done.job.deliver.send(Ok((results, i)));
        conn.shrink_buffers();
        *conn.tasks_done() += u64::from(count);
        if top_up && sent.len() < pipeline_depth(shared) {
            next = take_more(shared, &mut conn, sent_bytes, sent_tasks);
        }
    }
    recycle_if_due(shared, conn)
}

/// Whether a results frame of `part.count` outcomes, after `got` of the same job already,
/// fits a job of `count` tasks: within it, and, unless more frames follow, completing it.
fn fits(got: u32, part: &Results<'_>, count: u32) -> bool {
    let total = u64::from(got) + u64::from(part.count);
    total <= u64::from(count) && (part.more || total == u64::from(count))
}

/// The next queued job for a worker that already holds `sent_bytes` of jobs, if it has room.
fn take_more(shared: &Shared, conn: &mut Conn, sent_bytes: usize, sent_tasks: u64) -> Option<Job> {
    // Sending ahead only pays for short jobs; behind a long one, a job would wait for nothing
    // while another worker is free.
    let job_nanos = shared.job_nanos.load(Ordering::Relaxed);
    if job_nanos == 0 || job_nanos > PIPELINE_BELOW_NANOS {
        return None;
    }
    let mut st = lock(&shared.state);
    if st.phase == Phase::Closed {
        return None;
    }
    let job = st.queue.front()?;
    if sent_bytes > 0 && sent_bytes + job.frame.len() > conn.budget() {
        return None;
    }
    if let Some(max) = shared.settings.max_tasks_per_worker {
        if *conn.tasks_done() + sent_tasks + u64::from(job.count) > max && sent_tasks > 0 {
            return None;
        }
        if *conn.tasks_done() + sent_tasks >= max {
            return None;
        }
    }
    st.queue.pop_front()
}

/// How long to spin for a worker's answer: only when jobs are short, so the answer is due
/// within the spin, and never on a single CPU, where the spin would keep the worker from
/// answering.
fn spin_limit(shared: &Shared) -> Duration {
    const LIMIT: Duration = Duration::from_micros(50);
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cpus = *CPUS.get_or_init(crate::config::cpus);
    match shared.job_nanos.load(Ordering::Relaxed) {
        n if cpus > 1 && n > 0 && n < 30_000 => LIMIT,
        _ => Duration::ZERO,
    }
}

/// How many jobs one worker may hold: many tiny ones, or a couple of short ones.
fn pipeline_depth(shared: &Shared) -> usize {
    if shared.settings.task_timeout.is_some() {
        // A job sent ahead would wait behind the running one and eat into its own deadline.
        return 1;
    }
    match shared.job_nanos.load(Ordering::Relaxed) {
        n if n > 0 && n < TINY_JOB_NANOS => TINY_PIPELINE.max(shared.settings.pipeline),
        _ => shared.settings.pipeline,
    }
}

fn arm(shared: &Shared, i: usize, job: &Job) {
    if let Some(timeout) = shared.settings.task_timeout {
        let deadline = Instant::now() + timeout.saturating_mul(job.count.max(1));
        shared.watch.arm(i, Some(deadline));
    } else if shared.settings.memory_limit.is_some() {
        shared.watch.arm(i, None);
    }
}
