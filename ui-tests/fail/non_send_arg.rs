use ppool::pool_entry;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::marker::PhantomData;

/// Serde in both directions, but not `Send`: it holds a raw pointer marker.
struct Handle {
    id: u32,
    _not_send: PhantomData<*const u8>,
}

impl Serialize for Handle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.id.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Handle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Handle {
            id: u32::deserialize(d)?,
            _not_send: PhantomData,
        })
    }
}

#[pool_entry]
fn id(h: Handle) -> u32 {
    h.id
}

fn main() {}
