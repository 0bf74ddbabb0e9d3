//! One worker on a host, as the supervisor sees it: a [`Link`] whose frames travel over the
//! host's stream, and a [`Peer`] whose process the host's agent watches.

use super::host::{Conn, GRACE, Inbox};
use crate::error::ExitCause;
use crate::mux::{CONTROL, Control};
use crate::protocol::{self, FrameError};
use crate::sync::{lock, wait_timeout};
use crate::transport::{Incoming, Link, Peer, Sink, Started};
use std::io;
use std::sync::{Arc, Condvar};
use std::time::{Duration, Instant};

/// What a host's worker may hold unanswered: derived from its shared-memory ring on the host
/// (see `agent::remote_budget`).
const BUDGET: usize = crate::agent::remote_budget();

/// One worker on a host.
#[derive(Debug)]
pub(super) struct RemoteLink {
    pub(super) conn: Arc<Conn>,
    /// Rung when something comes for this worker, or the host is lost.
    pub(super) bell: Arc<Condvar>,
    pub(super) slot: u32,
    pub(super) body: Vec<u8>,
}

impl RemoteLink {
    /// Waits until `ready` holds for this slot's inbox or the host is lost, at most
    /// `timeout`; whether it held (or the host was lost).
    fn wait_for(&self, timeout: Option<Duration>, ready: impl Fn(&Inbox) -> bool) -> bool {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut st = lock(&self.conn.state);
        loop {
            let done = st.slots.get(&self.slot).is_none_or(&ready);
            if done || st.lost.is_some() {
                return true;
            }
            match deadline {
                None => st = crate::sync::wait(&self.bell, st),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    st = wait_timeout(&self.bell, st, deadline - now);
                }
            }
        }
    }
}

impl Link for RemoteLink {
    fn send(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        if lock(&self.conn.state).lost.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("host {} was lost before the job was sent", self.conn.name),
            ));
        }
        for frames in frames {
            let mut rest: &[u8] = frames;
            while let Some((body, next)) = protocol::split_frame(rest) {
                self.conn
                    .outbox
                    .post(self.slot, body)
                    .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))?;
                rest = next;
            }
        }
        Ok(())
    }

    /// Each RESULTS message the agent forwarded is a run; the last of a job carries its end.
    fn recv(&mut self) -> Result<Incoming<'_>, FrameError> {
        let mut st = lock(&self.conn.state);
        loop {
            let lost = st.lost.is_some();
            let Some(inbox) = st.slots.get_mut(&self.slot) else {
                return Err(FrameError::Closed);
            };
            if let Some(frame) = inbox.frames.pop_front() {
                self.body = frame;
                return Incoming::from_body(&self.body);
            }
            if inbox.exited.is_some() || lost {
                return Err(FrameError::Closed);
            }
            st = crate::sync::wait(&self.bell, st);
        }
    }

    fn wait_readable(&mut self, _spin: Duration, timeout: Option<Duration>) -> io::Result<bool> {
        Ok(self.wait_for(timeout, |inbox| {
            !inbox.frames.is_empty() || inbox.exited.is_some()
        }))
    }

    fn budget(&self) -> usize {
        BUDGET
    }

    /// The agent read the worker's progress word when it died; a lost host tells nothing,
    /// and what it sent last may not have arrived.
    fn started(&mut self, job: u64, _sent_bytes: usize) -> Started {
        let st = lock(&self.conn.state);
        match st.slots.get(&self.slot).and_then(|inbox| inbox.exited) {
            Some((_, Some((j, n)))) if j == job => Started::Upto(n),
            Some((_, Some(_))) => Started::None,
            Some((_, None)) => Started::Unknown,
            None => Started::Lost,
        }
    }

    fn shrink_buffers(&mut self) {
        protocol::shrink(&mut self.body);
    }

    /// The host's reader hands this worker's messages to `sink` from now on.
    fn deliver_to(&mut self, sink: Option<Arc<dyn Sink>>) -> bool {
        let Some(gate) = self.conn.gate(self.slot) else {
            return false;
        };
        let _gate = lock(&gate);
        let mut st = lock(&self.conn.state);
        let lost = st.lost.is_some();
        let Some(inbox) = st.slots.get_mut(&self.slot) else {
            return false;
        };
        let clean = inbox.frames.is_empty() && inbox.exited.is_none() && !lost;
        inbox.sink = sink;
        clean
    }

    fn is_evented(&self) -> bool {
        true
    }

    fn provide(&mut self, needs: &[Arc<crate::share::Stored>]) -> io::Result<()> {
        super::share::provide(&self.conn, needs)
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))
    }
}

/// The process of a worker on a host, as its agent reports it.
#[derive(Debug)]
pub(super) struct RemotePeer {
    pub(super) conn: Arc<Conn>,
    pub(super) bell: Arc<Condvar>,
    pub(super) slot: u32,
    pub(super) pid: u32,
}

impl RemotePeer {
    fn exit(&self) -> Option<ExitCause> {
        let st = lock(&self.conn.state);
        match st.slots.get(&self.slot).and_then(|inbox| inbox.exited) {
            Some((cause, _)) => Some(cause),
            None => st.lost.is_some().then_some(ExitCause::Lost),
        }
    }

    /// Waits at most `timeout` (`None`: without limit) for the agent to report the end.
    fn wait(&self, timeout: Option<Duration>) -> Option<ExitCause> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut st = lock(&self.conn.state);
        loop {
            match st.slots.get(&self.slot).and_then(|inbox| inbox.exited) {
                Some((cause, _)) => return Some(cause),
                None if st.lost.is_some() => return Some(ExitCause::Lost),
                None => {}
            }
            st = match deadline {
                None => crate::sync::wait(&self.bell, st),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    wait_timeout(&self.bell, st, deadline - now)
                }
            };
        }
    }
}

impl Peer for RemotePeer {
    fn pid(&self) -> u32 {
        self.pid
    }

    /// Posts a kill to the agent: it never waits, whatever the stream is busy with.
    fn kill(&self) {
        if self.exit().is_none() {
            let _ = self
                .conn
                .outbox
                .post(CONTROL, &Control::Kill { slot: self.slot }.encode());
        }
    }

    fn wait_exit(&self, timeout: Duration) -> bool {
        self.wait(Some(timeout)).is_some()
    }

    /// The agent reports every death; a host that stops answering is lost within the host
    /// timeout, so the wait is bounded by it (or by nothing, when it is unbounded).
    fn reap(&self) -> ExitCause {
        self.wait(Some(self.conn.host_timeout.saturating_add(GRACE)))
            .unwrap_or(ExitCause::Lost)
    }

    /// What its agent reported, when the worker went past the pool's memory limit.
    fn resident_bytes(&self) -> Option<u64> {
        lock(&self.conn.state)
            .slots
            .get(&self.slot)
            .and_then(|inbox| inbox.resident)
    }
}

impl Drop for RemotePeer {
    fn drop(&mut self) {
        self.kill();
        lock(&self.conn.state).slots.remove(&self.slot);
    }
}
