//! What travels in a task's arguments in place of a shared value.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A shared value as it travels: its id in its pool, its length and its hash.
///
/// On the wire it is a tuple of the id, the length and the hash, three integers (varints
/// under postcard: one call each way, where eight bytes would be eight): 3 to 30 bytes; about
/// 16 for one of the first 127 values of a pool, of up to 32 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Reference {
    /// The value's id in the pool that shared it.
    pub(crate) id: u64,
    /// The payload's length in bytes.
    pub(crate) len: u64,
    /// The payload's hash ([`super::hash`]).
    pub(crate) hash: u64,
}

/// The wire form.
#[derive(Serialize, Deserialize)]
struct Wire(u64, u64, u64);

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire(self.id, self.len, self.hash).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Wire(id, len, hash) = Wire::deserialize(deserializer)?;
        Ok(Reference { id, len, hash })
    }
}
