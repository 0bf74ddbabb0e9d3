//! A worker's channel as the supervisor drives it: a process, or (in debug mode) this process.

use crate::local::Local;
use crate::process::WorkerProc;
use crate::protocol::FrameError;
use std::time::Duration;

/// A worker's channel: a process, or (in debug mode) this process.
#[derive(Debug)]
pub(crate) enum Conn {
    Proc(WorkerProc),
    Local(Local),
}

impl Conn {
    pub(super) fn send(&mut self, frames: &[&[u8]]) -> Result<(), FrameError> {
        match self {
            Conn::Proc(p) => p.send(frames).map_err(FrameError::Io),
            Conn::Local(l) => frames.iter().try_for_each(|f| l.send(f)),
        }
    }

    pub(super) fn recv(&mut self) -> Result<(), FrameError> {
        match self {
            Conn::Proc(p) => p.recv(),
            Conn::Local(l) => l.recv(),
        }
    }

    /// Spins up to `limit` for the worker's answer before a read that would sleep.
    pub(super) fn spin(&self, limit: Duration) {
        if let Conn::Proc(p) = self {
            p.spin_until_readable(limit);
        }
    }

    /// The body of the frame last received.
    pub(super) fn body(&self) -> &[u8] {
        match self {
            Conn::Proc(p) => p.body(),
            Conn::Local(l) => l.body(),
        }
    }

    /// The most bytes of jobs that may wait unanswered in the channel: less than the pipe
    /// holds, so that sending never blocks while the worker is blocked sending results.
    pub(super) fn budget(&self) -> usize {
        match self {
            Conn::Proc(p) => p.capacity * 3 / 4,
            Conn::Local(_) => usize::MAX,
        }
    }

    /// Gives back the memory of buffers that one big frame grew.
    pub(super) fn shrink_buffers(&mut self) {
        if let Conn::Proc(p) = self {
            p.shrink_buffers();
        }
    }

    pub(super) fn tasks_done(&mut self) -> &mut u64 {
        match self {
            Conn::Proc(p) => &mut p.tasks_done,
            Conn::Local(l) => &mut l.tasks_done,
        }
    }

    pub(super) fn pid(&self) -> u32 {
        match self {
            Conn::Proc(p) => p.pid,
            Conn::Local(_) => std::process::id(),
        }
    }
}
