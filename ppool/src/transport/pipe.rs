//! Local workers over two pipes: the worker inherits the two pipe ends of its channel, and
//! the supervisor drives its own ends non-blocking, watched with a pidfd.

use super::poll::{self, Pidfd, WatchedReader};
use super::{Incoming, Launch, LaunchConfig, Link, Peer, Started, Worker, process};
use crate::error::Error;
use crate::protocol::{self, FrameError, FrameReader};
use crate::worker::bootstrap::ChannelDesc;
use std::io::{self, PipeWriter};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::Duration;

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
        let pipe_error = |e: io::Error| Error::spawn_io(format!("cannot create a pipe: {e}"), e);
        let (task_r, task_w) = io::pipe().map_err(pipe_error)?;
        let (result_r, result_w) = io::pipe().map_err(pipe_error)?;
        // Bigger pipes mean fewer wake-ups for large payloads and more jobs sent ahead; the
        // system may refuse (pipe-max-size), and the capacity we got is what we plan with.
        let _ = rustix::pipe::fcntl_setpipe_size(&task_w, PIPE_SIZE);
        let _ = rustix::pipe::fcntl_setpipe_size(&result_r, PIPE_SIZE);
        let capacity = rustix::pipe::fcntl_getpipe_size(&task_w).unwrap_or(4096);
        let channel = ChannelDesc::Pipes {
            read_fd: task_r.as_raw_fd(),
            write_fd: result_w.as_raw_fd(),
            max_frame: config.max_frame,
        };
        let inherit = vec![task_r.as_raw_fd(), result_w.as_raw_fd()];
        let peer = process::spawn(config, index, channel, inherit)?;
        drop((task_r, result_w));
        let pid = peer.pid();
        let pidfd = Arc::clone(&peer.pidfd);
        let io_error =
            |e: io::Error| Error::spawn_io(format!("cannot set up worker {index}'s pipes: {e}"), e);
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

    /// Each RESULTS frame is a run; the last of a job carries its end.
    fn recv(&mut self) -> Result<Incoming<'_>, FrameError> {
        self.rx.read(&mut self.body)?;
        Incoming::from_body(&self.body)
    }

    fn wait_readable(&mut self, spin: Duration, timeout: Option<Duration>) -> io::Result<bool> {
        if self.rx.has_buffered() {
            return Ok(true);
        }
        let fd = self.rx.get_ref().as_fd();
        crate::worker::readiness::spin_until_readable(fd, spin);
        let ready = poll::wait(fd, rustix::event::PollFlags::IN, &self.pidfd, timeout)?;
        Ok(ready != poll::Woke::TimedOut)
    }

    /// Less than the pipe holds, so that sending never blocks while the worker is blocked
    /// sending results.
    fn budget(&self) -> usize {
        self.capacity * 3 / 4
    }

    /// A pipe does not tell which tasks started: only that none did, when every byte sent
    /// since the job is still unread in it.
    fn started(&mut self, _job: u64, sent_bytes: usize) -> Started {
        match rustix::io::ioctl_fionread(&self.tx) {
            Ok(unread) if unread >= sent_bytes as u64 => Started::None,
            _ => Started::Unknown,
        }
    }

    fn shrink_buffers(&mut self) {
        protocol::shrink(&mut self.body);
    }
}
