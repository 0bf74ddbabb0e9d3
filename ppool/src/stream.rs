//! Streams: `map` and `map_unordered` read their input lazily and keep a bounded number of
//! tasks in flight, so an endless input runs in constant memory. Dropping the stream cancels
//! what has not started.

use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::jobs::{self, ChunkEncoder};
use crate::pool::ProcessPool;
use crate::progress::Progress;
use crate::supervisor::Deliver;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// The results of [`map`](ProcessPool::map) (input order) or
/// [`map_unordered`](ProcessPool::map_unordered) (completion order), as an iterator.
#[must_use = "a stream does nothing unless iterated"]
pub struct Map<'p, F: Entry, I> {
    pool: &'p ProcessPool<F>,
    input: Option<I>,
    results: Arc<Results<F::Output>>,
    cancelled: Arc<AtomicBool>,
    ordered: bool,
    /// Tasks taken from the input.
    submitted: u64,
    /// Results handed out.
    yielded: u64,
    /// A task taken from the input that did not fit the last chunk's frame: the next chunk's
    /// first.
    carry: Option<ChunkEncoder>,
    progress: Progress,
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

struct Results<T> {
    state: Mutex<ResultsState<T>>,
    ready: Condvar,
}

struct ResultsState<T> {
    /// Ordered: results by position from `base`, `None` while missing.
    pending: VecDeque<Option<Result<T>>>,
    base: u64,
    /// Unordered: results as they come.
    arrived: VecDeque<Result<T>>,
}

impl<T> Results<T> {
    fn lock(&self) -> MutexGuard<'_, ResultsState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<'p, F: Entry, I: Iterator<Item = F::Args>> Map<'p, F, I> {
    pub(crate) fn new(pool: &'p ProcessPool<F>, input: I, ordered: bool) -> Self {
        let total = match input.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo as u64),
            _ => None,
        };
        let progress = Progress::start(pool.progress_mode(), total, pool.name());
        Map {
            progress,
            pool,
            input: Some(input),
            results: Arc::new(Results {
                state: Mutex::new(ResultsState {
                    pending: VecDeque::new(),
                    base: 0,
                    arrived: VecDeque::new(),
                }),
                ready: Condvar::new(),
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
            let size = self.pool.chunking().next();
            let window = self
                .pool
                .stream_window()
                .unwrap_or(self.pool.n_jobs() * 4 * size)
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
                .unwrap_or_else(|| ChunkEncoder::new(self.pool.max_frame()));
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
            let count = chunk.count();
            // A task that could not be encoded ends its chunk and fails on its own.
            let chunk_start = start;
            if count > 0 {
                let results = Arc::clone(&self.results);
                let ordered = self.ordered;
                let chunking = Arc::clone(self.pool.chunking());
                let piece = {
                    let results = Arc::clone(&self.results);
                    move |k: u32| -> Deliver {
                        let results = Arc::clone(&results);
                        Deliver::new(move |delivery: crate::supervisor::Delivery<'_>| {
                            let mut st = results.lock();
                            jobs::for_each_result::<F>(delivery, 1, |_, r| {
                                put(&mut st, ordered, chunk_start + u64::from(k), r);
                            });
                            drop(st);
                            results.ready.notify_all();
                        })
                    }
                };
                let deliver = Deliver::new(move |delivery: crate::supervisor::Delivery<'_>| {
                    if let Ok((r, _)) = &delivery {
                        chunking.observe(r.busy_nanos, r.count);
                    }
                    let mut st = results.lock();
                    jobs::for_each_result::<F>(delivery, count, |k, r| {
                        put(&mut st, ordered, chunk_start + k as u64, r);
                    });
                    drop(st);
                    results.ready.notify_all();
                });
                self.pool.core().submit(chunk.into_splittable_job(
                    deliver,
                    Some(Arc::clone(&self.cancelled)),
                    piece,
                ));
            }
            if !failed.is_empty() {
                let mut st = self.results.lock();
                for (position, e) in failed {
                    put(&mut st, self.ordered, position, Err(e));
                }
            }
        }
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
                self.progress.inc(1);
                return Some(r);
            }
            st = results
                .ready
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let carried = self.carry.as_ref().map_or(0, |c| c.count() as usize);
        let outstanding = (self.submitted - self.yielded) as usize + carried;
        match &self.input {
            None => (outstanding, Some(outstanding)),
            Some(input) => {
                let (lo, hi) = input.size_hint();
                (outstanding + lo, hi.map(|h| h + outstanding))
            }
        }
    }
}

impl<F: Entry, I> Drop for Map<'_, F, I> {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}
