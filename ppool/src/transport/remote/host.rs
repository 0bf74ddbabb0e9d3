//! One host: its agent, started through its launcher, and the connection the host's workers
//! share ([`Conn`]). Two threads per host: a reader takes the agent's messages apart into one
//! inbox per worker, and keeps the heartbeat between reads (it pings the agent and declares
//! the host lost when nothing came from it for the host timeout, or its launcher ended);
//! every write goes through the host's [`Outbox`] and its writer thread, so no thread waits
//! behind another's bytes. A message for one worker wakes that worker's driver alone.
//!
//! Silence is counted in bytes, not messages: a large message that is still arriving is not
//! silence, however slow the link. The agent pings on its own too, so a host that is busy
//! reading a large message from the pool is heard.
//!
//! A lost host is fenced: its outbox drops what it held, its launcher is stopped (SIGTERM,
//! then SIGKILL), and every worker on it ends with [`ExitCause::Lost`]. No lock is held
//! across a write or a wait for another thread.

use super::command::{agent_command, install};
use super::outbox::Outbox;
use crate::error::{Error, ExitCause};
use crate::hosts::{HostSpec, Via};
use crate::mux::{self, AgentHello, AgentReady, CONTROL, Control};
use crate::protocol::FrameError;
use crate::sync::{lock, wait_timeout};
use crate::transport::{Incoming, LaunchConfig, Sink};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long a launcher has to end by itself, and then on SIGTERM, before the next step.
pub(super) const GRACE: Duration = Duration::from_secs(2);
/// The least time an agent has to answer the greeting, and a worker to start.
const ANSWER_MIN: Duration = Duration::from_secs(10);
const SPAWN_MIN: Duration = Duration::from_secs(30);

/// A worker the agent started: its slot, its pid there, and its inbox's bell.
#[derive(Debug)]
pub(super) struct Spawned {
    pub(super) slot: u32,
    pub(super) pid: u32,
    pub(super) bell: Arc<Condvar>,
}

/// An agent on a host, reached through its launcher. Dropping it ends the agent.
#[derive(Debug)]
pub(super) struct Host {
    pub(super) conn: Arc<Conn>,
}

/// What the host's threads share with its workers' links and peers.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) name: String,
    via: Via,
    pub(super) outbox: Arc<Outbox>,
    launcher: Mutex<Child>,
    launcher_pid: u32,
    pub(super) state: Mutex<HostState>,
    pub(super) changed: Condvar,
    epoch: Instant,
    /// Milliseconds since `epoch` when a byte last came from the agent.
    last_heard: AtomicU64,
    next_slot: AtomicU32,
    pub(super) host_timeout: Duration,
    /// The shared values this host was sent (see `share`), by id; held while one is sent.
    pub(super) provided: Mutex<std::collections::HashSet<u64>>,
    /// The largest message the agent takes.
    pub(super) max_message: usize,
}

#[derive(Debug, Default)]
pub(super) struct HostState {
    pub(super) slots: HashMap<u32, Inbox>,
    /// Why the host was lost, once it was.
    pub(super) lost: Option<String>,
    /// The pool let go of it.
    closed: bool,
}

/// What came from the agent for one worker, and the bell that wakes whoever waits for it
/// (only its own driver: a frame for one worker wakes no other).
#[derive(Debug, Default)]
pub(super) struct Inbox {
    pub(super) bell: Arc<Condvar>,
    pub(super) frames: VecDeque<Vec<u8>>,
    spawned: Option<Result<u32, String>>,
    pub(super) exited: Option<(ExitCause, Option<(u64, u32)>)>,
    /// The worker's own memory, as its agent last reported it past the pool's limit.
    pub(super) resident: Option<u64>,
    /// Where the reader hands this worker's messages instead of `frames`, once the pool set
    /// it (see `Link::deliver_to`).
    pub(super) sink: Option<Arc<dyn Sink>>,
    /// Held across each call to `sink`, and while it is set: a sink set or taken away is
    /// never called after, nor concurrently with, the change.
    pub(super) gate: Arc<Mutex<()>>,
}

/// `from + d`, or `None` (never) when that is past what an `Instant` holds.
fn deadline(from: Instant, d: Duration) -> Option<Instant> {
    from.checked_add(d)
}

impl Host {
    /// Starts the agent on `spec`'s host and checks that it runs this very build.
    pub(super) fn connect(
        spec: &HostSpec,
        config: &LaunchConfig,
        host_timeout: Duration,
    ) -> Result<Host, Error> {
        let name = &spec.name;
        let spawn_error = |why: String| Error::spawn(format!("host {name}: {why}"));
        let copied = if spec.copy {
            Some(install(spec, host_timeout)?)
        } else {
            None
        };
        let argv = agent_command(spec, copied.as_deref())?;
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // With `tracing` forwarded, the records of the host's workers come on it.
            .stderr(if config.dispatch.is_some() {
                Stdio::piped()
            } else {
                Stdio::inherit()
            });
        let mut child = command.spawn().map_err(|e| {
            let why = format!(
                "host {name}: cannot run its launcher `{}`: {e}",
                argv[0].to_string_lossy()
            );
            Error::spawn_io(why, e)
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(spawn_error("its launcher has no stdio".into()));
        };
        if let Some(stderr) = child.stderr.take() {
            // Its thread ends when the launcher's stderr closes, after the launcher.
            let (pool, host) = (config.pool.clone(), name.clone());
            drop(crate::transport::stderr::forward_stderr(
                stderr,
                crate::transport::stderr::Source::Agent { pool, host },
                config.dispatch.clone(),
            ));
        }
        let (outbox, writer) = match Outbox::new(OwnedFd::from(stdin), name) {
            Ok(made) => made,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(spawn_error(format!("cannot set up its stream: {e}")));
            }
        };
        let conn = Arc::new(Conn::new(
            name,
            spec.via.clone(),
            outbox,
            child,
            host_timeout,
            mux::host_message_limit(config.max_frame),
        ));
        // From here on, dropping `host` ends the launcher.
        let host = Host {
            conn: Arc::clone(&conn),
        };
        if let Err(e) = std::thread::Builder::new()
            .name(format!("ppool-send-{name}"))
            .spawn(writer)
        {
            return Err(spawn_error(format!("cannot start its writer thread: {e}")));
        }
        let hello = AgentHello {
            version: mux::MUX_VERSION,
            pool: config.pool.clone(),
            max_frame: config.max_frame as u64,
            host_timeout_ms: u64::try_from(host_timeout.as_millis()).unwrap_or(u64::MAX),
            disable_gpu: config.disable_gpu,
            forward_stderr: config.forward_stderr,
            env: config
                .env
                .iter()
                .map(|(k, v)| {
                    use std::os::unix::ffi::OsStrExt;
                    (k.as_bytes().to_vec(), v.as_bytes().to_vec())
                })
                .collect(),
            memory_limit: config.memory_limit.unwrap_or(0),
            cpus: config
                .cpu_affinity
                .iter()
                .map(|&cpu| u32::try_from(cpu).unwrap_or(u32::MAX))
                .collect(),
        };
        // Sent at once: it waits in the pipe while the launcher logs in.
        if let Err(e) = conn.outbox.post(CONTROL, &hello.encode()) {
            let why = host.stop_and_explain(&format!("cannot greet its agent: {e}"));
            return Err(spawn_error(why));
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let reader = Arc::clone(&conn);
        let max = mux::host_message_limit(config.max_frame);
        if let Err(e) = std::thread::Builder::new()
            .name(format!("ppool-host-{name}"))
            .spawn(move || read_agent(&reader, stdout, max, &ready_tx))
        {
            return Err(spawn_error(format!("cannot start its reader thread: {e}")));
        }
        // `recv_timeout` waits without limit when the timeout is past what an Instant holds.
        let patience = host_timeout.max(ANSWER_MIN);
        let ready = match ready_rx.recv_timeout(patience) {
            Ok(Ok(ready)) => {
                // The agent hears the pool even while the reader is busy delivering.
                conn.outbox.keep_alive(heartbeat_every(host_timeout));
                ready
            }
            Ok(Err(why)) => return Err(spawn_error(host.stop_and_explain(&why))),
            Err(_) => {
                let why = format!("its agent did not answer within {patience:?}");
                return Err(spawn_error(host.stop_and_explain(&why)));
            }
        };
        let ours = (
            crate::relaunch::exe_identity().map_err(|e| spawn_error(e.clone()))?,
            crate::entry::build_id(),
            crate::relaunch::target(),
        );
        if (ready.exe, ready.build_id, &ready.target) != (ours.0, ours.1, &ours.2) {
            return Err(spawn_error(format!(
                "its program {} is another build of this program (executable {:016x}, entry \
                 table {:016x}, {}; this one is {:016x}, {:016x}, {})",
                spec.program.to_string_lossy(),
                ready.exe,
                ready.build_id,
                ready.target,
                ours.0,
                ours.1,
                ours.2
            )));
        }
        Ok(host)
    }

    pub(super) fn is_lost(&self) -> bool {
        lock(&self.conn.state).lost.is_some()
    }

    /// Stops the launcher after a failed start, and says why, with how it ended.
    fn stop_and_explain(&self, why: &str) -> String {
        self.conn.lose("the pool stopped it".into());
        let status = lock(&self.conn.launcher).try_wait().ok().flatten();
        match status {
            Some(status) if !status.success() => format!("{why} (its launcher: {status})"),
            _ => why.to_string(),
        }
    }

    /// Asks the agent for a worker in a new slot for each `(index, greeting)`, all at once,
    /// and waits until they run: each one's slot and pid, or why it did not start.
    pub(super) fn spawn_many(&self, workers: &[(usize, &[u8])]) -> Vec<Result<Spawned, Error>> {
        let conn = &self.conn;
        let name = &conn.name;
        let mut asked: Vec<Result<u32, Error>> = Vec::with_capacity(workers.len());
        for &(index, greeting) in workers {
            let Ok(index32) = u32::try_from(index) else {
                asked.push(Err(Error::spawn("too many workers")));
                continue;
            };
            let slot = conn.next_slot.fetch_add(1, Ordering::Relaxed);
            lock(&conn.state).slots.insert(slot, Inbox::default());
            let spawn = Control::Spawn {
                slot,
                index: index32,
                greeting,
            };
            match conn.outbox.post(CONTROL, &spawn.encode()) {
                Ok(()) => asked.push(Ok(slot)),
                Err(e) => {
                    lock(&conn.state).slots.remove(&slot);
                    asked.push(Err(Error::spawn(format!(
                        "host {name}: cannot ask for worker {index}: {e}"
                    ))));
                }
            }
        }
        let patience = conn.host_timeout.max(SPAWN_MIN);
        let deadline = deadline(Instant::now(), patience);
        let mut answers: Vec<Option<Result<Spawned, Error>>> = asked
            .iter()
            .map(|a| a.as_ref().err().map(|e| Err(e.clone())))
            .collect();
        let mut st = lock(&conn.state);
        loop {
            for ((k, slot), answer) in asked.iter().enumerate().zip(answers.iter_mut()) {
                let (Ok(slot), None) = (slot, &answer) else {
                    continue;
                };
                let index = workers[k].0;
                if let Some((spawned, bell)) = st
                    .slots
                    .get_mut(slot)
                    .and_then(|inbox| Some((inbox.spawned.take()?, Arc::clone(&inbox.bell))))
                {
                    *answer = Some(match spawned {
                        Ok(pid) => Ok(Spawned {
                            slot: *slot,
                            pid,
                            bell,
                        }),
                        Err(why) => {
                            st.slots.remove(slot);
                            Err(Error::spawn(format!(
                                "host {name}: worker {index} cannot start: {why}"
                            )))
                        }
                    });
                } else if let Some(lost) = &st.lost {
                    *answer = Some(Err(Error::spawn(format!("host {name} was lost: {lost}"))));
                }
            }
            if answers.iter().all(Option::is_some) {
                break;
            }
            st = match deadline {
                None => crate::sync::wait(&conn.changed, st),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        for ((k, slot), answer) in asked.iter().enumerate().zip(answers.iter_mut())
                        {
                            if let (Ok(slot), None) = (slot, &answer) {
                                st.slots.remove(slot);
                                *answer = Some(Err(Error::spawn(format!(
                                    "host {name}: worker {} did not start within {patience:?}",
                                    workers[k].0
                                ))));
                            }
                        }
                        break;
                    }
                    wait_timeout(&conn.changed, st, deadline - now)
                }
            };
        }
        drop(st);
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(Error::spawn(format!("host {name}: no answer")))))
            .collect()
    }
}

impl Drop for Host {
    /// The pool let go of the host: see [`stop_all`].
    fn drop(&mut self) {
        stop_all(&[&self.conn]);
    }
}

/// Ends the agents of `hosts` together: each is told there is no more (its stream ends, so it
/// stops its workers and exits); a launcher still there after [`GRACE`] gets SIGTERM, and
/// SIGKILL after another. Every launcher is reaped on return.
pub(super) fn stop_all(hosts: &[&Conn]) {
    for conn in hosts {
        lock(&conn.state).closed = true;
        conn.outbox.close();
        conn.ring_all();
    }
    let ended = |conn: &&Conn| {
        lock(&conn.launcher)
            .try_wait()
            .map_or(true, |status| status.is_some())
    };
    let until = deadline(Instant::now(), GRACE);
    crate::sync::poll_until(until, || hosts.iter().all(ended));
    for conn in hosts {
        conn.fence("the pool closed".into());
        if !ended(conn) {
            conn.signal_launcher(rustix::process::Signal::TERM);
        }
    }
    let until = deadline(Instant::now(), GRACE);
    crate::sync::poll_until(until, || hosts.iter().all(ended));
    for conn in hosts {
        let mut launcher = lock(&conn.launcher);
        if launcher.try_wait().map_or(true, |s| s.is_none()) {
            let _ = launcher.kill();
            if conn.via == Via::Srun {
                tracing::debug!(host = %conn.name, "srun did not end on SIGTERM; killed it");
            }
        }
        let _ = launcher.wait();
    }
}

impl Conn {
    /// A connection over `outbox` to the agent that `launcher` runs.
    fn new(
        name: &str,
        via: Via,
        outbox: Arc<Outbox>,
        launcher: Child,
        host_timeout: Duration,
        max_message: usize,
    ) -> Conn {
        Conn {
            provided: Mutex::new(std::collections::HashSet::new()),
            max_message,
            name: name.to_string(),
            via,
            outbox,
            launcher_pid: launcher.id(),
            launcher: Mutex::new(launcher),
            state: Mutex::new(HostState::default()),
            changed: Condvar::new(),
            epoch: Instant::now(),
            last_heard: AtomicU64::new(0),
            next_slot: AtomicU32::new(0),
            host_timeout,
        }
    }

    /// The gate of worker `slot`'s sink (see [`Inbox::gate`]).
    pub(super) fn gate(&self, slot: u32) -> Option<Arc<Mutex<()>>> {
        lock(&self.state)
            .slots
            .get(&slot)
            .map(|inbox| Arc::clone(&inbox.gate))
    }

    /// Tells worker `slot`'s sink, if it has one, that its link ended, and takes the sink
    /// away: that is the last it hears.
    fn end_sink(&self, slot: u32) {
        let Some(gate) = self.gate(slot) else {
            return;
        };
        let _gate = lock(&gate);
        let sink = lock(&self.state)
            .slots
            .get_mut(&slot)
            .and_then(|inbox| inbox.sink.take());
        if let Some(sink) = sink {
            sink.arrived(Err(FrameError::Closed));
        }
    }

    fn heard(&self) {
        self.last_heard
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn silence(&self) -> Duration {
        self.epoch.elapsed().saturating_sub(Duration::from_millis(
            self.last_heard.load(Ordering::Relaxed),
        ))
    }

    /// Marks the host lost (once), drops what its outbox held, and wakes every waiter; whether
    /// this call did it.
    fn fence(&self, why: String) -> bool {
        {
            let mut st = lock(&self.state);
            if st.lost.is_some() {
                return false;
            }
            if !st.closed {
                tracing::warn!(host = %self.name, reason = %why, "host lost");
            }
            st.lost = Some(why);
        }
        self.outbox.kill();
        self.ring_all();
        true
    }

    /// Wakes every waiter of the host: a change that concerns all its workers (lost, closed).
    fn ring_all(&self) {
        let st = lock(&self.state);
        for inbox in st.slots.values() {
            inbox.bell.notify_all();
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Declares the host lost: every worker on it ends, and its launcher is stopped. Runs on
    /// the host's own threads (or a failed start's), never holding a lock across the wait.
    pub(super) fn lose(&self, why: String) {
        if !self.fence(why) {
            return;
        }
        self.terminate_launcher();
    }

    fn signal_launcher(&self, signal: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.launcher_pid as i32) {
            // Only while it is not reaped: its pid cannot be another process's yet.
            let launcher = lock(&self.launcher);
            let _ = rustix::process::kill_process(pid, signal);
            drop(launcher);
        }
    }

    /// SIGTERM to the launcher's pid (never its process group: for srun, that would leave
    /// the step running), then SIGKILL after a grace period; reaped either way.
    fn terminate_launcher(&self) {
        let ended = || {
            lock(&self.launcher)
                .try_wait()
                .map_or(true, |status| status.is_some())
        };
        if ended() {
            return;
        }
        self.signal_launcher(rustix::process::Signal::TERM);
        if crate::sync::poll_until(deadline(Instant::now(), GRACE), ended) {
            return;
        }
        let mut launcher = lock(&self.launcher);
        let _ = launcher.kill();
        let _ = launcher.wait();
        if self.via == Via::Srun {
            tracing::debug!(host = %self.name, "srun did not end on SIGTERM; killed it");
        }
    }
}

/// The agent's stdout, marking the host heard at every byte that comes; once the agent has
/// answered (`beating`), each read also keeps the heartbeat (see [`Heard::beat`]), so the
/// host needs no thread for it.
struct Heard<'a, S> {
    stdout: S,
    conn: &'a Conn,
    beating: bool,
    every: Duration,
    last_beat: Instant,
    nonce: u64,
}

impl<S: AsFd> Heard<'_, S> {
    /// The heartbeat: declares the host lost when its launcher has ended or nothing came from
    /// it for the host timeout, and pings the agent when the stream to it is idle (bytes
    /// already on their way are as good as a ping). An error once the host is lost.
    /// Whether bytes from the agent wait to be read.
    fn bytes_waiting(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.stdout,
            rustix::event::PollFlags::IN,
        )];
        let now = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(n) if n > 0)
    }

    fn beat(&mut self) -> io::Result<()> {
        self.last_beat = Instant::now();
        let closed = {
            let st = lock(&self.conn.state);
            if st.lost.is_some() {
                return Err(io::Error::other("the host is lost"));
            }
            st.closed
        };
        if closed {
            // Read on until the agent ends: it may still say how its workers ended.
            return Ok(());
        }
        let exited = lock(&self.conn.launcher).try_wait().ok().flatten();
        if let Some(status) = exited {
            self.conn.lose(format!("its launcher exited ({status})"));
            return Err(io::Error::other("the host is lost"));
        }
        let silent = self.conn.silence();
        // Bytes waiting unread are not silence: the reader was busy (a driver's delivery on
        // this thread took long), not the host.
        if silent > self.conn.host_timeout && !self.bytes_waiting() {
            self.conn
                .lose(format!("nothing came from it for {silent:?}"));
            return Err(io::Error::other("the host is lost"));
        }
        self.nonce += 1;
        self.conn
            .outbox
            .post_if_idle(CONTROL, &Control::Ping(self.nonce).encode());
        Ok(())
    }
}

impl<S: Read + AsFd> Read for Heard<'_, S> {
    /// The stream is non-blocking (see `read_agent`): a read that finds bytes costs one
    /// system call, and only an empty stream is waited for with `poll`, whose timeout keeps
    /// the heartbeat.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.beating && self.last_beat.elapsed() >= self.every {
                self.beat()?;
            }
            match self.stdout.read(buf) {
                Ok(n) => {
                    if n > 0 {
                        self.conn.heard();
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let wait = self.every.saturating_sub(self.last_beat.elapsed());
            let wait = rustix::event::Timespec::try_from(wait).ok();
            let mut fds = [rustix::event::PollFd::new(
                &self.stdout,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, wait.as_ref()) {
                Ok(0) | Err(rustix::io::Errno::INTR) => {
                    if !self.beating {
                        // Before the answer, the start's own deadline bounds the wait.
                        self.last_beat = Instant::now();
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// How often an idle stream carries a ping: a quarter of the host timeout, within 0.2–1 s.
fn heartbeat_every(host_timeout: Duration) -> Duration {
    (host_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(1))
}

/// Tells every sink that its link ended, when the reader that fed them ends.
struct EndSinks<'a>(&'a Conn);

impl Drop for EndSinks<'_> {
    fn drop(&mut self) {
        let slots: Vec<u32> = lock(&self.0.state).slots.keys().copied().collect();
        for slot in slots {
            self.0.end_sink(slot);
        }
    }
}

/// The reader thread: the preamble and the agent's answer to the greeting, sent to `ready`,
/// then every message, each to its worker's inbox, until the stream ends.
fn read_agent(
    conn: &Conn,
    stdout: impl Read + AsFd,
    max_message: usize,
    ready: &mpsc::Sender<Result<AgentReady, String>>,
) {
    let every = heartbeat_every(conn.host_timeout);
    if let Err(e) = rustix::io::ioctl_fionbio(&stdout, true) {
        let _ = ready.send(Err(format!("cannot set up its stream: {e}")));
        return;
    }
    let mut input = Heard {
        stdout,
        conn,
        beating: false,
        every,
        last_beat: Instant::now(),
        nonce: 0,
    };
    match mux::skip_to_preamble(&mut input) {
        Ok(noise) if !noise.is_empty() => {
            tracing::info!(
                host = %conn.name,
                noise = %mux::quote(&noise),
                "skipped output before the host agent's preamble"
            );
        }
        Ok(_) => {}
        Err(why) => {
            let _ = ready.send(Err(why));
            return;
        }
    }
    let mut body = Vec::new();
    let answer = match mux::read_message(&mut input, &mut body, 0) {
        Ok(CONTROL) => AgentReady::parse(&body).map_err(|e| format!("a bad answer: {e}")),
        Ok(channel) => Err(format!("a message for worker {channel} before its answer")),
        Err(FrameError::Closed) => Err("its agent ended before it answered".into()),
        Err(e) => Err(format!("its agent's answer: {e}")),
    };
    let ok = answer.is_ok();
    let _ = ready.send(answer);
    if !ok {
        return;
    }
    input.beating = true;
    // However the reader ends, every worker whose messages it handed to a sink hears of it.
    let _end = EndSinks(conn);
    loop {
        let channel = match mux::read_message(&mut input, &mut body, max_message) {
            Ok(channel) => channel,
            Err(FrameError::Closed) => {
                conn.lose("its launcher closed the stream".into());
                return;
            }
            Err(e) => {
                conn.lose(format!("its stream broke: {e}"));
                return;
            }
        };
        if channel != CONTROL {
            if channel >= conn.next_slot.load(Ordering::Relaxed) {
                // Slots are allotted in order: this one never was. The bytes are not the
                // agent's, and nothing after them can be trusted.
                conn.lose(format!(
                    "its stream broke: a message for worker slot {channel}, which it never had \
                     (did something else write to the stream?)"
                ));
                return;
            }
            let Some(gate) = conn.gate(channel) else {
                continue;
            };
            let _gate = lock(&gate);
            let sink = {
                let mut st = lock(&conn.state);
                let Some(inbox) = st.slots.get_mut(&channel) else {
                    continue;
                };
                match &inbox.sink {
                    Some(sink) => Arc::clone(sink),
                    None => {
                        inbox.frames.push_back(std::mem::take(&mut body));
                        inbox.bell.notify_all();
                        continue;
                    }
                }
            };
            // Its worker's driver runs here, on this thread: no hop to another.
            sink.arrived(Incoming::from_body(&body));
            continue;
        }
        let control = match Control::parse(&body) {
            Ok(control) => control,
            Err(e) => {
                conn.lose(format!("a bad control message: {e}"));
                return;
            }
        };
        let mut st = lock(&conn.state);
        match control {
            Control::Spawned { slot, pid } => {
                if let Some(inbox) = st.slots.get_mut(&slot) {
                    inbox.spawned = Some(Ok(pid));
                }
            }
            Control::SpawnFailed { slot, why } => {
                if let Some(inbox) = st.slots.get_mut(&slot) {
                    inbox.spawned = Some(Err(why.to_string()));
                }
            }
            Control::Exited {
                slot,
                cause,
                progress,
            } => {
                if let Some(inbox) = st.slots.get_mut(&slot) {
                    inbox.exited = Some((cause, progress));
                    inbox.bell.notify_all();
                }
                drop(st);
                conn.end_sink(slot);
                conn.changed.notify_all();
                continue;
            }
            Control::Memory { slot, bytes } => {
                if let Some(inbox) = st.slots.get_mut(&slot) {
                    inbox.resident = Some(bytes);
                }
                continue;
            }
            // The agent pings to be heard; hearing it is the point.
            Control::Ping(_) | Control::Pong(_) => continue,
            other => {
                drop(st);
                conn.lose(format!("an unexpected {other:?} from its agent"));
                return;
            }
        }
        drop(st);
        conn.changed.notify_all();
    }
}

#[cfg(test)]
mod tests;
