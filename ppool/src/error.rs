//! The one error type of ppool.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A `Result` whose error is [`ppool::Error`](Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong with a pool or one of its tasks.
///
/// A failed task fails that task only: the pool goes on with the others. Every variant
/// displays as one line a person can act on.
///
/// ```
/// # use ppool::Error;
/// fn describe(e: &Error) -> &'static str {
///     match e {
///         Error::Panicked { .. } => "the entry panicked",
///         Error::WorkerDied { .. } => "the worker process died",
///         Error::Timeout { .. } => "the task ran too long",
///         _ => "something else",
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The entry panicked. The worker caught the panic and goes on serving.
    #[error(
        "entry `{entry}` panicked on worker {worker}: {}{}",
        one_line(message),
        at(location)
    )]
    #[non_exhaustive]
    Panicked {
        /// The entry's name.
        entry: String,
        /// The index of the worker that ran it.
        worker: usize,
        /// The panic message.
        message: String,
        /// Where it panicked, as `file:line:column`, when known.
        location: Option<String>,
        /// The worker's backtrace, as text, when `RUST_BACKTRACE` or `RUST_LIB_BACKTRACE`
        /// asked for one in the workers' environment.
        backtrace: Option<String>,
    },

    /// The worker process ended while it held the task (abort, signal, `exit`, OOM kill).
    /// The worker has been replaced.
    #[error("worker {worker} (pid {pid}) died running entry `{entry}`: {cause}")]
    #[non_exhaustive]
    WorkerDied {
        /// The entry's name.
        entry: String,
        /// The index of the worker.
        worker: usize,
        /// The worker's process id.
        pid: u32,
        /// How it ended.
        cause: ExitCause,
    },

    /// The task ran longer than the pool's `task_timeout`; its worker was killed and replaced.
    #[error(
        "entry `{entry}` ran past its {timeout:?} timeout on worker {worker} (pid {pid}); the worker was killed and replaced"
    )]
    #[non_exhaustive]
    Timeout {
        /// The entry's name.
        entry: String,
        /// The index of the worker.
        worker: usize,
        /// The worker's process id.
        pid: u32,
        /// The timeout that was exceeded.
        timeout: Duration,
    },

    /// The worker's memory grew past the pool's `worker_memory_limit`; it was killed and
    /// replaced.
    #[error(
        "entry `{entry}` hit the memory limit of {limit} bytes on worker {worker} (pid {pid}, {rss} bytes resident); the worker was killed and replaced"
    )]
    #[non_exhaustive]
    MemoryLimit {
        /// The entry's name.
        entry: String,
        /// The index of the worker.
        worker: usize,
        /// The worker's process id.
        pid: u32,
        /// The limit, in bytes.
        limit: u64,
        /// The resident memory seen when it was killed, in bytes.
        rss: u64,
    },

    /// The pool was shut down (or the stream dropped) before the task could run.
    #[error("the pool was shut down before the task could run")]
    Closed,

    /// The task's result was already handed out (by an earlier `wait_timeout`); a result is
    /// handed out once.
    #[error("the task's result was already handed out")]
    AlreadyTaken,

    /// The task was cancelled with [`Task::cancel`](crate::Task::cancel): it never ran, or
    /// its worker was killed (and replaced) while it ran.
    #[error("the task was cancelled")]
    Cancelled,

    /// [`join_timeout`](crate::ProcessPool::join_timeout) ran out before the pool had stopped:
    /// tasks were still queued or running, workers still stopping (their exit hooks), or
    /// `call_with` callbacks still running. The pool goes on with them, and refuses new
    /// tasks; `join()` waits for the rest, `shutdown()` stops now.
    #[error("{}", join_timeout(*timeout, *unfinished, *callbacks))]
    #[non_exhaustive]
    JoinTimeout {
        /// The time that ran out.
        timeout: Duration,
        /// The tasks still queued or running then.
        unfinished: u64,
        /// True when only `call_with` callbacks were left running.
        callbacks: bool,
    },

    /// The pool was built with `start(false)` and [`start`](crate::ProcessPool::start) has not
    /// been called yet.
    #[error(
        "the pool has not been started: it was built with `start(false)`; call `start()` first"
    )]
    NotStarted,

    /// A builder setting is not allowed.
    #[error("invalid pool setting `{setting}`: {}", one_line(message))]
    #[non_exhaustive]
    InvalidConfig {
        /// The setting, as named on the builder.
        setting: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },

    /// A worker could not be started, or its initializer failed.
    #[error("could not start a worker: {}", one_line(message))]
    #[non_exhaustive]
    Spawn {
        /// What went wrong.
        message: String,
        /// The system's error beneath, when there is one (an [`std::io::Error`] from starting
        /// a process, mapping memory or reaching a host); also [`source`](std::error::Error::source).
        #[source]
        source: Option<Cause>,
    },

    /// A value could not be shared (`share`, `share_bytes`): its `Serialize` failed, there is
    /// not enough memory for it, or memfds are refused here; or it belongs to another pool.
    #[error("could not share a value: {}", one_line(message))]
    #[non_exhaustive]
    Share {
        /// What went wrong.
        message: String,
        /// The system's error beneath, when there is one; also
        /// [`source`](std::error::Error::source).
        #[source]
        source: Option<Cause>,
    },

    /// A frame from a worker was malformed, oversized or of another build. The worker has been
    /// replaced.
    #[error("protocol error with worker {worker}: {}", one_line(message))]
    #[non_exhaustive]
    Protocol {
        /// The index of the worker.
        worker: usize,
        /// What was wrong with the frame.
        message: String,
    },

    /// A task's arguments or result could not be serialized or deserialized.
    #[error("could not {action} for entry `{entry}`: {}", one_line(message))]
    #[non_exhaustive]
    Codec {
        /// The entry's name.
        entry: String,
        /// What was being done, such as `encode the arguments`.
        action: &'static str,
        /// The serializer's message.
        message: String,
    },

    /// A task's arguments need a frame larger than the pool's `max_frame_size`, so no worker
    /// can be sent them. No worker was involved; the pool goes on.
    #[error(
        "a task for entry `{entry}` needs a frame of {size} bytes (its encoded arguments and an 18-byte header), more than the pool's max_frame_size of {limit} bytes"
    )]
    #[non_exhaustive]
    ArgumentsTooLarge {
        /// The entry's name.
        entry: String,
        /// The frame the task needs, in bytes.
        size: usize,
        /// The pool's `max_frame_size`.
        limit: usize,
    },

    /// No entry of this binary has this name: a worker was asked for an entry that its build
    /// does not have.
    #[error("no pool entry named `{name}` in this binary")]
    #[non_exhaustive]
    UnknownEntry {
        /// The name asked for.
        name: String,
    },

    /// Something ppool itself got wrong: an invariant of the pool did not hold (a bug in
    /// ppool, to be reported). The task, or the start-up, that met it fails with this error;
    /// the pool goes on (a worker involved was killed and replaced).
    #[error(
        "internal error in ppool (a bug; please report it): {}",
        one_line(what)
    )]
    #[non_exhaustive]
    Internal {
        /// What went wrong.
        what: String,
    },

    /// Two entries of this binary have the same name, so neither can be used safely.
    #[error("two pool entries are named `{name}`: one at {first}, one at {second}; rename one")]
    #[non_exhaustive]
    DuplicateEntry {
        /// The shared name.
        name: String,
        /// Where the first is defined (`file:line`).
        first: String,
        /// Where the second is defined (`file:line`).
        second: String,
    },
}

/// A text of the user's (a panic message, a serde error) on one line: each line break is
/// written as `\n`, so that an error displays as one line; the field keeps the text as it is.
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(['\n', '\r']) {
        text.replace("\r\n", "\\n")
            .replace(['\n', '\r'], "\\n")
            .into()
    } else {
        text.into()
    }
}

fn join_timeout(timeout: Duration, unfinished: u64, callbacks: bool) -> String {
    let what = match (unfinished, callbacks) {
        (_, true) => "its callbacks did not finish".to_string(),
        (0, false) => "its workers did not stop".to_string(),
        (1, false) => "1 task did not finish".to_string(),
        (n, false) => format!("{n} tasks did not finish"),
    };
    format!(
        "the pool did not stop within {timeout:?}: {what}; it goes on with them (join() waits for the rest, shutdown() stops now)"
    )
}

fn at(location: &Option<String>) -> String {
    location
        .as_ref()
        .map(|l| format!(" (at {l})"))
        .unwrap_or_default()
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum ExitCause {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// It closed its channel, and its exit status is not known.
    Unknown,
    /// Its host stopped answering (remote workers), so how it ended is not known.
    Lost,
}

impl ExitCause {
    /// Reads an [`ExitStatus`](std::process::ExitStatus).
    pub(crate) fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitCause::Code(code),
            (None, Some(signal)) => ExitCause::Signal(signal),
            (None, None) => ExitCause::Unknown,
        }
    }
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitCause::Code(code) => write!(f, "exit code {code}"),
            ExitCause::Signal(signal) => match signal_name(signal) {
                Some(name) => write!(f, "killed by signal {signal} ({name})"),
                None => write!(f, "killed by signal {signal}"),
            },
            ExitCause::Unknown => f.write_str("it closed its channel"),
            ExitCause::Lost => f.write_str("its host stopped answering"),
        }
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return None,
    })
}

/// The error beneath a ppool [`Error`], shared so that `Error` stays `Clone`.
///
/// It dereferences to the error itself, so [`source`](std::error::Error::source) hands out
/// that error and `downcast_ref` finds its type:
///
/// ```
/// # use std::error::Error as _;
/// # fn check(e: &ppool::Error) {
/// if let Some(io) = e.source().and_then(|s| s.downcast_ref::<std::io::Error>()) {
///     eprintln!("the system said: {io} ({:?})", io.kind());
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    pub(crate) fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Cause(Arc::new(error))
    }
}

impl std::ops::Deref for Cause {
    type Target = dyn std::error::Error + Send + Sync + 'static;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

/// Two causes are equal when they say the same (an error beneath has no `PartialEq` of its
/// own).
impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl Eq for Cause {}

impl Error {
    pub(crate) fn spawn(message: impl Into<String>) -> Self {
        Error::Spawn {
            message: message.into(),
            source: None,
        }
    }

    /// A failure to start a worker, with the system's error beneath it.
    pub(crate) fn spawn_io(message: impl Into<String>, error: std::io::Error) -> Self {
        Error::Spawn {
            message: message.into(),
            source: Some(Cause::new(error)),
        }
    }

    /// A value that could not be shared.
    pub(crate) fn share(error: crate::share::ShareError) -> Self {
        let message = error.to_string();
        match error {
            crate::share::ShareError::Store { source, .. } => Error::Share {
                message,
                source: Some(Cause::new(source)),
            },
            _ => Error::Share {
                message,
                source: None,
            },
        }
    }

    /// A broken invariant of ppool itself (see [`Error::Internal`]).
    pub(crate) fn internal(what: impl Into<String>) -> Self {
        Error::Internal { what: what.into() }
    }

    pub(crate) fn config(setting: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidConfig {
            setting,
            message: message.into(),
        }
    }

    /// True for the failures that say a worker process was lost (died, timed out, hit its
    /// memory limit or broke the protocol), as opposed to a failure of the task itself.
    pub fn is_worker_failure(&self) -> bool {
        matches!(
            self,
            Error::WorkerDied { .. }
                | Error::Timeout { .. }
                | Error::MemoryLimit { .. }
                | Error::Protocol { .. }
        )
    }
}

/// The message of a panic payload: its `&str` or `String`, or a note that it had none.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn source_hands_out_the_io_error_itself() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no entry");
        let e = Error::spawn_io("cannot start worker 0: no entry", io);
        let source = e.source().expect("a source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(e.clone(), e, "Error stays Clone and Eq");
        assert!(Error::spawn("no cause").source().is_none());
    }

    #[test]
    fn every_error_displays_as_one_line() {
        let panicked = Error::Panicked {
            entry: "app::f".into(),
            worker: 1,
            message: "boom\nsecond line\r\nthird".into(),
            location: Some("src/main.rs:3:5".into()),
            backtrace: None,
        };
        let text = panicked.to_string();
        assert!(!text.contains(['\n', '\r']), "{text}");
        assert!(text.contains("boom\\nsecond line\\nthird"), "{text}");
        let codec = Error::Codec {
            entry: "app::f".into(),
            action: "decode the result",
            message: "my text\nwith a newline".into(),
        };
        assert_eq!(
            codec.to_string(),
            "could not decode the result for entry `app::f`: my text\\nwith a newline"
        );
        assert!(!Error::spawn("a\nb").to_string().contains('\n'));
        let internal = Error::internal("a slot held\ntwo workers");
        assert_eq!(
            internal.to_string(),
            "internal error in ppool (a bug; please report it): a slot held\\ntwo workers"
        );
        assert!(!internal.is_worker_failure());
        if let Error::Panicked { message, .. } = panicked {
            assert_eq!(
                message, "boom\nsecond line\r\nthird",
                "the field keeps the text"
            );
        }
    }
}
