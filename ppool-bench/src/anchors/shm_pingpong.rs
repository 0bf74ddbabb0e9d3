//! Anchor: the floor of a round trip between two processes, two words of shared memory that
//! both sides spin on, with no framing, no serialization and no system call.
//!
//! The parent maps a memfd, starts this binary again as a child that inherits it, and for
//! each round trip stores `i` to the ping word and spins until the child has stored `i` to
//! the pong word. The child spins on the ping word and echoes. `u64::MAX` ends the child.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Child;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::BenchResult;
use crate::children::{self, SHM_ECHO};

/// The mapping: the ping word at 0, the pong word 128 bytes on (separate cache lines).
const LEN: usize = 4096;
const PONG: usize = 128;
/// How long the child spins after the last ping before it naps between looks.
const IDLE_AFTER: Duration = Duration::from_millis(1);
/// The value that tells the child to end.
const STOP: u64 = u64::MAX;

/// A shared page, mapped in this process.
struct Page(NonNull<u8>);

// SAFETY: the page is only ever accessed through the atomics `word` hands out.
unsafe impl Send for Page {}

impl Page {
    fn map(fd: &OwnedFd) -> BenchResult<Page> {
        // SAFETY: a fresh shared mapping of a `LEN`-byte file at an address the kernel
        // picks; it overlaps no Rust object and is only accessed through atomics.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                LEN,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )?
        };
        Ok(Page(
            NonNull::new(ptr.cast()).ok_or("mmap gave a null pointer")?,
        ))
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        assert!(at.is_multiple_of(8) && at + 8 <= LEN);
        // SAFETY: `at` is 8-aligned inside the page-aligned mapping, which lives as long as
        // `self`; both processes access it only as `AtomicU64`.
        unsafe { AtomicU64::from_ptr(self.0.as_ptr().add(at).cast()) }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of `LEN` bytes; no reference outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.0.as_ptr().cast(), LEN) };
    }
}

/// The parent's side: a child that echoes through shared memory.
pub(crate) struct ShmPingPong {
    page: Page,
    child: Child,
}

impl ShmPingPong {
    pub(crate) fn start() -> BenchResult<ShmPingPong> {
        // Not close-on-exec: the child inherits it and is told its number.
        let fd = rustix::fs::memfd_create("ppool-bench-shm", rustix::fs::MemfdFlags::empty())?;
        rustix::fs::ftruncate(&fd, LEN as u64)?;
        let page = Page::map(&fd)?;
        let mut cmd = children::self_command(SHM_ECHO)?;
        cmd.arg(fd.as_raw_fd().to_string());
        let child = cmd.spawn()?;
        drop(fd);
        let mut pp = ShmPingPong { page, child };
        pp.round_trips(1000)?;
        Ok(pp)
    }

    /// `n` round trips; each one's duration in `each`.
    fn run(&mut self, n: u64, mut each: impl FnMut(Duration)) -> BenchResult<()> {
        let (ping, pong) = (self.page.word(0), self.page.word(PONG));
        let base = pong.load(Ordering::Acquire) + 1;
        for i in base..base + n {
            let start = Instant::now();
            ping.store(i, Ordering::Release);
            let mut spins = 0u64;
            while pong.load(Ordering::Acquire) != i {
                std::hint::spin_loop();
                spins += 1;
                if spins.is_multiple_of(1 << 24) && self.child.try_wait()?.is_some() {
                    return Err("the shared-memory echo child ended".into());
                }
            }
            each(start.elapsed());
        }
        Ok(())
    }

    /// `n` round trips; the total time.
    pub(crate) fn round_trips(&mut self, n: u64) -> BenchResult<Duration> {
        let start = Instant::now();
        self.run(n, |_| {})?;
        Ok(start.elapsed())
    }

    /// The median of `n` round trips, in microseconds.
    pub(crate) fn median_micros(&mut self, n: u64) -> BenchResult<f64> {
        let mut samples = Vec::with_capacity(n as usize);
        self.run(n, |d| samples.push(d))?;
        Ok(crate::stats::median_micros(&mut samples))
    }
}

impl Drop for ShmPingPong {
    fn drop(&mut self) {
        self.page.word(0).store(STOP, Ordering::Release);
        if self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(20));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Child mode: echoes the ping word into the pong word until told to stop.
pub(crate) fn echo_child(fd: u64) -> BenchResult<()> {
    let raw = i32::try_from(fd).map_err(|_| "bad descriptor")?;
    // SAFETY: the descriptor was inherited for this purpose and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let page = Page::map(&fd)?;
    let (ping, pong) = (page.word(0), page.word(PONG));
    let parent = rustix::process::getppid();
    let mut last = 0;
    let mut active = Instant::now();
    loop {
        let v = ping.load(Ordering::Acquire);
        if v == STOP {
            return Ok(());
        }
        if v != last {
            last = v;
            pong.store(v, Ordering::Release);
            active = Instant::now();
            continue;
        }
        if active.elapsed() < IDLE_AFTER {
            std::hint::spin_loop();
            continue;
        }
        // Idle: while the other contenders run, this must not take their CPU.
        std::thread::sleep(Duration::from_micros(200));
        if rustix::process::getppid() != parent {
            return Ok(());
        }
    }
}
