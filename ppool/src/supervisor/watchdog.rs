//! The watchdog: one thread per pool that kills a worker whose task ran past its deadline or
//! whose memory grew past the limit, and leaves a verdict for the thread that reads the
//! worker's channel. It only exists when a timeout or a memory limit is set.

use crate::sync::{lock, wait_timeout};
use crate::transport::Peer;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why the watchdog killed a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Timeout,
    /// Its task was cancelled.
    Cancelled,
    Memory {
        rss: u64,
    },
}

#[derive(Debug, Default)]
struct SlotWatch {
    peer: Option<Arc<dyn Peer>>,
    busy: bool,
    /// The cancel flag of the job it runs, if that job can be cancelled.
    running: Option<Arc<AtomicBool>>,
    deadline: Option<Instant>,
    verdict: Option<Verdict>,
}

#[derive(Debug)]
struct Watched {
    slots: Vec<SlotWatch>,
    stop: bool,
}

/// The processes of a pool, as the watchdog and `shutdown` see them: each slot's process from
/// the moment it exists (a replacement still starting) until it is gone (a worker retiring).
#[derive(Debug)]
pub(crate) struct Watch {
    state: Mutex<Watched>,
    cv: Condvar,
    memory_limit: Option<u64>,
}

/// How often memory is sampled when a limit is set.
const MEMORY_POLL: Duration = Duration::from_millis(20);

impl Watch {
    pub(crate) fn new(slots: usize, memory_limit: Option<u64>) -> Self {
        let slots = (0..slots).map(|_| SlotWatch::default()).collect();
        Watch {
            state: Mutex::new(Watched { slots, stop: false }),
            cv: Condvar::new(),
            memory_limit,
        }
    }

    /// Watches slots up to `n`, for workers of hosts that joined.
    pub(crate) fn grow(&self, n: usize) {
        let mut st = self.lock();
        while st.slots.len() < n {
            st.slots.push(SlotWatch::default());
        }
    }

    fn lock(&self) -> MutexGuard<'_, Watched> {
        lock(&self.state)
    }

    /// Slot `i` now holds worker `peer`.
    pub(crate) fn register(&self, i: usize, peer: Arc<dyn Peer>) {
        let mut st = self.lock();
        st.slots[i] = SlotWatch {
            peer: Some(peer),
            ..SlotWatch::default()
        };
    }

    /// Slot `i`'s process is about to be reaped: forget it, and say why it was killed, if the
    /// watchdog killed it.
    pub(crate) fn unregister(&self, i: usize) -> Option<Verdict> {
        let mut st = self.lock();
        std::mem::take(&mut st.slots[i]).verdict
    }

    /// Slot `i` is running a task that must end by `deadline` (if any).
    pub(crate) fn arm(&self, i: usize, deadline: Option<Instant>) {
        let mut st = self.lock();
        let slot = &mut st.slots[i];
        slot.busy = true;
        slot.deadline = deadline;
        drop(st);
        self.cv.notify_one();
    }

    /// Slot `i` is idle.
    pub(crate) fn disarm(&self, i: usize) {
        let mut st = self.lock();
        let slot = &mut st.slots[i];
        slot.busy = false;
        slot.deadline = None;
        slot.running = None;
    }

    /// Slot `i` runs the job whose cancel flag is `flag`.
    ///
    /// A cancel that came after the driver looked at the flag, but before this, found no slot
    /// running the job: the flag is looked at again here, under the lock that `cancel` takes,
    /// so that one of the two always kills the worker.
    pub(crate) fn running(&self, i: usize, flag: Option<Arc<AtomicBool>>) {
        let mut st = self.lock();
        let slot = &mut st.slots[i];
        let cancelled = flag
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Acquire));
        slot.running = flag;
        if cancelled && slot.verdict.is_none() {
            slot.verdict = Some(Verdict::Cancelled);
            if let Some(peer) = &slot.peer {
                peer.kill();
            }
        }
    }

    /// Kills the worker that runs the job with cancel flag `flag`, if one does, and leaves the
    /// verdict `Cancelled` for its driver.
    pub(crate) fn cancel(&self, flag: &Arc<AtomicBool>) {
        let mut st = self.lock();
        for slot in st.slots.iter_mut() {
            let runs_it = slot.running.as_ref().is_some_and(|r| Arc::ptr_eq(r, flag));
            if runs_it && slot.verdict.is_none() {
                slot.verdict = Some(Verdict::Cancelled);
                if let Some(peer) = &slot.peer {
                    peer.kill();
                }
            }
        }
    }

    /// The process slot `i` holds, if any.
    pub(crate) fn peer(&self, i: usize) -> Option<Arc<dyn Peer>> {
        self.lock().slots[i].peer.clone()
    }

    /// Kills every registered process (for `shutdown`).
    pub(crate) fn kill_all(&self) {
        let st = self.lock();
        for slot in &st.slots {
            if let Some(peer) = &slot.peer {
                peer.kill();
            }
        }
    }

    /// Stops the watchdog thread.
    pub(crate) fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
    }

    /// The watchdog thread's loop.
    pub(crate) fn run(&self) {
        let mut st = self.lock();
        while !st.stop {
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            let mut sample = Vec::new();
            for (i, slot) in st.slots.iter_mut().enumerate() {
                let (Some(peer), true, None) = (slot.peer.as_ref(), slot.busy, slot.verdict) else {
                    continue;
                };
                if let Some(deadline) = slot.deadline {
                    if deadline <= now {
                        slot.verdict = Some(Verdict::Timeout);
                        peer.kill();
                        continue;
                    }
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                }
                if self.memory_limit.is_some() {
                    sample.push((i, Arc::clone(peer)));
                }
            }
            if let Some(limit) = self.memory_limit
                && !sample.is_empty()
            {
                // Reading a process's memory (a file of /proc, which waits for that process's
                // memory map) is done without the lock, which every job's driver takes.
                drop(st);
                let over: Vec<(usize, Arc<dyn Peer>, u64)> = sample
                    .into_iter()
                    .filter_map(|(i, peer)| {
                        let rss = peer.resident_bytes()?;
                        (rss > limit).then_some((i, peer, rss))
                    })
                    .collect();
                st = self.lock();
                for (i, peer, rss) in over {
                    let slot = &mut st.slots[i];
                    // Only if it still runs the same job on the same process.
                    let same = slot.peer.as_ref().is_some_and(|p| Arc::ptr_eq(p, &peer));
                    if same && slot.busy && slot.verdict.is_none() {
                        slot.verdict = Some(Verdict::Memory { rss });
                        peer.kill();
                    }
                }
                if st.stop {
                    break;
                }
            }
            let mut wait = next.map_or(Duration::from_secs(3600), |n| {
                n.saturating_duration_since(now)
            });
            if self.memory_limit.is_some() {
                wait = wait.min(MEMORY_POLL);
            }
            st = wait_timeout(&self.cv, st, wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ExitCause;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Default)]
    struct Counted(AtomicUsize);

    impl Peer for Counted {
        fn pid(&self) -> u32 {
            1
        }
        fn kill(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn wait_exit(&self, _: Duration) -> bool {
            true
        }
        fn reap(&self) -> ExitCause {
            ExitCause::Signal(9)
        }
        fn resident_bytes(&self) -> Option<u64> {
            None
        }
    }

    /// A process whose memory reading blocks until the test lets it go.
    #[derive(Debug, Default)]
    struct SlowMemory {
        reading: std::sync::Mutex<bool>,
        changed: Condvar,
        released: AtomicBool,
    }

    impl Peer for SlowMemory {
        fn pid(&self) -> u32 {
            2
        }
        fn kill(&self) {}
        fn wait_exit(&self, _: Duration) -> bool {
            true
        }
        fn reap(&self) -> ExitCause {
            ExitCause::Signal(9)
        }
        fn resident_bytes(&self) -> Option<u64> {
            *lock(&self.reading) = true;
            self.changed.notify_all();
            while !self.released.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Some(1)
        }
    }

    #[test]
    fn a_slow_memory_reading_does_not_hold_up_the_drivers() {
        let watch = Arc::new(Watch::new(2, Some(1 << 40)));
        let peer = Arc::new(SlowMemory::default());
        watch.register(0, Arc::clone(&peer) as Arc<dyn Peer>);
        watch.arm(0, None);
        let thread = {
            let watch = Arc::clone(&watch);
            std::thread::spawn(move || watch.run())
        };
        // The watchdog is now inside the reading.
        let mut reading = lock(&peer.reading);
        while !*reading {
            reading = crate::sync::wait(&peer.changed, reading);
        }
        drop(reading);
        // A driver arms and disarms the other slot meanwhile.
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let watch = Arc::clone(&watch);
            std::thread::spawn(move || {
                watch.arm(1, None);
                watch.disarm(1);
                let _ = tx.send(());
            });
        }
        let done = rx.recv_timeout(Duration::from_secs(10));
        peer.released.store(true, Ordering::SeqCst);
        assert!(done.is_ok(), "the driver waited for the memory reading");
        watch.stop();
        thread.join().expect("the watchdog thread");
    }

    fn watched() -> (Watch, Arc<Counted>) {
        let watch = Watch::new(2, None);
        let peer = Arc::new(Counted::default());
        watch.register(1, Arc::clone(&peer) as Arc<dyn Peer>);
        (watch, peer)
    }

    #[test]
    fn a_cancel_before_the_driver_says_the_job_runs_still_kills_its_worker() {
        let (watch, peer) = watched();
        let flag = Arc::new(AtomicBool::new(false));
        // The canceller: the flag, then a look for a slot that runs the job (none yet).
        flag.store(true, Ordering::Release);
        watch.cancel(&flag);
        assert_eq!(peer.0.load(Ordering::Relaxed), 0);
        // The driver, which looked at the flag before it was set, now says the job runs.
        watch.running(1, Some(Arc::clone(&flag)));
        assert_eq!(peer.0.load(Ordering::Relaxed), 1, "killed");
        assert_eq!(watch.unregister(1), Some(Verdict::Cancelled));
    }

    #[test]
    fn a_cancel_after_the_driver_says_the_job_runs_kills_once() {
        let (watch, peer) = watched();
        let flag = Arc::new(AtomicBool::new(false));
        watch.running(1, Some(Arc::clone(&flag)));
        assert_eq!(peer.0.load(Ordering::Relaxed), 0);
        flag.store(true, Ordering::Release);
        watch.cancel(&flag);
        watch.cancel(&flag);
        assert_eq!(peer.0.load(Ordering::Relaxed), 1, "killed once");
        assert_eq!(watch.unregister(1), Some(Verdict::Cancelled));
        // another job's flag kills nothing
        let other = Arc::new(AtomicBool::new(true));
        watch.cancel(&other);
        assert_eq!(peer.0.load(Ordering::Relaxed), 1);
    }
}
