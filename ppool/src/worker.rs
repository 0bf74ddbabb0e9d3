//! The worker side: check the channel the pool set up, answer the handshake, then run tasks
//! until told to stop or until the supervisor goes away.

use crate::entry::{self, CodecFailure, EntryRecord};
use crate::launch::CHANNEL_ENV;
use crate::protocol::{
    self, FrameBuf, FrameError, FrameReader, Hello, Outcome, Ready, Tasks, kind,
};
use std::cell::{Cell, RefCell};
use std::io::{PipeReader, PipeWriter, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

/// The largest frame accepted before a pool's greeting: enough for any HELLO.
const GREETING_MAX: usize = 64 * 1024;
/// How long a worker waits for its supervisor's greeting before it gives up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a worker checks that its supervisor is still alive.
const PARENT_POLL: Duration = Duration::from_millis(100);
/// Tasks are timed one by one (for insights) once one of them took this long.
const TIME_EACH_ABOVE: Duration = Duration::from_micros(20);

/// How long a worker spins for the next task after a job whose caller asked for it.
const SPIN: Duration = Duration::from_micros(50);

/// Exit code of a worker started by hand or that could not talk to its supervisor.
const EXIT_NO_CHANNEL: i32 = 2;

/// Who this worker is, for [`worker_index`](crate::worker_index).
#[derive(Debug)]
pub(crate) struct WorkerInfo {
    pub(crate) index: usize,
    pub(crate) pool: String,
}

pub(crate) static WORKER: OnceLock<WorkerInfo> = OnceLock::new();

/// The descriptors of this worker's channel, for tests that corrupt it on purpose.
static CHANNEL_FDS: OnceLock<(RawFd, RawFd)> = OnceLock::new();

/// The read and write descriptors of this worker's channel, when this process is a worker.
#[doc(hidden)]
pub fn channel_fds() -> Option<(RawFd, RawFd)> {
    CHANNEL_FDS.get().copied()
}

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

/// Serves as a worker; never returns.
pub(crate) fn enter() -> ! {
    // A supervisor that went away is an `EPIPE` on the next write, never a signal.
    // SAFETY: sets the disposition of SIGPIPE to "ignore"; no handler code is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let (input, output, max_frame) = match channel_from_env() {
        Ok(channel) => channel,
        Err(why) => hand_started(&why),
    };
    serve(input, output, max_frame)
}

fn hand_started(why: &str) -> ! {
    eprintln!(
        "error: this is the command line of a ppool worker, which only a ProcessPool can start \
         ({why}). Run the program without `{}` to use it normally.",
        crate::launch::WORKER_ARG
    );
    std::process::exit(EXIT_NO_CHANNEL)
}

/// Reads `PPOOL_WORKER_CHANNEL=<read fd>,<write fd>,<max frame>` and checks that both
/// descriptors are open pipes: argv alone does not make a worker.
fn channel_from_env() -> Result<(PipeReader, PipeWriter, usize), String> {
    let value = std::env::var(CHANNEL_ENV).map_err(|_| format!("{CHANNEL_ENV} is not set"))?;
    // The channel is this process's alone: programs that an entry starts must not take
    // themselves for workers.
    // SAFETY: this runs first thing in `main` (or in the worker test of a test binary),
    // before this process starts any thread that could read the environment at the same time.
    unsafe { std::env::remove_var(CHANNEL_ENV) };
    let mut parts = value.split(',');
    let mut next = |what: &str| -> Result<u64, String> {
        parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("{CHANNEL_ENV} has no valid {what}"))
    };
    let read_fd = next("read descriptor")? as RawFd;
    let write_fd = next("write descriptor")? as RawFd;
    let max_frame = next("frame limit")? as usize;
    let input = owned_pipe(read_fd)?;
    let output = owned_pipe(write_fd)?;
    let _ = CHANNEL_FDS.set((read_fd, write_fd));
    Ok((PipeReader::from(input), PipeWriter::from(output), max_frame))
}

fn owned_pipe(fd: RawFd) -> Result<OwnedFd, String> {
    if fd < 3 {
        return Err(format!(
            "descriptor {fd} is a standard stream, not a channel"
        ));
    }
    // SAFETY: `fd` is only borrowed for the `fstat` call; an invalid number makes it fail.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let stat =
        rustix::fs::fstat(borrowed).map_err(|e| format!("descriptor {fd} is not open: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Fifo {
        return Err(format!("descriptor {fd} is not a pipe"));
    }
    // Processes this worker starts must not inherit its channel: a copy would keep it open
    // after the worker died, and hide the death from the pool.
    rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| format!("descriptor {fd}: {e}"))?;
    // SAFETY: the descriptor is open (fstat succeeded), was inherited for this purpose, and
    // nothing else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

thread_local! {
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// Records the panics of tasks as data (the supervisor reports them) instead of printing them,
/// unless `RUST_BACKTRACE` is set. Other panics go to the previous hook.
pub(crate) fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let print = std::env::var_os("RUST_BACKTRACE").is_some();
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !IN_TASK.with(Cell::get) {
                return previous(info);
            }
            let message = crate::panics::message(info.payload());
            let location = info.location().map(|l| l.to_string()).unwrap_or_default();
            LAST_PANIC.with(|p| *p.borrow_mut() = Some((message, location)));
            if print {
                previous(info);
            }
        }));
    });
}

/// Runs `f` as a task: its panic is caught and recorded.
fn catch_task<R>(f: impl FnOnce() -> R) -> Result<R, (String, String)> {
    IN_TASK.with(|t| t.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    IN_TASK.with(|t| t.set(false));
    result.map_err(|payload| {
        LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| (crate::panics::message(payload.as_ref()), String::new()))
    })
}

/// Watches, on its own thread, that the handshake comes in time and that the supervisor lives.
fn spawn_guard(greeted: &'static AtomicBool) {
    let parent = rustix::process::getppid();
    let started = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("ppool-guard".into())
        .spawn(move || {
            loop {
                std::thread::sleep(PARENT_POLL);
                if rustix::process::getppid() != parent {
                    // The supervisor is gone: nobody wants our results.
                    std::process::exit(0);
                }
                if !greeted.load(Ordering::Acquire) && started.elapsed() > HANDSHAKE_TIMEOUT {
                    hand_started("no pool greeted it on its channel");
                }
            }
        });
    if spawned.is_err() {
        eprintln!("ppool worker: cannot start its guard thread");
        std::process::exit(EXIT_NO_CHANNEL);
    }
}

fn serve(input: PipeReader, mut output: PipeWriter, max_frame: usize) -> ! {
    static GREETED: AtomicBool = AtomicBool::new(false);
    spawn_guard(&GREETED);
    // Until a pool has greeted it, the channel may be anything: a frame may not claim more
    // than a greeting needs.
    let mut reader = FrameReader::new(input, GREETING_MAX.min(max_frame));
    let mut body = Vec::new();
    let mut out = FrameBuf::default();

    let record = match handshake(&mut reader, &mut body, &mut out) {
        Ok(record) => record,
        Err(why) => {
            Ready::Refused(&why).write(&mut out);
            let _ = output.write_all(out.finish());
            hand_started(&why)
        }
    };
    GREETED.store(true, Ordering::Release);
    reader.set_max(max_frame);
    if output.write_all(out.finish()).is_err() {
        std::process::exit(0);
    }
    install_panic_hook();
    let mut on_exit: Option<(&'static EntryRecord, Vec<u8>)> = None;
    // The pool asks for a spin only when a CPU is free for it.
    let mut spin = false;

    loop {
        if spin {
            reader.spin_until_readable(SPIN);
        }
        match reader.read(&mut body) {
            Ok(()) => {}
            Err(FrameError::Closed) => std::process::exit(0),
            Err(e) => {
                eprintln!("ppool worker: {e}");
                std::process::exit(3);
            }
        }
        match body[0] {
            kind::TASKS => {
                spin = Tasks::parse(&body).is_ok_and(|t| t.flags & protocol::FLAG_SPIN != 0);
                if let Err(e) = run_tasks(record, &body, &mut out, max_frame) {
                    eprintln!("ppool worker: {e}");
                    std::process::exit(3);
                }
            }
            kind::INIT => run_init(&body, &mut out),
            kind::ON_EXIT => {
                match protocol::parse_on_exit(&body)
                    .map_err(|e| e.to_string())
                    .and_then(|(name, args)| {
                        entry::find(name)
                            .map(|r| (r, args.to_vec()))
                            .map_err(|e| e.to_string())
                    }) {
                    Ok(hook) => on_exit = Some(hook),
                    Err(e) => eprintln!("ppool worker: ignoring the worker-exit hook: {e}"),
                }
                continue;
            }
            kind::EXIT => {
                if let Some((record, args)) = &on_exit {
                    protocol::start_exited(&mut out);
                    run_one(record, args, &mut out, max_frame);
                    let _ = output.write_all(out.finish());
                }
                std::process::exit(0)
            }
            k => {
                eprintln!("ppool worker: unexpected message kind {k}");
                std::process::exit(3);
            }
        }
        // Each answer leaves at once: an answer held back would be lost, and its task
        // blamed, if a later task of the same worker crashed it.
        let written = send_answer(&mut output, &mut out, max_frame);
        protocol::shrink(&mut body);
        out.shrink();
        if let Err(e) = written {
            // The supervisor closed its end: it is gone or wants us gone.
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("ppool worker: cannot send results: {e}");
            }
            std::process::exit(0);
        }
    }
}

/// Writes the answer built in `out`: one frame, or, for results larger than a frame, several.
fn send_answer(
    output: &mut PipeWriter,
    out: &mut FrameBuf,
    max_frame: usize,
) -> std::io::Result<()> {
    let frame = out.finish();
    match protocol::split_results(frame, max_frame) {
        None => output.write_all(frame),
        Some(frames) => frames.iter().try_for_each(|f| output.write_all(f)),
    }
}

/// Reads HELLO, checks it, and prepares READY in `out`.
fn handshake(
    reader: &mut FrameReader<PipeReader>,
    body: &mut Vec<u8>,
    out: &mut FrameBuf,
) -> Result<&'static EntryRecord, String> {
    reader
        .read(body)
        .map_err(|e| format!("no greeting on its channel: {e}"))?;
    let hello = Hello::parse(body).map_err(|e| e.to_string())?;
    let ours = entry::build_id();
    if hello.build_id != ours {
        return Err(format!(
            "the worker binary is of another build (its entry table is {ours:016x}, the pool's \
             {:016x}); was the program rebuilt while it ran?",
            hello.build_id
        ));
    }
    let record = entry::find(hello.entry).map_err(|e| e.to_string())?;
    let _ = WORKER.set(WorkerInfo {
        index: hello.worker as usize,
        pool: hello.pool.to_string(),
    });
    Ready::Ok {
        build_id: ours,
        token: hello.token,
        pid: std::process::id(),
    }
    .write(out);
    Ok(record)
}

/// Runs the tasks of a TASKS body and builds the RESULTS frame in `out`.
pub(crate) fn run_tasks(
    record: &EntryRecord,
    body: &[u8],
    out: &mut FrameBuf,
    max_frame: usize,
) -> Result<(), FrameError> {
    let started = Instant::now();
    let mut tasks = Tasks::parse(body)?;
    protocol::start_results(out, tasks.job, tasks.count);
    // Reading the clock costs about as much as a tiny task: time each task only while they
    // are long enough for it to matter, and the rest of a chunk of tiny ones as a whole.
    let (mut last, mut longest) = (started, Duration::ZERO);
    let mut timed = 0;
    for _ in 0..tasks.count {
        let args = tasks.next_args()?;
        run_one(record, args, out, max_frame);
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
    protocol::set_busy(out, (now - started).as_nanos() as u64);
    protocol::set_max_task(out, longest.as_nanos() as u64);
    Ok(())
}

/// Runs one task and appends its outcome.
pub(crate) fn run_one(record: &EntryRecord, args: &[u8], out: &mut FrameBuf, max: usize) {
    let at = out.len();
    match catch_task(|| Outcome::write_ok(out, |value| (record.run)(args, value))) {
        Ok(Ok(())) => {
            // A result the channel cannot carry, even in a frame of its own, fails alone.
            if protocol::RESULTS_HEADER_BODY + (out.len() - at) > max {
                let size = out.len() - at;
                out.truncate(at);
                let message = format!(
                    "the result is {size} bytes, more than the pool's max_frame_size of {max}"
                );
                Outcome::write_codec(out, "encode the result", &message);
            }
        }
        Ok(Err(CodecFailure { action, message })) => Outcome::write_codec(out, action, &message),
        Err((message, location)) => {
            out.truncate(at);
            Outcome::write_panicked(out, &message, &location);
        }
    }
}

/// Runs the initializer named in an INIT frame and prepares INIT_DONE.
fn run_init(body: &[u8], out: &mut FrameBuf) {
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
    let mut sink = Vec::new();
    match catch_task(|| (record.run)(args, &mut sink)) {
        Ok(Ok(())) => None,
        Ok(Err(CodecFailure { action, message })) => Some(format!(
            "initializer `{name}` could not {action}: {message}"
        )),
        Err((message, location)) => {
            let at = if location.is_empty() {
                String::new()
            } else {
                format!(" at {location}")
            };
            Some(format!("initializer `{name}` panicked{at}: {message}"))
        }
    }
}
