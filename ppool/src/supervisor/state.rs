//! The supervisor's state: its settings, its slots and queue, and what its threads share.

use super::events::Evented;
use super::idle::IdleSet;
use super::job::Job;
use crate::error::Error;
use crate::insights::Stats;
use crate::share::Stored;
use crate::supervisor::watchdog::Watch;
use crate::sync::lock;
use crate::transport::{Launch, Link, Peer};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// How a pool runs, fixed when it is built.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) n_jobs: usize,
    pub(crate) debug: bool,
    pub(crate) max_tasks_per_worker: Option<u64>,
    /// `build()` succeeds once this many workers are ready.
    pub(crate) min_workers: Option<usize>,
    /// How long a remote host may stay silent (for the hosts that join later).
    pub(crate) host_timeout: Duration,
    /// Lost remote hosts are tried again in the background.
    pub(crate) rejoin: bool,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) retries: u32,
}

/// What a pool's workers are told in their greeting: what they serve, and what they run
/// before their first task and at their end.
#[derive(Debug)]
pub(crate) struct WorkerSpec {
    pub(crate) pool: String,
    pub(crate) entry: &'static str,
    pub(crate) max_frame: usize,
    pub(crate) initializer: Option<(&'static str, Vec<u8>)>,
    pub(crate) on_exit: Option<(&'static str, Vec<u8>)>,
    /// The shared values that the arguments of `initializer` and `on_exit` name.
    pub(crate) hook_values: HookValues,
    /// How long the initializer may run.
    pub(crate) init_timeout: Duration,
    /// How long the worker-exit hook may run.
    pub(crate) exit_timeout: Duration,
    /// A number no other process can guess, echoed in READY.
    pub(crate) token: u64,
    /// The most verbose `tracing` level to forward from entries (0: none).
    pub(crate) trace: u8,
}

/// The shared values that a pool's initializer and exit hook name, held from `build` until
/// the pool is closed: as long as a worker (a replacement, one of a host that joins or comes
/// back) may start, or run its exit hook. The launcher sends a remote host those it lacks
/// before it starts workers there (see `transport::compose`).
#[derive(Debug, Default)]
pub(crate) struct HookValues(Mutex<Vec<Arc<Stored>>>);

impl HookValues {
    /// Holds `values`.
    pub(crate) fn new(values: Vec<Arc<Stored>>) -> Self {
        HookValues(Mutex::new(values))
    }

    /// Lets them go, once the pool is closed and no worker can start again: each is freed
    /// unless a handle or a job still names it.
    pub(crate) fn release(&self) {
        let values = std::mem::take(&mut *lock(&self.0));
        // Dropped unlocked: the last one of a value calls the pool's release hook.
        drop(values);
    }
}

/// A worker held by a slot: how it is reached, and what it has done.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) link: Box<dyn Link>,
    pub(crate) peer: Arc<dyn Peer>,
    /// Tasks this worker has finished.
    pub(crate) tasks_done: u64,
    /// Where its host's reader hands its messages, when it is a remote worker (see
    /// `events`); `None` for a worker read by the thread that drives it.
    pub(crate) events: Option<Arc<Evented>>,
}

pub(crate) enum Slot {
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

pub(crate) struct State {
    pub(crate) phase: Phase,
    pub(crate) queue: VecDeque<Job>,
    /// Changed only through [`State::put`], which keeps the counts and the idle set.
    slots: Vec<Slot>,
    /// The idle workers no driver was summoned for (see `idle`).
    pub(crate) idle: IdleSet,
    /// Slots that have, or will soon have, a worker: `Idle`, `Busy`, `Vacant`, `Recycle`.
    alive: usize,
    /// `Busy` slots.
    busy: usize,
    /// Slots whose host retires: they take no new work, and their workers end once idle.
    retiring: Vec<bool>,
}

impl State {
    /// Whether any slot has, or will soon have, a worker. O(1).
    pub(crate) fn any_alive(&self) -> bool {
        self.alive > 0
    }

    /// Whether a thread drives a worker. O(1).
    pub(crate) fn any_busy(&self) -> bool {
        self.busy > 0
    }

    /// Slot `i`.
    pub(crate) fn slot(&self, i: usize) -> &Slot {
        &self.slots[i]
    }

    /// Every slot, in order.
    pub(crate) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// `n` more slots, dead until their workers start: those of hosts that joined.
    pub(crate) fn grow(&mut self, n: usize) {
        self.slots.extend((0..n).map(|_| Slot::Dead));
        self.retiring.extend(std::iter::repeat_n(false, n));
        self.idle.grow(n);
    }

    /// Whether slot `i`'s host retires.
    pub(crate) fn is_retiring(&self, i: usize) -> bool {
        self.retiring.get(i).copied().unwrap_or(false)
    }

    /// Slot `i`'s host retires: its worker takes no new work (it leaves the idle set).
    pub(crate) fn retire(&mut self, i: usize) {
        if let Some(r) = self.retiring.get_mut(i) {
            *r = true;
        }
        self.idle.remove(i);
    }

    /// Puts `slot` in slot `i` and returns what it held, keeping the counts, and the idle set:
    /// a worker that becomes idle joins it, one that stops being idle leaves it.
    pub(crate) fn put(&mut self, i: usize, slot: Slot) -> Slot {
        let old = std::mem::replace(&mut self.slots[i], slot);
        let (alive, busy) = (old.alive(), matches!(old, Slot::Busy));
        self.alive -= usize::from(alive);
        self.busy -= usize::from(busy);
        if matches!(old, Slot::Idle(_)) {
            self.idle.remove(i);
        }
        let new = &self.slots[i];
        self.alive += usize::from(new.alive());
        self.busy += usize::from(matches!(new, Slot::Busy));
        if matches!(new, Slot::Idle(_)) && !self.is_retiring(i) {
            self.idle.push(i);
        }
        old
    }
}

impl Slot {
    fn alive(&self) -> bool {
        matches!(
            self,
            Slot::Idle(_) | Slot::Busy | Slot::Vacant | Slot::Recycle(_)
        )
    }
}

pub(crate) struct Inner {
    /// This very value, for the sinks of remote workers (see `events`).
    pub(crate) me: Weak<Inner>,
    pub(crate) spec: WorkerSpec,
    pub(crate) settings: Settings,
    pub(crate) launch: Box<dyn Launch>,
    /// A timeout or memory limit is set, so the watchdog runs and jobs are armed.
    pub(crate) watchdog: bool,
    pub(crate) state: Mutex<State>,
    /// One bell per slot, that its driver thread sleeps on (see `idle`).
    bells: Vec<Condvar>,
    /// Which slots are driven by events (remote workers): they have no driver thread.
    pub(crate) evented: Vec<bool>,
    /// Rung when a slot is put back while the pool is not running: `join` and `shutdown`
    /// wait on it for the evented slots to settle.
    pub(crate) settled: Condvar,
    /// The short-lived threads that refill evented slots.
    pub(crate) transient: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) watch: Watch,
    last_error: Mutex<Option<Error>>,
    next_job: AtomicU64,
    /// Mean time a worker is busy with one job, in nanoseconds (0: nothing seen yet).
    job_nanos: AtomicU64,
    pub(crate) stats: Stats,
    /// Bodies of the EXITED frames of retired workers.
    exit_results: Mutex<Vec<Vec<u8>>>,
    /// The hosts whose workers could not start (under `min_workers`), and why.
    pub(crate) host_failures: Mutex<Vec<(String, String)>>,
    /// What happened to each host, in order (see `insights::HostEvent`).
    pub(crate) host_history: Mutex<Vec<(String, crate::insights::HostChange)>>,
}

impl Inner {
    pub(crate) fn new(
        me: Weak<Inner>,
        spec: WorkerSpec,
        settings: Settings,
        launch: Box<dyn Launch>,
    ) -> Self {
        let slots = settings.n_jobs;
        Inner {
            me,
            evented: (0..slots)
                .map(|i| !settings.debug && !launch.is_local(i))
                .collect(),
            settled: Condvar::new(),
            transient: Mutex::new(Vec::new()),
            watch: Watch::new(slots, settings.memory_limit),
            state: Mutex::new(State {
                phase: Phase::NotStarted,
                queue: VecDeque::new(),
                slots: (0..slots).map(|_| Slot::Dead).collect(),
                idle: IdleSet::new((0..slots).map(|i| launch.is_local(i)).collect()),
                alive: 0,
                busy: 0,
                retiring: vec![false; slots],
            }),
            bells: (0..slots).map(|_| Condvar::new()).collect(),
            last_error: Mutex::new(None),
            next_job: AtomicU64::new(1),
            job_nanos: AtomicU64::new(0),
            stats: Stats::new(slots),
            watchdog: settings.task_timeout.is_some() || settings.memory_limit.is_some(),
            exit_results: Mutex::new(Vec::new()),
            host_failures: Mutex::new(Vec::new()),
            host_history: Mutex::new(Vec::new()),
            spec,
            settings,
            launch,
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Slot `i`'s driver thread sleeps until rung: `st` is released meanwhile.
    pub(crate) fn sleep<'a>(&self, i: usize, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        crate::sync::wait(&self.bells[i], st)
    }

    /// Whether slot `i` is driven by events (a remote worker): those of hosts that joined a
    /// running pool are.
    pub(crate) fn is_evented(&self, i: usize) -> bool {
        self.evented.get(i).copied().unwrap_or(true)
    }

    /// Wakes slot `i`'s driver thread.
    pub(crate) fn ring(&self, i: usize) {
        self.bells[i].notify_one();
    }

    /// Wakes every driver thread: the pool's phase changed, or its last worker went.
    pub(crate) fn ring_all(&self) {
        for bell in &self.bells {
            bell.notify_one();
        }
    }

    /// Takes the idle worker the next job goes to out of the idle set, if there is one idle;
    /// ring its bell once the state is unlocked, so that its driver does not wake into a
    /// lock still held.
    pub(crate) fn summon(&self, st: &mut State) -> Option<usize> {
        st.idle.pop()
    }

    /// Records that `event` happened to the host of worker `i` (a remote one), unless it is
    /// what last happened to it (a lost host's workers each report the loss).
    pub(crate) fn host_event(&self, i: usize, event: crate::insights::HostEvent) {
        if !self.is_evented(i) {
            return;
        }
        self.host_event_of(self.launch.host(i), event);
    }

    /// [`host_event`](Self::host_event), for a host named.
    pub(crate) fn host_event_of(&self, host: String, event: crate::insights::HostEvent) {
        let mut history = lock(&self.host_history);
        let same = history
            .iter()
            .rev()
            .find(|(h, _)| *h == host)
            .is_some_and(|(_, last)| {
                std::mem::discriminant(&last.event) == std::mem::discriminant(&event)
            });
        if !same {
            let at = self.stats.uptime();
            history.push((host, crate::insights::HostChange { at, event }));
        }
    }

    /// The last worker failure seen.
    pub(crate) fn last_error(&self) -> Option<Error> {
        lock(&self.last_error).clone()
    }

    pub(crate) fn set_last_error(&self, error: Error) {
        *lock(&self.last_error) = Some(error);
    }

    /// The error for jobs that no worker is left to run.
    pub(crate) fn no_worker_error(&self) -> Error {
        self.last_error()
            .unwrap_or_else(|| Error::spawn("no worker of the pool is running"))
    }

    /// A fresh job id.
    pub(crate) fn next_job_id(&self) -> u64 {
        self.next_job.fetch_add(1, Ordering::Relaxed)
    }

    /// The mean busy time of a job, in nanoseconds (0: nothing seen yet).
    pub(crate) fn job_nanos(&self) -> u64 {
        self.job_nanos.load(Ordering::Relaxed)
    }

    /// Learns from a job that kept its worker busy `busy_nanos`.
    pub(crate) fn observe_job(&self, busy_nanos: u64) {
        let old = self.job_nanos.load(Ordering::Relaxed);
        let new = if old == 0 {
            busy_nanos
        } else {
            (old * 7 + busy_nanos) / 8
        };
        self.job_nanos.store(new.max(1), Ordering::Relaxed);
    }

    pub(crate) fn push_exit_result(&self, body: Vec<u8>) {
        lock(&self.exit_results).push(body);
    }

    pub(crate) fn exit_results(&self) -> Vec<Vec<u8>> {
        lock(&self.exit_results).clone()
    }
}
