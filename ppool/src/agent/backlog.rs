//! How much of a worker's job ring the agent may fill without waiting, and the jobs that wait
//! for room in it: a pure policy, with no thread and no ring of its own.
//!
//! The agent keeps a ledger of what it wrote into each worker's job ring and is not known to
//! be read yet: every frame body, with the most it may take in the ring, until the worker
//! answers a job after it. A worker reads a job whole (and publishes how far it read) before
//! it runs it, so once it answered a job (an outcome, or the job's end), the job and
//! everything written before it have left the ring.
//! What the ring holds is therefore at most what the ledger holds and one pad at the ring's
//! end, and a body goes straight into the ring only while the ledger, with it, stays within
//! [`WRITE_WITHOUT_WAITING`]: that write cannot wait. Any other body waits in the worker's
//! backlog, and everything after it for that worker waits behind it, in order, until a writer
//! of its own has put them in the ring (see `feed`).
//!
//! The pool never sends a worker more than [`remote_budget`] unanswered, but one job larger
//! than that alone, to a worker that holds nothing. So within the budget every body goes
//! straight into the ring, and what waits in a backlog is at most one such job (and the
//! frames that end the worker, behind it).

use super::remote_budget;
use crate::protocol::{TasksHeader, kind};
use std::collections::VecDeque;

/// The bytes of each worker's job ring, as `transport::shm` makes it: the ledger's bound is
/// derived from it, so that a write it allows never waits for room.
pub(super) const JOB_RING_BYTES: usize = crate::transport::RING_BYTES;

/// The largest piece of an item in one record of the ring: a quarter of it, less the tag
/// (`shm::push_item`).
const PIECE: usize = JOB_RING_BYTES / 4 - 1;

/// The most bytes a pad can take: it covers the end of the ring that a record did not fit
/// in, so it is smaller than the largest record (a piece, its tag, its header, rounded up).
const PAD_MAX: usize = JOB_RING_BYTES / 4 + 8;

/// The most the ledger may hold with a body about to be written, for the write never to wait:
/// the ring less one pad (what is unread spans the ring's end at most once).
pub(super) const WRITE_WITHOUT_WAITING: usize = JOB_RING_BYTES - PAD_MAX;

// The budget, with the records' overhead of as many jobs as a worker is ever sent ahead and
// a greeting as large again, goes straight into the ring.
const _: () = assert!(2 * remote_budget() + 64 * 64 <= WRITE_WITHOUT_WAITING);

/// The most bytes a body of `len` bytes takes in the ring, pads aside: each piece's record
/// header, tag and padding to 8 bytes, and the record that announces an item cut in pieces.
pub(super) fn ring_cost(len: usize) -> usize {
    let pieces = len.div_ceil(PIECE).max(1);
    let hint = if len > PIECE { 24 } else { 0 };
    len.saturating_add(pieces * 16 + hint)
}

/// The job a body starts, if it is a TASKS body.
fn job_of(body: &[u8]) -> Option<u64> {
    if body.first() != Some(&kind::TASKS) {
        return None;
    }
    TasksHeader::read(body).ok().map(|h| h.job)
}

/// Where a body for a worker goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Straight into the ring, by the caller: it cannot wait.
    Ring,
    /// Into the backlog; the caller starts a writer for it (none was at work).
    BacklogAndStartWriter,
    /// Into the backlog, behind what waits there; its writer is at work.
    Backlog,
}

/// One worker's ledger and backlog.
#[derive(Debug, Default)]
pub(super) struct Backlog {
    /// What was written into the ring and is not known to be read, oldest first: the job it
    /// starts (a TASKS body) and what it may take in the ring.
    unread: VecDeque<(Option<u64>, usize)>,
    /// The sum of the costs in `unread`.
    unread_cost: usize,
    /// Bodies waiting for room, oldest first.
    waiting: VecDeque<Vec<u8>>,
    /// A writer holds the ring and empties `waiting`: everything goes behind it.
    writing: bool,
}

impl Backlog {
    /// Where a body of `len` bytes goes; [`Route::Ring`] leaves the ledger as it is (the caller
    /// says [`Backlog::wrote`] once it is in), the others expect [`Backlog::push`].
    pub(super) fn route(&mut self, len: usize) -> Route {
        if self.writing {
            return Route::Backlog;
        }
        if self.unread_cost.saturating_add(ring_cost(len)) <= WRITE_WITHOUT_WAITING {
            return Route::Ring;
        }
        self.writing = true;
        Route::BacklogAndStartWriter
    }

    /// Queues a body that [`Backlog::route`] sent to the backlog.
    pub(super) fn push(&mut self, body: Vec<u8>) {
        self.waiting.push_back(body);
    }

    /// The next body for the writer; `None` ends its turn (what comes next may go straight
    /// into the ring again).
    pub(super) fn next(&mut self) -> Option<Vec<u8>> {
        let next = self.waiting.pop_front();
        if next.is_none() {
            self.writing = false;
        }
        next
    }

    /// A body is in the ring now.
    pub(super) fn wrote(&mut self, body: &[u8]) {
        self.wrote_len(job_of(body), body.len());
    }

    /// Bytes written into the ring, outside of a body: `len` bytes of frames, such as the
    /// greeting the ring starts with, each body of them counted as one.
    pub(super) fn wrote_frames(&mut self, frames: &[u8]) {
        let mut rest = frames;
        while let Some((body, next)) = crate::protocol::split_frame(rest) {
            self.wrote(body);
            rest = next;
        }
    }

    fn wrote_len(&mut self, job: Option<u64>, len: usize) {
        let cost = ring_cost(len);
        self.unread_cost = self.unread_cost.saturating_add(cost);
        self.unread.push_back((job, cost));
    }

    /// The worker answered `job` (an outcome, or its end): it read the job, and all written
    /// before it. A job not in the ledger changes nothing.
    pub(super) fn job_read(&mut self, job: u64) {
        let Some(at) = self.unread.iter().position(|&(j, _)| j == Some(job)) else {
            return;
        };
        for (_, cost) in self.unread.drain(..=at) {
            self.unread_cost -= cost;
        }
    }

    /// Forgets what waits: the worker is gone.
    pub(super) fn clear(&mut self) {
        self.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FrameBuf;
    use crate::shm::{self, Assembler, Layout, Region, RingError};

    /// A TASKS body of `job` of `len` bytes in all.
    fn tasks(job: u64, len: usize) -> Vec<u8> {
        let mut frame = FrameBuf::default();
        TasksHeader::new(job, 1).start(&mut frame);
        let header = frame.take();
        let mut body = header[4..].to_vec();
        body.resize(len.max(body.len()), 7);
        body
    }

    #[test]
    fn jobs_within_the_budget_go_straight_into_the_ring() {
        let mut backlog = Backlog::default();
        let mut sent = 0;
        let mut job = 0;
        while sent + 4 + 1000 <= remote_budget() {
            assert_eq!(backlog.route(1000), Route::Ring);
            backlog.wrote(&tasks(job, 1000));
            sent += 4 + 1000;
            job += 1;
        }
        // A greeting as large as the budget besides.
        let greeting = vec![0u8; remote_budget()];
        assert_eq!(backlog.route(greeting.len()), Route::Ring);
    }

    #[test]
    fn a_body_without_room_waits_and_everything_after_it_too_in_order() {
        let mut backlog = Backlog::default();
        backlog.wrote(&tasks(1, 600 << 10));
        assert_eq!(backlog.route(300 << 10), Route::BacklogAndStartWriter);
        backlog.push(tasks(2, 300 << 10));
        // A small one that would fit waits behind it all the same.
        assert_eq!(backlog.route(10), Route::Backlog);
        backlog.push(tasks(3, 10));
        assert_eq!(backlog.waiting.len(), 2);
        let second = backlog.next().expect("the large one");
        assert_eq!(job_of(&second), Some(2));
        backlog.wrote(&second);
        // More comes while the writer writes: behind it.
        assert_eq!(backlog.route(10), Route::Backlog);
        backlog.push(tasks(4, 10));
        let order: Vec<_> = std::iter::from_fn(|| backlog.next())
            .map(|b| job_of(&b))
            .collect();
        assert_eq!(order, vec![Some(3), Some(4)]);
        // The writer's turn ended; the ledger holds 900 KiB unread, so the next large one
        // waits, and a new writer starts.
        assert_eq!(backlog.route(300 << 10), Route::BacklogAndStartWriter);
    }

    #[test]
    fn an_answered_job_frees_it_and_everything_written_before_it() {
        let mut backlog = Backlog::default();
        backlog.wrote_frames(&[&4u32.to_le_bytes()[..], &[kind::HELLO, 0, 0, 0]].concat());
        backlog.wrote(&tasks(5, 500 << 10));
        backlog.wrote(&[kind::EXIT]);
        backlog.wrote(&tasks(6, 200 << 10));
        assert_eq!(backlog.route(200 << 10), Route::BacklogAndStartWriter);
        assert_eq!(backlog.next(), None);
        // An answer to a job the ledger does not know (sent before it, or never) frees
        // nothing.
        backlog.job_read(99);
        assert_eq!(backlog.unread.len(), 4);
        backlog.job_read(5);
        assert_eq!(backlog.unread.len(), 2, "the greeting and job 5 are read");
        assert_eq!(backlog.route(200 << 10), Route::Ring);
        backlog.job_read(6);
        assert_eq!((backlog.unread.len(), backlog.unread_cost), (0, 0));
    }

    #[test]
    fn the_cost_of_a_body_covers_its_records_in_a_real_ring() {
        for len in [
            0,
            1,
            7,
            8,
            9,
            100,
            PIECE - 1,
            PIECE,
            PIECE + 1,
            3 * PIECE + 5,
        ] {
            // A fresh ring each time: no pad.
            let layout = Layout::new(JOB_RING_BYTES, 4096).expect("layout");
            let (mut sup, _worker) = Region::heap(layout).expect("region").into_both();
            let body = vec![1u8; len];
            let mut no_wait = |_: &mut shm::Producer, _: usize| -> Result<(), RingError> {
                panic!("the ring was full")
            };
            shm::push_item(&mut sup.jobs, shm::ITEM_FRAME, &body, false, &mut no_wait)
                .map_err(|(e, _)| e)
                .expect("push");
            let took = sup.jobs.written() as usize;
            assert!(took <= ring_cost(len), "{len} bytes took {took}");
        }
    }

    /// Jobs of many sizes written as the ledger allows, into a real ring of the agent's size
    /// whose worker reads them a job at a time, late, and answers them: no write ever
    /// waits for room.
    #[test]
    fn a_write_the_ledger_allows_never_waits_for_room() {
        let layout = Layout::new(JOB_RING_BYTES, 4096).expect("layout");
        let (mut sup, mut worker) = Region::heap(layout).expect("region").into_both();
        let (mut asm, mut frame, mut outcome) = (Assembler::new(usize::MAX), vec![], vec![]);
        let mut backlog = Backlog::default();
        let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut written = 0;
        for job in 0..3000u64 {
            let len = match rand(4) {
                0 => 20 + rand(100),
                1 => 20 + rand(4000),
                2 => 20 + rand(PIECE + 20_000),
                // Up to what fits alone.
                _ => 20 + rand(WRITE_WITHOUT_WAITING - 1024),
            };
            pending.push_back(tasks(job, len));
            // Write what the ledger allows, in order, as the main thread and a writer do.
            while let Some(body) = pending.front() {
                if backlog.route(body.len()) != Route::Ring {
                    // The writer's turn ends at once here: this test only writes what fits.
                    while backlog.next().is_some() {}
                    break;
                }
                let mut no_wait = |_: &mut shm::Producer, _: usize| -> Result<(), RingError> {
                    panic!("a write the ledger allowed waited for room")
                };
                shm::push_item(&mut sup.jobs, shm::ITEM_FRAME, body, false, &mut no_wait)
                    .map_err(|(e, _)| e)
                    .expect("push");
                backlog.wrote(body);
                pending.pop_front();
                written += 1;
            }
            // The worker reads a job now and then, and answers it.
            if (rand(3) == 0 || !pending.is_empty())
                && let Some(kind) = asm
                    .pop(&mut worker.jobs, &mut frame, &mut outcome)
                    .expect("pop")
            {
                assert_eq!(kind, shm::ITEM_FRAME);
                worker.jobs.publish_head();
                let done = job_of(&frame).expect("a job");
                frame.clear();
                backlog.job_read(done);
            }
        }
        assert!(written > 1000, "only {written} jobs were written");
    }
}
