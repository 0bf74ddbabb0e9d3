//! Shared inputs: a large value that many tasks read, stored once per host in a sealed memfd
//! ([`crate::shm::Sealed`]).
//!
//! - `hash`: the checksum of a stored value; `room`: whether a value fits in memory, asked
//!   before storing it.

// The pool calls this module's crate-visible items once it is wired to it (the supervisor,
// the protocol, the worker and the host agent); until then only the tests do.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]

pub(crate) mod hash;
pub(crate) mod room;
