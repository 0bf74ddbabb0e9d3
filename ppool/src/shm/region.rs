//! The region of shared memory of one worker: its layout, its header, and the memfd that holds
//! it, sealed against resizing; and the two ends that the supervisor and the worker make of it.
//!
//! # Use
//!
//! The supervisor builds a [`Layout`], then [`Region::create`]; it hands
//! [`Region::take_fd`] to the worker (the memfd is close-on-exec: clear the flag in the child,
//! as for the pipes) and keeps [`Region::supervisor`]. The worker maps the inherited
//! descriptor with [`Region::from_fd`], which validates the header, and keeps
//! [`Region::worker`]. A region serves one worker process for its whole life: a replacement
//! worker gets a fresh region, since both sides start their indices at zero.
//!
//! # Memory layout
//!
//! Offsets are in bytes from the start of the region, which is page aligned (`mmap`) or
//! 4096-byte aligned (heap regions). Integers are native-endian (both processes run on the
//! same machine) and each one is accessed as an atomic of its own size at an offset that is a
//! multiple of that size.
//!
//! | offset | bytes | content | written by |
//! |---|---|---|---|
//! | 0 | 128 | header: `magic: u64` @0, `version: u64` @8, `job_ring_bytes: u64` @16, `result_ring_bytes: u64` @24, `region_bytes: u64` @32 | the creator, before sharing |
//! | 128 | 128 | progress: `select: u64` @0, slot 0 = `{seq, job, counts}: 3 × u64` @16, slot 1 @40 | worker |
//! | 256 | 128 | job ring, producer line: `tail: u64` @0 | supervisor |
//! | 384 | 128 | job ring, consumer line: `head: u64` @0 | worker |
//! | 512 | 128 | job ring, bell line: `data_bell: u32` @0, `reader_sleeping: u32` @4, `space_bell: u32` @8, `writer_sleeping: u32` @12 | both, rarely |
//! | 640 | 384 | result ring: the same three lines (tail @640, head @768, bells @896) | worker / supervisor |
//! | 4096 | J | job ring data, `J = job_ring_bytes` | supervisor |
//! | 4096 + ⌈J⌉ | R | result ring data, `R = result_ring_bytes` | worker |
//!
//! where `⌈x⌉` rounds up to a multiple of 4096, and the region is `4096 + ⌈J⌉ + ⌈R⌉` bytes.
//! Both ring sizes are powers of two between [`MIN_RING`] and [`MAX_RING`].
//!
//! Lines are 128 bytes, not 64: x86's adjacent-line prefetcher pulls 64-byte lines in pairs,
//! and some ARM cores have 128-byte lines. So the producer's `tail` (written on every push),
//! the consumer's `head` (written on every pop) and the bells (written only around sleeps)
//! never share a line: the producer's check of `reader_sleeping` after each push hits its own
//! cache, and the two sides' index stores do not bounce one line between the cores.
//!
//! The records in the rings' data are `ring`'s business, and the progress line's slots
//! `progress`'s. This module upholds invariants 8 (the header is read once), 9 (the size is
//! sealed) and 10 (regions start fresh), listed with the others in `mapping`.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustix::fs::{MemfdFlags, SealFlags};

use super::mapping::{DATA_START, Mapping, PAGE};
use super::progress::{ProgressReader, ProgressWriter};
use super::ring::{self, Consumer, Producer};

/// The smallest ring, in bytes.
pub(crate) const MIN_RING: usize = 64;
/// The largest ring, in bytes (a record's length must fit the header's 32 bits).
pub(crate) const MAX_RING: usize = 1 << 31;
/// The version of this layout, in the header; bumped whenever the layout changes.
pub(crate) const SHM_VERSION: u64 = 1;

/// The first word of a region.
const MAGIC: u64 = u64::from_le_bytes(*b"PPLSHM\x00\x01");
/// The unit of separation between words that different sides write.
pub(super) const LINE: usize = 128;

/// Header fields, from the start of the region.
const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_JOB_BYTES: usize = 16;
const H_RESULT_BYTES: usize = 24;
const H_REGION_BYTES: usize = 32;

/// The progress line, and its fields within it.
pub(super) const PROGRESS: usize = LINE;
pub(super) const P_SELECT: usize = 0;
pub(super) const P_SLOTS: usize = 16;
pub(super) const P_SLOT_BYTES: usize = 24;
pub(super) const S_SEQ: usize = 0;
pub(super) const S_JOB: usize = 8;
pub(super) const S_COUNTS: usize = 16;

/// The control lines of each ring, from the start of the region.
pub(super) const JOB_CONTROL: usize = 2 * LINE;
pub(super) const RESULT_CONTROL: usize = 5 * LINE;
/// Words within a ring's control lines.
pub(super) const TAIL: usize = 0;
pub(super) const HEAD: usize = LINE;
pub(super) const DATA_BELL: usize = 2 * LINE;
pub(super) const READER_SLEEPING: usize = 2 * LINE + 4;
pub(super) const SPACE_BELL: usize = 2 * LINE + 8;
pub(super) const WRITER_SLEEPING: usize = 2 * LINE + 12;

const _: () = {
    assert!(P_SLOTS + 2 * P_SLOT_BYTES <= LINE);
    assert!(RESULT_CONTROL + 3 * LINE <= DATA_START);
    assert!(JOB_CONTROL + 3 * LINE <= RESULT_CONTROL);
    assert!(H_REGION_BYTES + 8 <= LINE);
};

/// What went wrong with a region or a ring.
#[derive(Debug)]
pub(crate) enum RingError {
    /// A record of `len` bytes can never fit this ring, whose records hold at most `max`
    /// bytes; items are cut into records small enough before they reach a ring (see
    /// [`push_item`](super::push_item)).
    TooLarge {
        /// The record's length.
        len: usize,
        /// The ring's largest record.
        max: usize,
    },
    /// The shared memory breaks an invariant: the peer is broken, died in an impossible
    /// state, or is hostile. The ring is unusable from then on.
    Corrupt(String),
    /// The sizes asked for cannot make a layout.
    Layout(String),
    /// A system call failed.
    Io(io::Error),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::TooLarge { len, max } => write!(
                f,
                "a record of {len} bytes is larger than the ring's {max}-byte limit \
                 (larger items are to be cut into records first)"
            ),
            RingError::Corrupt(m) => write!(f, "corrupt shared memory: {m}"),
            RingError::Layout(m) => write!(f, "bad shared-memory layout: {m}"),
            RingError::Io(e) => write!(f, "shared memory: {e}"),
        }
    }
}

impl std::error::Error for RingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RingError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for RingError {
    fn from(e: io::Error) -> Self {
        RingError::Io(e)
    }
}

impl From<rustix::io::Errno> for RingError {
    fn from(e: rustix::io::Errno) -> Self {
        RingError::Io(e.into())
    }
}

/// A [`RingError::Corrupt`] saying `what`.
pub(super) fn corrupt(what: impl Into<String>) -> RingError {
    RingError::Corrupt(what.into())
}
/// The offsets of a region, computed from its two ring sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    job_ring: usize,
    result_ring: usize,
    result_data: usize,
    region: usize,
}

impl Layout {
    /// The layout of a region with a job ring of `job_ring_bytes` and a result ring of
    /// `result_ring_bytes`: each a power of two between [`MIN_RING`] and [`MAX_RING`].
    pub(crate) fn new(job_ring_bytes: usize, result_ring_bytes: usize) -> Result<Self, RingError> {
        for (what, n) in [("job", job_ring_bytes), ("result", result_ring_bytes)] {
            if !n.is_power_of_two() || !(MIN_RING..=MAX_RING).contains(&n) {
                return Err(RingError::Layout(format!(
                    "the {what} ring's {n} bytes are not a power of two between \
                     {MIN_RING} and {MAX_RING}"
                )));
            }
        }
        let too_big = || RingError::Layout("the region does not fit the address space".into());
        let result_data = job_ring_bytes
            .checked_next_multiple_of(PAGE)
            .and_then(|j| j.checked_add(DATA_START))
            .ok_or_else(too_big)?;
        let region = result_ring_bytes
            .checked_next_multiple_of(PAGE)
            .and_then(|r| r.checked_add(result_data))
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or_else(too_big)?;
        Ok(Layout {
            job_ring: job_ring_bytes,
            result_ring: result_ring_bytes,
            result_data,
            region,
        })
    }

    /// The job ring's capacity in bytes.
    #[cfg(test)]
    pub(crate) fn job_ring_bytes(&self) -> usize {
        self.job_ring
    }

    /// The region's size in bytes.
    #[cfg(test)]
    pub(crate) fn region_bytes(&self) -> usize {
        self.region
    }
}

/// Writes the header of a fresh region.
fn write_header(map: &Mapping, layout: &Layout) {
    map.u64_at(H_MAGIC).store(MAGIC, Ordering::Relaxed);
    map.u64_at(H_VERSION).store(SHM_VERSION, Ordering::Relaxed);
    map.u64_at(H_JOB_BYTES)
        .store(layout.job_ring as u64, Ordering::Relaxed);
    map.u64_at(H_RESULT_BYTES)
        .store(layout.result_ring as u64, Ordering::Relaxed);
    map.u64_at(H_REGION_BYTES)
        .store(layout.region as u64, Ordering::Relaxed);
}

/// Validates the header of a region of `map.len()` bytes and returns its layout.
pub(super) fn read_header(map: &Mapping) -> Result<Layout, RingError> {
    if map.len() < DATA_START {
        return Err(corrupt(format!(
            "a {}-byte region is smaller than its header",
            map.len()
        )));
    }
    let word = |off| map.u64_at(off).load(Ordering::Relaxed);
    if word(H_MAGIC) != MAGIC {
        return Err(corrupt("not a ppool shared-memory region (bad magic)"));
    }
    let version = word(H_VERSION);
    if version != SHM_VERSION {
        return Err(corrupt(format!(
            "shared-memory layout version {version}, this build has {SHM_VERSION}"
        )));
    }
    let size = |off| {
        usize::try_from(word(off)).map_err(|_| corrupt("a ring size beyond the address space"))
    };
    let layout = Layout::new(size(H_JOB_BYTES)?, size(H_RESULT_BYTES)?)
        .map_err(|e| corrupt(format!("the header's ring sizes: {e}")))?;
    let claimed = word(H_REGION_BYTES);
    if claimed != layout.region as u64 || layout.region != map.len() {
        return Err(corrupt(format!(
            "the header's sizes make a {}-byte region; it claims {claimed} and has {}",
            layout.region,
            map.len()
        )));
    }
    Ok(layout)
}

/// A region of shared memory: the header, the progress word and both rings of one worker.
#[derive(Debug)]
pub(crate) struct Region {
    map: Mapping,
    layout: Layout,
    fd: Option<OwnedFd>,
}

impl Region {
    /// Creates a memfd of `layout.region_bytes()` bytes, seals its size, maps it and writes
    /// the header. The descriptor is close-on-exec.
    pub(crate) fn create(layout: Layout) -> Result<Region, RingError> {
        let fd =
            rustix::fs::memfd_create("ppool-shm", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, layout.region as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let map = Mapping::map(fd.as_fd(), layout.region)?;
        write_header(&map, &layout);
        Ok(Region {
            map,
            layout,
            fd: Some(fd),
        })
    }

    /// Maps a region that another process created, passed as `fd`. Refuses a descriptor that
    /// is not sealed against shrinking, a size out of range, and a header that does not match
    /// the size or this build's layout.
    pub(crate) fn from_fd(fd: OwnedFd) -> Result<Region, RingError> {
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|e| corrupt(format!("not a sealed memfd: {e}")))?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(corrupt("the memfd is not sealed against shrinking"));
        }
        let size = rustix::fs::fstat(&fd)?.st_size;
        let largest = Layout::new(MAX_RING, MAX_RING).map_or(isize::MAX as usize, |l| l.region);
        let len = usize::try_from(size)
            .ok()
            .filter(|&n| (DATA_START..=largest).contains(&n))
            .ok_or_else(|| corrupt(format!("a region of {size} bytes")))?;
        let map = Mapping::map(fd.as_fd(), len)?;
        let layout = read_header(&map)?;
        Ok(Region {
            map,
            layout,
            fd: Some(fd),
        })
    }

    /// A region in zeroed heap memory, for both ends in one process in tests (and under
    /// Miri, which cannot map a memfd). It has no descriptor.
    #[cfg(test)]
    pub(crate) fn heap(layout: Layout) -> Result<Region, RingError> {
        let map = Mapping::heap(layout.region)?;
        write_header(&map, &layout);
        Ok(Region {
            map,
            layout,
            fd: None,
        })
    }

    /// The region's layout.
    #[cfg(test)]
    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    /// The memfd, unless taken or a heap region.
    #[cfg(test)]
    pub(crate) fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// Takes the memfd out, to hand it to the worker; the mapping stays.
    pub(crate) fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fd.take()
    }

    /// The supervisor's end: it produces jobs, consumes results and reads progress.
    pub(crate) fn supervisor(self) -> SupervisorEnd {
        self.into_both().0
    }

    /// The worker's end: it consumes jobs, produces results and writes progress.
    pub(crate) fn worker(self) -> WorkerEnd {
        self.into_both().1
    }

    /// Both ends, for a region whose two sides live in this process.
    pub(crate) fn into_both(self) -> (SupervisorEnd, WorkerEnd) {
        let map = Arc::new(self.map);
        let (job_producer, job_consumer) =
            ring::pair(&map, JOB_CONTROL, DATA_START, self.layout.job_ring);
        let (result_producer, result_consumer) = ring::pair(
            &map,
            RESULT_CONTROL,
            self.layout.result_data,
            self.layout.result_ring,
        );
        let supervisor = SupervisorEnd {
            jobs: job_producer,
            results: result_consumer,
            progress: ProgressReader::new(Arc::clone(&map)),
        };
        let worker = WorkerEnd {
            jobs: job_consumer,
            results: result_producer,
            progress: ProgressWriter::new(Arc::clone(&map)),
        };
        (supervisor, worker)
    }
}

/// What the supervisor holds of a region.
#[derive(Debug)]
pub(crate) struct SupervisorEnd {
    /// Sends jobs (TASKS frames and the like) to the worker.
    pub(crate) jobs: Producer,
    /// Receives the worker's results.
    pub(crate) results: Consumer,
    /// The worker's progress.
    pub(crate) progress: ProgressReader,
}

/// What the worker holds of a region.
#[derive(Debug)]
pub(crate) struct WorkerEnd {
    /// Receives jobs from the supervisor.
    pub(crate) jobs: Consumer,
    /// Sends results to the supervisor.
    pub(crate) results: Producer,
    /// Where the worker tells which task it runs.
    pub(crate) progress: ProgressWriter,
}

#[cfg(test)]
mod tests;
