//! Workers on other hosts: one host agent per host (see `crate::agent`), started through its
//! launcher, and one stream, the launcher's stdio, that carries all the host's workers (see
//! `crate::mux`). Each worker is a [`Link`] and a [`Peer`] like a local one.
//!
//! Per host, a reader thread takes the agent's messages apart into one inbox per worker, and
//! a heartbeat thread pings the agent and declares the host lost when it is silent for the
//! host timeout or its launcher ends. A lost host is fenced: its launcher is stopped, every
//! worker on it ends with [`ExitCause::Lost`], and the next worker started there gets a new
//! agent. A host that failed to start three times in a row is set aside.

use super::{Launch, LaunchConfig, Link, Peer, Started, Worker};
use crate::error::{Error, ExitCause};
use crate::mux::{self, AgentHello, AgentReady, CONTROL, Control};
use crate::protocol::{self, FrameError};
use crate::remote::{HostSpec, Via, shell_quote};
use crate::sync::{lock, wait_timeout};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

/// What a host's worker may hold unanswered: what its shared-memory ring on the host takes.
const BUDGET: usize = 256 << 10;
/// Failed starts in a row after which a host is set aside.
const SET_ASIDE_AFTER: u32 = 3;
/// How long a stopped launcher has to end before it is killed.
const GRACE: Duration = Duration::from_secs(2);

/// The remote hosts of a pool.
#[derive(Debug)]
pub(crate) struct Remotes {
    config: LaunchConfig,
    host_timeout: Duration,
    hosts: Vec<HostEntry>,
}

#[derive(Debug)]
struct HostEntry {
    spec: HostSpec,
    /// The agent running there, if any.
    agent: Mutex<Option<Arc<Host>>>,
    /// Starts that failed in a row.
    failures: AtomicU32,
}

impl Remotes {
    pub(crate) fn new(config: LaunchConfig, host_timeout: Duration, hosts: Vec<HostSpec>) -> Self {
        Remotes {
            config,
            host_timeout,
            hosts: hosts
                .into_iter()
                .map(|spec| HostEntry {
                    spec,
                    agent: Mutex::new(None),
                    failures: AtomicU32::new(0),
                })
                .collect(),
        }
    }

    /// The workers of every host, in order.
    pub(crate) fn workers(&self) -> usize {
        self.hosts.iter().map(|h| h.spec.workers).sum()
    }

    /// The host of remote worker `i` (counted from the first remote one).
    fn entry(&self, mut i: usize) -> Option<&HostEntry> {
        for host in &self.hosts {
            if i < host.spec.workers {
                return Some(host);
            }
            i -= host.spec.workers;
        }
        None
    }

    /// The name of the host of remote worker `i`.
    pub(crate) fn host_name(&self, i: usize) -> String {
        self.entry(i)
            .map_or_else(|| "?".to_string(), |h| h.spec.name.clone())
    }

    /// Starts remote worker `i` as pool worker `index`.
    pub(crate) fn start(&self, i: usize, index: usize, greeting: &[u8]) -> Result<Worker, Error> {
        let entry = self
            .entry(i)
            .ok_or_else(|| Error::spawn(format!("internal: no host for worker {index}")))?;
        let name = &entry.spec.name;
        if entry.failures.load(Ordering::Relaxed) >= SET_ASIDE_AFTER {
            return Err(Error::spawn(format!(
                "host {name} is set aside: it failed to start {SET_ASIDE_AFTER} times in a row"
            )));
        }
        let host = {
            let mut agent = lock(&entry.agent);
            match agent.as_ref() {
                Some(host) if !host.is_lost() => Arc::clone(host),
                _ => match Host::connect(&entry.spec, &self.config, self.host_timeout) {
                    Ok(host) => {
                        let host = Arc::new(host);
                        *agent = Some(Arc::clone(&host));
                        tracing::info!(host = %name, "host agent started");
                        host
                    }
                    Err(e) => {
                        let failures = entry.failures.fetch_add(1, Ordering::Relaxed) + 1;
                        if failures >= SET_ASIDE_AFTER {
                            tracing::warn!(host = %name, error = &e as &dyn std::error::Error, "host set aside");
                        }
                        return Err(e);
                    }
                },
            }
        };
        match host.spawn(index, greeting, self.host_timeout) {
            Ok(worker) => {
                entry.failures.store(0, Ordering::Relaxed);
                Ok(worker)
            }
            Err(e) => {
                entry.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

/// An agent on a host, reached through its launcher.
#[derive(Debug)]
struct Host {
    shared: Arc<Shared>,
}

/// What the host's threads share with its links and peers.
#[derive(Debug)]
struct Shared {
    name: String,
    via: Via,
    /// The launcher's stdin: the stream to the agent. `None` once closed.
    writer: Mutex<Option<ChildStdin>>,
    launcher: Mutex<Child>,
    launcher_pid: u32,
    state: Mutex<HostState>,
    changed: Condvar,
    epoch: Instant,
    /// Milliseconds since `epoch` when the agent was last heard.
    last_heard: AtomicU64,
    next_slot: AtomicU32,
    host_timeout: Duration,
}

#[derive(Debug, Default)]
struct HostState {
    slots: HashMap<u32, Inbox>,
    /// Why the host was lost, once it was.
    lost: Option<String>,
    /// The pool let go of it.
    closed: bool,
}

/// What came from the agent for one worker.
#[derive(Debug, Default)]
struct Inbox {
    frames: VecDeque<Vec<u8>>,
    spawned: Option<Result<u32, String>>,
    exited: Option<(ExitCause, Option<(u64, u32)>)>,
}

impl Host {
    /// Starts the agent on `spec`'s host and checks that it runs this very build.
    fn connect(
        spec: &HostSpec,
        config: &LaunchConfig,
        host_timeout: Duration,
    ) -> Result<Host, Error> {
        let name = &spec.name;
        let spawn_error = |why: String| Error::spawn(format!("host {name}: {why}"));
        let copied = if spec.copy {
            Some(install(spec)?)
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
            drop(crate::transport::stderr::forward_stderr(
                stderr,
                String::new(),
                config.dispatch.clone(),
            ));
        }
        let launcher_pid = child.id();
        let shared = Arc::new(Shared {
            name: name.clone(),
            via: spec.via.clone(),
            writer: Mutex::new(Some(stdin)),
            launcher: Mutex::new(child),
            launcher_pid,
            state: Mutex::new(HostState::default()),
            changed: Condvar::new(),
            epoch: Instant::now(),
            last_heard: AtomicU64::new(0),
            next_slot: AtomicU32::new(0),
            host_timeout,
        });
        let host = Host {
            shared: Arc::clone(&shared),
        };
        let hello = AgentHello {
            version: mux::MUX_VERSION,
            pool: config.pool.clone(),
            max_frame: config.max_frame as u64,
            host_timeout_ms: host_timeout.as_millis() as u64,
            disable_gpu: config.disable_gpu,
            forward_stderr: config.forward_stderr,
            env: config
                .env
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        };
        // Sent at once: it waits in the pipe while the launcher logs in.
        if let Err(e) = shared.write(CONTROL, &hello.encode()) {
            let why = host.stop_and_explain(&format!("cannot greet its agent: {e}"));
            return Err(spawn_error(why));
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let reader = Arc::clone(&shared);
        let max = config.max_frame;
        std::thread::Builder::new()
            .name(format!("ppool-host-{name}"))
            .spawn(move || read_agent(&reader, stdout, max, &ready_tx))
            .map_err(|e| spawn_error(format!("cannot start its reader thread: {e}")))?;
        let answer = ready_rx.recv_timeout(host_timeout.max(Duration::from_secs(10)));
        let ready = match answer {
            Ok(Ok(ready)) => ready,
            Ok(Err(why)) => return Err(spawn_error(host.stop_and_explain(&why))),
            Err(_) => {
                let why = format!(
                    "its agent did not answer within {:?}",
                    host_timeout.max(Duration::from_secs(10))
                );
                return Err(spawn_error(host.stop_and_explain(&why)));
            }
        };
        let ours = (
            crate::relaunch::exe_identity().map_err(|e| spawn_error(e.clone()))?,
            crate::entry::build_id(),
            crate::relaunch::target(),
        );
        if (ready.exe, ready.build_id, &ready.target) != (ours.0, ours.1, &ours.2) {
            host.stop();
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
        let beat = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("ppool-beat-{name}"))
            .spawn(move || heartbeat(&beat))
            .map_err(|e| spawn_error(format!("cannot start its heartbeat thread: {e}")))?;
        Ok(host)
    }

    fn is_lost(&self) -> bool {
        lock(&self.shared.state).lost.is_some()
    }

    /// Stops the launcher after a failed start, and says why, with how it ended.
    fn stop_and_explain(&self, why: &str) -> String {
        self.stop();
        let status = lock(&self.shared.launcher).try_wait().ok().flatten();
        match status {
            Some(status) if !status.success() => format!("{why} (its launcher: {status})"),
            _ => why.to_string(),
        }
    }

    fn stop(&self) {
        self.shared.lose("the pool stopped it".into());
    }

    /// Asks the agent for a worker in a new slot, and waits until it runs.
    fn spawn(&self, index: usize, greeting: &[u8], timeout: Duration) -> Result<Worker, Error> {
        let shared = &self.shared;
        let name = &shared.name;
        let slot = shared.next_slot.fetch_add(1, Ordering::Relaxed);
        lock(&shared.state).slots.insert(slot, Inbox::default());
        let index32 = u32::try_from(index).map_err(|_| Error::spawn("too many workers"))?;
        let spawn = Control::Spawn {
            slot,
            index: index32,
            greeting,
        };
        if let Err(e) = shared.write(CONTROL, &spawn.encode()) {
            return Err(Error::spawn(format!(
                "host {name}: cannot ask for worker {index}: {e}"
            )));
        }
        let deadline = Instant::now() + timeout.max(Duration::from_secs(30));
        let mut st = lock(&shared.state);
        loop {
            if let Some(inbox) = st.slots.get_mut(&slot)
                && let Some(spawned) = inbox.spawned.take()
            {
                drop(st);
                return match spawned {
                    Ok(pid) => Ok(Worker {
                        link: Box::new(RemoteLink {
                            host: Arc::clone(shared),
                            slot,
                            body: Vec::new(),
                        }),
                        peer: Arc::new(RemotePeer {
                            host: Arc::clone(shared),
                            slot,
                            pid,
                        }),
                    }),
                    Err(why) => {
                        lock(&shared.state).slots.remove(&slot);
                        Err(Error::spawn(format!(
                            "host {name}: worker {index} cannot start: {why}"
                        )))
                    }
                };
            }
            if let Some(lost) = &st.lost {
                return Err(Error::spawn(format!("host {name} was lost: {lost}")));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::spawn(format!(
                    "host {name}: worker {index} did not start within {timeout:?}"
                )));
            }
            st = wait_timeout(&shared.changed, st, deadline - now);
        }
    }
}

impl Drop for Host {
    /// The pool let go of the host: its agent sees its stdin end, stops its workers and
    /// exits; the launcher is stopped if it lingers.
    fn drop(&mut self) {
        let shared = &self.shared;
        lock(&shared.state).closed = true;
        lock(&shared.writer).take();
        let deadline = Instant::now() + GRACE;
        loop {
            let done = lock(&shared.launcher)
                .try_wait()
                .map_or(true, |s| s.is_some());
            if done || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        shared.lose("the pool closed".into());
        shared.changed.notify_all();
    }
}

impl Shared {
    /// Writes one message to the agent.
    fn write(&self, channel: u32, body: &[u8]) -> io::Result<()> {
        let mut writer = lock(&self.writer);
        let Some(out) = writer.as_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("host {} is lost", self.name),
            ));
        };
        crate::transport::block_sigpipe_on_this_thread();
        mux::write_message(out, channel, body)?;
        out.flush()
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

    /// Declares the host lost: every worker on it ends, and its launcher is stopped.
    fn lose(&self, why: String) {
        {
            let mut st = lock(&self.state);
            if st.lost.is_some() {
                return;
            }
            if !st.closed {
                tracing::warn!(host = %self.name, reason = %why, "host lost");
            }
            st.lost = Some(why);
        }
        self.changed.notify_all();
        lock(&self.writer).take();
        self.terminate_launcher();
    }

    /// SIGTERM to the launcher's pid (never its process group: for srun, that would leave
    /// the step running), then SIGKILL after a grace period.
    fn terminate_launcher(&self) {
        let pid = self.launcher_pid;
        let mut launcher = lock(&self.launcher);
        if launcher.try_wait().map_or(true, |s| s.is_some()) {
            return;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if launcher.try_wait().map_or(true, |s| s.is_some()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = launcher.kill();
        let _ = launcher.wait();
        if self.via == Via::Srun {
            tracing::debug!(host = %self.name, "srun did not end on SIGTERM; killed it");
        }
    }
}

/// The command line that starts the agent on `spec`'s host. ssh hands its command to the
/// host's shell, so there every word is quoted; the other launchers run it as it is. A copied
/// program is found through the host's `$HOME`, so the command goes through `sh` there.
fn agent_command(spec: &HostSpec, copied: Option<&str>) -> Result<Vec<OsString>, Error> {
    let agent = format!("{}=1", crate::relaunch::AGENT_ENV);
    let mut words: Vec<OsString> = match copied {
        None => vec!["env".into(), agent.into(), spec.program.clone()],
        Some(path) => vec![
            "sh".into(),
            "-c".into(),
            format!("exec env {agent} \"$HOME/{path}\" \"$@\"").into(),
            "sh".into(),
        ],
    };
    words.extend(crate::relaunch::worker_args()?);
    Ok(launch_words(spec, words))
}

/// `spec`'s launcher followed by `words`, quoted for the host's shell where ssh needs it.
fn launch_words(spec: &HostSpec, words: Vec<OsString>) -> Vec<OsString> {
    let mut argv = spec.launcher.clone();
    match spec.via {
        Via::Ssh => argv.extend(
            words
                .iter()
                .map(|w| OsString::from(shell_quote(&w.to_string_lossy()))),
        ),
        Via::Srun | Via::Command => argv.extend(words),
    }
    argv
}

/// Copies this program to `spec`'s host, into `~/.cache/ppool/<build>/` (content-addressed:
/// the build's identity), unless it is there already; returns its path under `$HOME`. Two
/// commands of their own over the launcher, never the pool's channel: one that looks, and
/// one that writes a temporary file and renames it into place, so that a copy cut short is
/// never run.
fn install(spec: &HostSpec) -> Result<String, Error> {
    let name = &spec.name;
    let fail = |why: String| Error::spawn(format!("host {name}: cannot copy the program: {why}"));
    let id = crate::relaunch::exe_identity().map_err(&fail)?;
    let file: String = crate::relaunch::program_path()?
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = format!(".cache/ppool/{id:016x}/{file}");
    let sh = |script: String| -> Vec<OsString> {
        launch_words(spec, vec!["sh".into(), "-c".into(), script.into()])
    };
    let look = sh(format!("test -x \"$HOME/{path}\""));
    let present = Command::new(&look[0])
        .args(&look[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| fail(format!("cannot run its launcher: {e}")))?;
    if present.success() {
        return Ok(path);
    }
    let write = sh(format!(
        "set -e; d=\"$HOME/.cache/ppool/{id:016x}\"; mkdir -p \"$d\"; t=\"$d/.{file}.$$\"; \
         cat > \"$t\"; chmod 755 \"$t\"; mv -f \"$t\" \"$d/{file}\""
    ));
    let mut child = Command::new(&write[0])
        .args(&write[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("cannot run its launcher: {e}")))?;
    let exe = std::fs::read(crate::relaunch::program_path()?)
        .map_err(|e| fail(format!("cannot read this program: {e}")))?;
    let sent = child.stdin.take().map(|mut stdin| {
        crate::transport::block_sigpipe_on_this_thread();
        stdin.write_all(&exe)
    });
    let status = child.wait().map_err(|e| fail(e.to_string()))?;
    match sent {
        Some(Ok(())) if status.success() => {
            tracing::info!(host = %name, path = %path, "copied the program");
            Ok(path)
        }
        Some(Err(e)) => Err(fail(format!("{e} ({status})"))),
        _ => Err(fail(format!("the copy command failed ({status})"))),
    }
}

/// The reader thread: the preamble and the agent's answer to the greeting, sent to `ready`,
/// then every message, each to its worker's inbox, until the stream ends.
fn read_agent(
    shared: &Shared,
    mut stdout: ChildStdout,
    max_frame: usize,
    ready: &mpsc::Sender<Result<AgentReady, String>>,
) {
    match mux::skip_to_preamble(&mut stdout) {
        Ok(noise) if !noise.is_empty() => {
            tracing::info!(
                host = %shared.name,
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
    shared.heard();
    let mut body = Vec::new();
    let answer = match mux::read_message(&mut stdout, &mut body, 0) {
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
    // Results merged on the host may exceed a frame; the length field bounds them.
    let limit = (u32::MAX as usize).max(max_frame);
    loop {
        let channel = match mux::read_message(&mut stdout, &mut body, limit) {
            Ok(channel) => channel,
            Err(FrameError::Closed) => {
                shared.lose("its launcher closed the stream".into());
                return;
            }
            Err(e) => {
                shared.lose(format!("its stream broke: {e}"));
                return;
            }
        };
        shared.heard();
        if channel != CONTROL {
            let mut st = lock(&shared.state);
            if let Some(inbox) = st.slots.get_mut(&channel) {
                inbox.frames.push_back(std::mem::take(&mut body));
                drop(st);
                shared.changed.notify_all();
            }
            continue;
        }
        let control = match Control::parse(&body) {
            Ok(control) => control,
            Err(e) => {
                shared.lose(format!("a bad control message: {e}"));
                return;
            }
        };
        let mut st = lock(&shared.state);
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
                }
            }
            // The agent pings only to be heard; hearing it is the point.
            Control::Ping(_) | Control::Pong(_) => {}
            other => {
                drop(st);
                shared.lose(format!("an unexpected {other:?} from its agent"));
                return;
            }
        }
        drop(st);
        shared.changed.notify_all();
    }
}

/// The heartbeat thread: pings the agent, and declares the host lost when it is silent for
/// the host timeout or its launcher has ended.
fn heartbeat(shared: &Shared) {
    let every = (shared.host_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(1));
    let mut nonce = 0u64;
    loop {
        std::thread::sleep(every);
        {
            let st = lock(&shared.state);
            if st.lost.is_some() || st.closed {
                return;
            }
        }
        let exited = lock(&shared.launcher).try_wait().ok().flatten();
        if let Some(status) = exited {
            shared.lose(format!("its launcher exited ({status})"));
            return;
        }
        let silent = shared.silence();
        if silent > shared.host_timeout {
            shared.lose(format!("nothing came from it for {silent:?}"));
            return;
        }
        // A writer busy with a large frame is traffic too: skip this ping rather than wait.
        if let Ok(mut writer) = shared.writer.try_lock()
            && let Some(out) = writer.as_mut()
        {
            nonce += 1;
            let _ = mux::write_message(out, CONTROL, &Control::Ping(nonce).encode())
                .and_then(|()| out.flush());
        }
    }
}

/// One worker on a host.
#[derive(Debug)]
struct RemoteLink {
    host: Arc<Shared>,
    slot: u32,
    body: Vec<u8>,
}

impl RemoteLink {
    /// Waits until `ready` holds for this slot's inbox or the host is lost, at most
    /// `timeout`; whether it held (or the host was lost).
    fn wait_for(&self, timeout: Option<Duration>, ready: impl Fn(&Inbox) -> bool) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = lock(&self.host.state);
        loop {
            let done = st.slots.get(&self.slot).is_none_or(&ready);
            if done || st.lost.is_some() {
                return true;
            }
            match deadline {
                None => st = crate::sync::wait(&self.host.changed, st),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    st = wait_timeout(&self.host.changed, st, deadline - now);
                }
            }
        }
    }
}

impl Link for RemoteLink {
    fn send(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        if lock(&self.host.state).lost.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("host {} was lost before the job was sent", self.host.name),
            ));
        }
        for frames in frames {
            let mut rest: &[u8] = frames;
            while let Some((body, next)) = protocol::split_frame(rest) {
                self.host
                    .write(self.slot, body)
                    .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))?;
                rest = next;
            }
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<&[u8], FrameError> {
        let mut st = lock(&self.host.state);
        loop {
            let lost = st.lost.is_some();
            let Some(inbox) = st.slots.get_mut(&self.slot) else {
                return Err(FrameError::Closed);
            };
            if let Some(frame) = inbox.frames.pop_front() {
                self.body = frame;
                return Ok(&self.body);
            }
            if inbox.exited.is_some() || lost {
                return Err(FrameError::Closed);
            }
            st = crate::sync::wait(&self.host.changed, st);
        }
    }

    fn wait_readable(&mut self, _spin: Duration, timeout: Option<Duration>) -> io::Result<bool> {
        Ok(self.wait_for(timeout, |inbox| {
            !inbox.frames.is_empty() || inbox.exited.is_some()
        }))
    }

    fn budget(&self) -> usize {
        BUDGET
    }

    /// The agent read the worker's progress word when it died; a lost host tells nothing,
    /// and what it sent last may not have arrived.
    fn started(&mut self, job: u64, _sent_bytes: usize) -> Started {
        let st = lock(&self.host.state);
        match st.slots.get(&self.slot).and_then(|inbox| inbox.exited) {
            Some((_, Some((j, n)))) if j == job => Started::Upto(n),
            Some((_, Some(_))) => Started::None,
            Some((_, None)) => Started::Unknown,
            None => Started::Lost,
        }
    }

    fn shrink_buffers(&mut self) {
        protocol::shrink(&mut self.body);
    }
}

/// The process of a worker on a host, as its agent reports it.
#[derive(Debug)]
struct RemotePeer {
    host: Arc<Shared>,
    slot: u32,
    pid: u32,
}

impl RemotePeer {
    fn exit(&self) -> Option<ExitCause> {
        let st = lock(&self.host.state);
        match st.slots.get(&self.slot).and_then(|inbox| inbox.exited) {
            Some((cause, _)) => Some(cause),
            None => st.lost.is_some().then_some(ExitCause::Lost),
        }
    }

    fn wait(&self, timeout: Duration) -> Option<ExitCause> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.host.state);
        loop {
            match st.slots.get(&self.slot).and_then(|inbox| inbox.exited) {
                Some((cause, _)) => return Some(cause),
                None if st.lost.is_some() => return Some(ExitCause::Lost),
                None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = wait_timeout(&self.host.changed, st, deadline - now);
        }
    }
}

impl Peer for RemotePeer {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn kill(&self) {
        if self.exit().is_none() {
            let _ = self
                .host
                .write(CONTROL, &Control::Kill { slot: self.slot }.encode());
        }
    }

    fn wait_exit(&self, timeout: Duration) -> bool {
        self.wait(timeout).is_some()
    }

    /// The agent reports every death; a host that stops answering is lost within the host
    /// timeout, so the wait is bounded by it.
    fn reap(&self) -> ExitCause {
        self.wait(self.host.host_timeout + GRACE)
            .unwrap_or(ExitCause::Lost)
    }

    fn resident_bytes(&self) -> Option<u64> {
        None
    }
}

impl Drop for RemotePeer {
    fn drop(&mut self) {
        self.kill();
        lock(&self.host.state).slots.remove(&self.slot);
    }
}

/// Local workers, then remote ones: one launcher for a pool that has both.
#[derive(Debug)]
pub(crate) struct Mixed {
    pub(crate) local: Box<dyn Launch>,
    pub(crate) local_workers: usize,
    pub(crate) remote: Remotes,
}

impl Launch for Mixed {
    fn start(&self, index: usize, greeting: &[u8]) -> Result<Worker, Error> {
        match index.checked_sub(self.local_workers) {
            None => self.local.start(index, greeting),
            Some(i) => self.remote.start(i, index, greeting),
        }
    }

    fn host(&self, index: usize) -> String {
        match index.checked_sub(self.local_workers) {
            None => self.local.host(index),
            Some(i) => self.remote.host_name(i),
        }
    }
}
