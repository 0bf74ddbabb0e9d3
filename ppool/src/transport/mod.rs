//! How the supervisor reaches a worker. This is the only module that names the kinds of
//! transport; the supervisor sees a worker as a [`Link`] and a [`Peer`] made by a [`Launch`].
//!
//! - [`Link`]: the bytes to and from one worker, as frames (see `protocol`).
//! - [`Peer`]: the process behind the link: its id, a kill that any thread may call, its
//!   reaping, and its resident memory.
//! - [`Launch`]: starts worker `i` and sends it its greeting; the supervisor then reads the
//!   answer through the link, whatever the kind.
//!
//! The kinds:
//! - `shm`: this very binary, started again as a local worker (`process`) that shares a
//!   memory region with the supervisor: rings for jobs and results, and a progress word (the
//!   default on Linux);
//! - `pipe`: the same local worker with two private pipes instead (for comparison, and where
//!   memfd is missing);
//! - `in_process`: debug mode, the same protocol served in this process, on the thread that
//!   drives it.

mod in_process;
mod pipe;
mod poll;
#[allow(unsafe_code)]
mod process;
mod remote;
mod shm;
#[allow(unsafe_code)]
mod sigpipe;
mod stderr;

pub(crate) use process::ProcessPeer;
pub(crate) use shm::{RING_BYTES, ShmRx, ShmTx, WAIT_ANY_MAX, spawn as spawn_shm_worker, wait_any};
pub(crate) use sigpipe::block_sigpipe_on_this_thread;

use crate::error::{Error, ExitCause};
use crate::protocol::{self, FrameError};
use std::ffi::OsString;
use std::fmt::Debug;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// The bytes to and from one worker.
pub(crate) trait Link: Send + Debug {
    /// Sends finished frames (length headers included), in order, in as few system calls as
    /// the transport allows. An error of kind `NotConnected` means that no byte reached the
    /// worker: it was gone before the first one.
    fn send(&mut self, frames: &[&[u8]]) -> io::Result<()>;

    /// Receives what the worker sent next: a run of outcomes of one job (perhaps with the
    /// job's end), or another frame. What it borrows stays valid until the next call.
    fn recv(&mut self) -> Result<Incoming<'_>, FrameError>;

    /// Spins for at most `spin` (only where a CPU is free for it), then waits at most
    /// `timeout` (`None`: no limit) until a frame can be read or the worker has ended; false
    /// when the time ran out.
    fn wait_readable(&mut self, spin: Duration, timeout: Option<Duration>) -> io::Result<bool>;

    /// The most bytes of frames that may wait unanswered in the link without either side
    /// blocking the other for good.
    fn budget(&self) -> usize;

    /// How far the worker, now dead, got into `job`, the oldest job it held, of which
    /// `sent_bytes` (its frame and those sent after it) went out. Read before the link is
    /// dropped, after every frame it still held was received.
    fn started(&mut self, job: u64, sent_bytes: usize) -> Started;

    /// Gives back the memory of buffers that one big frame grew.
    fn shrink_buffers(&mut self);

    /// For a link whose messages arrive on a thread of the transport's own (a host's
    /// reader): from now on, hand every message to `sink` on that thread instead of keeping
    /// it for [`recv`](Self::recv); with `None`, keep them for `recv` again. When this returns,
    /// no call to an earlier sink is under way. False when the link cannot (its messages
    /// are read by whoever calls `recv`), or when it holds messages already, or its worker
    /// has ended: the sink is set all the same, and the caller takes the worker for failed.
    fn deliver_to(&mut self, _sink: Option<Arc<dyn Sink>>) -> bool {
        false
    }

    /// Whether [`deliver_to`](Self::deliver_to) works for this link.
    fn is_evented(&self) -> bool {
        false
    }

    /// Makes sure the worker can find `needs`, the shared values of the jobs about to be
    /// sent: a remote host is sent those it lacks, ahead of the jobs; a local worker finds
    /// them in the supervisor's own descriptors.
    fn provide(&mut self, _needs: &[Arc<crate::share::Stored>]) -> io::Result<()> {
        Ok(())
    }
}

/// Where an evented link hands what comes for its worker (see [`Link::deliver_to`]).
pub(crate) trait Sink: Send + Sync + Debug {
    /// One message, in order, on the transport's thread: a run of outcomes or a frame, or,
    /// once and last, why the link ended (`FrameError::Closed` when the worker exited or its
    /// host was lost; [`Link::started`] then tells how far it got).
    fn arrived(&self, incoming: Result<Incoming<'_>, FrameError>);
}

/// What a worker sent, as a link hands it to the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    /// The next `count` outcomes of job `job`, in task order, their records one after
    /// another as the worker wrote them (`raw`, checked to hold exactly `count` well-formed
    /// outcomes), and, when they are its last, the job's end. A job's outcomes come in one
    /// run or several; the run that carries the end may be empty.
    Outcomes {
        job: u64,
        count: u32,
        raw: &'a [u8],
        end: Option<JobEnd>,
    },
    /// Any other frame's body (READY, INIT_DONE, EXITED).
    Frame(&'a [u8]),
}

/// The end of a job: every outcome came, and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JobEnd {
    /// How long the worker was busy with the job.
    pub(crate) busy_nanos: u64,
    /// Its longest task.
    pub(crate) max_task_nanos: u64,
}

impl<'a> Incoming<'a> {
    /// What a frame's body holds: a RESULTS body is a run (the job's end with it unless it
    /// says more follow), anything else a frame.
    pub(crate) fn from_body(body: &'a [u8]) -> Result<Self, FrameError> {
        if body.first() != Some(&protocol::kind::RESULTS) {
            return Ok(Incoming::Frame(body));
        }
        let (header, raw) = protocol::ResultsHeader::parse(body)?;
        Ok(Incoming::Outcomes {
            job: header.job,
            count: header.count,
            raw,
            end: (!header.more).then_some(JobEnd {
                busy_nanos: header.busy_nanos,
                max_task_nanos: header.max_task_nanos,
            }),
        })
    }

    /// The frame, where one is expected and not outcomes.
    pub(crate) fn frame(self) -> Result<&'a [u8], FrameError> {
        match self {
            Incoming::Frame(body) => Ok(body),
            Incoming::Outcomes { job, .. } => Err(FrameError::Malformed(format!(
                "results for job {job} where no job was sent"
            ))),
        }
    }
}

/// How far a dead worker got into the oldest job it held, as its link tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Started {
    /// No task of it started.
    None,
    /// Its tasks `0..n` started (those whose results came finished; the others did not);
    /// the rest never did.
    Upto(u32),
    /// The link cannot tell: every task without a result may have started.
    Unknown,
    /// The link lost what was in flight (a host that stopped answering): every task
    /// without a result may have started, in this job and in the jobs sent after it.
    Lost,
}

/// The process behind a link.
pub(crate) trait Peer: Send + Sync + Debug {
    /// Its process id, on its host (for errors and insights).
    fn pid(&self) -> u32;

    /// Kills it (SIGKILL), from any thread; never reaches another process.
    fn kill(&self);

    /// Waits at most `timeout` for it to end by itself; true if it has.
    fn wait_exit(&self, timeout: Duration) -> bool;

    /// Waits for it to end and says how it did; again, says the same.
    fn reap(&self) -> ExitCause;

    /// Its resident memory in bytes, where that can be read.
    fn resident_bytes(&self) -> Option<u64>;
}

/// Starts workers.
pub(crate) trait Launch: Send + Sync + Debug {
    /// Starts worker `index` and sends it `greeting` (HELLO and the frames that follow it).
    fn start(&self, index: usize, greeting: &[u8]) -> Result<Worker, Error>;

    /// Starts workers `first..first + greetings.len()`, each with its greeting, as many at
    /// once as the kind allows (remote hosts all together); one result per worker, in order.
    fn start_many(&self, first: usize, greetings: &[Vec<u8>]) -> Vec<Result<Worker, Error>> {
        greetings
            .iter()
            .enumerate()
            .map(|(k, greeting)| self.start(first + k, greeting))
            .collect()
    }

    /// Whether worker `index` runs on this machine (the placement rule prefers those).
    fn is_local(&self, _index: usize) -> bool {
        true
    }

    /// The name of the host worker `index` runs on.
    fn host(&self, _index: usize) -> String {
        "localhost".to_string()
    }

    /// Tells the hosts that were sent shared value `id` that the pool freed it.
    fn forget(&self, _id: u64) {}

    /// Ends the agent of host `name`, whose workers were retired, and starts nothing there
    /// again.
    fn retire_host(&self, _name: &str) {}

    /// Lets the hosts set aside after failing to start be tried again (not retired ones).
    fn revive(&self) {}

    /// Adds `hosts`, whose workers come after every worker so far; false where the kind
    /// has no remote hosts (debug mode).
    fn add_hosts(&self, _hosts: Vec<crate::hosts::HostSpec>) -> bool {
        false
    }

    /// Ends what the launcher keeps beside its workers (remote hosts' agents), once every
    /// worker was stopped; returns when it has ended. A worker started later starts it anew.
    fn close(&self) {}
}

/// A started worker.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) link: Box<dyn Link>,
    pub(crate) peer: Arc<dyn Peer>,
}

/// The channel between the supervisor and a local worker process.
///
/// ```
/// # use ppool::{ProcessPool, Transport, pool_entry};
/// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
/// # ppool::main! { fn main() -> Result<(), ppool::Error> {
/// let pool = ProcessPool::<square>::builder()
///     .n_jobs(1)
///     .transport(Transport::Pipes)
///     .build()?;
/// assert_eq!(pool.call(3)?, 9);
/// # Ok(()) } }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// A shared-memory region per worker (a `memfd`): a ring for jobs, a ring for results
    /// and a progress word. Round trips without system calls, large payloads at memory
    /// speed, and, when a worker dies, an exact account of which tasks finished, which one
    /// was running and which never started. The default.
    #[default]
    SharedMemory,
    /// Two pipes per worker. A dead worker's tasks that may have started cannot be told
    /// from those that did not, so all of them fail (or run again under `retries`).
    Pipes,
}

/// How local worker processes are started (not what they are told: that is the greeting).
#[derive(Debug, Clone, Default)]
pub(crate) struct LaunchConfig {
    /// The channel to them.
    pub(crate) transport: Transport,
    /// The pool's name, to tag the workers' stderr.
    pub(crate) pool: String,
    /// The largest frame either side may send.
    pub(crate) max_frame: usize,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) disable_gpu: bool,
    /// CPUs to pin workers to: worker `i` gets `cpus[i % len]`.
    pub(crate) cpu_affinity: Vec<usize>,
    /// Tag each line of a worker's stderr with the pool name and worker index.
    pub(crate) forward_stderr: bool,
    /// The subscriber that gets the entries' `tracing` events, when they are forwarded.
    pub(crate) dispatch: Option<tracing::Dispatch>,
    /// The workers' memory limit: a remote host's agent reports a worker past it.
    pub(crate) memory_limit: Option<u64>,
}

/// The launcher for a pool's workers, and how many workers it starts in all: first
/// `local_workers` in this process (debug mode) or as local processes, then those of the
/// remote `hosts`, if any, each host silent for `host_timeout` counting as lost.
///
/// `hook_values` are the shared values that the workers' greetings name (in the arguments of
/// the initializer and the exit hook): a remote host is sent those it lacks before it is
/// asked for workers, whenever that is (hosts that join later, or come back, included). The
/// launcher does not keep them alive: the pool holds them while workers may start.
pub(crate) fn compose(
    config: LaunchConfig,
    debug: bool,
    local_workers: usize,
    host_timeout: Duration,
    hosts: Vec<crate::hosts::HostSpec>,
    hook_values: &[Arc<crate::share::Stored>],
) -> (Box<dyn Launch>, usize) {
    fn local(config: LaunchConfig, debug: bool) -> Box<dyn Launch> {
        if debug {
            Box::new(in_process::InProcess::new(config.max_frame))
        } else {
            match config.transport {
                Transport::SharedMemory => Box::new(shm::SharedMemory::new(config)),
                Transport::Pipes => Box::new(pipe::Pipes::new(config)),
            }
        }
    }
    if debug {
        return (local(config, debug), local_workers);
    }
    // Remote hosts, if any now; hosts may join later (`add_remote`).
    let remote = remote::Remotes::new(config.clone(), host_timeout, hosts, hook_values);
    let all = local_workers + remote.workers();
    let local = local(config, false);
    (
        Box::new(remote::Mixed {
            local,
            local_workers,
            remote,
        }),
        all,
    )
}
