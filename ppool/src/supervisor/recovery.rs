//! Worker lifecycle seen from the supervisor: starting workers, retiring them, replacing the
//! dead, and settling the jobs a failed worker held.

use super::conn::Conn;
use super::run::Sent;
use super::{Job, Phase, Shared, Slot, lock};
use crate::error::{Error, ExitCause};
use crate::local::Local;
use crate::process::WorkerProc;
use crate::protocol::FrameError;
use crate::watchdog::Verdict;
use std::collections::VecDeque;

/// How many times a job may find its worker dead before it was sent, without that counting
/// against it.
const MAX_BOUNCES: u32 = 3;

/// Lets the watchdog and `shutdown` see slot `i`'s process (never this process itself).
pub(super) fn register(shared: &Shared, i: usize, conn: &Conn) {
    if let Conn::Proc(p) = conn {
        shared
            .watch
            .register(i, p.pid, std::sync::Arc::clone(p.pidfd()));
    }
}

/// Starts every worker at once, then waits for each to be ready.
pub(super) fn start_all(shared: &Shared) -> Result<Vec<Conn>, Error> {
    let n = shared.settings.n_jobs;
    if shared.settings.debug {
        return (0..n)
            .map(|i| Local::start(&shared.spec, i).map(Conn::Local))
            .collect();
    }
    let mut procs = Vec::with_capacity(n);
    for i in 0..n {
        procs.push(WorkerProc::spawn(&shared.spec, i)?);
    }
    for p in &mut procs {
        p.ready(&shared.spec)?;
        tracing::debug!(pool = %shared.spec.pool, worker = p.index, pid = p.pid, "worker started");
    }
    Ok(procs.into_iter().map(Conn::Proc).collect())
}

/// Starts a replacement for slot `i`.
pub(super) fn restart(shared: &Shared, i: usize) -> Result<Conn, Error> {
    if shared.settings.debug {
        return Local::start(&shared.spec, i).map(Conn::Local);
    }
    let mut p = WorkerProc::spawn(&shared.spec, i)?;
    p.ready(&shared.spec)?;
    tracing::info!(pool = %shared.spec.pool, worker = i, pid = p.pid, "worker replaced");
    Ok(Conn::Proc(p))
}

/// Marks a worker that reached `max_tasks_per_worker` for its driver thread to retire and
/// replace, so that whoever drove its last job is not kept waiting for that.
pub(super) fn recycle_if_due(shared: &Shared, mut conn: Box<Conn>) -> Slot {
    match shared.settings.max_tasks_per_worker {
        Some(max) if *conn.tasks_done() >= max => Slot::Recycle(conn),
        _ => Slot::Idle(conn),
    }
}

/// Stops a worker gracefully, keeping what its exit hook returned.
pub(super) fn retire(shared: &Shared, i: usize, conn: Conn) {
    let p = match conn {
        Conn::Proc(p) => p,
        Conn::Local(local) => {
            if let Some(body) = local.retire() {
                lock(&shared.exit_results).push(body);
            }
            return;
        }
    };
    let pid = p.pid;
    if let Some(body) = p.retire(shared.spec.on_exit.is_some()) {
        lock(&shared.exit_results).push(body);
    }
    tracing::debug!(pool = %shared.spec.pool, worker = i, pid, "worker retired");
}

/// Starts a replacement in slot `i`, or marks it dead.
pub(super) fn replace(shared: &Shared, i: usize) -> Slot {
    if lock(&shared.state).phase == Phase::Closed {
        return Slot::Retired;
    }
    shared.stats.restarted(i);
    match restart(shared, i) {
        Ok(conn) => {
            register(shared, i, &conn);
            Slot::Idle(Box::new(conn))
        }
        Err(e) => {
            tracing::error!(pool = %shared.spec.pool, worker = i, error = %e, "cannot replace worker");
            *lock(&shared.last_error) = Some(e);
            Slot::Dead
        }
    }
}

/// Worker `i` failed while it held `sent`: classify the failure, settle the jobs (the head
/// one was running; the others never started and go back to the queue), and leave the slot
/// to be refilled.
pub(super) fn fail(
    shared: &Shared,
    i: usize,
    mut conn: Box<Conn>,
    mut sent: VecDeque<Sent>,
    cause: FrameError,
) -> Slot {
    let verdict = shared.watch.unregister(i);
    let pid = conn.pid();
    // Bytes of the jobs still in the pipe, unread by the worker: read before the pipe goes.
    let unread = match &*conn {
        Conn::Proc(p) => p.unread_task_bytes(),
        Conn::Local(_) => None,
    };
    let exit = match &mut *conn {
        Conn::Proc(p) => {
            p.kill();
            p.reap()
        }
        Conn::Local(_) => ExitCause::Unknown,
    };
    drop(conn);
    let closed = lock(&shared.state).phase == Phase::Closed;
    let entry = shared.spec.entry.to_string();
    let error = if closed {
        Error::Closed
    } else {
        match (verdict, &cause) {
            (Some(Verdict::Timeout), _) => Error::Timeout {
                entry,
                worker: i,
                pid,
                timeout: shared.settings.task_timeout.unwrap_or_default(),
            },
            (Some(Verdict::Memory { rss }), _) => Error::MemoryLimit {
                entry,
                worker: i,
                pid,
                limit: shared.settings.memory_limit.unwrap_or_default(),
                rss,
            },
            (None, FrameError::Closed | FrameError::Io(_)) => Error::WorkerDied {
                entry,
                worker: i,
                pid,
                cause: exit,
            },
            (None, e @ (FrameError::TooLarge { .. } | FrameError::Malformed(_))) => {
                Error::Protocol {
                    worker: i,
                    message: e.to_string(),
                }
            }
        }
    };
    if !closed {
        shared.stats.failed(i);
        tracing::warn!(pool = %shared.spec.pool, worker = i, pid, error = %error, "worker failed");
        *lock(&shared.last_error) = Some(error.clone());
    }
    // The worker died before it read any of the jobs (it died while idle, and the write either
    // failed or still sits whole in the pipe): they never ran, so none is to blame.
    let sent_total: usize = sent.iter().map(|s| s.job.frame.len()).sum();
    let untouched = matches!(&cause, FrameError::Io(e) if e.kind() == std::io::ErrorKind::NotConnected)
        || (matches!(cause, FrameError::Closed | FrameError::Io(_))
            && unread.is_some_and(|n| n >= sent_total as u64));
    let mut settle: Vec<(Job, Error)> = Vec::new();
    let mut requeue: Vec<Job> = Vec::new();
    if let Some(head) = sent.pop_front() {
        let mut job = head.job;
        if closed {
            settle.push((job, error.clone()));
        } else if untouched && job.bounces < MAX_BOUNCES {
            job.bounces += 1;
            requeue.push(job);
        } else if job.count > 1 && job.split.is_some() {
            // Which of its tasks brought the worker down is unknown: run them one by one, so
            // that the culprit fails alone. Running them again is not a retry.
            let split = job.split.take().map(|split| split(&job.frame));
            match split {
                Some(pieces) if pieces.len() == job.count as usize => {
                    job.deliver.disarm();
                    requeue.extend(pieces.into_iter().map(|(frame, deliver)| Job {
                        frame,
                        count: 1,
                        deliver,
                        cancelled: job.cancelled.clone(),
                        attempts: job.attempts,
                        bounces: 0,
                        split: None,
                    }));
                }
                _ => settle.push((job, error.clone())),
            }
        } else if matches!(error, Error::WorkerDied { .. })
            && job.attempts < shared.settings.retries
        {
            job.attempts += 1;
            requeue.push(job);
        } else {
            settle.push((job, error.clone()));
        }
    }
    requeue.extend(sent.into_iter().map(|s| s.job));
    if closed {
        settle.extend(requeue.drain(..).map(|j| (j, Error::Closed)));
    } else if !requeue.is_empty() {
        let mut st = lock(&shared.state);
        for job in requeue.into_iter().rev() {
            st.queue.push_front(job);
        }
    }
    for (job, error) in settle {
        job.deliver.send(Err(error));
    }
    if closed {
        Slot::Retired
    } else {
        // The slot's driver thread starts the replacement, after everyone has their answer.
        Slot::Vacant
    }
}
