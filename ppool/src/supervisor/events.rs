//! Remote workers driven by events: no thread of the pool waits for a remote worker. Its
//! host's reader hands each message for it to the slot's [`Evented`] sink, which takes it
//! into the slot's [`Book`] and sends what may be sent next, through the host's outbox, which
//! never blocks; a job for an idle remote worker is sent by whichever thread queued it. So a
//! host costs its reader and writer threads, whatever its number of workers.
//!
//! The same `Book` drives local workers from a thread of their own (`driver::run`): what a
//! job goes through (sent ahead, gathered, delivered, recovered) is written once.
//!
//! Filling a vacant slot (starting a replacement, retiring a recycled worker) blocks, so it
//! runs on a short-lived thread of its own ([`refill`]), which `join` and `shutdown` wait for.

use super::driver::{Book, Driver, caught};
use super::job::Job;
use super::state::{Conn, Inner, Slot};
use super::{lifecycle, put_back};
use crate::protocol::FrameError;
use crate::sync::lock;
use crate::transport::{Incoming, Sink};
use std::sync::{Arc, Mutex, Weak};

/// Where a remote worker's messages go: the slot's driver, run on its host's reader thread.
pub(crate) struct Evented {
    shared: Weak<Inner>,
    i: usize,
    /// The worker and its book while it holds jobs (its slot is `Busy`); `None` while it is
    /// idle (its `Conn` is in the slot) or once it failed.
    driving: Mutex<Driving>,
}

#[derive(Default)]
struct Driving {
    held: Option<(Box<Conn>, Book)>,
    /// The link ended (the worker exited, its host was lost) or broke while no job was held:
    /// the next job started on it fails at once, as one that never reached the worker.
    ended: bool,
    /// The worker broke its protocol (a malformed or unexpected message): it was killed, and
    /// is failed with this cause once its end is reported. That report comes through this
    /// very thread, the host's reader, so it is never waited for here.
    broken: Option<FrameError>,
}

impl std::fmt::Debug for Evented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evented")
            .field("worker", &self.i)
            .finish_non_exhaustive()
    }
}

/// Hands worker `i`'s messages to a new sink of its own, from the host's reader thread.
/// Called once it is ready, before its slot takes it. A worker whose link cannot be evented
/// keeps being read by whoever calls `recv` (a thread of its own).
pub(super) fn install(shared: &Inner, i: usize, conn: &mut Conn) {
    if !conn.link.is_evented() {
        return;
    }
    let events = Arc::new(Evented {
        shared: shared.me.clone(),
        i,
        driving: Mutex::new(Driving::default()),
    });
    let sink: Arc<dyn Sink> = events.clone();
    if !conn.link.deliver_to(Some(sink)) {
        // It ended, or spoke out of turn, before it had a job: its first job finds out.
        lock(&events.driving).ended = true;
        conn.peer.kill();
    }
    conn.events = Some(events);
}

/// Stops handing worker `i`'s messages to its sink, so that a thread may read them again
/// (to retire it).
pub(super) fn uninstall(conn: &mut Conn) {
    if conn.events.take().is_some() {
        conn.link.deliver_to(None);
    }
}

/// Starts `job` on evented worker `i`, whose slot this thread just made `Busy`; returns at
/// once: the host's reader takes it from there.
pub(super) fn start(shared: &Inner, i: usize, mut conn: Box<Conn>, job: Job) {
    let Some(events) = conn.events.clone() else {
        // Not evented after all (it could not be): drive it from this thread.
        let back = super::driver::run_caught(shared, i, conn, job, Driver::Thread);
        return put_back(shared, i, back);
    };
    let mut driving = lock(&events.driving);
    let back = caught(shared, i, || {
        let mut book = Book::new(Driver::Event, &conn, job);
        if driving.ended || driving.broken.is_some() {
            return book.fail(shared, i, *conn, FrameError::Closed);
        }
        book.send(shared, i, &mut conn);
        if book.is_empty() {
            return book.finish(shared, i, conn);
        }
        // Held before the first byte went out: the answer waits for this lock.
        driving.held = Some((conn, book));
        Slot::Busy
    });
    drop(driving);
    if !matches!(back, Slot::Busy) {
        put_back(shared, i, back);
    }
}

impl Sink for Evented {
    fn arrived(&self, incoming: Result<Incoming<'_>, FrameError>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let i = self.i;
        // Only the end of the link comes as `Closed` (see `Sink::arrived`).
        let ended_link = matches!(incoming, Err(FrameError::Closed));
        let mut driving = lock(&self.driving);
        if !ended_link && driving.broken.is_some() {
            // Killed for breaking its protocol: what else it says until its end is dropped.
            return;
        }
        let Some((mut conn, mut book)) = driving.held.take() else {
            if ended_link {
                driving.ended = true;
                let cause = driving.broken.take();
                drop(driving);
                return self.ended_idle(&shared, cause);
            }
            // It spoke while it held no job: killed now, failed when its end comes.
            driving.broken = Some(match incoming {
                Err(e) => e,
                Ok(_) => FrameError::Malformed("a message while it held no job".into()),
            });
            drop(driving);
            return self.kill_idle(&shared);
        };
        let back = caught(&shared, i, || {
            if ended_link {
                driving.ended = true;
                let cause = driving.broken.take().unwrap_or(FrameError::Closed);
                return book.fail(&shared, i, *conn, cause);
            }
            let taken = incoming.and_then(|incoming| book.take(&shared, i, incoming));
            match taken {
                Ok(ended) => {
                    if ended {
                        conn.link.shrink_buffers();
                    }
                    book.send(&shared, i, &mut conn);
                    if book.is_empty() {
                        return book.finish(&shared, i, conn);
                    }
                    driving.held = Some((conn, book));
                    Slot::Busy
                }
                Err(e) => {
                    // Broke its protocol: killed now, and failed when its end is reported
                    // (reaping it here would wait for a report only this thread can read).
                    conn.peer.kill();
                    driving.broken = Some(e);
                    driving.held = Some((conn, book));
                    Slot::Busy
                }
            }
        });
        drop(driving);
        if !matches!(back, Slot::Busy) {
            put_back(&shared, i, back);
        }
    }
}

impl Evented {
    /// Kills the idle worker of its slot, if the slot still holds it: it broke its protocol.
    fn kill_idle(&self, shared: &Inner) {
        let st = shared.state();
        if let Slot::Idle(conn) = st.slot(self.i)
            && conn
                .events
                .as_ref()
                .is_some_and(|e| std::ptr::eq(Arc::as_ptr(e), self))
        {
            conn.peer.kill();
        }
    }

    /// Its link ended, or spoke out of turn, while its worker held no job: an idle worker
    /// died. If its slot still holds it, it is failed there and refilled at once, rather
    /// than when its next job finds out.
    fn ended_idle(&self, shared: &Inner, cause: Option<FrameError>) {
        let i = self.i;
        let conn = {
            let mut st = shared.state();
            let ours = matches!(st.slot(i), Slot::Idle(conn)
                if conn.events.as_ref().is_some_and(|e| std::ptr::eq(Arc::as_ptr(e), self)));
            if !ours {
                // Its slot is being started on (the job finds out), or has moved on.
                return;
            }
            match st.put(i, Slot::Busy) {
                Slot::Idle(conn) => conn,
                other => {
                    st.put(i, other);
                    return;
                }
            }
        };
        if cause.is_some() {
            conn.peer.kill();
        }
        let cause = cause.unwrap_or(FrameError::Closed);
        let back = caught(shared, i, || {
            // No job: only the facts of its end are gathered.
            super::driver::fail_idle(shared, i, *conn, cause)
        });
        put_back(shared, i, back);
    }
}

/// Refills vacant evented slot `i` (retiring its recycled worker first, if it holds one) on
/// a thread of its own, as starting a worker blocks; `join` and `shutdown` wait for it.
pub(super) fn refill(shared: &Inner, i: usize, recycled: Option<Box<Conn>>, wanted: bool) {
    let Some(me) = shared.me.upgrade() else {
        return;
    };
    let body = move || {
        let shared = &*me;
        if let Some(mut conn) = recycled {
            uninstall(&mut conn);
            // Still registered while its exit hook runs: `shutdown` kills it.
            lifecycle::retire(shared, i, *conn);
            shared.watch.unregister(i);
        }
        let back = if wanted {
            lifecycle::replace(shared, i)
        } else {
            Slot::Retired
        };
        put_back(shared, i, back);
    };
    let name = format!("{}-refill-{i}", shared.spec.pool);
    match super::spawn_thread(name, body) {
        Ok(handle) => lock(&shared.transient).push(handle),
        Err(e) => {
            tracing::error!(pool = %shared.spec.pool, worker = i, error = &e as &dyn std::error::Error, "cannot start a thread to replace a worker");
            shared.set_last_error(e);
            put_back(shared, i, Slot::Dead);
        }
    }
}
