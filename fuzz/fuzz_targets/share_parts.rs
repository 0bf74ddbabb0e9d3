//! The parts of `ppool/src/share/` that `shm::sealed` uses, compiled into this crate at the
//! same paths (see `rings.rs`).

#[path = "../../ppool/src/share/hash.rs"]
pub(crate) mod hash;
#[path = "../../ppool/src/share/room.rs"]
pub(crate) mod room;
