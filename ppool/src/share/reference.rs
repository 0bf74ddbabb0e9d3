//! What travels in a task's arguments in place of a shared value.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::shm::Header;

/// A shared value as it travels: its id in its pool, its length and its hash.
///
/// In the pool's own format (postcard, and any format that is not human-readable) it is one
/// byte string ([`Reference::compact`]): the id and the length as varints, then the hash as 8
/// bytes. One call each way, where a tuple of three integers costs four through serde, and a
/// hash of 64 random bits written as a varint takes 10 bytes and a loop of 10 steps to read:
/// 11 to 29 bytes with the string's length, 13 for one of the first 127 values of a pool, of
/// up to 2 MiB. A human-readable format gets the tuple of the id, the length and the hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Reference {
    /// The value's id in the pool that shared it.
    pub(crate) id: u64,
    /// The payload's length in bytes.
    pub(crate) len: u64,
    /// The payload's hash ([`super::hash`]).
    pub(crate) hash: u64,
}

/// The longest compact form: two varints of 10 bytes and the hash.
pub(super) const COMPACT_MAX: usize = 10 + 10 + 8;

impl Reference {
    /// The reference of the value whose header is `header`.
    #[inline]
    pub(crate) fn of(header: &Header) -> Reference {
        Reference {
            id: header.id,
            len: header.len,
            hash: header.hash,
        }
    }

    /// Writes the compact form into `out`, and returns its length.
    pub(super) fn compact(&self, out: &mut [u8; COMPACT_MAX]) -> usize {
        let mut at = put_varint(out, 0, self.id);
        at = put_varint(out, at, self.len);
        out[at..at + 8].copy_from_slice(&self.hash.to_le_bytes());
        at + 8
    }

    /// Reads the compact form: exactly two varints of at most 10 bytes and 8 bytes, or `None`.
    #[inline]
    pub(super) fn from_compact(bytes: &[u8]) -> Option<Reference> {
        let mut at = 0;
        let id = take_varint(bytes, &mut at)?;
        let len = take_varint(bytes, &mut at)?;
        let hash = u64::from_le_bytes(bytes.get(at..)?.try_into().ok()?);
        Some(Reference { id, len, hash })
    }
}

/// Writes `v` as a varint (7 bits a byte, low bits first) at `out[at..]`; returns where it ends.
fn put_varint(out: &mut [u8; COMPACT_MAX], mut at: usize, mut v: u64) -> usize {
    while v >= 0x80 {
        out[at] = (v as u8) | 0x80;
        v >>= 7;
        at += 1;
    }
    out[at] = v as u8;
    at + 1
}

/// Reads the varint at `bytes[*at..]`, of at most 10 bytes and fitting in a `u64`, and moves
/// `at` past it.
#[inline]
fn take_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let b = *bytes.get(*at + i)?;
        let bits = u64::from(b & 0x7f);
        if i == 9 && bits > 1 {
            return None;
        }
        value |= bits << (7 * i);
        if b & 0x80 == 0 {
            *at += i + 1;
            return Some(value);
        }
    }
    None
}

/// The human-readable form.
#[derive(Serialize, Deserialize)]
struct Tuple(u64, u64, u64);

/// A reference with its compact form, made once: what a stored value is written as in every
/// task that names it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wire {
    reference: Reference,
    compact: [u8; COMPACT_MAX],
    len: u8,
}

impl Wire {
    pub(crate) fn new(reference: Reference) -> Wire {
        let mut compact = [0u8; COMPACT_MAX];
        let len = reference.compact(&mut compact) as u8;
        Wire {
            reference,
            compact,
            len,
        }
    }

    pub(crate) fn reference(&self) -> Reference {
        self.reference
    }

    /// The compact form.
    #[inline]
    fn compact(&self) -> &[u8] {
        &self.compact[..usize::from(self.len)]
    }
}

impl Serialize for Wire {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            let r = self.reference;
            return Tuple(r.id, r.len, r.hash).serialize(serializer);
        }
        serializer.serialize_bytes(self.compact())
    }
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire::new(*self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_then(deserializer, |r| Ok(*r))
    }
}

/// Reads a reference and gives what `then` makes of it, its error as the deserializer's: a
/// handle resolves the reference inside the format's call, and only the handle comes back
/// out of it.
pub(crate) fn deserialize_then<'de, D, R>(
    deserializer: D,
    then: impl FnOnce(&Reference) -> Result<R, String>,
) -> Result<R, D::Error>
where
    D: Deserializer<'de>,
{
    if deserializer.is_human_readable() {
        let Tuple(id, len, hash) = Tuple::deserialize(deserializer)?;
        return then(&Reference { id, len, hash }).map_err(de::Error::custom);
    }
    deserializer.deserialize_bytes(Compact(then))
}

/// Reads the compact form, from a format's bytes (or a sequence of bytes, for a format that
/// writes bytes so), and hands it on.
struct Compact<F>(F);

/// What a malformed reference is told.
const MALFORMED: &str = "a malformed reference to a shared value (not one that a pool wrote)";

impl<'de, R, F> Visitor<'de> for Compact<F>
where
    F: FnOnce(&Reference) -> Result<R, String>,
{
    type Value = R;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reference to a shared value")
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<R, E> {
        let reference = Reference::from_compact(bytes).ok_or_else(|| E::custom(MALFORMED))?;
        (self.0)(&reference).map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<R, A::Error> {
        let mut out = [0u8; COMPACT_MAX];
        let mut n = 0;
        while let Some(b) = seq.next_element::<u8>()? {
            *out.get_mut(n).ok_or_else(|| de::Error::custom(MALFORMED))? = b;
            n += 1;
        }
        self.visit_bytes(&out[..n])
    }
}
