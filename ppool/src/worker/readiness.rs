//! Spinning until a descriptor is readable: used on both sides of a channel.

use std::os::fd::BorrowedFd;
use std::time::Duration;

/// Spins for at most `spin` until `fd` is readable, without sleeping: a sleeping reader costs
/// a wake-up (tens of microseconds on a VM) when the answer comes, and a short spin avoids it
/// when the answer is due soon.
pub(crate) fn spin_until_readable(fd: BorrowedFd<'_>, spin: Duration) {
    if spin.is_zero() {
        return;
    }
    let started = std::time::Instant::now();
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        if !matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(0)) {
            return;
        }
        if started.elapsed() >= spin {
            return;
        }
        std::hint::spin_loop();
    }
}
