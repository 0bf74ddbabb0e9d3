//! Shared memory between the supervisor and one local worker, and how frames and task
//! outcomes travel through it as tagged records.
//!
//! One `memfd` per worker, mapped `MAP_SHARED` by both processes, holds a ring per direction
//! and a progress word. The modules:
//!
//! - `mapping`: the memory of a region, and all the `unsafe` code of `shm` (the mapping, the
//!   copies in and out of it, the atomics on its control words), the only module of `shm`
//!   where the crate allows it; its docs list the numbered invariants that code relies on,
//!   and which module upholds each;
//! - `region`: the layout of a region and its header, the memfd and its seals, and the ends
//!   that the two sides make of a region ([`SupervisorEnd`], [`WorkerEnd`]);
//! - `ring`: the job ring and the result ring, single-producer single-consumer rings of
//!   records ([`Producer`], [`Consumer`]), and their futex doorbells;
//! - `progress`: the progress word, a seqlock in which the worker says which task of which
//!   job it started and finished, so that its death leaves an exact account
//!   ([`ProgressReader`]);
//! - this module: items (frames and task outcomes) as tagged records over a ring, in safe
//!   code.
//!
//! The tests of each module sit beside it (`ring/tests.rs` and so on), and what they share
//! is in `testing`.
//!
//! # Items
//!
//! Every record starts with a tag byte: the kind of item it carries ([`ITEM_FRAME`], a frame
//! body as `protocol` defines it, or [`ITEM_OUTCOME`], one task's outcome as a RESULTS body
//! holds it), with [`MORE`] set when more pieces of the same item follow. An item larger than
//! a piece is cut into pieces of at most a quarter of the ring, so that the two sides copy in
//! parallel: the producer writes the next piece while the consumer copies the last one out.
//! Items never interleave: a ring has one producer, which writes an item's pieces in a row.

#[allow(unsafe_code)]
mod mapping;
mod progress;
mod region;
mod ring;
#[allow(unsafe_code)]
mod sealed;
#[cfg(test)]
mod testing;

pub(crate) use progress::ProgressReader;
pub(crate) use region::{Layout, Region, RingError, SupervisorEnd, WorkerEnd};
pub(crate) use ring::{Consumer, Producer};
pub(crate) use sealed::{
    Header, Kind, Sealed, SealedWriter, memfd_link, os_error, parse_memfd_link,
};

/// A frame body.
pub(crate) const ITEM_FRAME: u8 = 1;
/// One task's outcome.
pub(crate) const ITEM_OUTCOME: u8 = 2;
/// Set in a tag when more pieces of the same item follow.
const MORE: u8 = 0x80;
/// Set in the tag of a record that only says how long the item after it is (a `u64`), so
/// that the reader makes room once rather than growing its buffer piece by piece.
const HINT: u8 = 0x40;

/// The largest piece of an item in one record of `producer`'s ring (the tag aside).
fn piece_len(producer: &Producer) -> usize {
    (producer.capacity() / 4).min(producer.max_record()) - 1
}

/// How a push that finds the ring full waits: for room for a record of the given length, or
/// until it must give up (an error: the consumer is gone).
pub(crate) type WaitRoom<'a> = dyn FnMut(&mut Producer, usize) -> Result<(), RingError> + 'a;

/// Sends one item as records, waiting with `wait` while the ring is full. `quiet`: the
/// consumer is not woken for it (see [`Producer::try_push_quiet`]), unless the ring fills up;
/// the caller ends the run with [`Producer::notify`]. Returns whether any record went out,
/// also on error.
pub(crate) fn push_item(
    producer: &mut Producer,
    item: u8,
    bytes: &[u8],
    quiet: bool,
    wait: &mut WaitRoom<'_>,
) -> Result<(), (RingError, bool)> {
    let piece = piece_len(producer);
    let mut sent_any = false;
    if bytes.len() > piece {
        let hint = (bytes.len() as u64).to_le_bytes();
        push_record(producer, &[&[item | HINT], &hint], quiet, wait).map_err(|e| (e, false))?;
        sent_any = true;
    }
    let mut rest = bytes;
    loop {
        let (this, next) = rest.split_at(rest.len().min(piece));
        let tag = [if next.is_empty() { item } else { item | MORE }];
        push_record(producer, &[&tag, this], quiet, wait).map_err(|e| (e, sent_any))?;
        sent_any = true;
        if next.is_empty() {
            return Ok(());
        }
        rest = next;
    }
}

/// Pushes one record of `parts`, waiting with `wait` while the ring is full (waking the
/// consumer first in a quiet run: whatever it waits for, it must drain first).
fn push_record(
    producer: &mut Producer,
    parts: &[&[u8]],
    quiet: bool,
    wait: &mut WaitRoom<'_>,
) -> Result<(), RingError> {
    let len = parts.iter().map(|p| p.len()).sum();
    loop {
        let pushed = if quiet {
            producer.try_push_quiet(parts)?
        } else {
            producer.try_push(parts)?
        };
        if pushed {
            return Ok(());
        }
        if quiet {
            producer.notify();
        }
        wait(producer, len)?;
    }
}

/// Puts items back together from the records of a ring, piece by piece, as they come.
#[derive(Debug)]
pub(crate) struct Assembler {
    /// The kind of the item whose pieces are coming, if one is under way.
    open: Option<u8>,
    /// Bytes of the item under way.
    len: usize,
    /// The largest item accepted.
    max: usize,
}

impl Assembler {
    /// An assembler that refuses items larger than `max` bytes.
    pub(crate) fn new(max: usize) -> Self {
        Assembler {
            open: None,
            len: 0,
            max,
        }
    }

    /// Changes the largest item accepted.
    pub(crate) fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Takes records until an item is whole: appends frame bytes to `frame` and outcome bytes
    /// to `outcome`, and returns the kind of the item completed; `None` when no record is
    /// published now (an item under way goes on with the next call, with the same buffers).
    /// A tag of no known kind, an item whose pieces change kind, or an item above the limit
    /// is [`RingError::Corrupt`].
    pub(crate) fn pop(
        &mut self,
        consumer: &mut Consumer,
        frame: &mut Vec<u8>,
        outcome: &mut Vec<u8>,
    ) -> Result<Option<u8>, RingError> {
        loop {
            // Into the buffer of the item under way, or of the kind its tag names.
            let open = self.open;
            let mut start = 0;
            let (frame_buf, outcome_buf, at) = (&mut *frame, &mut *outcome, &mut start);
            let pick = move |tag: u8| {
                let into = match open.unwrap_or(tag & !(MORE | HINT)) {
                    ITEM_OUTCOME => outcome_buf,
                    _ => frame_buf,
                };
                *at = into.len();
                into
            };
            let Some((tag, len)) = consumer.try_pop_tagged_into(pick)? else {
                return Ok(None);
            };
            let item = tag & !(MORE | HINT);
            if tag & HINT != 0 && self.open.is_none() && len == 8 {
                let into = if item == ITEM_OUTCOME {
                    &mut *outcome
                } else {
                    &mut *frame
                };
                let mut total = [0u8; 8];
                total.copy_from_slice(&into[start..]);
                into.truncate(start);
                let room = (u64::from_le_bytes(total) as usize).min(self.max);
                crate::huge::reserve(into, room);
                continue;
            }
            if item != ITEM_FRAME && item != ITEM_OUTCOME || tag & HINT != 0 {
                return Err(ring_corrupt(format!("a record with the unknown tag {tag}")));
            }
            if let Some(open) = self.open
                && open != item
            {
                return Err(ring_corrupt(format!(
                    "a piece of kind {item} inside an item of kind {open}"
                )));
            }
            self.len += len;
            if self.len > self.max {
                return Err(ring_corrupt(format!(
                    "an item of more than {} bytes, above the limit of {}",
                    self.len, self.max
                )));
            }
            if tag & MORE != 0 {
                self.open = Some(item);
                continue;
            }
            self.open = None;
            self.len = 0;
            return Ok(Some(item));
        }
    }
}

fn ring_corrupt(what: String) -> RingError {
    RingError::Corrupt(what)
}

#[cfg(test)]
mod tests;
