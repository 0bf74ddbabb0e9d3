//! A batch: many tasks submitted at once, their results gathered in input order.

use crate::chunk::{Put, Sink};
use crate::error::{Error, Result};
use crate::sync::{lock, wait, wait_timeout};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The results of [`pool.batch(..)`](crate::ProcessPool::batch), in input order.
///
/// Every task is already submitted when the batch is returned; dropping it does not cancel
/// them.
///
/// ```
/// # use ppool::{pool_entry, ProcessPool, Batch};
/// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
/// # ppool::main! { fn main() -> Result<(), ppool::Error> {
/// let pool = ProcessPool::<square>::new(2)?;
/// let batch: Batch<u64> = pool.batch(1..=3);        // running already
/// // ... other work ...
/// assert_eq!(batch.wait()?, [1, 4, 9]);
/// # Ok(()) } }
/// ```
#[must_use = "a batch's results are only seen through `wait` or `wait_all`"]
#[derive(Debug)]
pub struct Batch<T> {
    results: Arc<Gather<T>>,
}

#[derive(Debug)]
pub(crate) struct Gather<T> {
    state: Mutex<GatherState<T>>,
    done: Condvar,
}

#[derive(Debug)]
struct GatherState<T> {
    /// The values, by position; `None` while missing or failed. Errors are kept apart, as
    /// they are rare and much larger than most values.
    values: Vec<Option<T>>,
    errors: Vec<(usize, Error)>,
    /// Which positions have their result, so that none is counted twice.
    filled: Vec<bool>,
    missing: usize,
    /// The task awaiting the batch (`IntoFuture`), woken when the last result is in.
    waker: Option<Waker>,
    /// The results were handed out (they are handed out once).
    taken: bool,
}

impl<T> Gather<T> {
    pub(crate) fn new(len: usize) -> Arc<Self> {
        let mut values = Vec::with_capacity(len);
        values.resize_with(len, || None);
        Arc::new(Gather {
            state: Mutex::new(GatherState {
                values,
                errors: Vec::new(),
                filled: vec![false; len],
                missing: len,
                waker: None,
                taken: false,
            }),
            done: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GatherState<T>> {
        lock(&self.state)
    }

    /// Stores results for consecutive tasks from `start`.
    pub(crate) fn fill_at(
        &self,
        start: usize,
        each: impl FnOnce(&mut dyn FnMut(usize, Result<T>)),
    ) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut put = |k: usize, r: Result<T>| {
            let at = start + k;
            match st.filled.get_mut(at) {
                Some(filled) if !*filled => *filled = true,
                _ => return,
            }
            st.missing -= 1;
            match r {
                Ok(v) => st.values[at] = Some(v),
                Err(e) => st.errors.push((at, e)),
            }
        };
        each(&mut put);
        let finished = st.missing == 0;
        let waker = if finished { st.waker.take() } else { None };
        drop(guard);
        if finished {
            self.done.notify_all();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Waits for every result and takes them out; `Err(len)` if they were taken already.
    fn take(&self) -> Taken<T> {
        let mut st = self.lock();
        while st.missing > 0 {
            st = wait(&self.done, st);
        }
        Self::take_from(&mut st)
    }

    fn take_from(st: &mut GatherState<T>) -> Taken<T> {
        if std::mem::replace(&mut st.taken, true) {
            return Err(st.filled.len());
        }
        let mut errors = std::mem::take(&mut st.errors);
        errors.sort_by_key(|(i, _)| *i);
        Ok((std::mem::take(&mut st.values), errors))
    }

    /// The results if every one is in; else `cx`'s waker is kept, to be woken when they are.
    fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<Result<Vec<T>>> {
        let mut st = self.lock();
        if st.missing > 0 {
            match &st.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        Poll::Ready(first_error(Self::take_from(&mut st)))
    }

    /// Waits at most `timeout` for every result; `None` if some are still missing then.
    fn wait_timeout(&self, timeout: Duration) -> Option<Result<Vec<T>>> {
        let deadline = crate::sync::deadline(Instant::now(), timeout);
        let mut st = self.lock();
        while st.missing > 0 {
            let left = deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return None;
            }
            st = wait_timeout(&self.done, st, left);
        }
        drop(st);
        Some(self.wait())
    }

    fn wait(&self) -> Result<Vec<T>> {
        first_error(self.take())
    }

    fn wait_all(&self) -> Vec<Result<T>> {
        let (values, errors) = match self.take() {
            Ok(taken) => taken,
            Err(len) => return (0..len).map(|_| Err(Error::AlreadyTaken)).collect(),
        };
        let mut errors = errors.into_iter().peekable();
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Some(v) => Ok(v),
                None => match errors.next_if(|(at, _)| *at == i) {
                    Some((_, e)) => Err(e),
                    None => Err(Error::Closed),
                },
            })
            .collect()
    }

    fn is_done(&self) -> bool {
        self.lock().missing == 0
    }
}

/// A batch's results, taken out: the values by position and the errors; or, when they were
/// taken before, how many tasks there were.
type Taken<T> = std::result::Result<(Vec<Option<T>>, Vec<(usize, Error)>), usize>;

/// The values in input order, or the first error in input order; `AlreadyTaken` the second
/// time.
fn first_error<T>(taken: Taken<T>) -> Result<Vec<T>> {
    let Ok((values, mut errors)) = taken else {
        return Err(Error::AlreadyTaken);
    };
    if !errors.is_empty() {
        return Err(errors.swap_remove(0).1);
    }
    values.into_iter().map(|v| v.ok_or(Error::Closed)).collect()
}

impl<T: Send + 'static> Sink<T> for Gather<T> {
    fn fill(&self, start: u64, each: &mut dyn FnMut(Put<'_, T>)) {
        self.fill_at(start as usize, |put| each(put));
    }
}

impl<T> Batch<T> {
    pub(crate) fn new(results: Arc<Gather<T>>) -> Self {
        Batch { results }
    }

    /// Waits for every task; all results in input order, or the first error in input order.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// assert_eq!(pool.batch(1..=4).wait()?, [1, 4, 9, 16]);
    /// let each = pool.batch(1..=2).wait_all();          // every task's own result
    /// assert!(each.iter().all(Result::is_ok));
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// The error of the first task (in input order) that failed: any that
    /// [`call`](crate::ProcessPool::call) returns, in the same cases (the task's own
    /// [`Error::Panicked`], [`Error::WorkerDied`], [`Error::Timeout`], [`Error::MemoryLimit`],
    /// [`Error::Protocol`], [`Error::Codec`] or [`Error::ArgumentsTooLarge`]; or
    /// [`Error::Closed`], [`Error::NotStarted`] when the pool could not run it). The other
    /// tasks ran all the same; [`wait_all`](Self::wait_all) gives each one's result.
    pub fn wait(self) -> Result<Vec<T>> {
        self.results.wait()
    }

    /// Waits for every task; each task's own result, in input order.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Error};
    /// # #[pool_entry] fn half(x: u64) -> u64 { assert!(x % 2 == 0, "{x} is odd"); x / 2 }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<half>::new(2)?;
    /// let each = pool.batch([2, 3, 4]).wait_all();
    /// assert_eq!(each[0], Ok(1));
    /// assert!(matches!(each[1], Err(Error::Panicked { .. })));   // it fails alone
    /// assert_eq!(each[2], Ok(2));
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// It does not fail as a whole: each failed task's element is its error, any that
    /// [`call`](crate::ProcessPool::call) returns, in the same cases.
    pub fn wait_all(self) -> Vec<Result<T>> {
        self.results.wait_all()
    }

    /// Waits at most `timeout`: `None` if some task has not finished by then (the batch goes
    /// on, and can be waited for again), else what [`wait`](Self::wait) gives. The results are
    /// handed out once: after that, waiting again gives [`Error::AlreadyTaken`] (for
    /// [`wait_all`](Self::wait_all), one per task), as for a [`Task`](crate::Task).
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # use std::time::Duration;
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// let batch = pool.batch(1..=3);
    /// match batch.wait_timeout(Duration::from_secs(60)) {
    ///     Some(squares) => assert_eq!(squares?, [1, 4, 9]),
    ///     None => println!("still running"),
    /// }
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// `Some(Err(..))`: the first failed task's error, in input order, as for
    /// [`wait`](Self::wait). `None` is not an error: the batch is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<Vec<T>>> {
        self.results.wait_timeout(timeout)
    }

    /// True once every task has finished.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// let batch = pool.batch(1..=3);
    /// while !batch.is_done() {
    ///     std::thread::sleep(std::time::Duration::from_millis(1));   // other work
    /// }
    /// assert_eq!(batch.wait()?, [1, 4, 9]);                            // without blocking
    /// # Ok(()) } }
    /// ```
    pub fn is_done(&self) -> bool {
        self.results.is_done()
    }
}

/// `pool.batch(xs).await`: what [`wait`](Batch::wait) gives, without blocking a thread of the
/// runtime.
///
/// ```
/// # use ppool::{pool_entry, ProcessPool};
/// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
/// # ppool::main! { fn main() -> Result<(), ppool::Error> {
/// let pool = ProcessPool::<square>::new(2)?;
/// let squares = async { pool.batch(1..=3).await };
/// # let squares = block_on(squares);
/// assert_eq!(squares?, [1, 4, 9]);
/// # Ok(()) } }
/// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     struct Unpark(std::thread::Thread);
/// #     impl std::task::Wake for Unpark { fn wake(self: std::sync::Arc<Self>) { self.0.unpark() } }
/// #     let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
/// #     let mut cx = std::task::Context::from_waker(&waker);
/// #     let mut f = std::pin::pin!(f);
/// #     loop {
/// #         if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; }
/// #         std::thread::park();
/// #     }
/// # }
/// ```
impl<T> IntoFuture for Batch<T> {
    type Output = Result<Vec<T>>;
    type IntoFuture = BatchFuture<T>;

    fn into_future(self) -> BatchFuture<T> {
        BatchFuture {
            results: self.results,
        }
    }
}

/// The future of a [`Batch`]: every result in input order, or the first error.
///
/// ```
/// # use ppool::{pool_entry, ProcessPool, BatchFuture};
/// # use std::future::{Future, IntoFuture};
/// # use std::task::{Context, Poll, Waker};
/// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
/// # ppool::main! { fn main() -> Result<(), ppool::Error> {
/// let pool = ProcessPool::<square>::new(2)?;
/// let future: BatchFuture<u64> = pool.batch(1..=3).into_future();
/// let mut future = std::pin::pin!(future);
/// let mut cx = Context::from_waker(Waker::noop());    // a runtime would park, not spin
/// let squares = loop {
///     if let Poll::Ready(squares) = future.as_mut().poll(&mut cx) { break squares; }
///     std::thread::sleep(std::time::Duration::from_millis(1));
/// };
/// assert_eq!(squares?, [1, 4, 9]);
/// # Ok(()) } }
/// ```
///
/// # Errors
///
/// It gives what [`Batch::wait`] gives: the first failed task's error, in input order.
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct BatchFuture<T> {
    results: Arc<Gather<T>>,
}

impl<T> Future for BatchFuture<T> {
    type Output = Result<Vec<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Vec<T>>> {
        self.results.poll_wait(cx)
    }
}
