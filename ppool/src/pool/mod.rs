//! The typed pool: [`ProcessPool<F>`] and its views by other entries, [`EntryView`]. With its
//! [`Builder`], the only generic layer; everything beneath it moves bytes.

use crate::batch::{Batch, Gather};
pub(crate) mod builder;

use crate::chunk::size::Chunking;
use crate::chunk::{self, ChunkEncoder, Target};
use crate::config::{NJobs, ThisProcess, World};
use crate::entry::{self, Entry};
use crate::error::{Error, Result};
use crate::hosts::Remote;
use crate::insights::Insights;
use crate::outcome;
use crate::progress_bar::{self, Bar};
use crate::protocol;
use crate::share::{Shared, SharedBytes};
use crate::stream::{Map, StreamSource};
use crate::supervisor::{Core, Deliver, Delivery};
use crate::task::{OneShot, Task};
pub use builder::Builder;
use serde::Serialize;
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
    progress: progress_bar::Mode,
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
    /// The pool that [`Builder::build`] assembled, not started yet.
    pub(crate) fn assemble(
        core: Core,
        chunking: Arc<Chunking>,
        stream_window: Option<usize>,
        progress: progress_bar::Mode,
    ) -> Self {
        ProcessPool {
            core,
            chunking,
            stream_window,
            progress,
            _entry: PhantomData,
        }
    }

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
        self.core.n_workers()
    }

    /// Retires the remote host `name` (as [`Insights::hosts`](crate::Insights::hosts) names
    /// it): it gets no new task, the tasks it runs finish and their results are delivered,
    /// then its workers (with their exit hooks) and its agent end. Returns once they have
    /// ended. A task under `retries` is not run again because of it: nothing failed.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Remote};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::builder()
    ///     .n_jobs(1)
    ///     .remote(Remote::command(["env", "HOST=leaving"]).workers(2))
    ///     .build()?;
    /// let name = pool.insights().hosts[1].name.clone();
    /// pool.retire_host(&name)?;
    /// assert_eq!(pool.batch(0..10).wait()?.len(), 10); // on the local worker
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when the pool has no remote host of that name;
    /// [`Error::Closed`] or [`Error::NotStarted`] when the pool does not run.
    pub fn retire_host(&self, name: &str) -> Result<()> {
        self.core.retire_host(name)
    }

    /// Adds the workers of `remote` to the running pool: its agent and workers start (as at
    /// [`build`](Builder::build)), and queued tasks flow to them as soon as they are ready.
    /// Works from any thread, during a batch or a stream. [`n_jobs`](Self::n_jobs) counts
    /// them from then on.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Remote};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::new(1)?;
    /// pool.add_remote(Remote::command(["env", "HOST=joined"]).workers(2))?;
    /// assert_eq!(pool.n_jobs(), 3);
    /// assert_eq!(pool.batch(0..10).wait()?.len(), 10);
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] naming the host and the reason when its workers cannot start (those
    /// that did start stay in the pool); [`Error::InvalidConfig`] for a `Remote` that
    /// [`Builder::remote`] would refuse, or in debug mode; [`Error::Closed`] or
    /// [`Error::NotStarted`] when the pool does not run.
    pub fn add_remote(&self, remote: Remote) -> Result<()> {
        let program = ThisProcess.program()?;
        let hosts = crate::hosts::plan(
            &[remote],
            &program,
            self.core.settings().host_timeout,
            &mut || ThisProcess.allocation(),
        )?;
        self.core.add_hosts(hosts)
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

    /// Shares `value` with the pool's workers: it is encoded once, into memory that every
    /// worker of a host maps read-only, and a task names it by the returned handle, a small
    /// reference, instead of carrying it. A remote host is sent its bytes once, when the
    /// first task that names it goes there. The value is freed everywhere once the last
    /// clone of the handle is dropped and no task that names it is queued or running. A value
    /// for the initializer is shared with the builder instead: see [`Builder::share`].
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Shared};
    /// #[pool_entry]
    /// fn nth(table: Shared<Vec<u64>>, i: usize) -> u64 {
    ///     table[i] // decoded once per worker, then kept
    /// }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<nth>::new(2)?;
    /// let table = pool.share((0..1_000u64).map(|x| x * x).collect::<Vec<_>>())?;
    /// let got = pool.batch((0..10).map(|i| (table.clone(), i))).wait()?;
    /// assert_eq!(got[9], 81);
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Share`] when the value's `Serialize` fails, or when there is not enough
    /// memory for it here (checked before storing it) or memfds are refused; [`Error::Closed`]
    /// or [`Error::NotStarted`] when the pool cannot take tasks.
    pub fn share<T>(&self, value: T) -> Result<Shared<T>>
    where
        T: Serialize + Send + Sync + 'static,
    {
        self.view::<F>().share(value)
    }

    /// Shares `bytes` with the pool's workers as they are, like [`share`](Self::share): a
    /// task's [`SharedBytes`] dereferences to them in a read-only mapping, never copied.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, SharedBytes};
    /// #[pool_entry]
    /// fn count(text: SharedBytes, byte: u8) -> usize {
    ///     text.iter().filter(|&&b| b == byte).count()
    /// }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<count>::new(2)?;
    /// let text = pool.share_bytes(b"one\ntwo\nthree\n".to_vec())?;
    /// assert_eq!(pool.call((text.clone(), b'\n'))?, 3);
    /// # Ok(()) } }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`share`](Self::share).
    pub fn share_bytes(&self, bytes: Vec<u8>) -> Result<SharedBytes> {
        self.view::<F>().share_bytes(bytes)
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
    progress: progress_bar::Mode,
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
    /// [`ProcessPool::share`], from a view.
    ///
    /// # Errors
    ///
    /// As for [`ProcessPool::share`].
    pub fn share<T>(&self, value: T) -> Result<Shared<T>>
    where
        T: Serialize + Send + Sync + 'static,
    {
        self.core.store()?.share(value).map_err(Error::share)
    }

    /// [`ProcessPool::share_bytes`], from a view.
    ///
    /// # Errors
    ///
    /// As for [`ProcessPool::share`].
    pub fn share_bytes(&self, bytes: Vec<u8>) -> Result<SharedBytes> {
        self.core.store()?.share_bytes(bytes).map_err(Error::share)
    }

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
        let progress = Bar::start(self.progress, Some(tasks.len() as u64), self.name);
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
        progress: &Bar,
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
