//! The thread that runs `call_with` callbacks, apart from the threads that drive workers.
//!
//! A callback is user code, and user code calls back into the pool: a blocking `call`, a
//! `batch(..).wait()`, even `join()`. Run on a driver thread, that would wait for the very
//! worker the thread drives, forever. Here a callback can block on the pool as long as it
//! likes: the drivers go on and deliver what it waits for. Callbacks run one at a time, in
//! the order their results arrived.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, ThreadId};

type Callback = Box<dyn FnOnce() + Send>;

/// A pool's callback queue and its thread, started at the first callback.
#[derive(Debug)]
pub(crate) struct Callbacks {
    name: String,
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Callback>,
    thread: Option<JoinHandle<()>>,
    thread_id: Option<ThreadId>,
    /// No new thread starts; the running one ends once the queue is empty.
    closed: bool,
    /// The thread takes callbacks from the queue (set under the lock as it starts and ends).
    serving: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("queued", &self.queue.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Callbacks {
    pub(crate) fn new(pool: &str) -> Arc<Self> {
        Arc::new(Callbacks {
            name: format!("{pool}-callbacks"),
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `callback` on the callback thread, or here when there is none any more (the pool
    /// was stopped) or none can be started.
    pub(crate) fn push(self: &Arc<Self>, callback: impl FnOnce() + Send + 'static) {
        let mut st = self.lock();
        if st.thread.is_none() && !st.closed {
            let me = Arc::clone(self);
            match std::thread::Builder::new()
                .name(self.name.clone())
                .spawn(move || me.serve())
            {
                Ok(handle) => {
                    st.serving = true;
                    st.thread_id = Some(handle.thread().id());
                    st.thread = Some(handle);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the callback thread; running callbacks in place");
                    st.closed = true;
                }
            }
        }
        if !st.serving {
            drop(st);
            run(Box::new(callback));
            return;
        }
        st.queue.push_back(Box::new(callback));
        drop(st);
        self.ready.notify_one();
    }

    fn serve(&self) {
        let mut st = self.lock();
        loop {
            if let Some(callback) = st.queue.pop_front() {
                drop(st);
                run(callback);
                st = self.lock();
                continue;
            }
            if st.closed {
                st.serving = false;
                return;
            }
            st = self.ready.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Lets the queued callbacks run, then ends the thread and joins it (unless this is that
    /// thread: a callback that stops its pool; the thread then ends once it returns).
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        let current = st.thread_id == Some(std::thread::current().id());
        let handle = if current { None } else { st.thread.take() };
        drop(st);
        self.ready.notify_all();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

fn run(callback: Callback) {
    if panic::catch_unwind(AssertUnwindSafe(callback)).is_err() {
        tracing::error!("a call_with callback panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn callbacks_run_in_order_on_their_own_thread_and_close_drains_them() {
        let callbacks = Callbacks::new("t");
        let (tx, rx) = mpsc::channel();
        for i in 0..100 {
            let tx = tx.clone();
            let me = std::thread::current().id();
            callbacks.push(move || {
                let _ = tx.send((i, std::thread::current().id() != me));
            });
        }
        callbacks.close();
        let got: Vec<(i32, bool)> = rx.try_iter().collect();
        assert_eq!(got, (0..100).map(|i| (i, true)).collect::<Vec<_>>());
    }

    #[test]
    fn after_close_a_callback_runs_in_place() {
        let callbacks = Callbacks::new("t");
        callbacks.push(|| {});
        callbacks.close();
        let (tx, rx) = mpsc::channel();
        callbacks.push(move || {
            let _ = tx.send(std::thread::current().id());
        });
        assert_eq!(rx.try_recv().ok(), Some(std::thread::current().id()));
    }

    #[test]
    fn a_panicking_callback_does_not_stop_the_others() {
        let callbacks = Callbacks::new("t");
        let (tx, rx) = mpsc::channel();
        callbacks.push(|| panic!("boom"));
        callbacks.push(move || {
            let _ = tx.send(1);
        });
        callbacks.close();
        assert_eq!(rx.try_recv().ok(), Some(1));
    }
}
