//! The mapping across two processes: a forked child maps the inherited memfd, and the two
//! share its memory and the futex wake-ups on it. Like the mapping, this is the folder's
//! only `unsafe` code (forking, reaping, adopting the inherited descriptor).

use crate::shm::testing::pattern;
use crate::shm::{Layout, Region, RingError};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

const ZERO: Duration = Duration::ZERO;

/// Kills and reaps a forked child if the test fails before it exits.
struct Child(libc::pid_t);

impl Child {
    fn wait(mut self) -> i32 {
        let mut status = 0;
        // SAFETY: waitpid on our own child, with a valid pointer.
        let r = unsafe { libc::waitpid(self.0, &mut status, 0) };
        assert_eq!(r, self.0);
        self.0 = 0;
        assert!(libc::WIFEXITED(status), "status {status}");
        libc::WEXITSTATUS(status)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: signals and reaps our own child.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Forks; the child runs `child` and leaves with its code through `_exit`, without
/// running destructors or returning to the test harness.
fn fork(child: impl FnOnce() -> Result<(), String>) -> Child {
    // SAFETY: the child only makes system calls and allocates (glibc's malloc is fork
    // safe), then leaves with `_exit`; it never returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)) {
            Ok(Ok(())) => 0,
            Ok(Err(_)) => 1,
            Err(_) => 2,
        };
        // SAFETY: ends the child at once, as intended.
        unsafe { libc::_exit(code) };
    }
    Child(pid)
}

const FORK_RECORDS: u64 = 20_000;

fn child_side(fd: RawFd) -> Result<(), String> {
    let e = |e: RingError| e.to_string();
    // SAFETY: `fd` is the inherited memfd, open for the child's whole life.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let mut w = Region::from_fd(fd).map_err(e)?.worker();
    let spin = Duration::from_micros(50);
    let long = Some(Duration::from_secs(10));
    for i in 0..FORK_RECORDS {
        let rec = pattern((i % 300) as usize, i);
        w.progress.started(1, i as u32);
        while !w.results.try_push(&[&i.to_le_bytes(), &rec]).map_err(e)? {
            if !w
                .results
                .wait_writable(rec.len() + 8, spin, long)
                .map_err(e)?
            {
                return Err("the parent stopped reading".into());
            }
        }
        w.progress.finished(1, i as u32);
    }
    // Sleep (no spin) until the parent's ping, answer pong.
    let mut out = Vec::new();
    loop {
        match w.jobs.try_pop(&mut out).map_err(e)? {
            Some(_) if out == b"ping" => break,
            Some(_) => return Err("not a ping".into()),
            None => {
                if !w.jobs.wait_readable(ZERO, long).map_err(e)? {
                    return Err("no ping".into());
                }
            }
        }
    }
    if !w.results.try_push(&[b"pong"]).map_err(e)? {
        return Err("no room for pong".into());
    }
    // Die in the middle of a task.
    for i in 0..3 {
        w.progress.started(2, i);
        w.progress.finished(2, i);
    }
    w.progress.started(2, 3);
    Ok(())
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot fork or map a memfd")]
fn a_forked_child_maps_the_inherited_fd() {
    let region = Region::create(Layout::new(1 << 12, 1 << 14).unwrap()).unwrap();
    let fd = region.fd().unwrap().as_raw_fd();
    let child = fork(move || child_side(fd));
    let mut s = region.supervisor();
    let mut out = Vec::new();
    let mut i = 0;
    while i < FORK_RECORDS {
        match s.results.try_pop(&mut out).unwrap() {
            Some(len) => {
                assert_eq!(len, 8 + (i % 300) as usize);
                assert_eq!(out[..8], i.to_le_bytes());
                assert_eq!(out[8..], pattern((i % 300) as usize, i));
                i += 1;
            }
            None => assert!(
                s.results
                    .wait_readable(Duration::from_micros(50), Some(Duration::from_secs(10)))
                    .unwrap()
            ),
        }
    }
    // Let the child fall asleep on the job ring's bell, then wake it across processes.
    std::thread::sleep(Duration::from_millis(100));
    assert!(s.jobs.try_push(&[b"ping"]).unwrap());
    let t = Instant::now();
    loop {
        if s.results.try_pop(&mut out).unwrap().is_some() {
            break;
        }
        assert!(
            s.results
                .wait_readable(ZERO, Some(Duration::from_secs(10)))
                .unwrap()
        );
    }
    assert_eq!(out, b"pong");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(child.wait(), 0);
    // It died running task 3 of job 2.
    let p = s.progress.read().unwrap();
    assert_eq!((p.job, p.finished, p.running()), (2, 3, Some(3)));
}
