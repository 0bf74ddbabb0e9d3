//! The worker's end of its channel, of either kind: frames in, answers out, and each task's
//! start and end published as [`Publish`] asks.
//!
//! - [`PipeChannel`]: two pipes. Nothing tells the supervisor that a task started, so a job's
//!   outcomes go out together at its end, or in partial frames every [`FLUSH_EVERY`] while
//!   its tasks are long, which keeps the results of finished tasks should a later one crash.
//! - [`ShmChannel`]: a shared-memory region. How far the job ring was read is published as
//!   each frame is taken (a job never taken never started), the progress word says which task
//!   runs, and each outcome is published into the result ring the moment its task ends,
//!   without a system call; the supervisor is woken once, at the job's end.

use super::exec::{Publish, Published};
use super::{AnswerFrames, GREETING_MAX};
use crate::protocol::{FrameBuf, FrameError, FrameReader, ResultsHeader};
use crate::shm::{self, Assembler, Producer, Region, RingError, WorkerEnd};
use std::io::{self, PipeReader, PipeWriter, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// How often a pipe worker sends the outcomes of a job's finished tasks ahead of its end.
const FLUSH_EVERY: Duration = Duration::from_millis(1);

/// How a worker spins for its next frame after a job whose caller asked for it.
pub(super) const SPIN: Duration = Duration::from_micros(50);

/// A worker's end of its channel.
pub(super) trait Channel: Publish {
    /// Reads the next frame's body into `body`, spinning first if `spin`.
    fn recv(&mut self, body: &mut Vec<u8>, spin: bool) -> Result<(), FrameError>;

    /// Sends an answer.
    fn send(&mut self, answer: &AnswerFrames<'_>) -> io::Result<()>;

    /// A pool greeted this worker: frames may now be as large as the pool allows.
    fn greeted(&mut self, max_frame: usize);
}

/// Two pipes.
#[derive(Debug)]
pub(super) struct PipeChannel {
    reader: FrameReader<PipeReader>,
    writer: PipeWriter,
    max_frame: usize,
    /// When outcomes last went out.
    flushed: Instant,
}

impl PipeChannel {
    pub(super) fn new(input: PipeReader, output: PipeWriter, max_frame: usize) -> Self {
        PipeChannel {
            // Until a pool has greeted it, the channel may be anything: a frame may not claim
            // more than a greeting needs.
            reader: FrameReader::new(input, GREETING_MAX.min(max_frame)),
            writer: output,
            max_frame,
            flushed: Instant::now(),
        }
    }
}

impl Channel for PipeChannel {
    fn recv(&mut self, body: &mut Vec<u8>, spin: bool) -> Result<(), FrameError> {
        if spin && !self.reader.has_buffered() {
            crate::worker::readiness::spin_until_readable(self.reader.get_ref().as_fd(), SPIN);
        }
        self.reader.read(body)
    }

    fn send(&mut self, answer: &AnswerFrames<'_>) -> io::Result<()> {
        answer.write_to(&mut self.writer)
    }

    fn greeted(&mut self, max_frame: usize) {
        self.reader.set_max(max_frame);
    }
}

impl Publish for PipeChannel {
    fn started(&mut self, _: u64, index: u32) {
        if index == 0 {
            self.flushed = Instant::now();
        }
    }

    fn finished(
        &mut self,
        job: u64,
        _: u32,
        out: &mut FrameBuf,
        _: usize,
        in_frame: u32,
    ) -> Published {
        // A partial frame must fit a frame; a larger one is cut at the job's end instead.
        if out.len() - 4 > self.max_frame || self.flushed.elapsed() < FLUSH_EVERY {
            return Published::Kept;
        }
        ResultsHeader::run(job, in_frame).store(out.body_mut());
        if let Err(e) = self.writer.write_all(out.finish()) {
            super::supervisor_gone(&e);
        }
        self.flushed = Instant::now();
        Published::Flushed
    }
}

/// A shared-memory region.
#[derive(Debug)]
pub(super) struct ShmChannel {
    end: WorkerEnd,
    assembler: Assembler,
    /// Where an outcome would go, were the supervisor to send one (it may not).
    spare: Vec<u8>,
}

impl ShmChannel {
    pub(super) fn new(region: Region, max_frame: usize) -> Self {
        ShmChannel {
            end: region.worker(),
            assembler: Assembler::new(GREETING_MAX.min(max_frame)),
            spare: Vec::new(),
        }
    }
}

/// Waits, as long as it takes, for room in the result ring: a supervisor that is gone ends
/// this worker through its guard thread.
fn wait_room(producer: &mut Producer, len: usize) -> Result<(), RingError> {
    producer.wait_writable(len, Duration::ZERO, None).map(drop)
}

fn ring_error(e: RingError) -> FrameError {
    FrameError::Malformed(e.to_string())
}

impl Channel for ShmChannel {
    fn recv(&mut self, body: &mut Vec<u8>, spin: bool) -> Result<(), FrameError> {
        body.clear();
        let mut spin = if spin { SPIN } else { Duration::ZERO };
        loop {
            let popped = self
                .assembler
                .pop(&mut self.end.jobs, body, &mut self.spare)
                .map_err(ring_error)?;
            match popped {
                Some(shm::ITEM_FRAME) => {
                    // Before acting on the frame: the supervisor then knows that a job whose
                    // records lie beyond what was read never started, whatever else it sees.
                    self.end.jobs.publish_head();
                    return Ok(());
                }
                Some(_) => return Err(FrameError::Malformed("an outcome sent to a worker".into())),
                None => {
                    self.end
                        .jobs
                        .wait_readable(spin, None)
                        .map_err(ring_error)?;
                    spin = Duration::ZERO;
                }
            }
        }
    }

    fn send(&mut self, answer: &AnswerFrames<'_>) -> io::Result<()> {
        let mut push = |frame: &[u8]| {
            let body = frame.get(4..).unwrap_or_default();
            shm::push_item(
                &mut self.end.results,
                shm::ITEM_FRAME,
                body,
                false,
                &mut wait_room,
            )
            .map_err(|(e, _)| io::Error::other(e.to_string()))
        };
        match answer {
            AnswerFrames::One(frame) => push(frame),
            AnswerFrames::Many(frames) => frames.iter().try_for_each(|f| push(f)),
        }
    }

    fn greeted(&mut self, max_frame: usize) {
        self.assembler.set_max(max_frame);
    }
}

impl Publish for ShmChannel {
    fn started(&mut self, job: u64, index: u32) {
        self.end.progress.started(job, index);
    }

    fn finished(
        &mut self,
        job: u64,
        index: u32,
        out: &mut FrameBuf,
        at: usize,
        _: u32,
    ) -> Published {
        let outcome = &out.as_bytes()[at..];
        // Quiet: the supervisor waits for the job's end, which wakes it, or is woken should
        // the ring fill up first.
        if let Err((e, _)) = shm::push_item(
            &mut self.end.results,
            shm::ITEM_OUTCOME,
            outcome,
            true,
            &mut wait_room,
        ) {
            eprintln!("ppool worker: cannot publish a result: {e}");
            std::process::exit(3);
        }
        // No `progress.finished`: the published outcome says so, and one store less per
        // task is measurable with tiny tasks.
        let _ = (job, index);
        Published::Taken
    }
}
