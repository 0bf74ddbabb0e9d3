//! How a worker process finds its channel: the two pipe descriptors a pool let it inherit,
//! named in one environment variable, and the guard thread that ends it when nobody greets
//! it or when its supervisor goes away.
//!
//! # Unsafe code
//! - Descriptors named in the environment are borrowed only for `fstat`, and owned only once
//!   `fstat` says they are open and of the kind the channel needs; nothing else in the process
//!   owns them (they were inherited for this purpose alone).
//! - The environment is changed only by [`remove_var_before_threads`], first thing in `main`
//!   of a worker or host agent, before any thread exists that could read it meanwhile.
//! - [`ignore_sigpipe`] sets a disposition, never a handler, and only in a worker or agent.

use crate::shm::Region;
use rustix::fs::FileType;
use std::ffi::OsString;
use std::io::{PipeReader, PipeWriter};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The argument that marks a worker started by `ppool::main!`.
pub(crate) const WORKER_ARG: &str = "--ppool-worker";
/// The environment variable that carries the channel's description.
pub(crate) const CHANNEL_ENV: &str = "PPOOL_WORKER_CHANNEL";
/// How long a worker waits for its supervisor's greeting before it gives up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a worker checks that its supervisor is still alive.
const PARENT_POLL: Duration = Duration::from_millis(100);
/// Exit code of a worker started by hand or that could not talk to its supervisor.
pub(crate) const EXIT_NO_CHANNEL: i32 = 2;

/// A worker's channel as it travels from a pool to the worker it starts, in [`CHANNEL_ENV`]:
/// two pipes as `<read fd>,<write fd>,<max frame>`, or a shared-memory region as
/// `shm:<memfd>,<max frame>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelDesc {
    Pipes {
        read_fd: RawFd,
        write_fd: RawFd,
        max_frame: usize,
    },
    Shm {
        fd: RawFd,
        max_frame: usize,
    },
}

/// A channel as the worker opened it.
#[derive(Debug)]
pub(crate) enum Opened {
    Pipes(PipeReader, PipeWriter),
    Shm(Region),
}

impl ChannelDesc {
    /// The environment variable to set for the worker.
    pub(crate) fn to_env(self) -> (&'static str, OsString) {
        let value = match self {
            ChannelDesc::Pipes {
                read_fd,
                write_fd,
                max_frame,
            } => format!("{read_fd},{write_fd},{max_frame}"),
            ChannelDesc::Shm { fd, max_frame } => format!("shm:{fd},{max_frame}"),
        };
        (CHANNEL_ENV, value.into())
    }

    /// Parses the variable's value.
    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        let (shm, value) = match value.strip_prefix("shm:") {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let mut parts = value.split(',');
        let mut next = |what: &str| -> Result<u64, String> {
            parts
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("{CHANNEL_ENV} has no valid {what}"))
        };
        let fd = |what: &str, n: u64| {
            RawFd::try_from(n).map_err(|_| format!("{CHANNEL_ENV} has no valid {what}"))
        };
        let desc = if shm {
            let memfd = fd("memfd", next("memfd")?)?;
            ChannelDesc::Shm {
                fd: memfd,
                max_frame: frame_limit(next("frame limit")?)?,
            }
        } else {
            let read_fd = fd("read descriptor", next("read descriptor")?)?;
            let write_fd = fd("write descriptor", next("write descriptor")?)?;
            ChannelDesc::Pipes {
                read_fd,
                write_fd,
                max_frame: frame_limit(next("frame limit")?)?,
            }
        };
        if parts.next().is_some() {
            return Err(format!("{CHANNEL_ENV} has more fields than a channel has"));
        }
        Ok(desc)
    }

    /// The largest frame either side may send.
    pub(crate) fn max_frame(&self) -> usize {
        match *self {
            ChannelDesc::Pipes { max_frame, .. } | ChannelDesc::Shm { max_frame, .. } => max_frame,
        }
    }

    /// Reads the channel this process was started with, and removes the variable, so that
    /// programs an entry starts do not take themselves for workers. The descriptors must be
    /// open pipes, or a sealed shared-memory region of the right layout: argv alone does not
    /// make a worker.
    pub(crate) fn from_env() -> Result<(Opened, usize), String> {
        let value = std::env::var(CHANNEL_ENV).map_err(|_| format!("{CHANNEL_ENV} is not set"))?;
        remove_var_before_threads(CHANNEL_ENV);
        let desc = Self::parse(&value)?;
        let opened = match desc {
            ChannelDesc::Pipes {
                read_fd, write_fd, ..
            } => {
                let input = owned(read_fd, FileType::Fifo)?;
                let output = owned(write_fd, FileType::Fifo)?;
                let _ = CHANNEL_FDS.set((read_fd, write_fd));
                Opened::Pipes(PipeReader::from(input), PipeWriter::from(output))
            }
            ChannelDesc::Shm { fd, .. } => {
                let memfd = owned(fd, FileType::RegularFile)?;
                let region = Region::from_fd(memfd).map_err(|e| format!("descriptor {fd}: {e}"))?;
                let _ = CHANNEL_FDS.set((fd, fd));
                Opened::Shm(region)
            }
        };
        Ok((opened, desc.max_frame()))
    }
}

fn frame_limit(n: u64) -> Result<usize, String> {
    usize::try_from(n).map_err(|_| format!("{CHANNEL_ENV} has no valid frame limit"))
}

/// The descriptors of this worker's channel, for tests that corrupt it on purpose: the read
/// and write pipes, or the shared-memory region twice.
static CHANNEL_FDS: OnceLock<(RawFd, RawFd)> = OnceLock::new();

/// The read and write descriptors of this worker's channel, when this process is a worker
/// (for a shared-memory channel, its memfd twice; the descriptor is closed once mapped).
#[doc(hidden)]
pub fn channel_fds() -> Option<(RawFd, RawFd)> {
    CHANNEL_FDS.get().copied()
}

/// Takes ownership of inherited descriptor `fd`, which must be open and of type `kind`.
fn owned(fd: RawFd, kind: FileType) -> Result<OwnedFd, String> {
    if fd < 3 {
        return Err(format!(
            "descriptor {fd} is a standard stream, not a channel"
        ));
    }
    // SAFETY: `fd` is only borrowed for the `fstat` call; an invalid number makes it fail.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let stat =
        rustix::fs::fstat(borrowed).map_err(|e| format!("descriptor {fd} is not open: {e}"))?;
    if FileType::from_raw_mode(stat.st_mode) != kind {
        let what = if kind == FileType::Fifo {
            "a pipe"
        } else {
            "a shared-memory file"
        };
        return Err(format!("descriptor {fd} is not {what}"));
    }
    // Processes this worker starts must not inherit its channel: a copy would keep it open
    // after the worker died, and hide the death from the pool.
    rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| format!("descriptor {fd}: {e}"))?;
    // SAFETY: the descriptor is open (fstat succeeded), was inherited for this purpose, and
    // nothing else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Ends a process started with a worker's command line that is no worker, with a message.
pub(crate) fn hand_started(why: &str) -> ! {
    eprintln!(
        "error: this is the command line of a ppool worker, which only a ProcessPool can start \
         ({why}). Run the program without `{WORKER_ARG}` to use it normally."
    );
    std::process::exit(EXIT_NO_CHANNEL)
}

/// Sets the disposition of `SIGPIPE` to "ignore" for the whole process: for a worker or a host
/// agent, whose peer going away must be an `EPIPE` on the next write, never a signal. Never
/// called in a user's program (the supervisor), whose disposition is its own.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: sets a disposition, no handler: no code of ours runs in signal context.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Sets the disposition of `SIGXFSZ` to "ignore" for the whole process: for a host agent,
/// whose shared values are files in memory, so that a file size limit (`ulimit -f`) makes
/// storing one an `EFBIG` error for the tasks that need it, not the agent's death.
pub(crate) fn ignore_sigxfsz() {
    // SAFETY: sets a disposition, no handler: no code of ours runs in signal context.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

/// Removes `name` from the environment. Only for the first thing a worker or host agent does
/// in `main` (or in the worker test of a test binary), before it starts any thread.
pub(crate) fn remove_var_before_threads(name: &str) {
    // SAFETY: called only as its doc says: no other thread of this process exists yet that
    // could read or write the environment meanwhile.
    unsafe { std::env::remove_var(name) };
}

/// How often a worker looks for shared values the pool freed.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// Watches, on its own thread, that the greeting comes in time and that the supervisor (this
/// process's parent) lives.
pub(crate) fn spawn_guard(greeted: &'static AtomicBool) {
    let parent = rustix::process::getppid();
    let started = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("ppool-guard".into())
        .spawn(move || {
            let mut swept = Instant::now();
            loop {
                std::thread::sleep(PARENT_POLL);
                if swept.elapsed() >= SWEEP_EVERY {
                    // Shared values the pool freed are let go of here too.
                    crate::share::sweep();
                    swept = Instant::now();
                }
                if rustix::process::getppid() != parent {
                    // The supervisor is gone: nobody wants our results.
                    std::process::exit(0);
                }
                if !greeted.load(Ordering::Acquire) && started.elapsed() > HANDSHAKE_TIMEOUT {
                    hand_started("no pool greeted it on its channel");
                }
            }
        });
    if spawned.is_err() {
        eprintln!("ppool worker: cannot start its guard thread");
        std::process::exit(EXIT_NO_CHANNEL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_description_round_trips_and_refuses_garbage() {
        for desc in [
            ChannelDesc::Pipes {
                read_fd: 7,
                write_fd: 9,
                max_frame: 1 << 30,
            },
            ChannelDesc::Shm {
                fd: 5,
                max_frame: 1 << 20,
            },
        ] {
            let (key, value) = desc.to_env();
            assert_eq!(key, CHANNEL_ENV);
            assert_eq!(ChannelDesc::parse(value.to_str().unwrap_or("")), Ok(desc));
        }
        for bad in [
            "",
            "7",
            "7,9",
            "7,x,1",
            "-1,9,1",
            "7,9,-1",
            "99999999999,9,1",
            "7,9,1,2",
            "shm:",
            "shm:5",
            "shm:5,x",
            "shm:-5,1",
            "shm:5,1,2",
        ] {
            assert!(ChannelDesc::parse(bad).is_err(), "{bad:?}");
        }
    }
}
