//! The values a host's agent was sent, held for its workers: each arrives as a SHARE message
//! (its header) and its bytes in SHARE_PART messages, is written into a memfd as it comes,
//! checked against its hash and sealed; its workers then find it in the agent's descriptors
//! as they find a local value in the supervisor's. A FORGET closes it.
//!
//! A value the host cannot store (not enough memory, memfds refused, bytes that do not match
//! their hash) leaves, under its name, a small sealed memfd that says why, so that each task
//! that names it fails with that reason; the agent and its other tasks go on.

use super::store::Stored;
use crate::shm::{Kind, Sealed, SealedWriter};
use std::collections::HashMap;

/// A value on its way in.
struct Arriving {
    writer: SealedWriter,
    token: u64,
    hash: u64,
}

/// What a host holds of a pool's values.
#[derive(Default)]
pub(crate) struct HostValues {
    arriving: HashMap<u64, Arriving>,
    /// Stored values, and the notes of those that could not be.
    held: HashMap<u64, Stored>,
}

impl std::fmt::Debug for HostValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostValues")
            .field("arriving", &self.arriving.len())
            .field("held", &self.held.len())
            .finish()
    }
}

impl HostValues {
    /// Value `id` of `len` bytes comes next; its memfd is made now, at its full size.
    pub(crate) fn begin(&mut self, token: u64, id: u64, kind: u8, len: u64, hash: u64) {
        self.forget(id);
        let made = match Kind::from_code(u64::from(kind)) {
            Some(kind @ (Kind::Value | Kind::Bytes)) => SealedWriter::create(token, id, kind, len),
            _ => Err(std::io::Error::other(format!("an unknown kind {kind}"))),
        };
        match made {
            Ok(writer) if len == 0 => self.finish(
                id,
                Arriving {
                    writer,
                    token,
                    hash,
                },
            ),
            Ok(writer) => {
                self.arriving.insert(
                    id,
                    Arriving {
                        writer,
                        token,
                        hash,
                    },
                );
            }
            Err(e) => self.fail(token, id, &e.to_string()),
        }
    }

    /// Bytes of value `id` at `offset`; the last ones seal it.
    pub(crate) fn part(&mut self, id: u64, offset: u64, data: &[u8]) {
        let Some(arriving) = self.arriving.get_mut(&id) else {
            // Its start failed (and left a note), or it was forgotten meanwhile.
            return;
        };
        let expected = arriving.writer.written();
        let written = if offset == expected {
            arriving.writer.write(data)
        } else {
            Err(std::io::Error::other(format!(
                "bytes at offset {offset} came where {expected} was expected"
            )))
        };
        match written {
            Ok(()) if arriving.writer.remaining() == 0 => {
                if let Some(arriving) = self.arriving.remove(&id) {
                    self.finish(id, arriving);
                }
            }
            Ok(()) => {}
            Err(e) => {
                let token = arriving.token;
                self.arriving.remove(&id);
                self.fail(token, id, &e.to_string());
            }
        }
    }

    /// The pool freed value `id`: its memfd (or note) is closed; workers that map it keep
    /// their mapping until they let it go.
    pub(crate) fn forget(&mut self, id: u64) {
        self.arriving.remove(&id);
        self.held.remove(&id);
    }

    /// How many values it holds, stored or noted as failed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    fn finish(&mut self, id: u64, arriving: Arriving) {
        let Arriving {
            writer,
            token,
            hash,
        } = arriving;
        match writer.finish(Some(hash)) {
            Ok(sealed) => {
                self.held.insert(id, Stored::from_sealed(sealed));
            }
            Err(e) => self.fail(token, id, &e.to_string()),
        }
    }

    /// Leaves a note of why value `id` could not be stored, where its workers look for it.
    fn fail(&mut self, token: u64, id: u64, why: &str) {
        tracing::warn!(value = id, reason = why, "cannot store a shared value");
        if let Ok(note) = Sealed::create(token, id, Kind::Failed, why.as_bytes()) {
            self.held.insert(id, Stored::from_sealed(note));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_in_parts_is_stored_sealed_and_a_wrong_hash_or_offset_leaves_a_note() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 249) as u8).collect();
        let hash = crate::share::hash::hash(&bytes);
        let mut host = HostValues::default();
        host.begin(7, 1, 2, bytes.len() as u64, hash);
        for (k, piece) in bytes.chunks(65_536).enumerate() {
            host.part(1, (k * 65_536) as u64, piece);
        }
        let stored = host.held.get(&1).expect("stored");
        assert_eq!(stored.header().kind, Kind::Bytes);
        assert_eq!(stored.bytes(), &bytes[..]);
        // A wrong hash.
        host.begin(7, 2, 2, 3, hash);
        host.part(2, 0, b"abc");
        let note = host.held.get(&2).expect("a note");
        assert_eq!(note.header().kind, Kind::Failed);
        assert!(String::from_utf8_lossy(note.bytes()).contains("hash"));
        // A part out of place.
        host.begin(7, 3, 2, 6, crate::share::hash::hash(b"abcdef"));
        host.part(3, 3, b"def");
        assert_eq!(
            host.held.get(&3).map(|s| s.header().kind),
            Some(Kind::Failed)
        );
        assert!(host.arriving.is_empty());
        host.forget(1);
        host.forget(2);
        host.forget(3);
        assert_eq!(host.len(), 0);
    }

    #[test]
    fn a_value_too_large_for_memory_leaves_a_note_that_says_so() {
        let mut host = HostValues::default();
        host.begin(7, 1, 2, 1 << 50, 0);
        let note = host.held.get(&1).expect("a note");
        assert_eq!(note.header().kind, Kind::Failed);
        // Parts of it are dropped.
        host.part(1, 0, b"xyz");
        assert!(host.arriving.is_empty());
    }
}
