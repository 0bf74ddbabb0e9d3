//! The host agent: this program started on another host by a launcher (`ssh`, `srun`, a
//! command prefix) with [`AGENT_ENV`] set. It talks to the pool over its stdin and stdout
//! (see `mux`), and starts, feeds and watches the host's workers with the local
//! shared-memory transport, so that crash detection, the progress word and stderr forwarding
//! stay on the host. It holds the pool's shared values that the host was sent, in sealed
//! memfds its workers map (`share::HostValues`).
//!
//! Threads, for a host of `n` workers:
//! - the main thread reads the pool's messages. It hands each body to its worker straight
//!   into the worker's job ring when that write cannot wait, and otherwise to the worker's
//!   backlog (`feed`, `backlog`): it never waits for one worker's ring while the others wait
//!   behind it;
//! - up to [`start::STARTERS`] starter threads (`start`) start workers in parallel while SPAWN
//!   messages wait, answering each as soon as its worker runs, and end when none waits;
//! - a writer thread per worker whose backlog holds something, until it is written out: none
//!   while the pool keeps within [`remote_budget`];
//! - one forwarder thread per group of up to 64 workers (`forward`), which takes what each
//!   worker published without waiting for any, sleeps on all their result rings at once
//!   (`futex_waitv`), and looks at their pidfds every 100 ms (one thread per worker where the
//!   kernel has no `futex_waitv`);
//! - the guard and the pinger (`watch`): the guard ends everything when the pool is gone
//!   (stdin at its end, a new parent, or nothing from the pool for the host timeout), killing
//!   the workers first; the pinger pings the pool when the stream to it is idle, so that a
//!   pool busy sending a large message still hears the host.
//!
//! Besides, the local transport copies each worker's stderr on a thread of its own when it is
//! forwarded (`transport::stderr`). The workers the agent starts are in one registry
//! (`workers`) that every thread shares.
//!
//! Silence is counted in bytes: a large message still arriving is not silence, and neither
//! is the time the main thread would wait for room in a worker's ring.

mod backlog;
mod feed;
mod forward;
mod start;
mod watch;
mod workers;

use crate::error::ExitCause;
use crate::mux::{self, AgentHello, AgentReady, CONTROL, Control};
use crate::protocol::FrameError;
use crate::share::HostValues;
use crate::sync::lock;
use crate::transport::{LaunchConfig, Peer, Transport};
use start::Starters;
use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use workers::Workers;

pub(crate) use crate::relaunch::AGENT_ENV;
/// How long the workers have to end on SIGTERM before they are killed.
const END_GRACE: Duration = Duration::from_secs(2);
/// Exit code of an agent that no pool greeted.
const EXIT_NO_POOL: i32 = 2;

/// What a remote worker may hold unanswered (bytes of job frames, length prefixes included),
/// for the pool's link to it to report as its budget: a quarter of the worker's job ring on
/// the host, as for a local worker over shared memory. Within it the agent writes every job
/// straight into the ring (see `backlog`); past it (one job larger than the budget, which the
/// pool sends only to a worker that holds nothing), a job waits in the agent until the ring
/// has room, without holding up the host's other workers.
pub(crate) const fn remote_budget() -> usize {
    backlog::JOB_RING_BYTES / 4
}

/// The stream to the pool, shared by the threads that write to it.
type Out = Arc<Mutex<File>>;

/// Serves as a host agent; never returns.
pub(crate) fn run() -> ! {
    // The workers it starts must not take themselves for agents. This runs first thing in
    // `main` (or in the worker test of a test binary), before any thread of ours.
    crate::worker::bootstrap::remove_var_before_threads(AGENT_ENV);
    // A pool that went away is an EPIPE on a write.
    crate::worker::bootstrap::ignore_sigpipe();
    // A file size limit fails a shared value it cannot store, not the agent.
    crate::worker::bootstrap::ignore_sigxfsz();
    if let Some(why) = merged_streams() {
        // Said on the merged stream, before the preamble: the pool quotes it as it gives up.
        eprintln!("ppool host agent: {why}");
        std::process::exit(EXIT_NO_POOL);
    }
    let (mut input, output) = match private_stdio() {
        Ok(io) => io,
        Err(e) => fail_start(&format!("cannot take over its stdin and stdout: {e}")),
    };
    let out: Out = Arc::new(Mutex::new(output));
    if lock(&out).write_all(mux::PREAMBLE).is_err() {
        std::process::exit(EXIT_NO_POOL);
    }
    let last_heard = Arc::new(Heard::default());
    let started = Instant::now();
    let workers: Arc<Workers> = Arc::default();
    let hello = Arc::new(Mutex::new(None::<Duration>));
    watch::spawn_guard(
        started,
        Arc::clone(&last_heard),
        Arc::clone(&hello),
        Arc::clone(&workers),
    );

    let mut input = Counted {
        input: &mut input,
        heard: &last_heard,
        started,
    };
    let mut body = Vec::new();
    let greeting = match mux::read_message(&mut input, &mut body, 0) {
        Ok(CONTROL) => AgentHello::parse(&body),
        Ok(channel) => Err(FrameError::Malformed(format!(
            "a message for worker {channel} before the greeting"
        ))),
        Err(e) => Err(e),
    };
    let greeting = match greeting {
        Ok(g) if g.version == mux::MUX_VERSION => g,
        Ok(g) => fail_start(&format!(
            "the pool speaks version {} of the host protocol, this agent {}",
            g.version,
            mux::MUX_VERSION
        )),
        Err(e) => fail_start(&format!("no pool greeted it: {e}")),
    };
    let host_timeout = Duration::from_millis(greeting.host_timeout_ms.max(1000));
    *lock(&hello) = Some(host_timeout);
    let ready = AgentReady {
        exe: crate::relaunch::exe_identity().unwrap_or(0),
        build_id: crate::entry::build_id(),
        pid: std::process::id(),
        hostname: rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
        target: crate::relaunch::target(),
    };
    if send(&out, CONTROL, &ready.encode()).is_err() {
        std::process::exit(0);
    }
    crate::trace::pass_records_on();
    let config = LaunchConfig {
        transport: Transport::SharedMemory,
        pool: greeting.pool.clone(),
        max_frame: usize::try_from(greeting.max_frame).unwrap_or(usize::MAX),
        env: greeting
            .env
            .iter()
            .map(|(k, v)| (OsString::from_vec(k.clone()), OsString::from_vec(v.clone())))
            .collect(),
        disable_gpu: greeting.disable_gpu,
        // Checked against this host's CPUs as each worker starts.
        cpu_affinity: greeting.cpus.iter().map(|&cpu| cpu as usize).collect(),
        forward_stderr: greeting.forward_stderr,
        // Records from the workers pass through to the pool, which reads this stderr.
        dispatch: None,
        memory_limit: (greeting.memory_limit > 0).then_some(greeting.memory_limit),
    };
    watch::spawn_pinger(Arc::clone(&out), host_timeout);
    let host = Arc::new(Host {
        out,
        workers,
        config,
        forwarders: forward::Forwarders::default(),
    });
    let starters: Arc<Starters> = Arc::default();
    // The pool's shared values, held here for the host's workers (they find them in this
    // process's descriptors).
    let mut values = HostValues::default();
    loop {
        let channel = match mux::read_message(&mut input, &mut body, host.config.max_frame) {
            Ok(channel) => channel,
            Err(FrameError::Closed) => end(&host.workers, 0),
            Err(e) => {
                eprintln!("ppool host agent: {e}; ending its workers");
                end(&host.workers, 3)
            }
        };
        if channel != CONTROL {
            if let Some(worker) = host.workers.get(channel) {
                feed::deliver(&worker, &mut body, &last_heard, started);
            }
            continue;
        }
        match Control::parse(&body) {
            Ok(Control::Spawn {
                slot,
                index,
                greeting,
            }) => {
                host.workers.starting(slot);
                let request = start::Request {
                    slot,
                    index,
                    greeting: greeting.to_vec(),
                };
                starters.start(&host, request);
            }
            Ok(Control::Kill { slot }) => host.workers.kill(slot),
            Ok(Control::Ping(n)) => {
                if send(&host.out, CONTROL, &Control::Pong(n).encode()).is_err() {
                    end(&host.workers, 0);
                }
            }
            Ok(Control::Pong(_)) => {}
            Ok(Control::Share {
                token,
                id,
                kind,
                len,
                hash,
            }) => values.begin(token, id, kind, len, hash),
            Ok(Control::SharePart { id, offset, data }) => values.part(id, offset, data),
            Ok(Control::Forget { id }) => values.forget(id),
            Ok(other) => {
                let what: String = format!("{other:?}").chars().take(200).collect();
                eprintln!("ppool host agent: ignoring an unexpected {what}");
            }
            Err(e) => {
                eprintln!("ppool host agent: {e}; ending its workers");
                end(&host.workers, 3)
            }
        }
    }
}

/// What the agent's threads share once the pool greeted it.
#[derive(Debug)]
struct Host {
    /// The stream to the pool.
    out: Out,
    workers: Arc<Workers>,
    /// How its workers are started.
    config: LaunchConfig,
    /// The threads that forward the workers' answers.
    forwarders: forward::Forwarders,
}

/// Why the agent cannot use its stdout, when its launcher made its stderr the same pipe or
/// socket: every line written to stderr (by the agent or a worker) would break the stream.
fn merged_streams() -> Option<&'static str> {
    let out = std::io::stdout();
    let err = std::io::stderr();
    if rustix::termios::isatty(&out) {
        return None;
    }
    let (Ok(a), Ok(b)) = (rustix::fs::fstat(&out), rustix::fs::fstat(&err)) else {
        return None;
    };
    let kind = rustix::fs::FileType::from_raw_mode(a.st_mode);
    let shared = matches!(
        kind,
        rustix::fs::FileType::Fifo | rustix::fs::FileType::Socket
    ) && (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino);
    shared.then_some(
        "its stderr is the same pipe as its stdout (does the launcher merge them, as with \
         `2>&1`?): the pool's stream needs stdout to itself",
    )
}

/// Moves the channel off fds 0 and 1: stdout then points at stderr, so that an entry's
/// `println!` cannot corrupt the stream, and stdin at `/dev/null`. A terminal (srun `-u`
/// gives one) is put in raw mode, so that binary frames cross it unchanged.
fn private_stdio() -> std::io::Result<(File, File)> {
    let stdin = rustix::io::fcntl_dupfd_cloexec(std::io::stdin().as_fd(), 3)?;
    let stdout = rustix::io::fcntl_dupfd_cloexec(std::io::stdout().as_fd(), 3)?;
    rustix::stdio::dup2_stdout(std::io::stderr().as_fd())?;
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::stdio::dup2_stdin(&null)?;
    for fd in [&stdin, &stdout] {
        if rustix::termios::isatty(fd) {
            let mut termios = rustix::termios::tcgetattr(fd)?;
            termios.make_raw();
            rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &termios)?;
        }
    }
    Ok((File::from(stdin), File::from(stdout)))
}

/// Ends an agent that could not start, with a message as a hand-started worker gets.
fn fail_start(why: &str) -> ! {
    eprintln!(
        "error: this is the command line of a ppool host agent, which only a ProcessPool \
         with remote workers starts ({why})."
    );
    std::process::exit(EXIT_NO_POOL)
}

fn send(out: &Out, channel: u32, body: &[u8]) -> std::io::Result<()> {
    let mut out = lock(out);
    mux::write_message(&mut *out, channel, body)?;
    out.flush()
}

/// When the pool was last heard, in milliseconds since the agent started, and whether the
/// main thread is busy handing a message to a worker (then nothing is read, and the pool's
/// silence means nothing).
#[derive(Debug, Default)]
struct Heard {
    at: AtomicU64,
    delivering: AtomicBool,
}

fn heard(last: &Heard, started: Instant) {
    last.at
        .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
}

/// The stream from the pool, marking the pool heard at every byte that comes.
struct Counted<'a> {
    input: &'a mut File,
    heard: &'a Heard,
    started: Instant,
}

impl std::io::Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.input.read(buf)?;
        if n > 0 {
            heard(self.heard, self.started);
        }
        Ok(n)
    }
}

/// Ends every worker, SIGTERM first and SIGKILL after [`END_GRACE`], waits for them, and
/// exits with `code`. A worker that starts meanwhile is killed as it does.
fn end(workers: &Workers, code: i32) -> ! {
    let all = workers.end();
    for peer in &all {
        peer.terminate();
    }
    let deadline = Instant::now() + END_GRACE;
    for peer in &all {
        let left = deadline.saturating_duration_since(Instant::now());
        if !peer.wait_exit(left) {
            peer.kill();
        }
    }
    for peer in &all {
        let _: ExitCause = peer.reap();
    }
    std::process::exit(code)
}
