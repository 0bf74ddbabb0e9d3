use super::*;
use crate::shm::testing::both;

#[test]
fn progress_reads_are_never_torn() {
    let (s, mut w) = both(64, 64);
    assert_eq!(s.progress.read().unwrap(), Progress::default());
    w.progress.started(5, 0);
    assert_eq!(s.progress.read().unwrap().running(), Some(0));
    w.progress.finished(5, 0);
    w.progress.started(5, 1);
    let p = s.progress.read().unwrap();
    assert_eq!(
        (p.job, p.started, p.finished, p.running()),
        (5, 2, 1, Some(1))
    );
    w.progress.finished(5, 1);
    assert_eq!(s.progress.read().unwrap().running(), None);
    w.progress.started(6, 0);
    assert_eq!(
        s.progress.read().unwrap(),
        Progress {
            job: 6,
            started: 1,
            finished: 0
        }
    );
    // A writer dead mid-update (the slot it was filling is half written) shows the
    // previous state.
    let next = PROGRESS + P_SLOTS + ((w.progress.version + 1) & 1) as usize * P_SLOT_BYTES;
    let map = &w.progress.map;
    map.u64_at(next + S_SEQ)
        .store((w.progress.version + 1) * 2 - 1, Ordering::Relaxed);
    map.u64_at(next + S_JOB).store(99, Ordering::Relaxed);
    assert_eq!(s.progress.read().unwrap().job, 6);
    // An inconsistent word is an error, not a loop.
    map.u64_at(PROGRESS + P_SELECT)
        .store(12345, Ordering::Relaxed);
    assert!(matches!(s.progress.read(), Err(RingError::Corrupt(_))));

    // Concurrent: the reader sees states in order, each one consistent.
    let (s, mut w) = both(64, 64);
    let jobs: u64 = if cfg!(miri) { 5 } else { 2000 };
    // The writer starts once the reader has read once, so that the reads overlap the
    // writes even when the machine runs the writer to its end in one time slice.
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let go = std::sync::Arc::clone(&reading);
    let writer = std::thread::spawn(move || {
        while !go.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::yield_now();
        }
        for job in 1..=jobs {
            for i in 0..(job % 7) as u32 + 1 {
                w.progress.started(job, i);
                w.progress.finished(job, i);
            }
        }
    });
    let mut last = Progress::default();
    let mut reads = 0u64;
    loop {
        let done = writer.is_finished();
        let p = s.progress.read().unwrap();
        reading.store(true, std::sync::atomic::Ordering::Release);
        assert!(
            p.finished <= p.started && p.started <= p.finished + 1,
            "{p:?}"
        );
        assert!(
            p.job <= jobs && p.started <= (p.job % 7) as u32 + 1,
            "{p:?}"
        );
        assert!(
            (p.job, p.finished) >= (last.job, last.finished),
            "{p:?} after {last:?}"
        );
        last = p;
        reads += 1;
        if done {
            break;
        }
    }
    writer.join().unwrap();
    assert_eq!(s.progress.read().unwrap().job, jobs);
    assert!(reads > 1);
}
