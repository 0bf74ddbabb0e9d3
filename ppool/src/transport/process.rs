//! Local worker processes: this very binary, started again as a worker that inherits the
//! descriptors of its channel (named in one environment variable), and the [`ProcessPeer`]
//! that kills and reaps it through a pidfd. Shared by the pipe and shared-memory kinds.
//!
//! # Unsafe code
//! One block: the `pre_exec` closure, which runs in the child between `fork` and `exec`.
//! Invariant: it only makes async-signal-safe system calls (`fcntl`, `sched_setaffinity`),
//! allocates nothing and takes no lock, so it cannot deadlock on a lock another thread of the
//! supervisor held at the fork.

use super::poll::Pidfd;
use super::stderr::{Forwarder, Source, forward_stderr};
use super::{LaunchConfig, Peer};
use crate::error::{Error, ExitCause};
use crate::sync::lock;
use crate::worker::bootstrap::ChannelDesc;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Starts worker `index` with `channel` in its environment, letting exactly the descriptors
/// `inherit` survive `exec` (they are close-on-exec in this process).
pub(super) fn spawn(
    config: &LaunchConfig,
    index: usize,
    channel: ChannelDesc,
    inherit: Vec<RawFd>,
) -> Result<Arc<ProcessPeer>, Error> {
    let mut command = crate::relaunch::worker_command()?;
    let (key, value) = channel.to_env();
    command
        .env(key, value)
        .env_remove(crate::relaunch::AGENT_ENV)
        .stdin(Stdio::null());
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
    // channel's descriptors survive `exec`, and pins the worker if asked to.
    unsafe {
        command.pre_exec(move || {
            for &fd in &inherit {
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
        .map_err(|e| Error::spawn_io(format!("cannot start worker {index}: {e}"), e))?;
    let pid = child.id();
    let pidfd = Arc::new(Pidfd::open(pid));
    let stderr = child.stderr.take().and_then(|stderr| {
        let (pool, dispatch) = (config.pool.clone(), config.dispatch.clone());
        forward_stderr(stderr, Source::Worker { pool, index, pid }, dispatch)
    });
    Ok(Arc::new(ProcessPeer {
        pid,
        pidfd,
        reaped_flag: AtomicBool::new(false),
        state: Mutex::new(ProcessState {
            child,
            reaped: None,
            stderr,
        }),
    }))
}

/// A local worker process.
#[derive(Debug)]
pub(crate) struct ProcessPeer {
    pid: u32,
    /// The process, for kills that can never hit a recycled pid.
    pub(super) pidfd: Arc<Pidfd>,
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
    /// Asks it to end (SIGTERM), from any thread; never reaches another process.
    pub(crate) fn terminate(&self) {
        if !self.pidfd.is_pidfd() && self.reaped_flag.load(Ordering::Acquire) {
            return;
        }
        self.pidfd.signal(rustix::process::Signal::TERM);
    }

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
        // A timeout too large for a deadline is no limit.
        let deadline = crate::sync::deadline(Instant::now(), timeout);
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
                Ok(None) if deadline.is_none_or(|d| Instant::now() < d) => {}
                Ok(None) | Err(_) => return false,
            }
            drop(state);
            std::thread::sleep(pause);
            pause = pause.saturating_mul(2).min(Duration::from_millis(5));
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
        Some(own_resident(&statm)? * rustix::param::page_size() as u64)
    }
}

/// The pages of a process's own memory from its `statm`: resident less shared (its mapped
/// files, and shared memory such as its rings and the pool's shared values, which every
/// worker maps and none owns), so that reading a large shared value never counts against a
/// worker's memory limit.
fn own_resident(statm: &str) -> Option<u64> {
    let mut fields = statm.split_whitespace().skip(1);
    let resident: u64 = fields.next()?.parse().ok()?;
    let shared: u64 = fields.next()?.parse().ok()?;
    Some(resident.saturating_sub(shared))
}

impl Drop for ProcessPeer {
    fn drop(&mut self) {
        self.kill();
        self.reap();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_memory_is_resident_less_shared() {
        assert_eq!(super::own_resident("1000 600 450 10 0 300 0\n"), Some(150));
        assert_eq!(super::own_resident("1000 600 700 10 0 300 0"), Some(0));
        assert_eq!(super::own_resident("1000 600"), None);
        assert_eq!(super::own_resident("garbage"), None);
    }
}
