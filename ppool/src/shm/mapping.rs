//! The memory of a region, and all the `unsafe` code of `shm`: the mapping (or zeroed heap
//! memory, for both ends in one process), the atomics at its control words, and the copies
//! in and out of its data areas. The other modules reach the shared memory only through
//! [`Mapping`]'s safe methods, which check every offset against the mapping's length.
//!
//! A mapping has two parts (invariant 1): the control lines, its first [`DATA_START`] bytes
//! (the header, the progress word, the rings' indices and doorbells; `region` says where each
//! word lies), accessed only as atomics; and the data areas after them (the rings' records),
//! accessed only by copies.
//!
//! # Invariants
//!
//! The `unsafe` code here relies on these, and the shared memory is a safe channel because of
//! them; each says which module upholds it. The `SAFETY` notes below cite them by number, and
//! so do the other modules of `shm`.
//!
//! 1. **No references into the mapping, and no mixed accesses** (this module). The control
//!    lines (header, progress, indices, bells: the first 4096 bytes) are touched only as
//!    `AtomicU64` / `AtomicU32` at aligned offsets ([`AtomicU64::from_ptr`]). The data areas
//!    are touched only by `ptr::copy_nonoverlapping` between the mapping and local buffers,
//!    record headers included (a header word is copied into a local `u64`). No byte is
//!    accessed both ways, and nothing is reached through `&[u8]`, `&mut [u8]` or `&T` to plain
//!    data. Every offset is checked against the mapping's length before use.
//! 2. **One writer per word** (`ring`, `progress`). `tail`, `data_bell`: producer. `head`,
//!    `space_bell`: consumer. `reader_sleeping`: set by the consumer, cleared by either.
//!    `writer_sleeping`: set by the producer, cleared by either. Progress: worker. Each side
//!    keeps its own index in local memory as the truth and never reads it back from the
//!    mapping, so a peer scribbling over it can only confuse itself.
//! 3. **Index bounds** (`ring`). `head ≤ tail ≤ head + capacity`, both multiples of 8,
//!    checked (in wrapping `u64` arithmetic) every time a side loads the other's index; a new
//!    value must also lie between the last value seen and that bound (indices only move
//!    forward). Anything else is [`RingError::Corrupt`](super::RingError::Corrupt).
//! 4. **Ownership of bytes** (`ring`). Data bytes in `[head, tail)` are published records that
//!    only the consumer reads; bytes in `[tail, head + capacity)` are free and only the
//!    producer writes them. The producer writes a record completely, then publishes it by
//!    storing `tail` (SeqCst, which includes Release); the consumer loads `tail` (Acquire)
//!    before reading, and stores `head` only after it copied the record out. A record is
//!    therefore never seen half-written, even if its producer dies midway: it is simply never
//!    published.
//! 5. **Record checks** (`ring`). The consumer checks, before copying anything: the header's
//!    `seq` is the one it expects (catching a stale record, e.g. a `tail` published ahead of
//!    the writes); `len ≤ capacity - 8`; the record fits before the end of the ring and within
//!    `tail - head`; a pad is not at position 0 and its extent lies within `tail - head`.
//!    Every loop is bounded: one pop reads at most a pad and one record; a wait ends on
//!    readiness, a bell change or its deadline.
//! 6. **Doorbells (Dekker)** (`ring`). A waiter reads the bell, stores its sleeping flag
//!    (SeqCst), then re-loads the peer's index (SeqCst) before `FUTEX_WAIT(bell, value read)`.
//!    The peer stores its index (SeqCst), then loads the flag (SeqCst) and, if set, clears it,
//!    bumps the bell and calls `FUTEX_WAKE`. Sequential consistency makes at least one side
//!    see the other's store, so a wake-up is never lost; a bell bumped before the wait makes
//!    `FUTEX_WAIT` return at once. A producer's quiet pushes store `tail` with Release only
//!    and skip the flag; the [`Producer::notify`](super::Producer::notify) that ends a run of
//!    them issues a SeqCst fence, then loads the flag, so the wake-up is late by at most the
//!    run, never lost. Likewise a consumer publishes `head` only every quarter ring, whenever
//!    it finds the ring empty (before any wait), and when told to
//!    ([`Consumer::publish_head`](super::Consumer::publish_head)): a producer short of room
//!    waits at most that long. A worker publishes its job ring's `head` once it has taken a
//!    whole frame, before it acts on it, so that a frame whose last record lies beyond the
//!    published `head` was never handed over (how the supervisor knows, whatever the progress
//!    word says, that a job did not start). Waits take timeouts so that the caller can check
//!    that the peer is alive; a spurious or hostile bell only makes a wait return early.
//! 7. **Progress** (`progress`). The writer fills the slot `select` does not name, then
//!    publishes `select` (Release). A reader retries (a bounded number of times) until the
//!    slot `select` names reads the same even `seq = 2 × select` before and after its fields.
//!    A writer that dies mid-update leaves `select` on the previous, complete slot.
//! 8. **Header** (`region`). Written by the creator before the descriptor is shared, validated
//!    once by the opener (magic, version, sizes, total length equal to the file's size),
//!    copied into a local [`Layout`](super::Layout), and never read again: scribbling over it
//!    later changes nothing.
//! 9. **Size is sealed** (`region`). The creator seals the memfd (`F_SEAL_SHRINK |
//!    F_SEAL_GROW | F_SEAL_SEAL`) and the opener refuses a descriptor without
//!    `F_SEAL_SHRINK`: a peer cannot truncate the file under the other's mapping, which would
//!    turn its accesses into `SIGBUS`.
//! 10. **Fresh regions** (`region`). The creator's memory is zero except
//!     the header; all indices, bells, flags and progress start at zero, and so do both sides'
//!     local copies.
//!
//! # Why plain copies of payload bytes are acceptable
//!
//! With an honest peer, no byte is ever accessed by both sides at once: invariant 4 orders
//! every write of a byte before every read of it through a Release store and an Acquire load
//! of an index. Within one process (both ends in one process, as in the tests) this is
//! ordinary data-race-free Rust, which Miri checks.
//!
//! A broken or hostile peer in another process may write bytes while we copy them. The Rust
//! abstract machine cannot express that (the other process is outside it), so what matters is
//! what a compiler could exploit, and it has nothing to exploit: the mapping comes from `mmap`
//! and is reached only through a private raw pointer, each payload byte is read once, by
//! `copy_nonoverlapping`, into a local buffer, and nothing is decided on the mapping's bytes:
//! every index is loaded once through an atomic, every record header copied once into a
//! local, and validated there (invariants 3 and 5) before anything depends on it. So the
//! worst a racing peer achieves is wrong bytes in our own buffer, which it could achieve
//! anyway by writing them before we read. Payload bytes are untrusted in any case: the frame
//! parser checks every field of what it gets. What the rings guarantee is memory safety,
//! bounds, and that an honest but dying peer never hands over a torn record.

use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, AtomicU64};

use rustix::mm::{MapFlags, ProtFlags};

/// The alignment of the data areas and the unit of the region's size.
pub(super) const PAGE: usize = 4096;
/// The end of the control lines (atomics only) and the start of the data areas (copies
/// only), the job ring's first (invariant 1).
pub(super) const DATA_START: usize = PAGE;

/// The memory of a region: a shared mapping of a memfd, or zeroed heap memory.
#[derive(Debug)]
pub(super) struct Mapping {
    base: NonNull<u8>,
    len: usize,
    /// Allocated with the global allocator (`PAGE`-aligned) rather than mapped.
    heap: bool,
}

// SAFETY: a `Mapping` is a pointer to memory that stays valid until it is dropped, and that
// this module accesses only through atomics and through copies ordered by the ring protocol
// (invariants 1 and 4); nothing about it is tied to the thread that made it.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared access goes through atomics or protocol-ordered copies only
// (invariants 1 and 4).
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd`, shared, for reading and writing.
    pub(super) fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        // SAFETY: a null hint lets the kernel choose fresh addresses, which overlap no Rust
        // object; the mapping is only ever accessed as invariant 1 says.
        let ptr = unsafe {
            rustix::mm::mmap(
                ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        Ok(Mapping {
            base,
            len,
            heap: false,
        })
    }

    /// `len` zeroed bytes of heap, aligned like a page.
    #[cfg(test)]
    pub(super) fn heap(len: usize) -> io::Result<Mapping> {
        let layout = std::alloc::Layout::from_size_align(len, PAGE).map_err(io::Error::other)?;
        if len == 0 {
            return Err(io::Error::other("an empty region"));
        }
        // SAFETY: the layout's size is not zero (checked above).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Mapping {
            base,
            len,
            heap: true,
        })
    }

    /// The mapping's length in bytes.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Whether `off..off + n` lies in the control lines (atomics only, invariant 1).
    fn in_control(&self, off: usize, n: usize) -> bool {
        off.checked_add(n)
            .is_some_and(|end| end <= DATA_START.min(self.len))
    }

    /// Whether `off..off + n` lies in the data areas (copies only, invariant 1).
    fn in_data(&self, off: usize, n: usize) -> bool {
        off >= DATA_START && off.checked_add(n).is_some_and(|end| end <= self.len)
    }

    /// The `u64` at `off` in the control lines. Offsets are constants of the layout; a bad
    /// one is a bug in `shm`, caught here rather than by the hardware.
    pub(super) fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(
            off.is_multiple_of(8) && self.in_control(off, 8),
            "ring: u64 offset {off} outside the control lines"
        );
        // SAFETY: the 8 bytes at `off` lie inside the mapping (checked above), which lives as
        // long as `&self`; they are 8-aligned because the base is page aligned and `off` is a
        // multiple of 8. In this process the control lines are only ever accessed through
        // atomics of the one size each word has (invariant 1); the peer's accesses are
        // outside this process (see the module doc).
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(off).cast::<u64>()) }
    }

    /// The `u32` at `off` in the control lines (see [`Mapping::u64_at`]).
    pub(super) fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(
            off.is_multiple_of(4) && self.in_control(off, 4),
            "ring: u32 offset {off} outside the control lines"
        );
        // SAFETY: as in `u64_at`, with 4 bytes and 4-alignment.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast::<u32>()) }
    }

    /// Copies `src` into the mapping at `off`.
    pub(super) fn write(&self, off: usize, src: &[u8]) {
        assert!(
            self.in_data(off, src.len()),
            "ring: write of {} bytes at {off} outside the data of a {}-byte mapping",
            src.len(),
            self.len
        );
        // SAFETY: the destination lies inside the mapping (checked above). The source is a
        // caller's slice, which cannot lie in the mapping since no reference into it is ever
        // made (invariant 1), so the two do not overlap. The bytes written are free bytes
        // that the other side of this process does not access (invariant 4).
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(off), src.len());
        }
    }

    /// Copies out the 8 bytes at `off`, as a native-endian `u64`.
    pub(super) fn read_u64(&self, off: usize) -> u64 {
        assert!(
            self.in_data(off, 8),
            "ring: read of 8 bytes at {off} outside the data of a {}-byte mapping",
            self.len
        );
        let mut bytes = [0u8; 8];
        // SAFETY: the source lies inside the mapping (checked above), the destination is a
        // local array; they do not overlap. In this process nothing writes the source
        // meanwhile (invariant 4); see `read_into` about a racing peer.
        unsafe {
            ptr::copy_nonoverlapping(self.base.as_ptr().add(off), bytes.as_mut_ptr(), 8);
        }
        u64::from_ne_bytes(bytes)
    }

    /// Appends the `len` bytes at `off` to `out`.
    pub(super) fn read_into(&self, off: usize, len: usize, out: &mut Vec<u8>) {
        assert!(
            self.in_data(off, len),
            "ring: read of {len} bytes at {off} outside the data of a {}-byte mapping",
            self.len
        );
        out.reserve(len);
        let at = out.len();
        // SAFETY: the source lies inside the mapping (checked above); `out` has room for `len`
        // more bytes (reserved) in its own allocation, which is not the mapping, so they do
        // not overlap. After the copy its first `at + len` bytes are initialised, so
        // `set_len` is sound. In this process nothing writes the source meanwhile
        // (invariant 4); a peer in another process writing it yields wrong bytes, never
        // undefined behaviour here (see the module doc).
        unsafe {
            ptr::copy_nonoverlapping(self.base.as_ptr().add(off), out.as_mut_ptr().add(at), len);
            out.set_len(at + len);
        }
    }

    /// Copies out the byte at `off`.
    pub(super) fn read_u8(&self, off: usize) -> u8 {
        assert!(
            self.in_data(off, 1),
            "ring: read of 1 byte at {off} outside the data of a {}-byte mapping",
            self.len
        );
        let mut byte = 0u8;
        // SAFETY: the source lies inside the mapping (checked above), the destination is a
        // local; they do not overlap. In this process nothing writes the source meanwhile
        // (invariant 4); see `read_into` about a racing peer.
        unsafe {
            ptr::copy_nonoverlapping(self.base.as_ptr().add(off), &mut byte, 1);
        }
        byte
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.heap {
            // The layout was valid when allocating, so it is now.
            if let Ok(layout) = std::alloc::Layout::from_size_align(self.len, PAGE) {
                // SAFETY: `base` was allocated by `alloc_zeroed` with this layout and is
                // freed once, here; no reference into it outlives `self` (invariant 1).
                unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) };
            }
        } else {
            // SAFETY: `base..base + len` is the mapping made in `Mapping::map`, unmapped once,
            // here; no reference into it outlives `self` (invariant 1). A failure leaves it
            // mapped.
            let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests;
