//! The worker side: a [`Session`] answers the supervisor's frames one by one (the handshake,
//! the initializer, tasks, the exit hook), and [`serve`] runs one over a byte stream until it
//! is told to stop or the supervisor goes away. The in-process transport runs a session too.

#[allow(unsafe_code)]
pub(crate) mod bootstrap;
mod channel;
#[allow(unsafe_code)]
pub(crate) mod exec;
pub(crate) mod readiness;

use crate::entry::{self, EntryRecord};
use crate::protocol::{self, FrameBuf, FrameError, Hello, Ready, Tasks, kind};
use bootstrap::{ChannelDesc, Opened};
use channel::{Channel, PipeChannel, ShmChannel};
use exec::{Publish, WORKER, WorkerInfo};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The largest frame accepted before a pool's greeting: enough for any HELLO.
const GREETING_MAX: usize = 64 * 1024;

/// What a session did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The answer is in the session's buffer, to be sent at once. `spin`: the pool asks the
    /// worker to spin for its next frame, as a caller waits and will send it soon.
    Answer { spin: bool },
    /// Nothing to answer.
    Quiet,
    /// Stop: send the answer in the buffer, if `answer`, then end.
    Exit { answer: bool },
}

/// One worker's side of the protocol.
#[derive(Debug)]
pub(crate) struct Session {
    /// The entry it serves, once greeted.
    record: Option<&'static EntryRecord>,
    on_exit: Option<(&'static EntryRecord, Vec<u8>)>,
    max_frame: usize,
    /// The answer being built.
    pub(crate) out: FrameBuf,
    /// For the in-process transport: the worker this session stands for.
    in_process: Option<(usize, &'static str)>,
    /// The subscriber that forwards entries' `tracing` events, until it is made global.
    capture: Option<tracing::Dispatch>,
    /// For the in-process transport: where its tasks find shared values (a worker process
    /// installs its resolver process-wide).
    resolver: Option<Arc<crate::share::Resolver>>,
}

impl Session {
    /// A session of a worker process, whose frames may be at most `max_frame` bytes.
    pub(crate) fn new(max_frame: usize) -> Self {
        Session {
            record: None,
            on_exit: None,
            max_frame,
            out: FrameBuf::default(),
            in_process: None,
            capture: None,
            resolver: None,
        }
    }

    /// A session that stands for worker `index` of pool `pool`, served in this process.
    pub(crate) fn in_process(max_frame: usize, index: usize, pool: &'static str) -> Self {
        Session {
            in_process: Some((index, pool)),
            ..Session::new(max_frame)
        }
    }

    /// Handles one frame's body, telling `publish` of each task as it starts and ends. An
    /// error is fatal: the worker says why and ends (after a refused greeting, the REFUSE
    /// frame is in the buffer to be sent first).
    pub(crate) fn handle(
        &mut self,
        body: &[u8],
        publish: &mut dyn Publish,
    ) -> Result<Step, String> {
        let Some(record) = self.record else {
            return self.greet(body);
        };
        match body.first().copied() {
            Some(kind::TASKS) => {
                self.capture_globally();
                let tasks = Tasks::parse(body).map_err(|e| e.to_string())?;
                let spin = tasks.flags & protocol::FLAG_SPIN != 0;
                let record = match tasks.entry {
                    protocol::POOL_ENTRY => record,
                    index => entry::by_index(index)
                        .ok_or_else(|| format!("no entry at index {index} in this binary"))?,
                };
                let (out, max) = (&mut self.out, self.max_frame);
                as_worker(self.in_process, self.resolver.as_ref(), || {
                    exec::run_tasks(record, tasks, out, max, publish)
                })
                .map_err(|e| e.to_string())?;
                Ok(Step::Answer { spin })
            }
            Some(kind::INIT) => {
                let out = &mut self.out;
                let in_process = self.in_process;
                let resolver = self.resolver.clone();
                let mut run =
                    move || as_worker(in_process, resolver.as_ref(), || exec::run_init(body, out));
                match &self.capture {
                    Some(capture) => tracing::dispatcher::with_default(capture, run),
                    None => run(),
                }
                Ok(Step::Answer { spin: false })
            }
            Some(kind::ON_EXIT) => {
                match protocol::parse_on_exit(body)
                    .map_err(|e| e.to_string())
                    .and_then(|(name, args)| {
                        entry::find(name)
                            .map(|r| (r, args.to_vec()))
                            .map_err(|e| e.to_string())
                    }) {
                    Ok(hook) => self.on_exit = Some(hook),
                    Err(e) => eprintln!("ppool worker: ignoring the worker-exit hook: {e}"),
                }
                Ok(Step::Quiet)
            }
            Some(kind::EXIT) => {
                self.capture_globally();
                let Some((hook, args)) = &self.on_exit else {
                    return Ok(Step::Exit { answer: false });
                };
                let (out, max) = (&mut self.out, self.max_frame);
                protocol::start_exited(out);
                as_worker(self.in_process, self.resolver.as_ref(), || {
                    exec::run_one(hook, args, out, max)
                });
                Ok(Step::Exit { answer: true })
            }
            Some(k) => Err(format!("unexpected message kind {k}")),
            None => Err("an empty frame".into()),
        }
    }

    /// Before the first task: the forwarding subscriber becomes the global default, unless
    /// the initializer installed one of its own.
    fn capture_globally(&mut self) {
        if let Some(capture) = self.capture.take() {
            crate::trace::capture::make_global(capture);
        }
    }

    /// Reads HELLO, checks it, and prepares READY (or REFUSE).
    fn greet(&mut self, body: &[u8]) -> Result<Step, String> {
        let greeted = Hello::parse(body)
            .map_err(|e| e.to_string())
            .and_then(|hello| {
                let ours = entry::build_id();
                if hello.build_id != ours {
                    return Err(format!(
                        "the worker binary is of another build (its entry table is {ours:016x}, \
                     the pool's {:016x}); was the program rebuilt while it ran?",
                        hello.build_id
                    ));
                }
                let record = entry::find(hello.entry).map_err(|e| e.to_string())?;
                if self.in_process.is_some() {
                    // Served in the supervisor's process: its values are its own memfds.
                    self.resolver = Some(Arc::new(crate::share::Resolver::new(
                        std::process::id(),
                        hello.token,
                    )));
                } else {
                    // The process that started it holds the pool's values open: the
                    // supervisor, or its host's agent.
                    let owner = rustix::process::getppid()
                        .map_or(0, |pid| pid.as_raw_nonzero().get() as u32);
                    crate::share::install(owner, hello.token);
                    let _ = WORKER.set(WorkerInfo {
                        index: hello.worker as usize,
                        pool: hello.pool.to_string(),
                    });
                    self.capture = crate::trace::capture::dispatch(hello.trace);
                }
                Ok((record, ours, hello.token))
            });
        match greeted {
            Ok((record, build_id, token)) => {
                self.record = Some(record);
                exec::install_panic_hook();
                Ready::Ok {
                    build_id,
                    token,
                    pid: std::process::id(),
                }
                .write(&mut self.out);
                Ok(Step::Answer { spin: false })
            }
            Err(why) => {
                Ready::Refused(&why).write(&mut self.out);
                Err(why)
            }
        }
    }

    /// The answer, cut into frames within the limit where it is larger (big results).
    pub(crate) fn answer_frames(&mut self) -> AnswerFrames<'_> {
        let frame = self.out.finish();
        match protocol::split_results(frame, self.max_frame) {
            None => AnswerFrames::One(frame),
            Some(frames) => AnswerFrames::Many(frames),
        }
    }

    /// Gives back the memory of an answer buffer that one big result grew.
    pub(crate) fn shrink_buffers(&mut self) {
        self.out.shrink();
    }
}

/// Runs `f` as worker code: as the in-process worker `who` stands for, if any.
fn as_worker<R>(
    who: Option<(usize, &'static str)>,
    resolver: Option<&Arc<crate::share::Resolver>>,
    f: impl FnOnce() -> R,
) -> R {
    match (who, resolver) {
        (Some((index, pool)), Some(resolver)) => {
            crate::share::scoped(resolver, || exec::as_in_process(index, pool, f))
        }
        (Some((index, pool)), None) => exec::as_in_process(index, pool, f),
        (None, _) => f(),
    }
}

/// The frames of one answer.
#[derive(Debug)]
pub(crate) enum AnswerFrames<'a> {
    One(&'a [u8]),
    Many(Vec<Vec<u8>>),
}

impl AnswerFrames<'_> {
    /// Writes them all.
    pub(crate) fn write_to(&self, output: &mut impl Write) -> std::io::Result<()> {
        match self {
            AnswerFrames::One(frame) => output.write_all(frame),
            AnswerFrames::Many(frames) => frames.iter().try_for_each(|f| output.write_all(f)),
        }
    }
}

/// Serves as a worker process; never returns.
pub(crate) fn enter() -> ! {
    // A supervisor that went away is an `EPIPE` on the next write, never a signal.
    bootstrap::ignore_sigpipe();
    let (opened, max_frame) = match ChannelDesc::from_env() {
        Ok(channel) => channel,
        Err(why) => bootstrap::hand_started(&why),
    };
    exec::watch_forks();
    match opened {
        Opened::Pipes(input, output) => {
            serve(PipeChannel::new(input, output, max_frame), max_frame)
        }
        Opened::Shm(region) => serve(ShmChannel::new(region, max_frame), max_frame),
    }
}

/// Ends a worker whose answer could not be sent: the supervisor is gone or wants it gone.
pub(crate) fn supervisor_gone(e: &std::io::Error) -> ! {
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        eprintln!("ppool worker: cannot send results: {e}");
    }
    std::process::exit(0);
}

/// Answers the frames read from `channel` until told to stop, or until the supervisor goes
/// away; never returns.
fn serve(mut channel: impl Channel, max_frame: usize) -> ! {
    static GREETED: AtomicBool = AtomicBool::new(false);
    bootstrap::spawn_guard(&GREETED);
    let mut body = Vec::new();
    let mut session = Session::new(max_frame);
    let mut spin = false;
    loop {
        match channel.recv(&mut body, spin) {
            Ok(()) => {}
            Err(FrameError::Closed) if GREETED.load(Ordering::Acquire) => std::process::exit(0),
            Err(e) if !GREETED.load(Ordering::Acquire) => {
                bootstrap::hand_started(&format!("no greeting on its channel: {e}"))
            }
            Err(e) => {
                eprintln!("ppool worker: {e}");
                std::process::exit(3);
            }
        }
        let step = match session.handle(&body, &mut channel) {
            Ok(step) => step,
            Err(why) if !GREETED.load(Ordering::Acquire) => {
                let _ = channel.send(&session.answer_frames());
                bootstrap::hand_started(&why)
            }
            Err(why) => {
                eprintln!("ppool worker: {why}");
                std::process::exit(3);
            }
        };
        if !GREETED.swap(true, Ordering::AcqRel) {
            channel.greeted(max_frame);
        }
        let (answer, exit) = match step {
            Step::Answer { spin: s } => {
                spin = s;
                (true, false)
            }
            Step::Quiet => (false, false),
            Step::Exit { answer } => (answer, true),
        };
        exec::exit_if_forked();
        if answer {
            // Each answer leaves at once: an answer held back would be lost, and its task
            // blamed, if a later task of the same worker crashed it.
            if let Err(e) = channel.send(&session.answer_frames()) {
                supervisor_gone(&e);
            }
        }
        if exit {
            std::process::exit(0);
        }
        protocol::shrink(&mut body);
        session.shrink_buffers();
    }
}
