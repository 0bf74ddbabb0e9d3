//! The [`Builder`] of a [`ProcessPool`]: it gathers the settings, checks them, and assembles
//! the pool.

use crate::chunking::Chunking;
use crate::config::{self, NJobs};
use crate::entry::{self, Entry};
use crate::error::{Error, Result};
use crate::pool::ProcessPool;
use crate::progress;
use crate::protocol::DEFAULT_MAX_FRAME;
use crate::remote::{self, Remote};
use crate::supervisor::{Core, Settings, WorkerSpec};
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
    pub(crate) fn new() -> Self {
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
        let pool = ProcessPool::assemble(
            Core::new(spec, settings, launch),
            chunking,
            self.stream_window,
            self.progress,
        );
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
