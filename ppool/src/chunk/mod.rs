//! Chunks of one entry's tasks: encoded into one job's frame within the frame limit, and
//! submitted with one path for `batch` and `map`, whose results go to a [`Sink`].

pub(crate) mod size;

use crate::chunk::size::Chunking;
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::outcome;
use crate::progress_bar::Bar;
use crate::protocol::{self, FrameBuf, TasksHeader};
use crate::share::Stored;
use crate::supervisor::{Core, Deliver, Delivery, Job, Split};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Stores one result: `(k, result)` for the `k`-th task from a chunk's start.
pub(crate) type Put<'a, T> = &'a mut dyn FnMut(usize, Result<T>);

/// Where the results of submitted chunks go: a batch's table, or a stream's queue.
pub(crate) trait Sink<T>: Send + Sync + 'static {
    /// Stores the results of consecutive tasks from position `start`: `each` calls the
    /// [`Put`] it is given once per result.
    fn fill(&self, start: u64, each: &mut dyn FnMut(Put<'_, T>));
}

/// Builds the frame of one job, never larger than the pool's frame limit.
pub(crate) struct ChunkEncoder {
    frame: FrameBuf,
    count: u32,
    /// The largest frame body allowed.
    max: usize,
    /// The shared values its tasks name.
    needs: Vec<Arc<Stored>>,
}

impl ChunkEncoder {
    pub(crate) fn new(max: usize) -> Self {
        let mut frame = FrameBuf::default();
        TasksHeader::new(0, 0).start(&mut frame);
        ChunkEncoder {
            frame,
            count: 0,
            max,
            needs: Vec::new(),
        }
    }

    /// Appends one task. When it does not fit in this chunk's frame but would fit in a frame
    /// of its own, this chunk becomes a new one holding only that task, and the full one is
    /// returned to be sent. A task that fits in no frame, or cannot be encoded, is an error,
    /// and the chunk is unchanged.
    pub(crate) fn push<F: Entry>(&mut self, args: &F::Args) -> Result<Option<ChunkEncoder>> {
        self.push_with(F::NAME, |out| crate::entry::encode_into(args, out))
    }

    /// [`push`](Self::push) of a task that `encode` appends, for entry `entry`.
    #[inline]
    fn push_with(
        &mut self,
        entry: &str,
        encode: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), String>,
    ) -> Result<Option<ChunkEncoder>> {
        let at = self.frame.len();
        let named_from = self.needs.len();
        let frame = &mut self.frame;
        let (encoded, repeated) =
            crate::share::collect_into(&mut self.needs, || frame.block(encode));
        if let Err(message) = encoded {
            self.needs.truncate(named_from);
            return Err(Error::Codec {
                entry: entry.to_string(),
                action: "encode the arguments",
                message,
            });
        }
        let body = self.frame.len() - 4;
        if body <= self.max {
            self.count += 1;
            return Ok(None);
        }
        let mut named = self.needs.split_off(named_from);
        if repeated {
            // The task named the value these needs ended with, which was not added again:
            // the chunk that takes the task needs it too.
            named.extend(self.needs.last().cloned());
        }
        let task = at..self.frame.len();
        let alone = 4 + TasksHeader::LEN + task.len();
        if alone - 4 > self.max {
            self.frame.truncate(at);
            return Err(Error::ArgumentsTooLarge {
                entry: entry.to_string(),
                size: alone - 4,
                limit: self.max,
            });
        }
        let mut next = ChunkEncoder::new(self.max);
        next.frame.append_raw(&self.frame.as_bytes()[task]);
        next.count = 1;
        next.needs = named;
        self.frame.truncate(at);
        Ok(Some(std::mem::replace(self, next)))
    }

    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// The job, with `deliver` for its results.
    pub(crate) fn into_job(mut self, deliver: Deliver, cancelled: Option<Arc<AtomicBool>>) -> Job {
        TasksHeader::new(0, self.count).store(self.frame.body_mut());
        Job {
            count: self.count,
            frame: self.frame.take(),
            deliver,
            cancelled,
            cancel_kills: false,
            entry: None,
            attempts: 0,
            bounces: 0,
            split: None,
            needs: {
                let mut needs = self.needs;
                crate::share::dedup(&mut needs);
                needs
            },
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
pub(crate) fn split_frame(frame: &[u8]) -> Vec<Vec<u8>> {
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
        TasksHeader::new(0, 1).start(&mut one);
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
        Ok(Some(_)) => Err((Error::internal("a task overflowed an empty chunk"), deliver)),
        Err(e) => Err((e, deliver)),
    }
}

/// Where chunks go: a pool's core, the chunking that learns from them, and the entry they
/// run (`None`: the pool's own).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) core: &'a Core,
    pub(crate) chunking: &'a Arc<Chunking>,
    pub(crate) entry: Option<(u32, &'static str)>,
}

/// Submits a chunk of tasks at positions `start..`: their results go to `sink`, the pool's
/// chunking learns their duration, and `progress` counts them. Should its worker fail under
/// it, the chunk can be split to run its tasks one by one.
pub(crate) fn submit<F: Entry, S: Sink<F::Output>>(
    to: Target<'_>,
    chunk: ChunkEncoder,
    sink: &Arc<S>,
    start: u64,
    progress: &Bar,
    cancelled: Option<Arc<AtomicBool>>,
) {
    let Target {
        core,
        chunking,
        entry,
    } = to;
    let count = chunk.count();
    if count == 0 {
        return;
    }
    let piece = {
        let sink = Arc::clone(sink);
        let progress = progress.clone();
        move |k: u32| -> Deliver {
            let sink = Arc::clone(&sink);
            let progress = progress.clone();
            Deliver::new(move |d: Delivery<'_>| {
                let mut d = Some(d);
                sink.fill(start + u64::from(k), &mut |put| {
                    if let Some(d) = d.take() {
                        outcome::for_each_result::<F>(d, 1, put);
                    }
                });
                progress.inc(1);
            })
        }
    };
    let sink = Arc::clone(sink);
    let chunking = Arc::clone(chunking);
    let progress = progress.clone();
    let deliver = Deliver::new(move |d: Delivery<'_>| {
        if let Ok((r, _)) = &d {
            chunking.observe(r.busy_nanos, r.count);
        }
        let mut d = Some(d);
        sink.fill(start, &mut |put| {
            if let Some(d) = d.take() {
                outcome::for_each_result::<F>(d, count, put);
            }
        });
        progress.inc(u64::from(count));
    });
    let mut job = chunk.into_splittable_job(deliver, cancelled, piece);
    job.entry = entry;
    core.submit(job);
}

#[cfg(test)]
mod tests;
