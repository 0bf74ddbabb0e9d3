//! The side that uses shared values: a worker turns a [`Reference`] into the value, through
//! the memfd that the owner process (the supervisor, or a remote host's agent) holds open.
//!
//! # Finding a value
//!
//! The owner keeps each value's memfd open, named `ppool-share-<token>-<id>` (in hex, see
//! `shm::sealed`). A worker lists `/proc/<owner>/fd`, finds the entry whose link reads
//! `/memfd:<name> (deleted)` (noting where the pool's other values are, so that the next
//! lookups read one link instead of all: the owner's descriptors can number thousands),
//! opens it read-only through that entry (which gives a descriptor of the same memfd,
//! without the owner's help), and maps it with [`Sealed::from_fd`], which refuses a memfd that is not
//! fully sealed. The header must then match the reference: the pool's token, the id, the
//! kind, the length and the hash; anything else (a forged or stale reference, a value freed
//! meanwhile and an id reused) is an error for the task, never a wrong value.
//!
//! Opening another process' `/proc/<pid>/fd/<n>` needs what reading its memory needs (the
//! same user, and the owner not made undumpable): a worker and the process that started it
//! have that. `pidfd_getfd` would need the right to attach (which Yama's `ptrace_scope`
//! denies to a child over its parent), and passing descriptors over a socket would need the
//! owner to serve requests: the `/proc` way needs nothing from the owner but to keep the
//! memfd open.
//!
//! # Caches
//!
//! Per worker process (per [`Resolver`]): the mapping of each `SharedBytes` value by id, and
//! each `Shared<T>` value decoded, by id and type, so that it is decoded once per worker
//! whatever the number of tasks. [`forget`] drops both for an id (the pool calls it when the
//! value is freed); handles still held keep what they point to alive.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use rustix::fs::{Mode, OFlags};
use serde::de::DeserializeOwned;

use super::handles::{Held, HeldBytes};
use super::reference::Reference;
use crate::shm::{Header, Kind, Sealed, memfd_link, parse_memfd_link};

/// A decoded value (a [`Held`] of its type), shared by the handles of one worker.
type Decoded = Arc<dyn Any + Send + Sync>;

/// The cell of one (id, type): filled once, under its own lock, so that a value is decoded
/// once even when two threads want it at the same time, without holding the cache's lock
/// while decoding (a value may hold shared values of its own).
type Cell = Arc<Mutex<Option<(Header, Decoded)>>>;

/// Turns references into values, for the processes that a pool's values are found in.
#[derive(Debug)]
pub(crate) struct Resolver {
    /// The process that holds the memfds open.
    owner: u32,
    /// The pool's token.
    token: u64,
    cache: Mutex<Cache>,
    /// Where in the owner's descriptors the last search saw values not looked for yet: the
    /// name of the entry in `/proc/<owner>/fd`, by id. Only a hint: it is checked before use.
    hints: Mutex<HashMap<u64, OsString>>,
    /// Where the values this worker opened were found in the owner's descriptors: what
    /// [`sweep`](Resolver::sweep) looks at to learn that the pool freed one.
    located: Mutex<HashMap<u64, PathBuf>>,
}

#[derive(Debug, Default)]
struct Cache {
    /// `SharedBytes` values, mapped.
    bytes: HashMap<u64, Arc<HeldBytes>>,
    /// `Shared<T>` values, decoded.
    values: HashMap<(u64, TypeId), Cell>,
}

impl Resolver {
    /// A resolver of the values of the pool with `token`, held open by process `owner`.
    pub(crate) fn new(owner: u32, token: u64) -> Resolver {
        Resolver {
            owner,
            token,
            cache: Mutex::new(Cache::default()),
            hints: Mutex::new(HashMap::new()),
            located: Mutex::new(HashMap::new()),
        }
    }

    /// The header that `reference` promises for a value of `kind`.
    fn expected(&self, reference: &Reference, kind: Kind) -> Header {
        Header {
            token: self.token,
            id: reference.id,
            kind,
            len: reference.len,
            hash: reference.hash,
        }
    }

    /// Finds the value's memfd in the owner's descriptors: where an earlier search saw it,
    /// if it is still there, else by reading every descriptor's link, noting on the way where
    /// the pool's other values are.
    fn find(&self, id: u64) -> Result<PathBuf, String> {
        let dir = PathBuf::from(format!("/proc/{}/fd", self.owner));
        let want = memfd_link(self.token, id);
        let hint = self
            .hints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(path) = hint.map(|name| dir.join(name))
            && std::fs::read_link(&path).is_ok_and(|link| link.as_os_str() == want.as_str())
        {
            return Ok(path);
        }
        let cannot = |e: rustix::io::Errno| {
            format!(
                "cannot look for shared value #{id} in process {}: {}: {e}",
                self.owner,
                dir.display()
            )
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let dir_fd = rustix::fs::open(&dir, flags, Mode::empty()).map_err(cannot)?;
        let mut entries = rustix::fs::Dir::read_from(&dir_fd).map_err(cannot)?;
        let mut found = None;
        let mut seen = HashMap::new();
        // Longer links are cut, and so are no memfd of a pool's value.
        let mut link = [0u8; 128];
        while let Some(entry) = entries.read() {
            let entry = entry.map_err(cannot)?;
            let name = entry.file_name();
            let Ok(len) = rustix::fs::readlinkat_raw(&dir_fd, name, &mut link[..]) else {
                continue;
            };
            let name = || OsStr::from_bytes(name.to_bytes()).to_os_string();
            match parse_memfd_link(self.token, &link[..len.min(link.len())]) {
                Some(other) if other == id && found.is_none() => found = Some(dir.join(name())),
                Some(other) => {
                    seen.insert(other, name());
                }
                None => {}
            }
        }
        self.hints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(seen);
        if let Some(path) = found {
            return Ok(path);
        }
        Err(format!(
            "shared value #{id} is not held by process {} (it was freed, or it belongs to \
             another pool)",
            self.owner
        ))
    }

    /// Opens, maps and checks the value that `reference` names.
    fn open(&self, reference: &Reference, kind: Kind) -> Result<Sealed, String> {
        let expected = self.expected(reference, kind);
        let path = self.find(reference.id)?;
        let sealed = Sealed::open(&path)
            .map_err(|e| format!("cannot map shared value #{}: {e}", reference.id))?;
        if sealed.header().kind == Kind::Failed && sealed.header().token == self.token {
            return Err(format!(
                "the host could not store shared value #{}: {}",
                reference.id,
                String::from_utf8_lossy(sealed.bytes())
            ));
        }
        sealed.header().expect(&expected)?;
        self.located
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(reference.id, path);
        Ok(sealed)
    }

    /// Forgets every value whose memfd the owner no longer holds: the pool freed it (a
    /// host's agent closes its memfd when told to; the supervisor, when the last handle and
    /// job naming it are gone). One `readlink` per value this worker opened. Handles still
    /// held keep what they point to.
    pub(crate) fn sweep(&self) {
        let located: Vec<(u64, PathBuf)> = self
            .located
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, path)| (*id, path.clone()))
            .collect();
        for (id, path) in located {
            let want = memfd_link(self.token, id);
            if !std::fs::read_link(&path).is_ok_and(|link| link.as_os_str() == want.as_str()) {
                self.forget(id);
            }
        }
    }

    /// The bytes that `reference` names, mapped once per resolver.
    pub(super) fn bytes(&self, reference: &Reference) -> Result<Arc<HeldBytes>, String> {
        let expected = self.expected(reference, Kind::Bytes);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = cache.bytes.get(&reference.id) {
            held.header().expect(&expected)?;
            return Ok(Arc::clone(held));
        }
        let held = Arc::new(HeldBytes::Resolved(self.open(reference, Kind::Bytes)?));
        cache.bytes.insert(reference.id, Arc::clone(&held));
        Ok(held)
    }

    /// The value that `reference` names, decoded once per resolver and type. The mapping is
    /// not kept: the decoded value is what the worker uses.
    pub(super) fn value<T>(&self, reference: &Reference) -> Result<Arc<Held<T>>, String>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let expected = self.expected(reference, Kind::Value);
        let cell = Arc::clone(
            self.cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values
                .entry((reference.id, TypeId::of::<T>()))
                .or_default(),
        );
        let mut slot = cell.lock().unwrap_or_else(PoisonError::into_inner);
        let decoded = match &*slot {
            Some((header, decoded)) => {
                header.expect(&expected)?;
                Arc::clone(decoded)
            }
            None => match self.decode::<T>(reference) {
                Ok((header, decoded)) => {
                    *slot = Some((header, Arc::clone(&decoded)));
                    decoded
                }
                Err(e) => {
                    // Leave no empty cell behind for a reference that named nothing. A cell
                    // that another thread holds is its business (and waiting for it here,
                    // under the cache's lock, could deadlock with a value being decoded
                    // that resolves a value of its own).
                    drop(slot);
                    let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                    let key = (reference.id, TypeId::of::<T>());
                    if cache
                        .values
                        .get(&key)
                        .is_some_and(|c| matches!(c.try_lock(), Ok(slot) if slot.is_none()))
                    {
                        cache.values.remove(&key);
                    }
                    return Err(e);
                }
            },
        };
        decoded.downcast::<Held<T>>().map_err(|_| {
            format!(
                "internal: shared value #{} cached under another type",
                reference.id
            )
        })
    }

    /// Opens the value that `reference` names and decodes it as a `T`.
    fn decode<T>(&self, reference: &Reference) -> Result<(Header, Decoded), String>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let sealed = self.open(reference, Kind::Value)?;
        let value: T = crate::codec::decode(sealed.bytes()).map_err(|e| {
            format!(
                "cannot decode shared value #{} as `{}`: {e}",
                reference.id,
                std::any::type_name::<T>()
            )
        })?;
        let held = Held {
            reference: Reference::of(sealed.header()),
            stored: None,
            value,
        };
        Ok((*sealed.header(), Arc::new(held)))
    }

    /// Drops what the caches hold of value `id`.
    pub(crate) fn forget(&self, id: u64) {
        EPOCH.fetch_add(1, Ordering::AcqRel);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.bytes.remove(&id);
        cache.values.retain(|&(of, _), _| of != id);
        drop(cache);
        self.hints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        self.located
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Says that value `id` is (probably) at descriptor `fd` of the owner, so that its first
    /// lookup reads one link instead of all of them (optional: for a pool that tells its
    /// workers where a new value is; a wrong hint only costs the search).
    #[cfg(test)]
    pub(crate) fn hint(&self, id: u64, fd: u32) {
        self.hints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, fd.to_string().into());
    }

    /// How many values the last searches saw but were not looked for yet, for the tests.
    #[cfg(test)]
    pub(crate) fn hinted(&self) -> usize {
        self.hints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// How many values the caches hold (mapped, decoded), for the tests.
    #[cfg(test)]
    pub(crate) fn cached(&self) -> (usize, usize) {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        (cache.bytes.len(), cache.values.len())
    }
}

/// The resolver of this process: a worker's, installed when it learns its pool.
static INSTALLED: RwLock<Option<Arc<Resolver>>> = RwLock::new(None);

thread_local! {
    /// A resolver for this thread only, ahead of the installed one (in-process workers, tests).
    static SCOPED: std::cell::RefCell<Option<Arc<Resolver>>> =
        const { std::cell::RefCell::new(None) };
}

/// Installs the resolver of this worker process: values of the pool with `token`, held open by
/// process `owner` (the supervisor for a local worker, the host's agent for a remote one).
/// Replaces (and so empties the caches of) any earlier one.
pub(crate) fn install(owner: u32, token: u64) {
    let resolver = Arc::new(Resolver::new(owner, token));
    *INSTALLED.write().unwrap_or_else(PoisonError::into_inner) = Some(resolver);
    EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// Drops what the installed resolver holds of value `id`, when the pool freed it.
#[cfg(test)]
pub(crate) fn forget(id: u64) {
    if let Some(resolver) = INSTALLED
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
    {
        resolver.forget(id);
    }
}

/// Bumped whenever what a resolver may hand out changes: one is installed, or forgets a
/// value. A thread's last answer ([`LAST`]) holds only while it is unchanged.
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// The last value of each kind this thread resolved, with the epoch it was resolved in: the
/// common case of many tasks naming one value costs no lock and no map look-up. Held weakly:
/// the resolver's caches (and the handles in use) keep a value, so that one the pool freed is
/// let go of whatever a thread last resolved.
struct Last {
    epoch: u64,
    reference: Reference,
    bytes: Option<Weak<HeldBytes>>,
    value: Option<(TypeId, Weak<dyn Any + Send + Sync>)>,
}

thread_local! {
    static LAST: std::cell::RefCell<Option<Last>> = const { std::cell::RefCell::new(None) };
}

/// What the thread's last answer for `reference` was, if it still holds (nothing installed or
/// forgotten since). A thread under a scoped resolver has no last answer: [`scoped`] clears
/// it and [`remember`] keeps none, so that this path, taken by every task that names a
/// value, reads one thread-local.
#[inline]
fn last<R>(reference: &Reference, pick: impl FnOnce(&Last) -> Option<R>) -> Option<R> {
    let epoch = EPOCH.load(Ordering::Acquire);
    LAST.with(|l| {
        l.borrow()
            .as_ref()
            .filter(|last| last.epoch == epoch && last.reference == *reference)
            .and_then(pick)
    })
}

/// Keeps `update`d what this thread resolved for `reference` in `epoch`.
fn remember(epoch: u64, reference: Reference, update: impl FnOnce(&mut Last)) {
    if SCOPED.with(|s| s.borrow().is_some()) {
        return;
    }
    LAST.with(|l| {
        let mut l = l.borrow_mut();
        let fresh = !l
            .as_ref()
            .is_some_and(|last| last.epoch == epoch && last.reference == reference);
        if fresh {
            *l = Some(Last {
                epoch,
                reference,
                bytes: None,
                value: None,
            });
        }
        if let Some(last) = l.as_mut() {
            update(last);
        }
    });
}

/// The bytes that `reference` names, from this thread's resolver.
#[inline]
pub(super) fn bytes(reference: &Reference) -> Result<Arc<HeldBytes>, String> {
    match last(reference, |last| last.bytes.as_ref()?.upgrade()) {
        Some(held) => Ok(held),
        None => bytes_anew(reference),
    }
}

/// The bytes that `reference` names, from the resolver, remembered as this thread's last.
#[cold]
#[inline(never)]
fn bytes_anew(reference: &Reference) -> Result<Arc<HeldBytes>, String> {
    let epoch = EPOCH.load(Ordering::Acquire);
    let held = current()?.bytes(reference)?;
    remember(epoch, *reference, |last| {
        last.bytes = Some(Arc::downgrade(&held))
    });
    Ok(held)
}

/// The value that `reference` names, decoded once, from this thread's resolver.
pub(super) fn value<T>(reference: &Reference) -> Result<Arc<Held<T>>, String>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    let kept = last(reference, |last| {
        last.value
            .as_ref()
            .filter(|(ty, _)| *ty == TypeId::of::<T>())
            .and_then(|(_, decoded)| decoded.upgrade())
    });
    if let Some(decoded) = kept.and_then(|d| d.downcast::<Held<T>>().ok()) {
        return Ok(decoded);
    }
    let epoch = EPOCH.load(Ordering::Acquire);
    let value = current()?.value::<T>(reference)?;
    let decoded: Decoded = value.clone();
    remember(epoch, *reference, |last| {
        last.value = Some((TypeId::of::<T>(), Arc::downgrade(&decoded)));
    });
    Ok(value)
}

/// Forgets the values the pool freed, in the installed resolver (see [`Resolver::sweep`]).
pub(crate) fn sweep() {
    let installed = INSTALLED
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if let Some(resolver) = installed {
        resolver.sweep();
    }
}

/// Runs `f` with `resolver` ahead of the installed one, on this thread: for a worker served
/// inside the supervisor's process, where no process-wide resolver may be installed.
pub(crate) fn scoped<R>(resolver: &Arc<Resolver>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<Resolver>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            SCOPED.with(|s| *s.borrow_mut() = outer);
        }
    }
    let outer = SCOPED.with(|s| s.borrow_mut().replace(Arc::clone(resolver)));
    // What the thread last resolved came from another resolver (see `last`).
    LAST.with(|l| l.borrow_mut().take());
    let _restore = Restore(outer);
    f()
}

/// The resolver for this thread: the scoped one, else the installed one.
pub(super) fn current() -> Result<Arc<Resolver>, String> {
    if let Some(scoped) = SCOPED.with(|s| s.borrow().clone()) {
        return Ok(scoped);
    }
    INSTALLED
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or_else(|| {
            "a shared value can only be received by a pool's worker (no resolver is \
             installed in this process)"
                .to_string()
        })
}
