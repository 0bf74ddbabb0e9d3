//! What the tests of `shm` share: a small generator, test data, and rings to try.

use super::{Consumer, Layout, Producer, Region, SupervisorEnd, WorkerEnd};

/// SplitMix64: a small, seedable generator.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Both ends of a heap region with rings of these sizes.
pub(super) fn both(job: usize, result: usize) -> (SupervisorEnd, WorkerEnd) {
    Region::heap(Layout::new(job, result).unwrap())
        .unwrap()
        .into_both()
}

/// `len` pseudo-random bytes, made 8 at a time (cheap under Miri).
pub(super) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// FNV-1a, a checksum.
pub(super) fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Pushes `data` on an empty ring, pops it and checks it came back whole.
pub(super) fn round_trip(p: &mut Producer, c: &mut Consumer, data: &[u8]) {
    round_trip_parts(p, c, &[data]);
}

/// Pushes the record made of `parts` on an empty ring, pops it and checks it.
pub(super) fn round_trip_parts(p: &mut Producer, c: &mut Consumer, parts: &[&[u8]]) {
    let data = parts.concat();
    let mut out = vec![0xAA; 3];
    if !p.try_push(parts).unwrap() {
        // A pad went out first; it frees the rest of the ring once popped.
        assert_eq!(c.try_pop(&mut out).unwrap(), None);
        assert!(p.try_push(parts).unwrap(), "len {}", data.len());
    }
    assert_eq!(c.try_pop(&mut out).unwrap(), Some(data.len()));
    assert_eq!(out, data);
    assert_eq!(c.try_pop(&mut out).unwrap(), None);
}
