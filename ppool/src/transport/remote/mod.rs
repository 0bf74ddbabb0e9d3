//! Workers on other hosts: one host agent per host (see `crate::agent`), started through its
//! launcher, and one stream, the launcher's stdio, that carries all the host's workers (see
//! `crate::mux`). Each worker is a [`Link`] and a [`Peer`] like a local one.
//!
//! - `host`: one host's agent and connection: start, reader, heartbeat, losing it;
//! - `outbox`: the writing half of a host's stream, where no thread waits behind another;
//! - `link`: one worker on a host, as a link and a peer;
//! - `command`: the command lines that reach a host, and copying the program there;
//! - `share`: shared values, sent to a host once and forgotten there when freed.
//!
//! This file keeps the hosts of a pool: which host a worker is on, starting an agent when a
//! worker needs one (again after a host was lost), setting aside a host that failed to start
//! three times in a row, and ending every agent together when the pool closes.

mod command;
mod host;
mod link;
mod outbox;
mod share;

use super::{Launch, LaunchConfig, Worker};
use crate::error::Error;
use crate::hosts::HostSpec;
use crate::share::Stored;
use crate::sync::lock;
use host::Host;
use link::{RemoteLink, RemotePeer};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

/// A worker to start: its pool index and its greeting.
type Member<'a> = (usize, &'a [u8]);

/// The workers of one host's start, in order.
type Started = Vec<Result<Worker, Error>>;

/// Failed starts in a row after which a host is set aside.
const SET_ASIDE_AFTER: u32 = 3;

/// How many hosts start at once.
const STARTERS: usize = 16;

/// The remote hosts of a pool.
#[derive(Debug)]
pub(crate) struct Remotes {
    config: LaunchConfig,
    host_timeout: Duration,
    /// The shared values the workers' greetings name, sent to a host before its workers are
    /// asked for; held by the pool, not here.
    hook_values: Vec<Weak<Stored>>,
    /// Every host the pool was given, in the order of their workers' indexes; a host added
    /// to a running pool comes last.
    hosts: RwLock<Vec<Arc<HostEntry>>>,
}

impl HostEntry {
    fn new(spec: HostSpec) -> Arc<HostEntry> {
        Arc::new(HostEntry {
            spec,
            agent: Mutex::new(None),
            failures: AtomicU32::new(0),
            retired: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

#[derive(Debug)]
struct HostEntry {
    spec: HostSpec,
    /// The agent running there, if any.
    agent: Mutex<Option<Arc<Host>>>,
    /// Starts that failed in a row.
    failures: AtomicU32,
    /// The pool retired it: nothing starts there again.
    retired: std::sync::atomic::AtomicBool,
}

impl Remotes {
    pub(crate) fn new(
        config: LaunchConfig,
        host_timeout: Duration,
        hosts: Vec<HostSpec>,
        hook_values: &[Arc<Stored>],
    ) -> Self {
        Remotes {
            config,
            host_timeout,
            hook_values: hook_values.iter().map(Arc::downgrade).collect(),
            hosts: RwLock::new(hosts.into_iter().map(HostEntry::new).collect()),
        }
    }

    /// Adds `hosts`, whose workers come after every worker so far.
    pub(crate) fn add(&self, hosts: Vec<HostSpec>) {
        let mut all = self.hosts.write().unwrap_or_else(PoisonError::into_inner);
        all.extend(hosts.into_iter().map(HostEntry::new));
    }

    fn hosts(&self) -> Vec<Arc<HostEntry>> {
        self.hosts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The workers of every host, in order.
    pub(crate) fn workers(&self) -> usize {
        self.hosts().iter().map(|h| h.spec.workers).sum()
    }

    /// The host of remote worker `i` (counted from the first remote one).
    fn entry(&self, mut i: usize) -> Option<Arc<HostEntry>> {
        let hosts = self.hosts.read().unwrap_or_else(PoisonError::into_inner);
        for host in hosts.iter() {
            if i < host.spec.workers {
                return Some(Arc::clone(host));
            }
            i -= host.spec.workers;
        }
        None
    }

    /// The name of the host of remote worker `i`.
    pub(crate) fn host_name(&self, i: usize) -> String {
        self.entry(i)
            .map_or_else(|| "?".to_string(), |h| h.spec.name.clone())
    }

    /// Ends the agents of the hosts named `name`, together, and starts nothing there again.
    pub(crate) fn retire(&self, name: &str) {
        let agents: Vec<Arc<Host>> = self
            .hosts()
            .iter()
            .filter(|entry| entry.spec.name == name)
            .filter_map(|entry| {
                entry.retired.store(true, Ordering::Relaxed);
                lock(&entry.agent).take()
            })
            .collect();
        let conns: Vec<&host::Conn> = agents.iter().map(|h| &*h.conn).collect();
        host::stop_all(&conns);
    }

    /// Tells every host that was sent shared value `id` to let it go.
    pub(crate) fn forget(&self, id: u64) {
        for entry in &self.hosts() {
            let host = lock(&entry.agent).clone();
            if let Some(host) = host {
                share::forget(&host.conn, id);
            }
        }
    }

    /// Ends every host's agent, together, and reaps their launchers (see `host::stop_all`).
    /// A worker started later gets a new agent.
    pub(crate) fn close(&self) {
        let hosts: Vec<Arc<Host>> = self
            .hosts()
            .iter()
            .filter_map(|entry| lock(&entry.agent).take())
            .collect();
        let conns: Vec<&host::Conn> = hosts.iter().map(|h| &*h.conn).collect();
        host::stop_all(&conns);
    }

    /// Starts remote worker `i` as pool worker `index`.
    pub(crate) fn start(&self, i: usize, index: usize, greeting: &[u8]) -> Result<Worker, Error> {
        let mut started = self.start_many(i, index, &[greeting.to_vec()]);
        started
            .pop()
            .unwrap_or_else(|| Err(Error::internal(format!("no host for worker {index}"))))
    }

    /// Starts remote workers `i..` as pool workers `index..`, one greeting each: every host
    /// at once, on a thread of its own, and every worker of a host at once.
    pub(crate) fn start_many(
        &self,
        i: usize,
        index: usize,
        greetings: &[Vec<u8>],
    ) -> Vec<Result<Worker, Error>> {
        // Consecutive workers of one host form a group.
        let mut groups: Vec<(Arc<HostEntry>, Vec<Member<'_>>)> = Vec::new();
        let mut results: Vec<Option<Result<Worker, Error>>> = Vec::new();
        for (k, greeting) in greetings.iter().enumerate() {
            results.push(None);
            match self.entry(i + k) {
                None => {
                    results[k] = Some(Err(Error::internal(format!(
                        "no host for worker {}",
                        index + k
                    ))));
                }
                Some(entry) => match groups.last_mut() {
                    Some((last, members)) if Arc::ptr_eq(last, &entry) => {
                        members.push((index + k, greeting.as_slice()));
                    }
                    _ => groups.push((entry, vec![(index + k, greeting.as_slice())])),
                },
            }
        }
        let started: Vec<Vec<Result<Worker, Error>>> = if groups.len() == 1 {
            groups
                .iter()
                .map(|(entry, members)| self.start_on(entry, members))
                .collect()
        } else {
            self.start_groups(&groups)
        };
        let mut each = started.into_iter().flatten();
        for slot in &mut results {
            if slot.is_none() {
                *slot = each.next();
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::internal("a worker was not started"))))
            .collect()
    }

    /// Starts `members` on `entry`'s host, its agent first if it has none running.
    /// Starts each group's host, [`STARTERS`] at a time: as many as keep a host's answer
    /// from waiting on another's, without a thread per host.
    fn start_groups(
        &self,
        groups: &[(Arc<HostEntry>, Vec<Member<'_>>)],
    ) -> Vec<Vec<Result<Worker, Error>>> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let done: Mutex<Vec<Option<Started>>> = Mutex::new(groups.iter().map(|_| None).collect());
        let work = || {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some((entry, members)) = groups.get(k) else {
                    return;
                };
                let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.start_on(entry, members)
                }))
                .unwrap_or_else(|_| {
                    members
                        .iter()
                        .map(|_| {
                            Err(Error::spawn(format!(
                                "host {}: its start panicked",
                                entry.spec.name
                            )))
                        })
                        .collect()
                });
                lock(&done)[k] = Some(started);
            }
        };
        std::thread::scope(|scope| {
            for _ in 1..groups.len().min(STARTERS) {
                // One that cannot be started leaves the hosts to the others.
                let _ = std::thread::Builder::new()
                    .name("ppool-host-start".into())
                    .spawn_scoped(scope, work);
            }
            // This thread starts hosts too, so that hosts start even if no thread could.
            work();
        });
        let done = done
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        done.into_iter()
            .zip(groups)
            .map(|(started, (entry, members))| {
                started.unwrap_or_else(|| {
                    members
                        .iter()
                        .map(|_| {
                            Err(Error::spawn(format!(
                                "host {}: not started",
                                entry.spec.name
                            )))
                        })
                        .collect()
                })
            })
            .collect()
    }

    fn start_on(
        &self,
        entry: &HostEntry,
        members: &[(usize, &[u8])],
    ) -> Vec<Result<Worker, Error>> {
        let name = &entry.spec.name;
        let refuse = |e: Error| members.iter().map(|_| Err(e.clone())).collect();
        if entry.retired.load(Ordering::Relaxed) {
            return refuse(Error::spawn(format!("host {name} was retired")));
        }
        if entry.failures.load(Ordering::Relaxed) >= SET_ASIDE_AFTER {
            return refuse(Error::spawn(format!(
                "host {name} is set aside: it failed to start {SET_ASIDE_AFTER} times in a row"
            )));
        }
        let host = {
            let mut agent = lock(&entry.agent);
            match agent.as_ref() {
                Some(host) if !host.is_lost() => Arc::clone(host),
                _ => match Host::connect(&entry.spec, &self.config, self.host_timeout) {
                    Ok(host) => {
                        let host = Arc::new(host);
                        *agent = Some(Arc::clone(&host));
                        tracing::info!(host = %name, "host agent started");
                        host
                    }
                    Err(e) => {
                        let failures = entry.failures.fetch_add(1, Ordering::Relaxed) + 1;
                        if failures >= SET_ASIDE_AFTER {
                            tracing::warn!(host = %name, error = &e as &dyn std::error::Error, "host set aside");
                        }
                        return refuse(e);
                    }
                },
            }
        };
        // The values the greetings name reach the host's agent before the workers are asked
        // for (a new agent, after a host was lost, is sent them again). Those the pool let go
        // of belong to no worker that can still start.
        let needs: Vec<Arc<Stored>> = self.hook_values.iter().filter_map(Weak::upgrade).collect();
        if let Err(e) = share::provide(&host.conn, &needs) {
            entry.failures.fetch_add(1, Ordering::Relaxed);
            return refuse(Error::spawn_io(
                format!(
                    "host {name}: cannot send it the shared values that the initializer or \
                     the exit hook names: {e}"
                ),
                e,
            ));
        }
        let spawned = host.spawn_many(members);
        if spawned.iter().any(Result::is_ok) {
            entry.failures.store(0, Ordering::Relaxed);
        } else {
            entry.failures.fetch_add(1, Ordering::Relaxed);
        }
        spawned
            .into_iter()
            .map(|r| {
                r.map(|spawned| Worker {
                    link: Box::new(RemoteLink {
                        conn: Arc::clone(&host.conn),
                        bell: Arc::clone(&spawned.bell),
                        slot: spawned.slot,
                        body: Vec::new(),
                    }),
                    peer: Arc::new(RemotePeer {
                        conn: Arc::clone(&host.conn),
                        bell: spawned.bell,
                        slot: spawned.slot,
                        pid: spawned.pid,
                    }),
                })
            })
            .collect()
    }
}

/// Local workers, then remote ones: one launcher for a pool that has both.
#[derive(Debug)]
pub(crate) struct Mixed {
    pub(crate) local: Box<dyn Launch>,
    pub(crate) local_workers: usize,
    pub(crate) remote: Remotes,
}

impl Launch for Mixed {
    fn start(&self, index: usize, greeting: &[u8]) -> Result<Worker, Error> {
        match index.checked_sub(self.local_workers) {
            None => self.local.start(index, greeting),
            Some(i) => self.remote.start(i, index, greeting),
        }
    }

    fn is_local(&self, index: usize) -> bool {
        index < self.local_workers
    }

    fn forget(&self, id: u64) {
        self.remote.forget(id);
    }

    fn retire_host(&self, name: &str) {
        self.remote.retire(name);
    }

    fn revive(&self) {
        for entry in self.remote.hosts() {
            entry.failures.store(0, Ordering::Relaxed);
        }
    }

    fn add_hosts(&self, hosts: Vec<HostSpec>) -> bool {
        self.remote.add(hosts);
        true
    }

    fn host(&self, index: usize) -> String {
        match index.checked_sub(self.local_workers) {
            None => self.local.host(index),
            Some(i) => self.remote.host_name(i),
        }
    }

    fn start_many(&self, first: usize, greetings: &[Vec<u8>]) -> Vec<Result<Worker, Error>> {
        let local = self
            .local_workers
            .saturating_sub(first)
            .min(greetings.len());
        let mut started = self.local.start_many(first, &greetings[..local]);
        let next = first + local;
        if local < greetings.len() {
            let i = next - self.local_workers;
            started.extend(self.remote.start_many(i, next, &greetings[local..]));
        }
        started
    }

    fn close(&self) {
        self.local.close();
        self.remote.close();
    }
}
