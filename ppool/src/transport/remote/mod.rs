//! Workers on other hosts: one host agent per host (see `crate::agent`), started through its
//! launcher, and one stream, the launcher's stdio, that carries all the host's workers (see
//! `crate::mux`). Each worker is a [`Link`] and a [`Peer`] like a local one.
//!
//! - `host`: one host's agent and connection: start, reader, heartbeat, losing it;
//! - `outbox`: the writing half of a host's stream, where no thread waits behind another;
//! - `link`: one worker on a host, as a link and a peer;
//! - `command`: the command lines that reach a host, and copying the program there.
//!
//! This file keeps the hosts of a pool: which host a worker is on, starting an agent when a
//! worker needs one (again after a host was lost), setting aside a host that failed to start
//! three times in a row, and ending every agent together when the pool closes.

mod command;
mod host;
mod link;
mod outbox;

use super::{Launch, LaunchConfig, Worker};
use crate::error::Error;
use crate::remote::HostSpec;
use crate::sync::lock;
use host::Host;
use link::{RemoteLink, RemotePeer};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Failed starts in a row after which a host is set aside.
const SET_ASIDE_AFTER: u32 = 3;

/// The remote hosts of a pool.
#[derive(Debug)]
pub(crate) struct Remotes {
    config: LaunchConfig,
    host_timeout: Duration,
    hosts: Vec<HostEntry>,
}

#[derive(Debug)]
struct HostEntry {
    spec: HostSpec,
    /// The agent running there, if any.
    agent: Mutex<Option<Arc<Host>>>,
    /// Starts that failed in a row.
    failures: AtomicU32,
}

impl Remotes {
    pub(crate) fn new(config: LaunchConfig, host_timeout: Duration, hosts: Vec<HostSpec>) -> Self {
        Remotes {
            config,
            host_timeout,
            hosts: hosts
                .into_iter()
                .map(|spec| HostEntry {
                    spec,
                    agent: Mutex::new(None),
                    failures: AtomicU32::new(0),
                })
                .collect(),
        }
    }

    /// The workers of every host, in order.
    pub(crate) fn workers(&self) -> usize {
        self.hosts.iter().map(|h| h.spec.workers).sum()
    }

    /// The host of remote worker `i` (counted from the first remote one).
    fn entry(&self, mut i: usize) -> Option<&HostEntry> {
        for host in &self.hosts {
            if i < host.spec.workers {
                return Some(host);
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

    /// Ends every host's agent, together, and reaps their launchers (see `host::stop_all`).
    /// A worker started later gets a new agent.
    pub(crate) fn close(&self) {
        let hosts: Vec<Arc<Host>> = self
            .hosts
            .iter()
            .filter_map(|entry| lock(&entry.agent).take())
            .collect();
        let conns: Vec<&host::Conn> = hosts.iter().map(|h| &*h.conn).collect();
        host::stop_all(&conns);
    }

    /// Starts remote worker `i` as pool worker `index`.
    pub(crate) fn start(&self, i: usize, index: usize, greeting: &[u8]) -> Result<Worker, Error> {
        let entry = self
            .entry(i)
            .ok_or_else(|| Error::spawn(format!("internal: no host for worker {index}")))?;
        let name = &entry.spec.name;
        if entry.failures.load(Ordering::Relaxed) >= SET_ASIDE_AFTER {
            return Err(Error::spawn(format!(
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
                        return Err(e);
                    }
                },
            }
        };
        match host.spawn(index, greeting) {
            Ok((slot, pid)) => {
                entry.failures.store(0, Ordering::Relaxed);
                Ok(Worker {
                    link: Box::new(RemoteLink {
                        conn: Arc::clone(&host.conn),
                        slot,
                        body: Vec::new(),
                    }),
                    peer: Arc::new(RemotePeer {
                        conn: Arc::clone(&host.conn),
                        slot,
                        pid,
                    }),
                })
            }
            Err(e) => {
                entry.failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
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

    fn host(&self, index: usize) -> String {
        match index.checked_sub(self.local_workers) {
            None => self.local.host(index),
            Some(i) => self.remote.host_name(i),
        }
    }

    fn close(&self) {
        self.local.close();
        self.remote.close();
    }
}
