//! Insights: what each worker did, as data and as a table (like mpire's `print_insights`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counters of one worker slot, updated by whichever thread drives it.
#[derive(Debug, Default)]
struct SlotStats {
    tasks: AtomicU64,
    busy_nanos: AtomicU64,
    max_task_nanos: AtomicU64,
    restarts: AtomicU64,
    failures: AtomicU64,
}

/// The live counters of a pool.
#[derive(Debug)]
pub(crate) struct Stats {
    /// One per slot; more as hosts join a running pool.
    slots: std::sync::RwLock<Vec<SlotStats>>,
    started: Instant,
    /// Tasks sent to workers and not answered yet.
    in_flight: AtomicU64,
}

impl Stats {
    pub(crate) fn new(slots: usize) -> Self {
        Stats {
            slots: std::sync::RwLock::new((0..slots).map(|_| SlotStats::default()).collect()),
            started: Instant::now(),
            in_flight: AtomicU64::new(0),
        }
    }

    /// `count` more tasks were sent to workers.
    pub(crate) fn sent(&self, count: u64) {
        self.in_flight.fetch_add(count, Ordering::Relaxed);
    }

    /// `count` tasks sent to workers were answered, or settled when their worker failed.
    pub(crate) fn settled(&self, count: u64) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(count))
            });
    }

    /// Worker `i` finished `count` tasks in `busy_nanos`, the longest taking `max_nanos`.
    pub(crate) fn record(&self, i: usize, count: u32, busy_nanos: u64, max_nanos: u64) {
        let slots = self.read();
        let Some(s) = slots.get(i) else {
            return;
        };
        s.tasks.fetch_add(u64::from(count), Ordering::Relaxed);
        s.busy_nanos.fetch_add(busy_nanos, Ordering::Relaxed);
        s.max_task_nanos.fetch_max(max_nanos, Ordering::Relaxed);
    }

    pub(crate) fn restarted(&self, i: usize) {
        if let Some(s) = self.read().get(i) {
            s.restarts.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn failed(&self, i: usize) {
        if let Some(s) = self.read().get(i) {
            s.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The time since the pool was built.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Counters for slots up to `n`, for workers of hosts that joined.
    pub(crate) fn grow(&self, n: usize) {
        let mut slots = self
            .slots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while slots.len() < n {
            slots.push(SlotStats::default());
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<SlotStats>> {
        self.slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The counters, with each worker's state, pid and memory as `live(i)` says, and the
    /// number of jobs queued.
    pub(crate) fn snapshot(
        &self,
        live: impl Fn(usize) -> (WorkerState, Option<u32>, Option<u64>),
        queued_jobs: usize,
        host: impl Fn(usize) -> String,
        failures: &[(String, String)],
        history: &[(String, HostChange)],
    ) -> Insights {
        let uptime = self.started.elapsed();
        let workers: Vec<WorkerInsights> = self
            .read()
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let tasks_done = s.tasks.load(Ordering::Relaxed);
                let busy = Duration::from_nanos(s.busy_nanos.load(Ordering::Relaxed));
                let (state, pid, resident_bytes) = live(index);
                WorkerInsights {
                    index,
                    state,
                    host: host(index),
                    pid,
                    resident_bytes,
                    tasks_done,
                    busy,
                    idle: uptime.saturating_sub(busy),
                    mean_task: (tasks_done > 0)
                        .then(|| busy / tasks_done.min(u64::from(u32::MAX)) as u32),
                    max_task: Duration::from_nanos(s.max_task_nanos.load(Ordering::Relaxed)),
                    restarts: s.restarts.load(Ordering::Relaxed),
                    failures: s.failures.load(Ordering::Relaxed),
                }
            })
            .collect();
        let hosts = hosts_of(&workers, failures, history);
        Insights {
            uptime,
            workers,
            hosts,
            queued_jobs,
            in_flight_tasks: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// The hosts of `workers`, in the order their first worker comes, with the start failures
/// of `failures` (host, error).
fn hosts_of(
    workers: &[WorkerInsights],
    failures: &[(String, String)],
    history: &[(String, HostChange)],
) -> Vec<HostInsights> {
    let mut hosts: Vec<HostInsights> = Vec::new();
    for w in workers {
        let at = match hosts.iter().position(|h| h.name == w.host) {
            Some(at) => at,
            None => {
                hosts.push(HostInsights {
                    name: w.host.clone(),
                    workers: 0,
                    running: 0,
                    error: failures
                        .iter()
                        .find(|(host, _)| *host == w.host)
                        .map(|(_, error)| error.clone()),
                    history: history
                        .iter()
                        .filter(|(host, _)| *host == w.host)
                        .map(|(_, change)| change.clone())
                        .collect(),
                });
                hosts.len() - 1
            }
        };
        hosts[at].workers += 1;
        hosts[at].running += usize::from(matches!(w.state, WorkerState::Idle | WorkerState::Busy));
    }
    hosts
}

/// What happened to a host, and when (see [`HostInsights::history`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct HostChange {
    /// When, since the pool was built.
    pub at: Duration,
    /// What.
    pub event: HostEvent,
}

/// A change of a host's membership in a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum HostEvent {
    /// It joined a running pool (`add_remote`).
    Joined,
    /// Its workers could not start (under `min_workers`, or when it joined).
    NotStarted {
        /// Why.
        reason: String,
    },
    /// It stopped answering, or its launcher ended: the tasks it held failed (or ran again).
    Lost {
        /// Why.
        reason: String,
    },
    /// Its workers could not be started again after it was lost: set aside (tried again in
    /// the background under `rejoin`).
    Down {
        /// Why.
        reason: String,
    },
    /// Workers of it that were down run again (`rejoin`).
    Back,
    /// It was retired (`retire_host`).
    Retired,
}

/// One host of a pool (`localhost` for its local workers), from [`Insights::hosts`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct HostInsights {
    /// The host's name, as its workers' [`WorkerInsights::host`] says.
    pub name: String,
    /// Its worker slots.
    pub workers: usize,
    /// Those whose worker runs (idle or busy).
    pub running: usize,
    /// Why some of its workers could not start, when `min_workers` let the pool go on
    /// without them.
    pub error: Option<String>,
    /// What happened to it since the pool was built: joined, lost, down, back, retired.
    pub history: Vec<HostChange>,
}

/// What the workers of a pool have done, from [`ProcessPool::insights`](crate::ProcessPool::insights).
///
/// Its `Display` is a table, one row per worker slot plus a total.
///
/// ```
/// # use ppool::{pool_entry, ProcessPool};
/// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
/// # ppool::main! { fn main() -> Result<(), ppool::Error> {
/// let pool = ProcessPool::<square>::new(1)?;
/// pool.batch(0..10).wait()?;
/// let insights: ppool::Insights = pool.insights();
/// assert_eq!(insights.workers.len(), 1);              // one row per worker slot
/// assert_eq!(insights.in_flight_tasks, 0);
/// println!("{insights}");                             // the table
/// # Ok(()) } }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Insights {
    /// Time since the pool was built.
    pub uptime: Duration,
    /// One entry per worker slot (a replaced worker keeps its slot).
    pub workers: Vec<WorkerInsights>,
    /// One entry per host, local workers first: how many of its workers run, and why the
    /// others could not start, if they could not.
    pub hosts: Vec<HostInsights>,
    /// Jobs waiting in the queue (a job is one task, or a chunk of a `batch` or `map`).
    pub queued_jobs: usize,
    /// Tasks sent to workers whose results are not back yet.
    pub in_flight_tasks: u64,
}

/// What a worker slot is doing.
///
/// ```
/// # use ppool::{pool_entry, ProcessPool, WorkerState};
/// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
/// # ppool::main! { fn main() -> Result<(), ppool::Error> {
/// let pool = ProcessPool::<square>::new(1)?;
/// let state = pool.insights().workers[0].state;
/// assert!(matches!(state, WorkerState::Idle | WorkerState::Busy | WorkerState::Starting));
/// pool.join()?;
/// assert_eq!(pool.insights().workers[0].state, WorkerState::Stopped);
/// # Ok(()) } }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum WorkerState {
    /// Waiting for work.
    Idle,
    /// Running tasks.
    Busy,
    /// Being started or replaced.
    Starting,
    /// No worker could be started in it.
    Dead,
    /// Stopped by `join` or `shutdown`.
    Stopped,
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Starting => "starting",
            WorkerState::Dead => "dead",
            WorkerState::Stopped => "stopped",
        })
    }
}

/// What one worker slot has done.
///
/// ```
/// # use ppool::{pool_entry, ProcessPool};
/// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
/// # ppool::main! { fn main() -> Result<(), ppool::Error> {
/// let pool = ProcessPool::<square>::new(1)?;
/// assert_eq!(pool.call(3)?, 9);
/// let worker = &pool.insights().workers[0];
/// assert_eq!((worker.index, worker.host.as_str()), (0, "localhost"));
/// assert_eq!(worker.tasks_done, 1);
/// assert!(worker.pid.is_some());
/// # Ok(()) } }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct WorkerInsights {
    /// The worker's index, `0..n_jobs`.
    pub index: usize,
    /// What it is doing now.
    pub state: WorkerState,
    /// The host it runs on: `"localhost"`, or the remote host's name as the pool was given
    /// it (for `Remote::command`, the prefix; for Slurm, the node).
    pub host: String,
    /// The process id of its current worker process, on its host, if it has one.
    pub pid: Option<u32>,
    /// The resident memory of that process, in bytes, where it can be read.
    pub resident_bytes: Option<u64>,
    /// Tasks finished (successfully or with a panic).
    pub tasks_done: u64,
    /// Time spent running tasks.
    pub busy: Duration,
    /// Time not spent running tasks, since the pool was built.
    pub idle: Duration,
    /// Mean time of a task, once one has finished.
    pub mean_task: Option<Duration>,
    /// Longest single task.
    pub max_task: Duration,
    /// Times the worker process was replaced (after a failure or `max_tasks_per_worker`).
    pub restarts: u64,
    /// Times the worker process failed (died, timed out, hit its memory limit, broke the
    /// protocol).
    pub failures: u64,
}

impl Insights {
    /// Tasks finished by all workers.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(1)?;
    /// assert_eq!(pool.batch(1..=5).wait()?.len(), 5);
    /// assert_eq!(pool.insights().tasks_done(), 5);
    /// # Ok(()) } }
    /// ```
    pub fn tasks_done(&self) -> u64 {
        self.workers.iter().map(|w| w.tasks_done).sum()
    }

    /// Share of the workers' time spent running tasks, from 0 to 1.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(1)?;
    /// pool.batch(0..100).wait()?;
    /// let busy = pool.insights().utilization();
    /// assert!((0.0..=1.0).contains(&busy));
    /// println!("the worker was busy {:.1}% of the time", busy * 100.0);
    /// # Ok(()) } }
    /// ```
    pub fn utilization(&self) -> f64 {
        let total = self.uptime.as_secs_f64() * self.workers.len() as f64;
        if total == 0.0 {
            return 0.0;
        }
        self.workers
            .iter()
            .map(|w| w.busy.as_secs_f64())
            .sum::<f64>()
            / total
    }
}

impl fmt::Display for Insights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>6} {:>8} {:>12} {:>8} {:>10} {:>12} {:>12} {:>12} {:>12} {:>8} {:>8}",
            "worker",
            "state",
            "host",
            "pid",
            "tasks",
            "busy",
            "idle",
            "mean task",
            "max task",
            "restarts",
            "failures"
        )?;
        for w in &self.workers {
            writeln!(
                f,
                "{:>6} {:>8} {:>12} {:>8} {:>10} {:>12} {:>12} {:>12} {:>12} {:>8} {:>8}",
                w.index,
                w.state.to_string(),
                w.host,
                w.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
                w.tasks_done,
                format!("{:.3?}", w.busy),
                format!("{:.3?}", w.idle),
                w.mean_task
                    .map_or_else(|| "-".to_string(), |d| format!("{d:.3?}")),
                format!("{:.3?}", w.max_task),
                w.restarts,
                w.failures,
            )?;
        }
        write!(
            f,
            "{:>6} {:>8} {:>12} {:>8} {:>10} uptime {:.3?}, utilization {:.1}%, {} jobs queued, {} tasks in flight",
            "total",
            "",
            "",
            "",
            self.tasks_done(),
            self.uptime,
            self.utilization() * 100.0,
            self.queued_jobs,
            self.in_flight_tasks
        )?;
        for host in &self.hosts {
            if let Some(error) = &host.error {
                write!(
                    f,
                    "\nhost {}: {} of {} workers running; {error}",
                    host.name, host.running, host.workers
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    use super::*;

    #[test]
    fn insights_and_exit_causes_serialize() {
        let insights = Insights {
            uptime: Duration::from_millis(1500),
            workers: vec![WorkerInsights {
                index: 0,
                state: WorkerState::Busy,
                host: "node1".into(),
                pid: Some(42),
                resident_bytes: Some(1 << 20),
                tasks_done: 7,
                busy: Duration::from_millis(3),
                idle: Duration::from_millis(4),
                mean_task: None,
                max_task: Duration::ZERO,
                restarts: 1,
                failures: 2,
            }],
            hosts: Vec::new(),
            queued_jobs: 3,
            in_flight_tasks: 4,
        };
        let bytes = postcard::to_allocvec(&insights).expect("insights serialize");
        assert!(bytes.len() > 10);
        assert!(postcard::to_allocvec(&crate::ExitCause::Signal(9)).is_ok());
    }
}
