use super::*;
use crate::shm::mapping::DATA_START;
use crate::shm::region::{JOB_CONTROL, LINE, read_header};
use crate::shm::testing::{Rng, both, fnv, pattern, round_trip, round_trip_parts};
use std::collections::VecDeque;

const ZERO: Duration = Duration::ZERO;

#[test]
fn round_trips_of_every_size() {
    let (mut s, mut w) = both(256, 512);
    assert_eq!(s.jobs.max_record(), 248);
    for len in 0..=s.jobs.max_record() {
        round_trip(&mut s.jobs, &mut w.jobs, &pattern(len, len as u64));
    }
    for len in 0..=w.results.max_record() {
        let data = pattern(len, 7 + len as u64);
        let cut = len / 3;
        round_trip_parts(
            &mut w.results,
            &mut s.results,
            &[&data[..cut], &[], &data[cut..]],
        );
    }
}

#[test]
fn exactly_the_free_space() {
    let (mut s, mut w) = both(256, 256);
    let mut out = Vec::new();
    // A whole-ring record fits an empty ring at position 0, and then nothing does.
    assert!(s.jobs.try_push(&[&[1; 248]]).unwrap());
    assert!(!s.jobs.try_push(&[]).unwrap());
    assert_eq!(s.jobs.unread().unwrap(), 256);
    assert_eq!(w.jobs.try_pop(&mut out).unwrap(), Some(248));
    assert_eq!(s.jobs.unread().unwrap(), 0);
    // Three records of 64 bytes leave exactly 64 before the end.
    for i in 0..3 {
        assert!(s.jobs.try_push(&[&[i; 56]]).unwrap());
    }
    assert!(s.jobs.try_push(&[&[3; 49]]).unwrap());
    assert!(!s.jobs.try_push(&[]).unwrap());
    for i in 0..3 {
        assert_eq!(w.jobs.try_pop(&mut out).unwrap(), Some(56));
        assert_eq!(out, [i; 56]);
    }
    assert_eq!(w.jobs.try_pop(&mut out).unwrap(), Some(49));
    assert_eq!(w.jobs.try_pop(&mut out).unwrap(), None);
    // TooLarge says so, and says what to do.
    let e = s.jobs.try_push(&[&[0; 249]]).unwrap_err();
    assert!(
        matches!(e, RingError::TooLarge { len: 249, max: 248 }),
        "{e}"
    );
    assert!(e.to_string().contains("cut into records"), "{e}");
    assert!(matches!(
        s.jobs.wait_writable(1000, ZERO, Some(ZERO)),
        Err(RingError::TooLarge { .. })
    ));
}

#[test]
fn a_large_record_wraps_in_two_steps() {
    let (mut s, mut w) = both(256, 256);
    let mut out = Vec::new();
    round_trip(&mut s.jobs, &mut w.jobs, &[0; 96]); // position 104
    // 200 bytes fit neither the 152 left nor the 104 at the start: a pad goes out.
    assert!(!s.jobs.try_push(&[&[5; 200]]).unwrap());
    assert_eq!(s.jobs.ring.pos(s.jobs.tail), 0);
    let pad = s.jobs.ring.read_header(104);
    assert_eq!(pad as u32, PAD);
    assert!(!s.jobs.wait_writable(200, ZERO, Some(ZERO)).unwrap());
    assert_eq!(w.jobs.try_pop(&mut out).unwrap(), None);
    assert!(s.jobs.wait_writable(200, ZERO, Some(ZERO)).unwrap());
    assert!(s.jobs.try_push(&[&[5; 200]]).unwrap());
    assert_eq!(w.jobs.try_pop(&mut out).unwrap(), Some(200));
    assert_eq!(out, [5; 200]);
}

#[test]
fn wrap_around_at_every_offset() {
    let cap = 256;
    let all = [0, 1, 7, 8, 9, 31, 100, 120, 127, 128, 129, 200, 247, 248];
    // Under Miri: every offset still, fewer sizes and steps.
    let lens: &[usize] = if cfg!(miri) {
        &[0, 1, 9, 129, 248]
    } else {
        &all
    };
    let steps = if cfg!(miri) { 16 } else { 400 };
    for start in (0..cap).step_by(8) {
        for (k, &first) in lens.iter().enumerate() {
            let (mut s, mut w) = both(cap, 64);
            if start > 0 {
                round_trip(&mut s.jobs, &mut w.jobs, &vec![1; start - 8]);
            }
            assert_eq!(s.jobs.ring.pos(s.jobs.tail), start);
            round_trip(&mut s.jobs, &mut w.jobs, &pattern(first, first as u64));
            // Then a random mix against a model of the queue.
            let mut rng = Rng((start * 100 + k) as u64);
            let mut model = VecDeque::new();
            let mut out = Vec::new();
            let mut n = 0u64;
            for _ in 0..steps {
                if rng.below(2) == 0 {
                    let data = pattern(lens[rng.below(lens.len())], n);
                    n += 1;
                    if s.jobs.try_push(&[&data]).unwrap() {
                        model.push_back(data);
                    }
                } else {
                    match w.jobs.try_pop(&mut out).unwrap() {
                        Some(len) => {
                            let want = model.pop_front().unwrap();
                            assert_eq!((len, &out), (want.len(), &want));
                        }
                        None => assert!(model.is_empty()),
                    }
                }
            }
            while let Some(want) = model.pop_front() {
                assert_eq!(w.jobs.try_pop(&mut out).unwrap(), Some(want.len()));
                assert_eq!(out, want);
            }
            assert_eq!(w.jobs.try_pop(&mut out).unwrap(), None);
        }
    }
}

/// Streams `n` checksummed records from one thread to another through a `ring`-byte ring.
fn stream(n: u64, ring: usize, spin: Duration) {
    let (mut s, mut w) = both(ring, 64);
    let max = s.jobs.max_record();
    let size = move |i: u64| {
        let r = (i.wrapping_mul(0x9E37_79B9) >> 7) as usize;
        if i.is_multiple_of(97) {
            16 + r % (max - 15)
        } else {
            16 + r % 200
        }
    };
    let producer = std::thread::spawn(move || {
        let mut rec = Vec::new();
        for i in 0..n {
            rec.clear();
            rec.extend_from_slice(&i.to_le_bytes());
            rec.extend_from_slice(&[0; 8]);
            rec.extend(pattern(size(i) - 16, i));
            let sum = fnv(&rec[16..]);
            rec[8..16].copy_from_slice(&sum.to_le_bytes());
            let mut waits = 0;
            while !s.jobs.try_push(&[&rec[..8], &rec[8..]]).unwrap() {
                if !s
                    .jobs
                    .wait_writable(rec.len(), spin, Some(Duration::from_secs(1)))
                    .unwrap()
                {
                    waits += 1;
                    assert!(waits < 30, "the consumer stopped");
                }
            }
        }
    });
    let mut out = Vec::new();
    let mut i = 0;
    let mut waits = 0;
    while i < n {
        match w.jobs.try_pop(&mut out).unwrap() {
            Some(len) => {
                assert_eq!(len, size(i));
                assert_eq!(out[..8], i.to_le_bytes());
                assert_eq!(out[8..16], fnv(&out[16..]).to_le_bytes());
                i += 1;
            }
            None => {
                if !w
                    .jobs
                    .wait_readable(spin, Some(Duration::from_secs(1)))
                    .unwrap()
                {
                    waits += 1;
                    assert!(waits < 30, "the producer stopped");
                }
            }
        }
    }
    producer.join().unwrap();
    assert_eq!(w.jobs.try_pop(&mut out).unwrap(), None);
}

const STREAM: u64 = if cfg!(miri) { 200 } else { 100_000 };

#[test]
fn two_threads_spinning() {
    stream(STREAM, 4096, Duration::from_millis(5));
}

#[test]
fn two_threads_sleeping() {
    stream(STREAM, 4096, ZERO);
}

#[test]
fn two_threads_small_ring() {
    stream(STREAM / 4, 256, Duration::from_micros(20));
}

#[test]
fn waits_time_out_and_wake_ups_arrive() {
    let (mut s, mut w) = both(256, 256);
    let t = Instant::now();
    assert!(
        !w.jobs
            .wait_readable(Duration::from_millis(1), Some(Duration::from_millis(20)))
            .unwrap()
    );
    assert!(t.elapsed() >= Duration::from_millis(20));
    assert!(s.jobs.try_push(&[&[0; 248]]).unwrap());
    let t = Instant::now();
    assert!(
        !s.jobs
            .wait_writable(1, ZERO, Some(Duration::from_millis(20)))
            .unwrap()
    );
    assert!(t.elapsed() >= Duration::from_millis(20));
    assert!(w.jobs.wait_readable(ZERO, Some(ZERO)).unwrap());
    let mut out = Vec::new();
    assert_eq!(w.jobs.try_pop(&mut out).unwrap(), Some(248));

    // An explicit wake ends a sleep with nothing to read.
    let sleeper = std::thread::spawn(move || {
        let t = Instant::now();
        let woke = w
            .jobs
            .wait_readable(ZERO, Some(Duration::from_secs(20)))
            .unwrap();
        (woke, t.elapsed(), w)
    });
    std::thread::sleep(Duration::from_millis(50));
    s.jobs.wake();
    let (woke, took, mut w) = sleeper.join().unwrap();
    assert!(woke && took < Duration::from_secs(20));
    assert_eq!(w.jobs.try_pop(&mut out).unwrap(), None);

    // A producer sleeping on a full ring wakes when the consumer frees space.
    assert!(w.results.try_push(&[&[1; 248]]).unwrap());
    let sleeper = std::thread::spawn(move || {
        let ready = w
            .results
            .wait_writable(100, ZERO, Some(Duration::from_secs(20)))
            .unwrap();
        (ready, w.results.try_push(&[&[2; 100]]).unwrap())
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(s.results.try_pop(&mut out).unwrap(), Some(248));
    assert_eq!(sleeper.join().unwrap(), (true, true));
    assert_eq!(s.results.try_pop(&mut out).unwrap(), Some(100));
}

#[test]
fn a_producer_dead_mid_record_shows_nothing() {
    let (s, mut w) = both(256, 256);
    let ring = &s.jobs.ring;
    // A header and half a payload, never published.
    ring.write_header(0, 1 << 32 | 100);
    ring.map.write(ring.data + 8, &[7; 50]);
    let mut out = vec![1, 2, 3];
    assert_eq!(w.jobs.try_pop(&mut out).unwrap(), None);
    assert_eq!(out, [1, 2, 3]);
    assert!(
        !w.jobs
            .wait_readable(ZERO, Some(Duration::from_millis(5)))
            .unwrap()
    );
}

#[test]
fn bad_indices_are_corrupt() {
    let mut out = Vec::new();
    type Scribble = Box<dyn Fn(&Ring)>;
    let tail_cases: [(&str, Scribble); 5] = [
        (
            "beyond the capacity",
            Box::new(|r| r.word(TAIL).store(520, Ordering::SeqCst)),
        ),
        (
            "far beyond",
            Box::new(|r| r.word(TAIL).store(u64::MAX - 7, Ordering::SeqCst)),
        ),
        (
            "misaligned",
            Box::new(|r| r.word(TAIL).store(68, Ordering::SeqCst)),
        ),
        (
            "backwards",
            Box::new(|r| r.word(TAIL).store(8, Ordering::SeqCst)),
        ),
        // A tail published ahead of its record: the bytes there are a stale lap's.
        (
            "stale",
            Box::new(|r| r.word(TAIL).store(64 * 6, Ordering::SeqCst)),
        ),
    ];
    for (what, scribble) in tail_cases {
        let (mut s, mut w) = both(256, 256);
        for _ in 0..4 {
            round_trip(&mut s.jobs, &mut w.jobs, &[3; 56]);
        }
        // Head = tail = 256: one lap done.
        assert!(s.jobs.try_push(&[&[4; 56]]).unwrap());
        scribble(&s.jobs.ring);
        // The stale case first returns the one real record.
        let e = (0..2).find_map(|_| w.jobs.try_pop(&mut out).err());
        assert!(matches!(e, Some(RingError::Corrupt(_))), "{what}: {e:?}");
    }
    // Bad records within a good tail.
    let record_cases: [(&str, u64); 5] = [
        ("wrong number", 9 << 32 | 8),
        ("zero", 0),
        ("too long", 1 << 32 | 249),
        ("past the tail", 1 << 32 | 64),
        ("a pad at 0", 1 << 32 | u64::from(PAD)),
    ];
    for (what, word) in record_cases {
        let (mut s, mut w) = both(256, 256);
        assert!(s.jobs.try_push(&[&[1; 8]]).unwrap());
        s.jobs.ring.write_header(0, word);
        let e = w.jobs.try_pop(&mut out).unwrap_err();
        assert!(matches!(e, RingError::Corrupt(_)), "{what}: {e}");
    }
    // A record straddling the end, and a pad longer than what was published.
    let (mut s, mut w) = both(256, 256);
    round_trip(&mut s.jobs, &mut w.jobs, &[0; 184]); // position 192
    assert!(s.jobs.try_push(&[&[1; 56]]).unwrap());
    s.jobs.ring.write_header(192, 2 << 32 | 60);
    assert!(matches!(
        w.jobs.try_pop(&mut out),
        Err(RingError::Corrupt(_))
    ));
    let (mut s2, mut w2) = both(256, 256);
    round_trip(&mut s2.jobs, &mut w2.jobs, &[0; 184]);
    s2.jobs.ring.word(TAIL).store(192 + 32, Ordering::SeqCst);
    s2.jobs.ring.write_header(192, 2 << 32 | u64::from(PAD));
    assert!(matches!(
        w2.jobs.try_pop(&mut out),
        Err(RingError::Corrupt(_))
    ));
    // The producer checks the consumer's head the same way.
    for head in [8u64, 300, 4, u64::MAX - 7] {
        let (mut s, mut w) = both(256, 256);
        round_trip(&mut s.jobs, &mut w.jobs, &[0; 56]);
        for _ in 0..3 {
            assert!(s.jobs.try_push(&[&[1; 56]]).unwrap());
        }
        assert_eq!(s.jobs.unread().unwrap(), 192); // it has seen head 64
        s.jobs.ring.word(HEAD).store(head, Ordering::SeqCst);
        // One more record fits what the producer knows to be free; the next one makes
        // it look at the head.
        let e = (0..2).find_map(|_| s.jobs.try_push(&[&[1; 56]]).err());
        assert!(
            matches!(e, Some(RingError::Corrupt(_))),
            "head {head}: {e:?}"
        );
        assert!(matches!(s.jobs.unread(), Err(RingError::Corrupt(_))));
    }
}

/// Overwrites bytes at `off` the way this process may: control words through atomics
/// (invariant 1), data bytes through copies.
fn scribble(map: &Mapping, off: usize, bytes: &[u8]) {
    for (i, &byte) in bytes.iter().enumerate() {
        let at = off + i;
        if at < DATA_START {
            let word = map.u64_at(at & !7);
            let mut v = word.load(Ordering::Relaxed).to_ne_bytes();
            v[at & 7] = byte;
            word.store(u64::from_ne_bytes(v), Ordering::Relaxed);
        } else {
            map.write(at, &[byte]);
        }
    }
}

#[test]
fn scribbles_give_errors_or_records_never_panics() {
    let rounds = if cfg!(miri) { 40 } else { 4000 };
    let mut rng = Rng(42);
    let mut out = Vec::new();
    let (mut seen_ok, mut seen_err) = (0, 0);
    for round in 0..rounds {
        let (mut s, mut w) = both(256, 512);
        // Some traffic, to leave records, pads and laps behind.
        for i in 0..rng.below(12) {
            let data = pattern(rng.below(200), i as u64);
            let _ = s.jobs.try_push(&[&data]).unwrap();
            let _ = w.results.try_push(&[&data]).unwrap();
            if rng.below(3) > 0 {
                let _ = w.jobs.try_pop(&mut out).unwrap();
                let _ = s.results.try_pop(&mut out).unwrap();
            }
        }
        let started = rng.below(5) as u32;
        w.progress.started(round, started);
        if rng.below(2) == 0 {
            w.progress.finished(round, started);
        }
        // Scribble: a few bytes anywhere, or anywhere in the control lines.
        let map = Arc::clone(&s.jobs.ring.map);
        let len = map.len();
        for _ in 0..1 + rng.below(8) {
            let off = match rng.below(3) {
                0 => rng.below(len),
                1 => rng.below(DATA_START),
                _ => (JOB_CONTROL + rng.below(6) * LINE + rng.below(16)) & !7,
            };
            let n = (1 + rng.below(8)).min(len - off);
            scribble(&map, off, &pattern(n, rng.next()));
        }
        // Every reader must answer with a value or an error.
        for _ in 0..20 {
            match w.jobs.try_pop(&mut out) {
                Ok(Some(n)) => {
                    assert!(n <= 248 && out.len() == n);
                    seen_ok += 1;
                }
                Ok(None) => break,
                Err(RingError::Corrupt(_)) => {
                    seen_err += 1;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        for _ in 0..20 {
            match s.results.try_pop(&mut out) {
                Ok(Some(n)) => assert!(n <= 504 && out.len() == n),
                Ok(None) | Err(RingError::Corrupt(_)) => break,
                Err(e) => panic!("{e}"),
            }
        }
        for p in [&mut s.jobs, &mut w.results] {
            let _ = p.try_push(&[&[1; 100]]);
            let _ = p.unread();
            let _ = p.wait_writable(8, ZERO, Some(ZERO));
        }
        let _ = w.jobs.wait_readable(ZERO, Some(ZERO));
        let _ = s
            .results
            .wait_readable(Duration::from_micros(1), Some(ZERO));
        if let Ok(p) = s.progress.read() {
            assert!(p.finished <= p.started);
        }
        if let Ok(layout) = read_header(&map) {
            assert_eq!(layout.region_bytes(), len);
        }
    }
    assert!(seen_ok > 0 && seen_err > 0, "{seen_ok} {seen_err}");
}
