//! Local workers over shared memory: each worker maps a region of its own (see `crate::shm`)
//! that holds a ring for jobs, a ring for results and a progress word.
//!
//! The supervisor treats the region as hostile input: the rings check every index, length
//! and record number, and anything wrong is a protocol error for that worker. A worker's
//! death is seen through its pidfd, looked at between waits of at most [`DEATH_CHECK`]; its
//! published results are still read after it, so none is lost.
//!
//! How far a dead worker got into a job is told by two things it wrote: how far it read the
//! job ring (it publishes that before it acts on a frame, see `crate::shm`), and the progress
//! word. A job whose last record it had not read was never handed over, whatever the progress
//! word says: an entry that scribbles over the word cannot get the next, innocent job blamed.

use super::poll::Pidfd;
use super::process::{self, ProcessPeer};
use super::{Incoming, JobEnd, Launch, LaunchConfig, Link, Peer, Started, Worker};
use crate::error::Error;
use crate::protocol::{self, FrameError, ResultsHeader, TasksHeader};
use crate::shm::{
    self, Assembler, Consumer, Layout, Producer, ProgressReader, Region, RingError, SupervisorEnd,
};
use crate::worker::bootstrap::ChannelDesc;
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

/// Each ring's size. Items larger than a quarter of it cross in pieces, both sides copying
/// at once; only the pages a ring has used count against anyone's memory.
pub(crate) const RING_BYTES: usize = 1 << 20;

/// The longest a wait goes without looking whether the worker is still alive.
const DEATH_CHECK: Duration = Duration::from_millis(5);

/// Starts local workers that share memory with the supervisor.
#[derive(Debug)]
pub(crate) struct SharedMemory {
    config: LaunchConfig,
}

impl SharedMemory {
    pub(crate) fn new(config: LaunchConfig) -> Self {
        SharedMemory { config }
    }
}

impl Launch for SharedMemory {
    fn start(&self, index: usize, greeting: &[u8]) -> Result<Worker, Error> {
        let (tx, rx, peer) = spawn(&self.config, index, greeting)?;
        Ok(Worker {
            link: Box::new(ShmLink { tx, rx }),
            peer,
        })
    }
}

/// Starts local worker `index` on a region of its own and greets it: the two halves of its
/// link, which may be driven from two threads, and its process.
pub(crate) fn spawn(
    config: &LaunchConfig,
    index: usize,
    greeting: &[u8],
) -> Result<(ShmTx, ShmRx, Arc<ProcessPeer>), Error> {
    let shm_error =
        |e: RingError| Error::spawn(format!("cannot set up worker {index}'s memory: {e}"));
    let layout = Layout::new(RING_BYTES, RING_BYTES).map_err(shm_error)?;
    let mut region = Region::create(layout).map_err(shm_error)?;
    let memfd = region
        .take_fd()
        .ok_or_else(|| Error::internal(format!("worker {index}'s fresh region has no memfd")))?;
    let channel = ChannelDesc::Shm {
        fd: memfd.as_raw_fd(),
        max_frame: config.max_frame,
    };
    let peer = process::spawn(config, index, channel, vec![memfd.as_raw_fd()])?;
    drop(memfd);
    let pid = peer.pid();
    let SupervisorEnd {
        jobs,
        results,
        progress,
    } = region.supervisor();
    let mut tx = ShmTx {
        jobs,
        pidfd: Arc::clone(&peer.pidfd),
        sent_jobs: VecDeque::new(),
    };
    let rx = ShmRx {
        results,
        progress,
        pidfd: Arc::clone(&peer.pidfd),
        assembler: Assembler::new(config.max_frame),
        body: Vec::new(),
        raw: Vec::new(),
        outcomes: 0,
        returned: Returned::Nothing,
        dead: false,
        partials: false,
        death_check: DEATH_CHECK,
    };
    if let Err(e) = tx.send(&[greeting]) {
        peer.kill();
        let cause = peer.reap();
        return Err(Error::spawn(format!(
            "worker {index} (pid {pid}): cannot greet it: {e} ({cause})"
        )));
    }
    Ok((tx, rx, peer))
}

/// What the result ring held next.
enum Next {
    /// A frame's last piece: the frame is whole.
    Frame,
    /// One more outcome of the job under way.
    Outcome,
    /// Nothing published for now.
    Empty,
}

/// What [`ShmLink::recv`] returned last, to be cleared at the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Returned {
    Nothing,
    /// A frame, or a run that was all in it.
    Frame,
    /// The outcome records gathered, and the frame that ended them, if any.
    Outcomes,
}

/// The supervisor's end of a worker's region: the sending half and the receiving half.
#[derive(Debug)]
struct ShmLink {
    tx: ShmTx,
    rx: ShmRx,
}

/// The half that sends jobs.
#[derive(Debug)]
pub(crate) struct ShmTx {
    jobs: Producer,
    pidfd: Arc<Pidfd>,
    /// The latest jobs sent, oldest first: each job's id and where its last record ends in
    /// the job ring (a byte count since the ring's start).
    sent_jobs: VecDeque<(u64, u64)>,
}

/// How many of the latest jobs [`ShmTx`] remembers the place of: far more than a worker ever
/// holds unanswered.
const SENT_JOBS_KEPT: usize = 256;

/// The half that receives answers, and reads the progress word.
#[derive(Debug)]
pub(crate) struct ShmRx {
    results: Consumer,
    progress: ProgressReader,
    pidfd: Arc<Pidfd>,
    assembler: Assembler,
    /// The frame being received.
    body: Vec<u8>,
    /// The outcome records published one by one since the last run was handed over, as
    /// they are, one after another.
    raw: Vec<u8>,
    /// Outcomes in `raw`.
    outcomes: u32,
    returned: Returned,
    /// The worker was seen dead and everything it published was read.
    dead: bool,
    /// Hand over the outcomes gathered so far, as a run without the job's end, whenever no
    /// more are published for now (for a host agent, so that the pool keeps them if the host is
    /// lost).
    partials: bool,
    /// How long a wait for the worker's records may go before its pidfd is looked at.
    death_check: Duration,
}

impl ShmRx {
    /// Waits at most `timeout` for a record, a wake-up, or the worker's end (then `dead`).
    fn wait(&mut self, spin: Duration, timeout: Option<Duration>) -> Result<bool, RingError> {
        let started = Instant::now();
        let mut spin = spin;
        loop {
            let left = timeout.map(|t| t.saturating_sub(started.elapsed()));
            let slice = left.map_or(self.death_check, |l| l.min(self.death_check));
            if self.results.wait_readable(spin, Some(slice))? {
                return Ok(true);
            }
            spin = Duration::ZERO;
            if self.pidfd.has_exited() {
                return Ok(true);
            }
            if left.is_some_and(|l| l <= slice) {
                return Ok(false);
            }
        }
    }

    /// The frame whose last piece came. A RESULTS frame ends the run of the outcome records
    /// that came before it (and holds more outcomes, should a worker put some in it).
    fn complete(&mut self) -> Result<Incoming<'_>, FrameError> {
        if self.body.first() != Some(&protocol::kind::RESULTS) {
            if self.outcomes > 0 {
                return Err(FrameError::Malformed(format!(
                    "a frame of kind {:?} after outcomes, instead of their RESULTS",
                    self.body.first()
                )));
            }
            self.returned = Returned::Frame;
            return Ok(Incoming::Frame(&self.body));
        }
        let (header, tail) = ResultsHeader::parse(&self.body)?;
        let end = (!header.more).then_some(JobEnd {
            busy_nanos: header.busy_nanos,
            max_task_nanos: header.max_task_nanos,
        });
        if self.outcomes == 0 {
            self.returned = Returned::Frame;
            return Ok(Incoming::Outcomes {
                job: header.job,
                count: header.count,
                raw: tail,
                end,
            });
        }
        let count = self
            .outcomes
            .checked_add(header.count)
            .ok_or_else(|| FrameError::Malformed("more outcomes than a job holds".into()))?;
        protocol::check_outcomes(&self.raw, self.outcomes)?;
        self.raw.extend_from_slice(tail);
        self.returned = Returned::Outcomes;
        Ok(Incoming::Outcomes {
            job: header.job,
            count,
            raw: &self.raw,
            end,
        })
    }

    /// The outcomes of a dead worker's last job, as a run of the job its progress word names.
    fn salvage(&mut self) -> Result<Incoming<'_>, FrameError> {
        let progress = self.progress.read().map_err(frame_error)?;
        self.run(progress.job)
    }
}

/// The job id of a TASKS body, if it is one.
fn tasks_job(body: &[u8]) -> Option<u64> {
    TasksHeader::read(body).ok().map(|header| header.job)
}

fn frame_error(e: RingError) -> FrameError {
    match e {
        RingError::Io(e) => FrameError::Io(e),
        e => FrameError::Malformed(e.to_string()),
    }
}

/// Waits for room in the job ring, as long as the worker lives.
fn wait_room(pidfd: &Pidfd) -> impl FnMut(&mut Producer, usize) -> Result<(), RingError> + '_ {
    move |producer, len| loop {
        if producer.wait_writable(len, Duration::ZERO, Some(DEATH_CHECK))? {
            return Ok(());
        }
        if pidfd.has_exited() {
            return Err(RingError::Io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the worker ended",
            )));
        }
    }
}

impl ShmTx {
    /// Sends one frame's body.
    pub(crate) fn send_body(&mut self, body: &[u8]) -> io::Result<()> {
        let mut wait = wait_room(&self.pidfd);
        shm::push_item(&mut self.jobs, shm::ITEM_FRAME, body, false, &mut wait).map_err(
            |(e, _)| match e {
                RingError::Io(e) => e,
                e => io::Error::other(e.to_string()),
            },
        )?;
        if let Some(job) = tasks_job(body) {
            if self.sent_jobs.len() == SENT_JOBS_KEPT {
                self.sent_jobs.pop_front();
            }
            self.sent_jobs.push_back((job, self.jobs.written()));
        }
        Ok(())
    }

    /// Whether the worker never took job `job` out of the job ring: its last record lies
    /// beyond what the worker says it read. A worker publishes that before it acts on a
    /// frame, so such a job never started. False when it cannot tell (the job is not among
    /// the latest sent, or the worker's read position is not a valid one).
    pub(crate) fn never_taken(&mut self, job: u64) -> bool {
        let Some(&(_, end)) = self.sent_jobs.iter().rev().find(|(j, _)| *j == job) else {
            return false;
        };
        match self.jobs.unread() {
            Ok(unread) => self.jobs.written() - unread < end,
            Err(_) => false,
        }
    }

    /// Sends finished frames (see [`Link::send`]).
    pub(crate) fn send(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        // No look at the pidfd here (a system call per job): jobs pushed to a worker that
        // died wait unread, its progress word shows they never started, and they run
        // elsewhere.
        for frames in frames {
            // One slice may hold several frames (a greeting does), each behind its length.
            let mut rest: &[u8] = frames;
            while let Some((body, next)) = protocol::split_frame(rest) {
                self.send_body(body)?;
                rest = next;
            }
            if !rest.is_empty() {
                return Err(io::Error::other("a frame cut short (a bug in ppool)"));
            }
        }
        Ok(())
    }

    /// See [`Link::budget`].
    pub(super) fn budget(&self) -> usize {
        self.jobs.capacity() / 4
    }
}

impl ShmRx {
    /// Receives one frame (see [`Link::recv`]).
    pub(crate) fn recv(&mut self) -> Result<Incoming<'_>, FrameError> {
        self.release_returned();
        loop {
            if self.dead {
                return Err(FrameError::Closed);
            }
            match self.next_item()? {
                Next::Frame => return self.complete(),
                Next::Outcome => continue,
                Next::Empty => {}
            }
            // Whatever comes next may be nanoseconds away: wait for it first, and look at the
            // worker's pidfd (a system call) only when nothing came.
            if !self.partials
                && self
                    .results
                    .wait_readable(Duration::ZERO, Some(self.death_check))
                    .map_err(frame_error)?
            {
                continue;
            }
            if self.pidfd.has_exited() {
                // Its last stores are visible now: one more look, then what it published of
                // its last job, if anything.
                match self.next_item()? {
                    Next::Frame => return self.complete(),
                    Next::Outcome => continue,
                    Next::Empty => {}
                }
                self.dead = true;
                if self.outcomes > 0 {
                    return self.salvage();
                }
                return Err(FrameError::Closed);
            }
            if self.partials && self.outcomes > 0 {
                // The progress word, read after those outcomes, names their job if its last
                // frame is still to come (its next job starts after it).
                let progress = self.progress.read().map_err(frame_error)?;
                match self.next_item()? {
                    Next::Frame => return self.complete(),
                    Next::Outcome => continue,
                    Next::Empty => return self.run(progress.job),
                }
            }
            self.wait(Duration::ZERO, None).map_err(frame_error)?;
        }
    }

    /// [`recv`](Self::recv) without waiting: what the worker sent next, or `None` when nothing
    /// came for now. With `exited` (the worker was seen dead, see [`has_exited`]), nothing
    /// more will come: what it published is handed over, its last outcomes as a run, then
    /// `FrameError::Closed`.
    ///
    /// [`has_exited`]: Self::has_exited
    pub(crate) fn try_recv(&mut self, exited: bool) -> Result<Option<Incoming<'_>>, FrameError> {
        self.release_returned();
        loop {
            if self.dead {
                return Err(FrameError::Closed);
            }
            match self.next_item()? {
                Next::Frame => return self.complete().map(Some),
                Next::Outcome => continue,
                Next::Empty => {}
            }
            if exited {
                self.dead = true;
                if self.outcomes > 0 {
                    return self.salvage().map(Some);
                }
                return Err(FrameError::Closed);
            }
            if self.partials && self.outcomes > 0 {
                let progress = self.progress.read().map_err(frame_error)?;
                match self.next_item()? {
                    Next::Frame => return self.complete().map(Some),
                    Next::Outcome => continue,
                    Next::Empty => return self.run(progress.job).map(Some),
                }
            }
            return Ok(None);
        }
    }

    /// Whether the worker has ended (its pidfd says so): its last stores are visible then.
    pub(crate) fn has_exited(&self) -> bool {
        self.pidfd.has_exited()
    }

    /// See [`Consumer::arm`]: the result ring's data bell to sleep on with others.
    pub(crate) fn arm(&self) -> Option<(&AtomicU32, u32)> {
        self.results.arm()
    }

    /// See [`Consumer::disarm`].
    pub(crate) fn disarm(&self) {
        self.results.disarm();
    }

    /// Lets go of what the last receive handed out: it is borrowed no more.
    fn release_returned(&mut self) {
        match std::mem::replace(&mut self.returned, Returned::Nothing) {
            Returned::Nothing => {}
            Returned::Frame => self.body.clear(),
            Returned::Outcomes => {
                self.raw.clear();
                self.outcomes = 0;
                self.body.clear();
            }
        }
    }

    /// Takes the next item out of the result ring, counting outcomes.
    fn next_item(&mut self) -> Result<Next, FrameError> {
        let popped = self
            .assembler
            .pop(&mut self.results, &mut self.body, &mut self.raw)
            .map_err(frame_error)?;
        match popped {
            Some(shm::ITEM_FRAME) => Ok(Next::Frame),
            Some(_) => {
                self.count_outcome()?;
                Ok(Next::Outcome)
            }
            None => Ok(Next::Empty),
        }
    }

    /// Hands over the outcomes gathered so far as a run whenever no more are published for
    /// now, instead of once the job is done.
    pub(crate) fn hand_over_partials(&mut self) {
        self.partials = true;
    }

    /// Looks at the worker's pidfd at most every `every` while it waits, instead of every
    /// [`DEATH_CHECK`]: for a host agent, whose hundreds of idle forwarders would otherwise
    /// wake hundreds of times a second each. A death is then reported up to `every` later.
    pub(crate) fn check_death_every(&mut self, every: Duration) {
        self.death_check = every;
    }

    /// The outcomes gathered so far, as a run of `job` without its end.
    fn run(&mut self, job: u64) -> Result<Incoming<'_>, FrameError> {
        protocol::check_outcomes(&self.raw, self.outcomes)?;
        self.returned = Returned::Outcomes;
        Ok(Incoming::Outcomes {
            job,
            count: self.outcomes,
            raw: &self.raw,
            end: None,
        })
    }

    fn count_outcome(&mut self) -> Result<(), FrameError> {
        self.outcomes = self
            .outcomes
            .checked_add(1)
            .ok_or_else(|| FrameError::Malformed("more outcomes than a job holds".into()))?;
        Ok(())
    }

    /// See [`Link::wait_readable`].
    pub(super) fn wait_readable(
        &mut self,
        spin: Duration,
        timeout: Option<Duration>,
    ) -> io::Result<bool> {
        if self.dead {
            return Ok(true);
        }
        self.wait(spin, timeout).map_err(|e| match e {
            RingError::Io(e) => e,
            e => io::Error::other(e.to_string()),
        })
    }

    /// The job the worker's progress word names, and how many of its tasks started.
    pub(crate) fn progress(&self) -> Option<(u64, u32)> {
        self.progress.read().ok().map(|p| (p.job, p.started))
    }

    /// See [`Link::shrink_buffers`].
    pub(crate) fn shrink_buffers(&mut self) {
        protocol::shrink(&mut self.body);
        protocol::shrink(&mut self.raw);
    }
}

/// Sleeps until one of `bells` (each a futex word and the value it had when armed) changes,
/// or `timeout` passes: how one thread waits on many workers' rings at once (`futex_waitv`,
/// at most [`WAIT_ANY_MAX`] words). An error of kind `Unsupported` means the kernel has no
/// `futex_waitv` (before Linux 5.16).
pub(crate) fn wait_any(bells: &[(&AtomicU32, u32)], timeout: Duration) -> io::Result<()> {
    use rustix::thread::futex;
    let waiters: Vec<futex::Wait> = bells
        .iter()
        .map(|&(bell, rung)| {
            let mut wait = futex::Wait::new();
            wait.val = u64::from(rung);
            wait.uaddr = futex::WaitPtr::new(bell.as_ptr().cast());
            wait.flags = futex::WaitFlags::SIZE_U32;
            wait
        })
        .collect();
    let timeout = rustix::time::Timespec::try_from(timeout).ok();
    let deadline = timeout.map(|t| {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let nanos = now.tv_nsec + t.tv_nsec;
        rustix::time::Timespec {
            tv_sec: now.tv_sec + t.tv_sec + nanos / 1_000_000_000,
            tv_nsec: nanos % 1_000_000_000,
        }
    });
    match futex::waitv(
        &waiters,
        futex::WaitvFlags::empty(),
        deadline.as_ref(),
        rustix::time::ClockId::Monotonic,
    ) {
        Ok(_) => Ok(()),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR | rustix::io::Errno::TIMEDOUT) => {
            Ok(())
        }
        Err(rustix::io::Errno::NOSYS) => Err(io::ErrorKind::Unsupported.into()),
        Err(e) => Err(e.into()),
    }
}

/// The most bells [`wait_any`] waits on at once.
pub(crate) const WAIT_ANY_MAX: usize = 128;

impl Link for ShmLink {
    fn send(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        self.tx.send(frames)
    }

    fn recv(&mut self) -> Result<Incoming<'_>, FrameError> {
        self.rx.recv()
    }

    fn wait_readable(&mut self, spin: Duration, timeout: Option<Duration>) -> io::Result<bool> {
        self.rx.wait_readable(spin, timeout)
    }

    /// A quarter of the job ring: the jobs held unanswered always fit, pads and record
    /// headers included, so sending them never waits for a worker that waits for us.
    fn budget(&self) -> usize {
        self.tx.budget()
    }

    /// None started if the worker never took the job out of the job ring (whatever the
    /// progress word says); else the progress word says which did.
    fn started(&mut self, job: u64, _sent_bytes: usize) -> Started {
        if self.tx.never_taken(job) {
            return Started::None;
        }
        match self.rx.progress() {
            Some((j, started)) if j == job => Started::Upto(started),
            Some(_) => Started::None,
            None => Started::Unknown,
        }
    }

    /// Called once the frame last returned is done with: the next `recv` clears whatever
    /// is left.
    fn shrink_buffers(&mut self) {
        self.rx.shrink_buffers();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FrameBuf;
    use crate::shm::Region;

    fn tasks_frame(job: u64) -> Vec<u8> {
        let mut frame = FrameBuf::default();
        TasksHeader::new(job, 1).start(&mut frame);
        frame.bytes(b"task");
        frame.take()
    }

    /// Job 7 and job 8 sent to a worker's ring, and the worker's end of it.
    fn two_jobs_sent() -> (ShmTx, crate::shm::WorkerEnd) {
        let layout = Layout::new(4096, 4096).expect("layout");
        let (sup, worker) = Region::heap(layout).expect("region").into_both();
        let mut tx = ShmTx {
            jobs: sup.jobs,
            pidfd: Arc::new(Pidfd::open(std::process::id())),
            sent_jobs: VecDeque::new(),
        };
        let (seven, eight) = (tasks_frame(7), tasks_frame(8));
        tx.send(&[&seven, &eight]).expect("send");
        (tx, worker)
    }

    #[test]
    fn a_job_the_worker_never_took_out_of_the_ring_never_started() {
        let (mut tx, mut worker) = two_jobs_sent();
        assert!(tx.never_taken(7) && tx.never_taken(8));
        // The worker takes job 7 and says so, as it does before it acts on a frame.
        let mut asm = Assembler::new(1 << 20);
        let (mut body, mut spare) = (Vec::new(), Vec::new());
        let got = asm.pop(&mut worker.jobs, &mut body, &mut spare);
        assert_eq!(got.expect("pop"), Some(shm::ITEM_FRAME));
        assert_eq!(tasks_job(&body), Some(7));
        worker.jobs.publish_head();
        assert!(!tx.never_taken(7), "taken: it may have started");
        assert!(tx.never_taken(8));
        // A job it does not remember is not known to be untaken.
        assert!(!tx.never_taken(99));
    }

    #[test]
    fn only_tasks_frames_carry_a_job() {
        assert_eq!(tasks_job(&tasks_frame(42)[4..]), Some(42));
        assert_eq!(tasks_job(&[protocol::kind::TASKS, 1, 2]), None);
        assert_eq!(tasks_job(&[protocol::kind::EXIT]), None);
        assert_eq!(tasks_job(&[]), None);
    }
}
