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
use crate::supervisor::{Core, PoolStore, Settings, WorkerSpec};
use crate::transport::{self, LaunchConfig, Transport};
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
    /// The store of the pool it builds, made with the builder.
    store: PoolStore,
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

    /// Runs the entry `E` with `args` once in every worker, replacements too, before its
    /// first task (`multiprocessing`'s `initializer` and `initargs`).
    ///
    /// [`build`](Self::build) fails with [`Error::Codec`] when `args` cannot be encoded, with
    /// [`Error::InvalidConfig`] when they are larger than the
    /// [`max_frame_size`](Self::max_frame_size), and with [`Error::Spawn`] when the initializer
    /// panics, returns an `Err` or runs past the [`init_timeout`](Self::init_timeout). See
    /// [`Builder`] for an example.
    pub fn initializer<E: Entry>(mut self, args: E::Args) -> Self {
        self.config.initializer = Some((E::NAME, encode_args::<E>(&args)));
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
        self.config.on_exit = Some((E::NAME, encode_args::<E>(&args)));
        self
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
    /// - [`Error::Spawn`] when a worker cannot start: its process cannot be started, its
    ///   initializer panicked, returned an `Err` or ran past the
    ///   [`init_timeout`](Self::init_timeout), or a remote host cannot be reached or runs
    ///   another build of this program.
    pub fn build(self) -> Result<ProcessPool<F>> {
        let v = self.config.validate(F::NAME, &ThisProcess)?;
        let chunking = Arc::new(Chunking::new(v.chunk_size, v.max_tasks_per_worker));
        let (trace, dispatch) = forwarded_events(v.forward_stderr && !v.debug);
        let spec = WorkerSpec {
            pool: v.name.clone(),
            entry: F::NAME,
            max_frame: v.max_frame,
            initializer: v.initializer,
            on_exit: v.on_exit,
            init_timeout: v.init_timeout,
            exit_timeout: v.exit_timeout,
            token: self.store.token(),
            trace,
        };
        let config = LaunchConfig {
            transport: v.transport,
            pool: v.name,
            max_frame: v.max_frame,
            env: v.env,
            disable_gpu: v.disable_gpu,
            cpu_affinity: v.cpu_affinity,
            forward_stderr: v.forward_stderr,
            dispatch,
            memory_limit: v.memory_limit,
        };
        let (launch, n_jobs) =
            transport::compose(config, v.debug, v.local_workers, v.host_timeout, v.hosts);
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
