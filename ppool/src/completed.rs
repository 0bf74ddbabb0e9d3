//! [`as_completed`]: the results of several tasks in the order they finish.

use crate::error::Result;
use crate::sync::{lock, wait};
use crate::task::Task;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Wake, Waker};

/// Yields each task's index in `tasks` and its result, in the order the tasks finish, like
/// `concurrent.futures.as_completed`.
///
/// ```
/// # use ppool::{pool_entry, ProcessPool};
/// # #[pool_entry] fn nap(ms: u64) -> u64 { std::thread::sleep(std::time::Duration::from_millis(ms)); ms }
/// # ppool::main! { fn main() -> Result<(), ppool::Error> {
/// let pool = ProcessPool::<nap>::new(2)?;
/// let tasks: Vec<ppool::Task<u64>> = [300, 10].into_iter().map(|ms| pool.submit(ms)).collect();
/// let order: Vec<usize> = ppool::as_completed(tasks).map(|(index, _)| index).collect();
/// assert_eq!(order, [1, 0]);                 // the 10 ms task finished first
/// # Ok(()) } }
/// ```
///
/// The iterator waits for the next task to finish; it ends once every task has been yielded.
/// A task whose result was already taken (by `wait_timeout`) is yielded with
/// [`Error::AlreadyTaken`](crate::Error::AlreadyTaken).
///
/// # Errors
///
/// It does not fail itself: each task is yielded with what [`Task::wait`] gives, its result
/// or its error, in the same cases.
pub fn as_completed<T>(tasks: impl IntoIterator<Item = Task<T>>) -> AsCompleted<T> {
    let tasks: Vec<Option<Task<T>>> = tasks.into_iter().map(Some).collect();
    let ready = Arc::new(FinishOrder::default());
    for (index, task) in tasks.iter().enumerate() {
        if let Some(task) = task {
            let waker = Waker::from(Arc::new(Finished {
                index,
                ready: Arc::clone(&ready),
            }));
            if task.notify(&waker) {
                ready.push(index);
            }
        }
    }
    AsCompleted {
        left: tasks.len(),
        tasks,
        ready,
    }
}

/// The iterator of [`as_completed`].
///
/// ```
/// # use ppool::{pool_entry, ProcessPool, AsCompleted};
/// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
/// # ppool::main! { fn main() -> Result<(), ppool::Error> {
/// let pool = ProcessPool::<square>::new(2)?;
/// let done: AsCompleted<u64> = ppool::as_completed([pool.submit(2), pool.submit(3)]);
/// let mut seen: Vec<(usize, ppool::Result<u64>)> = done.collect();  // in the order they end
/// seen.sort_by_key(|(index, _)| *index);
/// assert_eq!(seen, [(0, Ok(4)), (1, Ok(9))]);       // each result with its task's index
/// # Ok(()) } }
/// ```
#[must_use = "an iterator does nothing unless iterated"]
#[derive(Debug)]
pub struct AsCompleted<T> {
    tasks: Vec<Option<Task<T>>>,
    ready: Arc<FinishOrder>,
    left: usize,
}

/// The indices of finished tasks, in the order they finished.
#[derive(Debug, Default)]
struct FinishOrder {
    queue: Mutex<VecDeque<usize>>,
    changed: Condvar,
}

impl FinishOrder {
    fn push(&self, index: usize) {
        lock(&self.queue).push_back(index);
        self.changed.notify_one();
    }
}

/// Wakes the iterator when task `index` finishes.
struct Finished {
    index: usize,
    ready: Arc<FinishOrder>,
}

impl Wake for Finished {
    fn wake(self: Arc<Self>) {
        self.ready.push(self.index);
    }
}

impl<T> AsCompleted<T> {
    /// Cancels every task not yielded yet, as [`Task::cancel`] does, and returns how many it
    /// cancelled; they are still yielded, with [`Error::Cancelled`](crate::Error::Cancelled).
    /// For "take the first result, cancel the rest":
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Error};
    /// # #[pool_entry] fn nap(ms: u64) -> u64 { std::thread::sleep(std::time::Duration::from_millis(ms)); ms }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<nap>::new(2)?;
    /// let mut done = ppool::as_completed([pool.submit(60_000), pool.submit(10)]);
    /// assert_eq!(done.next(), Some((1, Ok(10))));      // the first to finish
    /// assert_eq!(done.cancel_rest(), 1);               // the 60 s task's worker is killed
    /// assert_eq!(done.next(), Some((0, Err(Error::Cancelled))));
    /// # Ok(()) } }
    /// ```
    pub fn cancel_rest(&mut self) -> usize {
        self.tasks
            .iter()
            .flatten()
            .filter(|task| task.cancel())
            .count()
    }
}

impl<T> Iterator for AsCompleted<T> {
    type Item = (usize, Result<T>);

    fn next(&mut self) -> Option<(usize, Result<T>)> {
        if self.left == 0 {
            return None;
        }
        let mut queue = lock(&self.ready.queue);
        loop {
            while let Some(index) = queue.pop_front() {
                // A task is reported once: a spurious second wake-up finds its slot empty.
                if let Some(task) = self.tasks.get_mut(index).and_then(Option::take) {
                    drop(queue);
                    self.left -= 1;
                    return Some((index, task.wait()));
                }
            }
            queue = wait(&self.ready.changed, queue);
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}
