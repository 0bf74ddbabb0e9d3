//! Local workers over shared memory: each worker maps a region of its own (see `crate::shm`)
//! that holds a ring for jobs, a ring for results and a progress word.
//!
//! The supervisor treats the region as hostile input: the rings check every index, length
//! and record number, and anything wrong is a protocol error for that worker. A worker's
//! death is seen through its pidfd, looked at between waits of at most [`DEATH_CHECK`]; its
//! published results are still read after it, so none is lost.

use super::poll::Pidfd;
use super::{Launch, LaunchConfig, Link, Peer, Started, Worker, process};
use crate::error::Error;
use crate::protocol::{self, FrameError, Results};
use crate::shm::{self, Assembler, Layout, Producer, Region, RingError, SupervisorEnd};
use crate::worker::bootstrap::ChannelDesc;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Each ring's size. Items larger than a quarter of it cross in pieces, both sides copying
/// at once; only the pages a ring has used count against anyone's memory.
const RING_BYTES: usize = 1 << 20;

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
        let config = &self.config;
        let shm_error =
            |e: RingError| Error::spawn(format!("cannot set up worker {index}'s memory: {e}"));
        let layout = Layout::new(RING_BYTES, RING_BYTES).map_err(shm_error)?;
        let mut region = Region::create(layout).map_err(shm_error)?;
        let memfd = region
            .take_fd()
            .ok_or_else(|| Error::spawn("internal: a fresh region without its memfd"))?;
        let channel = ChannelDesc::Shm {
            fd: memfd.as_raw_fd(),
            max_frame: config.max_frame,
        };
        let peer = process::spawn(config, index, channel, vec![memfd.as_raw_fd()])?;
        drop(memfd);
        let pid = peer.pid();
        let mut link = ShmLink {
            end: region.supervisor(),
            pidfd: Arc::clone(&peer.pidfd),
            assembler: Assembler::new(config.max_frame),
            body: Vec::new(),
            results: Vec::new(),
            outcomes: 0,
            returned: Returned::Nothing,
            dead: false,
        };
        if let Err(e) = link.send(&[greeting]) {
            peer.kill();
            let cause = peer.reap();
            return Err(Error::spawn(format!(
                "worker {index} (pid {pid}): cannot greet it: {e} ({cause})"
            )));
        }
        Ok(Worker {
            link: Box::new(link),
            peer,
        })
    }
}

/// What [`ShmLink::recv`] returned last, to be cleared at the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Returned {
    Nothing,
    Frame,
    Results,
}

/// The supervisor's end of a worker's region.
#[derive(Debug)]
struct ShmLink {
    end: SupervisorEnd,
    pidfd: Arc<Pidfd>,
    assembler: Assembler,
    /// The frame being received.
    body: Vec<u8>,
    /// The RESULTS body being gathered from outcomes published one by one: room for its
    /// header, then the outcomes.
    results: Vec<u8>,
    /// Outcomes in `results`.
    outcomes: u32,
    returned: Returned,
    /// The worker was seen dead and everything it published was read.
    dead: bool,
}

impl ShmLink {
    /// Waits at most `timeout` for a record, a wake-up, or the worker's end (then `dead`).
    fn wait(&mut self, spin: Duration, timeout: Option<Duration>) -> Result<bool, RingError> {
        let started = Instant::now();
        let mut spin = spin;
        loop {
            let left = timeout.map(|t| t.saturating_sub(started.elapsed()));
            let slice = left.map_or(DEATH_CHECK, |l| l.min(DEATH_CHECK));
            if self.end.results.wait_readable(spin, Some(slice))? {
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

    /// The frame whose last piece came, merged with the outcomes that came before it when it
    /// ends a job.
    fn complete(&mut self) -> Result<&[u8], FrameError> {
        if self.outcomes == 0 {
            self.returned = Returned::Frame;
            return Ok(&self.body);
        }
        let last = Results::parse(&self.body)?;
        let count = self
            .outcomes
            .checked_add(last.count)
            .ok_or_else(|| FrameError::Malformed("more outcomes than a job holds".into()))?;
        protocol::write_results_header(
            &mut self.results[..protocol::RESULTS_HEADER_BODY],
            last.job,
            count,
            last.busy_nanos,
            last.max_task_nanos,
            last.more,
        );
        let first_outcome = self.body.len() - last.outcome_bytes();
        self.results.extend_from_slice(&self.body[first_outcome..]);
        self.returned = Returned::Results;
        Ok(&self.results)
    }

    /// The outcomes of a dead worker's last job, as a partial RESULTS frame of the job its
    /// progress word names.
    fn salvage(&mut self) -> Result<&[u8], FrameError> {
        let progress = self.end.progress.read().map_err(frame_error)?;
        protocol::write_results_header(
            &mut self.results[..protocol::RESULTS_HEADER_BODY],
            progress.job,
            self.outcomes,
            0,
            0,
            true,
        );
        self.returned = Returned::Results;
        Ok(&self.results)
    }
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

impl Link for ShmLink {
    fn send(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        if self.pidfd.has_exited() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the worker was gone before the job was sent",
            ));
        }
        let mut wait = wait_room(&self.pidfd);
        for frames in frames {
            // One slice may hold several frames (a greeting does), each behind its length.
            let mut rest: &[u8] = frames;
            while let Some((body, next)) = protocol::split_frame(rest) {
                shm::push_item(&mut self.end.jobs, shm::ITEM_FRAME, body, false, &mut wait)
                    .map_err(|(e, _)| match e {
                        RingError::Io(e) => e,
                        e => io::Error::other(e.to_string()),
                    })?;
                rest = next;
            }
            if !rest.is_empty() {
                return Err(io::Error::other("internal: a frame cut short"));
            }
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<&[u8], FrameError> {
        match std::mem::replace(&mut self.returned, Returned::Nothing) {
            Returned::Nothing => {}
            Returned::Frame => self.body.clear(),
            Returned::Results => {
                self.results.clear();
                self.outcomes = 0;
                self.body.clear();
            }
        }
        if self.results.is_empty() {
            self.results.resize(protocol::RESULTS_HEADER_BODY, 0);
        }
        loop {
            if self.dead {
                return Err(FrameError::Closed);
            }
            let popped = self
                .assembler
                .pop(&mut self.end.results, &mut self.body, &mut self.results)
                .map_err(frame_error)?;
            match popped {
                Some(shm::ITEM_FRAME) => return self.complete(),
                Some(_) => {
                    self.outcomes = self.outcomes.checked_add(1).ok_or_else(|| {
                        FrameError::Malformed("more outcomes than a job holds".into())
                    })?;
                }
                None => {
                    if self.pidfd.has_exited() {
                        // Its last stores are visible now: one more look, then what it
                        // published of its last job, if anything.
                        match self
                            .assembler
                            .pop(&mut self.end.results, &mut self.body, &mut self.results)
                            .map_err(frame_error)?
                        {
                            Some(shm::ITEM_FRAME) => return self.complete(),
                            Some(_) => {
                                self.outcomes += 1;
                                continue;
                            }
                            None => {}
                        }
                        self.dead = true;
                        if self.outcomes > 0 {
                            return self.salvage();
                        }
                        return Err(FrameError::Closed);
                    }
                    self.wait(Duration::ZERO, None).map_err(frame_error)?;
                }
            }
        }
    }

    fn wait_readable(&mut self, spin: Duration, timeout: Option<Duration>) -> io::Result<bool> {
        if self.dead {
            return Ok(true);
        }
        self.wait(spin, timeout).map_err(|e| match e {
            RingError::Io(e) => e,
            e => io::Error::other(e.to_string()),
        })
    }

    /// A quarter of the job ring: the jobs held unanswered always fit, pads and record
    /// headers included, so sending them never waits for a worker that waits for us.
    fn budget(&self) -> usize {
        self.end.jobs.capacity() / 4
    }

    /// The progress word says which tasks of the job started.
    fn started(&mut self, job: u64, _sent_bytes: usize) -> Started {
        match self.end.progress.read() {
            Ok(progress) if progress.job == job => Started::Upto(progress.started),
            Ok(_) => Started::None,
            Err(_) => Started::Unknown,
        }
    }

    /// Called once the frame last returned is done with: the next `recv` clears whatever
    /// is left.
    fn shrink_buffers(&mut self) {
        protocol::shrink(&mut self.body);
        protocol::shrink(&mut self.results);
    }
}
