//! The checksum of a shared value: XXH3, 64 bits, with the default secret and seed.
//!
//! It is not there against an attacker (whoever can forge a reference can read the value
//! anyway) but against mistakes: a stale reference to an id reused by another value, a
//! transfer to a remote host that lost or mangled bytes. So it must be fast (the supervisor
//! hashes every value it shares, a host agent every value it receives), take its input in
//! pieces (the agent receives a value in chunks), and give the same answer on every host and
//! in every version: XXH3 is specified, and its 64-bit output is frozen.

use xxhash_rust::xxh3::Xxh3Default;
#[cfg(test)]
use xxhash_rust::xxh3::xxh3_64;

/// The hash of `bytes`, whole.
#[cfg(test)]
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// The hash of bytes that arrive in pieces: the same as [`hash`] of them all.
#[derive(Clone)]
pub(crate) struct Hasher(Xxh3Default);

impl Hasher {
    pub(crate) fn new() -> Self {
        Hasher(Xxh3Default::new())
    }

    /// Takes the next piece.
    pub(crate) fn update(&mut self, piece: &[u8]) {
        self.0.update(piece);
    }

    /// The hash of all the pieces so far.
    pub(crate) fn digest(&self) -> u64 {
        self.0.digest()
    }
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Hasher").field(&self.digest()).finish()
    }
}
