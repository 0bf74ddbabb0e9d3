//! Streams: `map` and `map_unordered` read their input lazily and keep a bounded number of
//! tasks in flight, so an endless input runs in constant memory. Dropping the stream cancels
//! what has not started.

use crate::chunk::size::Chunking;
use crate::chunk::{self, ChunkEncoder, Put, Sink, Target};
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::progress_bar::{self, Bar};
use crate::supervisor::Core;
use crate::sync::{lock, wait};
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// What a stream needs of its pool.
#[derive(Debug)]
pub(crate) struct StreamSource<'p> {
    pub(crate) core: &'p Core,
    pub(crate) chunking: Arc<Chunking>,
    /// The user's `stream_window`, if set.
    pub(crate) window: Option<usize>,
    pub(crate) n_jobs: usize,
    pub(crate) max_frame: usize,
    pub(crate) progress: progress_bar::Mode,
    pub(crate) name: &'p str,
    /// Another entry than the pool's own (see `Job::entry`).
    pub(crate) entry: Option<(u32, &'static str)>,
}

/// The results of [`map`](crate::ProcessPool::map) (input order) or
/// [`map_unordered`](crate::ProcessPool::map_unordered) (completion order), as an iterator.
///
/// ```
/// # use ppool::{pool_entry, ProcessPool, Error};
/// # #[pool_entry] fn half(x: u64) -> u64 { assert!(x % 2 == 0, "{x} is odd"); x / 2 }
/// # ppool::main! { fn main() -> Result<(), ppool::Error> {
/// let pool = ProcessPool::<half>::new(2)?;
/// let mut results = pool.map([2, 3, 4]);            // a Map: one result per task
/// assert_eq!(results.next(), Some(Ok(1)));
/// assert!(matches!(results.next(), Some(Err(Error::Panicked { .. }))));
/// assert_eq!(results.next(), Some(Ok(2)));          // a failed task does not end it
/// assert_eq!(results.next(), None);
/// # Ok(()) } }
/// ```
///
/// # Errors
///
/// Each item is one task's result: a failed task yields the error
/// [`call`](crate::ProcessPool::call) would return for it, in the same cases, and the stream
/// goes on with the next tasks.
#[must_use = "a stream does nothing unless iterated"]
pub struct Map<'p, F: Entry, I> {
    source: StreamSource<'p>,
    _entry: PhantomData<fn() -> F>,
    input: Option<I>,
    results: Arc<Arrivals<F::Output>>,
    cancelled: Arc<AtomicBool>,
    ordered: bool,
    /// Tasks taken from the input.
    submitted: u64,
    /// Arrivals handed out.
    yielded: u64,
    /// A task taken from the input that did not fit the last chunk's frame: the next chunk's
    /// first.
    carry: Option<ChunkEncoder>,
    progress: Bar,
}

impl<F: Entry, I> std::fmt::Debug for Map<'_, F, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Map")
            .field("entry", &F::NAME)
            .field("ordered", &self.ordered)
            .field("submitted", &self.submitted)
            .field("yielded", &self.yielded)
            .finish_non_exhaustive()
    }
}

struct Arrivals<T> {
    state: Mutex<ResultsState<T>>,
    ready: Condvar,
    ordered: bool,
}

struct ResultsState<T> {
    /// Ordered: results by position from `base`, `None` while missing.
    pending: VecDeque<Option<Result<T>>>,
    base: u64,
    /// Unordered: results as they come.
    arrived: VecDeque<Result<T>>,
}

impl<T> Arrivals<T> {
    fn lock(&self) -> MutexGuard<'_, ResultsState<T>> {
        lock(&self.state)
    }
}

impl<'p, F: Entry, I: Iterator<Item = F::Args>> Map<'p, F, I> {
    pub(crate) fn new(source: StreamSource<'p>, input: I, ordered: bool) -> Self {
        let total = match input.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo as u64),
            _ => None,
        };
        let progress = Bar::start(source.progress, total, source.name);
        Map {
            progress,
            source,
            _entry: PhantomData,
            input: Some(input),
            results: Arc::new(Arrivals {
                state: Mutex::new(ResultsState {
                    pending: VecDeque::new(),
                    base: 0,
                    arrived: VecDeque::new(),
                }),
                ready: Condvar::new(),
                ordered,
            }),
            cancelled: Arc::new(AtomicBool::new(false)),
            ordered,
            submitted: 0,
            yielded: 0,
            carry: None,
        }
    }

    /// Submits chunks while the window has room and the input has items.
    fn top_up(&mut self) {
        while self.input.is_some() || self.carry.is_some() {
            let outstanding = (self.submitted - self.yielded) as usize;
            let size = self.source.chunking.for_stream();
            let window = self
                .source
                .window
                .unwrap_or(self.source.n_jobs * 4 * size)
                .max(1);
            // Whole chunks only: topping up the window task by task would send one-task chunks.
            let size = size.min((window / 2).max(1));
            if outstanding + size > window {
                return;
            }
            let start = self.submitted;
            let mut chunk = self
                .carry
                .take()
                .unwrap_or_else(|| ChunkEncoder::new(self.source.max_frame));
            let mut failed: Vec<(u64, Error)> = Vec::new();
            let mut taken = u64::from(chunk.count());
            while (chunk.count() as usize) < size {
                let Some(input) = self.input.as_mut() else {
                    break;
                };
                let Some(args) = input.next() else {
                    self.input = None;
                    break;
                };
                let position = start + taken;
                taken += 1;
                match chunk.push::<F>(&args) {
                    Err(e) => {
                        failed.push((position, e));
                        break;
                    }
                    Ok(Some(full)) => {
                        // The frame limit closed the chunk before this task: it starts the
                        // next chunk, carried over.
                        self.carry = Some(std::mem::replace(&mut chunk, full));
                        taken -= 1;
                        break;
                    }
                    Ok(None) => {}
                }
            }
            self.submitted += taken;
            // A task that could not be encoded ends its chunk and fails on its own.
            let to = Target {
                core: self.source.core,
                chunking: &self.source.chunking,
                entry: self.source.entry,
            };
            let cancelled = Some(Arc::clone(&self.cancelled));
            chunk::submit::<F, _>(to, chunk, &self.results, start, &self.progress, cancelled);
            if !failed.is_empty() {
                let mut st = self.results.lock();
                for (position, e) in failed {
                    put(&mut st, self.ordered, position, Err(e));
                }
                drop(st);
                self.progress.inc(1);
            }
        }
    }
}

impl<T: Send + 'static> Sink<T> for Arrivals<T> {
    fn fill(&self, start: u64, each: &mut dyn FnMut(Put<'_, T>)) {
        let mut st = self.lock();
        each(&mut |k, r| put(&mut st, self.ordered, start + k as u64, r));
        drop(st);
        self.ready.notify_all();
    }
}

fn put<T>(st: &mut ResultsState<T>, ordered: bool, position: u64, result: Result<T>) {
    if !ordered {
        st.arrived.push_back(result);
        return;
    }
    let Some(offset) = position.checked_sub(st.base) else {
        return;
    };
    let offset = offset as usize;
    while st.pending.len() <= offset {
        st.pending.push_back(None);
    }
    st.pending[offset] = Some(result);
}

impl<F: Entry, I: Iterator<Item = F::Args>> Iterator for Map<'_, F, I> {
    type Item = Result<F::Output>;

    fn next(&mut self) -> Option<Result<F::Output>> {
        self.top_up();
        if self.submitted == self.yielded {
            self.progress.finish();
            return None;
        }
        let results = Arc::clone(&self.results);
        let mut st = results.lock();
        loop {
            let got = if self.ordered {
                if matches!(st.pending.front(), Some(Some(_))) {
                    st.base += 1;
                    st.pending.pop_front().flatten()
                } else {
                    None
                }
            } else {
                st.arrived.pop_front()
            };
            if let Some(r) = got {
                self.yielded += 1;
                return Some(r);
            }
            st = wait(&results.ready, st);
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let carried = self.carry.as_ref().map_or(0, |c| c.count() as usize);
        let outstanding = (self.submitted - self.yielded) as usize + carried;
        match &self.input {
            None => (outstanding, Some(outstanding)),
            Some(input) => {
                // An endless input says `usize::MAX`: the sums saturate, never overflow.
                let (lo, hi) = input.size_hint();
                (
                    outstanding.saturating_add(lo),
                    hi.and_then(|h| h.checked_add(outstanding)),
                )
            }
        }
    }
}

impl<F: Entry, I> Drop for Map<'_, F, I> {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}
