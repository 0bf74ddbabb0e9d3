//! What to do when a worker fails, as pure functions: [`classify`] says what error the failure
//! is, and [`plan`] says which of the jobs the worker held run again and which end, and how.
//! The driver gathers the facts (the watchdog's verdict, the exit status, the bytes still
//! unread) and applies the plan.
//!
//! The rules, for the jobs a failed worker held, in the order they were sent:
//! - the pool is closing: every job ends with `Error::Closed`;
//! - the worker never took any of them (it died idle, and the jobs are still whole in its
//!   channel, or nothing reached it): the first is *bounced*, queued again at the front with no
//!   blame, up to [`MAX_BOUNCES`] times;
//! - the first job holds several tasks and can be split: which task brought the worker down is
//!   unknown, so its tasks are queued again one by one, and the culprit will fail alone;
//! - the worker died (not a timeout, memory limit or protocol error) and the first job has
//!   retries left: it is queued again, one attempt more;
//! - otherwise the first job ends with the error;
//! - the jobs after the first never started: they are queued again, in order, unblamed.

use super::job::{Job, Sent};
use crate::error::{Error, ExitCause};
use crate::protocol::FrameError;
use crate::watchdog::Verdict;
use std::collections::VecDeque;
use std::time::Duration;

/// How many times a job may find its worker dead before it was sent, without that counting
/// against it.
pub(super) const MAX_BOUNCES: u32 = 3;

/// Who failed, for the error.
#[derive(Debug, Clone, Copy)]
pub(super) struct Failed<'a> {
    pub(super) entry: &'a str,
    pub(super) worker: usize,
    pub(super) pid: u32,
    pub(super) task_timeout: Option<Duration>,
    pub(super) memory_limit: Option<u64>,
}

/// The error a worker's failure is: the watchdog's verdict first (it killed the worker), then
/// what the channel said.
pub(super) fn classify(
    who: Failed<'_>,
    verdict: Option<Verdict>,
    cause: &FrameError,
    exit: ExitCause,
    closed: bool,
) -> Error {
    let Failed {
        entry,
        worker,
        pid,
        task_timeout,
        memory_limit,
    } = who;
    let entry = entry.to_string();
    if closed {
        return Error::Closed;
    }
    match (verdict, cause) {
        (Some(Verdict::Cancelled), _) => Error::Cancelled,
        (Some(Verdict::Timeout), _) => Error::Timeout {
            entry,
            worker,
            pid,
            timeout: task_timeout.unwrap_or_default(),
        },
        (Some(Verdict::Memory { rss }), _) => Error::MemoryLimit {
            entry,
            worker,
            pid,
            limit: memory_limit.unwrap_or_default(),
            rss,
        },
        (None, FrameError::Closed | FrameError::Io(_) | FrameError::Send(_)) => Error::WorkerDied {
            entry,
            worker,
            pid,
            cause: exit,
        },
        (None, e @ (FrameError::TooLarge { .. } | FrameError::Malformed(_))) => Error::Protocol {
            worker,
            message: e.to_string(),
        },
    }
}

/// Whether the worker took none of the `sent_bytes` sent to it: nothing reached it, or it
/// died and all of it is still unread in its channel.
pub(super) fn untouched(cause: &FrameError, unread: Option<u64>, sent_bytes: usize) -> bool {
    match cause {
        FrameError::Send(e) if e.kind() == std::io::ErrorKind::NotConnected => true,
        FrameError::Closed | FrameError::Io(_) | FrameError::Send(_) => {
            unread.is_some_and(|n| n >= sent_bytes as u64)
        }
        FrameError::TooLarge { .. } | FrameError::Malformed(_) => false,
    }
}

/// What becomes of the jobs a failed worker held.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// To queue again at the front, in this order.
    pub(super) requeue: Vec<Job>,
    /// To end with these errors.
    pub(super) settle: Vec<(Job, Error)>,
}

/// The plan for the jobs `sent` to a worker that failed with `error` (see the module docs).
pub(super) fn plan(
    mut sent: VecDeque<Sent>,
    error: &Error,
    untouched: bool,
    closed: bool,
    retries: u32,
) -> Plan {
    let mut plan = Plan::default();
    if closed {
        plan.settle = sent.into_iter().map(|s| (s.job, Error::Closed)).collect();
        return plan;
    }
    if let Some(head) = sent.pop_front() {
        let mut job = head.job;
        if untouched && job.bounces < MAX_BOUNCES {
            job.bounces += 1;
            plan.requeue.push(job);
        } else if job.count > 1 && job.split.is_some() {
            match job.split.take().map(|split| split(&job.frame)) {
                Some(pieces) if pieces.len() == job.count as usize => {
                    let Job {
                        deliver,
                        cancelled,
                        cancel_kills,
                        entry,
                        attempts,
                        ..
                    } = job;
                    deliver.disarm();
                    plan.requeue
                        .extend(pieces.into_iter().map(|(frame, deliver)| Job {
                            frame,
                            count: 1,
                            deliver,
                            cancelled: cancelled.clone(),
                            cancel_kills,
                            entry,
                            attempts,
                            bounces: 0,
                            split: None,
                        }));
                }
                _ => plan.settle.push((job, error.clone())),
            }
        } else if matches!(error, Error::WorkerDied { .. }) && job.attempts < retries {
            job.attempts += 1;
            plan.requeue.push(job);
        } else {
            plan.settle.push((job, error.clone()));
        }
    }
    plan.requeue.extend(sent.into_iter().map(|s| s.job));
    plan
}
