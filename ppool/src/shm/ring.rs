//! The rings of a region: the **job ring** (supervisor → worker) and the **result ring**
//! (worker → supervisor), single-producer single-consumer byte rings of variable-length
//! records, each carrying one frame body (see `protocol`); and their **doorbells**: a `u32`
//! futex word per direction and ring. A waiting side spins for a caller-chosen time, then
//! says it sleeps (a flag) and sleeps with `FUTEX_WAIT` (shared, not private: two
//! processes). The other side bumps the word and calls `FUTEX_WAKE` only when the flag says
//! someone sleeps, so the fast path makes no system call.
//!
//! A record holds at most a ring's [`Producer::max_record`] bytes, and [`Producer::try_push`]
//! refuses a larger one with [`RingError::TooLarge`]. Larger items never come here whole:
//! [`push_item`](super::push_item) cuts every item into records of at most a quarter of the
//! ring.
//!
//! After any [`RingError::Corrupt`], the ring is unusable (its state is not advanced past the
//! bad record) and the peer is to be treated as broken.
//!
//! # Records
//!
//! A ring's `head` and `tail` are byte counts since the start (`u64`, so they never wrap in
//! practice); a position in the data is the count modulo the capacity. A record starts at a
//! multiple of 8 with an 8-byte header word `seq << 32 | len`, then `len` payload bytes, then
//! padding to the next multiple of 8: it takes `8 + ⌈len⌉₈` bytes. `seq` numbers the records
//! (pads included) 1, 2, …, `u32::MAX`, 1, … — never 0, so zeroed memory is never a valid
//! header. A record never straddles the end of the ring: when it does not fit in what is left
//! before the end, the producer writes a pad there (`len = u32::MAX`), which covers the rest
//! of the ring, and the record goes to position 0. Where each ring's indices, bells and data
//! lie in the region is `region`'s layout.
//!
//! # Invariants
//!
//! The numbered invariants cited here are listed in `mapping`, which holds all the `unsafe`
//! code of the shared-memory transport.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use rustix::thread::futex;

use super::mapping::Mapping;
use super::region::{
    DATA_BELL, HEAD, READER_SLEEPING, RingError, SPACE_BELL, TAIL, WRITER_SLEEPING, corrupt,
};

/// The bytes of a record's header word.
const RECORD_HEADER: usize = 8;
/// The `len` of a pad record.
const PAD: u32 = u32::MAX;
/// Spin iterations between two looks at the clock.
const SPIN_BATCH: u32 = 64;

/// `n` rounded up to a multiple of 8 (`n` at most [`MAX_RING`](super::region::MAX_RING)).
fn round8(n: usize) -> usize {
    (n + 7) & !7
}

/// One ring's place in a mapping.
#[derive(Debug)]
struct Ring {
    map: Arc<Mapping>,
    /// Offset of its three control lines.
    control: usize,
    /// Offset of its data.
    data: usize,
    /// Its data's bytes: a power of two.
    cap: usize,
}

impl Ring {
    fn word(&self, at: usize) -> &AtomicU64 {
        self.map.u64_at(self.control + at)
    }

    fn bell(&self, at: usize) -> &AtomicU32 {
        self.map.u32_at(self.control + at)
    }

    /// The position of a byte count in the data.
    fn pos(&self, index: u64) -> usize {
        (index & (self.cap as u64 - 1)) as usize
    }

    /// Copies out the header word of the record at `pos` (a multiple of 8, at most
    /// `cap - 8`).
    fn read_header(&self, pos: usize) -> u64 {
        debug_assert!(pos + RECORD_HEADER <= self.cap);
        self.map.read_u64(self.data + pos)
    }

    /// Copies in the header word of the record at `pos` (a multiple of 8, at most `cap - 8`).
    fn write_header(&self, pos: usize, word: u64) {
        debug_assert!(pos + RECORD_HEADER <= self.cap);
        self.map.write(self.data + pos, &word.to_ne_bytes());
    }
}

/// Both halves of the ring whose control lines start at `control` in `map` and whose `cap`
/// bytes of data (a power of two) start at `data`.
pub(super) fn pair(
    map: &Arc<Mapping>,
    control: usize,
    data: usize,
    cap: usize,
) -> (Producer, Consumer) {
    let ring = || Ring {
        map: Arc::clone(map),
        control,
        data,
        cap,
    };
    (Producer::new(ring()), Consumer::new(ring()))
}

/// The next record number after `seq`: never 0.
fn next_seq(seq: u32) -> u32 {
    seq.checked_add(1).unwrap_or(1)
}

/// Rings `bell` if the flag at `sleeping` says the peer sleeps on it (invariant 6).
fn ring_if_sleeping(ring: &Ring, sleeping: usize, bell: usize) {
    let flag = ring.bell(sleeping);
    if flag.load(Ordering::SeqCst) != 0 && flag.swap(0, Ordering::SeqCst) != 0 {
        ring_bell(ring.bell(bell));
    }
}

/// Bumps `bell` and wakes whoever sleeps on it.
fn ring_bell(bell: &AtomicU32) {
    bell.fetch_add(1, Ordering::Release);
    // A wake on a valid, aligned, mapped word cannot fail; a lost wake-up would only delay a
    // waiter until its timeout.
    let _ = futex::wake(bell, futex::Flags::empty(), i32::MAX as u32);
}

/// Waits until `ready` says so or the bell at `bell` changes: spins for at most `spin`, then
/// sleeps on the bell until `timeout` (from the call) has passed. `ready` gets the ordering
/// its load of the peer's index must use. Returns false when the time ran out.
fn wait_on(
    ring: &Ring,
    bell: usize,
    sleeping: usize,
    spin: Duration,
    timeout: Option<Duration>,
    mut ready: impl FnMut(Ordering) -> Result<bool, RingError>,
) -> Result<bool, RingError> {
    let bell = ring.bell(bell);
    let sleeping = ring.bell(sleeping);
    let rung = bell.load(Ordering::Acquire);
    if ready(Ordering::Acquire)? {
        return Ok(true);
    }
    let start = Instant::now();
    // A timeout too large for a deadline is no limit.
    let deadline = timeout.and_then(|t| crate::sync::deadline(start, t));
    let spin = timeout.map_or(spin, |t| spin.min(t));
    if !spin.is_zero() {
        loop {
            for _ in 0..SPIN_BATCH {
                std::hint::spin_loop();
                if ready(Ordering::Acquire)? || bell.load(Ordering::Acquire) != rung {
                    return Ok(true);
                }
            }
            if start.elapsed() >= spin {
                break;
            }
        }
    }
    loop {
        if bell.load(Ordering::Acquire) != rung {
            return Ok(true);
        }
        let left = match deadline {
            None => None,
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Ok(false),
            },
        };
        sleeping.store(1, Ordering::SeqCst);
        match ready(Ordering::SeqCst) {
            Ok(false) => {}
            other => {
                sleeping.store(0, Ordering::Relaxed);
                return other;
            }
        }
        let timespec = left.map(|left| futex::Timespec {
            tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: left.subsec_nanos().into(),
        });
        let slept = futex::wait(bell, futex::Flags::empty(), rung, timespec.as_ref());
        sleeping.store(0, Ordering::Relaxed);
        match slept {
            Ok(()) => {}
            Err(e)
                if e == rustix::io::Errno::AGAIN
                    || e == rustix::io::Errno::INTR
                    || e == rustix::io::Errno::TIMEDOUT => {}
            Err(e) => return Err(e.into()),
        }
        if ready(Ordering::Acquire)? {
            return Ok(true);
        }
    }
}

/// The writing half of a ring.
#[derive(Debug)]
pub(crate) struct Producer {
    ring: Ring,
    /// Where the next record goes; the truth, never read back from the mapping.
    tail: u64,
    /// The consumer's head as last loaded and validated.
    head: u64,
    /// The next record's number.
    seq: u32,
}

impl Producer {
    fn new(ring: Ring) -> Self {
        Producer {
            ring,
            tail: 0,
            head: 0,
            seq: 1,
        }
    }

    /// The ring's capacity in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.ring.cap
    }

    /// The largest record this ring takes: its capacity less one header.
    pub(crate) fn max_record(&self) -> usize {
        self.ring.cap - RECORD_HEADER
    }

    /// The bytes a record of `len` takes in the ring.
    fn record_size(&self, len: usize) -> Result<usize, RingError> {
        if len > self.max_record() {
            return Err(RingError::TooLarge {
                len,
                max: self.max_record(),
            });
        }
        Ok(RECORD_HEADER + round8(len))
    }

    /// Appends one record made of `parts`, concatenated. False: no room now (try again after
    /// [`Producer::wait_writable`]); the ring may have advanced to its start meanwhile.
    pub(crate) fn try_push(&mut self, parts: &[&[u8]]) -> Result<bool, RingError> {
        let Some((pos, len, size)) = self.write_parts(parts)? else {
            return Ok(false);
        };
        self.commit(pos, len, size);
        Ok(true)
    }

    /// Writes a record of `parts` at the tail, unpublished: its position, length and size in
    /// the ring, or `None` when it does not fit now.
    fn write_parts(&mut self, parts: &[&[u8]]) -> Result<Option<(usize, usize, usize)>, RingError> {
        let len = parts
            .iter()
            .try_fold(0usize, |n, part| n.checked_add(part.len()))
            .unwrap_or(usize::MAX);
        let size = self.record_size(len)?;
        if !self.room(size, Ordering::Acquire)? {
            return Ok(None);
        }
        let pos = self.ring.pos(self.tail);
        let mut at = self.ring.data + pos + RECORD_HEADER;
        for part in parts {
            self.ring.map.write(at, part);
            at += part.len();
        }
        Ok(Some((pos, len, size)))
    }

    /// Appends one record made of `parts`, like [`Producer::try_push`], but does not wake a
    /// sleeping consumer: a run of quiet pushes ends with [`Producer::notify`], so that a
    /// consumer waiting for the end of a run is woken once, not once per record.
    pub(crate) fn try_push_quiet(&mut self, parts: &[&[u8]]) -> Result<bool, RingError> {
        let Some((pos, len, size)) = self.write_parts(parts)? else {
            return Ok(false);
        };
        let word = u64::from(self.seq) << 32 | len as u64;
        self.ring.write_header(pos, word);
        self.seq = next_seq(self.seq);
        self.tail += size as u64;
        self.ring.word(TAIL).store(self.tail, Ordering::Release);
        Ok(true)
    }

    /// Wakes the consumer if it sleeps: the end of a run of [`Producer::try_push_quiet`].
    /// A SeqCst fence orders the Release stores of `tail` before its load of the sleeping
    /// flag (invariant 6).
    pub(crate) fn notify(&self) {
        fence(Ordering::SeqCst);
        ring_if_sleeping(&self.ring, READER_SLEEPING, DATA_BELL);
    }

    /// Waits until a record of `len` bytes fits: spins for at most `spin`, then sleeps until
    /// `timeout` (`None`: no limit). True: try to push now (the consumer may also have rung
    /// its space bell); false: the time ran out.
    pub(crate) fn wait_writable(
        &mut self,
        len: usize,
        spin: Duration,
        timeout: Option<Duration>,
    ) -> Result<bool, RingError> {
        let size = self.record_size(len)?;
        let Producer {
            ring,
            tail,
            head,
            seq,
            ..
        } = self;
        wait_on(ring, SPACE_BELL, WRITER_SLEEPING, spin, timeout, |order| {
            room(ring, tail, head, seq, size, order)
        })
    }

    /// Bytes published that the consumer has not freed yet (records, headers and padding).
    pub(crate) fn unread(&mut self) -> Result<u64, RingError> {
        refresh_head(&self.ring, self.tail, &mut self.head, Ordering::Acquire)?;
        Ok(self.tail - self.head)
    }

    /// Rings the consumer's bell, whether or not it sleeps: its wait returns.
    #[cfg(test)]
    pub(crate) fn wake(&self) {
        ring_bell(self.ring.bell(DATA_BELL));
    }

    /// Bytes published so far: where the next record goes, counted from the ring's start.
    pub(crate) fn written(&self) -> u64 {
        self.tail
    }

    /// Whether `size` bytes are free at the tail, padding to the start first if needed.
    fn room(&mut self, size: usize, order: Ordering) -> Result<bool, RingError> {
        room(
            &self.ring,
            &mut self.tail,
            &mut self.head,
            &mut self.seq,
            size,
            order,
        )
    }

    /// Writes the header of the record at `pos` and publishes it.
    fn commit(&mut self, pos: usize, len: usize, size: usize) {
        let word = u64::from(self.seq) << 32 | len as u64;
        self.ring.write_header(pos, word);
        self.seq = next_seq(self.seq);
        let new = self.tail + size as u64;
        publish(&self.ring, &mut self.tail, new);
    }
}

/// Loads the consumer's head and checks it against invariant 3: between the last head seen
/// and the tail, a multiple of 8.
fn refresh_head(ring: &Ring, tail: u64, head: &mut u64, order: Ordering) -> Result<(), RingError> {
    let new = ring.word(HEAD).load(order);
    if !new.is_multiple_of(8) || new.wrapping_sub(*head) > tail.wrapping_sub(*head) {
        return Err(corrupt(format!(
            "the consumer's head {new} is not a multiple of 8 within [{head}, {tail}]"
        )));
    }
    *head = new;
    Ok(())
}

/// See [`Producer::room`]; free-standing so that a wait can borrow the ring apart.
fn room(
    ring: &Ring,
    tail: &mut u64,
    head: &mut u64,
    seq: &mut u32,
    size: usize,
    order: Ordering,
) -> Result<bool, RingError> {
    let cap = ring.cap as u64;
    let free_at_least = |tail: u64, head: &mut u64, n: usize| {
        if cap - (tail - *head) >= n as u64 {
            return Ok(true);
        }
        refresh_head(ring, tail, head, order)?;
        Ok::<_, RingError>(cap - (tail - *head) >= n as u64)
    };
    let pos = ring.pos(*tail);
    let rest = ring.cap - pos;
    if size <= rest {
        return free_at_least(*tail, head, size);
    }
    // The record goes to the start; a pad covers the rest, once that is free.
    if !free_at_least(*tail, head, rest)? {
        return Ok(false);
    }
    let word = u64::from(*seq) << 32 | u64::from(PAD);
    ring.write_header(pos, word);
    *seq = next_seq(*seq);
    let new = *tail + rest as u64;
    publish(ring, tail, new);
    free_at_least(*tail, head, size)
}

/// Stores a new tail and rings the consumer if it sleeps.
fn publish(ring: &Ring, tail: &mut u64, new: u64) {
    *tail = new;
    ring.word(TAIL).store(new, Ordering::SeqCst);
    ring_if_sleeping(ring, READER_SLEEPING, DATA_BELL);
}

/// The reading half of a ring.
#[derive(Debug)]
pub(crate) struct Consumer {
    ring: Ring,
    /// Where the next record starts; the truth, never read back from the mapping.
    head: u64,
    /// The head as last stored in the mapping.
    stored_head: u64,
    /// The producer's tail as last loaded and validated.
    tail: u64,
    /// The next record's number.
    seq: u32,
}

impl Consumer {
    fn new(ring: Ring) -> Self {
        Consumer {
            ring,
            head: 0,
            stored_head: 0,
            tail: 0,
            seq: 1,
        }
    }

    /// Takes the next record out, copying it into `out` (replacing its contents), and returns
    /// its length; `None` (and `out` untouched) when none is published. Every record is
    /// checked as invariant 5 says; a bad one is [`RingError::Corrupt`] and leaves the ring
    /// where it was.
    #[cfg(test)]
    pub(crate) fn try_pop(&mut self, out: &mut Vec<u8>) -> Result<Option<usize>, RingError> {
        self.pop_with(|map, off, len| {
            out.clear();
            map.read_into(off, len, out);
            Ok(len)
        })
    }

    /// Takes the next record out as a tag (its first byte) and the rest, which is appended
    /// to the buffer `out` picks for the tag; returns the tag and the length appended, or
    /// `None` (and no buffer touched) when none is published. Every record is checked as
    /// invariant 5 says; a bad one, or an empty one, is [`RingError::Corrupt`] and leaves the
    /// ring where it was.
    pub(crate) fn try_pop_tagged_into<'a>(
        &mut self,
        out: impl FnOnce(u8) -> &'a mut Vec<u8>,
    ) -> Result<Option<(u8, usize)>, RingError> {
        self.pop_with(|map, off, len| {
            if len == 0 {
                return Err(corrupt("an empty record where a tag was due"));
            }
            let tag = map.read_u8(off);
            map.read_into(off + 1, len - 1, out(tag));
            Ok((tag, len - 1))
        })
    }

    /// Finds the next record, checks it (invariant 5), hands its offset and length in the
    /// mapping to `take`, which copies it out, and frees it if `take` succeeds.
    fn pop_with<R>(
        &mut self,
        take: impl FnOnce(&Mapping, usize, usize) -> Result<R, RingError>,
    ) -> Result<Option<R>, RingError> {
        let cap = self.ring.cap;
        // At most a pad, then a record: a pad is never at position 0.
        for _ in 0..2 {
            if self.head == self.tail {
                self.refresh_tail()?;
                if self.head == self.tail {
                    self.release();
                    return Ok(None);
                }
            }
            let avail = (self.tail - self.head) as usize;
            let pos = self.ring.pos(self.head);
            let word = self.ring.read_header(pos);
            let (seq, len) = ((word >> 32) as u32, word as u32);
            if seq != self.seq {
                return Err(corrupt(format!(
                    "the record at byte {} has number {seq}, expected {}",
                    self.head, self.seq
                )));
            }
            let rest = cap - pos;
            if len == PAD {
                if pos == 0 || rest > avail {
                    return Err(corrupt(format!(
                        "a pad at byte {} of {rest} bytes, with {avail} published",
                        self.head
                    )));
                }
                self.head += rest as u64;
                self.seq = next_seq(self.seq);
                continue;
            }
            let len = len as usize;
            let size = RECORD_HEADER + round8(len.min(cap));
            if len > cap - RECORD_HEADER || size > rest || size > avail {
                return Err(corrupt(format!(
                    "a record of {len} bytes at position {pos} of a {cap}-byte ring, \
                     with {avail} bytes published"
                )));
            }
            let taken = take(&self.ring.map, self.ring.data + pos + RECORD_HEADER, len)?;
            self.head += size as u64;
            self.seq = next_seq(self.seq);
            if self.head - self.stored_head >= (cap / 4) as u64 {
                self.release();
            }
            return Ok(Some(taken));
        }
        Err(corrupt("two pads in a row"))
    }

    /// Waits until a record may be read: spins for at most `spin`, then sleeps until
    /// `timeout` (`None`: no limit). True: try to pop now (the producer may also have rung
    /// its data bell); false: the time ran out.
    pub(crate) fn wait_readable(
        &mut self,
        spin: Duration,
        timeout: Option<Duration>,
    ) -> Result<bool, RingError> {
        if self.head != self.tail {
            return Ok(true);
        }
        let head = self.head;
        let ring = &self.ring;
        wait_on(ring, DATA_BELL, READER_SLEEPING, spin, timeout, |order| {
            Ok(ring.word(TAIL).load(order) != head)
        })
    }

    /// Prepares to sleep on this ring among others (`transport::shm::wait_any`): says that
    /// the reader sleeps (invariant 6), and returns the data bell and the value it had before,
    /// to wait on; `None` when a record may be read already (the reader stays awake). Every
    /// `arm` that returned a bell is followed by [`disarm`](Self::disarm) once awake.
    pub(crate) fn arm(&self) -> Option<(&AtomicU32, u32)> {
        if self.head != self.tail {
            return None;
        }
        let bell = self.ring.bell(DATA_BELL);
        let rung = bell.load(Ordering::Acquire);
        let sleeping = self.ring.bell(READER_SLEEPING);
        sleeping.store(1, Ordering::SeqCst);
        if self.ring.word(TAIL).load(Ordering::SeqCst) != self.head {
            sleeping.store(0, Ordering::Relaxed);
            return None;
        }
        Some((bell, rung))
    }

    /// The reader is awake again, after [`arm`](Self::arm).
    pub(crate) fn disarm(&self) {
        self.ring.bell(READER_SLEEPING).store(0, Ordering::Relaxed);
    }

    /// Publishes how far it has read now, rather than at the next quarter ring or empty ring
    /// (invariant 6), and rings the producer if it sleeps.
    pub(crate) fn publish_head(&mut self) {
        self.release();
    }

    /// Loads the producer's tail and checks it against invariant 3: between the last tail
    /// seen and `head + capacity`, a multiple of 8.
    fn refresh_tail(&mut self) -> Result<(), RingError> {
        let new = self.ring.word(TAIL).load(Ordering::Acquire);
        let bound = self.head + self.ring.cap as u64;
        if !new.is_multiple_of(8) || new.wrapping_sub(self.tail) > bound - self.tail {
            return Err(corrupt(format!(
                "the producer's tail {new} is not a multiple of 8 within [{}, {bound}]",
                self.tail
            )));
        }
        self.tail = new;
        Ok(())
    }

    /// Frees what was read: stores the head and rings the producer if it sleeps.
    fn release(&mut self) {
        if self.stored_head != self.head {
            self.stored_head = self.head;
            self.ring.word(HEAD).store(self.head, Ordering::SeqCst);
            ring_if_sleeping(&self.ring, WRITER_SLEEPING, SPACE_BELL);
        }
    }
}

#[cfg(test)]
mod tests;
