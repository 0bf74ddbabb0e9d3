//! Run your program's own functions across CPU cores, in worker processes.
//!
//! ```
//! use ppool::{pool_entry, ProcessPool};
//!
//! #[pool_entry]
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! ppool::main! {
//!     fn main() -> Result<(), ppool::Error> {
//!         let pool = ProcessPool::<square>::new(-1)?;       // one worker per CPU
//!         assert_eq!(pool.call(7)?, 49);                     // blocking, from any thread
//!         let squares = pool.batch(0..1000).wait()?;         // all results, in order
//!         assert_eq!(squares[999], 998_001);
//!         for r in pool.map(0..10_000) {                     // lazy, bounded memory
//!             let _y: u64 = r?;
//!         }
//!         pool.join()
//!     }
//! }
//! ```
//!
//! - [`#[pool_entry]`](pool_entry) marks a free function as something a worker can run. It
//!   stays an ordinary function, and a type of the same name types the pool:
//!   `ProcessPool::<square>` takes `u64` tasks and gives `u64` results.
//! - [`ppool::main!`](main!) wraps `main`: started normally, the binary runs `main`; started by
//!   a pool, the same binary serves tasks instead. In test crates, [`test_support!`] does the
//!   same job in one line.
//! - A worker that panics, crashes or hangs fails that one task with a clear [`Error`]; it is
//!   replaced, and the pool goes on.
//!
//! Workers talk to the pool through a shared-memory region each (or two private pipes, with
//! [`Transport::Pipes`]), with length-prefixed frames; values travel as
//! [postcard](https://docs.rs/postcard). Workers on other hosts ([`Remote`]) talk over the
//! stdio of `ssh`, `srun` or any command. A worker's stdout is the program's; its stderr is
//! forwarded line by line, each line tagged with the pool and the worker.
//!
//! # Logs from inside entries
//!
//! `tracing` events emitted inside an entry reach the subscriber of the program that built the
//! pool, as if they had happened there: with their level, target, message and fields, inside
//! the entry's own spans, inside a `task` span that names the pool, the worker, its host and
//! pid, and the entry. Only the levels the subscriber wants are sent; without a subscriber
//! nothing is installed in the workers and nothing is sent. Errors recorded as `&dyn Error`
//! keep their chain of sources. It rides on the forwarded stderr, so
//! [`Builder::forward_stderr(false)`](Builder::forward_stderr) turns it off, and an event may
//! show after the call that caused it has returned (a worker's events keep their order). An
//! event is at most 24 KiB on its way: longer texts are cut to 2 KiB, saying how much was
//! left out. An initializer that installs a subscriber of its own in the worker keeps it, and
//! the worker's events then go there instead.
//!
//! ```
//! use ppool::{pool_entry, ProcessPool};
//!
//! #[pool_entry]
//! fn load(path: String) -> usize {
//!     let _span = tracing::info_span!("load", %path).entered();
//!     tracing::info!(bytes = 3, "read the file");   // shows in the supervisor's subscriber
//!     3
//! }
//! # ppool::main! { fn main() -> Result<(), ppool::Error> {
//! // tracing_subscriber::fmt::init();   // any subscriber, set before the pool is built
//! let pool = ProcessPool::<load>::new(1)?;
//! assert_eq!(pool.call("data.csv".into())?, 3);
//! # Ok(()) } }
//! ```
//!
//! # Feature flags
//!
//! - `progress` (default): progress bars for `batch` and `map`
//!   ([`Builder::progress_bar`]), drawn with indicatif.
//! - `serde`: `Serialize` for [`Insights`], [`WorkerInsights`], [`WorkerState`] and
//!   [`ExitCause`], to log or export them (for example as JSON).
//!
//! # Platform support
//!
//! Linux, where every part is tested: pidfds (Linux 5.3 or newer; older kernels fall back to
//! pids), `/proc` for memory limits and CPU counts, memfds for the shared-memory rings. Other
//! Unix systems may work but are not tested; other targets do not compile.
//!
//! # Minimum supported Rust version
//!
//! Rust 1.87 (stable), checked by `rust-version` in the manifest. It is raised only when a
//! dependency or a language feature needs it, never in a patch release, and the changelog says
//! so. The last two stable releases are always supported.

#![deny(missing_docs)]
// Unsafe code lives in six modules only, each allowed where it is declared and each with
// its invariants in its docs: `shm::mapping` (the shared-memory mapping), `shm::sealed` (a
// shared value's sealed, read-only mapping), `transport::process`
// (spawning a worker), `transport::sigpipe` (signal masks),
// `worker::bootstrap` (the inherited descriptors and environment) and `worker::exec` (a
// fork inside an entry).
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_debug_implementations)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[cfg(not(unix))]
compile_error!(
    "ppool runs tasks in worker processes that it starts and watches with Unix pipes, pidfds \
     and signals; it supports Linux (and other Unix systems, untested), not this target"
);

mod agent;
mod batch;
mod chunk;
mod codec;
mod completed;
mod config;
mod entry;
mod entry_point;
mod error;
mod hosts;
#[allow(unsafe_code)]
mod huge;
mod insights;
mod mux;
mod outcome;
mod pool;
mod progress_bar;
mod protocol;
mod relaunch;
mod share;
mod shm;
mod stream;
mod supervisor;
mod sync;
mod task;
mod trace;
mod transport;
mod worker;

pub use batch::{Batch, BatchFuture};
pub use completed::{AsCompleted, as_completed};
pub use config::NJobs;
pub use entry::{Entry, Portable};
pub use error::{Cause, Error, ExitCause, Result};
pub use hosts::Remote;
pub use insights::{HostChange, HostEvent, HostInsights, Insights, WorkerInsights, WorkerState};
pub use pool::Builder;
pub use pool::{EntryView, ProcessPool};
pub use share::{Shared, SharedBytes};
pub use stream::Map;
pub use task::Task;
pub use transport::Transport;

/// Marks a free function as a pool entry: something a worker process can run.
///
/// ```
/// use ppool::{pool_entry, ProcessPool};
///
/// #[pool_entry]
/// fn add(a: i64, b: i64) -> i64 {   // several arguments: the task is a tuple
///     a + b
/// }
///
/// ppool::main! {
///     fn main() -> Result<(), ppool::Error> {
///         assert_eq!(add(2, 3), 5);                      // still an ordinary function
///         let pool = ProcessPool::<add>::new(2)?;        // typed by the entry
///         assert_eq!(pool.call((2, 3))?, 5);
///         Ok(())
///     }
/// }
/// ```
///
/// The function is registered in a link-time table under a stable name, its module path and
/// identifier, and a type with the same name implements [`Entry`]. Its arguments and return
/// type must be `serde::Serialize + serde::de::DeserializeOwned + Send + 'static`
/// ([`Portable`] and `Send`); a type that is not is one compile error, at that type (for an
/// entry of several arguments, at the argument list, naming the tuple). Methods, generic,
/// `async`, `unsafe` and `const` functions, reference and `impl Trait` arguments and patterns
/// in the argument list are compile errors that point at the offending token, one per
/// mistake; the type of a rejected entry can still be named, so `ProcessPool::<it>` adds no
/// error of its own. [`Entry`] is sealed: only this attribute implements it.
pub use ppool_macros::pool_entry;

/// Byte buffers as one block on the wire: a top-level `Vec<u8>` argument or result already
/// travels that way; for a byte field inside your own types, mark it
/// `#[serde(with = "ppool::serde_bytes")]` (or use [`serde_bytes::ByteBuf`]), or it is encoded
/// byte by byte.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Image {
///     width: u32,
///     #[serde(with = "ppool::serde_bytes")]
///     pixels: Vec<u8>,
/// }
/// ```
pub use serde_bytes;

/// The current worker's index in its pool (`0..n_jobs`), or `None` outside a worker.
pub fn worker_index() -> Option<usize> {
    worker::exec::current().map(|(index, _)| index)
}

/// The name of the pool this worker serves, or `None` outside a worker.
pub fn worker_pool_name() -> Option<&'static str> {
    worker::exec::current().map(|(_, pool)| pool)
}

/// What the macros' expansions need; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::entry::check::InvalidEntry;
    pub use crate::entry::failure::{Probe, ViaAny, ViaDebug, ViaDisplay};
    pub use crate::entry::sealed::MadeByPoolEntry;
    pub use crate::entry::{ENTRIES, Entry, EntryRecord};
    pub use crate::entry_point::{run_test_worker, run_worker_if_requested};
    pub use crate::protocol::PROTOCOL_VERSION;
    pub use crate::relaunch::{LAUNCHERS, Reentry};
    pub use crate::worker::bootstrap::channel_fds;
    pub use linkme;

    /// The codec, for the benchmarks that measure it against plain postcard.
    pub mod codec {
        pub use crate::codec::{decode, encode_into};
    }
}
