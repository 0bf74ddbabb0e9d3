//! The supervisor: a queue of jobs, one slot per worker, and the threads that move jobs to
//! workers and results back. It handles bytes (finished frames), never user types; the typed
//! layer hands it jobs with a `deliver` closure that decodes the results.
//!
//! A job is driven by whichever thread holds its worker: the worker's own driver thread for
//! queued jobs, or the calling thread itself for a blocking `call` when a worker is idle, so
//! that a round trip costs what the pipe costs.

mod conn;
mod recovery;
mod run;

use crate::callbacks::Callbacks;
use crate::error::Error;
use crate::insights::{Insights, Stats};
use crate::process::Spec;
use crate::protocol::Results;
use crate::watchdog::Watch;
use conn::Conn;
use recovery::{register, replace, retire, start_all};
use run::run;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a job's `deliver` receives: the results frame and the worker index, or the error that
/// ended every task of the job.
pub(crate) type Delivery<'a> = Result<(Results<'a>, usize), Error>;

/// Where a job's outcome goes: called once, on whichever thread drove the job.
///
/// A `Deliver` dropped without being called (a job forgotten on some path) delivers
/// [`Error::Closed`] as it goes, so that nobody waits forever for a result that will not come.
/// A handler that panics is caught: it loses its own result, never the thread that called it.
pub(crate) struct Deliver(Option<Handler>);

/// What a [`Deliver`] calls.
type Handler = Box<dyn FnOnce(Delivery<'_>) + Send>;

impl Deliver {
    pub(crate) fn new(handler: impl FnOnce(Delivery<'_>) + Send + 'static) -> Self {
        Deliver(Some(Box::new(handler)))
    }

    /// Drops the handler without calling it: its job was replaced by others that deliver
    /// in its place.
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }

    /// Hands the outcome to the handler.
    pub(crate) fn send(mut self, delivery: Delivery<'_>) {
        if let Some(handler) = self.0.take() {
            call_handler(handler, delivery);
        }
    }
}

fn call_handler(handler: Handler, delivery: Delivery<'_>) {
    let run = std::panic::AssertUnwindSafe(move || handler(delivery));
    if std::panic::catch_unwind(run).is_err() {
        tracing::error!("a task's result handler panicked; its result is lost");
    }
}

impl Drop for Deliver {
    fn drop(&mut self) {
        if let Some(handler) = self.0.take() {
            call_handler(handler, Err(Error::Closed));
        }
    }
}

impl std::fmt::Debug for Deliver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Deliver(pending)"
        } else {
            "Deliver(done)"
        })
    }
}

/// Splits a job of several tasks, given its TASKS frame, into one `(frame, deliver)` per task,
/// in order; used when its worker failed under it and the culprit must be found.
pub(crate) type Split = Box<dyn FnOnce(&[u8]) -> Vec<(Vec<u8>, Deliver)> + Send>;

/// A finished TASKS frame and where its results go.
pub(crate) struct Job {
    pub(crate) frame: Vec<u8>,
    pub(crate) count: u32,
    pub(crate) deliver: Deliver,
    /// Set when nobody wants the results any more (a dropped stream).
    pub(crate) cancelled: Option<Arc<AtomicBool>>,
    pub(crate) attempts: u32,
    /// Times the job found its worker already dead when it was sent.
    pub(crate) bounces: u32,
    /// For a job of several tasks: how to run them one by one instead.
    pub(crate) split: Option<Split>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("count", &self.count)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl Job {
    fn is_cancelled(&self) -> bool {
        self.cancelled
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// How a pool runs, fixed when it is built.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) n_jobs: usize,
    pub(crate) debug: bool,
    pub(crate) max_tasks_per_worker: Option<u64>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) retries: u32,
    /// Jobs sent ahead to one worker, so it never waits for the next.
    pub(crate) pipeline: usize,
}

enum Slot {
    /// Waiting for work.
    Idle(Box<Conn>),
    /// Held by a thread that drives it.
    Busy,
    /// Its worker failed and was reaped; the slot's own driver thread starts a replacement,
    /// so that whoever drove the failed job has its answer without waiting for that.
    Vacant,
    /// Its worker reached `max_tasks_per_worker`; the slot's driver thread retires it and
    /// starts a replacement.
    Recycle(Box<Conn>),
    /// Could not be (re)started.
    Dead,
    /// Stopped by `join`.
    Retired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    NotStarted,
    Running,
    Joining,
    Closed,
}

struct State {
    phase: Phase,
    queue: VecDeque<Job>,
    slots: Vec<Slot>,
}

impl State {
    /// Whether any slot has, or will soon have, a worker.
    fn any_alive(&self) -> bool {
        self.slots.iter().any(|s| {
            matches!(
                s,
                Slot::Idle(_) | Slot::Busy | Slot::Vacant | Slot::Recycle(_)
            )
        })
    }

    fn any_busy(&self) -> bool {
        self.slots.iter().any(|s| matches!(s, Slot::Busy))
    }
}

struct Shared {
    spec: Spec,
    settings: Settings,
    /// A timeout or memory limit is set, so the watchdog runs and jobs are armed.
    watchdog: bool,
    state: Mutex<State>,
    wake: Condvar,
    watch: Watch,
    last_error: Mutex<Option<Error>>,
    next_job: AtomicU64,
    /// Mean time a worker is busy with one job, in nanoseconds (0: nothing seen yet).
    job_nanos: AtomicU64,
    stats: Stats,
    /// Bodies of the EXITED frames of retired workers.
    exit_results: Mutex<Vec<Vec<u8>>>,
}

/// The untyped pool.
pub(crate) struct Core {
    shared: Arc<Shared>,
    /// The driver threads.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The watchdog thread, stopped only once the drivers are done.
    watchdog: Mutex<Option<JoinHandle<()>>>,
    callbacks: Arc<Callbacks>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("pool", &self.shared.spec.pool)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Core {
    pub(crate) fn new(spec: Spec, settings: Settings) -> Self {
        let slots = settings.n_jobs;
        let shared = Shared {
            watch: Watch::new(slots, settings.memory_limit),
            state: Mutex::new(State {
                phase: Phase::NotStarted,
                queue: VecDeque::new(),
                slots: (0..slots).map(|_| Slot::Dead).collect(),
            }),
            wake: Condvar::new(),
            last_error: Mutex::new(None),
            next_job: AtomicU64::new(1),
            job_nanos: AtomicU64::new(0),
            stats: Stats::new(slots),
            watchdog: settings.task_timeout.is_some() || settings.memory_limit.is_some(),
            exit_results: Mutex::new(Vec::new()),
            spec,
            settings,
        };
        let callbacks = Callbacks::new(&shared.spec.pool);
        Core {
            shared: Arc::new(shared),
            threads: Mutex::new(Vec::new()),
            watchdog: Mutex::new(None),
            callbacks,
        }
    }

    /// Where `call_with` callbacks run.
    pub(crate) fn callbacks(&self) -> &Arc<Callbacks> {
        &self.callbacks
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    pub(crate) fn spec(&self) -> &Spec {
        &self.shared.spec
    }

    pub(crate) fn is_running(&self) -> bool {
        let st = lock(&self.shared.state);
        st.phase == Phase::Running && st.any_alive()
    }

    pub(crate) fn last_error(&self) -> Option<Error> {
        lock(&self.shared.last_error).clone()
    }

    pub(crate) fn insights(&self) -> Insights {
        self.shared.stats.snapshot()
    }

    /// The EXITED bodies collected so far.
    pub(crate) fn exit_results(&self) -> Vec<Vec<u8>> {
        lock(&self.shared.exit_results).clone()
    }

    /// Starts the workers and the threads that drive them. Starting twice is a no-op.
    pub(crate) fn start(&self) -> Result<(), Error> {
        let shared = &self.shared;
        let mut st = lock(&shared.state);
        match st.phase {
            Phase::NotStarted => {}
            Phase::Running => return Ok(()),
            Phase::Joining | Phase::Closed => return Err(Error::Closed),
        }
        let conns = start_all(shared)?;
        for (i, conn) in conns.into_iter().enumerate() {
            register(shared, i, &conn);
            st.slots[i] = Slot::Idle(Box::new(conn));
        }
        st.phase = Phase::Running;
        drop(st);

        let mut started = Vec::new();
        for i in 0..shared.settings.n_jobs {
            let s = Arc::clone(shared);
            started.push(spawn_thread(
                format!("{}-{i}", shared.spec.pool),
                move || drive(&s, i),
            ));
        }
        let mut failed = None;
        if shared.watchdog {
            let s = Arc::clone(shared);
            match spawn_thread(format!("{}-watchdog", shared.spec.pool), move || {
                s.watch.run()
            }) {
                Ok(h) => *lock(&self.watchdog) = Some(h),
                Err(e) => failed = Some(e),
            }
        }
        let mut threads = lock(&self.threads);
        for handle in started {
            match handle {
                Ok(h) => threads.push(h),
                Err(e) => failed = Some(e),
            }
        }
        drop(threads);
        if let Some(e) = failed {
            self.shutdown();
            return Err(e);
        }
        Ok(())
    }

    /// Queues a job; it fails at once if the pool cannot run it.
    pub(crate) fn submit(&self, job: Job) {
        if let Some((st, job)) = self.admit(job) {
            enqueue(&self.shared, st, job);
        }
    }

    /// Runs a job on an idle worker from this thread when there is one and nothing is queued
    /// before it; else queues it. The job has been delivered, or is queued, on return.
    pub(crate) fn run_or_submit(&self, job: Job) {
        let shared = &self.shared;
        let Some((mut st, job)) = self.admit(job) else {
            return;
        };
        let idle = if shared.settings.debug || !st.queue.is_empty() {
            None
        } else {
            st.slots.iter().position(|s| matches!(s, Slot::Idle(_)))
        };
        let Some(i) = idle else {
            return enqueue(shared, st, job);
        };
        let Slot::Idle(conn) = std::mem::replace(&mut st.slots[i], Slot::Busy) else {
            unreachable!("slot {i} was idle")
        };
        drop(st);
        let back = run(shared, i, conn, job, false);
        put_back(shared, i, back);
    }

    /// Locks the state for a new job, or fails the job at once if the pool cannot run it.
    fn admit(&self, job: Job) -> Option<(MutexGuard<'_, State>, Job)> {
        let st = lock(&self.shared.state);
        match refusal(&self.shared, &st) {
            None => Some((st, job)),
            Some(error) => {
                drop(st);
                job.deliver.send(Err(error));
                None
            }
        }
    }

    /// Finishes every queued job, then stops the workers.
    pub(crate) fn join(&self) -> Result<(), Error> {
        let shared = &self.shared;
        {
            let mut st = lock(&shared.state);
            match st.phase {
                Phase::NotStarted => {
                    st.phase = Phase::Closed;
                    return Ok(());
                }
                Phase::Running => st.phase = Phase::Joining,
                Phase::Joining | Phase::Closed => {}
            }
        }
        shared.wake.notify_all();
        self.join_threads();
        let mut st = lock(&shared.state);
        st.phase = Phase::Closed;
        drop(st);
        self.callbacks.close();
        Ok(())
    }

    /// Stops now: kills the workers; queued and running jobs end with `Error::Closed`.
    pub(crate) fn shutdown(&self) {
        let shared = &self.shared;
        let (queued, idle) = {
            let mut st = lock(&shared.state);
            if st.phase == Phase::Closed && st.queue.is_empty() {
                drop(st);
                shared.watch.kill_all();
                self.join_threads();
                self.callbacks.close();
                return;
            }
            st.phase = Phase::Closed;
            let queued: Vec<Job> = st.queue.drain(..).collect();
            let mut idle = Vec::new();
            for (i, slot) in st.slots.iter_mut().enumerate() {
                match std::mem::replace(slot, Slot::Retired) {
                    Slot::Idle(conn) | Slot::Recycle(conn) => idle.push((i, conn)),
                    Slot::Busy => *slot = Slot::Busy,
                    Slot::Vacant | Slot::Dead | Slot::Retired => {}
                }
            }
            (queued, idle)
        };
        // Busy workers are killed so their drivers stop reading; they deliver `Closed`.
        shared.watch.kill_all();
        for (i, conn) in idle {
            shared.watch.unregister(i);
            drop(conn);
        }
        for job in queued {
            job.deliver.send(Err(Error::Closed));
        }
        shared.wake.notify_all();
        self.join_threads();
        self.callbacks.close();
    }

    /// Joins the driver threads, except the calling one, then stops and joins the watchdog:
    /// it guards the jobs the drivers finish until the last one is done.
    fn join_threads(&self) {
        let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.threads));
        let me = std::thread::current().id();
        for handle in handles {
            if handle.thread().id() == me {
                continue;
            }
            let _ = handle.join();
        }
        self.shared.watch.stop();
        let watchdog = lock(&self.watchdog).take();
        if let Some(handle) = watchdog {
            let _ = handle.join();
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts one of the pool's threads. Its writes to worker pipes never raise `SIGPIPE`.
fn spawn_thread(
    name: String,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            crate::watched::block_sigpipe_on_this_thread();
            body()
        })
        .map_err(|e| Error::spawn(format!("cannot start a pool thread: {e}")))
}

/// Queues a job and wakes the drivers if one of them is idle: busy drivers come back to the
/// queue by themselves.
fn enqueue(shared: &Shared, mut st: MutexGuard<'_, State>, job: Job) {
    st.queue.push_back(job);
    let idle = st.slots.iter().any(|s| matches!(s, Slot::Idle(_)));
    drop(st);
    if idle {
        shared.wake.notify_all();
    }
}

/// Why the pool cannot take a job now, if it cannot.
fn refusal(shared: &Shared, st: &State) -> Option<Error> {
    match st.phase {
        Phase::NotStarted => Some(Error::NotStarted),
        Phase::Joining | Phase::Closed => Some(Error::Closed),
        Phase::Running if !st.any_alive() => Some(
            lock(&shared.last_error)
                .clone()
                .unwrap_or_else(|| Error::spawn("no worker of the pool is running")),
        ),
        Phase::Running => None,
    }
}

/// Puts a slot back after a thread drove it, and wakes whoever waits for work or for the end.
fn put_back(shared: &Shared, i: usize, back: Slot) {
    let mut st = lock(&shared.state);
    let closed = st.phase == Phase::Closed;
    let vacated = matches!(back, Slot::Vacant | Slot::Recycle(_));
    let dropped = match back {
        Slot::Idle(conn) | Slot::Recycle(conn) if closed => {
            st.slots[i] = Slot::Retired;
            Some(conn)
        }
        Slot::Vacant if closed => {
            st.slots[i] = Slot::Retired;
            None
        }
        other => {
            st.slots[i] = other;
            None
        }
    };
    let orphaned: Vec<Job> = if !st.any_alive() {
        st.queue.drain(..).collect()
    } else {
        Vec::new()
    };
    // Drivers only care when there is work, or when the pool is stopping.
    let wake =
        !st.queue.is_empty() || st.phase != Phase::Running || !orphaned.is_empty() || vacated;
    drop(st);
    if wake {
        shared.wake.notify_all();
    }
    if let Some(conn) = dropped {
        shared.watch.unregister(i);
        drop(conn);
    }
    if !orphaned.is_empty() {
        let error = lock(&shared.last_error)
            .clone()
            .unwrap_or_else(|| Error::spawn("no worker of the pool is running"));
        for job in orphaned {
            job.deliver.send(Err(error.clone()));
        }
    }
}

/// The loop of slot `i`'s driver thread.
fn drive(shared: &Shared, i: usize) {
    let _span =
        tracing::debug_span!("ppool_worker", pool = %shared.spec.pool, worker = i).entered();
    let mut st = lock(&shared.state);
    loop {
        if st.phase == Phase::Closed {
            break;
        }
        if matches!(st.slots[i], Slot::Vacant | Slot::Recycle(_)) {
            let slot = std::mem::replace(&mut st.slots[i], Slot::Busy);
            // While joining with nothing left to do, a replacement would only be stopped.
            let wanted = st.phase == Phase::Running || !st.queue.is_empty();
            drop(st);
            if let Slot::Recycle(conn) = slot {
                shared.watch.unregister(i);
                retire(shared, i, *conn);
            }
            let back = if wanted {
                replace(shared, i)
            } else {
                Slot::Retired
            };
            put_back(shared, i, back);
            shared.wake.notify_all();
            st = lock(&shared.state);
            continue;
        }
        if matches!(st.slots[i], Slot::Dead | Slot::Retired) {
            if st.phase == Phase::Joining && st.queue.is_empty() {
                break;
            }
            if !st.any_alive() {
                break;
            }
        }
        if matches!(st.slots[i], Slot::Idle(_)) {
            if let Some(job) = st.queue.pop_front() {
                let Slot::Idle(conn) = std::mem::replace(&mut st.slots[i], Slot::Busy) else {
                    unreachable!("slot {i} was idle")
                };
                drop(st);
                let back = run(shared, i, conn, job, true);
                put_back(shared, i, back);
                st = lock(&shared.state);
                continue;
            }
            if st.phase == Phase::Joining && !st.any_busy() {
                let Slot::Idle(conn) = std::mem::replace(&mut st.slots[i], Slot::Retired) else {
                    unreachable!("slot {i} was idle")
                };
                drop(st);
                shared.watch.unregister(i);
                retire(shared, i, *conn);
                shared.wake.notify_all();
                return;
            }
        }
        st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
    }
}
