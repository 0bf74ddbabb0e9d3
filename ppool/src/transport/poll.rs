//! Waiting on a worker's descriptors without ever waiting past the worker's death.
//!
//! A pipe alone cannot say that its worker died: a process the worker forked keeps the other
//! end open, so a read would wait for as long as that process lives. The supervisor's ends are
//! therefore non-blocking, and a wait polls the descriptor together with a pidfd of the
//! worker, which becomes readable the moment the worker ends, whoever else holds the pipe.

use std::io::{self, IoSlice, PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// A handle on a worker process that stays valid after the process is reaped: signals sent
/// through it can never reach a process that reused the pid.
#[derive(Debug)]
pub(crate) struct Pidfd {
    fd: Option<OwnedFd>,
    pid: u32,
}

impl Pidfd {
    /// Opens a pidfd for `pid`, a child of this process that has not been reaped. Kernels
    /// without pidfds (before Linux 5.3) fall back to the pid.
    pub(crate) fn open(pid: u32) -> Self {
        let fd = rustix::process::Pid::from_raw(pid as i32).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        });
        Pidfd { fd, pid }
    }

    /// Sends SIGKILL. Without a pidfd this goes to the raw pid, which is only safe while the
    /// process is known not to be reaped.
    pub(crate) fn kill(&self) {
        self.signal(rustix::process::Signal::KILL);
    }

    /// Sends `signal`, as [`Pidfd::kill`] sends SIGKILL.
    pub(crate) fn signal(&self, signal: rustix::process::Signal) {
        match &self.fd {
            Some(fd) => {
                let _ = rustix::process::pidfd_send_signal(fd, signal);
            }
            None => {
                if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
                    let _ = rustix::process::kill_process(pid, signal);
                }
            }
        }
    }

    /// Whether kills and waits go through a real pidfd (not the raw pid).
    pub(crate) fn is_pidfd(&self) -> bool {
        self.fd.is_some()
    }

    /// Waits at most `timeout` for the process to end; true if it has. Without a pidfd, false.
    pub(crate) fn wait_exit(&self, timeout: Duration) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec};
        let Some(fd) = &self.fd else {
            return false;
        };
        // A timeout too large for a deadline is no limit.
        let deadline = crate::sync::deadline(std::time::Instant::now(), timeout);
        loop {
            let left = crate::sync::left(deadline);
            let wait = left.and_then(|l| Timespec::try_from(l).ok());
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            match rustix::event::poll(&mut fds, wait.as_ref()) {
                Ok(0) if left.is_some_and(|l| l.is_zero()) => return false,
                Ok(0) | Err(rustix::io::Errno::INTR) => {}
                Ok(_) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Whether the process has ended, without waiting and without reaping it.
    pub(crate) fn has_exited(&self) -> bool {
        if self.fd.is_some() {
            return self.wait_exit(Duration::ZERO);
        }
        let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) else {
            return true;
        };
        let options = rustix::process::WaitIdOptions::EXITED
            | rustix::process::WaitIdOptions::NOHANG
            | rustix::process::WaitIdOptions::NOWAIT;
        match rustix::process::waitid(rustix::process::WaitId::Pid(pid), options) {
            Ok(status) => status.is_some(),
            // Reaped already, or not our child: it is gone as far as we can tell.
            Err(_) => true,
        }
    }

    fn borrow(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }
}

/// What a wait on a pipe end saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woke {
    /// The pipe is ready (or at its end).
    Pipe,
    /// The worker process ended and the pipe is not ready.
    Exited,
    /// The timeout passed.
    TimedOut,
}

/// Waits until `pipe` is ready for `flags`, the process behind `pidfd` ends, or `timeout`
/// (`None`: no limit) passes.
pub(crate) fn wait(
    pipe: BorrowedFd<'_>,
    flags: rustix::event::PollFlags,
    pidfd: &Pidfd,
    timeout: Option<Duration>,
) -> io::Result<Woke> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let deadline = timeout.and_then(|t| crate::sync::deadline(std::time::Instant::now(), t));
    loop {
        let left = crate::sync::left(deadline);
        let wait = left.and_then(|l| Timespec::try_from(l).ok());
        let process = pidfd.borrow();
        let mut fds = [
            PollFd::new(&pipe, flags),
            PollFd::new(process.as_ref().unwrap_or(&pipe), PollFlags::IN),
        ];
        let n = rustix::event::poll(
            &mut fds[..1 + usize::from(process.is_some())],
            wait.as_ref(),
        );
        match n {
            Ok(0) if left.is_some_and(|l| l.is_zero()) => return Ok(Woke::TimedOut),
            Ok(0) => {}
            Ok(_) => {
                if !fds[0].revents().is_empty() {
                    return Ok(Woke::Pipe);
                }
                if process.is_some() && !fds[1].revents().is_empty() {
                    return Ok(Woke::Exited);
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The read end of a worker's result pipe.
#[derive(Debug)]
pub(crate) struct WatchedReader {
    pipe: PipeReader,
    pidfd: std::sync::Arc<Pidfd>,
}

impl WatchedReader {
    pub(crate) fn new(pipe: PipeReader, pidfd: std::sync::Arc<Pidfd>) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&pipe, true)?;
        Ok(WatchedReader { pipe, pidfd })
    }
}

impl AsFd for WatchedReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }
}

impl Read for WatchedReader {
    /// Reads what the pipe has; waits while it is empty. Once the worker has ended, an empty
    /// pipe is its end (`Ok(0)`), whoever else holds the other end.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match (&self.pipe).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
            let flags = rustix::event::PollFlags::IN;
            if wait(self.pipe.as_fd(), flags, &self.pidfd, None)? == Woke::Exited {
                // What the worker wrote before it died is still in the pipe: take it first.
                return match (&self.pipe).read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    other => other,
                };
            }
        }
    }
}

/// Writes all of `frames` to `pipe`, waiting while it is full, and fails with `BrokenPipe`
/// once the worker behind `pidfd` has ended. `sent_any` says whether any byte went.
pub(crate) fn write_all_vectored(
    pipe: &PipeWriter,
    pidfd: &Pidfd,
    frames: &[&[u8]],
    sent_any: &mut bool,
) -> io::Result<()> {
    let mut one;
    let mut many;
    let mut left: &mut [IoSlice<'_>] = if let [frame] = frames {
        one = [IoSlice::new(frame)];
        &mut one
    } else {
        many = frames.iter().map(|f| IoSlice::new(f)).collect::<Vec<_>>();
        &mut many
    };
    while !left.is_empty() {
        match super::sigpipe::without_sigpipe(|| (&*pipe).write_vectored(left)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                *sent_any = true;
                IoSlice::advance_slices(&mut left, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let flags = rustix::event::PollFlags::OUT;
                if wait(pipe.as_fd(), flags, pidfd, None)? == Woke::Exited {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the worker ended while its pipe was full",
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes a pipe writer non-blocking, for [`write_all_vectored`].
pub(crate) fn nonblocking(pipe: &PipeWriter) -> io::Result<()> {
    rustix::io::ioctl_fionbio(pipe, true).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_ends_when_the_writer_process_ends_though_its_pipe_lives_on() {
        let (r, w) = std::io::pipe().expect("pipe");
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .expect("sleep");
        let pidfd = std::sync::Arc::new(Pidfd::open(child.id()));
        if !pidfd.is_pidfd() {
            // Without pidfds (Linux before 5.3) only the pipe's end can end the read.
            let _ = child.wait();
            return;
        }
        let mut reader = WatchedReader::new(r, pidfd).expect("reader");
        let mut buf = [0u8; 8];
        // `w` is still open here: only the pidfd can end the read.
        assert_eq!(reader.read(&mut buf).expect("read"), 0);
        drop(w);
        let _ = child.wait();
    }
}
