//! Driving one worker: send it jobs (several ahead when they are short, in one write), read
//! its results in order and deliver them, and, when it fails, apply `recovery`'s plan. A
//! panic while driving it (a bug) is caught: the worker is killed and the slot refilled.

use super::job::{Job, Sent};
use super::recovery::{self, Failed, Fate};
use super::state::{Conn, Inner, Phase, Slot};
use crate::error::Error;
use crate::protocol::{self, FrameError, Results, TasksHeader};
use crate::transport::{Incoming, Started};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Jobs sent ahead to one worker when they are short, so it never waits for the next.
const PIPELINE: usize = 2;

/// Jobs are sent ahead only while they take less than this.
const PIPELINE_BELOW_NANOS: u64 = 1_000_000;

/// Jobs this short are sent ahead many at a time, in one write.
const TINY_JOB_NANOS: u64 = 50_000;

/// How many tiny jobs one worker may hold.
const TINY_PIPELINE: usize = 64;

/// Who drives a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Driver {
    /// A caller of `call`, waiting for this one job: it spins for the answer when that is due
    /// soon, and sends nothing ahead.
    Caller,
    /// The slot's own thread, working through the queue: it sends short jobs ahead.
    Thread,
    /// The worker's host's reader, as each message comes (see `events`): it sends short jobs
    /// ahead, and never waits.
    Event,
}

/// [`run`], caught: should it panic (a bug in ppool), the worker it drove is killed and the
/// slot is left `Vacant`, for its driver thread to refill, so that the pool goes on with all
/// its workers instead of losing the slot (and whoever waits for it) for good. The jobs it
/// held end with `Error::Internal` as their deliveries are dropped.
pub(super) fn run_caught(
    shared: &Inner,
    i: usize,
    conn: Box<Conn>,
    first: Job,
    driver: Driver,
) -> Slot {
    caught(shared, i, || run(shared, i, conn, first, driver))
}

/// Runs `drive`, which drives worker `i` and returns what its slot then holds; should it
/// panic (a bug in ppool), kills the worker and returns `Vacant`.
pub(super) fn caught(shared: &Inner, i: usize, drive: impl FnOnce() -> Slot) -> Slot {
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(drive));
    let payload = match ran {
        Ok(slot) => return slot,
        Err(payload) => payload,
    };
    if let Some(peer) = shared.watch.peer(i) {
        peer.kill();
    }
    // The last reference to the process goes here: it is reaped.
    shared.watch.unregister(i);
    let error = Error::internal(format!(
        "the thread driving worker {i} panicked: {}",
        crate::error::panic_message(payload.as_ref())
    ));
    tracing::error!(pool = %shared.spec.pool, worker = i, error = &error as &dyn std::error::Error, "a pool thread failed; its worker is replaced");
    shared.stats.failed(i);
    shared.set_last_error(error);
    Slot::Vacant
}

/// Drives worker `i` from this thread: sends `first` (and, from the slot's thread, more
/// queued jobs ahead of need), delivers results as they come, and handles the worker's
/// failure. Returns what the slot holds afterwards.
fn run(shared: &Inner, i: usize, mut conn: Box<Conn>, first: Job, driver: Driver) -> Slot {
    let mut book = Book::new(driver, &conn, first);
    loop {
        book.send(shared, i, &mut conn);
        if book.is_empty() {
            return book.finish(shared, i, conn);
        }
        let spin = spin_limit(shared);
        if driver == Driver::Caller && !spin.is_zero() {
            // A caller drives this worker and waits: spin for the answer, as it is due soon.
            if let Err(e) = conn.link.wait_readable(spin, None) {
                return book.fail(shared, i, *conn, FrameError::Io(e));
            }
        }
        let taken = match conn.link.recv() {
            Ok(incoming) => book.take(shared, i, incoming),
            Err(e) => Err(e),
        };
        match taken {
            Ok(true) => conn.link.shrink_buffers(),
            Ok(false) => {}
            Err(e) => return book.fail(shared, i, *conn, e),
        }
    }
}

/// The jobs a worker holds and what came of them so far: what a driver keeps, whether it
/// waits for the worker on a thread of its own (`run`) or takes its messages as they come
/// (`events`).
pub(super) struct Book {
    driver: Driver,
    /// The jobs sent, oldest first; only the oldest can be running.
    sent: VecDeque<Sent>,
    sent_bytes: usize,
    sent_tasks: u64,
    /// The next job to send.
    next: Option<Job>,
    /// The outcomes of the oldest job sent that came in runs before its end.
    gathered: Gathered,
    /// A write that failed: the worker gets nothing more, and what it answered before is
    /// still read, so that no finished job is taken for unstarted and run again.
    send_failed: Option<std::io::Error>,
    /// What the link holds unanswered without blocking either side.
    budget: usize,
    /// Tasks the worker finished, these included.
    tasks_done: u64,
}

impl Book {
    pub(super) fn new(driver: Driver, conn: &Conn, first: Job) -> Self {
        Book {
            driver,
            sent: VecDeque::new(),
            sent_bytes: 0,
            sent_tasks: 0,
            next: Some(first),
            gathered: Gathered::default(),
            send_failed: None,
            budget: conn.link.budget(),
            tasks_done: conn.tasks_done,
        }
    }

    /// Whether the worker holds no job (and none is to be sent).
    pub(super) fn is_empty(&self) -> bool {
        self.sent.is_empty() && self.next.is_none()
    }

    fn tops_up(&self) -> bool {
        self.driver != Driver::Caller
    }

    /// Sends the next job, and, topping up from the queue while the worker has room, more,
    /// all in one write. A job that cannot run (cancelled, an entry not found, too large) is
    /// answered here instead.
    pub(super) fn send(&mut self, shared: &Inner, i: usize, conn: &mut Conn) {
        let depth = pipeline_depth(shared);
        let unsent = self.sent.len();
        while let Some(mut job) = self.next.take() {
            if job.is_cancelled() {
                job.deliver.send(Err(Error::Cancelled));
            } else if let Some((protocol::BROKEN_ENTRY, name)) = job.entry {
                let why = crate::entry::index_of(name).err();
                job.deliver.send(Err(why.unwrap_or_else(|| {
                    Error::internal(format!(
                        "entry `{name}` was found, yet its job was sent without its index"
                    ))
                })));
            } else if job.frame.len() - 4 > shared.spec.max_frame {
                // The typed layer keeps chunks within the limit; this is a single task above it.
                job.deliver.send(Err(Error::ArgumentsTooLarge {
                    entry: job
                        .entry
                        .map_or(shared.spec.entry, |(_, name)| name)
                        .to_string(),
                    size: job.frame.len() - 4,
                    limit: shared.spec.max_frame,
                }));
            } else {
                let id = shared.next_job_id();
                let spin = self.driver == Driver::Caller && !spin_limit(shared).is_zero();
                stamp(&mut job, id, spin);
                self.sent_bytes += job.frame.len();
                self.sent_tasks += u64::from(job.count);
                shared.stats.sent(u64::from(job.count));
                if self.sent.is_empty() {
                    arm(shared, i, &job);
                }
                self.sent.push_back(Sent { job, id });
            }
            if self.tops_up() && self.sent.len() < depth && self.send_failed.is_none() {
                self.next = self.take_more(shared, i);
            }
        }
        // The shared values the new jobs name go first, to a host that lacks them.
        let provided = self
            .sent
            .range(unsent..)
            .filter(|s| !s.job.needs.is_empty())
            .try_for_each(|s| conn.link.provide(&s.job.needs));
        let written = match self.sent.len() - unsent {
            _ if provided.is_err() => provided,
            0 => Ok(()),
            // The common case of a blocking call: no list to build.
            1 => self
                .sent
                .back()
                .map_or(Ok(()), |s| conn.link.send(&[s.job.frame.as_slice()])),
            _ => {
                let frames: Vec<&[u8]> = self
                    .sent
                    .range(unsent..)
                    .map(|s| s.job.frame.as_slice())
                    .collect();
                conn.link.send(&frames)
            }
        };
        if let Err(e) = written {
            // "Nothing reached the worker" speaks of the first job only if it was in this write.
            let e = if unsent > 0 && e.kind() == std::io::ErrorKind::NotConnected {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, e.to_string())
            } else {
                e
            };
            // Whatever state it is in, it is done for; its answers are drained below.
            conn.peer.kill();
            self.send_failed = Some(e);
        }
    }

    /// Takes what the worker sent next: a run of the oldest job's outcomes, delivered with
    /// the job once its end came (then more is queued to send, if there is room). True when
    /// a job ended; an error when the message was not what the worker owed.
    pub(super) fn take(
        &mut self,
        shared: &Inner,
        i: usize,
        incoming: Incoming<'_>,
    ) -> Result<bool, FrameError> {
        let Some(head) = self.sent.front() else {
            return Err(FrameError::Malformed(match incoming {
                Incoming::Outcomes { job, .. } => {
                    format!("results for job {job}, which it did not hold")
                }
                Incoming::Frame(body) => format!(
                    "a frame of kind {} while it held no job",
                    body.first().copied().unwrap_or_default()
                ),
            }));
        };
        let (id, count) = (head.id, head.job.count);
        let gathered = &mut self.gathered;
        let (raw, end) = match incoming {
            Incoming::Outcomes {
                job,
                count: n,
                raw,
                end,
            } if job == id && fits(gathered.count, n, end.is_some(), count) => {
                let Some(end) = end else {
                    // Not all of them yet: keep this run and read the next.
                    gathered.add(n, raw);
                    return Ok(false);
                };
                (raw, end)
            }
            Incoming::Outcomes { job, count: n, .. } => {
                return Err(FrameError::Malformed(format!(
                    "{n} results for job {job} while job {id} ({count} tasks, {} in) was running",
                    gathered.count
                )));
            }
            Incoming::Frame(body) => {
                return Err(FrameError::Malformed(format!(
                    "expected RESULTS, got message kind {}",
                    body.first().copied().unwrap_or_default()
                )));
            }
        };
        // One run is the whole job: it is delivered from the link's buffer, as it came.
        let raw = if gathered.count == 0 {
            raw
        } else {
            gathered.raw.extend_from_slice(raw);
            &gathered.raw
        };
        let results = Results::from_parts(count, end.busy_nanos, end.max_task_nanos, raw);
        let Some(mut done) = self.sent.pop_front() else {
            return Ok(true);
        };
        // The shared values it named are let go of before its caller hears of it, so that a
        // value whose last handle the caller then drops is freed at once.
        drop(std::mem::take(&mut done.job.needs));
        if shared.watchdog || done.job.cancel_kills {
            shared.watch.disarm(i);
        }
        if let Some(head) = self.sent.front() {
            arm(shared, i, &head.job);
        }
        self.sent_bytes -= done.job.frame.len();
        self.sent_tasks -= u64::from(done.job.count);
        shared
            .stats
            .record(i, count, results.busy_nanos, results.max_task_nanos);
        shared.stats.settled(u64::from(count));
        shared.observe_job(results.busy_nanos);
        done.job.deliver.send(Ok((results, i)));
        self.gathered.clear();
        self.tasks_done += u64::from(count);
        if self.tops_up() && self.sent.len() < pipeline_depth(shared) && self.send_failed.is_none()
        {
            self.next = self.take_more(shared, i);
        }
        Ok(true)
    }

    /// The worker holds nothing more: what its slot holds now.
    pub(super) fn finish(self, shared: &Inner, i: usize, mut conn: Box<Conn>) -> Slot {
        conn.tasks_done = self.tasks_done;
        if let Some(e) = self.send_failed {
            // Every job it held was answered before it went: the slot still needs a new worker.
            let book = Book {
                send_failed: None,
                ..self
            };
            return book.fail(shared, i, *conn, FrameError::Send(e));
        }
        recycle_if_due(shared, conn)
    }

    /// The next queued job for this worker, if it has room.
    fn take_more(&self, shared: &Inner, i: usize) -> Option<Job> {
        // Sending ahead only pays for short jobs; behind a long one, a job would wait for
        // nothing while another worker is free.
        let job_nanos = shared.job_nanos();
        if job_nanos == 0 || job_nanos > PIPELINE_BELOW_NANOS {
            return None;
        }
        let (sent_bytes, sent_tasks) = (self.sent_bytes, self.sent_tasks);
        let mut st = shared.state();
        // A worker whose host retires takes nothing more.
        if st.phase == Phase::Closed || st.is_retiring(i) {
            return None;
        }
        let job = st.queue.front()?;
        if sent_bytes > 0 && sent_bytes + job.frame.len() > self.budget {
            return None;
        }
        // A job whose cancel kills its worker runs alone on it, so that the kill can never
        // hit another job sent ahead or behind it; so if one is held, it is the only one.
        let holds_killable = self.sent.front().is_some_and(|s| s.job.cancel_kills);
        if sent_bytes > 0 && (holds_killable || job.cancel_kills) {
            return None;
        }
        if let Some(max) = shared.settings.max_tasks_per_worker {
            if self.tasks_done + sent_tasks + u64::from(job.count) > max && sent_tasks > 0 {
                return None;
            }
            if self.tasks_done + sent_tasks >= max {
                return None;
            }
        }
        st.queue.pop_front()
    }

    /// Worker `i` failed, or its link ended: gather the facts, classify the failure, apply
    /// the plan for its jobs, and leave the slot to be refilled, after everyone has their
    /// answer.
    pub(super) fn fail(mut self, shared: &Inner, i: usize, conn: Conn, cause: FrameError) -> Slot {
        let cause = match (self.send_failed.take(), cause) {
            (Some(sent_error), FrameError::Closed | FrameError::Io(_)) => {
                FrameError::Send(sent_error)
            }
            (_, e) => e,
        };
        if let Some(job) = self.next.take() {
            // Taken from the queue, never sent: it goes back.
            shared.state().queue.push_front(job);
        }
        fail(shared, i, conn, self.sent, &mut self.gathered, cause)
    }
}

/// Whether a run of `n` outcomes, after `got` of the same job already, fits a job of `count`
/// tasks: within it, and, if it carries the job's end, completing it.
fn fits(got: u32, n: u32, ends: bool, count: u32) -> bool {
    let total = u64::from(got) + u64::from(n);
    total <= u64::from(count) && (!ends || total == u64::from(count))
}

/// Stamps a job's frame with its id, its entry and its flags as it is sent.
fn stamp(job: &mut Job, id: u64, spin: bool) {
    let Some(body) = job.frame.get_mut(4..) else {
        return;
    };
    let Ok(mut header) = TasksHeader::read(body) else {
        // Not a frame of ours: the worker refuses it, and the job fails with it.
        return;
    };
    header.job = id;
    if let Some((index, _)) = job.entry {
        header.entry = index;
    }
    header.flags = if spin { protocol::FLAG_SPIN } else { 0 };
    header.store(body);
}

/// The outcomes of the oldest job sent that came before its end, in runs: how many (the
/// outcomes recovery keeps, should the worker fail under it) and their records.
#[derive(Debug, Default)]
struct Gathered {
    count: u32,
    raw: Vec<u8>,
}

impl Gathered {
    fn add(&mut self, n: u32, raw: &[u8]) {
        self.count += n;
        self.raw.extend_from_slice(raw);
    }

    fn clear(&mut self) {
        self.count = 0;
        self.raw.clear();
        protocol::shrink(&mut self.raw);
    }
}

/// How long to spin for a worker's answer: only when jobs are short, so the answer is due
/// within the spin, and never on a single CPU, where the spin would keep the worker from
/// answering.
fn spin_limit(shared: &Inner) -> Duration {
    const LIMIT: Duration = Duration::from_micros(50);
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cpus = *CPUS.get_or_init(crate::config::cpus);
    match shared.job_nanos() {
        n if cpus > 1 && n > 0 && n < 30_000 => LIMIT,
        _ => Duration::ZERO,
    }
}

/// How many jobs one worker may hold: many tiny ones, or a couple of short ones.
fn pipeline_depth(shared: &Inner) -> usize {
    if shared.settings.task_timeout.is_some() {
        // A job sent ahead would wait behind the running one and eat into its own deadline.
        return 1;
    }
    match shared.job_nanos() {
        n if n > 0 && n < TINY_JOB_NANOS => TINY_PIPELINE,
        _ => PIPELINE,
    }
}

fn arm(shared: &Inner, i: usize, job: &Job) {
    if job.cancel_kills {
        shared.watch.running(i, job.cancelled.clone());
    }
    if let Some(timeout) = shared.settings.task_timeout {
        // A chunk has the timeout once per task; one too large for a deadline is no limit.
        let limit = timeout.saturating_mul(job.count.max(1));
        shared
            .watch
            .arm(i, crate::sync::deadline(Instant::now(), limit));
    } else if shared.settings.memory_limit.is_some() {
        shared.watch.arm(i, None);
    }
}

/// Marks a worker that reached `max_tasks_per_worker` for its driver thread to retire and
/// replace, so that whoever drove its last job is not kept waiting for that.
fn recycle_if_due(shared: &Inner, conn: Box<Conn>) -> Slot {
    match shared.settings.max_tasks_per_worker {
        Some(max) if conn.tasks_done >= max => Slot::Recycle(conn),
        _ => Slot::Idle(conn),
    }
}

/// Worker `i` failed while it held `sent`, with the outcomes of the first job's first tasks
/// in `gathered`: gather the facts, classify the failure, apply the plan for its jobs, and leave
/// the slot to be refilled by its driver thread, after everyone has their answer.
fn fail(
    shared: &Inner,
    i: usize,
    conn: Conn,
    mut sent: VecDeque<Sent>,
    gathered: &mut Gathered,
    cause: FrameError,
) -> Slot {
    let verdict = shared.watch.unregister(i);
    let Conn { mut link, peer, .. } = conn;
    let pid = peer.pid();
    peer.kill();
    let exit = peer.reap();
    let closed = shared.state().phase == Phase::Closed;
    let entry = sent
        .front()
        .and_then(|s| s.job.entry)
        .map_or(shared.spec.entry, |(_, name)| name);
    let who = Failed {
        entry,
        worker: i,
        pid,
        task_timeout: shared.settings.task_timeout,
        memory_limit: shared.settings.memory_limit,
    };
    let error = recovery::classify(who, verdict, &cause, exit, closed);
    if !closed
        && let Error::WorkerDied {
            cause: crate::error::ExitCause::Lost,
            ..
        } = &error
    {
        let reason = error.to_string();
        shared.host_event(i, crate::insights::HostEvent::Lost { reason });
    }
    let cancelled = matches!(
        verdict,
        Some(crate::supervisor::watchdog::Verdict::Cancelled)
    );
    if !closed && cancelled {
        // Killed on purpose, to cancel its task: not a failure of the worker.
        tracing::debug!(pool = %shared.spec.pool, worker = i, pid, "worker killed to cancel its task");
    } else if !closed {
        shared.stats.failed(i);
        tracing::warn!(pool = %shared.spec.pool, worker = i, pid, error = &error as &dyn std::error::Error, "worker failed");
        shared.set_last_error(error.clone());
    }
    shared
        .stats
        .settled(sent.iter().map(|s| u64::from(s.job.count)).sum());
    let mut requeue = Vec::new();
    let mut started = Started::None;
    if let Some(head) = sent.pop_front() {
        let sent_bytes =
            head.job.frame.len() + sent.iter().map(|s| s.job.frame.len()).sum::<usize>();
        // Nothing reached the worker: none of the first job's tasks started.
        let not_connected = matches!(&cause, FrameError::Send(e)
            if e.kind() == std::io::ErrorKind::NotConnected);
        started = if not_connected {
            Started::None
        } else {
            link.started(head.id, sent_bytes)
        };
        let facts = recovery::HeadFacts {
            count: head.job.count,
            kept: gathered.count,
            started,
            attempts: head.job.attempts,
            bounces: head.job.bounces,
        };
        let fate = recovery::fate(facts, &error, closed, shared.settings.retries);
        apply_fate(head, fate, gathered, &error, i, &mut requeue);
    }
    drop(link);
    let plan = recovery::plan_rest(sent, closed, started, &error, shared.settings.retries);
    requeue.extend(plan.requeue);
    if !requeue.is_empty() {
        let mut st = shared.state();
        for job in requeue.into_iter().rev() {
            st.queue.push_front(job);
        }
    }
    for (job, error) in plan.settle {
        job.deliver.send(Err(error));
    }
    if closed { Slot::Retired } else { Slot::Vacant }
}

/// Ends a whole job with `error`, or, if `retry`, queues it again with one attempt more.
fn end_whole(mut job: Job, retry: bool, error: &Error, requeue: &mut Vec<Job>) {
    if retry {
        job.attempts += 1;
        requeue.push(job);
    } else {
        job.deliver.send(Err(error.clone()));
    }
}

/// Applies the fate of a failed worker's first job: delivers the results that came, ends or
/// retries the tasks that ran, and puts in `requeue` what runs again.
fn apply_fate(
    head: Sent,
    fate: Fate,
    gathered: &Gathered,
    error: &Error,
    worker: usize,
    requeue: &mut Vec<Job>,
) {
    let Sent { mut job, .. } = head;
    let (kept, ran, retry) = match fate {
        Fate::Bounce => {
            job.bounces += 1;
            requeue.push(job);
            return;
        }
        Fate::Cut { kept, ran, retry } => (kept, ran, retry),
    };
    let count = job.count;
    if kept == 0 && ran == count {
        // The whole job ran, or may have: it ends, or runs again, as one.
        return end_whole(job, retry, error, requeue);
    }
    if kept == 0 && ran == 0 {
        requeue.push(job);
        return;
    }
    // Cut it into its tasks, each with its own delivery.
    let pieces = match job.split.take() {
        Some(split) => split(&job.frame),
        None => Vec::new(),
    };
    let short = gathered.count < kept;
    if pieces.len() != count as usize || short {
        // Nothing to cut along: what ran and what did not are one, and nothing may run twice.
        return end_whole(job, retry, error, requeue);
    }
    let Job {
        deliver,
        cancelled,
        cancel_kills,
        entry,
        attempts,
        needs,
        ..
    } = job;
    deliver.disarm();
    // Each kept outcome goes to its task as it came, a job's results of its own.
    let mut outcomes = Results::from_parts(gathered.count, 0, 0, &gathered.raw).outcomes();
    for (k, (frame, deliver)) in (0u32..).zip(pieces) {
        if k < kept {
            match outcomes.next_raw() {
                Ok(raw) => deliver.send(Ok((Results::from_parts(1, 0, 0, raw), worker))),
                Err(_) => deliver.send(Err(error.clone())),
            }
            continue;
        }
        let ran_it = k < ran;
        if ran_it && !retry {
            deliver.send(Err(error.clone()));
            continue;
        }
        requeue.push(Job {
            frame,
            count: 1,
            deliver,
            cancelled: cancelled.clone(),
            cancel_kills,
            entry,
            attempts: attempts + u32::from(ran_it),
            bounces: 0,
            split: None,
            needs: needs.clone(),
        });
    }
}

/// Worker `i` ended (or broke its protocol) while it held no job: the facts of its end are
/// gathered as for any failure, and its slot is left to be refilled.
pub(super) fn fail_idle(shared: &Inner, i: usize, conn: Conn, cause: FrameError) -> Slot {
    fail(
        shared,
        i,
        conn,
        VecDeque::new(),
        &mut Gathered::default(),
        cause,
    )
}
