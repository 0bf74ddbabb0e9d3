//! The side that shares: a pool's [`Store`] makes sealed memfds of values, the [`Stored`]
//! values live as long as a handle or a job names them, and a thread-local collector records
//! which ones the arguments of a job name.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
#[cfg(test)]
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::reference::{Reference, Wire};
use super::{Shared, SharedBytes};
use crate::shm::{Header, Kind, Sealed, os_error};

/// What the pool is told when a stored value is dropped: its id. Called on whatever thread
/// drops the last holder (a user's thread, or the pool's own when a job ends), maybe while
/// unwinding, so it must not block, take the pool's locks or panic: send on a channel.
pub(crate) type ReleaseHook = Arc<dyn Fn(u64) + Send + Sync>;

/// The shared values of one pool: allocates their ids, stores them, and tells the pool when
/// each one is dropped.
pub(crate) struct Store {
    token: u64,
    next_id: AtomicU64,
    release: ReleaseHook,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("token", &format_args!("{:016x}", self.token))
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The store of the pool with `token`. `release` is called with the id of each stored
    /// value once its last holder is gone (see [`ReleaseHook`]).
    pub(crate) fn new(token: u64, release: ReleaseHook) -> Store {
        Store {
            token,
            next_id: AtomicU64::new(1),
            release,
        }
    }

    /// The pool's token, in the name and the header of every memfd of this store.
    #[cfg(test)]
    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    /// Encodes `value` once and stores it. Shared values inside it (a `Shared<T>` field) stay
    /// alive as long as it does, and travel with it.
    pub(crate) fn share<T>(&self, value: T) -> Result<Shared<T>, ShareError>
    where
        T: Serialize + Send + Sync + 'static,
    {
        let mut encoded = Vec::new();
        let (result, inner) = collect(|| crate::codec::encode_into(&value, &mut encoded));
        result.map_err(ShareError::Encode)?;
        if let Some(foreign) = inner.iter().find(|s| s.token() != self.token) {
            return Err(ShareError::Encode(format!(
                "it holds shared value #{} of another pool, which this pool's workers cannot \
                 reach; share that value with this pool",
                foreign.id()
            )));
        }
        let stored = self.store(Kind::Value, &encoded, inner)?;
        drop(encoded);
        Ok(Shared::owned(value, stored))
    }

    /// Stores `bytes` as they are.
    pub(crate) fn share_bytes(&self, bytes: Vec<u8>) -> Result<SharedBytes, ShareError> {
        let stored = self.store(Kind::Bytes, &bytes, Vec::new())?;
        drop(bytes);
        Ok(SharedBytes::owned(stored))
    }

    /// Stores `payload` under a fresh id.
    fn store(
        &self,
        kind: Kind,
        payload: &[u8],
        inner: Vec<Arc<Stored>>,
    ) -> Result<Arc<Stored>, ShareError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        ANY_STORED.store(true, Ordering::Relaxed);
        let sealed =
            Sealed::create(self.token, id, kind, payload).map_err(|source| ShareError::Store {
                len: payload.len() as u64,
                source,
            })?;
        Ok(Arc::new(Stored {
            wire: Wire::new(Reference::of(sealed.header())),
            sealed,
            inner,
            release: Some(Arc::clone(&self.release)),
        }))
    }
}

/// A value stored in a sealed memfd by this process, with the memfd open (so that workers find
/// it in `/proc/<pid>/fd`) and mapped read-only. Dropping the last `Arc` of it closes the
/// memfd and calls the pool's [`ReleaseHook`].
pub(crate) struct Stored {
    sealed: Sealed,
    /// What travels in place of it, made once.
    wire: Wire,
    /// The stored values that this one's encoding names (kept alive with it).
    inner: Vec<Arc<Stored>>,
    release: Option<ReleaseHook>,
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stored")
            .field("header", self.sealed.header())
            .field("inner", &self.inner.len())
            .finish_non_exhaustive()
    }
}

impl Stored {
    /// Wraps a value that this process stored itself (a host agent, with a
    /// [`SealedWriter`](crate::shm::SealedWriter)), with no release hook.
    pub(crate) fn from_sealed(sealed: Sealed) -> Stored {
        ANY_STORED.store(true, Ordering::Relaxed);
        Stored {
            wire: Wire::new(Reference::of(sealed.header())),
            sealed,
            inner: Vec::new(),
            release: None,
        }
    }

    /// The value's id in its pool.
    pub(crate) fn id(&self) -> u64 {
        self.sealed.header().id
    }

    /// The token of the pool that shared it.
    pub(crate) fn token(&self) -> u64 {
        self.sealed.header().token
    }

    /// Its header: token, id, kind, length and hash.
    pub(crate) fn header(&self) -> &Header {
        self.sealed.header()
    }

    /// What travels in place of it.
    pub(crate) fn reference(&self) -> Reference {
        self.wire.reference()
    }

    /// What travels in place of it, as it is written.
    pub(crate) fn wire(&self) -> &Wire {
        &self.wire
    }

    /// The payload (the encoded value, or the bytes), from a read-only mapping: what a host
    /// that lacks it is sent.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.sealed.bytes()
    }

    /// The memfd.
    #[cfg(test)]
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.sealed.fd()
    }
}

impl Drop for Stored {
    fn drop(&mut self) {
        if let Some(release) = &self.release {
            release(self.sealed.header().id);
        }
    }
}

/// Why a value could not be shared.
#[derive(Debug)]
pub(crate) enum ShareError {
    /// Its `Serialize` failed (or panicked); the serializer's message.
    Encode(String),
    /// Its memfd could not be made, filled or sealed.
    Store {
        /// The payload's length in bytes.
        len: u64,
        /// The system's error.
        source: io::Error,
    },
}

impl fmt::Display for ShareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShareError::Encode(message) => write!(f, "could not encode the value: {message}"),
            ShareError::Store { len, source } => {
                write!(
                    f,
                    "could not store a value of {len} bytes in shared memory: {source}"
                )?;
                match os_error(source) {
                    Some(libc::ENOMEM | libc::ENOSPC | libc::EFBIG) => f.write_str(
                        " (a shared value is held in memory, once per host: there is not \
                         enough free memory, or a memory limit of this process' cgroup)",
                    ),
                    Some(libc::EACCES | libc::EPERM | libc::ENOSYS) => f.write_str(
                        " (memfds are refused here: a seccomp policy, or the \
                         vm.memfd_noexec setting)",
                    ),
                    Some(libc::EMFILE | libc::ENFILE) => {
                        f.write_str(" (one descriptor is held per shared value: too many are open)")
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for ShareError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ShareError::Encode(_) => None,
            ShareError::Store { source, .. } => Some(source),
        }
    }
}

/// What this thread's encodings under way name.
struct Collector {
    /// Whether an encoding is being collected.
    active: Cell<bool>,
    /// The address of the value that the collection under way named last (or that its sink
    /// ends with), only ever compared: that value is held by the sink or by `named` while
    /// the collection lasts, so no other value can have its address meanwhile. Many tasks of
    /// a chunk name one value: noting it again costs one comparison.
    last: Cell<usize>,
    /// The address of the value that the sink of the collection under way ended with when it
    /// began (0 if none), and whether the collection named it again (see [`collect_into`]).
    sink_last: Cell<usize>,
    repeated: Cell<bool>,
    /// What the collections under way named, the innermost's last.
    named: RefCell<Vec<Arc<Stored>>>,
}

thread_local! {
    static COLLECTOR: Collector = const {
        Collector {
            active: Cell::new(false),
            last: Cell::new(0),
            sink_last: Cell::new(0),
            repeated: Cell::new(false),
            named: RefCell::new(Vec::new()),
        }
    };
}

/// Runs `encode` (the encoding of a job's arguments) and returns, with its result, the stored
/// values that it named, each once (and those that they name in turn): the values that the
/// job needs on the host that runs it, to be kept alive while the job is queued or running.
/// Nested calls collect separately.
pub(crate) fn collect<R>(encode: impl FnOnce() -> R) -> (R, Vec<Arc<Stored>>) {
    let mut named = Vec::new();
    let (result, _) = collect_into(&mut named, encode);
    named.sort_by_key(|s| (s.token(), s.id()));
    named.dedup_by_key(|s| (s.token(), s.id()));
    (result, named)
}

/// Runs `encode` and adds to `sink` the stored values that it named (and those they name),
/// in the order named, a value named again right after itself once: what a job's encoder
/// keeps for all its tasks without a vector per task (see [`dedup`]). Nested calls collect
/// separately.
///
/// So a value that the sink ends with is not added again. Whether `encode` named it comes
/// back with its result: a caller that moves what this encoding named to another sink (a
/// task that does not fit its chunk starts the next one) must take that value along.
pub(crate) fn collect_into<R>(
    sink: &mut Vec<Arc<Stored>>,
    encode: impl FnOnce() -> R,
) -> (R, bool) {
    if !ANY_STORED.load(Ordering::Relaxed) {
        // Nothing was ever shared in this process: no argument can name a value, and a tiny
        // task's encoding pays nothing for the collector.
        return (encode(), false);
    }
    /// Moves what the collection named into the sink and puts back the outer collection's
    /// state, also when `encode` panics.
    struct Restore<'a> {
        sink: &'a mut Vec<Arc<Stored>>,
        /// Where this collection's values start in `named`.
        from: usize,
        /// The outer collection's state.
        active: bool,
        last: usize,
        sink_last: usize,
        repeated: bool,
        ended: bool,
    }
    impl Restore<'_> {
        /// Ends the collection, once: whether it named the value its sink ended with.
        fn end(&mut self) -> bool {
            if std::mem::replace(&mut self.ended, true) {
                return false;
            }
            COLLECTOR.with(|c| {
                let mut named = c.named.borrow_mut();
                if named.len() > self.from {
                    self.sink.extend(named.drain(self.from..));
                }
                c.active.set(self.active);
                c.last.set(self.last);
                c.sink_last.set(self.sink_last);
                c.repeated.replace(self.repeated)
            })
        }
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            self.end();
        }
    }
    let last = sink.last().map_or(0, address);
    let mut restore = COLLECTOR.with(|c| Restore {
        from: c.named.borrow().len(),
        active: c.active.replace(true),
        last: c.last.replace(last),
        sink_last: c.sink_last.replace(last),
        repeated: c.repeated.replace(false),
        ended: false,
        sink,
    });
    let result = encode();
    (result, restore.end())
}

/// What [`Collector::last`] compares.
fn address(stored: &Arc<Stored>) -> usize {
    Arc::as_ptr(stored) as usize
}

/// Whether this process ever stored a value (a `Stored` exists only where one was).
static ANY_STORED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Removes repeats from values collected with [`collect_into`].
pub(crate) fn dedup(values: &mut Vec<Arc<Stored>>) {
    if values.len() > 1 {
        values.sort_by_key(|s| Arc::as_ptr(s) as usize);
        values.dedup_by(|a, b| Arc::ptr_eq(a, b));
    }
}

/// Records that the encoding under way names `stored`, if it is being collected.
pub(super) fn note(stored: &Arc<Stored>) {
    COLLECTOR.with(|c| {
        if !c.active.get() {
            return;
        }
        let at = address(stored);
        if c.last.get() == at {
            if at == c.sink_last.get() {
                c.repeated.set(true);
            }
            return;
        }
        let mut named = c.named.borrow_mut();
        // The values it names first, so that it ends the sink: the next task that names it
        // finds it last.
        named.extend(stored.inner.iter().cloned());
        named.push(Arc::clone(stored));
        c.last.set(at);
    });
}
