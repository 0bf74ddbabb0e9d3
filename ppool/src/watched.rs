//! A worker's pipe ends as the supervisor holds them: they never wait past the death of the
//! worker process, and writing to them never raises `SIGPIPE` in this process.
//!
//! A pipe alone cannot say that its worker died: a process the worker forked keeps the other
//! end open, so a read would wait for as long as that process lives. Both ends are therefore
//! non-blocking, and a wait polls the pipe together with a pidfd of the worker, which becomes
//! readable the moment the worker ends, whoever else holds the pipe.
//!
//! `SIGPIPE` is the other trap: a program may restore its default action (many command-line
//! tools do, so that `prog | head` ends quietly), and a write to the pipe of a dead worker
//! would then kill the whole program. Every write blocks the signal on its thread for the
//! duration of the call and consumes a `SIGPIPE` it raised, so only `EPIPE` is seen.

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
        match &self.fd {
            Some(fd) => {
                let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
            }
            None => {
                if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
    }

    fn borrow(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }
}

/// What a wait on a pipe end saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
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
) -> io::Result<Ready> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
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
            Ok(0) if left.is_some_and(|l| l.is_zero()) => return Ok(Ready::TimedOut),
            Ok(0) => {}
            Ok(_) => {
                if !fds[0].revents().is_empty() {
                    return Ok(Ready::Pipe);
                }
                if process.is_some() && !fds[1].revents().is_empty() {
                    return Ok(Ready::Exited);
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
            if wait(self.pipe.as_fd(), flags, &self.pidfd, None)? == Ready::Exited {
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
        match without_sigpipe(|| (&*pipe).write_vectored(left)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                *sent_any = true;
                IoSlice::advance_slices(&mut left, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let flags = rustix::event::PollFlags::OUT;
                if wait(pipe.as_fd(), flags, pidfd, None)? == Ready::Exited {
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

thread_local! {
    /// `SIGPIPE` is blocked on this thread for good (the pool's own threads).
    static SIGPIPE_BLOCKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Blocks `SIGPIPE` on the calling thread, one of the pool's own, for the rest of its life: its
/// writes need no per-call masking. A `SIGPIPE` raised there stays pending and harmless.
pub(crate) fn block_sigpipe_on_this_thread() {
    // SAFETY: as in `without_sigpipe`.
    let blocked = unsafe {
        let mut pipe: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe);
        libc::sigaddset(&mut pipe, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, std::ptr::null_mut()) == 0
    };
    SIGPIPE_BLOCKED.with(|b| b.set(blocked));
}

/// Runs `write` with `SIGPIPE` blocked on this thread, and consumes a `SIGPIPE` it raised, so
/// that a broken pipe is only ever an `EPIPE` error, whatever the program set `SIGPIPE` to.
pub(crate) fn without_sigpipe<T>(write: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    if SIGPIPE_BLOCKED.with(std::cell::Cell::get) {
        return write();
    }
    // SAFETY: `sigset_t` is plain data for which all zeroes is a valid (empty) value, and the
    // `sig*` calls only read and write the sets passed to them.
    unsafe {
        let mut pipe: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe);
        libc::sigaddset(&mut pipe, libc::SIGPIPE);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, &mut old) != 0 {
            return write();
        }
        let result = write();
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::BrokenPipe)
            && libc::sigismember(&old, libc::SIGPIPE) == 0
        {
            // The signal is pending on this thread now: take it before it is unblocked.
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let mut pending: libc::sigset_t = std::mem::zeroed();
            if libc::sigpending(&mut pending) == 0
                && libc::sigismember(&pending, libc::SIGPIPE) == 1
            {
                libc::sigtimedwait(&pipe, std::ptr::null_mut(), &zero);
            }
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_an_error_even_with_the_default_sigpipe() {
        // SAFETY: restoring the default action of SIGPIPE for this test process; the write
        // below must not let it fire.
        let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let (r, w) = std::io::pipe().expect("pipe");
        drop(r);
        let result = without_sigpipe(|| (&w).write(b"x"));
        // SAFETY: puts back what the test runner had.
        unsafe { libc::signal(libc::SIGPIPE, previous) };
        assert_eq!(result.map_err(|e| e.kind()), Err(io::ErrorKind::BrokenPipe));
    }

    #[test]
    fn a_read_ends_when_the_writer_process_ends_though_its_pipe_lives_on() {
        let (r, w) = std::io::pipe().expect("pipe");
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .expect("sleep");
        let pidfd = std::sync::Arc::new(Pidfd::open(child.id()));
        let mut reader = WatchedReader::new(r, pidfd).expect("reader");
        let mut buf = [0u8; 8];
        // `w` is still open here: only the pidfd can end the read.
        assert_eq!(reader.read(&mut buf).expect("read"), 0);
        drop(w);
        let _ = child.wait();
    }
}
