//! The anchors ppool is compared with.

pub(crate) mod procspawn;
pub(crate) mod python;
pub(crate) mod raw_pipe;
pub(crate) mod shm_pingpong;
