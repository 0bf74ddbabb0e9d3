//! One worker process seen from the supervisor: start it with its channel, greet it, send it
//! frames, read its frames, kill and reap it. Bytes only; no user types.

use crate::entry;
use crate::error::{Error, ExitCause};
use crate::launch::{self, CHANNEL_ENV};
use crate::protocol::{self, FrameBuf, FrameError, FrameReader, Hello, Ready};
use crate::watched::{self, Pidfd, WatchedReader};
use std::ffi::OsString;
use std::io::{self, PipeWriter, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a started worker may take to answer the greeting.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a worker's initializer may run.
const INIT_TIMEOUT: Duration = Duration::from_secs(300);
/// The pipe size asked for (Linux's default limit for unprivileged processes).
const PIPE_SIZE: usize = 1 << 20;
/// How long a worker-exit hook may run.
const EXIT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a retired worker may take to exit before it is killed.
const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// Everything needed to start a worker of a pool.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) pool: String,
    pub(crate) entry: &'static str,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) disable_gpu: bool,
    pub(crate) max_frame: usize,
    pub(crate) initializer: Option<(&'static str, Vec<u8>)>,
    pub(crate) on_exit: Option<(&'static str, Vec<u8>)>,
    pub(crate) token: u64,
    /// CPUs to pin workers to: worker `i` gets `cpus[i % len]`.
    pub(crate) cpu_affinity: Vec<usize>,
    /// Tag each line of a worker's stderr with the pool name and worker index.
    pub(crate) forward_stderr: bool,
}

/// A running worker process and its channel.
#[derive(Debug)]
pub(crate) struct WorkerProc {
    pub(crate) index: usize,
    pub(crate) pid: u32,
    child: Child,
    reaped: Option<ExitCause>,
    /// The thread that copies the worker's stderr, joined once the worker is reaped.
    stderr: Option<Forwarder>,
    /// The process, for kills that can never hit a recycled pid.
    pidfd: Arc<Pidfd>,
    tx: PipeWriter,
    rx: FrameReader<WatchedReader>,
    body: Vec<u8>,
    /// Tasks this process has finished.
    pub(crate) tasks_done: u64,
    /// Bytes the task pipe holds.
    pub(crate) capacity: usize,
}

impl WorkerProc {
    /// Starts worker `index` and sends its greeting; [`ready`](Self::ready) waits for the
    /// answer, so that several workers start at once.
    pub(crate) fn spawn(spec: &Spec, index: usize) -> Result<Self, Error> {
        let pipe_error = |e: io::Error| Error::spawn(format!("cannot create a pipe: {e}"));
        let (task_r, task_w) = io::pipe().map_err(pipe_error)?;
        let (result_r, result_w) = io::pipe().map_err(pipe_error)?;
        // Bigger pipes mean fewer wake-ups for large payloads and more jobs sent ahead; the
        // system may refuse (pipe-max-size), and the capacity we got is what we plan with.
        let _ = rustix::pipe::fcntl_setpipe_size(&task_w, PIPE_SIZE);
        let _ = rustix::pipe::fcntl_setpipe_size(&result_r, PIPE_SIZE);
        let capacity = rustix::pipe::fcntl_getpipe_size(&task_w).unwrap_or(4096);
        let mut command = launch::worker_command()?;
        let child_fds = [task_r.as_raw_fd(), result_w.as_raw_fd()];
        command
            .env(
                CHANNEL_ENV,
                format!("{},{},{}", child_fds[0], child_fds[1], spec.max_frame),
            )
            .stdin(Stdio::null());
        if spec.disable_gpu {
            command.env("CUDA_VISIBLE_DEVICES", "-1");
        }
        command.envs(spec.env.iter().map(|(k, v)| (k, v)));
        if spec.forward_stderr {
            command.stderr(Stdio::piped());
        }
        let cpu = (!spec.cpu_affinity.is_empty()).then(|| {
            let mut set = rustix::thread::CpuSet::new();
            set.set(spec.cpu_affinity[index % spec.cpu_affinity.len()]);
            set
        });
        // SAFETY: the closure runs between fork and exec and only makes the `fcntl` and
        // `sched_setaffinity` system calls, which are async-signal-safe. It lets exactly the
        // two channel descriptors survive `exec`, and pins the worker if asked to.
        unsafe {
            command.pre_exec(move || {
                for fd in child_fds {
                    let fd = BorrowedFd::borrow_raw(fd);
                    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                }
                if let Some(set) = &cpu {
                    rustix::thread::sched_setaffinity(None, set)?;
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| Error::spawn(format!("cannot start worker {index}: {e}")))?;
        drop((task_r, result_w));
        let pid = child.id();
        let pidfd = Arc::new(Pidfd::open(pid));
        let io_error =
            |e: io::Error| Error::spawn(format!("cannot set up worker {index}'s pipes: {e}"));
        let rx = WatchedReader::new(result_r, Arc::clone(&pidfd)).map_err(io_error)?;
        watched::nonblocking(&task_w).map_err(io_error)?;
        let stderr = child
            .stderr
            .take()
            .and_then(|stderr| forward_stderr(stderr, format!("[{}:{index}] ", spec.pool)));
        let mut worker = WorkerProc {
            index,
            pid,
            child,
            reaped: None,
            stderr,
            pidfd,
            tx: task_w,
            rx: FrameReader::new(rx, spec.max_frame),
            body: Vec::new(),
            tasks_done: 0,
            capacity,
        };
        let mut frame = FrameBuf::default();
        Hello {
            build_id: entry::build_id(),
            token: spec.token,
            worker: index as u32,
            pool: &spec.pool,
            entry: spec.entry,
        }
        .write(&mut frame);
        let mut greeting = frame.take();
        if let Some((name, args)) = &spec.initializer {
            protocol::write_init(&mut frame, name, args);
            greeting.extend_from_slice(frame.finish());
        }
        if let Some((name, args)) = &spec.on_exit {
            protocol::write_on_exit(&mut frame, name, args);
            greeting.extend_from_slice(frame.finish());
        }
        // Greeting and INIT fit in the pipe's buffer for any sane initializer; a huge one
        // blocks until the worker reads it, which it does first thing.
        if let Err(e) = worker.send(&[&greeting]) {
            return Err(worker.start_failure(&format!("cannot greet it: {e}")));
        }
        Ok(worker)
    }

    /// Waits for the worker's answer to the greeting, and for its initializer.
    pub(crate) fn ready(&mut self, spec: &Spec) -> Result<(), Error> {
        if !self.wait_readable(READY_TIMEOUT)? {
            self.kill();
            return Err(Error::spawn(format!(
                "worker {} (pid {}) did not answer within {READY_TIMEOUT:?}",
                self.index, self.pid
            )));
        }
        let body = match self.rx.read(&mut self.body) {
            Ok(()) => &self.body,
            Err(e) => return Err(self.start_failure(&e.to_string())),
        };
        match Ready::parse(body) {
            Ok(Ready::Ok {
                build_id, token, ..
            }) => {
                if build_id != entry::build_id() || token != spec.token {
                    return Err(self.start_failure("it is a worker of another build"));
                }
            }
            Ok(Ready::Refused(why)) => {
                let why = why.to_string();
                return Err(self.start_failure(&format!("it refused: {why}")));
            }
            Err(e) => return Err(self.start_failure(&e.to_string())),
        }
        if let Some((name, _)) = &spec.initializer {
            if !self.wait_readable(INIT_TIMEOUT)? {
                return Err(self.start_failure(&format!(
                    "its initializer `{name}` did not finish within {INIT_TIMEOUT:?}"
                )));
            }
            let done = match self.rx.read(&mut self.body) {
                Ok(()) => protocol::parse_init_done(&self.body).map_err(|e| e.to_string()),
                Err(e) => Err(format!("its initializer `{name}` did not finish: {e}")),
            };
            match done {
                Ok(Ok(())) => {}
                Ok(Err(why)) | Err(why) => return Err(self.start_failure(&why)),
            }
        }
        Ok(())
    }

    /// Kills and reaps a worker that failed to start, and says how it ended.
    fn start_failure(&mut self, what: &str) -> Error {
        self.kill();
        let cause = self.reap();
        Error::spawn(format!(
            "worker {} (pid {}): {what} ({cause})",
            self.index, self.pid
        ))
    }

    /// Waits until the worker's channel has something to read, or the worker has ended; false
    /// on timeout.
    fn wait_readable(&self, timeout: Duration) -> Result<bool, Error> {
        if self.rx.has_buffered() {
            return Ok(true);
        }
        let flags = rustix::event::PollFlags::IN;
        match watched::wait(self.rx.get_ref().as_fd(), flags, &self.pidfd, Some(timeout)) {
            Ok(ready) => Ok(ready != watched::Ready::TimedOut),
            Err(e) => Err(Error::spawn(format!(
                "cannot wait for worker {}: {e}",
                self.index
            ))),
        }
    }

    /// Sends finished frames in one system call where the pipe takes them all. A worker that
    /// was gone before the first byte is an `ErrorKind::NotConnected` error: nothing reached
    /// it.
    pub(crate) fn send(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        let mut sent_any = false;
        match watched::write_all_vectored(&self.tx, &self.pidfd, frames, &mut sent_any) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe && !sent_any => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("the worker was gone before the job was sent ({e})"),
            )),
            other => other,
        }
    }

    /// The handle through which the watchdog and `shutdown` kill this worker.
    pub(crate) fn pidfd(&self) -> &Arc<Pidfd> {
        &self.pidfd
    }

    /// Bytes sent to the worker that it has not read yet, if the system says.
    pub(crate) fn unread_task_bytes(&self) -> Option<u64> {
        rustix::io::ioctl_fionread(&self.tx).ok()
    }

    /// Reads one frame into [`body`](Self::body).
    pub(crate) fn recv(&mut self) -> Result<(), FrameError> {
        self.rx.read(&mut self.body)
    }

    /// Spins up to `limit` until the worker's answer can be read without sleeping.
    pub(crate) fn spin_until_readable(&self, limit: Duration) {
        self.rx.spin_until_readable(limit);
    }

    /// The body of the frame last received.
    pub(crate) fn body(&self) -> &[u8] {
        &self.body
    }

    /// Gives back the memory of a receive buffer that one big frame grew.
    pub(crate) fn shrink_buffers(&mut self) {
        protocol::shrink(&mut self.body);
    }

    /// Kills the process (SIGKILL) unless it was reaped already.
    pub(crate) fn kill(&mut self) {
        if self.reaped.is_none() {
            self.pidfd.kill();
        }
    }

    /// Waits for the process to end and says how it did.
    pub(crate) fn reap(&mut self) -> ExitCause {
        if let Some(cause) = self.reaped {
            return cause;
        }
        let cause = match self.child.wait() {
            Ok(status) => ExitCause::from_status(status),
            Err(_) => ExitCause::Unknown,
        };
        self.reaped = Some(cause);
        cause
    }

    /// Asks the worker to exit after its current work and reaps it; kills it if it lingers.
    /// With a worker-exit hook, returns the EXITED frame's body.
    pub(crate) fn retire(mut self, has_exit_hook: bool) -> Option<Vec<u8>> {
        let mut frame = FrameBuf::default();
        protocol::write_exit(&mut frame);
        let mut exited = None;
        if self.send(&[frame.finish()]).is_ok() {
            if has_exit_hook
                && self.wait_readable(EXIT_HOOK_TIMEOUT).unwrap_or(false)
                && self.recv().is_ok()
            {
                exited = Some(std::mem::take(&mut self.body));
            }
            // The worker's channel closes as it exits: wait for that, then reap it.
            let deadline = Instant::now() + RETIRE_GRACE;
            let _ = self.wait_readable(RETIRE_GRACE);
            let mut pause = Duration::from_micros(20);
            while Instant::now() < deadline {
                match self.child.try_wait() {
                    Ok(Some(status)) => {
                        self.reaped = Some(ExitCause::from_status(status));
                        return exited;
                    }
                    Ok(None) => {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        }
        // Drop kills and reaps.
        exited
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill();
        self.reap();
        if let Some(forwarder) = self.stderr.take() {
            forwarder.stop.store(true, Ordering::Release);
            let _ = forwarder.thread.join();
        }
    }
}

/// A thread that copies a worker's stderr, and the flag that tells it the worker is gone.
#[derive(Debug)]
struct Forwarder {
    thread: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

/// The longest piece of a line without an end that the forwarder holds before it writes it.
const FORWARD_LINE_CAP: usize = 64 * 1024;

/// How long the forwarder waits for output before it looks at its stop flag.
const FORWARD_POLL: Duration = Duration::from_millis(100);

/// Copies a worker's stderr to ours line by line, each line tagged with `tag`, until the
/// pipe closes or, once the worker is reaped, until nothing more is waiting (a process the
/// worker started may hold the pipe open).
fn forward_stderr(stderr: std::process::ChildStderr, tag: String) -> Option<Forwarder> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let spawned = std::thread::Builder::new()
        .name("ppool-stderr".into())
        .spawn(move || {
            use std::io::Read;
            let mut stderr = stderr;
            let mut pending: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut reads_after_stop = 0;
            loop {
                let stopping = stopped.load(Ordering::Acquire);
                if stopping {
                    reads_after_stop += 1;
                    if reads_after_stop > 64 {
                        break;
                    }
                }
                let wait = if stopping {
                    Duration::ZERO
                } else {
                    FORWARD_POLL
                };
                let wait = rustix::event::Timespec::try_from(wait).ok();
                let mut fds = [rustix::event::PollFd::new(
                    &stderr,
                    rustix::event::PollFlags::IN,
                )];
                match rustix::event::poll(&mut fds, wait.as_ref()) {
                    Ok(0) if stopping => break,
                    Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                    Ok(_) => {}
                    Err(_) => break,
                }
                let n = match stderr.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let scanned = pending.len();
                pending.extend_from_slice(&buf[..n]);
                // Only the new bytes are scanned, so a long line costs linear time.
                let end = pending[scanned..]
                    .iter()
                    .rposition(|&b| b == b'\n' || b == b'\r')
                    .map(|at| scanned + at + 1);
                if let Some(end) = end {
                    write_tagged(&tag, &pending[..end]);
                    pending.drain(..end);
                }
                if pending.len() >= FORWARD_LINE_CAP {
                    // A line this long without an end is forwarded in pieces.
                    pending.push(b'\n');
                    write_tagged(&tag, &pending);
                    pending.clear();
                }
            }
            if !pending.is_empty() {
                pending.push(b'\n');
                write_tagged(&tag, &pending);
            }
        });
    match spawned {
        Ok(thread) => Some(Forwarder { thread, stop }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot forward a worker's stderr");
            None
        }
    }
}

/// Writes whole lines to our stderr, each prefixed with `tag`. A line ends at `\n`, or at
/// `\r` (a progress line that redraws itself).
fn write_tagged(tag: &str, lines: &[u8]) {
    let mut err = io::stderr().lock();
    for line in lines.split_inclusive(|&b| b == b'\n' || b == b'\r') {
        let _ = err.write_all(tag.as_bytes());
        let _ = err.write_all(line);
    }
}
