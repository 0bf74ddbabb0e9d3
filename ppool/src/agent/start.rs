//! Starting the host's workers: the pool asks for many at once (a SPAWN message per worker,
//! all in a row), and up to [`STARTERS`] threads start them in parallel, each answering
//! SPAWNED (or SPAWN_FAILED) as soon as its worker runs, in whatever order they come. The
//! threads are started as requests come and end once none is left, so an agent whose workers
//! all run holds none.
//!
//! A start is the local shared-memory transport's (`transport::spawn_shm_worker`): a region,
//! the process (this very binary again, `fork` and `exec`, the caller waiting until the
//! `exec` is done), its stderr forwarding, and the greeting written into its job ring (a
//! greeting larger than the ring waits for the worker to read it: that holds up one starter,
//! not the agent). The agent does not wait for a worker's READY: that comes through its
//! forwarder, and the pool waits for all of them at once.

use super::workers::{Entered, Worker};
use super::{Host, end, forward, send};
use crate::mux::{CONTROL, Control};
use crate::sync::lock;
use crate::transport::Peer;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// The most workers started at once. The time for a pool of one host to start (`build`, until
/// every worker answered READY), on two busy CPUs, best of 5 (median), in ms:
///
/// | workers | before (one at a time) | 1 thread  | 2         | 4         | 8         |
/// |---------|------------------------|-----------|-----------|-----------|-----------|
/// | 16      | 25 (28)                | 27 (31)   | 24 (28)   | 24 (26)   | 23 (28)   |
/// | 64      | 105 (122)              | 124 (130) | 87 (103)  | 88 (89)   | 84 (100)  |
/// | 128     | 300 (359)              | 285 (300) | 237 (247) | 219 (235) | 219 (227) |
///
/// Past two, the workers' own start (their `exec`, their greeting) takes the CPUs; four leave
/// room for hosts with more of them, where `fork` and `exec` overlap further.
pub(super) const STARTERS: usize = 4;

/// A worker to start.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) slot: u32,
    pub(super) index: u32,
    pub(super) greeting: Vec<u8>,
}

#[derive(Debug, Default)]
struct Queue {
    requests: VecDeque<Request>,
    /// Starter threads alive.
    starters: usize,
}

/// The workers waiting to be started, and the threads that start them.
#[derive(Debug, Default)]
pub(super) struct Starters(Mutex<Queue>);

impl Starters {
    /// Starts a worker as soon as a starter is free; starts a starter if fewer than
    /// [`STARTERS`] run. Without any thread for it, starts it on this one.
    pub(super) fn start(self: &Arc<Self>, host: &Arc<Host>, request: Request) {
        let mut queue = lock(&self.0);
        queue.requests.push_back(request);
        if queue.starters >= STARTERS {
            return;
        }
        queue.starters += 1;
        drop(queue);
        let (starters, thread_host) = (Arc::clone(self), Arc::clone(host));
        let spawned = std::thread::Builder::new()
            .name("ppool-agent-start".into())
            .spawn(move || starters.serve(&thread_host));
        if spawned.is_err() {
            let mut queue = lock(&self.0);
            queue.starters -= 1;
            let none = queue.starters == 0;
            drop(queue);
            if none {
                self.serve_here(host);
            }
        }
    }

    /// Starts workers until none waits, then ends this starter.
    fn serve(&self, host: &Arc<Host>) {
        while let Some(request) = self.next(true) {
            start(host, request);
        }
    }

    /// Starts the waiting workers on this thread, when no starter thread could be started.
    fn serve_here(&self, host: &Arc<Host>) {
        while let Some(request) = self.next(false) {
            start(host, request);
        }
    }

    /// The next worker to start; none left ends a starter thread (`is_starter`).
    fn next(&self, is_starter: bool) -> Option<Request> {
        let mut queue = lock(&self.0);
        let next = queue.requests.pop_front();
        if next.is_none() && is_starter {
            queue.starters -= 1;
        }
        next
    }
}

/// Why worker `index` cannot be pinned to its CPU of `cpus` on this host, if it cannot: the
/// pool's CPUs are named on each host, and a host without them says which it has.
fn missing_cpu(cpus: &[usize], index: usize) -> Option<String> {
    let cpu = *cpus.get(index % cpus.len().max(1))?;
    let allowed = rustix::thread::sched_getaffinity(None).ok()?;
    if cpu < rustix::thread::CpuSet::MAX_CPU && allowed.is_set(cpu) {
        return None;
    }
    let has: Vec<String> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| allowed.is_set(c))
        .map(|c| c.to_string())
        .collect();
    Some(format!(
        "cpu_affinity names CPU {cpu}, which this host does not let it use (it has CPUs {})",
        has.join(", ")
    ))
}

/// Starts one worker, enters it, starts its forwarder, and answers the pool.
fn start(
    host: &Arc<Host>,
    Request {
        slot,
        index,
        greeting,
    }: Request,
) {
    let spawned = missing_cpu(&host.config.cpu_affinity, index as usize).map_or_else(
        || crate::transport::spawn_shm_worker(&host.config, index as usize, &greeting),
        |why| Err(crate::error::Error::spawn(why)),
    );
    let reply = match spawned {
        Ok((tx, rx, peer)) => {
            let pid = peer.pid();
            let worker = Arc::new(Worker::new(slot, peer, tx, &greeting));
            if host.workers.enter(slot, &worker) == Entered::Ending {
                // The agent exits meanwhile; this one goes first.
                let _ = worker.peer.reap();
                return;
            }
            // A worker killed while it started still has its end reported, as any.
            forward::forward(slot, rx, worker, Arc::clone(host));
            Control::Spawned { slot, pid }.encode()
        }
        Err(e) => {
            host.workers.failed(slot);
            Control::SpawnFailed {
                slot,
                why: &e.to_string(),
            }
            .encode()
        }
    };
    if send(&host.out, CONTROL, &reply).is_err() {
        end(&host.workers, 0);
    }
}
