//! The supervisor: a queue of jobs, one slot per worker, and the threads that move jobs to
//! workers and results back. It handles bytes (finished frames), never user types; the typed
//! layer hands it jobs with a `deliver` closure that decodes the results.
//!
//! A job is driven by whichever thread holds its worker: the worker's own driver thread for
//! queued jobs, or the calling thread itself for a blocking `call` when a worker is idle, so
//! that a round trip costs what the pipe costs.

use crate::error::Error;
use crate::insights::{Insights, Stats};
use crate::local::Local;
use crate::process::{Spec, WorkerProc};
use crate::protocol::{self, FrameError, Results};
use crate::watchdog::{Verdict, Watch};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a job's `deliver` receives: the results frame and the worker index, or the error that
/// ended every task of the job.
pub(crate) type Delivery<'a> = Result<(Results<'a>, usize), Error>;

/// Called once with the job's outcome, on whichever thread drove it.
pub(crate) type Deliver = Box<dyn FnOnce(Delivery<'_>) + Send>;

/// Splits a job of several tasks, given its TASKS frame, into one `(frame, deliver)` per task,
/// in order; used when its worker failed under it and the culprit must be found.
pub(crate) type Split = Box<dyn FnOnce(&[u8]) -> Vec<(Vec<u8>, Deliver)> + Send>;

/// How many times a job may find its worker dead before it was sent, without that counting
/// against it.
const MAX_BOUNCES: u32 = 3;

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

/// Jobs are sent ahead only while they take less than this.
const PIPELINE_BELOW_NANOS: u64 = 1_000_000;
/// Jobs this short are sent ahead many at a time, in one write.
const TINY_JOB_NANOS: u64 = 50_000;
/// How many tiny jobs one worker may hold.
const TINY_PIPELINE: usize = 64;

/// A worker's channel: a process, or (in debug mode) this process.
#[derive(Debug)]
pub(crate) enum Conn {
    Proc(WorkerProc),
    Local(Local),
}

impl Conn {
    fn send(&mut self, frames: &[&[u8]]) -> Result<(), FrameError> {
        match self {
            Conn::Proc(p) => p.send(frames).map_err(FrameError::Io),
            Conn::Local(l) => frames.iter().try_for_each(|f| l.send(f)),
        }
    }

    fn recv(&mut self) -> Result<(), FrameError> {
        match self {
            Conn::Proc(p) => p.recv(),
            Conn::Local(l) => l.recv(),
        }
    }

    /// Spins up to `limit` for the worker's answer before a read that would sleep.
    fn spin(&self, limit: Duration) {
        if let Conn::Proc(p) = self {
            p.spin_until_readable(limit);
        }
    }

    /// The body of the frame last received.
    fn body(&self) -> &[u8] {
        match self {
            Conn::Proc(p) => p.body(),
            Conn::Local(l) => l.body(),
        }
    }

    /// The most bytes of jobs that may wait unanswered in the channel: less than the pipe
    /// holds, so that sending never blocks while the worker is blocked sending results.
    fn budget(&self) -> usize {
        match self {
            Conn::Proc(p) => p.capacity * 3 / 4,
            Conn::Local(_) => usize::MAX,
        }
    }

    fn tasks_done(&mut self) -> &mut u64 {
        match self {
            Conn::Proc(p) => &mut p.tasks_done,
            Conn::Local(l) => &mut l.tasks_done,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Conn::Proc(p) => p.pid,
            Conn::Local(_) => std::process::id(),
        }
    }
}

enum Slot {
    /// Waiting for work.
    Idle(Box<Conn>),
    /// Held by a thread that drives it.
    Busy,
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
    fn any_alive(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s, Slot::Idle(_) | Slot::Busy))
    }

    fn any_busy(&self) -> bool {
        self.slots.iter().any(|s| matches!(s, Slot::Busy))
    }
}

struct Shared {
    spec: Spec,
    settings: Settings,
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
    threads: Mutex<Vec<JoinHandle<()>>>,
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
            exit_results: Mutex::new(Vec::new()),
            spec,
            settings,
        };
        Core {
            shared: Arc::new(shared),
            threads: Mutex::new(Vec::new()),
        }
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

        let watchdog =
            shared.settings.task_timeout.is_some() || shared.settings.memory_limit.is_some();
        let mut started = Vec::new();
        for i in 0..shared.settings.n_jobs {
            let s = Arc::clone(shared);
            started.push(spawn_thread(
                format!("{}-{i}", shared.spec.pool),
                move || drive(&s, i),
            ));
        }
        if watchdog {
            let s = Arc::clone(shared);
            started.push(spawn_thread(
                format!("{}-watchdog", shared.spec.pool),
                move || s.watch.run(),
            ));
        }
        let mut threads = lock(&self.threads);
        let mut failed = None;
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
        let shared = &self.shared;
        let mut st = lock(&shared.state);
        if let Some(error) = refusal(shared, &st) {
            drop(st);
            (job.deliver)(Err(error));
            return;
        }
        st.queue.push_back(job);
        // Busy drivers come back to the queue by themselves; only idle ones need waking.
        let idle = st.slots.iter().any(|s| matches!(s, Slot::Idle(_)));
        drop(st);
        if idle {
            shared.wake.notify_all();
        }
    }

    /// Runs a job on an idle worker from this thread when there is one and nothing is queued
    /// before it; else queues it. The job has been delivered, or is queued, on return.
    pub(crate) fn run_or_submit(&self, job: Job) {
        let shared = &self.shared;
        let mut st = lock(&shared.state);
        if let Some(error) = refusal(shared, &st) {
            drop(st);
            (job.deliver)(Err(error));
            return;
        }
        let idle = if shared.settings.debug || !st.queue.is_empty() {
            None
        } else {
            st.slots.iter().position(|s| matches!(s, Slot::Idle(_)))
        };
        let Some(i) = idle else {
            st.queue.push_back(job);
            drop(st);
            shared.wake.notify_all();
            return;
        };
        let Slot::Idle(conn) = std::mem::replace(&mut st.slots[i], Slot::Busy) else {
            unreachable!("slot {i} was idle")
        };
        drop(st);
        let back = run(shared, i, conn, job, false);
        put_back(shared, i, back);
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
                shared.watch.stop();
                self.join_threads();
                return;
            }
            st.phase = Phase::Closed;
            let queued: Vec<Job> = st.queue.drain(..).collect();
            let mut idle = Vec::new();
            for (i, slot) in st.slots.iter_mut().enumerate() {
                if matches!(slot, Slot::Idle(_)) {
                    if let Slot::Idle(conn) = std::mem::replace(slot, Slot::Retired) {
                        idle.push((i, conn));
                    }
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
            (job.deliver)(Err(Error::Closed));
        }
        shared.wake.notify_all();
        shared.watch.stop();
        self.join_threads();
    }

    /// Joins the pool's threads, except the calling one (a callback may shut the pool down).
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
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts one of the pool's threads.
fn spawn_thread(
    name: String,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name)
        .spawn(body)
        .map_err(|e| Error::spawn(format!("cannot start a pool thread: {e}")))
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

/// Lets the watchdog and `shutdown` see slot `i`'s process (never this process itself).
fn register(shared: &Shared, i: usize, conn: &Conn) {
    if let Conn::Proc(p) = conn {
        shared.watch.register(i, p.pid);
    }
}

/// Starts every worker at once, then waits for each to be ready.
fn start_all(shared: &Shared) -> Result<Vec<Conn>, Error> {
    let n = shared.settings.n_jobs;
    if shared.settings.debug {
        return (0..n)
            .map(|i| Local::start(&shared.spec, i).map(Conn::Local))
            .collect();
    }
    let mut procs = Vec::with_capacity(n);
    for i in 0..n {
        procs.push(WorkerProc::spawn(&shared.spec, i)?);
    }
    for p in &mut procs {
        p.ready(&shared.spec)?;
        tracing::debug!(pool = %shared.spec.pool, worker = p.index, pid = p.pid, "worker started");
    }
    Ok(procs.into_iter().map(Conn::Proc).collect())
}

/// Starts a replacement for slot `i`.
fn restart(shared: &Shared, i: usize) -> Result<Conn, Error> {
    if shared.settings.debug {
        return Local::start(&shared.spec, i).map(Conn::Local);
    }
    let mut p = WorkerProc::spawn(&shared.spec, i)?;
    p.ready(&shared.spec)?;
    tracing::info!(pool = %shared.spec.pool, worker = i, pid = p.pid, "worker replaced");
    Ok(Conn::Proc(p))
}

/// Puts a slot back after a thread drove it, and wakes whoever waits for work or for the end.
fn put_back(shared: &Shared, i: usize, back: Slot) {
    let mut st = lock(&shared.state);
    let closed = st.phase == Phase::Closed;
    let dropped = match back {
        Slot::Idle(conn) if closed => {
            st.slots[i] = Slot::Retired;
            Some(conn)
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
    let wake = !st.queue.is_empty() || st.phase != Phase::Running || !orphaned.is_empty();
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
            (job.deliver)(Err(error.clone()));
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

/// A job written to a worker, waiting for its results.
struct Sent {
    job: Job,
    id: u64,
}

/// Drives worker `i`: sends `first` (and, with `top_up`, more queued jobs ahead of need),
/// delivers results as they come, and handles the worker's failure. Returns what the slot
/// holds afterwards.
fn run(shared: &Shared, i: usize, mut conn: Box<Conn>, first: Job, top_up: bool) -> Slot {
    let mut sent: VecDeque<Sent> = VecDeque::new();
    let mut sent_bytes = 0usize;
    let mut sent_tasks = 0u64;
    let mut next = Some(first);
    loop {
        // Take what we hold and top up from the queue while the worker has room, then send
        // it all in one write.
        let depth = pipeline_depth(shared);
        let unsent = sent.len();
        while let Some(mut job) = next.take() {
            if job.is_cancelled() {
                (job.deliver)(Err(Error::Closed));
            } else if job.frame.len() - 4 > shared.spec.max_frame {
                let message = format!(
                    "a job of {} bytes is larger than the pool's max_frame_size of {} bytes",
                    job.frame.len() - 4,
                    shared.spec.max_frame
                );
                (job.deliver)(Err(Error::Protocol { worker: i, message }));
            } else {
                let id = shared.next_job.fetch_add(1, Ordering::Relaxed);
                protocol::stamp_job(&mut job.frame, id);
                let flags = if !top_up && !spin_limit(shared).is_zero() {
                    protocol::FLAG_SPIN
                } else {
                    0
                };
                protocol::set_flags(&mut job.frame, flags);
                sent_bytes += job.frame.len();
                sent_tasks += u64::from(job.count);
                if sent.is_empty() {
                    arm(shared, i, &job);
                }
                sent.push_back(Sent { job, id });
            }
            if top_up && sent.len() < depth {
                next = take_more(shared, &mut conn, sent_bytes, sent_tasks);
            }
        }
        let frames: Vec<&[u8]> = sent
            .range(unsent..)
            .map(|s| s.job.frame.as_slice())
            .collect();
        let written = if frames.is_empty() {
            Ok(())
        } else {
            conn.send(&frames)
        };
        drop(frames);
        if let Err(e) = written {
            return fail(shared, i, conn, sent, e);
        }
        let Some(head) = sent.front() else { break };
        let (id, count) = (head.id, head.job.count);
        if !top_up {
            // A caller drives this worker and waits: spin for the answer if it is due soon.
            conn.spin(spin_limit(shared));
        }
        if let Err(e) = conn.recv() {
            return fail(shared, i, conn, sent, e);
        }
        let results = match Results::parse(conn.body()) {
            Ok(r) if r.job == id && r.count == count => r,
            Ok(r) => {
                let e = FrameError::Malformed(format!(
                    "results for job {} ({} tasks) while job {id} ({count} tasks) was running",
                    r.job, r.count
                ));
                return fail(shared, i, conn, sent, e);
            }
            Err(e) => return fail(shared, i, conn, sent, e),
        };
        let Some(done) = sent.pop_front() else { break };
        shared.watch.disarm(i);
        if let Some(head) = sent.front() {
            arm(shared, i, &head.job);
        }
        sent_bytes -= done.job.frame.len();
        sent_tasks -= u64::from(done.job.count);
        shared
            .stats
            .record(i, count, results.busy_nanos, results.max_task_nanos);
        let old = shared.job_nanos.load(Ordering::Relaxed);
        let new = if old == 0 {
            results.busy_nanos
        } else {
            (old * 7 + results.busy_nanos) / 8
        };
        shared.job_nanos.store(new.max(1), Ordering::Relaxed);
        (done.job.deliver)(Ok((results, i)));
        *conn.tasks_done() += u64::from(count);
        if top_up && sent.len() < pipeline_depth(shared) {
            next = take_more(shared, &mut conn, sent_bytes, sent_tasks);
        }
    }
    recycle_if_due(shared, i, conn)
}

/// The next queued job for a worker that already holds `sent_bytes` of jobs, if it has room.
fn take_more(shared: &Shared, conn: &mut Conn, sent_bytes: usize, sent_tasks: u64) -> Option<Job> {
    // Sending ahead only pays for short jobs; behind a long one, a job would wait for nothing
    // while another worker is free.
    let job_nanos = shared.job_nanos.load(Ordering::Relaxed);
    if job_nanos == 0 || job_nanos > PIPELINE_BELOW_NANOS {
        return None;
    }
    let mut st = lock(&shared.state);
    if st.phase == Phase::Closed {
        return None;
    }
    let job = st.queue.front()?;
    if sent_bytes > 0 && sent_bytes + job.frame.len() > conn.budget() {
        return None;
    }
    if let Some(max) = shared.settings.max_tasks_per_worker {
        if *conn.tasks_done() + sent_tasks + u64::from(job.count) > max && sent_tasks > 0 {
            return None;
        }
        if *conn.tasks_done() + sent_tasks >= max {
            return None;
        }
    }
    st.queue.pop_front()
}

/// How long to spin for a worker's answer: only when jobs are short, so the answer is due
/// within the spin, and never on a single CPU, where the spin would keep the worker from
/// answering.
fn spin_limit(shared: &Shared) -> Duration {
    const LIMIT: Duration = Duration::from_micros(50);
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cpus = *CPUS.get_or_init(crate::config::cpus);
    match shared.job_nanos.load(Ordering::Relaxed) {
        n if cpus > 1 && n > 0 && n < 30_000 => LIMIT,
        _ => Duration::ZERO,
    }
}

/// How many jobs one worker may hold: many tiny ones, or a couple of short ones.
fn pipeline_depth(shared: &Shared) -> usize {
    if shared.settings.task_timeout.is_some() {
        // A job sent ahead would wait behind the running one and eat into its own deadline.
        return 1;
    }
    match shared.job_nanos.load(Ordering::Relaxed) {
        n if n > 0 && n < TINY_JOB_NANOS => TINY_PIPELINE.max(shared.settings.pipeline),
        _ => shared.settings.pipeline,
    }
}

fn arm(shared: &Shared, i: usize, job: &Job) {
    if let Some(timeout) = shared.settings.task_timeout {
        let deadline = Instant::now() + timeout.saturating_mul(job.count.max(1));
        shared.watch.arm(i, Some(deadline));
    } else if shared.settings.memory_limit.is_some() {
        shared.watch.arm(i, None);
    }
}

/// Replaces a worker that reached `max_tasks_per_worker`.
fn recycle_if_due(shared: &Shared, i: usize, mut conn: Box<Conn>) -> Slot {
    let Some(max) = shared.settings.max_tasks_per_worker else {
        return Slot::Idle(conn);
    };
    if *conn.tasks_done() < max {
        return Slot::Idle(conn);
    }
    shared.watch.unregister(i);
    retire(shared, i, *conn);
    replace(shared, i)
}

/// Stops a worker gracefully, keeping what its exit hook returned.
fn retire(shared: &Shared, i: usize, conn: Conn) {
    let Conn::Proc(p) = conn else { return };
    let pid = p.pid;
    if let Some(body) = p.retire(shared.spec.on_exit.is_some()) {
        lock(&shared.exit_results).push(body);
    }
    tracing::debug!(pool = %shared.spec.pool, worker = i, pid, "worker retired");
}

/// Starts a replacement in slot `i`, or marks it dead.
fn replace(shared: &Shared, i: usize) -> Slot {
    if lock(&shared.state).phase == Phase::Closed {
        return Slot::Retired;
    }
    shared.stats.restarted(i);
    match restart(shared, i) {
        Ok(conn) => {
            register(shared, i, &conn);
            Slot::Idle(Box::new(conn))
        }
        Err(e) => {
            tracing::error!(pool = %shared.spec.pool, worker = i, error = %e, "cannot replace worker");
            *lock(&shared.last_error) = Some(e);
            Slot::Dead
        }
    }
}

/// Worker `i` failed while it held `sent`: classify the failure, settle the jobs (the head
/// one was running; the others never started and go back to the queue), and replace it.
fn fail(
    shared: &Shared,
    i: usize,
    mut conn: Box<Conn>,
    mut sent: VecDeque<Sent>,
    cause: FrameError,
) -> Slot {
    let verdict = shared.watch.unregister(i);
    let pid = conn.pid();
    // Bytes of the jobs still in the pipe, unread by the worker: read before the pipe goes.
    let unread = match &*conn {
        Conn::Proc(p) => p.unread_task_bytes(),
        Conn::Local(_) => None,
    };
    let exit = match &mut *conn {
        Conn::Proc(p) => {
            p.kill();
            p.reap()
        }
        Conn::Local(_) => crate::error::ExitCause::Unknown,
    };
    drop(conn);
    let closed = lock(&shared.state).phase == Phase::Closed;
    let entry = shared.spec.entry.to_string();
    let error = if closed {
        Error::Closed
    } else {
        match (verdict, &cause) {
            (Some(Verdict::Timeout), _) => Error::Timeout {
                entry,
                worker: i,
                pid,
                timeout: shared.settings.task_timeout.unwrap_or_default(),
            },
            (Some(Verdict::Memory { rss }), _) => Error::MemoryLimit {
                entry,
                worker: i,
                pid,
                limit: shared.settings.memory_limit.unwrap_or_default(),
                rss,
            },
            (None, FrameError::Closed | FrameError::Io(_)) => Error::WorkerDied {
                entry,
                worker: i,
                pid,
                cause: exit,
            },
            (None, e @ (FrameError::TooLarge { .. } | FrameError::Malformed(_))) => {
                Error::Protocol {
                    worker: i,
                    message: e.to_string(),
                }
            }
        }
    };
    if !closed {
        shared.stats.failed(i);
        tracing::warn!(pool = %shared.spec.pool, worker = i, pid, error = %error, "worker failed");
        *lock(&shared.last_error) = Some(error.clone());
    }
    // The worker died before it read any of the jobs (it died while idle, and the write either
    // failed or still sits whole in the pipe): they never ran, so none is to blame.
    let sent_total: usize = sent.iter().map(|s| s.job.frame.len()).sum();
    let untouched = matches!(&cause, FrameError::Io(e) if e.kind() == std::io::ErrorKind::NotConnected)
        || (matches!(cause, FrameError::Closed | FrameError::Io(_))
            && unread.is_some_and(|n| n >= sent_total as u64));
    let mut settle: Vec<(Job, Error)> = Vec::new();
    let mut requeue: Vec<Job> = Vec::new();
    if let Some(head) = sent.pop_front() {
        let mut job = head.job;
        if closed {
            settle.push((job, error.clone()));
        } else if untouched && job.bounces < MAX_BOUNCES {
            job.bounces += 1;
            requeue.push(job);
        } else if job.count > 1 && job.split.is_some() {
            // Which of its tasks brought the worker down is unknown: run them one by one, so
            // that the culprit fails alone. Running them again is not a retry.
            let split = job.split.take().map(|split| split(&job.frame));
            match split {
                Some(pieces) if pieces.len() == job.count as usize => {
                    requeue.extend(pieces.into_iter().map(|(frame, deliver)| Job {
                        frame,
                        count: 1,
                        deliver,
                        cancelled: job.cancelled.clone(),
                        attempts: job.attempts,
                        bounces: 0,
                        split: None,
                    }));
                }
                _ => settle.push((job, error.clone())),
            }
        } else if matches!(error, Error::WorkerDied { .. })
            && job.attempts < shared.settings.retries
        {
            job.attempts += 1;
            requeue.push(job);
        } else {
            settle.push((job, error.clone()));
        }
    }
    requeue.extend(sent.into_iter().map(|s| s.job));
    if closed {
        settle.extend(requeue.drain(..).map(|j| (j, Error::Closed)));
    } else if !requeue.is_empty() {
        let mut st = lock(&shared.state);
        for job in requeue.into_iter().rev() {
            st.queue.push_front(job);
        }
    }
    for (job, error) in settle {
        (job.deliver)(Err(error));
    }
    if closed {
        Slot::Retired
    } else {
        replace(shared, i)
    }
}
