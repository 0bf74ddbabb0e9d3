//! One task's result, later: the handle [`pool.submit`](crate::ProcessPool::submit) returns.
//! It can be waited on, polled, or awaited as a `Future` in any async runtime.

use crate::error::{Error, Result};
use crate::supervisor::Canceller;
use crate::sync::{lock, wait, wait_timeout};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A value set once by one thread and taken by another, with a waker for async waiters.
#[derive(Debug)]
pub(crate) struct OneShot<T> {
    state: Mutex<Cell<T>>,
    ready: Condvar,
}

#[derive(Debug)]
struct Cell<T> {
    value: Option<T>,
    done: bool,
    /// Threads blocked on the condvar: only then is it worth a wake-up.
    waiting: usize,
    waker: Option<Waker>,
}

impl<T> OneShot<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(OneShot {
            state: Mutex::new(Cell {
                value: None,
                done: false,
                waiting: 0,
                waker: None,
            }),
            ready: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Cell<T>> {
        lock(&self.state)
    }

    /// Sets the value; only the first call counts, and says whether it was this one.
    pub(crate) fn set(&self, value: T) -> bool {
        let mut cell = self.lock();
        if cell.done {
            return false;
        }
        cell.value = Some(value);
        cell.done = true;
        let waker = cell.waker.take();
        let waiting = cell.waiting > 0;
        drop(cell);
        if waiting {
            self.ready.notify_all();
        }
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Wakes `waker` once the value is set; true if it is set already.
    pub(crate) fn notify(&self, waker: &Waker) -> bool {
        let mut cell = self.lock();
        if cell.done {
            return true;
        }
        cell.waker = Some(waker.clone());
        false
    }

    pub(crate) fn is_set(&self) -> bool {
        self.lock().done
    }

    /// Waits for the value and takes it; `None` once it has been taken.
    pub(crate) fn take(&self) -> Option<T> {
        let mut cell = self.lock();
        while !cell.done {
            cell.waiting += 1;
            cell = wait(&self.ready, cell);
            cell.waiting -= 1;
        }
        cell.value.take()
    }

    /// Waits up to `timeout`; `Err(())` if the value is not set by then.
    pub(crate) fn take_timeout(&self, timeout: Duration) -> Result<Option<T>, ()> {
        let deadline = crate::sync::deadline(Instant::now(), timeout);
        let mut cell = self.lock();
        while !cell.done {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return Err(());
            }
            cell.waiting += 1;
            cell = wait_timeout(&self.ready, cell, left);
            cell.waiting -= 1;
        }
        Ok(cell.value.take())
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut cell = self.lock();
        if cell.done {
            return Poll::Ready(cell.value.take());
        }
        match &cell.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => cell.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// A submitted task: [`wait`](Task::wait) for its result, poll it, or `.await` it.
///
/// ```
/// # use ppool::{pool_entry, ProcessPool};
/// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
/// # ppool::main! { fn main() -> Result<(), ppool::Error> {
/// let pool = ProcessPool::<square>::new(2)?;
/// let task = pool.submit(5);
/// // ... other work ...
/// assert_eq!(task.wait()?, 25);
/// # Ok(()) } }
/// ```
///
/// Dropping it does not cancel the task; its result is discarded.
#[must_use = "a task does nothing unless its result is waited for; use `call_with` to fire and forget"]
#[derive(Debug)]
pub struct Task<T> {
    slot: Arc<OneShot<Result<T>>>,
    canceller: Option<Canceller>,
}

/// The error once a task's result has been handed out.
fn taken() -> Error {
    Error::AlreadyTaken
}

impl<T> Task<T> {
    pub(crate) fn new(slot: Arc<OneShot<Result<T>>>, canceller: Option<Canceller>) -> Self {
        Task { slot, canceller }
    }

    /// Cancels the task: a task still queued never runs; a running one has its worker killed
    /// (and replaced). Either way it ends with [`Error::Cancelled`]. Returns `false` when the
    /// task had already finished, and changes nothing then.
    ///
    /// In a [`debug`](crate::Builder::debug) pool, where tasks run in this process, a running
    /// task cannot be killed: it ends with `Cancelled` at once, but its entry runs on to its
    /// end, and the pool's next task waits for it.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Error};
    /// # use std::time::Duration;
    /// # #[pool_entry] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<nap>::new(1)?;
    /// let task = pool.submit(60_000);
    /// if task.wait_timeout(Duration::from_millis(100)).is_none() {   // a per-call timeout
    ///     assert!(task.cancel());
    /// }
    /// assert!(matches!(task.wait(), Err(Error::Cancelled)));
    /// assert_eq!(pool.call(1)?, 1);                                   // the pool goes on
    /// # Ok(()) } }
    /// ```
    pub fn cancel(&self) -> bool {
        if !self.slot.set(Err(Error::Cancelled)) {
            return false;
        }
        if let Some(canceller) = &self.canceller {
            canceller.cancel();
        }
        true
    }

    /// Waits for the result.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Error};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(1)?;
    /// assert_eq!(pool.submit(3).wait()?, 9);
    /// pool.shutdown();
    /// assert!(matches!(pool.submit(3).wait(), Err(Error::Closed)));
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// The task's own failure, any that [`call`](crate::ProcessPool::call) returns in the
    /// same cases ([`Error::Panicked`], [`Error::WorkerDied`], [`Error::Timeout`],
    /// [`Error::MemoryLimit`], [`Error::Protocol`], [`Error::Codec`],
    /// [`Error::ArgumentsTooLarge`]); [`Error::Cancelled`] after [`cancel`](Self::cancel);
    /// [`Error::Closed`] when the pool was closed, or stopped before the task finished;
    /// [`Error::NotStarted`] when the pool was built with `start(false)` and not started; or
    /// [`Error::AlreadyTaken`] when [`wait_timeout`](Self::wait_timeout) already handed the
    /// result out.
    pub fn wait(self) -> Result<T> {
        self.slot.take().unwrap_or_else(|| Err(taken()))
    }

    /// Waits at most `timeout`: `None` if the task has not finished by then (it goes on, and
    /// can be waited for again), else its result. The result is handed out once; after that,
    /// waiting again gives `Some(Err(Error::AlreadyTaken))`.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Error};
    /// # use std::time::Duration;
    /// # #[pool_entry] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<nap>::new(1)?;
    /// let task = pool.submit(200);
    /// assert_eq!(task.wait_timeout(Duration::from_millis(10)), None);      // still running
    /// assert_eq!(task.wait_timeout(Duration::from_secs(60)), Some(Ok(200)));
    /// assert_eq!(task.wait_timeout(Duration::ZERO), Some(Err(Error::AlreadyTaken)));
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// `Some(Err(..))` with the errors of [`wait`](Self::wait), in the same cases; `None` is
    /// not an error: the task is still running, or queued.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<T>> {
        match self.slot.take_timeout(timeout) {
            Err(()) => None,
            Ok(value) => Some(value.unwrap_or_else(|| Err(taken()))),
        }
    }

    /// True once the result is in (or the task failed).
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(1)?;
    /// let task = pool.submit(4);
    /// while !task.is_done() {
    ///     std::thread::sleep(std::time::Duration::from_millis(1));   // other work
    /// }
    /// assert_eq!(task.wait()?, 16);                                    // without blocking
    /// # Ok(()) } }
    /// ```
    pub fn is_done(&self) -> bool {
        self.slot.is_set()
    }

    /// Wakes `waker` when the task finishes; true if it has already.
    pub(crate) fn notify(&self, waker: &Waker) -> bool {
        self.slot.notify(waker)
    }
}

impl<T> Future for Task<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        self.slot
            .poll_take(cx)
            .map(|v| v.unwrap_or_else(|| Err(taken())))
    }
}
