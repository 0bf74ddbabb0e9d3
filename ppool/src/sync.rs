//! Locks that survive a panic elsewhere: a poisoned mutex still guards consistent state here,
//! since no critical section of the pool calls user code. And deadlines that never overflow.
//!
//! # Durations too large for a deadline
//!
//! Every timeout of the pool follows one rule: a duration too large to add to the current
//! time (`Duration::MAX`, say) means "no limit". [`deadline`] and [`limit`] are the only
//! places where a duration becomes a deadline, so no `Instant + Duration` can panic.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Locks `m`, poisoned or not.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cv`, poisoned or not.
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cv` for at most `timeout`, poisoned or not.
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    cv.wait_timeout(guard, timeout)
        .unwrap_or_else(PoisonError::into_inner)
        .0
}

/// The instant `d` after `from`, or `None` (no deadline, "never") when that instant is
/// beyond what an [`Instant`] can hold.
pub(crate) fn deadline(from: Instant, d: Duration) -> Option<Instant> {
    from.checked_add(d)
}

/// A timeout of `d` from now as a wait takes it: `Some(d)`, or `None` (no limit) when `d` is
/// too large to add to the current time.
pub(crate) fn limit(d: Duration) -> Option<Duration> {
    deadline(Instant::now(), d).map(|_| d)
}

/// The time left until `deadline` (zero once it has passed); `None` for no deadline.
pub(crate) fn left(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// Looks at `done` until it says true (then true), sleeping between looks from 200 µs up to
/// 10 ms, or until `deadline` has passed (then false). For what has no wake-up to wait on,
/// such as a thread ending.
pub(crate) fn poll_until(deadline: Option<Instant>, mut done: impl FnMut() -> bool) -> bool {
    let mut pause = Duration::from_micros(200);
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        let left = match deadline {
            Some(d) if now >= d => return false,
            Some(d) => d - now,
            None => pause,
        };
        std::thread::sleep(pause.min(left));
        pause = pause.saturating_mul(2).min(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_too_large_for_a_deadline_means_none() {
        let now = Instant::now();
        assert_eq!(deadline(now, Duration::ZERO), Some(now));
        assert_eq!(
            deadline(now, Duration::from_nanos(1)),
            Some(now + Duration::from_nanos(1))
        );
        assert_eq!(
            deadline(now, Duration::from_secs(3600)),
            Some(now + Duration::from_secs(3600))
        );
        assert_eq!(deadline(now, Duration::MAX), None);
        assert_eq!(deadline(now, Duration::from_secs(u64::MAX)), None);
        assert_eq!(limit(Duration::MAX), None);
        assert_eq!(limit(Duration::ZERO), Some(Duration::ZERO));
        assert_eq!(
            limit(Duration::from_millis(5)),
            Some(Duration::from_millis(5))
        );
    }

    #[test]
    fn time_left_is_never_negative_and_none_without_a_deadline() {
        assert_eq!(left(None), None);
        let past = Instant::now();
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(left(Some(past)), Some(Duration::ZERO));
        let later = deadline(Instant::now(), Duration::from_secs(3600));
        assert!(left(later).is_some_and(|l| l > Duration::from_secs(3500)));
    }

    #[test]
    fn poll_until_without_a_deadline_waits_for_done_and_with_one_gives_up() {
        let mut looks = 0;
        assert!(poll_until(None, || {
            looks += 1;
            looks == 3
        }));
        assert!(!poll_until(Some(Instant::now()), || false));
        assert!(!poll_until(
            deadline(Instant::now(), Duration::from_millis(2)),
            || false
        ));
    }
}
