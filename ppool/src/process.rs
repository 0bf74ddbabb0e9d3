//! One worker process seen from the supervisor: start it with its channel, greet it, send it
//! frames, read its frames, kill and reap it. Bytes only; no user types.

use crate::entry;
use crate::error::{Error, ExitCause};
use crate::launch::{self, CHANNEL_ENV};
use crate::protocol::{self, FrameBuf, FrameError, FrameReader, Hello, Ready};
use std::ffi::OsString;
use std::io::{self, PipeReader, PipeWriter, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a started worker may take to answer the greeting.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
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
    tx: PipeWriter,
    rx: FrameReader<PipeReader>,
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
            tx: task_w,
            rx: FrameReader::new(result_r, spec.max_frame),
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
        if let Err(e) = worker.tx.write_all(&greeting) {
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

    /// Waits until the worker's channel has something to read; false on timeout.
    fn wait_readable(&self, timeout: Duration) -> Result<bool, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [rustix::event::PollFd::new(
                self.rx.get_ref(),
                rustix::event::PollFlags::IN,
            )];
            let wait = rustix::event::Timespec::try_from(left).ok();
            match rustix::event::poll(&mut fds, wait.as_ref()) {
                Ok(0) if left.is_zero() => return Ok(false),
                Ok(0) => {}
                Ok(_) => return Ok(true),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(Error::spawn(format!(
                        "cannot wait for worker {}: {e}",
                        self.index
                    )));
                }
            }
        }
    }

    /// Sends finished frames in one system call where the pipe takes them all. A worker that
    /// was gone before the first byte is an `ErrorKind::NotConnected` error: nothing reached
    /// it.
    pub(crate) fn send(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        let mut one;
        let mut many;
        let mut left: &mut [io::IoSlice<'_>] = if let [frame] = frames {
            one = [io::IoSlice::new(frame)];
            &mut one
        } else {
            many = frames
                .iter()
                .map(|f| io::IoSlice::new(f))
                .collect::<Vec<_>>();
            &mut many
        };
        let mut sent_any = false;
        while !left.is_empty() {
            match self.tx.write_vectored(left) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    sent_any = true;
                    io::IoSlice::advance_slices(&mut left, n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe && !sent_any => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        format!("the worker was gone before the job was sent ({e})"),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
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

    /// Kills the process (SIGKILL) unless it was reaped already.
    pub(crate) fn kill(&mut self) {
        if self.reaped.is_none() {
            let _ = self.child.kill();
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
            let mut buf = [0u8; 8192];
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
                pending.extend_from_slice(&buf[..n]);
                if let Some(last) = pending.iter().rposition(|&b| b == b'\n') {
                    let rest = pending.split_off(last + 1);
                    write_tagged(&tag, &pending);
                    pending = rest;
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

/// Writes whole lines to our stderr, each prefixed with `tag`.
fn write_tagged(tag: &str, lines: &[u8]) {
    let mut err = io::stderr().lock();
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let _ = err.write_all(tag.as_bytes());
        let _ = err.write_all(line);
    }
}
