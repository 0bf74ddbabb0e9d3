//! Typed jobs: encode a chunk of one entry's tasks into a frame, and turn the worker's answer
//! back into one `Result` per task.

use crate::codec;
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::protocol::{self, FrameBuf, Outcome};
use crate::supervisor::{Deliver, Delivery, Job, Split};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Builds the frame of one job, never larger than the pool's frame limit.
pub(crate) struct ChunkEncoder {
    frame: FrameBuf,
    count: u32,
    /// The largest frame body allowed.
    max: usize,
}

impl ChunkEncoder {
    pub(crate) fn new(max: usize) -> Self {
        let mut frame = FrameBuf::default();
        protocol::start_tasks(&mut frame, 0, 0);
        ChunkEncoder {
            frame,
            count: 0,
            max,
        }
    }

    /// Appends one task. When it does not fit in this chunk's frame but would fit in a frame
    /// of its own, this chunk becomes a new one holding only that task, and the full one is
    /// returned to be sent. A task that fits in no frame, or cannot be encoded, is an error,
    /// and the chunk is unchanged.
    pub(crate) fn push<F: Entry>(&mut self, args: &F::Args) -> Result<Option<ChunkEncoder>> {
        let at = self.frame.len();
        self.frame
            .block(|out| codec::encode_into(args, out))
            .map_err(|message| Error::Codec {
                entry: F::NAME.to_string(),
                action: "encode the arguments",
                message,
            })?;
        let body = self.frame.len() - 4;
        if body <= self.max {
            self.count += 1;
            return Ok(None);
        }
        let task = at..self.frame.len();
        let alone = protocol::TASKS_HEADER + task.len();
        if alone - 4 > self.max {
            self.frame.truncate(at);
            return Err(Error::ArgumentsTooLarge {
                entry: F::NAME.to_string(),
                size: task.len() - 4,
                limit: self.max,
            });
        }
        let mut next = ChunkEncoder::new(self.max);
        next.frame.append_raw(&self.frame.as_bytes()[task]);
        next.count = 1;
        self.frame.truncate(at);
        Ok(Some(std::mem::replace(self, next)))
    }

    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// The job, with `deliver` for its results.
    pub(crate) fn into_job(mut self, deliver: Deliver, cancelled: Option<Arc<AtomicBool>>) -> Job {
        protocol::set_count(&mut self.frame, self.count);
        Job {
            count: self.count,
            frame: self.frame.take(),
            deliver,
            cancelled,
            attempts: 0,
            bounces: 0,
            split: None,
        }
    }

    /// The job, with `deliver` for its results and `piece(k)` for the results of its `k`-th
    /// task should it be split (when its worker failed under it).
    pub(crate) fn into_splittable_job<P>(
        self,
        deliver: Deliver,
        cancelled: Option<Arc<AtomicBool>>,
        piece: P,
    ) -> Job
    where
        P: Fn(u32) -> Deliver + Send + 'static,
    {
        let mut job = self.into_job(deliver, cancelled);
        let split: Split = Box::new(move |frame: &[u8]| {
            split_frame(frame)
                .into_iter()
                .zip(0..)
                .map(|(frame, k)| (frame, piece(k)))
                .collect()
        });
        job.split = Some(split);
        job
    }
}

/// The tasks of a TASKS frame, each in a frame of its own; empty if the frame does not parse.
fn split_frame(frame: &[u8]) -> Vec<Vec<u8>> {
    let Some(body) = frame.get(4..) else {
        return Vec::new();
    };
    let Ok(mut tasks) = protocol::Tasks::parse(body) else {
        return Vec::new();
    };
    let mut frames = Vec::with_capacity(tasks.count as usize);
    for _ in 0..tasks.count {
        let Ok(args) = tasks.next_args() else {
            return Vec::new();
        };
        let mut one = FrameBuf::default();
        protocol::start_tasks(&mut one, 0, 1);
        one.bytes(args);
        frames.push(one.take());
    }
    frames
}

/// A job of a single task, for a pool whose frames are at most `max` bytes.
pub(crate) fn single<F: Entry>(
    args: &F::Args,
    max: usize,
    deliver: Deliver,
) -> Result<Job, (Error, Deliver)> {
    let mut chunk = ChunkEncoder::new(max);
    match chunk.push::<F>(args) {
        Ok(None) => Ok(chunk.into_job(deliver, None)),
        Ok(Some(_)) => Err((
            Error::spawn("internal: a task overflowed an empty chunk"),
            deliver,
        )),
        Err(e) => Err((e, deliver)),
    }
}

/// Calls `each(k, result)` for the `k`-th task of a job of `count` tasks.
pub(crate) fn for_each_result<F: Entry>(
    delivery: Delivery<'_>,
    count: u32,
    mut each: impl FnMut(usize, Result<F::Output>),
) {
    match delivery {
        Ok((results, worker)) => {
            for (k, outcome) in results.outcomes().enumerate() {
                each(k, convert::<F>(outcome, worker));
            }
        }
        Err(error) => {
            for k in 0..count as usize {
                each(k, Err(error.clone()));
            }
        }
    }
}

/// The result of a job of one task.
pub(crate) fn first_result<F: Entry>(delivery: Delivery<'_>) -> Result<F::Output> {
    let mut out = None;
    for_each_result::<F>(delivery, 1, |_, r| {
        if out.is_none() {
            out = Some(r);
        }
    });
    out.unwrap_or(Err(Error::Protocol {
        worker: 0,
        message: "a job came back without results".into(),
    }))
}

fn convert<F: Entry>(outcome: Outcome<'_>, worker: usize) -> Result<F::Output> {
    match outcome {
        Outcome::Ok(bytes) => codec::decode::<F::Output>(bytes).map_err(|message| Error::Codec {
            entry: F::NAME.to_string(),
            action: "decode the result",
            message,
        }),
        Outcome::Panicked { message, location } => {
            tracing::debug!(entry = F::NAME, worker, message, location, "task panicked");
            Err(panicked::<F>(worker, message, location))
        }
        Outcome::Codec { action, message } => Err(Error::Codec {
            entry: F::NAME.to_string(),
            action: if action.starts_with("decode") {
                "decode the arguments"
            } else {
                "encode the result"
            },
            message: message.to_string(),
        }),
    }
}

/// The result of a worker-exit hook, from an EXITED body.
pub(crate) fn exit_result<E: Entry>(body: &[u8]) -> Result<E::Output> {
    match protocol::parse_exited(body) {
        Ok(outcome) => convert::<E>(outcome, 0),
        Err(e) => Err(Error::Protocol {
            worker: 0,
            message: e.to_string(),
        }),
    }
}

fn panicked<F: Entry>(worker: usize, message: &str, location: &str) -> Error {
    Error::Panicked {
        entry: F::NAME.to_string(),
        worker,
        message: message.to_string(),
        location: (!location.is_empty()).then(|| location.to_string()),
    }
}
