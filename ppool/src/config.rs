//! Pool settings and their checks: the number of workers ([`NJobs`]), and every setting of a
//! builder as plain data ([`Config`]), checked by [`Config::validate`].

use crate::error::Error;

mod validate;

pub(crate) use validate::{Config, ThisProcess, World};

/// How many workers a pool has, as given to [`ProcessPool::new`](crate::ProcessPool::new) or
/// [`Builder::n_jobs`](crate::Builder::n_jobs): `-1` for every CPU, a count `n >= 1` (clamped to
/// the CPUs), or a share `0.0 < f <= 1.0` of the CPUs (at least one). Anything else is an
/// [`Error::InvalidConfig`] when the pool is built.
///
/// Built from any integer or float, so `new(4)`, `new(-1)` and `new(0.5)` all work.
///
/// ```
/// # use ppool::{pool_entry, ProcessPool, Error, NJobs};
/// # #[pool_entry] fn square(x: u64) -> u64 { x * x }
/// # ppool::main! { fn main() -> Result<(), ppool::Error> {
/// let pool = ProcessPool::<square>::new(NJobs::from(1))?;          // as `new(1)`
/// assert_eq!(pool.n_jobs(), 1);
/// let half = ProcessPool::<square>::builder().n_jobs(0.5).start(false).build()?;
/// assert!(half.n_jobs() >= 1);                                     // half the CPUs, at least one
/// let bad = ProcessPool::<square>::new(1.5);
/// assert!(matches!(bad, Err(Error::InvalidConfig { setting: "n_jobs", .. })));
/// # Ok(()) } }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NJobs(Amount);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Amount {
    Count(i128),
    Share(f64),
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for NJobs {
            fn from(n: $t) -> Self {
                NJobs(Amount::Count(n as i128))
            }
        }
    )*};
}
from_int!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);

impl From<f64> for NJobs {
    fn from(f: f64) -> Self {
        NJobs(Amount::Share(f))
    }
}

impl From<f32> for NJobs {
    fn from(f: f32) -> Self {
        NJobs(Amount::Share(f64::from(f)))
    }
}

/// The CPUs this process may use, respecting affinity and cgroup quotas.
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl NJobs {
    /// The number of workers on a machine with `cpus` usable CPUs.
    pub(crate) fn resolve(self, cpus: usize) -> Result<usize, Error> {
        const ALLOWED: &str = "use -1 for every CPU, a count n >= 1 (clamped to the CPUs), \
                               or a share 0.0 < f <= 1.0 of the CPUs";
        match self.0 {
            Amount::Count(-1) => Ok(cpus),
            Amount::Count(n) if n >= 1 => Ok((n.min(cpus as i128)) as usize),
            Amount::Count(n) => Err(Error::config(
                "n_jobs",
                format!("{n} is not allowed; {ALLOWED}"),
            )),
            Amount::Share(f) if f > 0.0 && f <= 1.0 => {
                Ok(((f * cpus as f64).floor() as usize).max(1))
            }
            Amount::Share(f) => Err(Error::config(
                "n_jobs",
                format!("{f} is not allowed; {ALLOWED}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
