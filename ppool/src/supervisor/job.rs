//! Jobs as the supervisor moves them: a finished TASKS frame and the handler its outcome goes
//! to, and a job sent to a worker, waiting for its results.

use crate::error::Error;
use crate::protocol::Results;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a job's `deliver` receives: the results frame and the worker index, or the error that
/// ended every task of the job.
pub(crate) type Delivery<'a> = Result<(Results<'a>, usize), Error>;

/// Where a job's outcome goes: called once, on whichever thread drove the job.
///
/// A `Deliver` dropped without being called (a job forgotten on some path) delivers
/// [`Error::Closed`] as it goes, so that nobody waits forever for a result that will not come;
/// dropped by a pool thread that panicked (a bug in ppool), [`Error::Internal`].
/// A handler that panics is caught: it loses its own result, never the thread that called it.
pub(crate) struct Deliver(Option<Handler>);

/// What a [`Deliver`] calls.
type Handler = Box<dyn FnOnce(Delivery<'_>) + Send>;

impl Deliver {
    pub(crate) fn new(handler: impl FnOnce(Delivery<'_>) + Send + 'static) -> Self {
        Deliver(Some(Box::new(handler)))
    }

    /// Drops the handler without calling it: its job was replaced by others that deliver
    /// in its place.
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }

    /// Hands the outcome to the handler.
    pub(crate) fn send(mut self, delivery: Delivery<'_>) {
        if let Some(handler) = self.0.take() {
            call_handler(handler, delivery);
        }
    }
}

fn call_handler(handler: Handler, delivery: Delivery<'_>) {
    let run = std::panic::AssertUnwindSafe(move || handler(delivery));
    if std::panic::catch_unwind(run).is_err() {
        tracing::error!("a task's result handler panicked; its result is lost");
    }
}

impl Drop for Deliver {
    fn drop(&mut self) {
        if let Some(handler) = self.0.take() {
            let error = if std::thread::panicking() {
                Error::internal("the pool thread that drove this task panicked")
            } else {
                Error::Closed
            };
            call_handler(handler, Err(error));
        }
    }
}

impl std::fmt::Debug for Deliver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Deliver(pending)"
        } else {
            "Deliver(done)"
        })
    }
}

/// Splits a job of several tasks, given its TASKS frame, into one `(frame, deliver)` per task,
/// in order; used when its worker failed under it and the culprit must be found.
pub(crate) type Split = Box<dyn FnOnce(&[u8]) -> Vec<(Vec<u8>, Deliver)> + Send>;

/// A finished TASKS frame and where its results go.
pub(crate) struct Job {
    pub(crate) frame: Vec<u8>,
    pub(crate) count: u32,
    pub(crate) deliver: Deliver,
    /// Set when nobody wants the results any more (a dropped stream, a cancelled task).
    pub(crate) cancelled: Option<Arc<AtomicBool>>,
    /// A cancel while the job runs kills its worker (a cancelled `Task`); else a cancelled job
    /// is only skipped if it has not started (a dropped stream).
    pub(crate) cancel_kills: bool,
    /// Another entry than the pool's own (a view from `entry::<G>()`): its index in the entry
    /// table, stamped into the frame as it is sent, and its name, for errors.
    pub(crate) entry: Option<(u32, &'static str)>,
    pub(crate) attempts: u32,
    /// Times the job found its worker already dead when it was sent.
    pub(crate) bounces: u32,
    /// For a job of several tasks: how to run them one by one instead.
    pub(crate) split: Option<Split>,
    /// The shared values its arguments name: kept alive while it is queued or running, and
    /// sent to a remote host that lacks them before it.
    pub(crate) needs: Vec<Arc<crate::share::Stored>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("count", &self.count)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl Job {
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// A job written to a worker, waiting for its results.
#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) job: Job,
    /// The id stamped into its frame, which its results must carry.
    pub(crate) id: u64,
}
