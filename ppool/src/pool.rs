//! The typed pool: [`ProcessPool<F>`] and its [`Builder`]. The only generic layer; everything
//! beneath it moves bytes.

use crate::batch::{Batch, Gather};
use crate::chunk::{self, ChunkEncoder, Target};
use crate::chunking::Chunking;
use crate::config::{self, NJobs};
use crate::entry::{self, Entry};
use crate::error::{Error, Result};
use crate::insights::Insights;
use crate::outcome;
use crate::progress::{self, Progress};
use crate::protocol::{self, DEFAULT_MAX_FRAME};
use crate::remote::{self, Remote};
use crate::stream::{Map, StreamSource};
use crate::supervisor::{Core, Deliver, Delivery, Settings, WorkerSpec};
use crate::task::{OneShot, Task};
use crate::transport::{self, LaunchConfig, Transport};
use std::ffi::OsString;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// A pool of worker processes that run the entry `F`.
///
/// `ProcessPool::<square>` takes `square`'s arguments as its tasks and gives its return values
/// as results. It is `Send + Sync`: share it between threads (by reference or in an `Arc`)
/// and call it from all of them at once.
///
/// ```
/// use ppool::{pool_entry, ProcessPool};
///
/// #[pool_entry]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// ppool::main! {
///     fn main() -> Result<(), ppool::Error> {
///         let pool = ProcessPool::<square>::new(2)?;
///         assert_eq!(pool.call(7)?, 49);
///         assert_eq!(pool.batch(1..=3).wait()?, [1, 4, 9]);
///         let total: u64 = pool.map(0..100).map(|r| r.unwrap_or(0)).sum();
///         assert_eq!(total, 328_350);
///         pool.join()
///     }
/// }
/// ```
///
/// Dropping the pool stops it as [`shutdown`](Self::shutdown) does: call
/// [`join`](Self::join) first to let submitted work finish.
pub struct ProcessPool<F: Entry> {
    core: Core,
    chunking: Arc<Chunking>,
    stream_window: Option<usize>,
    progress: progress::Mode,
    _entry: PhantomData<fn() -> F>,
}

impl<F: Entry> std::fmt::Debug for ProcessPool<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPool")
            .field("entry", &F::NAME)
            .field("name", &self.name())
            .field("n_jobs", &self.n_jobs())
            .field("running", &self.is_running())
            .finish()
    }
}

impl<F: Entry> ProcessPool<F> {
    /// A started pool of `n_jobs` workers: `-1` for every CPU, a count `n >= 1` (clamped to
    /// the CPUs), or a share `0.0 < f <= 1.0` of the CPUs.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Error};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// assert_eq!(pool.call(3)?, 9);
    /// let none = ProcessPool::<square>::new(0);             // not a count of workers
    /// assert!(matches!(none, Err(Error::InvalidConfig { setting: "n_jobs", .. })));
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an `n_jobs` that is not allowed (see [`NJobs`]);
    /// [`Error::DuplicateEntry`] when `F`'s name is not unique in the binary; [`Error::Spawn`]
    /// when a worker cannot start.
    pub fn new(n_jobs: impl Into<NJobs>) -> Result<Self> {
        Self::builder().n_jobs(n_jobs).build()
    }

    /// A builder for a pool with more settings.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::builder().n_jobs(1).name("squares").build()?;
    /// assert_eq!(pool.name(), "squares");
    /// assert_eq!(pool.call(4)?, 16);
    /// # Ok(()) } }
    /// ```
    pub fn builder() -> Builder<F> {
        Builder::new()
    }

    /// Starts the workers of a pool built with `start(false)`. Starting a running pool does
    /// nothing.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Error};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::builder().n_jobs(1).start(false).build()?;
    /// assert!(matches!(pool.call(2), Err(Error::NotStarted)));
    /// pool.start()?;
    /// assert_eq!(pool.call(2)?, 4);
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] when a worker cannot start (its initializer failed or ran past
    /// [`init_timeout`](Builder::init_timeout), say); [`Error::Closed`] once the pool was
    /// joined or shut down.
    pub fn start(&self) -> Result<()> {
        self.core.start()
    }

    /// Runs one task and waits for its result. Call it from many threads at once to use every
    /// worker; a call made when a worker is idle drives that worker from the calling thread.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Error};
    /// # #[pool_entry] fn half(x: u64) -> u64 { assert!(x % 2 == 0, "{x} is odd"); x / 2 }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<half>::new(2)?;
    /// assert_eq!(pool.call(8)?, 4);
    /// assert!(matches!(pool.call(3), Err(Error::Panicked { .. })));   // that task only
    /// assert_eq!(pool.call(6)?, 3);
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// The task's own failure, which fails this task only:
    /// - [`Error::Panicked`] when the entry panicked;
    /// - [`Error::WorkerDied`] when its worker process died running it (once the
    ///   [`retries`](Builder::retries), if any, are used up);
    /// - [`Error::Timeout`] when it ran past the [`task_timeout`](Builder::task_timeout);
    /// - [`Error::MemoryLimit`] when its worker grew past the
    ///   [`worker_memory_limit`](Builder::worker_memory_limit);
    /// - [`Error::Protocol`] when its worker sent a malformed frame;
    /// - [`Error::Codec`] when the arguments or the result cannot be encoded or decoded;
    /// - [`Error::ArgumentsTooLarge`] when the encoded arguments need a frame larger than the
    ///   [`max_frame_size`](Builder::max_frame_size) (no worker is involved).
    ///
    /// Or why the pool could not run it: [`Error::Closed`] once the pool was joined or shut
    /// down, or when [`shutdown`](ProcessPool::shutdown) stopped it before the task finished;
    /// [`Error::NotStarted`] when it was built with [`start(false)`](Builder::start) and not
    /// started yet; and, when no worker of the pool is running and none could be restarted,
    /// the last worker failure (such as [`Error::Spawn`]).
    pub fn call(&self, args: F::Args) -> Result<F::Output> {
        self.view::<F>().call(args)
    }

    /// Runs one task; `callback` gets its result on the pool's callback thread as soon as it
    /// is back. Callbacks run one at a time, in the order their results arrive, apart from the
    /// threads that drive workers: a callback may block on this pool (`call`, `wait`, even
    /// `join`) without stalling it. A panicking callback is caught and reported; the pool goes
    /// on.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// pool.call_with(6, move |result| {
    ///     let _ = tx.send(result);
    /// });
    /// assert_eq!(rx.recv().ok(), Some(Ok(36)));
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// It does not fail itself: `callback` gets the task's error, any that
    /// [`call`](Self::call) returns and in the same cases. A task refused at once (the pool is
    /// closed or not started, the arguments cannot be encoded) still gets its callback, with
    /// that error; once the pool is joined or shut down, callbacks run on the calling thread.
    pub fn call_with<C>(&self, args: F::Args, callback: C)
    where
        C: FnOnce(Result<F::Output>) + Send + 'static,
    {
        self.view::<F>().call_with(args, callback)
    }

    /// Submits one task and returns at once; the [`Task`] gives its result later, and is also
    /// a `Future`.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// let tasks: Vec<_> = (1..=3).map(|x| pool.submit(x)).collect();   // all running
    /// let squares: Vec<u64> = tasks.into_iter().map(|t| t.wait()).collect::<Result<_, _>>()?;
    /// assert_eq!(squares, [1, 4, 9]);
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// It does not fail itself: the [`Task`] ends with the task's error, any that
    /// [`call`](Self::call) returns and in the same cases, or with [`Error::Cancelled`] after
    /// [`Task::cancel`].
    pub fn submit(&self, args: F::Args) -> Task<F::Output> {
        self.view::<F>().submit(args)
    }

    /// Submits every task of `tasks` now, in chunks; the [`Batch`] gives the results in input
    /// order.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// let batch = pool.batch(vec![3, 1, 2]);             // every task is submitted
    /// assert_eq!(batch.wait()?, [9, 1, 4]);              // results in input order
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// It does not fail itself: each task that fails has the error [`call`](Self::call)
    /// would return in its place, and fails alone (a task whose arguments cannot be encoded or
    /// are too large does not keep the others of its chunk from running).
    /// [`Batch::wait`] gives the first of them, [`Batch::wait_all`] each one.
    pub fn batch<I>(&self, tasks: I) -> Batch<F::Output>
    where
        I: IntoIterator<Item = F::Args>,
    {
        self.view::<F>().batch(tasks)
    }

    /// A lazy stream of results in input order: tasks are taken from `tasks` only as room
    /// frees up, so memory stays bounded whatever the input's length. Dropping the iterator
    /// cancels the tasks not yet started.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// let mut total = 0;
    /// for square in pool.map(1..=100) {                 // tasks are read as room frees up
    ///     total += square?;
    /// }
    /// assert_eq!(total, 338_350);
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// It does not fail itself: it yields, in the failed task's place, the error
    /// [`call`](Self::call) would return, and goes on with the next tasks.
    pub fn map<I>(&self, tasks: I) -> Map<'_, F, I::IntoIter>
    where
        I: IntoIterator<Item = F::Args>,
    {
        self.view::<F>().map(tasks)
    }

    /// Like [`map`](Self::map), but yields results as they complete.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// let mut squares: Vec<u64> = pool.map_unordered(1..=4).collect::<Result<_, _>>()?;
    /// squares.sort();                                    // they came in any order
    /// assert_eq!(squares, [1, 4, 9, 16]);
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// It does not fail itself: it yields each failed task's error, as [`map`](Self::map)
    /// does, when that task ends.
    pub fn map_unordered<I>(&self, tasks: I) -> Map<'_, F, I::IntoIter>
    where
        I: IntoIterator<Item = F::Args>,
    {
        self.view::<F>().map_unordered(tasks)
    }

    /// A view of this pool typed by another entry `G` of the binary, with the same methods:
    /// the same workers run it (`Pool.apply(f, args)` with any `f`). An initializer is per
    /// worker, so it has run for every entry.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_entry] fn add(a: i64, b: i64) -> i64 { a + b }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// assert_eq!(pool.entry::<add>().call((2, 3))?, 5);
    /// assert_eq!(pool.entry::<add>().batch([(1, 2), (3, 4)]).wait()?, [3, 7]);
    /// # Ok(()) } }
    /// ```
    pub fn entry<G: Entry>(&self) -> EntryView<'_, G> {
        let mut view = self.view::<G>();
        if G::NAME != F::NAME {
            // An entry whose name is not unique has no index: its tasks fail with the error
            // that names both places.
            let index = entry::index_of(G::NAME).unwrap_or(protocol::BROKEN_ENTRY);
            view.entry = Some((index, G::NAME));
            view.chunking = Arc::new(self.chunking.fresh());
        }
        view
    }

    /// This pool typed by `G`, running the pool's own entry when `G` is `F`.
    fn view<G: Entry>(&self) -> EntryView<'_, G> {
        EntryView {
            core: &self.core,
            chunking: Arc::clone(&self.chunking),
            stream_window: self.stream_window,
            progress: self.progress,
            name: self.name(),
            n_jobs: self.n_jobs(),
            max_frame: self.max_frame(),
            entry: None,
            _entry: PhantomData,
        }
    }

    /// The number of workers.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(1)?;
    /// assert_eq!(pool.n_jobs(), 1);
    /// # Ok(()) } }
    /// ```
    pub fn n_jobs(&self) -> usize {
        self.core.settings().n_jobs
    }

    /// The pool's name, used for its threads and log lines.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(1)?;
    /// assert_eq!(pool.name(), "square");                 // by default, the entry's name
    /// # Ok(()) } }
    /// ```
    pub fn name(&self) -> &str {
        &self.core.spec().pool
    }

    /// True while the workers are up: the pool runs, or is still finishing its tasks after
    /// [`join_timeout`](Self::join_timeout) ran out.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(1)?;
    /// assert!(pool.is_running());
    /// pool.join()?;
    /// assert!(!pool.is_running());
    /// # Ok(()) } }
    /// ```
    pub fn is_running(&self) -> bool {
        self.core.is_running()
    }

    /// The last worker failure seen (a death, timeout, memory limit, protocol error or failed
    /// restart), if any.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Error};
    /// # #[pool_entry] fn quit(code: i32) { std::process::exit(code) }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<quit>::new(1)?;
    /// assert_eq!(pool.detected_worker_error(), None);
    /// assert!(matches!(pool.call(3), Err(Error::WorkerDied { .. })));   // it is replaced
    /// assert!(matches!(pool.detected_worker_error(), Some(Error::WorkerDied { .. })));
    /// # Ok(()) } }
    /// ```
    pub fn detected_worker_error(&self) -> Option<Error> {
        self.core.last_error()
    }

    /// What each worker has done so far: tasks, busy and idle time, mean and longest task,
    /// restarts. Its `Display` is a table.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(1)?;
    /// pool.batch(0..10).wait()?;
    /// let insights = pool.insights();
    /// assert_eq!(insights.tasks_done(), 10);
    /// println!("{insights}");
    /// # Ok(()) } }
    /// ```
    pub fn insights(&self) -> Insights {
        self.core.insights()
    }

    /// What the worker-exit hook `E` (see [`Builder::worker_exit`]) returned in each worker
    /// that exited gracefully so far (at [`join`](Self::join) or when recycled). Workers that
    /// were killed or died do not run it.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_entry] fn goodbye(word: String) -> String { word }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::builder()
    ///     .n_jobs(1)
    ///     .worker_exit::<goodbye>("bye".to_string())
    ///     .build()?;
    /// assert_eq!(pool.call(3)?, 9);
    /// pool.join()?;                                      // the hook runs in each worker
    /// assert_eq!(pool.worker_exit_results::<goodbye>()?, [Ok("bye".to_string())]);
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `E` is not this pool's worker-exit hook. Each hook's own
    /// failure is in its element: [`Error::Panicked`] when the hook panicked,
    /// [`Error::Codec`] when its result could not be encoded or decoded.
    pub fn worker_exit_results<E: Entry>(&self) -> Result<Vec<Result<E::Output>>> {
        match &self.core.spec().on_exit {
            Some((name, _)) if *name == E::NAME => {}
            _ => {
                return Err(Error::config(
                    "worker_exit",
                    format!("`{}` is not this pool's worker-exit hook", E::NAME),
                ));
            }
        }
        Ok(self
            .core
            .exit_results()
            .iter()
            .map(|body| outcome::exit_result::<E>(body))
            .collect())
    }

    /// Finishes everything submitted, then stops the workers. New tasks are refused with
    /// [`Error::Closed`].
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Error};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// let task = pool.submit(4);
    /// pool.join()?;                                   // the task finishes first
    /// assert_eq!(task.wait()?, 16);
    /// assert!(matches!(pool.call(1), Err(Error::Closed)));
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// None today; the `Result` leaves room for reporting workers that could not be stopped
    /// gracefully.
    pub fn join(&self) -> Result<()> {
        self.core.join()
    }

    /// [`join`](Self::join), waiting at most `timeout`.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Error};
    /// # use std::time::Duration;
    /// # #[pool_entry] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<nap>::new(1)?;
    /// let slow = pool.submit(2_000);
    /// match pool.join_timeout(Duration::from_millis(100)) {
    ///     Err(Error::JoinTimeout { .. }) => pool.shutdown(), // or pool.join() for the rest
    ///     other => other?,
    /// }
    /// assert!(matches!(slow.wait(), Err(Error::Closed)));
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::JoinTimeout`] when the pool has not stopped after `timeout`: tasks are still
    /// queued or running (it says how many), workers are still stopping (their
    /// [`worker_exit`](Builder::worker_exit) hooks run, or they take a few milliseconds to
    /// end), or `call_with` callbacks still run. The pool is left joining: it refuses new
    /// tasks, goes on with those it has, and can be joined again or shut down.
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.core.join_timeout(timeout)
    }

    /// Stops now: kills the workers; tasks not finished end with [`Error::Closed`].
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Error};
    /// # use std::time::Duration;
    /// # #[pool_entry] fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<nap>::new(1)?;
    /// let slow = pool.submit(60_000);
    /// pool.shutdown();                                   // does not wait for it
    /// assert!(matches!(slow.wait(), Err(Error::Closed)));
    /// assert!(matches!(pool.call(1), Err(Error::Closed)));
    /// # Ok(()) } }
    /// ```
    pub fn shutdown(&self) {
        self.core.shutdown();
    }

    /// The largest frame a job may be.
    fn max_frame(&self) -> usize {
        self.core.spec().max_frame
    }
}

/// A pool typed by one of the binary's entries: [`ProcessPool::entry`]. It has the pool's
/// methods for running tasks, and shares its workers.
///
/// ```
/// # use ppool::{pool_entry, ProcessPool};
/// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
/// # #[pool_entry] fn add(a: i64, b: i64) -> i64 { a + b }
/// # ppool::main! { fn main() -> Result<(), ppool::Error> {
/// let pool = ProcessPool::<square>::new(2)?;
/// let adder = pool.entry::<add>();                   // the same workers, another entry
/// assert_eq!(adder.call((2, 3))?, 5);
/// assert_eq!(pool.call(3)?, 9);
/// # Ok(()) } }
/// ```
pub struct EntryView<'p, G: Entry> {
    core: &'p Core,
    chunking: Arc<Chunking>,
    stream_window: Option<usize>,
    progress: progress::Mode,
    name: &'p str,
    n_jobs: usize,
    max_frame: usize,
    /// Another entry than the pool's own: its index and name.
    entry: Option<(u32, &'static str)>,
    _entry: PhantomData<fn() -> G>,
}

impl<G: Entry> std::fmt::Debug for EntryView<'_, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryView")
            .field("entry", &G::NAME)
            .field("pool", &self.name)
            .finish_non_exhaustive()
    }
}

impl<'p, G: Entry> EntryView<'p, G> {
    /// Runs one task and waits for its result. Call it from many threads at once to use every
    /// worker; a call made when a worker is idle drives that worker from the calling thread.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_entry] fn add(a: i64, b: i64) -> i64 { a + b }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// assert_eq!(pool.entry::<add>().call((-2, 5))?, 3);
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// Those of [`ProcessPool::call`], in the same cases: the task's own failure
    /// ([`Error::Panicked`], [`Error::WorkerDied`], [`Error::Timeout`],
    /// [`Error::MemoryLimit`], [`Error::Protocol`], [`Error::Codec`],
    /// [`Error::ArgumentsTooLarge`]), or why the pool could not run it ([`Error::Closed`],
    /// [`Error::NotStarted`], or the last worker failure when no worker is left). Also
    /// [`Error::DuplicateEntry`] when `G`'s name is not unique in the binary, so that no
    /// worker can tell which entry to run.
    pub fn call(&self, args: G::Args) -> Result<G::Output> {
        let slot = OneShot::new();
        let sink = Arc::clone(&slot);
        let deliver = Deliver::new(move |d: Delivery<'_>| {
            sink.set(outcome::first_result::<G>(d));
        });
        match chunk::single::<G>(&args, self.max_frame, deliver) {
            Ok(mut job) => {
                job.entry = self.entry;
                self.core.run_or_submit(job);
            }
            Err((e, _)) => return Err(e),
        }
        slot.take().unwrap_or(Err(Error::Closed))
    }

    /// Runs one task; `callback` gets its result on the pool's callback thread as soon as it
    /// is back. Callbacks run one at a time, in the order their results arrive, apart from the
    /// threads that drive workers: a callback may block on this pool (`call`, `wait`, even
    /// `join`) without stalling it. A panicking callback is caught and reported; the pool goes
    /// on.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_entry] fn add(a: i64, b: i64) -> i64 { a + b }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// pool.entry::<add>().call_with((4, 5), move |result| {
    ///     let _ = tx.send(result);
    /// });
    /// assert_eq!(rx.recv().ok(), Some(Ok(9)));
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// It does not fail itself: `callback` gets the task's error, any that
    /// [`call`](Self::call) returns and in the same cases.
    pub fn call_with<C>(&self, args: G::Args, callback: C)
    where
        C: FnOnce(Result<G::Output>) + Send + 'static,
    {
        let callbacks = Arc::clone(self.core.callbacks());
        let deliver = Deliver::new(move |d: Delivery<'_>| {
            let result = outcome::first_result::<G>(d);
            callbacks.push(move || callback(result));
        });
        match chunk::single::<G>(&args, self.max_frame, deliver) {
            Ok(mut job) => {
                job.entry = self.entry;
                self.core.submit(job);
            }
            Err((e, deliver)) => deliver.send(Err(e)),
        }
    }

    /// Submits one task and returns at once; the [`Task`] gives its result later, and is also
    /// a `Future`.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_entry] fn add(a: i64, b: i64) -> i64 { a + b }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// let task = pool.entry::<add>().submit((20, 22));
    /// assert_eq!(task.wait()?, 42);
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// It does not fail itself: the [`Task`] ends with the task's error, any that
    /// [`call`](Self::call) returns and in the same cases, or with [`Error::Cancelled`] after
    /// [`Task::cancel`].
    pub fn submit(&self, args: G::Args) -> Task<G::Output> {
        let slot = OneShot::new();
        let sink = Arc::clone(&slot);
        let deliver = Deliver::new(move |d: Delivery<'_>| {
            sink.set(outcome::first_result::<G>(d));
        });
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        match chunk::single::<G>(&args, self.max_frame, deliver) {
            Ok(mut job) => {
                job.cancelled = Some(Arc::clone(&flag));
                job.cancel_kills = true;
                job.entry = self.entry;
                self.core.submit(job);
            }
            Err((e, deliver)) => deliver.send(Err(e)),
        }
        Task::new(slot, Some(self.core.canceller(flag)))
    }

    /// Submits every task of `tasks` now, in chunks; the [`Batch`] gives the results in input
    /// order.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_entry] fn add(a: i64, b: i64) -> i64 { a + b }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// let sums = pool.entry::<add>().batch([(1, 1), (2, 2), (3, 3)]);
    /// assert_eq!(sums.wait()?, [2, 4, 6]);
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// It does not fail itself: each task that fails has the error [`call`](Self::call)
    /// would return in its place, and fails alone. [`Batch::wait`] gives the first of them,
    /// [`Batch::wait_all`] each one.
    pub fn batch<I>(&self, tasks: I) -> Batch<G::Output>
    where
        I: IntoIterator<Item = G::Args>,
    {
        let tasks: Vec<G::Args> = tasks.into_iter().collect();
        let gather = Gather::new(tasks.len());
        let progress = Progress::start(self.progress, Some(tasks.len() as u64), self.name);
        let size = self.chunking.for_len(tasks.len(), self.n_jobs).max(1);
        let mut start = 0usize;
        let mut chunk = ChunkEncoder::new(self.max_frame);
        for (i, args) in tasks.iter().enumerate() {
            match chunk.push::<G>(args) {
                Err(e) => {
                    // A task that cannot be sent fails alone; its chunk goes on without it.
                    let full = std::mem::replace(&mut chunk, ChunkEncoder::new(self.max_frame));
                    self.submit_chunk(full, &gather, start, &progress);
                    gather.fill_at(i, |put| put(0, Err(e)));
                    progress.inc(1);
                    start = i + 1;
                    continue;
                }
                Ok(Some(full)) => {
                    // The frame limit closed the chunk before this task, which starts the next.
                    self.submit_chunk(full, &gather, start, &progress);
                    start = i;
                }
                Ok(None) => {}
            }
            if chunk.count() as usize >= size {
                let full = std::mem::replace(&mut chunk, ChunkEncoder::new(self.max_frame));
                self.submit_chunk(full, &gather, start, &progress);
                start = i + 1;
            }
        }
        self.submit_chunk(chunk, &gather, start, &progress);
        Batch::new(gather)
    }

    fn submit_chunk(
        &self,
        chunk: ChunkEncoder,
        gather: &Arc<Gather<G::Output>>,
        start: usize,
        progress: &Progress,
    ) {
        let start = start as u64;
        let to = Target {
            core: self.core,
            chunking: &self.chunking,
            entry: self.entry,
        };
        chunk::submit::<G, _>(to, chunk, gather, start, progress, None);
    }

    /// Runs the tasks of `tasks` as it is iterated, yielding results in input order. The input
    /// is read lazily and a bounded number of tasks is in flight, so an endless input runs in
    /// constant memory. Dropping the iterator cancels the tasks not yet started.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_entry] fn add(a: i64, b: i64) -> i64 { a + b }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// let sums = pool.entry::<add>().map((1..=3).map(|i| (i, 10)));
    /// assert_eq!(sums.collect::<Result<Vec<i64>, _>>()?, [11, 12, 13]);
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// It does not fail itself: it yields, in the failed task's place, the error
    /// [`call`](Self::call) would return, and goes on with the next tasks.
    pub fn map<I>(&self, tasks: I) -> Map<'p, G, I::IntoIter>
    where
        I: IntoIterator<Item = G::Args>,
    {
        Map::new(self.stream_source(), tasks.into_iter(), true)
    }

    /// Like [`map`](Self::map), but yields results as they complete.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # #[pool_entry] fn add(a: i64, b: i64) -> i64 { a + b }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(2)?;
    /// let mut sums: Vec<i64> = pool.entry::<add>().map_unordered([(1, 2), (3, 4)])
    ///     .collect::<Result<_, _>>()?;
    /// sums.sort();                                       // they came in any order
    /// assert_eq!(sums, [3, 7]);
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// It does not fail itself: it yields each failed task's error, as [`map`](Self::map)
    /// does, when that task ends.
    pub fn map_unordered<I>(&self, tasks: I) -> Map<'p, G, I::IntoIter>
    where
        I: IntoIterator<Item = G::Args>,
    {
        Map::new(self.stream_source(), tasks.into_iter(), false)
    }

    fn stream_source(&self) -> StreamSource<'p> {
        StreamSource {
            core: self.core,
            chunking: Arc::clone(&self.chunking),
            window: self.stream_window,
            n_jobs: self.n_jobs,
            max_frame: self.max_frame,
            progress: self.progress,
            name: self.name,
            entry: self.entry,
        }
    }
}

/// Settings for a [`ProcessPool`]; see [`ProcessPool::builder`].
///
/// Each setting takes the builder and returns it, so settings chain; nothing is checked or
/// started until [`build`](Builder::build), which refuses a setting that is not allowed with
/// an [`Error::InvalidConfig`] naming it.
///
/// # Timeouts
///
/// Every timeout setting ([`task_timeout`](Self::task_timeout),
/// [`init_timeout`](Self::init_timeout), [`exit_timeout`](Self::exit_timeout),
/// [`host_timeout`](Self::host_timeout)) follows one rule: a duration too large to add to the
/// current time, such as `Duration::MAX`, means **no limit** (a task that never times out, an
/// initializer or exit hook waited for as long as it runs). Zero, and for `host_timeout`
/// anything under a second, is refused with [`Error::InvalidConfig`].
///
/// ```
/// # use ppool::{pool_entry, ProcessPool};
/// # use std::time::Duration;
/// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
/// # ppool::main! { fn main() -> Result<(), ppool::Error> {
/// let pool = ProcessPool::<square>::builder()
///     .n_jobs(1)
///     .task_timeout(Duration::MAX)    // no limit, as if unset
///     .exit_timeout(Duration::MAX)    // wait for the exit hook, however long it runs
///     .build()?;
/// assert_eq!(pool.call(3)?, 9);
/// # Ok(()) } }
/// ```
///
/// ```
/// # use ppool::{pool_entry, ProcessPool};
/// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
/// # ppool::main! { fn main() -> Result<(), ppool::Error> {
/// let pool = ProcessPool::<square>::builder()
///     .n_jobs(-1)
///     .name("squares")
///     .env("OMP_NUM_THREADS", "1")
///     .max_tasks_per_worker(1000)
///     .task_timeout(std::time::Duration::from_secs(30))
///     .build()?;
/// assert_eq!(pool.call(3)?, 9);
/// # Ok(()) } }
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder<F: Entry> {
    n_jobs: NJobs,
    name: Option<String>,
    start: bool,
    debug: bool,
    env: Vec<(OsString, OsString)>,
    disable_gpu: bool,
    max_tasks_per_worker: Option<u64>,
    task_timeout: Option<Duration>,
    memory_limit: Option<u64>,
    retries: u32,
    chunk_size: Option<usize>,
    max_frame: usize,
    initializer: Option<(&'static str, Result<Vec<u8>, Error>)>,
    on_exit: Option<(&'static str, Result<Vec<u8>, Error>)>,
    cpu_affinity: Vec<usize>,
    forward_stderr: bool,
    transport: Transport,
    /// `n_jobs` was called: with remote hosts, local workers are only started if it was.
    n_jobs_set: bool,
    remotes: Vec<Remote>,
    host_timeout: Duration,
    init_timeout: Duration,
    exit_timeout: Duration,
    progress: progress::Mode,
    stream_window: Option<usize>,
    _entry: PhantomData<fn() -> F>,
}

impl<F: Entry> std::fmt::Debug for Builder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("entry", &F::NAME)
            .field("n_jobs", &self.n_jobs)
            .field("name", &self.name)
            .field("start", &self.start)
            .field("debug", &self.debug)
            .finish_non_exhaustive()
    }
}

impl<F: Entry> Builder<F> {
    fn new() -> Self {
        Builder {
            n_jobs: NJobs::from(-1),
            name: None,
            start: true,
            debug: false,
            env: Vec::new(),
            disable_gpu: true,
            max_tasks_per_worker: None,
            task_timeout: None,
            memory_limit: None,
            retries: 0,
            chunk_size: None,
            max_frame: DEFAULT_MAX_FRAME,
            initializer: None,
            on_exit: None,
            cpu_affinity: Vec::new(),
            forward_stderr: true,
            transport: Transport::default(),
            n_jobs_set: false,
            remotes: Vec::new(),
            host_timeout: DEFAULT_HOST_TIMEOUT,
            init_timeout: DEFAULT_INIT_TIMEOUT,
            exit_timeout: DEFAULT_EXIT_TIMEOUT,
            progress: progress::Mode::Off,
            stream_window: None,
            _entry: PhantomData,
        }
    }

    /// The number of workers: `-1` for every CPU (the default), a count `n >= 1` (clamped to
    /// the CPUs), or a share `0.0 < f <= 1.0` of the CPUs (at least one).
    ///
    /// [`build`](Self::build) refuses any other value with [`Error::InvalidConfig`] (see
    /// [`NJobs`]). See [`Builder`] for an example.
    pub fn n_jobs(mut self, n_jobs: impl Into<NJobs>) -> Self {
        self.n_jobs = n_jobs.into();
        self.n_jobs_set = true;
        self
    }

    /// Adds workers on other hosts (see [`Remote`]). A pool with remote hosts has local
    /// workers only if [`n_jobs`](Self::n_jobs) asks for them; [`ProcessPool::n_jobs`]
    /// counts them all.
    ///
    /// See [`Remote`] for an example.
    pub fn remote(mut self, remote: Remote) -> Self {
        self.remotes.push(remote);
        self
    }

    /// How long a remote host may stay silent before it counts as lost (default 30 s:
    /// generous, since a false alarm fails the tasks it held). Its agent and the pool ping
    /// each other about every second, so only a dead host or a cut link stays silent.
    ///
    /// [`build`](Self::build) refuses less than one second with [`Error::InvalidConfig`];
    /// `Duration::MAX` means no limit (see [Timeouts](Builder#timeouts)). See [`Remote`] for an
    /// example.
    pub fn host_timeout(mut self, timeout: Duration) -> Self {
        self.host_timeout = timeout;
        self
    }

    /// Names the pool's threads and log lines. Defaults to the entry's name.
    ///
    /// [`build`](Self::build) refuses an empty name, one longer than 4096 bytes or with a NUL
    /// byte, with [`Error::InvalidConfig`]. See [`Builder`] for an example.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Whether `build` starts the workers (the default), or [`ProcessPool::start`] will.
    ///
    /// See [`ProcessPool::start`] for an example.
    pub fn start(mut self, start: bool) -> Self {
        self.start = start;
        self
    }

    /// Runs tasks in this process, on one thread, through the same API: for debuggers and
    /// for readable panics.
    ///
    /// [`build`](Self::build) refuses it, with [`Error::InvalidConfig`], together with remote
    /// hosts or the settings a process is needed for: `task_timeout`, `worker_memory_limit`,
    /// `cpu_affinity` and `env`. See [`Builder`] for an example.
    pub fn debug(mut self, debug: bool) -> Self {
        self.debug = debug;
        self
    }

    /// Sets an environment variable for the workers.
    ///
    /// [`build`](Self::build) refuses an empty name, a name with `=` or NUL, or a value with
    /// NUL, with [`Error::InvalidConfig`]. See [`Builder`] for an example.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Hides GPUs from the workers with `CUDA_VISIBLE_DEVICES=-1` (the default: true).
    ///
    /// See [`Builder`] for an example.
    pub fn disable_gpu(mut self, disable: bool) -> Self {
        self.disable_gpu = disable;
        self
    }

    /// Replaces a worker after it has run `n` tasks (`maxtasksperchild`).
    ///
    /// [`build`](Self::build) refuses `0` with [`Error::InvalidConfig`]. See [`Builder`] for an
    /// example.
    pub fn max_tasks_per_worker(mut self, n: u64) -> Self {
        self.max_tasks_per_worker = Some(n);
        self
    }

    /// Kills and replaces a worker whose task runs longer than `timeout`; the task fails
    /// with [`Error::Timeout`]. Unless a `chunk_size` is set, tasks then travel one by one.
    ///
    /// [`build`](Self::build) refuses a zero timeout with [`Error::InvalidConfig`];
    /// `Duration::MAX` means no limit (see [Timeouts](Builder#timeouts)). See [`Builder`] for an
    /// example.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Kills and replaces a worker whose resident memory grows past `bytes`; its task fails
    /// with [`Error::MemoryLimit`].
    ///
    /// [`build`](Self::build) refuses `0`, or a pool with remote hosts, with
    /// [`Error::InvalidConfig`]. See [`Builder`] for an example.
    pub fn worker_memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// How long a worker's initializer may run (default 5 minutes). A worker whose
    /// initializer runs longer is killed, and `build()` (or its replacement) fails with
    /// [`Error::Spawn`] saying so.
    ///
    /// [`build`](Self::build) refuses a zero timeout with [`Error::InvalidConfig`];
    /// `Duration::MAX` means no limit (see [Timeouts](Builder#timeouts)). See [`Builder`] for an
    /// example.
    pub fn init_timeout(mut self, timeout: Duration) -> Self {
        self.init_timeout = timeout;
        self
    }

    /// How long a worker's exit hook (`worker_exit`) may run at `join` (default 60 s); a
    /// worker still in it then is killed, and its hook's result is missing.
    ///
    /// [`build`](Self::build) refuses a zero timeout with [`Error::InvalidConfig`];
    /// `Duration::MAX` means no limit (see [Timeouts](Builder#timeouts)). See [`Builder`] for an
    /// example.
    pub fn exit_timeout(mut self, timeout: Duration) -> Self {
        self.exit_timeout = timeout;
        self
    }

    /// Runs a task again, up to `n` times on a fresh worker, when its worker died under it.
    /// Panics and timeouts are not retried. Default 0.
    ///
    /// See [`Builder`] for an example.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Sends tasks of `batch` and `map` in chunks of `n` instead of the adaptive size.
    ///
    /// [`build`](Self::build) refuses `0` with [`Error::InvalidConfig`]; see
    /// [`build`](Self::build) for an example.
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.chunk_size = Some(n);
        self
    }

    /// The largest frame a worker may send or receive, in bytes (default 1 GiB).
    ///
    /// [`build`](Self::build) refuses less than 1 KiB or more than `u32::MAX` bytes with
    /// [`Error::InvalidConfig`]. See [`Builder`] for an example.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Runs the entry `E` with `args` once in every worker, replacements too, before its
    /// first task (`multiprocessing`'s `initializer` and `initargs`).
    ///
    /// [`build`](Self::build) fails with [`Error::Codec`] when `args` cannot be encoded, with
    /// [`Error::InvalidConfig`] when they are larger than the
    /// [`max_frame_size`](Self::max_frame_size), and with [`Error::Spawn`] when the initializer
    /// panics, returns an `Err` or runs past the [`init_timeout`](Self::init_timeout). See
    /// [`Builder`] for an example.
    pub fn initializer<E: Entry>(mut self, args: E::Args) -> Self {
        self.initializer = Some((E::NAME, encode_args::<E>(&args)));
        self
    }

    /// Runs the entry `E` with `args` in every worker that exits gracefully (at
    /// [`join`](ProcessPool::join), or when recycled by `max_tasks_per_worker`), like mpire's
    /// `worker_exit`; collect what it returned with
    /// [`ProcessPool::worker_exit_results`].
    ///
    /// [`build`](Self::build) fails with [`Error::Codec`] when `args` cannot be encoded, and
    /// with [`Error::InvalidConfig`] when they are larger than the
    /// [`max_frame_size`](Self::max_frame_size). See [`ProcessPool::worker_exit_results`] for
    /// an example.
    pub fn worker_exit<E: Entry>(mut self, args: E::Args) -> Self {
        self.on_exit = Some((E::NAME, encode_args::<E>(&args)));
        self
    }

    /// Pins worker `i` to CPU `cpus[i % cpus.len()]` (mpire's `cpu_ids`).
    ///
    /// [`build`](Self::build) refuses, with [`Error::InvalidConfig`], a CPU this process may
    /// not run on, or a pool with remote hosts. See [`Builder`] for an example.
    pub fn cpu_affinity(mut self, cpus: impl IntoIterator<Item = usize>) -> Self {
        self.cpu_affinity = cpus.into_iter().collect();
        self
    }

    /// Tags every line a worker writes to stderr with `[pool:index]` (the default: true).
    /// With `false`, workers write to this process's stderr directly.
    ///
    /// See [`Builder`] for an example.
    pub fn forward_stderr(mut self, forward: bool) -> Self {
        self.forward_stderr = forward;
        self
    }

    /// Chooses the channel to local workers: shared memory (the default) or pipes. Shared
    /// memory is faster, and when a worker dies it tells exactly which task was running, so
    /// only that one fails; over pipes, every task of the dead worker's job that has no
    /// result yet fails (none runs twice either way, unless `retries` allows it).
    ///
    /// See [`Transport`] for an example.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Draws a progress bar on stderr for every `batch` and `map` of the pool: done and total,
    /// rate and ETA. It stays off when stderr is not a terminal; see
    /// [`force_progress_bar`](Self::force_progress_bar).
    ///
    /// See [`Builder`] for an example.
    #[cfg(feature = "progress")]
    #[cfg_attr(docsrs, doc(cfg(feature = "progress")))]
    pub fn progress_bar(mut self, on: bool) -> Self {
        self.progress = if on {
            progress::Mode::Auto
        } else {
            progress::Mode::Off
        };
        self
    }

    /// Draws the progress bar even when stderr is not a terminal (as one line a second).
    ///
    /// See [`Builder`] for an example.
    #[cfg(feature = "progress")]
    #[cfg_attr(docsrs, doc(cfg(feature = "progress")))]
    pub fn force_progress_bar(mut self, on: bool) -> Self {
        self.progress = if on {
            progress::Mode::Forced
        } else {
            progress::Mode::Off
        };
        self
    }

    /// The most tasks a `map` stream keeps submitted but not yet yielded. By default four
    /// chunks a worker.
    ///
    /// [`build`](Self::build) refuses `0` with [`Error::InvalidConfig`]. See [`Builder`] for an
    /// example.
    pub fn stream_window(mut self, tasks: usize) -> Self {
        self.stream_window = Some(tasks);
        self
    }

    /// Checks the settings and builds the pool (and starts it, unless `start(false)`).
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Error};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::builder().n_jobs(1).chunk_size(8).build()?;
    /// assert_eq!(pool.batch(0..20).wait()?.len(), 20);
    /// let bad = ProcessPool::<square>::builder().chunk_size(0).build();
    /// assert!(matches!(bad, Err(Error::InvalidConfig { setting: "chunk_size", .. })));
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidConfig`] naming the first setting that is not allowed (each
    ///   setting's documentation says what is refused), a [`Remote`] that is not complete
    ///   (`ssh` and `command` hosts without [`workers`](Remote::workers), say), or
    ///   [`Remote::slurm`] outside a Slurm allocation; no worker is started then;
    /// - [`Error::DuplicateEntry`] when the name of `F`, of the initializer or of the exit
    ///   hook is not unique in the binary;
    /// - [`Error::Codec`] when the initializer's or exit hook's arguments cannot be encoded;
    /// - [`Error::Spawn`] when a worker cannot start: its process cannot be started, its
    ///   initializer panicked, returned an `Err` or ran past the
    ///   [`init_timeout`](Self::init_timeout), or a remote host cannot be reached or runs
    ///   another build of this program.
    pub fn build(self) -> Result<ProcessPool<F>> {
        if self.debug && !self.remotes.is_empty() {
            return Err(Error::config(
                "remote",
                "debug mode runs tasks in this process; it has no remote workers",
            ));
        }
        if !self.remotes.is_empty() {
            for (set, setting) in [
                (self.memory_limit.is_some(), "worker_memory_limit"),
                (!self.cpu_affinity.is_empty(), "cpu_affinity"),
            ] {
                if set {
                    return Err(Error::config(
                        setting,
                        "is not supported yet in a pool with remote hosts",
                    ));
                }
            }
        }
        for (timeout, setting) in [
            (self.init_timeout, "init_timeout"),
            (self.exit_timeout, "exit_timeout"),
        ] {
            if timeout.is_zero() {
                return Err(Error::config(setting, "must be longer than zero"));
            }
        }
        if self.host_timeout < Duration::from_secs(1) {
            return Err(Error::config("host_timeout", "must be at least one second"));
        }
        let hosts = if self.remotes.is_empty() {
            Vec::new()
        } else {
            let program = crate::relaunch::program_path()?.into_os_string();
            remote::plan(
                &self.remotes,
                &program,
                self.host_timeout,
                &mut remote::read_allocation,
            )?
        };
        let n_jobs = if !hosts.is_empty() && !self.n_jobs_set {
            0
        } else if self.debug {
            // The count is checked as for processes, though debug mode runs one worker.
            self.n_jobs.resolve(config::cpus())?;
            for (set, setting) in [
                (self.task_timeout.is_some(), "task_timeout"),
                (self.memory_limit.is_some(), "worker_memory_limit"),
                (!self.cpu_affinity.is_empty(), "cpu_affinity"),
                (!self.env.is_empty(), "env"),
            ] {
                if set {
                    return Err(Error::config(
                        setting,
                        "cannot be honoured in debug mode, where tasks run in this process; \
                         leave it unset with debug(true)",
                    ));
                }
            }
            1
        } else {
            self.n_jobs.resolve(config::cpus())?
        };
        let name = self
            .name
            .unwrap_or_else(|| F::NAME.rsplit("::").next().unwrap_or(F::NAME).to_string());
        if name.is_empty() || name.contains('\0') || name.len() > MAX_NAME {
            return Err(Error::config(
                "name",
                format!("must be 1 to {MAX_NAME} bytes, with no NUL byte"),
            ));
        }
        for (key, value) in &self.env {
            let k = key.as_encoded_bytes();
            if k.is_empty()
                || k.contains(&b'=')
                || k.contains(&0)
                || value.as_encoded_bytes().contains(&0)
            {
                return Err(Error::config(
                    "env",
                    format!("{key:?} is not a valid variable name (empty, or with `=` or NUL)"),
                ));
            }
        }
        if self.max_tasks_per_worker == Some(0) {
            return Err(Error::config("max_tasks_per_worker", "must be at least 1"));
        }
        if self.task_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::config("task_timeout", "must be longer than zero"));
        }
        if self.memory_limit == Some(0) {
            return Err(Error::config(
                "worker_memory_limit",
                "must be more than zero bytes",
            ));
        }
        if self.chunk_size == Some(0) {
            return Err(Error::config("chunk_size", "must be at least 1"));
        }
        if self.stream_window == Some(0) {
            return Err(Error::config("stream_window", "must be at least 1"));
        }
        if let Some(&cpu) = self
            .cpu_affinity
            .iter()
            .find(|&&c| c >= rustix::thread::CpuSet::MAX_CPU)
        {
            return Err(Error::config(
                "cpu_affinity",
                format!(
                    "CPU {cpu} is out of range (at most {})",
                    rustix::thread::CpuSet::MAX_CPU - 1
                ),
            ));
        }
        if !self.cpu_affinity.is_empty() {
            if let Ok(allowed) = rustix::thread::sched_getaffinity(None) {
                if let Some(&cpu) = self.cpu_affinity.iter().find(|&&c| !allowed.is_set(c)) {
                    let usable: Vec<String> = (0..rustix::thread::CpuSet::MAX_CPU)
                        .filter(|&c| allowed.is_set(c))
                        .map(|c| c.to_string())
                        .collect();
                    return Err(Error::config(
                        "cpu_affinity",
                        format!(
                            "CPU {cpu} is not one this process may run on (it may use CPUs {})",
                            usable.join(", ")
                        ),
                    ));
                }
            }
        }
        if self.max_frame < 1024 || self.max_frame > u32::MAX as usize {
            return Err(Error::config(
                "max_frame_size",
                format!("must be between 1 KiB and {} bytes", u32::MAX),
            ));
        }
        entry::find(F::NAME)?;
        let initializer = match self.initializer {
            None => None,
            Some((name, encoded)) => {
                entry::find(name)?;
                Some((name, encoded?))
            }
        };
        let on_exit = match self.on_exit {
            None => None,
            Some((name, encoded)) => {
                entry::find(name)?;
                Some((name, encoded?))
            }
        };
        for (hook, setting) in [(&initializer, "initializer"), (&on_exit, "worker_exit")] {
            if let Some((name, args)) = hook {
                // Its frame: a kind byte, then the entry's name and the arguments, each with a
                // 4-byte length.
                let size = 9 + name.len() + args.len();
                if size > self.max_frame {
                    return Err(Error::config(
                        setting,
                        format!(
                            "its arguments need a frame of {size} bytes, more than the pool's \
                             max_frame_size of {} bytes",
                            self.max_frame
                        ),
                    ));
                }
            }
        }
        let chunk_size = match (self.chunk_size, self.task_timeout) {
            (Some(n), _) => Some(n),
            (None, Some(_)) => Some(1),
            (None, None) => None,
        };
        let chunking = Arc::new(Chunking::new(chunk_size, self.max_tasks_per_worker));
        // The subscriber of the thread that builds the pool (its own, or the global one) gets
        // the events of the entries, up to the most verbose level it wants.
        let dispatch = tracing::dispatcher::get_default(tracing::Dispatch::clone);
        let has_subscriber = !dispatch.is::<tracing::subscriber::NoSubscriber>();
        let trace = if has_subscriber && self.forward_stderr && !self.debug {
            crate::trace::filter_byte(tracing::level_filters::LevelFilter::current())
        } else {
            0
        };
        let spec = WorkerSpec {
            pool: name.clone(),
            entry: F::NAME,
            max_frame: self.max_frame,
            initializer,
            on_exit,
            init_timeout: self.init_timeout,
            exit_timeout: self.exit_timeout,
            token: random_token(),
            trace,
        };
        let config = LaunchConfig {
            transport: self.transport,
            pool: name,
            max_frame: self.max_frame,
            env: self.env,
            disable_gpu: self.disable_gpu,
            cpu_affinity: self.cpu_affinity,
            forward_stderr: self.forward_stderr,
            dispatch: (trace > 0).then_some(dispatch),
        };
        let (launch, all_jobs) =
            transport::launcher(config, self.debug, n_jobs, self.host_timeout, hosts);
        let settings = Settings {
            n_jobs: all_jobs,
            debug: self.debug,
            max_tasks_per_worker: self.max_tasks_per_worker,
            task_timeout: self.task_timeout,
            memory_limit: self.memory_limit,
            retries: self.retries,
        };
        let pool = ProcessPool {
            core: Core::new(spec, settings, launch),
            chunking,
            stream_window: self.stream_window,
            progress: self.progress,
            _entry: PhantomData,
        };
        if self.start {
            pool.start()?;
        }
        Ok(pool)
    }
}

/// The longest pool name: it travels in every worker's greeting, which a worker accepts up to
/// 64 KiB before it knows its pool.
const MAX_NAME: usize = 4096;

/// How long an initializer may run, unless `init_timeout` says otherwise.
const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long an exit hook may run, unless `exit_timeout` says otherwise.
const DEFAULT_EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a remote host may stay silent, unless `host_timeout` says otherwise.
const DEFAULT_HOST_TIMEOUT: Duration = Duration::from_secs(30);

fn encode_args<E: Entry>(args: &E::Args) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    crate::entry::encode_into(args, &mut bytes)
        .map(|()| bytes)
        .map_err(|message| Error::Codec {
            entry: E::NAME.to_string(),
            action: "encode the arguments",
            message,
        })
}

/// A number no other process can guess, to pair a worker with its pool.
fn random_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}
