//! Feeding a worker its jobs without holding up the others: the main thread writes a body
//! straight into the worker's job ring when that cannot wait (see `backlog`), and otherwise
//! leaves it in the worker's backlog and goes on reading. A writer thread of that worker,
//! started then, holds the ring's sending half and writes the backlog out as room appears
//! (the ring wakes it), then hands the ring back and ends. While the pool keeps within its
//! budget the backlog stays empty: a writer runs only for a job larger than that, which the
//! pool sends only to a worker that holds nothing, and only while that job is being written.
//!
//! Nothing waits for room with a lock held: the forwarder, which frees room by forwarding
//! the worker's answers, never waits for a writer.

use super::backlog::{Backlog, Route};
use super::workers::Worker;
use super::{Heard, heard};
use crate::sync::lock;
use crate::transport::ShmTx;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// How a worker is fed.
#[derive(Debug)]
pub(super) struct Feed {
    /// The sending half of its link, unless a writer holds it, or the worker is gone.
    tx: Option<ShmTx>,
    backlog: Backlog,
    /// The worker was killed or has ended: it is sent nothing more.
    closed: bool,
}

impl Feed {
    /// The feed of a worker whose ring holds its `greeting` (frames).
    pub(super) fn new(tx: ShmTx, greeting: &[u8]) -> Self {
        let mut backlog = Backlog::default();
        backlog.wrote_frames(greeting);
        Feed {
            tx: Some(tx),
            backlog,
            closed: false,
        }
    }

    /// The worker answered `job`: it read it out of the ring.
    pub(super) fn job_read(&mut self, job: u64) {
        self.backlog.job_read(job);
    }

    /// The worker is gone: nothing more is written, and what waits is dropped.
    pub(super) fn close(&mut self) {
        self.closed = true;
        self.tx = None;
        self.backlog.clear();
    }
}

/// Hands the body of a message for `worker` to it: into its ring, or to its backlog (then
/// `body` is taken).
pub(super) fn deliver(worker: &Arc<Worker>, body: &mut Vec<u8>, last: &Heard, started: Instant) {
    let mut feed = lock(&worker.feed);
    if feed.closed {
        return;
    }
    match feed.backlog.route(body.len()) {
        Route::Ring => {
            let Some(mut tx) = feed.tx.take() else {
                return;
            };
            drop(feed);
            // The write cannot wait; were it to, waiting for room in the worker's ring is not
            // the pool's silence.
            last.delivering.store(true, Ordering::Relaxed);
            let sent = tx.send_body(body);
            last.delivering.store(false, Ordering::Relaxed);
            heard(last, started);
            let mut feed = lock(&worker.feed);
            match sent {
                Ok(()) if !feed.closed => {
                    feed.backlog.wrote(body);
                    feed.tx = Some(tx);
                }
                // A worker that died takes no more; its forwarder says how it ended.
                _ => feed.close(),
            }
        }
        Route::Backlog => feed.backlog.push(std::mem::take(body)),
        Route::BacklogAndStartWriter => {
            feed.backlog.push(std::mem::take(body));
            let Some(tx) = feed.tx.take() else {
                return;
            };
            drop(feed);
            let (thread_worker, slot) = (Arc::clone(worker), worker.slot);
            let moved = Arc::new(std::sync::Mutex::new(Some(tx)));
            let thread_tx = Arc::clone(&moved);
            let spawned = std::thread::Builder::new()
                .name(format!("ppool-agent-feed-{slot}"))
                .spawn(move || {
                    if let Some(tx) = lock(&thread_tx).take() {
                        write_backlog(&thread_worker, tx);
                    }
                });
            if spawned.is_err() {
                // Without a thread for it, the backlog is written here, waiting as it must.
                if let Some(tx) = lock(&moved).take() {
                    last.delivering.store(true, Ordering::Relaxed);
                    write_backlog(worker, tx);
                    last.delivering.store(false, Ordering::Relaxed);
                    heard(last, started);
                }
            }
        }
    }
}

/// Writes `worker`'s backlog into its ring, waiting for room as it must, until the backlog is
/// empty (then the ring's sending half goes back to the feed) or the worker is gone.
fn write_backlog(worker: &Worker, mut tx: ShmTx) {
    loop {
        let body = {
            let mut feed = lock(&worker.feed);
            if feed.closed {
                return;
            }
            match feed.backlog.next() {
                Some(body) => body,
                None => {
                    feed.tx = Some(tx);
                    return;
                }
            }
        };
        let sent = tx.send_body(&body);
        let mut feed = lock(&worker.feed);
        if sent.is_err() || feed.closed {
            // The worker ended: its forwarder says how.
            feed.close();
            return;
        }
        feed.backlog.wrote(&body);
    }
}
