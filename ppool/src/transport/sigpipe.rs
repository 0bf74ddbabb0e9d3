//! Writes that never raise `SIGPIPE` in this process.
//!
//! A program may restore the default action of `SIGPIPE` (many command-line tools do, so that
//! `prog | head` ends quietly), and a write to the pipe of a dead worker would then kill the
//! whole program. Every write blocks the signal on its thread for the duration of the call and
//! consumes a `SIGPIPE` it raised, so only `EPIPE` is seen. The pool's own threads block it
//! once for good; a user's thread never keeps it blocked after a call returns.
//!
//! # Unsafe code
//! `sigset_t` values are plain data that are valid zeroed, and the `sig*` calls only read and
//! write the sets passed to them. (A worker or host agent sets the disposition to "ignore":
//! `worker::bootstrap::ignore_sigpipe`.)

use std::io;

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
    use std::io::Write;

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
}
