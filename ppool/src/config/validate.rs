//! The builder's settings as plain data, and the checks that [`Builder::build`] runs on them
//! before it starts anything: [`Config::validate`]. The checks read nothing themselves; what
//! they need from outside the settings (the CPUs, this program's path, the Slurm allocation,
//! the entry table) comes through a [`World`].
//!
//! [`Builder::build`]: crate::Builder::build

use super::{NJobs, cpus};
use crate::entry;
use crate::error::Error;
use crate::hosts::{self, Allocation, HostSpec, Remote};
use crate::progress_bar;
use crate::protocol::DEFAULT_MAX_FRAME;
use crate::transport::Transport;
use rustix::thread::CpuSet;
use std::ffi::OsString;
use std::time::Duration;

/// The longest pool name: it travels in every worker's greeting, which a worker accepts up to
/// 64 KiB before it knows its pool.
const MAX_NAME: usize = 4096;

/// How long an initializer may run, unless `init_timeout` says otherwise.
const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long an exit hook may run, unless `exit_timeout` says otherwise.
const DEFAULT_EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a remote host may stay silent, unless `host_timeout` says otherwise.
const DEFAULT_HOST_TIMEOUT: Duration = Duration::from_secs(30);

/// An entry run in every worker (initializer or exit hook): its name, and its encoded
/// arguments or why they could not be encoded.
pub(crate) type Hook = (&'static str, Result<Vec<u8>, Error>);

/// Every setting of a [`Builder`](crate::Builder), as set, not yet checked.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) n_jobs: NJobs,
    /// `n_jobs` was called: with remote hosts, local workers are only started if it was.
    pub(crate) n_jobs_set: bool,
    pub(crate) name: Option<String>,
    pub(crate) start: bool,
    pub(crate) debug: bool,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) disable_gpu: bool,
    pub(crate) max_tasks_per_worker: Option<u64>,
    /// `build()` succeeds once this many workers are ready (the hosts that failed are left
    /// out); `None`: every worker must start.
    pub(crate) min_workers: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) retries: u32,
    /// Lost remote hosts are tried again in the background.
    pub(crate) rejoin: bool,
    pub(crate) chunk_size: Option<usize>,
    pub(crate) max_frame: usize,
    pub(crate) initializer: Option<Hook>,
    pub(crate) on_exit: Option<Hook>,
    pub(crate) cpu_affinity: Vec<usize>,
    pub(crate) forward_stderr: bool,
    pub(crate) transport: Transport,
    pub(crate) remotes: Vec<Remote>,
    pub(crate) host_timeout: Duration,
    pub(crate) init_timeout: Duration,
    pub(crate) exit_timeout: Duration,
    pub(crate) progress: progress_bar::Mode,
    pub(crate) stream_window: Option<usize>,
}

impl Default for Config {
    /// The settings of a new builder.
    fn default() -> Self {
        Config {
            n_jobs: NJobs::from(-1),
            n_jobs_set: false,
            name: None,
            start: true,
            debug: false,
            env: Vec::new(),
            disable_gpu: true,
            max_tasks_per_worker: None,
            min_workers: None,
            task_timeout: None,
            memory_limit: None,
            retries: 0,
            rejoin: false,
            chunk_size: None,
            max_frame: DEFAULT_MAX_FRAME,
            initializer: None,
            on_exit: None,
            cpu_affinity: Vec::new(),
            forward_stderr: true,
            transport: Transport::default(),
            remotes: Vec::new(),
            host_timeout: DEFAULT_HOST_TIMEOUT,
            init_timeout: DEFAULT_INIT_TIMEOUT,
            exit_timeout: DEFAULT_EXIT_TIMEOUT,
            progress: progress_bar::Mode::Off,
            stream_window: None,
        }
    }
}

/// Settings that passed every check, with what the checks worked out from them.
#[derive(Debug)]
pub(crate) struct Validated {
    /// The pool's name: the one set, or the entry's identifier.
    pub(crate) name: String,
    /// Local workers: `n_jobs` resolved on this machine, 1 in debug mode, 0 in a pool of
    /// remote hosts that did not ask for any.
    pub(crate) local_workers: usize,
    /// The remote hosts, in order, ready to be started.
    pub(crate) hosts: Vec<HostSpec>,
    pub(crate) initializer: Option<(&'static str, Vec<u8>)>,
    pub(crate) on_exit: Option<(&'static str, Vec<u8>)>,
    /// A fixed chunk size: the one set, or 1 under a `task_timeout`; `None`: adaptive.
    pub(crate) chunk_size: Option<usize>,
    pub(crate) start: bool,
    pub(crate) debug: bool,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) disable_gpu: bool,
    pub(crate) max_tasks_per_worker: Option<u64>,
    pub(crate) min_workers: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) retries: u32,
    pub(crate) rejoin: bool,
    pub(crate) max_frame: usize,
    pub(crate) cpu_affinity: Vec<usize>,
    pub(crate) forward_stderr: bool,
    pub(crate) transport: Transport,
    pub(crate) host_timeout: Duration,
    pub(crate) init_timeout: Duration,
    pub(crate) exit_timeout: Duration,
    pub(crate) progress: progress_bar::Mode,
    pub(crate) stream_window: Option<usize>,
}

/// What the checks read from outside the settings; each is asked only when a setting needs
/// it.
pub(crate) trait World {
    /// The CPUs this process may use (affinity and cgroup quotas respected).
    fn cpus(&self) -> usize;

    /// The CPUs this process may run on, when the system says.
    fn allowed_cpus(&self) -> Option<CpuSet>;

    /// This program's path: what remote hosts run unless told otherwise.
    fn program(&self) -> Result<OsString, Error>;

    /// The Slurm allocation this program runs in.
    fn allocation(&self) -> Result<Allocation, Error>;

    /// Finds the entry `name` in this binary's table: unknown, or not unique, is an error.
    fn entry(&self, name: &str) -> Result<(), Error>;
}

/// This process, on this machine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThisProcess;

impl World for ThisProcess {
    fn cpus(&self) -> usize {
        cpus()
    }

    fn allowed_cpus(&self) -> Option<CpuSet> {
        rustix::thread::sched_getaffinity(None).ok()
    }

    fn program(&self) -> Result<OsString, Error> {
        crate::relaunch::program_path().map(|p| p.into_os_string())
    }

    fn allocation(&self) -> Result<Allocation, Error> {
        hosts::read_allocation()
    }

    fn entry(&self, name: &str) -> Result<(), Error> {
        entry::find(name).map(drop)
    }
}

impl Config {
    /// Checks every setting, for a pool of the entry `entry`, in a fixed order: the error is
    /// about the first setting that is not allowed. Starts nothing.
    pub(crate) fn validate(
        self,
        entry: &'static str,
        world: &dyn World,
    ) -> Result<Validated, Error> {
        self.check_remote_support()?;
        self.check_timeouts()?;
        let hosts = self.plan_hosts(world)?;
        let local_workers = self.local_workers(&hosts, world)?;
        let all = local_workers + hosts.iter().map(|h| h.workers).sum::<usize>();
        if let Some(min) = self.min_workers
            && min > all
        {
            return Err(Error::config(
                "min_workers",
                format!("{min} is more than the pool's {all} workers"),
            ));
        }
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| entry.rsplit("::").next().unwrap_or(entry).to_string());
        if name.is_empty() || name.contains('\0') || name.len() > MAX_NAME {
            return Err(Error::config(
                "name",
                format!("must be 1 to {MAX_NAME} bytes, with no NUL byte"),
            ));
        }
        self.check_env()?;
        self.check_sizes()?;
        self.check_cpu_affinity(world)?;
        if self.max_frame < 1024 || self.max_frame > u32::MAX as usize {
            return Err(Error::config(
                "max_frame_size",
                format!("must be between 1 KiB and {} bytes", u32::MAX),
            ));
        }
        world.entry(entry)?;
        let initializer = resolve_hook(self.initializer, world)?;
        let on_exit = resolve_hook(self.on_exit, world)?;
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
        Ok(Validated {
            name,
            local_workers,
            hosts,
            initializer,
            on_exit,
            chunk_size,
            start: self.start,
            debug: self.debug,
            env: self.env,
            disable_gpu: self.disable_gpu,
            max_tasks_per_worker: self.max_tasks_per_worker,
            min_workers: self.min_workers,
            task_timeout: self.task_timeout,
            memory_limit: self.memory_limit,
            retries: self.retries,
            rejoin: self.rejoin,
            max_frame: self.max_frame,
            cpu_affinity: self.cpu_affinity,
            forward_stderr: self.forward_stderr,
            transport: self.transport,
            host_timeout: self.host_timeout,
            init_timeout: self.init_timeout,
            exit_timeout: self.exit_timeout,
            progress: self.progress,
            stream_window: self.stream_window,
        })
    }

    /// Remote hosts exclude debug mode.
    fn check_remote_support(&self) -> Result<(), Error> {
        if self.remotes.is_empty() {
            return Ok(());
        }
        if self.debug {
            return Err(Error::config(
                "remote",
                "debug mode runs tasks in this process; it has no remote workers",
            ));
        }
        Ok(())
    }

    /// The timeouts of the hooks and of remote hosts.
    fn check_timeouts(&self) -> Result<(), Error> {
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
        Ok(())
    }

    /// The remote hosts, planned (each `Remote` checked on the way).
    fn plan_hosts(&self, world: &dyn World) -> Result<Vec<HostSpec>, Error> {
        if self.remotes.is_empty() {
            return Ok(Vec::new());
        }
        let program = world.program()?;
        hosts::plan(&self.remotes, &program, self.host_timeout, &mut || {
            world.allocation()
        })
    }

    /// How many local workers: `n_jobs` is checked unless remote hosts make it unneeded, and
    /// debug mode refuses the settings that need a process.
    fn local_workers(&self, hosts: &[HostSpec], world: &dyn World) -> Result<usize, Error> {
        if !hosts.is_empty() && !self.n_jobs_set {
            return Ok(0);
        }
        let n_jobs = self.n_jobs.resolve(world.cpus())?;
        if !self.debug {
            return Ok(n_jobs);
        }
        // The count is checked as for processes, though debug mode runs one worker.
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
        Ok(1)
    }

    /// Variable names and values the workers' environment can hold.
    fn check_env(&self) -> Result<(), Error> {
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
        Ok(())
    }

    /// Counts, sizes and the task timeout, none of which may be zero.
    fn check_sizes(&self) -> Result<(), Error> {
        if self.max_tasks_per_worker == Some(0) {
            return Err(Error::config("max_tasks_per_worker", "must be at least 1"));
        }
        if self.min_workers == Some(0) {
            return Err(Error::config("min_workers", "must be at least 1"));
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
        Ok(())
    }

    /// CPUs that exist and that this process may run on.
    fn check_cpu_affinity(&self, world: &dyn World) -> Result<(), Error> {
        if let Some(&cpu) = self.cpu_affinity.iter().find(|&&c| c >= CpuSet::MAX_CPU) {
            return Err(Error::config(
                "cpu_affinity",
                format!(
                    "CPU {cpu} is out of range (at most {})",
                    CpuSet::MAX_CPU - 1
                ),
            ));
        }
        // A pool of remote hosts alone pins no worker here: each host checks its own CPUs.
        if self.cpu_affinity.is_empty() || (!self.remotes.is_empty() && !self.n_jobs_set) {
            return Ok(());
        }
        if let Some(allowed) = world.allowed_cpus()
            && let Some(&cpu) = self.cpu_affinity.iter().find(|&&c| !allowed.is_set(c))
        {
            let usable: Vec<String> = (0..CpuSet::MAX_CPU)
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
        Ok(())
    }
}

/// A hook whose entry exists and whose arguments were encoded.
fn resolve_hook(
    hook: Option<Hook>,
    world: &dyn World,
) -> Result<Option<(&'static str, Vec<u8>)>, Error> {
    match hook {
        None => Ok(None),
        Some((name, encoded)) => {
            world.entry(name)?;
            Ok(Some((name, encoded?)))
        }
    }
}

#[cfg(test)]
mod tests;
