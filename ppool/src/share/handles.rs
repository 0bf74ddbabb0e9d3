//! The public handles, [`Shared`] and [`SharedBytes`].

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::reference::{self, Reference};
use super::resolve;
use super::store::{self, Stored};
use crate::shm::{Header, Sealed};

/// A value shared once with a pool's workers, instead of being sent with every task.
///
/// ```
/// use ppool::{pool_entry, ProcessPool, Shared};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Model {
///     weights: Vec<f32>,
/// }
///
/// #[pool_entry]
/// fn score(model: Shared<Model>, row: Vec<f32>) -> f32 {
///     let m: &Model = &model; // decoded once per worker, then kept
///     m.weights.iter().zip(&row).map(|(w, x)| w * x).sum()
/// }
///
/// ppool::main! {
///     fn main() -> Result<(), ppool::Error> {
///         let pool = ProcessPool::<score>::new(-1)?;
///         let model: Shared<Model> = pool.share(Model { weights: vec![0.5; 1 << 10] })?;
///         let rows = (0..100).map(|i| vec![i as f32; 1 << 10]);
///         let scores = pool.batch(rows.map(|r| (model.clone(), r))).wait()?;
///         assert_eq!(scores.len(), 100);
///         assert_eq!(model.weights.len(), 1 << 10); // readable here too
///         pool.join()
///     }
/// }
/// ```
///
/// `pool.share(value)` encodes the value once, into memory that every worker of the host
/// maps read-only (a remote host receives the bytes at most once). A `Shared<T>` is a small
/// handle: cloning it is cheap (an `Arc`), and in a task's arguments (alone, in a tuple, in a
/// struct of yours) it travels as a reference of a few bytes, never as the value. To give one
/// to an initializer, share it with the builder first
/// ([`Builder::share`](crate::Builder::share)).
///
/// In a worker, it dereferences to the value, decoded the first time a task of that worker
/// receives it and kept for the next ones. In the program that shared it, it dereferences to
/// the value it was given. Dropping the last clone there frees the value on every host, once
/// the tasks that use it have finished.
///
/// A worker that cannot get the value (its host could not store it, or its bytes do not
/// decode as a `T`) fails the tasks that name it, with the reason; the pool goes on.
pub struct Shared<T> {
    /// One allocation for all it holds: a clone, sent with each task, moves one reference
    /// count.
    held: Arc<Held<T>>,
}

/// What a [`Shared`] holds: the value, what travels in place of it, and the stored value in
/// the process that shared it (`None` in a worker).
pub(super) struct Held<T> {
    pub(super) reference: Reference,
    pub(super) stored: Option<Arc<Stored>>,
    pub(super) value: T,
}

impl<T> Shared<T> {
    /// The handle of `value`, just stored as `stored`.
    pub(super) fn owned(value: T, stored: Arc<Stored>) -> Self {
        Shared {
            held: Arc::new(Held {
                reference: stored.reference(),
                stored: Some(stored),
                value,
            }),
        }
    }

    /// What travels in place of the value.
    #[cfg(test)]
    pub(crate) fn reference(&self) -> Reference {
        self.held.reference
    }

    /// The stored value, in the process that shared it.
    #[cfg(test)]
    pub(crate) fn stored(&self) -> Option<&Arc<Stored>> {
        self.held.stored.as_ref()
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            held: Arc::clone(&self.held),
        }
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.held.value
    }
}

impl<T> AsRef<T> for Shared<T> {
    fn as_ref(&self) -> &T {
        &self.held.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("id", &self.held.reference.id)
            .field("bytes", &self.held.reference.len)
            .field("value", &self.held.value)
            .finish()
    }
}

impl<T> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.held.stored {
            Some(stored) => {
                store::note(stored);
                stored.wire().serialize(serializer)
            }
            None => self.held.reference.serialize(serializer),
        }
    }
}

impl<'de, T> Deserialize<'de> for Shared<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        reference::deserialize_then(deserializer, |reference| {
            Ok(Shared {
                held: resolve::value::<T>(reference)?,
            })
        })
    }
}

/// Bytes shared once with a pool's workers, read in place from read-only shared memory.
///
/// ```
/// use ppool::{pool_entry, ProcessPool, SharedBytes};
///
/// #[pool_entry]
/// fn count(text: SharedBytes, byte: u8) -> usize {
///     text.iter().filter(|&&b| b == byte).count() // a &[u8] into the mapping, not a copy
/// }
///
/// ppool::main! {
///     fn main() -> Result<(), ppool::Error> {
///         let pool = ProcessPool::<count>::new(-1)?;
///         let text: SharedBytes = pool.share_bytes(b"one\ntwo\nthree\n".repeat(1000))?;
///         let lines = pool.call((text.clone(), b'\n'))?;
///         assert_eq!(lines, 3000);
///         assert_eq!(text.len(), 14_000); // readable here too
///         pool.join()
///     }
/// }
/// ```
///
/// `pool.share_bytes(bytes)` copies the bytes once into memory that every worker of the host
/// maps read-only (a remote host receives them at most once). A `SharedBytes` dereferences
/// to `&[u8]` straight into that mapping, in the workers and in the program that shared it
/// alike: the bytes are never copied again, and no process can change them. Cloning it is
/// cheap (an `Arc`); in a task's arguments it travels as a reference of a few bytes. To give
/// one to an initializer, share it with the builder first
/// ([`Builder::share_bytes`](crate::Builder::share_bytes)).
///
/// Dropping the last clone in the program that shared it frees the bytes on every host, once
/// the tasks that use them have finished.
#[derive(Clone)]
pub struct SharedBytes {
    /// One pointer: a clone moves one reference count, and a task's arguments that hold it
    /// move less.
    held: Arc<HeldBytes>,
}

/// Where the bytes of a [`SharedBytes`] are mapped, with their header: what travels in place
/// of them is read from it (in a worker, the header was checked against the reference that
/// came).
#[derive(Debug)]
pub(super) enum HeldBytes {
    /// In the process that shared them.
    Stored(Arc<Stored>),
    /// In a worker.
    Resolved(Sealed),
}

impl HeldBytes {
    pub(super) fn header(&self) -> &Header {
        match self {
            HeldBytes::Stored(stored) => stored.header(),
            HeldBytes::Resolved(sealed) => sealed.header(),
        }
    }
}

impl SharedBytes {
    /// The handle of bytes just stored as `stored`.
    pub(super) fn owned(stored: Arc<Stored>) -> Self {
        SharedBytes {
            held: Arc::new(HeldBytes::Stored(stored)),
        }
    }

    /// What travels in place of the bytes.
    #[cfg(test)]
    pub(crate) fn reference(&self) -> Reference {
        Reference::of(self.held.header())
    }

    /// The stored value, in the process that shared it.
    #[cfg(test)]
    pub(crate) fn stored(&self) -> Option<&Arc<Stored>> {
        match &*self.held {
            HeldBytes::Stored(stored) => Some(stored),
            HeldBytes::Resolved(_) => None,
        }
    }
}

impl Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &*self.held {
            HeldBytes::Stored(stored) => stored.bytes(),
            HeldBytes::Resolved(sealed) => sealed.bytes(),
        }
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reference = Reference::of(self.held.header());
        f.debug_struct("SharedBytes")
            .field("id", &reference.id)
            .field("len", &reference.len)
            .finish()
    }
}

impl Serialize for SharedBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &*self.held {
            HeldBytes::Stored(stored) => {
                store::note(stored);
                stored.wire().serialize(serializer)
            }
            HeldBytes::Resolved(sealed) => Reference::of(sealed.header()).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        reference::deserialize_then(deserializer, |reference| {
            Ok(SharedBytes {
                held: resolve::bytes(reference)?,
            })
        })
    }
}
