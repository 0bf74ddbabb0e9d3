//! Shared inputs: a large value that many tasks read, stored once per host in a sealed memfd
//! and named in task arguments by a small reference ([`Shared`], [`SharedBytes`]).
//!
//! The modules:
//!
//! - `store`: the side that shares. A pool's [`Store`] encodes a value once and stores it
//!   ([`crate::shm::Sealed`]); each [`Stored`] value lives as long as a handle or a job names
//!   it, and calls the pool's release hook when the last one is gone. [`collect`] records
//!   which stored values the arguments of a job name, while they are encoded.
//! - `resolve`: the side that uses them. A worker's [`Resolver`] finds a value's memfd in the
//!   owner's `/proc/<pid>/fd`, maps it read-only, checks it against the reference, and keeps
//!   it (mapped, or decoded once per type) until [`forget`].
//! - `handles`: the public [`Shared`] and [`SharedBytes`], whose `Serialize` writes the
//!   reference (and tells the collector) and whose `Deserialize` resolves it.
//! - `reference`: the reference as it travels; `hash`: the checksum in it; `room`: whether a
//!   value fits in memory, asked before storing it.
//!
//! # What the pool does with it
//!
//! - The supervisor builds one [`Store`] per pool (its token, a release hook), and
//!   `pool.share` / `pool.share_bytes` are [`Store::share`] / [`Store::share_bytes`].
//! - It encodes each job's arguments inside [`collect`], keeps the [`Stored`] values that it
//!   returns until the job is done, sends to each remote host the bytes
//!   ([`Stored::bytes`]) of those the host lacks, and refuses values of another pool
//!   ([`Stored::token`]).
//! - A worker calls [`install`] once it knows its pool (its token, and the pid of the process
//!   that holds the memfds: the supervisor, or its host's agent), and [`forget`] when told that
//!   a value was freed. A worker served inside the supervisor's process uses [`scoped`].
//! - A host agent stores a value it receives with a [`crate::shm::SealedWriter`] (its size
//!   first, then the bytes in pieces, then the hash), keeps the resulting [`Stored`] (made
//!   with [`Stored::from_sealed`]) open until told to drop it.

mod handles;
pub(crate) mod hash;
mod host;
mod reference;
mod resolve;
pub(crate) mod room;
mod store;

pub use handles::{Shared, SharedBytes};
pub(crate) use host::HostValues;
#[cfg(test)]
pub(crate) use reference::Reference;
#[cfg(test)]
pub(crate) use resolve::forget;
pub(crate) use resolve::{Resolver, install, scoped, sweep};
pub(crate) use store::{ReleaseHook, ShareError, Store, Stored, collect, collect_into, dedup};

#[cfg(test)]
mod tests;
