//! The host's workers as the agent's threads share them: the workers that run, by slot, the
//! slots whose worker is being started, and whether the agent is ending.
//!
//! The main thread asks for a slot and feeds and kills its worker; a starter thread enters the
//! worker once it runs; its forwarder removes it once it has ended and was reaped; `end` takes
//! them all. A kill that comes while its worker is still being started is kept, and the
//! worker is killed as soon as it runs; a worker that starts while the agent ends is killed at
//! once.

use super::feed::Feed;
use crate::sync::lock;
use crate::transport::{Peer, ProcessPeer, ShmTx};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// One worker of the host.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) slot: u32,
    pub(super) peer: Arc<ProcessPeer>,
    pub(super) feed: Mutex<Feed>,
}

impl Worker {
    /// The worker of `slot`, just started: its process, and the sending half of its link,
    /// whose ring holds its `greeting`.
    pub(super) fn new(slot: u32, peer: Arc<ProcessPeer>, tx: ShmTx, greeting: &[u8]) -> Self {
        Worker {
            slot,
            peer,
            feed: Mutex::new(Feed::new(tx, greeting)),
        }
    }

    /// Kills it; it is sent nothing more (its forwarder says how it ended).
    pub(super) fn kill(&self) {
        self.peer.kill();
        lock(&self.feed).close();
    }
}

/// What becomes of a worker that has just started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Entered {
    /// It runs.
    Running,
    /// The pool killed its slot while it started: it was killed now.
    Killed,
    /// The agent ends: it was killed now, and is not entered.
    Ending,
}

#[derive(Debug, Default)]
struct Registry {
    running: HashMap<u32, Arc<Worker>>,
    starting: HashSet<u32>,
    /// Slots killed while their worker started.
    killed: HashSet<u32>,
    ending: bool,
}

/// The host's workers.
#[derive(Debug, Default)]
pub(super) struct Workers(Mutex<Registry>);

impl Workers {
    /// The pool asked for a worker in `slot`: it is being started.
    pub(super) fn starting(&self, slot: u32) {
        lock(&self.0).starting.insert(slot);
    }

    /// The worker of `slot` could not start.
    pub(super) fn failed(&self, slot: u32) {
        let mut registry = lock(&self.0);
        registry.starting.remove(&slot);
        registry.killed.remove(&slot);
    }

    /// The worker of `slot` has started; see [`Entered`].
    pub(super) fn enter(&self, slot: u32, worker: &Arc<Worker>) -> Entered {
        let mut registry = lock(&self.0);
        registry.starting.remove(&slot);
        let killed = registry.killed.remove(&slot);
        if registry.ending {
            drop(registry);
            worker.kill();
            return Entered::Ending;
        }
        registry.running.insert(slot, Arc::clone(worker));
        drop(registry);
        if killed {
            worker.kill();
            return Entered::Killed;
        }
        Entered::Running
    }

    /// The worker running in `slot`, if any.
    pub(super) fn get(&self, slot: u32) -> Option<Arc<Worker>> {
        lock(&self.0).running.get(&slot).cloned()
    }

    /// Kills the worker of `slot`, now if it runs, else as soon as it does.
    pub(super) fn kill(&self, slot: u32) {
        let mut registry = lock(&self.0);
        if let Some(worker) = registry.running.get(&slot).cloned() {
            drop(registry);
            worker.kill();
        } else if registry.starting.contains(&slot) {
            registry.killed.insert(slot);
        }
    }

    /// The worker of `slot` has ended and was reaped.
    pub(super) fn remove(&self, slot: u32) {
        lock(&self.0).running.remove(&slot);
    }

    /// The agent ends: no worker is entered from now on; the processes of those that run.
    pub(super) fn end(&self) -> Vec<Arc<ProcessPeer>> {
        let mut registry = lock(&self.0);
        registry.ending = true;
        registry
            .running
            .values()
            .map(|w| Arc::clone(&w.peer))
            .collect()
    }
}
