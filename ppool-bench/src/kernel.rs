//! The CPU-bound task kernel used by the scaling metric.

use std::hint::black_box;
use std::time::{Duration, Instant};

use crate::stats::median;

/// Runs `iters` xorshift64 steps; the state stays in a register, so this is pure CPU work.
pub(crate) fn spin(iters: u64) -> u64 {
    let iters = black_box(iters);
    let mut x = 0x9E37_79B9_7F4A_7C15_u64 ^ iters;
    for _ in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    black_box(x)
}

/// Wall time of one in-process `spin(iters)`.
pub(crate) fn time_spin(iters: u64) -> Duration {
    let start = Instant::now();
    spin(iters);
    start.elapsed()
}

/// Iteration count for which `spin` takes about `target` on this machine.
pub(crate) fn calibrate(target: Duration) -> u64 {
    // Grow until one run is long enough to time reliably, then scale linearly.
    let mut iters: u64 = 1 << 14;
    while time_spin(iters) < Duration::from_millis(2) && iters < 1 << 40 {
        iters *= 2;
    }
    for _ in 0..3 {
        let runs: Vec<f64> = (0..5).map(|_| time_spin(iters).as_secs_f64()).collect();
        let per_run = median(&runs).unwrap_or(target.as_secs_f64());
        let scaled = iters as f64 * target.as_secs_f64() / per_run.max(1e-9);
        iters = scaled.round().max(1.0) as u64;
    }
    iters
}

/// Mean in-process time of `spin(iters)` over `runs` runs.
pub(crate) fn serial_task_time(iters: u64, runs: u32) -> Duration {
    let total: Duration = (0..runs.max(1)).map(|_| time_spin(iters)).sum();
    total / runs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_is_deterministic_and_depends_on_iters() {
        assert_eq!(spin(1000), spin(1000));
        assert_ne!(spin(1000), spin(1001));
    }
}
