//! The shared-memory transport for local workers, being built: one memfd per worker holding a
//! ring for jobs, a ring for results, a progress word and futex doorbells. The rings are
//! complete and tested (also under Miri, between two threads); the `Link` and `Peer` over them,
//! and the worker's loop on them, come next. Until then nothing outside the tests uses them.

#![allow(dead_code)]

mod ring;
