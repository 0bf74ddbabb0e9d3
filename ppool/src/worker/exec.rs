//! Running tasks inside a worker: the entry, its panics caught and recorded as data, its
//! results appended to a RESULTS frame; the initializer and the worker-exit hook. Shared by
//! worker processes and the in-process (debug) transport.
//!
//! # Unsafe code
//! A fork handler installed with `pthread_atfork`, which only stores to an atomic (what may run
//! in the child of a `fork`), and `_exit` in a forked child that came back from an entry, so
//! that it runs none of the exit handlers and flushes none of the buffers its parent owns.

use crate::entry::{self, CodecFailure, EntryRecord};
use crate::protocol::{self, FrameBuf, FrameError, Outcome, ResultsHeader, Tasks};
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

/// Tasks are timed one by one (for insights) once one of them took this long.
const TIME_EACH_ABOVE: Duration = Duration::from_micros(20);

/// Set in a child that an entry `fork()`ed (by the `pthread_atfork` handler that
/// [`watch_forks`] installs): such a child shares the worker's channel, and must never answer
/// on it, nor run the rest of the worker's tasks.
static FORKED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_fork_in_child() {
    FORKED.store(true, Ordering::Relaxed);
}

/// In a worker process: marks any child that an entry forks, so that it ends quietly if it
/// ever returns into the worker's loop instead of serving as a second worker on the same
/// channel.
pub(crate) fn watch_forks() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe, as a handler
    // that runs in the child of a `fork` must be.
    unsafe { libc::pthread_atfork(None, None, Some(on_fork_in_child)) };
}

/// Ends a forked child that came back from an entry: the worker it was forked from goes on.
pub(crate) fn exit_if_forked() {
    if FORKED.load(Ordering::Relaxed) {
        // SAFETY: `_exit` ends the process at once, without running this process's exit
        // handlers or flushing buffers that the parent worker owns too.
        unsafe { libc::_exit(0) };
    }
}

/// Who this worker process is, for [`worker_index`](crate::worker_index).
#[derive(Debug)]
pub(crate) struct WorkerInfo {
    pub(crate) index: usize,
    pub(crate) pool: String,
}

pub(crate) static WORKER: OnceLock<WorkerInfo> = OnceLock::new();

thread_local! {
    /// The worker a debug-mode task runs as, on the thread that runs it.
    static IN_PROCESS: Cell<Option<(usize, &'static str)>> = const { Cell::new(None) };
}

/// The index and pool name of the worker this code runs in: this process, or the debug-mode
/// worker whose task this thread is running.
pub(crate) fn current() -> Option<(usize, &'static str)> {
    IN_PROCESS
        .with(Cell::get)
        .or_else(|| WORKER.get().map(|w| (w.index, w.pool.as_str())))
}

/// Runs `f` as a task of the in-process worker `index` of pool `pool`.
pub(crate) fn as_in_process<R>(index: usize, pool: &'static str, f: impl FnOnce() -> R) -> R {
    let outer = IN_PROCESS.with(|c| c.replace(Some((index, pool))));
    let result = f();
    IN_PROCESS.with(|c| c.set(outer));
    result
}

thread_local! {
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<TaskPanic>> = const { RefCell::new(None) };
}

/// A task's panic, as the hook saw it.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskPanic {
    pub(crate) message: String,
    pub(crate) location: String,
    /// Empty unless a backtrace was asked for.
    pub(crate) backtrace: String,
}

/// Whether the environment asks for backtraces (`RUST_LIB_BACKTRACE` first, as std reads it).
fn backtraces_wanted() -> bool {
    let wants = |v: std::ffi::OsString| v != "0";
    match std::env::var_os("RUST_LIB_BACKTRACE") {
        Some(v) => wants(v),
        None => std::env::var_os("RUST_BACKTRACE").is_some_and(wants),
    }
}

/// Records the panics of tasks as data (the supervisor reports them, with a backtrace when
/// `RUST_BACKTRACE` or `RUST_LIB_BACKTRACE` asks for one) instead of printing them, unless
/// `RUST_BACKTRACE` is set. Other panics go to the previous hook.
pub(crate) fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let print = std::env::var_os("RUST_BACKTRACE").is_some();
        let trace = backtraces_wanted();
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !IN_TASK.with(Cell::get) {
                return previous(info);
            }
            let message = crate::error::panic_message(info.payload());
            let location = info.location().map(|l| l.to_string()).unwrap_or_default();
            let backtrace = if trace {
                std::backtrace::Backtrace::force_capture().to_string()
            } else {
                String::new()
            };
            LAST_PANIC.with(|p| {
                *p.borrow_mut() = Some(TaskPanic {
                    message,
                    location,
                    backtrace,
                })
            });
            if print {
                previous(info);
            }
        }));
    });
}

/// Runs `f` as a task: its panic is caught and recorded.
fn catch_task<R>(f: impl FnOnce() -> R) -> Result<R, TaskPanic> {
    IN_TASK.with(|t| t.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    IN_TASK.with(|t| t.set(false));
    result.map_err(|payload| {
        LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| TaskPanic {
                message: crate::error::panic_message(payload.as_ref()),
                ..TaskPanic::default()
            })
    })
}

/// What becomes of a finished task's outcome, as a [`Publish`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Published {
    /// It stays in the RESULTS frame being built.
    Kept,
    /// It went out on its own: take it out of the frame.
    Taken,
    /// The frame so far, this outcome included, went out as a partial RESULTS frame: start
    /// the next one.
    Flushed,
}

/// How a worker's channel hears of each task of a job as it starts and ends, so that should
/// the worker die, the supervisor can tell which tasks finished (their results are kept),
/// which one was running (it fails) and which never started (they run elsewhere).
pub(crate) trait Publish {
    /// Task `index` of `job` starts.
    fn started(&mut self, job: u64, index: u32);

    /// Task `index` of `job` finished; `out` holds the RESULTS frame being built, with this
    /// task's outcome at `out[at..]` and `in_frame` outcomes in all (this one included).
    fn finished(
        &mut self,
        job: u64,
        index: u32,
        out: &mut FrameBuf,
        at: usize,
        in_frame: u32,
    ) -> Published;
}

/// A channel that keeps every outcome in the job's one RESULTS frame (debug mode, where a
/// worker cannot die apart from its supervisor).
#[derive(Debug)]
pub(crate) struct KeepAll;

impl Publish for KeepAll {
    fn started(&mut self, _: u64, _: u32) {}

    fn finished(&mut self, _: u64, _: u32, _: &mut FrameBuf, _: usize, _: u32) -> Published {
        Published::Kept
    }
}

/// Runs the tasks of a TASKS body and builds the RESULTS frame in `out`, telling `publish`
/// of each task as it starts and ends.
pub(crate) fn run_tasks(
    record: &EntryRecord,
    mut tasks: Tasks<'_>,
    out: &mut FrameBuf,
    max_frame: usize,
    publish: &mut dyn Publish,
) -> Result<(), FrameError> {
    let started = Instant::now();
    ResultsHeader::run(tasks.job, 0).start(out);
    let mut in_frame = 0u32;
    // Reading the clock costs about as much as a tiny task: time each task only while they
    // are long enough for it to matter, and the rest of a chunk of tiny ones as a whole.
    let (mut last, mut longest) = (started, Duration::ZERO);
    let mut timed = 0;
    for index in 0..tasks.count {
        let args = tasks.next_args()?;
        publish.started(tasks.job, index);
        let at = out.len();
        run_one(record, args, out, max_frame);
        exit_if_forked();
        in_frame += 1;
        match publish.finished(tasks.job, index, out, at, in_frame) {
            Published::Kept => {}
            Published::Taken => {
                out.truncate(at);
                in_frame -= 1;
            }
            Published::Flushed => {
                ResultsHeader::run(tasks.job, 0).start(out);
                in_frame = 0;
            }
        }
        if timed < 2 || longest >= TIME_EACH_ABOVE {
            let now = Instant::now();
            longest = longest.max(now - last);
            last = now;
            timed += 1;
        }
    }
    let now = if timed == tasks.count {
        last
    } else {
        Instant::now()
    };
    let untimed = tasks.count - timed;
    if untimed > 0 {
        // The tasks not timed one by one: their mean stands in for their longest.
        longest = longest.max((now - last) / untimed);
    }
    let end = ResultsHeader {
        job: tasks.job,
        count: in_frame,
        busy_nanos: (now - started).as_nanos() as u64,
        max_task_nanos: longest.as_nanos() as u64,
        more: false,
    };
    end.store(out.body_mut());
    Ok(())
}

/// Runs one task and appends its outcome.
pub(crate) fn run_one(record: &EntryRecord, args: &[u8], out: &mut FrameBuf, max: usize) {
    let at = out.len();
    crate::trace::capture::task_starts(record.name);
    match catch_task(|| Outcome::write_ok(out, |value| (record.run)(args, value))) {
        Ok(Ok(())) => {
            // A result the channel cannot carry, even in a frame of its own, fails alone.
            if ResultsHeader::LEN + (out.len() - at) > max {
                let size = out.len() - at;
                out.truncate(at);
                let message = format!(
                    "the result is {size} bytes, more than the pool's max_frame_size of {max}"
                );
                Outcome::write_codec(out, "encode the result", &message);
            }
        }
        Ok(Err(CodecFailure { action, message })) => Outcome::write_codec(out, action, &message),
        Err(panic) => {
            out.truncate(at);
            Outcome::write_panicked_with(out, &panic.message, &panic.location, &panic.backtrace);
        }
    }
}

/// Runs the initializer named in an INIT frame and prepares INIT_DONE.
pub(crate) fn run_init(body: &[u8], out: &mut FrameBuf) {
    let failure = init_failure(body);
    protocol::write_init_done(out, failure.as_deref());
}

/// Runs the initializer of an INIT body; `Some(why)` if it failed.
pub(crate) fn init_failure(body: &[u8]) -> Option<String> {
    let mut fields = protocol::Fields::new(body);
    let parsed = (|| {
        fields.u8("kind")?;
        let name = fields.str("initializer name")?;
        let args = fields.bytes("initializer arguments")?;
        fields.end()?;
        Ok::<_, FrameError>((name, args))
    })();
    let (name, args) = match parsed {
        Ok(p) => p,
        Err(e) => return Some(e.to_string()),
    };
    let record = match entry::find(name) {
        Ok(r) => r,
        Err(e) => return Some(e.to_string()),
    };
    match catch_task(|| (record.init)(args)) {
        Ok(Ok(None)) => None,
        Ok(Ok(Some(error))) => Some(format!("initializer `{name}` returned an error: {error}")),
        Ok(Err(CodecFailure { action, message })) => Some(format!(
            "initializer `{name}` could not {action}: {message}"
        )),
        Err(TaskPanic {
            message, location, ..
        }) => {
            let at = if location.is_empty() {
                String::new()
            } else {
                format!(" at {location}")
            };
            Some(format!("initializer `{name}` panicked{at}: {message}"))
        }
    }
}
