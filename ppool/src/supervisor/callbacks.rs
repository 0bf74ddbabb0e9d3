//! The thread that runs `call_with` callbacks, apart from the threads that drive workers.
//!
//! A callback is user code, and user code calls back into the pool: a blocking `call`, a
//! `batch(..).wait()`, even `join()`. Run on a driver thread, that would wait for the very
//! worker the thread drives, forever. Here a callback can block on the pool as long as it
//! likes: the drivers go on and deliver what it waits for. Callbacks run one at a time, in
//! the order their results arrived.
//!
//! No callback is ever lost: one that cannot be queued (the pool is stopped, or no thread
//! could be started) runs in place, and one still queued when the thread goes away runs as
//! the queue is dropped.

use crate::sync::lock;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, ThreadId};
use std::time::Instant;

/// A callback that runs when it is dropped, if nothing ran it before.
struct Pending(Option<Box<dyn FnOnce() + Send>>);

impl Pending {
    fn run(mut self) {
        if let Some(callback) = self.0.take() {
            run(callback);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(callback) = self.0.take() {
            run(callback);
        }
    }
}

/// A pool's callback queue and its thread, started at the first callback.
#[derive(Debug)]
pub(crate) struct Callbacks {
    name: String,
    queue: OnceLock<Option<Sender<Pending>>>,
    thread: Mutex<Option<(JoinHandle<()>, ThreadId)>>,
    /// No callback is queued any more: they run in place.
    closed: AtomicBool,
}

impl Callbacks {
    pub(crate) fn new(pool: &str) -> Arc<Self> {
        Arc::new(Callbacks {
            name: format!("{pool}-callbacks"),
            queue: OnceLock::new(),
            thread: Mutex::new(None),
            closed: AtomicBool::new(false),
        })
    }

    fn thread(&self) -> MutexGuard<'_, Option<(JoinHandle<()>, ThreadId)>> {
        lock(&self.thread)
    }

    /// Runs `callback` on the callback thread, or here when the pool is stopped or no thread
    /// can be started.
    pub(crate) fn push(&self, callback: impl FnOnce() + Send + 'static) {
        let pending = Pending(Some(Box::new(callback)));
        if self.closed.load(Ordering::Acquire) {
            return pending.run();
        }
        let queue = self.queue.get_or_init(|| self.start());
        match queue {
            Some(tx) => {
                // A send fails only once the thread has gone, giving the callback back.
                if let Err(mpsc::SendError(pending)) = tx.send(pending) {
                    pending.run();
                }
            }
            None => pending.run(),
        }
    }

    fn start(&self) -> Option<Sender<Pending>> {
        let (tx, rx) = mpsc::channel::<Pending>();
        match std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || serve(rx))
        {
            Ok(handle) => {
                let id = handle.thread().id();
                *self.thread() = Some((handle, id));
                Some(tx)
            }
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "cannot start the callback thread; running callbacks in place"
                );
                None
            }
        }
    }

    /// Lets the queued callbacks run, then ends the thread and joins it (unless this is that
    /// thread: a callback that stops its pool; the thread then ends once it returns).
    pub(crate) fn close(&self) {
        self.close_within(None);
    }

    /// [`close`](Self::close), waiting for the thread only until `deadline`: false if it was
    /// still running callbacks then (it goes on, and a later `close` joins it).
    pub(crate) fn close_within(&self, deadline: Option<Instant>) -> bool {
        self.closed.store(true, Ordering::Release);
        let mut thread = self.thread();
        let current = thread
            .as_ref()
            .is_some_and(|(_, id)| *id == std::thread::current().id());
        let handle = if current { None } else { thread.take() };
        drop(thread);
        if let Some((handle, id)) = handle {
            // Wakes the thread with an empty callback; it ends when the queue is empty.
            if let Some(Some(tx)) = self.queue.get() {
                let _ = tx.send(Pending(None));
            }
            if deadline.is_some() && !crate::sync::poll_until(deadline, || handle.is_finished()) {
                *self.thread() = Some((handle, id));
                return false;
            }
            let _ = handle.join();
        }
        true
    }
}

/// The callback thread's loop: callbacks in order, until a wake-up finds the pool closed and
/// nothing queued. Whatever is queued after that runs as the receiver is dropped.
fn serve(rx: Receiver<Pending>) {
    while let Ok(pending) = rx.recv() {
        let wake_up = pending.0.is_none();
        pending.run();
        if wake_up {
            while let Ok(more) = rx.try_recv() {
                more.run();
            }
            return;
        }
    }
}

fn run(callback: Box<dyn FnOnce() + Send>) {
    if panic::catch_unwind(AssertUnwindSafe(callback)).is_err() {
        tracing::error!("a call_with callback panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_callback_may_close_its_own_queue_and_the_rest_still_run() {
        let callbacks = Callbacks::new("t");
        let (tx, rx) = mpsc::channel();
        let inner = Arc::clone(&callbacks);
        callbacks.push(move || inner.close());
        for i in 0..10 {
            let tx = tx.clone();
            callbacks.push(move || {
                let _ = tx.send(i);
            });
        }
        let mut got: Vec<i32> = (0..10)
            .filter_map(|_| rx.recv_timeout(std::time::Duration::from_secs(5)).ok())
            .collect();
        // Those queued before the close run on the thread, the others in place: all run.
        got.sort_unstable();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        callbacks.close();
    }
}
