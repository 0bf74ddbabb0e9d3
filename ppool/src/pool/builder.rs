//! The [`Builder`] of a [`ProcessPool`]: it gathers the settings, has them checked by
//! [`Config::validate`](crate::config::Config::validate), and assembles the pool from what
//! passed.

use crate::chunk::size::Chunking;
use crate::config::{Config, NJobs, ThisProcess};
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::hosts::Remote;
use crate::pool::ProcessPool;
use crate::progress_bar;
use crate::share::{Shared, SharedBytes, Stored};
use crate::supervisor::{Core, HookValues, PoolStore, Settings, WorkerSpec};
use crate::transport::{self, LaunchConfig, Transport};
use serde::Serialize;
use std::ffi::OsString;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

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
    config: Config,
    /// The store of the pool it builds: values shared with the builder are the pool's.
    store: PoolStore,
    /// The shared values that the initializer's arguments name, and the exit hook's.
    init_values: Vec<Arc<Stored>>,
    exit_values: Vec<Arc<Stored>>,
    _entry: PhantomData<fn() -> F>,
}

impl<F: Entry> std::fmt::Debug for Builder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("entry", &F::NAME)
            .field("n_jobs", &self.config.n_jobs)
            .field("name", &self.config.name)
            .field("start", &self.config.start)
            .field("debug", &self.config.debug)
            .finish_non_exhaustive()
    }
}

impl<F: Entry> Builder<F> {
    pub(crate) fn new() -> Self {
        Builder {
            config: Config::default(),
            store: PoolStore::new(random_token()),
            init_values: Vec::new(),
            exit_values: Vec::new(),
            _entry: PhantomData,
        }
    }

    /// The number of workers: `-1` for every CPU (the default), a count `n >= 1` (clamped to
    /// the CPUs), or a share `0.0 < f <= 1.0` of the CPUs (at least one).
    ///
    /// [`build`](Self::build) refuses any other value with [`Error::InvalidConfig`] (see
    /// [`NJobs`]). See [`Builder`] for an example.
    pub fn n_jobs(mut self, n_jobs: impl Into<NJobs>) -> Self {
        self.config.n_jobs = n_jobs.into();
        self.config.n_jobs_set = true;
        self
    }

    /// Adds workers on other hosts (see [`Remote`]). A pool with remote hosts has local
    /// workers only if [`n_jobs`](Self::n_jobs) asks for them; [`ProcessPool::n_jobs`]
    /// counts them all.
    ///
    /// See [`Remote`] for an example.
    pub fn remote(mut self, remote: Remote) -> Self {
        self.config.remotes.push(remote);
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
        self.config.host_timeout = timeout;
        self
    }

    /// Names the pool's threads and log lines. Defaults to the entry's name.
    ///
    /// [`build`](Self::build) refuses an empty name, one longer than 4096 bytes or with a NUL
    /// byte, with [`Error::InvalidConfig`]. See [`Builder`] for an example.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = Some(name.into());
        self
    }

    /// Whether `build` starts the workers (the default), or [`ProcessPool::start`] will.
    ///
    /// See [`ProcessPool::start`] for an example.
    pub fn start(mut self, start: bool) -> Self {
        self.config.start = start;
        self
    }

    /// Runs tasks in this process, on one thread, through the same API: for debuggers and
    /// for readable panics.
    ///
    /// [`build`](Self::build) refuses it, with [`Error::InvalidConfig`], together with remote
    /// hosts or the settings a process is needed for: `task_timeout`, `worker_memory_limit`,
    /// `cpu_affinity` and `env`. See [`Builder`] for an example.
    pub fn debug(mut self, debug: bool) -> Self {
        self.config.debug = debug;
        self
    }

    /// Sets an environment variable for the workers.
    ///
    /// [`build`](Self::build) refuses an empty name, a name with `=` or NUL, or a value with
    /// NUL, with [`Error::InvalidConfig`]. See [`Builder`] for an example.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.config.env.push((key.into(), value.into()));
        self
    }

    /// Hides GPUs from the workers with `CUDA_VISIBLE_DEVICES=-1` (the default: true).
    ///
    /// See [`Builder`] for an example.
    pub fn disable_gpu(mut self, disable: bool) -> Self {
        self.config.disable_gpu = disable;
        self
    }

    /// Lets [`build`](Self::build) succeed once `n` workers are ready, leaving out the hosts
    /// (or local workers) that failed to start within their timeouts: each is a `tracing`
    /// warning and an entry of [`Insights::hosts`](crate::Insights::hosts) with its error,
    /// and the pool goes on without it. Without it, `build` fails when any worker fails to
    /// start.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Remote};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::builder()
    ///     .n_jobs(2)
    ///     .remote(Remote::command(["/nonexistent/launcher"]).workers(4))
    ///     .min_workers(2)
    ///     .build()?;
    /// assert_eq!(pool.call(3)?, 9);
    /// assert!(pool.insights().hosts.iter().any(|h| h.error.is_some()));
    /// # Ok(()) } }
    /// ```
    ///
    /// [`build`](Self::build) refuses `0`, or more than the pool's workers, with
    /// [`Error::InvalidConfig`].
    pub fn min_workers(mut self, n: usize) -> Self {
        self.config.min_workers = Some(n);
        self
    }

    /// Replaces a worker after it has run `n` tasks (`maxtasksperchild`).
    ///
    /// [`build`](Self::build) refuses `0` with [`Error::InvalidConfig`]. See [`Builder`] for an
    /// example.
    pub fn max_tasks_per_worker(mut self, n: u64) -> Self {
        self.config.max_tasks_per_worker = Some(n);
        self
    }

    /// Kills and replaces a worker whose task runs longer than `timeout`; the task fails
    /// with [`Error::Timeout`]. Unless a `chunk_size` is set, tasks then travel one by one.
    ///
    /// [`build`](Self::build) refuses a zero timeout with [`Error::InvalidConfig`];
    /// `Duration::MAX` means no limit (see [Timeouts](Builder#timeouts)). See [`Builder`] for an
    /// example.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.config.task_timeout = Some(timeout);
        self
    }

    /// Kills and replaces a worker whose own resident memory grows past `bytes` (shared memory,
    /// such as the pool's shared values, is not its own); its task fails with
    /// [`Error::MemoryLimit`]. On a remote host, its agent watches the host's workers and
    /// reports one past the limit.
    ///
    /// [`build`](Self::build) refuses `0` with [`Error::InvalidConfig`]. See [`Builder`] for
    /// an example.
    pub fn worker_memory_limit(mut self, bytes: u64) -> Self {
        self.config.memory_limit = Some(bytes);
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
        self.config.init_timeout = timeout;
        self
    }

    /// How long a worker's exit hook (`worker_exit`) may run at `join` (default 60 s); a
    /// worker still in it then is killed, and its hook's result is missing.
    ///
    /// [`build`](Self::build) refuses a zero timeout with [`Error::InvalidConfig`];
    /// `Duration::MAX` means no limit (see [Timeouts](Builder#timeouts)). See [`Builder`] for an
    /// example.
    pub fn exit_timeout(mut self, timeout: Duration) -> Self {
        self.config.exit_timeout = timeout;
        self
    }

    /// Tries a lost remote host again in the background (Julia's and dask's users ask for
    /// this): the slots of a host that was lost and could not be started again are retried
    /// after 1 s, then 2, 4, up to 60 s between tries, and its workers rejoin the pool when
    /// it answers. Without it, a host that failed to start three times in a row is set
    /// aside for good. Default off.
    ///
    /// ```
    /// # use ppool::{pool_entry, ProcessPool, Remote};
    /// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
    /// # ppool::main! { fn main() -> Result<(), ppool::Error> {
    /// let pool = ProcessPool::<square>::builder()
    ///     .remote(Remote::command(["env", "HOST=flaky"]).workers(2))
    ///     .rejoin(true)
    ///     .build()?;
    /// assert_eq!(pool.call(4)?, 16);
    /// # Ok(()) } }
    /// ```
    pub fn rejoin(mut self, rejoin: bool) -> Self {
        self.config.rejoin = rejoin;
        self
    }

    /// Runs a task again, up to `n` times on a fresh worker, when its worker died under it.
    /// Panics and timeouts are not retried. Default 0.
    ///
    /// See [`Builder`] for an example.
    pub fn retries(mut self, n: u32) -> Self {
        self.config.retries = n;
        self
    }

    /// Sends tasks of `batch` and `map` in chunks of `n` instead of the adaptive size.
    ///
    /// [`build`](Self::build) refuses `0` with [`Error::InvalidConfig`]; see
    /// [`build`](Self::build) for an example.
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.config.chunk_size = Some(n);
        self
    }

    /// The largest frame a worker may send or receive, in bytes (default 1 GiB).
    ///
    /// [`build`](Self::build) refuses less than 1 KiB or more than `u32::MAX` bytes with
    /// [`Error::InvalidConfig`]. See [`Builder`] for an example.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.max_frame = bytes;
        self
    }

    /// Shares `value` with the workers of the pool this builder builds, before the pool
    /// exists, so that the [`initializer`](Self::initializer) can take it: a model loaded
    /// once per host, not once per worker. The handle is the pool's, as one from
    /// [`ProcessPool::share`] is: the pool's tasks may name it too.
    ///
    /// ```
    /// use ppool::{pool_entry, ProcessPool, Shared};
    /// use std::sync::OnceLock;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Model {
    ///     weights: Vec<f32>,
    /// }
    ///
    /// /// The worker's model, kept by its initializer.
    /// static MODEL: OnceLock<Shared<Model>> = OnceLock::new();
    ///
    /// #[pool_entry]
    /// fn load(model: Shared<Model>) {
    ///     let _ = MODEL.set(model); // decoded here, once per worker
    /// }
    ///
    /// #[pool_entry]
    /// fn score(row: Vec<f32>) -> Option<f32> {
    ///     let model = MODEL.get()?;
    ///     Some(model.weights.iter().zip(&row).map(|(w, x)| w * x).sum())
    /// }
    ///
    /// ppool::main! {
    ///     fn main() -> Result<(), ppool::Error> {
    ///         let builder = ProcessPool::<score>::builder().n_jobs(2);
    ///         let model = builder.share(Model { weights: vec![0.5; 1 << 10] })?;
    ///         let pool = builder.initializer::<load>(model).build()?;
    ///         let scores = pool.batch((0..100).map(|i| vec![i as f32; 1 << 10])).wait()?;
    ///         assert_eq!(scores[2], Some(1024.0));
    ///         pool.join()
    ///     }
    /// }
    /// ```
    ///
    /// The value is encoded once and stored once per host, as with [`ProcessPool::share`].
    /// When the initializer or the exit hook ([`worker_exit`](Self::worker_exit)) names it, a
    /// remote host is sent its bytes before its first worker starts (so is a host that joins
    /// with [`ProcessPool::add_remote`], or comes back after it was lost), and the pool keeps
    /// it, handles or not, until [`join`](ProcessPool::join) or
    /// [`shutdown`](ProcessPool::shutdown) returns: every replacement runs the same
    /// initializer. A value no hook names is freed as one from `ProcessPool::share` is, once
    /// its last handle is dropped and no task names it.
    ///
    /// A value shared with a builder belongs to the pool it builds: another pool refuses it
    /// in a task, and another builder's [`build`](Self::build) refuses it in its initializer
    /// or exit hook, with [`Error::Share`].
    ///
    /// # Errors
    ///
    /// [`Error::Share`] when the value's `Serialize` fails, or when there is not enough
    /// memory for it here (checked before storing it) or memfds are refused.
    pub fn share<T>(&self, value: T) -> Result<Shared<T>>
    where
        T: Serialize + Send + Sync + 'static,
    {
        self.store.store().share(value).map_err(Error::share)
    }

    /// Shares `bytes` as they are with the workers of the pool this builder builds, like
    /// [`share`](Self::share): a [`SharedBytes`] that the initializer, the exit hook and the
    /// pool's tasks may take, which dereferences to the bytes in a read-only mapping, never
    /// copied.
    ///
    /// ```
    /// use ppool::{pool_entry, ProcessPool, SharedBytes};
    /// use std::sync::OnceLock;
    ///
    /// static LINES: OnceLock<usize> = OnceLock::new();
    ///
    /// #[pool_entry]
    /// fn index(text: SharedBytes) {
    ///     let _ = LINES.set(text.iter().filter(|&&b| b == b'\n').count());
    /// }
    ///
    /// #[pool_entry]
    /// fn lines() -> usize {
    ///     LINES.get().copied().unwrap_or(0)
    /// }
    ///
    /// ppool::main! {
    ///     fn main() -> Result<(), ppool::Error> {
    ///         let builder = ProcessPool::<lines>::builder().n_jobs(1);
    ///         let text = builder.share_bytes(b"one\ntwo\nthree\n".repeat(1000))?;
    ///         let pool = builder.initializer::<index>(text).build()?;
    ///         assert_eq!(pool.call(())?, 3000);
    ///         pool.join()
    ///     }
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`share`](Self::share).
    pub fn share_bytes(&self, bytes: Vec<u8>) -> Result<SharedBytes> {
        self.store.store().share_bytes(bytes).map_err(Error::share)
    }

    /// Runs the entry `E` with `args` once in every worker, replacements too, before its
    /// first task (`multiprocessing`'s `initializer` and `initargs`).
    ///
    /// `args` may hold values shared with this builder ([`share`](Self::share),
    /// [`share_bytes`](Self::share_bytes)): each host then stores a value once for all its
    /// workers, instead of each worker receiving a copy. See [`share`](Self::share) for an
    /// example.
    ///
    /// [`build`](Self::build) fails with [`Error::Codec`] when `args` cannot be encoded, with
    /// [`Error::Share`] when they hold a value shared with another builder or pool, with
    /// [`Error::InvalidConfig`] when they are larger than the
    /// [`max_frame_size`](Self::max_frame_size), and with [`Error::Spawn`] when the initializer
    /// panics, returns an `Err` or runs past the [`init_timeout`](Self::init_timeout). See
    /// [`Builder`] for an example.
    pub fn initializer<E: Entry>(mut self, args: E::Args) -> Self {
        let (encoded, values) = self.encode_hook::<E>(&args, "initializer");
        self.config.initializer = Some((E::NAME, encoded));
        self.init_values = values;
        self
    }

    /// Runs the entry `E` with `args` in every worker that exits gracefully (at
    /// [`join`](ProcessPool::join), or when recycled by `max_tasks_per_worker`), like mpire's
    /// `worker_exit`; collect what it returned with
    /// [`ProcessPool::worker_exit_results`].
    ///
    /// `args` may hold values shared with this builder, as the
    /// [`initializer`](Self::initializer)'s may.
    ///
    /// [`build`](Self::build) fails with [`Error::Codec`] when `args` cannot be encoded, with
    /// [`Error::Share`] when they hold a value shared with another builder or pool, and with
    /// [`Error::InvalidConfig`] when they are larger than the
    /// [`max_frame_size`](Self::max_frame_size). See [`ProcessPool::worker_exit_results`] for
    /// an example.
    pub fn worker_exit<E: Entry>(mut self, args: E::Args) -> Self {
        let (encoded, values) = self.encode_hook::<E>(&args, "exit hook");
        self.config.on_exit = Some((E::NAME, encoded));
        self.exit_values = values;
        self
    }

    /// Encodes the arguments of a hook (`what`: which one, for errors), with the shared
    /// values they name, each once; a value of another builder or pool is an error.
    fn encode_hook<E: Entry>(
        &self,
        args: &E::Args,
        what: &str,
    ) -> (Result<Vec<u8>>, Vec<Arc<Stored>>) {
        let (encoded, values) = crate::share::collect(|| encode_args::<E>(args));
        let token = self.store.token();
        if let Some(foreign) = values.iter().find(|v| v.token() != token) {
            let error = Error::Share {
                message: format!(
                    "the {what}'s arguments name shared value #{} of another pool: a value \
                     shared with one builder or pool can only be used by that pool's workers; \
                     share it with this builder",
                    foreign.id()
                ),
                source: None,
            };
            return (Err(error), Vec::new());
        }
        match encoded {
            Ok(bytes) => (Ok(bytes), values),
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// Pins worker `i` to CPU `cpus[i % cpus.len()]` (mpire's `cpu_ids`), on whichever host
    /// it runs: the CPUs are named on each host.
    ///
    /// [`build`](Self::build) refuses, with [`Error::InvalidConfig`], a CPU this process may
    /// not run on when local workers are pinned, and fails with [`Error::Spawn`] naming the
    /// host and the CPUs it has when a remote host lacks one. See [`Builder`] for an example.
    pub fn cpu_affinity(mut self, cpus: impl IntoIterator<Item = usize>) -> Self {
        self.config.cpu_affinity = cpus.into_iter().collect();
        self
    }

    /// Tags every line a worker writes to stderr with `[pool:index]` (the default: true).
    /// With `false`, workers write to this process's stderr directly.
    ///
    /// See [`Builder`] for an example.
    pub fn forward_stderr(mut self, forward: bool) -> Self {
        self.config.forward_stderr = forward;
        self
    }

    /// Chooses the channel to local workers: shared memory (the default) or pipes. Shared
    /// memory is faster, and when a worker dies it tells exactly which task was running, so
    /// only that one fails; over pipes, every task of the dead worker's job that has no
    /// result yet fails (none runs twice either way, unless `retries` allows it).
    ///
    /// See [`Transport`] for an example.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.config.transport = transport;
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
        self.config.progress = if on {
            progress_bar::Mode::Auto
        } else {
            progress_bar::Mode::Off
        };
        self
    }

    /// Draws the progress bar even when stderr is not a terminal (as one line a second).
    ///
    /// See [`Builder`] for an example.
    #[cfg(feature = "progress")]
    #[cfg_attr(docsrs, doc(cfg(feature = "progress")))]
    pub fn force_progress_bar(mut self, on: bool) -> Self {
        self.config.progress = if on {
            progress_bar::Mode::Forced
        } else {
            progress_bar::Mode::Off
        };
        self
    }

    /// The most tasks a `map` stream keeps submitted but not yet yielded. By default four
    /// chunks a worker.
    ///
    /// [`build`](Self::build) refuses `0` with [`Error::InvalidConfig`]. See [`Builder`] for an
    /// example.
    pub fn stream_window(mut self, tasks: usize) -> Self {
        self.config.stream_window = Some(tasks);
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
    /// - [`Error::Share`] when they hold a value shared with another builder or pool;
    /// - [`Error::Spawn`] when a worker cannot start: its process cannot be started, its
    ///   initializer panicked, returned an `Err` or ran past the
    ///   [`init_timeout`](Self::init_timeout), or a remote host cannot be reached or runs
    ///   another build of this program.
    pub fn build(self) -> Result<ProcessPool<F>> {
        let v = self.config.validate(F::NAME, &ThisProcess)?;
        let chunking = Arc::new(Chunking::new(v.chunk_size, v.max_tasks_per_worker));
        let (trace, dispatch) = forwarded_events(v.forward_stderr && !v.debug);
        let mut hook_values = self.init_values;
        hook_values.extend(self.exit_values);
        crate::share::dedup(&mut hook_values);
        let config = LaunchConfig {
            transport: v.transport,
            pool: v.name.clone(),
            max_frame: v.max_frame,
            env: v.env,
            disable_gpu: v.disable_gpu,
            cpu_affinity: v.cpu_affinity,
            forward_stderr: v.forward_stderr,
            dispatch,
            memory_limit: v.memory_limit,
        };
        let (launch, n_jobs) = transport::compose(
            config,
            v.debug,
            v.local_workers,
            v.host_timeout,
            v.hosts,
            &hook_values,
        );
        let spec = WorkerSpec {
            pool: v.name,
            entry: F::NAME,
            max_frame: v.max_frame,
            initializer: v.initializer,
            on_exit: v.on_exit,
            hook_values: HookValues::new(hook_values),
            init_timeout: v.init_timeout,
            exit_timeout: v.exit_timeout,
            token: self.store.token(),
            trace,
        };
        let settings = Settings {
            n_jobs,
            debug: v.debug,
            max_tasks_per_worker: v.max_tasks_per_worker,
            min_workers: v.min_workers,
            host_timeout: v.host_timeout,
            rejoin: v.rejoin,
            task_timeout: v.task_timeout,
            memory_limit: v.memory_limit,
            retries: v.retries,
        };
        let pool = ProcessPool::assemble(
            Core::new(spec, settings, launch, self.store),
            chunking,
            v.stream_window,
            v.progress,
        );
        if v.start {
            pool.start()?;
        }
        Ok(pool)
    }
}

/// The `tracing` events of the entries go to the subscriber of the thread that builds the pool
/// (its own, or the global one), up to the most verbose level it wants, when `forward` allows
/// it and there is a subscriber: that level (0: none are sent), and the subscriber.
fn forwarded_events(forward: bool) -> (u8, Option<tracing::Dispatch>) {
    let dispatch = tracing::dispatcher::get_default(tracing::Dispatch::clone);
    let has_subscriber = !dispatch.is::<tracing::subscriber::NoSubscriber>();
    let trace = if has_subscriber && forward {
        crate::trace::filter_byte(tracing::level_filters::LevelFilter::current())
    } else {
        0
    };
    (trace, (trace > 0).then_some(dispatch))
}

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
