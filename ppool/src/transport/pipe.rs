//! Local workers over two pipes: this very binary, started again as a worker that inherits the
//! two pipe ends of its channel, driven through non-blocking ends watched with a pidfd.

use super::poll::{self, Pidfd, WatchedReader};
use super::stderr::{Forwarder, forward_stderr};
use super::{Launch, LaunchConfig, Link, Peer, Worker};
use crate::error::{Error, ExitCause};
use crate::protocol::{self, FrameError, FrameReader};
use crate::sync::lock;
use crate::worker::bootstrap::ChannelDesc;
use std::io::{self, PipeWriter};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The pipe size asked for (Linux's default limit for unprivileged processes).
const PIPE_SIZE: usize = 1 << 20;

/// Starts local worker processes.
#[derive(Debug)]
pub(crate) struct Pipes {
    config: LaunchConfig,
}

impl Pipes {
    pub(crate) fn new(config: LaunchConfig) -> Self {
        Pipes { config }
    }
}

impl Launch for Pipes {
    fn start(&self, index: usize, greeting: &[u8]) -> Result<Worker, Error> {
        let config = &self.config;
        let pipe_error = |e: io::Error| Error::spawn(format!("cannot create a pipe: {e}"));
        let (task_r, task_w) = io::pipe().map_err(pipe_error)?;
        let (result_r, result_w) = io::pipe().map_err(pipe_error)?;
        // Bigger pipes mean fewer wake-ups for large payloads and more jobs sent ahead; the
        // system may refuse (pipe-max-size), and the capacity we got is what we plan with.
        let _ = rustix::pipe::fcntl_setpipe_size(&task_w, PIPE_SIZE);
        let _ = rustix::pipe::fcntl_setpipe_size(&result_r, PIPE_SIZE);
        let capacity = rustix::pipe::fcntl_getpipe_size(&task_w).unwrap_or(4096);
        let mut command = crate::hooks::worker_command()?;
        let child_fds = [task_r.as_raw_fd(), result_w.as_raw_fd()];
        let channel = ChannelDesc {
            read_fd: child_fds[0],
            write_fd: child_fds[1],
            max_frame: config.max_frame,
        };
        let (key, value) = channel.to_env();
        command.env(key, value).stdin(Stdio::null());
        if config.disable_gpu {
            command.env("CUDA_VISIBLE_DEVICES", "-1");
        }
        command.envs(config.env.iter().map(|(k, v)| (k, v)));
        if config.forward_stderr {
            command.stderr(Stdio::piped());
        }
        let cpu = (!config.cpu_affinity.is_empty()).then(|| {
            let mut set = rustix::thread::CpuSet::new();
            set.set(config.cpu_affinity[index % config.cpu_affinity.len()]);
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
        let stderr = child
            .stderr
            .take()
            .and_then(|stderr| forward_stderr(stderr, format!("[{}:{index}] ", config.pool)));
        let peer = Arc::new(ProcessPeer {
            pid,
            pidfd: Arc::clone(&pidfd),
            reaped_flag: AtomicBool::new(false),
            state: Mutex::new(ProcessState {
                child,
                reaped: None,
                stderr,
            }),
        });
        let io_error =
            |e: io::Error| Error::spawn(format!("cannot set up worker {index}'s pipes: {e}"));
        let rx = WatchedReader::new(result_r, Arc::clone(&pidfd)).map_err(io_error)?;
        poll::nonblocking(&task_w).map_err(io_error)?;
        let mut link = PipeLink {
            tx: task_w,
            rx: FrameReader::new(rx, config.max_frame),
            body: Vec::new(),
            pidfd,
            capacity,
        };
        // The greeting fits in the pipe's buffer for any sane initializer; a huge one waits
        // until the worker reads it, which it does first thing.
        if let Err(e) = link.send(&[greeting]) {
            peer.kill();
            let cause = peer.reap();
            return Err(Error::spawn(format!(
                "worker {index} (pid {pid}): cannot greet it: {e} ({cause})"
            )));
        }
        Ok(Worker {
            link: Box::new(link),
            peer,
        })
    }
}

/// The supervisor's ends of a worker's two pipes.
#[derive(Debug)]
struct PipeLink {
    tx: PipeWriter,
    rx: FrameReader<WatchedReader>,
    body: Vec<u8>,
    pidfd: Arc<Pidfd>,
    /// Bytes the task pipe holds.
    capacity: usize,
}

impl Link for PipeLink {
    /// Writes in one system call where the pipe takes it all; waits while it is full, unless
    /// the worker has ended.
    fn send(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        let mut sent_any = false;
        match poll::write_all_vectored(&self.tx, &self.pidfd, frames, &mut sent_any) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe && !sent_any => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("the worker was gone before the job was sent ({e})"),
            )),
            other => other,
        }
    }

    fn recv(&mut self) -> Result<&[u8], FrameError> {
        self.rx.read(&mut self.body)?;
        Ok(&self.body)
    }

    fn wait_readable(&mut self, spin: Duration, timeout: Option<Duration>) -> io::Result<bool> {
        if self.rx.has_buffered() {
            return Ok(true);
        }
        let fd = self.rx.get_ref().as_fd();
        crate::readiness::spin_until_readable(fd, spin);
        let ready = poll::wait(fd, rustix::event::PollFlags::IN, &self.pidfd, timeout)?;
        Ok(ready != poll::Ready::TimedOut)
    }

    /// Less than the pipe holds, so that sending never blocks while the worker is blocked
    /// sending results.
    fn budget(&self) -> usize {
        self.capacity * 3 / 4
    }

    fn unread(&self) -> Option<u64> {
        rustix::io::ioctl_fionread(&self.tx).ok()
    }

    fn shrink_buffers(&mut self) {
        protocol::shrink(&mut self.body);
    }
}

/// A local worker process.
#[derive(Debug)]
struct ProcessPeer {
    pid: u32,
    /// The process, for kills that can never hit a recycled pid.
    pidfd: Arc<Pidfd>,
    /// Set once reaped, without the lock: a kill must never wait for a reap in progress.
    reaped_flag: AtomicBool,
    state: Mutex<ProcessState>,
}

#[derive(Debug)]
struct ProcessState {
    child: Child,
    reaped: Option<ExitCause>,
    /// The thread that copies the worker's stderr, joined once the worker is reaped.
    stderr: Option<Forwarder>,
}

impl ProcessPeer {
    /// Records how the process ended, and lets its stderr forwarder finish.
    fn reaped(&self, state: &mut ProcessState, cause: ExitCause) -> ExitCause {
        state.reaped = Some(cause);
        self.reaped_flag.store(true, Ordering::Release);
        if let Some(forwarder) = state.stderr.take() {
            forwarder.stop();
        }
        cause
    }
}

impl Peer for ProcessPeer {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn kill(&self) {
        if !self.pidfd.is_pidfd() && self.reaped_flag.load(Ordering::Acquire) {
            // Only a raw pid to signal, and it may belong to another process by now.
            return;
        }
        self.pidfd.kill();
    }

    fn wait_exit(&self, timeout: Duration) -> bool {
        if self.pidfd.is_pidfd() {
            if !self.pidfd.wait_exit(timeout) {
                return false;
            }
            self.reap();
            return true;
        }
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(20);
        loop {
            let mut state = lock(&self.state);
            if state.reaped.is_some() {
                return true;
            }
            match state.child.try_wait() {
                Ok(Some(status)) => {
                    self.reaped(&mut state, ExitCause::from_status(status));
                    return true;
                }
                Ok(None) if Instant::now() < deadline => {}
                Ok(None) | Err(_) => return false,
            }
            drop(state);
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    fn reap(&self) -> ExitCause {
        let mut state = lock(&self.state);
        if let Some(cause) = state.reaped {
            return cause;
        }
        let cause = match state.child.wait() {
            Ok(status) => ExitCause::from_status(status),
            Err(_) => ExitCause::Unknown,
        };
        self.reaped(&mut state, cause)
    }

    /// From `/proc/<pid>/statm`, while the process is not reaped (its pid is its own).
    fn resident_bytes(&self) -> Option<u64> {
        if self.reaped_flag.load(Ordering::Acquire) {
            return None;
        }
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.pid)).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * rustix::param::page_size() as u64)
    }
}

impl Drop for ProcessPeer {
    fn drop(&mut self) {
        self.kill();
        self.reap();
    }
}
