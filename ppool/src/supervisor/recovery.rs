//! What to do when a worker fails, as pure functions: [`classify`] says what error the failure
//! is, and [`fate`] and [`plan_rest`] say what becomes of the jobs the worker held. The driver
//! gathers the facts (the watchdog's verdict, the exit status, the results that came, how far
//! the worker got as its link tells) and applies the plan.
//!
//! The rule users rely on: with `retries(0)`, a task that has started never starts again.
//! For the jobs a failed worker held, in the order they were sent:
//! - the pool is closing: every task without a result ends with `Error::Closed`;
//! - the worker started none of the first job's tasks (it died idle, or nothing reached it;
//!   a link that sees the job was never taken from the channel says so whatever the worker
//!   wrote about its progress, so this never depends on the entry's good manners): the job is
//!   *bounced*, queued again at the front with no blame, up to [`MAX_BOUNCES`] times;
//! - otherwise, of the first job: the results that came are delivered; the tasks that started
//!   and did not finish (the one that was running; where the link cannot tell which started,
//!   every task without a result) end with the error, or, if the worker died and the job has
//!   retries left, run again with one attempt more; the tasks that never started are queued
//!   again, unblamed;
//! - the jobs after the first never started (a worker runs its jobs in order, and each job's
//!   answer goes out before the next starts): they are queued again, in order, unblamed;
//!   unless the link lost what was in flight (a lost host), when the first job's answer may
//!   have been on its way: then they may have started, and are treated as its tasks are.

use super::job::{Job, Sent};
use crate::error::{Error, ExitCause};
use crate::protocol::FrameError;
use crate::supervisor::watchdog::Verdict;
use crate::transport::Started;
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

/// What the link told of the first job a failed worker held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HeadFacts {
    /// Its tasks.
    pub(super) count: u32,
    /// Results that came for it (its first tasks, in order).
    pub(super) kept: u32,
    /// How far the worker got into it.
    pub(super) started: Started,
    pub(super) attempts: u32,
    pub(super) bounces: u32,
}

/// What becomes of the first job a failed worker held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    /// Queued again whole, at the front, one bounce more.
    Bounce,
    /// Cut: tasks `..kept` are delivered their results; tasks `kept..ran` started without
    /// finishing and end with the error, or run again with one attempt more if `retry`; tasks
    /// `ran..` never started and are queued again.
    Cut { kept: u32, ran: u32, retry: bool },
}

/// The fate of the first job (see the module docs).
pub(super) fn fate(head: HeadFacts, error: &Error, closed: bool, retries: u32) -> Fate {
    let HeadFacts {
        count,
        started,
        attempts,
        bounces,
        ..
    } = head;
    let kept = head.kept.min(count);
    if closed {
        return Fate::Cut {
            kept,
            ran: count,
            retry: false,
        };
    }
    let ran = match started {
        Started::None => kept,
        Started::Upto(n) => n.clamp(kept, count),
        Started::Unknown | Started::Lost => count,
    };
    if kept == 0 && ran == 0 {
        if bounces < MAX_BOUNCES {
            return Fate::Bounce;
        }
        // It keeps finding its worker dead: it fails, lest it go round for ever.
        return Fate::Cut {
            kept: 0,
            ran: count,
            retry: false,
        };
    }
    let retry = matches!(error, Error::WorkerDied { .. }) && attempts < retries;
    Fate::Cut { kept, ran, retry }
}

/// What becomes of the jobs a failed worker held, apart from the first one's tasks.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// To queue again at the front, in this order.
    pub(super) requeue: Vec<Job>,
    /// To end with these errors.
    pub(super) settle: Vec<(Job, Error)>,
}

/// The plan for the jobs sent after the first one: they never started, unless the link
/// lost what was in flight (`started` is [`Started::Lost`]): then they may have, and each
/// ends with `error` or, if the worker died and it has retries left, runs again.
pub(super) fn plan_rest(
    rest: VecDeque<Sent>,
    closed: bool,
    started: Started,
    error: &Error,
    retries: u32,
) -> Plan {
    let mut plan = Plan::default();
    for Sent { mut job, .. } in rest {
        if closed {
            plan.settle.push((job, Error::Closed));
        } else if started != Started::Lost {
            plan.requeue.push(job);
        } else if matches!(error, Error::WorkerDied { .. }) && job.attempts < retries {
            job.attempts += 1;
            plan.requeue.push(job);
        } else {
            plan.settle.push((job, error.clone()));
        }
    }
    plan
}
