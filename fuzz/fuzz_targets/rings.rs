//! Writes arbitrary bytes over a shared-memory region, as a broken or hostile worker could,
//! then reads it as the supervisor does: every pop, every progress read, every wait must
//! return a record, nothing, or an error, never panic, hang or touch memory outside the
//! region.
//!
//! `cargo +nightly fuzz run rings` from the `fuzz` folder. The input is a list of
//! `(offset: u16, byte)` pokes, applied to a region that has seen some honest traffic first.
//! The randomized test `scribbles_give_errors_or_records_never_panics` in
//! `ppool/src/shm/ring/tests.rs` checks the same promises on stable (and under Miri).

#![no_main]

// The shared-memory module is crate-private and needs only std, rustix and the crate's
// `sync` helpers, so they are compiled straight into this crate, at the same paths.
#[allow(dead_code, unreachable_pub, unused_imports)]
#[rustfmt::skip]
#[path = "../../ppool/src/shm/mod.rs"]
mod shm;
#[allow(dead_code, unreachable_pub)]
#[rustfmt::skip]
#[path = "../../ppool/src/sync.rs"]
mod sync;
// Large buffers in huge pages, which `shm` asks for when it makes room for a large item.
#[allow(dead_code, unreachable_pub)]
#[rustfmt::skip]
#[path = "../../ppool/src/huge.rs"]
mod huge;
// What `shm::sealed` (a shared value's memfd) uses of the shared-inputs module.
#[allow(dead_code, unreachable_pub)]
#[rustfmt::skip]
#[path = "share_parts.rs"]
mod share;

use libfuzzer_sys::fuzz_target;
use shm::{Layout, Region};
use std::time::Duration;

/// Each ring's bytes.
const RING: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(layout) = Layout::new(RING, RING) else {
        return;
    };
    let Ok(mut region) = Region::create(layout) else {
        return;
    };
    let Some(fd) = region.take_fd() else { return };
    let (mut sup, mut worker) = region.into_both();
    // Honest traffic first, so that indices, pads and record numbers are not all zero.
    for i in 0..(data.first().copied().unwrap_or(0) % 16) {
        let record = vec![i; usize::from(i) * 37];
        let _ = worker.results.try_push(&[&record]);
        let _ = sup.jobs.try_push(&[&record]);
    }
    worker.progress.started(7, 3);
    // The other process's view of the same memory, scribbled on.
    let Some(len) = rustix::fs::fstat(&fd)
        .ok()
        .and_then(|stat| usize::try_from(stat.st_size).ok())
    else {
        return;
    };
    // SAFETY: a fresh shared mapping of the region's memfd, at an address the kernel picks.
    let Ok(ptr) = (unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
            &fd,
            0,
        )
    }) else {
        return;
    };
    for poke in data.get(1..).unwrap_or_default().chunks_exact(3) {
        let off = usize::from(u16::from_le_bytes([poke[0], poke[1]])) % len;
        // SAFETY: `off` is inside the mapping; the reader side only ever reads it through
        // atomics and copies, which is what a racing peer in another process meets too.
        unsafe { ptr.cast::<u8>().add(off).write_volatile(poke[2]) };
    }
    let mut out = Vec::new();
    for _ in 0..64 {
        match sup.results.try_pop_tagged_into(|_| &mut out) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
        assert!(out.len() <= RING * 64);
    }
    let _ = sup.progress.read();
    let _ = sup.results.wait_readable(Duration::ZERO, Some(Duration::ZERO));
    let _ = sup.jobs.wait_writable(16, Duration::ZERO, Some(Duration::ZERO));
    let _ = sup.jobs.try_push(&[b"after"]);
    // SAFETY: unmaps the mapping made above; nothing refers to it any more.
    let _ = unsafe { rustix::mm::munmap(ptr, len) };
});
