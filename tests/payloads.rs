//! Payloads of every size through both local transports: 0 B, 1 KiB, 1 MiB and 100 MiB, up to
//! just under the frame limit, a result above it failing alone, and a worker killed in the
//! middle of writing a large result.

use ppool::serde_bytes::ByteBuf;
use ppool::{Error, ProcessPool, Transport, pool_entry};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

ppool::test_support!();

/// Echoes the bytes.
#[pool_entry]
fn echo(bytes: ByteBuf) -> ByteBuf {
    bytes
}

/// `n` bytes of a pattern that a shifted or torn copy would not reproduce.
fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 12) as u8)
        .collect()
}

/// The bytes a frame of one echo argument takes beyond the payload: TASKS header, the
/// argument's length prefix, postcard's length varint.
const OVERHEAD: usize = 64;

#[test]
fn every_size_crosses_both_transports_intact() {
    let _deadline = ppool_tests::deadline();
    for transport in [Transport::SharedMemory, Transport::Pipes] {
        let pool = ProcessPool::<echo>::builder()
            .n_jobs(1)
            .transport(transport)
            .build()
            .expect("a pool");
        for n in [0, 1, 1023, 1024, 1 << 20, (1 << 20) + 7, 100 << 20] {
            let sent = pattern(n);
            let back = pool
                .call(ByteBuf::from(sent.clone()))
                .unwrap_or_else(|e| panic!("{transport:?}, {n} bytes: {e}"));
            assert!(
                back.as_slice() == sent.as_slice(),
                "{transport:?}, {n} bytes differ"
            );
        }
    }
}

#[test]
fn payloads_just_under_the_frame_limit_cross_and_one_above_fails_alone() {
    let _deadline = ppool_tests::deadline();
    const LIMIT: usize = 8 << 20;
    for transport in [Transport::SharedMemory, Transport::Pipes] {
        let pool = ProcessPool::<echo>::builder()
            .n_jobs(1)
            .transport(transport)
            .max_frame_size(LIMIT)
            .build()
            .expect("a pool");
        let near = pattern(LIMIT - OVERHEAD);
        let back = pool
            .call(ByteBuf::from(near.clone()))
            .unwrap_or_else(|e| panic!("{transport:?}: just under the limit: {e}"));
        assert!(back.as_slice() == near.as_slice());
        let over = pool.call(ByteBuf::from(pattern(LIMIT + 1)));
        assert!(
            matches!(over, Err(Error::ArgumentsTooLarge { .. })),
            "{transport:?}: {over:?}"
        );
        // The pool goes on.
        assert_eq!(
            pool.call(ByteBuf::from(vec![7])).map(|b| b.into_vec()),
            Ok(vec![7])
        );
    }
}

/// The result ring's tail in this worker's region (the layout the shared-memory transport
/// documents: control lines of 128 bytes, the result ring's tail on the sixth).
const RESULT_TAIL: usize = 5 * 128;

/// Returns `n` bytes; a thread of the worker SIGKILLs it once the result ring has moved
/// `after` bytes, in the middle of writing the result (`None`: it lives).
#[pool_entry]
fn dies_while_answering(n: usize, after: Option<u64>) -> ByteBuf {
    let Some(after) = after else {
        return ByteBuf::from(pattern(n));
    };
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let base = maps
        .lines()
        .find(|l| l.contains("memfd:ppool-shm"))
        .and_then(|l| l.split('-').next())
        .and_then(|a| usize::from_str_radix(a, 16).ok())
        .expect("this worker's channel is shared memory");
    // SAFETY: the tail is an 8-aligned word of this worker's own mapping of its region,
    // which the rings only ever access as an atomic; it is only read here.
    let tail = unsafe { &*((base + RESULT_TAIL) as *const AtomicU64) };
    let start = tail.load(Ordering::Acquire);
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(30);
        while tail.load(Ordering::Acquire) < start.saturating_add(after) && Instant::now() < until {
            std::hint::spin_loop();
        }
        // SAFETY: kill(2) on this very process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    });
    ByteBuf::from(pattern(n))
}

#[test]
fn a_worker_killed_while_writing_a_large_result_fails_that_task_alone() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<dies_while_answering>::builder()
        .n_jobs(1)
        .build()
        .expect("a pool");
    let r = pool.call((64 << 20, Some(4 << 20)));
    assert!(
        matches!(r, Err(Error::WorkerDied { .. })),
        "expected WorkerDied, got {:?}",
        r.map(|b| b.len())
    );
    // A fresh worker answers in full: nothing of the torn result is taken for it.
    let whole = pool
        .call((3 << 20, None))
        .expect("a whole result from the replacement");
    assert!(whole.as_slice() == pattern(3 << 20).as_slice());
}
