//! A batch: many tasks submitted at once, their results gathered in input order.

use crate::error::{Error, Result};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// The results of [`pool.batch(..)`](crate::ProcessPool::batch), in input order.
///
/// Every task is already submitted when the batch is returned; dropping it does not cancel
/// them.
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
    slots: Vec<Option<Result<T>>>,
    missing: usize,
}

impl<T> Gather<T> {
    pub(crate) fn new(len: usize) -> Arc<Self> {
        let slots = (0..len).map(|_| None).collect();
        Arc::new(Gather {
            state: Mutex::new(GatherState {
                slots,
                missing: len,
            }),
            done: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GatherState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores results for consecutive tasks from `start`.
    pub(crate) fn fill(&self, start: usize, each: impl FnOnce(&mut dyn FnMut(usize, Result<T>))) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let mut put = |k: usize, r: Result<T>| {
            if let Some(slot) = st.slots.get_mut(start + k) {
                if slot.is_none() {
                    st.missing -= 1;
                }
                *slot = Some(r);
            }
        };
        each(&mut put);
        let finished = st.missing == 0;
        drop(guard);
        if finished {
            self.done.notify_all();
        }
    }

    fn wait(&self) -> Vec<Result<T>> {
        let mut st = self.lock();
        while st.missing > 0 {
            st = self.done.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        std::mem::take(&mut st.slots)
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::Closed)))
            .collect()
    }

    fn is_done(&self) -> bool {
        self.lock().missing == 0
    }
}

impl<T> Batch<T> {
    pub(crate) fn new(results: Arc<Gather<T>>) -> Self {
        Batch { results }
    }

    /// Waits for every task; all results in input order, or the first error in input order.
    pub fn wait(self) -> Result<Vec<T>> {
        self.results.wait().into_iter().collect()
    }

    /// Waits for every task; each task's own result, in input order.
    pub fn wait_all(self) -> Vec<Result<T>> {
        self.results.wait()
    }

    /// True once every task has finished.
    pub fn is_done(&self) -> bool {
        self.results.is_done()
    }
}
