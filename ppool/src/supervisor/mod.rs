//! The supervisor: a queue of jobs, one slot per worker, and the threads that move jobs to
//! workers and results back. It handles bytes (finished frames), never user types; the typed
//! layer hands it jobs with a `deliver` closure that decodes the results.
//!
//! A job is driven by whichever thread holds its worker: a local worker's own driver thread
//! for queued jobs, or the calling thread itself for a blocking `call` when a worker is idle,
//! so that a round trip costs what the channel costs; a remote worker's host's reader, as
//! each message for it comes (`events`), so that a host costs two threads whatever its number
//! of workers.
//!
//! # Slots
//!
//! Each worker has a slot. A local slot has a driver thread, which sleeps on a bell of its
//! own: a queued job wakes the one idle worker's driver that the placement rule of `idle`
//! picks, never all of them; for a remote (evented) slot, the thread that queued the job
//! sends it at once. A slot is
//! - `Idle`: its worker waits for work; any thread may take it (its driver for the queue, a
//!   caller for one `call`) and mark it `Busy` while it drives it;
//! - `Vacant`: its worker failed and was reaped; only the slot's driver thread (for an evented
//!   slot, a short-lived thread of its own) refills it, so that the thread that drove the
//!   failed job answers its caller first;
//! - `Recycle`: its worker reached `max_tasks_per_worker`; the driver thread retires it (with
//!   its exit hook) and starts a replacement;
//! - `Dead`: no worker could be started; `Retired`: stopped by `join` or `shutdown`.
//!
//! # Sending ahead
//!
//! While jobs are short (under 1 ms of measured work), a driver thread sends more queued jobs
//! before the first one's results are back: up to 64 tiny ones (under 50 µs) or 2 short ones,
//! within three quarters of what the channel holds, so that sending never blocks while the
//! worker is blocked sending results. Long jobs, and every job under a `task_timeout`, go one
//! at a time: behind a long job, a job would wait while another worker is free, and its
//! deadline would run while it waited. A caller of `call` drives one job, and spins for its
//! answer when jobs are short and a CPU is free.
//!
//! # Failures
//!
//! When a worker fails, the jobs it held are settled by the rules in `recovery` (deliver the
//! outcomes that came, fail or retry the task that was running, run the tasks that never
//! started elsewhere, re-send a job none of whose tasks started), which are pure functions
//! with their own tests. Should the thread that drives a
//! worker panic (a bug in ppool), the worker is killed, the jobs it held end with
//! `Error::Internal`, and the slot is refilled like any other: the pool never loses a slot to
//! a panic.
//!
//! `shutdown` kills every process the watchdog's registry holds: a worker is in it from the
//! moment its process exists (a replacement still in its initializer) until it is gone (a
//! worker in its exit hook), so that `shutdown` never waits for a hook or an initializer.
//!
//! How a job's outcomes travel from the queue to the caller, and how recovery counts them
//! (sent ahead, started, published, lost), is told in `supervisor/README.md` beside this file.

pub(crate) mod callbacks;
mod driver;
mod events;
mod idle;
mod job;
mod lifecycle;
mod recovery;
mod state;
#[cfg(test)]
mod tests;
pub(crate) mod watchdog;

pub(crate) use job::{Deliver, Delivery, Job, Split};
pub(crate) use state::{HookValues, Settings, WorkerSpec};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::insights::{Insights, WorkerState};
use crate::supervisor::callbacks::Callbacks;
use crate::sync::lock;
use crate::transport::Launch;
use driver::{Driver, run_caught};
use lifecycle::{register, replace, retire, start_all};
use state::{Conn, Inner, Phase, Slot, State};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;

/// The untyped pool.
pub(crate) struct Core {
    shared: Arc<Inner>,
    /// The driver threads.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The watchdog thread, stopped only once the drivers are done.
    watchdog: Mutex<Option<JoinHandle<()>>>,
    /// Held while the threads are joined.
    joining: Mutex<()>,
    callbacks: Arc<Callbacks>,
    /// The pool's shared values.
    store: crate::share::Store,
}

/// A pool's store of shared values, made before the pool is (by its builder, so that values
/// shared then are the pool's): its release hook finds the pool once [`Core::new`] has made it.
pub(crate) struct PoolStore {
    store: crate::share::Store,
    token: u64,
    /// The pool, once made.
    pool: Arc<OnceLock<Weak<Inner>>>,
}

impl std::fmt::Debug for PoolStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolStore")
            .field("store", &self.store)
            .field("pool_made", &self.pool.get().is_some())
            .finish()
    }
}

impl PoolStore {
    /// The store of the pool that will have `token`.
    pub(crate) fn new(token: u64) -> Self {
        let pool: Arc<OnceLock<Weak<Inner>>> = Arc::default();
        let cell = Arc::clone(&pool);
        // A value freed is forgotten by the hosts it was sent to; local workers find its memfd
        // gone from this process. One freed before the pool was made was sent nowhere.
        let release: crate::share::ReleaseHook = Arc::new(move |id| {
            if let Some(shared) = cell.get().and_then(Weak::upgrade) {
                shared.launch.forget(id);
            }
        });
        PoolStore {
            store: crate::share::Store::new(token, release),
            token,
            pool,
        }
    }

    /// The token of its pool.
    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    /// The store.
    pub(crate) fn store(&self) -> &crate::share::Store {
        &self.store
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("pool", &self.shared.spec.pool)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// The pool of `spec`, with `store`, made for it beforehand (with the same token).
    pub(crate) fn new(
        spec: WorkerSpec,
        settings: Settings,
        launch: Box<dyn Launch>,
        store: PoolStore,
    ) -> Self {
        debug_assert_eq!(
            spec.token, store.token,
            "a pool's store has the pool's token"
        );
        let shared = Arc::new_cyclic(|me| Inner::new(me.clone(), spec, settings, launch));
        let callbacks = Callbacks::new(&shared.spec.pool);
        // Set once, here: the store is this pool's alone.
        let _ = store.pool.set(Arc::downgrade(&shared));
        Core {
            store: store.store,
            shared,
            threads: Mutex::new(Vec::new()),
            watchdog: Mutex::new(None),
            joining: Mutex::new(()),
            callbacks,
        }
    }

    /// The pool's store of shared values, while it can take tasks that use them.
    pub(crate) fn store(&self) -> Result<&crate::share::Store, Error> {
        let st = self.shared.state();
        match refusal(&self.shared, &st) {
            Some(error) => Err(error),
            None => Ok(&self.store),
        }
    }

    /// Where `call_with` callbacks run.
    pub(crate) fn callbacks(&self) -> &Arc<Callbacks> {
        &self.callbacks
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    pub(crate) fn spec(&self) -> &WorkerSpec {
        &self.shared.spec
    }

    /// Workers are up: the pool runs, or is joining and still finishing its tasks.
    pub(crate) fn is_running(&self) -> bool {
        let st = self.shared.state();
        matches!(st.phase, Phase::Running | Phase::Joining) && st.any_alive()
    }

    pub(crate) fn last_error(&self) -> Option<Error> {
        self.shared.last_error()
    }

    pub(crate) fn insights(&self) -> Insights {
        let (states, queued): (Vec<WorkerState>, usize) = {
            let st = self.shared.state();
            let states = st
                .slots()
                .iter()
                .map(|s| match s {
                    Slot::Idle(_) => WorkerState::Idle,
                    Slot::Busy => WorkerState::Busy,
                    Slot::Vacant | Slot::Recycle(_) => WorkerState::Starting,
                    Slot::Dead => WorkerState::Dead,
                    Slot::Retired => WorkerState::Stopped,
                })
                .collect();
            (states, st.queue.len())
        };
        let live = |i: usize| {
            let state = states.get(i).copied().unwrap_or(WorkerState::Dead);
            let peer = match state {
                WorkerState::Idle | WorkerState::Busy => self.shared.watch.peer(i),
                _ => None,
            };
            (
                state,
                peer.as_ref().map(|p| p.pid()),
                peer.as_ref().and_then(|p| p.resident_bytes()),
            )
        };
        let host = |i: usize| self.shared.launch.host(i);
        let failures = lock(&self.shared.host_failures).clone();
        let history = lock(&self.shared.host_history).clone();
        self.shared
            .stats
            .snapshot(live, queued, host, &failures, &history)
    }

    /// The EXITED bodies collected so far.
    pub(crate) fn exit_results(&self) -> Vec<Vec<u8>> {
        self.shared.exit_results()
    }

    /// Starts the workers and the threads that drive them. Starting twice is a no-op.
    pub(crate) fn start(&self) -> Result<(), Error> {
        let shared = &self.shared;
        let mut st = shared.state();
        match st.phase {
            Phase::NotStarted => {}
            Phase::Running => return Ok(()),
            Phase::Joining | Phase::Closed => return Err(Error::Closed),
        }
        let conns = start_all(shared)?;
        for (i, conn) in conns.into_iter().enumerate() {
            // A worker that could not start (under `min_workers`) leaves its slot dead.
            if let Some(conn) = conn {
                register(shared, i, &conn);
                st.put(i, Slot::Idle(Box::new(conn)));
            }
        }
        st.phase = Phase::Running;
        drop(st);

        let mut started = Vec::new();
        for i in 0..shared.settings.n_jobs {
            if shared.is_evented(i) {
                // Driven by its host's reader (see `events`).
                continue;
            }
            let s = Arc::clone(shared);
            started.push(spawn_thread(
                format!("{}-{i}", shared.spec.pool),
                move || drive(&s, i),
            ));
        }
        if shared.settings.rejoin && (0..shared.settings.n_jobs).any(|i| shared.is_evented(i)) {
            let s = Arc::clone(shared);
            started.push(spawn_thread(
                format!("{}-rejoin", shared.spec.pool),
                move || rejoin(&s),
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

    /// A cancel for a job submitted with `flag` as its cancel flag: the flag keeps it from
    /// starting, and this kills the worker that runs it, if one does.
    pub(crate) fn canceller(&self, flag: Arc<std::sync::atomic::AtomicBool>) -> Canceller {
        Canceller {
            shared: Arc::downgrade(&self.shared),
            flag,
        }
    }

    /// How many worker slots the pool has: those it was built with, and those of the hosts
    /// that joined.
    pub(crate) fn n_workers(&self) -> usize {
        self.shared.state().slots().len()
    }

    /// Adds `hosts` to the running pool: their slots are added, their workers started, and
    /// each takes queued work as soon as it is ready. Returns once every one is ready, or
    /// with the first failure (the slots of workers that did not start stay dead).
    pub(crate) fn add_hosts(&self, hosts: Vec<crate::hosts::HostSpec>) -> Result<(), Error> {
        let shared = &self.shared;
        let n: usize = hosts.iter().map(|h| h.workers).sum();
        let first = {
            let mut st = shared.state();
            if let Some(error) = refusal(shared, &st).filter(|_| st.phase != Phase::Running) {
                return Err(error);
            }
            if st.phase != Phase::Running {
                return Err(Error::Closed);
            }
            let first = st.slots().len();
            if !shared.launch.add_hosts(hosts) {
                return Err(Error::config(
                    "remote",
                    "debug mode runs tasks in this process; it has no remote workers",
                ));
            }
            st.grow(n);
            shared.watch.grow(first + n);
            shared.stats.grow(first + n);
            first
        };
        let mut failure = None;
        for (conn, i) in lifecycle::start_range(shared, first, n)
            .into_iter()
            .zip(first..)
        {
            match conn {
                Ok(conn) => take_in(shared, i, conn, crate::insights::HostEvent::Joined),
                Err(e) => {
                    let reason = e.to_string();
                    shared.host_event(i, crate::insights::HostEvent::NotStarted { reason });
                    tracing::warn!(pool = %shared.spec.pool, worker = i, error = &e as &dyn std::error::Error, "a worker of a joining host did not start");
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Retires the remote host `name`: its workers take no new task, finish those they hold
    /// (delivered as any), and end, with their exit hooks; then its agent ends, and nothing
    /// starts there again. Returns once they have ended.
    pub(crate) fn retire_host(&self, name: &str) -> Result<(), Error> {
        let shared = &self.shared;
        let mine: Vec<usize> = {
            let mut st = shared.state();
            if matches!(st.phase, Phase::NotStarted | Phase::Closed) {
                return Err(refusal(shared, &st).unwrap_or(Error::Closed));
            }
            let mine: Vec<usize> = (0..st.slots().len())
                .filter(|&i| shared.is_evented(i) && shared.launch.host(i) == name)
                .collect();
            if mine.is_empty() {
                return Err(Error::config(
                    "retire_host",
                    format!("the pool has no remote host named {name:?}"),
                ));
            }
            for &i in &mine {
                st.retire(i);
            }
            mine
        };
        // Its workers finish what they hold; none takes more.
        let mut st = shared.state();
        while mine
            .iter()
            .any(|&i| matches!(st.slot(i), Slot::Busy | Slot::Vacant | Slot::Recycle(_)))
        {
            st = crate::sync::wait(&shared.settled, st);
        }
        let mut idle = Vec::new();
        for &i in &mine {
            if matches!(st.slot(i), Slot::Idle(_))
                && let Slot::Idle(conn) = st.put(i, Slot::Retired)
            {
                idle.push((i, conn));
            }
        }
        drop(st);
        lifecycle::retire_many(shared, idle);
        shared.launch.retire_host(name);
        shared.host_event_of(name.to_string(), crate::insights::HostEvent::Retired);
        tracing::info!(pool = %shared.spec.pool, host = name, "host retired");
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
        // The idle worker the placement rule picks for a caller: the warmest (see `idle`).
        let idle = if shared.settings.debug || !st.queue.is_empty() {
            None
        } else {
            st.idle.pop_warm()
        };
        let Some(i) = idle else {
            return enqueue(shared, st, job);
        };
        let Slot::Idle(conn) = st.put(i, Slot::Busy) else {
            unreachable!("slot {i} was idle")
        };
        drop(st);
        if shared.is_evented(i) {
            // Sent from here; its host's reader delivers the answer.
            return events::start(shared, i, conn, job);
        }
        let back = run_caught(shared, i, conn, job, Driver::Caller);
        put_back(shared, i, back);
    }

    /// Locks the state for a new job, or fails the job at once if the pool cannot run it.
    fn admit(&self, job: Job) -> Option<(MutexGuard<'_, State>, Job)> {
        let token = self.shared.spec.token;
        if let Some(foreign) = job.needs.iter().find(|n| n.token() != token) {
            let error = Error::Share {
                message: format!(
                    "a task names shared value #{} of another pool: a value shared by one \
                     pool can only be used in that pool's tasks",
                    foreign.id()
                ),
                source: None,
            };
            job.deliver.send(Err(error));
            return None;
        }
        let st = self.shared.state();
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
        self.join_until(None, Duration::ZERO)
    }

    /// Moves a running pool to joining (new tasks are refused, the drivers finish what is
    /// queued) and wakes the drivers; false for a pool never started, which is closed at once.
    fn begin_joining(&self) -> bool {
        let mut st = self.shared.state();
        match st.phase {
            Phase::NotStarted => {
                st.phase = Phase::Closed;
                return false;
            }
            Phase::Running => st.phase = Phase::Joining,
            Phase::Joining | Phase::Closed => {}
        }
        drop(st);
        self.shared.ring_all();
        self.shared.settled.notify_all();
        true
    }

    /// [`join`](Self::join), giving up on the callback thread at `deadline` (it goes on with
    /// the callbacks queued): `Error::JoinTimeout` for `timeout` then.
    fn join_until(&self, deadline: Option<Instant>, timeout: Duration) -> Result<(), Error> {
        let shared = &self.shared;
        if !self.begin_joining() {
            return Ok(());
        }
        self.join_threads();
        self.retire_evented();
        self.join_threads();
        let mut st = shared.state();
        st.phase = Phase::Closed;
        drop(st);
        // Every worker was stopped: the hosts' agents end too, before `join` returns.
        close_launcher(shared);
        if self.callbacks.close_within(deadline) {
            Ok(())
        } else {
            Err(Error::JoinTimeout {
                timeout,
                unfinished: 0,
                callbacks: true,
            })
        }
    }

    /// [`join`](Self::join), if the drivers finish within `timeout`; else
    /// `Error::JoinTimeout`, with the pool still joining (it refuses new tasks and goes on
    /// with the rest).
    pub(crate) fn join_timeout(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = crate::sync::deadline(Instant::now(), timeout);
        if !self.begin_joining() {
            return Ok(());
        }
        let me = std::thread::current().id();
        let drivers_done = crate::sync::poll_until(deadline, || {
            lock(&self.threads)
                .iter()
                .all(|h| h.thread().id() == me || h.is_finished())
        });
        // Remote workers have no driver thread: their jobs are done when their slots settle.
        if drivers_done && self.settle_evented_until(deadline) {
            return self.join_until(deadline, timeout);
        }
        let insights = self.insights();
        Err(Error::JoinTimeout {
            timeout,
            unfinished: insights.queued_jobs as u64 + insights.in_flight_tasks,
            callbacks: false,
        })
    }

    /// Stops now: kills the workers; queued and running jobs end with `Error::Closed`.
    pub(crate) fn shutdown(&self) {
        let shared = &self.shared;
        let (queued, idle) = {
            let mut st = shared.state();
            if st.phase == Phase::Closed && st.queue.is_empty() {
                drop(st);
                shared.watch.kill_all();
                self.join_threads();
                drop(self.settle_evented());
                self.join_threads();
                close_launcher(shared);
                self.callbacks.close();
                return;
            }
            st.phase = Phase::Closed;
            let queued: Vec<Job> = st.queue.drain(..).collect();
            let mut idle = Vec::new();
            for i in 0..st.slots().len() {
                if matches!(st.slot(i), Slot::Busy) {
                    continue;
                }
                match st.put(i, Slot::Retired) {
                    Slot::Idle(conn) | Slot::Recycle(conn) => idle.push((i, conn)),
                    _ => {}
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
        shared.ring_all();
        shared.settled.notify_all();
        self.join_threads();
        // Busy evented workers were killed: their hosts' readers settle their jobs.
        drop(self.settle_evented());
        self.join_threads();
        close_launcher(shared);
        self.callbacks.close();
    }

    /// Waits until no evented slot holds a job or is being refilled, and nothing is queued
    /// that a worker could still run.
    fn settle_evented(&self) -> MutexGuard<'_, State> {
        let shared = &self.shared;
        let mut st = shared.state();
        while !Self::settled(shared, &st) {
            st = crate::sync::wait(&shared.settled, st);
        }
        st
    }

    /// [`settle_evented`](Self::settle_evented), giving up at `deadline`: whether they
    /// settled.
    fn settle_evented_until(&self, deadline: Option<Instant>) -> bool {
        let shared = &self.shared;
        let mut st = shared.state();
        loop {
            if Self::settled(shared, &st) {
                return true;
            }
            st = match deadline {
                None => crate::sync::wait(&shared.settled, st),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    crate::sync::wait_timeout(&shared.settled, st, deadline - now)
                }
            };
        }
    }

    /// Whether no evented slot holds a job or is being refilled, with nothing queued that a
    /// worker could still run.
    fn settled(shared: &Inner, st: &State) -> bool {
        let unsettled = (0..st.slots().len()).any(|i| {
            shared.is_evented(i)
                && matches!(st.slot(i), Slot::Busy | Slot::Vacant | Slot::Recycle(_))
        });
        !unsettled && (st.queue.is_empty() || !st.any_alive())
    }

    /// A joining pool's evented workers, once they finished every job: each is asked to
    /// exit, all together (see `lifecycle::retire_many`).
    fn retire_evented(&self) {
        let shared = &self.shared;
        let mut st = self.settle_evented();
        let mut idle = Vec::new();
        for i in 0..st.slots().len() {
            if !shared.is_evented(i) || !matches!(st.slot(i), Slot::Idle(_)) {
                continue;
            }
            if let Slot::Idle(conn) = st.put(i, Slot::Retired) {
                idle.push((i, conn));
            }
        }
        drop(st);
        lifecycle::retire_many(shared, idle);
    }

    /// Joins the driver threads, except the calling one, then stops and joins the watchdog:
    /// it guards the jobs the drivers finish until the last one is done.
    ///
    /// Callers that come while another is joining wait for it to be done: a second `join` or
    /// `shutdown` returns only once every thread has ended, never early.
    fn join_threads(&self) {
        let _joining = lock(&self.joining);
        let me = std::thread::current().id();
        loop {
            let mut handles: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.threads));
            // The threads that refill evented slots may start more while they are joined.
            handles.append(&mut lock(&self.shared.transient));
            if handles.is_empty() {
                break;
            }
            for handle in handles {
                if handle.thread().id() == me {
                    continue;
                }
                let _ = handle.join();
            }
        }
        self.shared.watch.stop();
        let watchdog = lock(&self.watchdog).take();
        if let Some(handle) = watchdog {
            let _ = handle.join();
        }
    }
}

/// Cancels one job: see [`Core::canceller`].
#[derive(Debug)]
pub(crate) struct Canceller {
    shared: std::sync::Weak<Inner>,
    flag: Arc<std::sync::atomic::AtomicBool>,
}

impl Canceller {
    pub(crate) fn cancel(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::Release);
        if let Some(shared) = self.shared.upgrade() {
            shared.watch.cancel(&self.flag);
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Ends what the launcher keeps beside the workers, every worker being stopped, and lets go
/// of the values the hooks name: no worker starts again.
fn close_launcher(shared: &Inner) {
    shared.launch.close();
    shared.spec.hook_values.release();
}

/// Starts one of the pool's threads. Its writes to worker pipes never raise `SIGPIPE`.
fn spawn_thread(
    name: String,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            crate::transport::block_sigpipe_on_this_thread();
            body()
        })
        .map_err(|e| Error::spawn_io(format!("cannot start a pool thread: {e}"), e))
}

/// Queues a job and wakes the driver of the idle worker the placement rule picks, if one is
/// idle: one job, one wake-up. Busy drivers come back to the queue by themselves.
fn enqueue(shared: &Inner, mut st: MutexGuard<'_, State>, job: Job) {
    st.queue.push_back(job);
    let summoned = summon(shared, &mut st);
    drop(st);
    if let Some(wake) = summoned {
        wake.run(shared);
    }
}

/// What a thread does for a slot once it has unlocked the state.
enum Wake {
    /// Wake the slot's driver thread.
    Ring(usize),
    /// Start this job on this evented worker, taken from its slot.
    Start(usize, Box<Conn>, Job),
    /// Refill this evented slot (retiring the recycled worker first), or retire it when its
    /// worker is not wanted any more.
    Refill(usize, Option<Box<Conn>>, bool),
}

impl Wake {
    fn run(self, shared: &Inner) {
        match self {
            Wake::Ring(i) => shared.ring(i),
            Wake::Start(i, conn, job) => events::start(shared, i, conn, job),
            Wake::Refill(i, recycled, wanted) => events::refill(shared, i, recycled, wanted),
        }
    }
}

/// Takes the idle worker the placement rule picks for the next queued job: its driver
/// thread is to be woken, or, for an evented worker, the job is taken for it here.
fn summon(shared: &Inner, st: &mut State) -> Option<Wake> {
    let i = shared.summon(st)?;
    if !shared.is_evented(i) {
        return Some(Wake::Ring(i));
    }
    let wake = take_for(st, i);
    if wake.is_none() && matches!(st.slot(i), Slot::Idle(_)) {
        // Nothing for it after all: idle for the next job.
        st.idle.push(i);
    }
    wake
}

/// What evented slot `i` is to do now, taken under the lock: its worker starts the next
/// queued job, or its slot is refilled.
fn take_for(st: &mut State, i: usize) -> Option<Wake> {
    let wanted = st.phase == Phase::Running || !st.queue.is_empty();
    match st.slot(i) {
        Slot::Idle(_) => {
            let job = st.queue.pop_front()?;
            match st.put(i, Slot::Busy) {
                Slot::Idle(conn) => Some(Wake::Start(i, conn, job)),
                _ => unreachable!("slot {i} was idle"),
            }
        }
        Slot::Vacant => {
            st.put(i, Slot::Busy);
            Some(Wake::Refill(i, None, wanted))
        }
        Slot::Recycle(_) => match st.put(i, Slot::Busy) {
            Slot::Recycle(conn) => Some(Wake::Refill(i, Some(conn), wanted)),
            _ => unreachable!("slot {i} was to be recycled"),
        },
        _ => None,
    }
}

/// Why the pool cannot take a job now, if it cannot.
fn refusal(shared: &Inner, st: &State) -> Option<Error> {
    match st.phase {
        Phase::NotStarted => Some(Error::NotStarted),
        Phase::Joining | Phase::Closed => Some(Error::Closed),
        Phase::Running if !st.any_alive() => Some(shared.no_worker_error()),
        Phase::Running => None,
    }
}

/// Puts a slot back after a thread drove it, and wakes whoever needs to know: its own driver
/// when it has work to take or a worker to replace; every driver only when the pool stops, or
/// its last worker went, or a joining pool's last job ended.
fn put_back(shared: &Inner, i: usize, back: Slot) {
    let mut st = shared.state();
    let closed = st.phase == Phase::Closed;
    // A slot whose host retires is neither refilled nor recycled: its worker, if it has one,
    // waits idle (out of the idle set) for `retire_hosts` to end it.
    let retiring = st.is_retiring(i);
    let back = match back {
        Slot::Vacant if retiring => Slot::Retired,
        Slot::Recycle(conn) if retiring => Slot::Idle(conn),
        other => other,
    };
    let vacated = matches!(back, Slot::Vacant | Slot::Recycle(_));
    let dropped = match back {
        Slot::Idle(conn) | Slot::Recycle(conn) if closed => {
            st.put(i, Slot::Retired);
            Some(conn)
        }
        Slot::Vacant if closed => {
            st.put(i, Slot::Retired);
            None
        }
        other => {
            st.put(i, other);
            None
        }
    };
    let orphaned: Vec<Job> = if !st.any_alive() {
        st.queue.drain(..).collect()
    } else {
        Vec::new()
    };
    let everyone = closed
        || !orphaned.is_empty()
        || (st.phase == Phase::Joining && !st.any_busy() && st.queue.is_empty());
    let takes = matches!(st.slot(i), Slot::Idle(_)) && !st.queue.is_empty() && !retiring;
    let own = vacated || takes;
    let mut wakes = Vec::new();
    if own && shared.is_evented(i) {
        // Its next job is taken (or its refill begun) here: no thread waits to be woken.
        wakes.extend(take_for(&mut st, i));
    } else if own {
        // Its driver takes the work (or refills the slot); it is not idle for others.
        st.idle.remove(i);
        if !everyone {
            wakes.push(Wake::Ring(i));
        }
    }
    // Jobs waiting while other workers sleep idle (put back by a failed worker's recovery,
    // say): wake as many of those as there are jobs beyond what this slot takes.
    let waiting = if shared.is_evented(i) {
        st.queue.len()
    } else {
        st.queue.len().saturating_sub(usize::from(takes))
    };
    if !everyone {
        for _ in 0..waiting.min(st.idle.len()) {
            wakes.extend(summon(shared, &mut st));
        }
    }
    let stopping = st.phase != Phase::Running;
    drop(st);
    if everyone {
        shared.ring_all();
    }
    if stopping || retiring {
        shared.settled.notify_all();
    }
    for wake in wakes {
        wake.run(shared);
    }
    if let Some(conn) = dropped {
        shared.watch.unregister(i);
        drop(conn);
    }
    if !orphaned.is_empty() {
        let error = shared.no_worker_error();
        for job in orphaned {
            job.deliver.send(Err(error.clone()));
        }
    }
}

/// Puts a worker that started in a running pool (its host joined, or came back) in slot `i`,
/// where it takes queued work at once, as a slot put back does, and records `event`.
fn take_in(shared: &Inner, i: usize, conn: Conn, event: crate::insights::HostEvent) {
    register(shared, i, &conn);
    put_back(shared, i, Slot::Idle(Box::new(conn)));
    shared.host_event(i, event);
}

/// The first pause before a lost host is tried again, and the longest.
const REJOIN_FIRST: Duration = Duration::from_secs(1);
const REJOIN_MAX: Duration = Duration::from_secs(60);

/// Tries the dead remote slots again (their host was lost and could not be started again),
/// with a pause that doubles while they stay dead, until the pool stops running.
fn rejoin(shared: &Inner) {
    let mut pause = REJOIN_FIRST;
    loop {
        let dead: Vec<usize> = {
            let mut st = shared.state();
            if st.phase != Phase::Running {
                return;
            }
            st = crate::sync::wait_timeout(&shared.settled, st, pause);
            if st.phase != Phase::Running {
                return;
            }
            let dead: Vec<usize> = (0..st.slots().len())
                .filter(|&i| {
                    shared.is_evented(i) && matches!(st.slot(i), Slot::Dead) && !st.is_retiring(i)
                })
                .collect();
            // Held while they start, so that nothing else touches them.
            for &i in &dead {
                st.put(i, Slot::Busy);
            }
            dead
        };
        if dead.is_empty() {
            pause = REJOIN_FIRST;
            continue;
        }
        shared.launch.revive();
        let mut back = 0;
        for (i, conn) in lifecycle::start_slots(shared, &dead) {
            match conn {
                Ok(conn) => {
                    take_in(shared, i, conn, crate::insights::HostEvent::Back);
                    back += 1;
                }
                Err(e) => {
                    tracing::debug!(pool = %shared.spec.pool, worker = i, error = &e as &dyn std::error::Error, "a lost host's worker did not start yet");
                    put_back(shared, i, Slot::Dead);
                }
            }
        }
        if back > 0 {
            tracing::info!(pool = %shared.spec.pool, workers = back, "workers of a lost host rejoined");
            pause = REJOIN_FIRST;
        } else {
            pause = pause.saturating_mul(2).min(REJOIN_MAX);
        }
    }
}

/// The loop of slot `i`'s driver thread.
fn drive(shared: &Inner, i: usize) {
    let _span =
        tracing::debug_span!("ppool_worker", pool = %shared.spec.pool, worker = i).entered();
    let mut st = shared.state();
    loop {
        if st.phase == Phase::Closed {
            break;
        }
        if matches!(st.slot(i), Slot::Vacant | Slot::Recycle(_)) {
            let slot = st.put(i, Slot::Busy);
            // While joining with nothing left to do, a replacement would only be stopped.
            let wanted = st.phase == Phase::Running || !st.queue.is_empty();
            drop(st);
            if let Slot::Recycle(conn) = slot {
                // Still registered while its exit hook runs: `shutdown` kills it.
                retire(shared, i, *conn);
                shared.watch.unregister(i);
            }
            let back = if wanted {
                replace(shared, i)
            } else {
                Slot::Retired
            };
            put_back(shared, i, back);
            st = shared.state();
            continue;
        }
        if matches!(st.slot(i), Slot::Dead | Slot::Retired) {
            if st.phase == Phase::Joining && st.queue.is_empty() {
                break;
            }
            if !st.any_alive() {
                break;
            }
        }
        if matches!(st.slot(i), Slot::Idle(_)) {
            if let Some(job) = st.queue.pop_front() {
                let Slot::Idle(conn) = st.put(i, Slot::Busy) else {
                    unreachable!("slot {i} was idle")
                };
                drop(st);
                let back = run_caught(shared, i, conn, job, Driver::Thread);
                put_back(shared, i, back);
                st = shared.state();
                continue;
            }
            if st.phase == Phase::Joining && !st.any_busy() {
                let Slot::Idle(conn) = st.put(i, Slot::Retired) else {
                    unreachable!("slot {i} was idle")
                };
                drop(st);
                // Still registered while its exit hook runs: `shutdown` kills it.
                retire(shared, i, *conn);
                shared.watch.unregister(i);
                return;
            }
            // Summoned for a job another took: idle for the next one again.
            st.idle.push(i);
        }
        st = shared.sleep(i, st);
    }
}
