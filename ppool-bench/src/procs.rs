//! What `/proc` and the clocks say about this process and the ones it started: thread count,
//! CPU time, and the processes that carry a given environment variable.

use std::fs;
use std::time::Duration;

/// One process found under `/proc`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Proc {
    pub(crate) pid: i32,
    pub(crate) ppid: i32,
    /// VmRSS in KiB (`None` for a process that is gone or a zombie).
    pub(crate) rss_kib: Option<u64>,
}

/// Every live process of this user whose environment, as it was at its `exec`, holds
/// `NAME=VALUE` exactly (zombies have no environment and are left out).
pub(crate) fn with_env(name: &str, value: &str) -> Vec<Proc> {
    let needle = format!("{name}={value}").into_bytes();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !environ.split(|&b| b == 0).any(|var| var == needle) {
            continue;
        }
        let Some(ppid) = ppid_of(pid) else { continue };
        found.push(Proc {
            pid,
            ppid,
            rss_kib: status_kib(pid, "VmRSS"),
        });
    }
    found
}

/// A `kB` field of `/proc/PID/status`.
pub(crate) fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The fields of `/proc/PID/stat` after the command name (the state is the first).
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn ppid_of(pid: i32) -> Option<i32> {
    stat_fields(&pid.to_string())?.get(1)?.parse().ok()
}

/// Resident and proportional memory of one process, from `/proc/PID/smaps_rollup`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    /// Resident pages, shared ones counted in full (KiB).
    pub(crate) rss_kib: u64,
    /// Proportional set size: each resident page divided by the number of processes
    /// mapping it, so that summing over processes counts a shared page once (KiB).
    pub(crate) pss_kib: u64,
}

impl std::ops::Add for Memory {
    type Output = Memory;

    fn add(self, other: Memory) -> Memory {
        Memory {
            rss_kib: self.rss_kib + other.rss_kib,
            pss_kib: self.pss_kib + other.pss_kib,
        }
    }
}

impl std::iter::Sum for Memory {
    fn sum<I: Iterator<Item = Memory>>(iter: I) -> Memory {
        iter.fold(Memory::default(), |a, b| a + b)
    }
}

/// The memory of process `pid` (`None` when it is gone or not readable).
pub(crate) fn memory(pid: i32) -> Option<Memory> {
    parse_rollup(&fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?)
}

/// The `Rss:` and `Pss:` lines of an `smaps_rollup` (values in kB).
pub(crate) fn parse_rollup(text: &str) -> Option<Memory> {
    Some(Memory {
        rss_kib: kib_field(text, "Rss")?,
        pss_kib: kib_field(text, "Pss")?,
    })
}

/// The number after `NAME:` on the line that starts with it (`Pss:  1234 kB`).
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Bytes process `pid` has read through `read(2)` and its kin (`rchar` of
/// `/proc/PID/io`): for a host agent, what came in over its stream.
pub(crate) fn bytes_read(pid: i32) -> Option<u64> {
    kib_field(
        &fs::read_to_string(format!("/proc/{pid}/io")).ok()?,
        "rchar",
    )
}

/// `MemAvailable` of `/proc/meminfo`, in bytes: what the machine can give without
/// swapping.
pub(crate) fn mem_available() -> Option<u64> {
    parse_mem_available(&fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    kib_field(meminfo, "MemAvailable").map(|kib| kib * 1024)
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the machine, so that
/// times taken in workers compare with times taken here.
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// Threads of this process now.
pub(crate) fn thread_count() -> usize {
    fs::read_dir("/proc/self/task").map_or(0, |dir| dir.count())
}

/// CPU time (user + system) of this process alone, all its threads, living and ended,
/// and none of its children: what `getrusage(RUSAGE_SELF)` adds up, to the nanosecond.
pub(crate) fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// (user, system) CPU time of this process in clock ticks, from `/proc/self/stat`: coarse,
/// but it splits the two.
pub(crate) fn user_sys_ticks() -> Option<(u64, u64)> {
    let fields = stat_fields("self")?;
    // utime and stime are fields 14 and 15 of stat(5); fields 1 and 2 are not in `fields`.
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

/// Sends SIGKILL to each of `procs` (processes this bench started), ignoring ones gone.
pub(crate) fn kill_all(procs: &[Proc]) {
    for p in procs {
        if let Some(pid) = rustix::process::Pid::from_raw(p.pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_itself() {
        assert!(thread_count() >= 1);
        let own = i32::try_from(std::process::id()).unwrap_or(0);
        assert_eq!(
            ppid_of(own),
            Some(rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()))
        );
        assert!(status_kib(own, "VmRSS").is_some_and(|kib| kib > 0));
        assert!(user_sys_ticks().is_some());
        let before = cpu_time();
        crate::kernel::spin(1 << 20);
        assert!(cpu_time() > before);
        let mem = memory(own).expect("own smaps_rollup");
        assert!(mem.rss_kib > 0 && mem.pss_kib > 0 && mem.pss_kib <= mem.rss_kib);
        assert!(bytes_read(own).is_some());
        let t = monotonic_ns();
        assert!(monotonic_ns() >= t && t > 0);
    }

    #[test]
    fn parses_a_rollup() {
        let text = "559f0dd13000-7ffedbca3000 ---p 00000000 00:00 0     [rollup]\n\
                    Rss:                1668 kB\n\
                    Pss:                 329 kB\n\
                    Pss_Dirty:           112 kB\n\
                    Pss_Anon:            112 kB\n\
                    Pss_Shmem:             0 kB\n";
        assert_eq!(
            parse_rollup(text),
            Some(Memory {
                rss_kib: 1668,
                pss_kib: 329
            })
        );
        assert_eq!(parse_rollup("Rss: 5 kB\n"), None);
        assert_eq!(kib_field("rchar: 6976\nwchar: 0\n", "rchar"), Some(6976));
        let meminfo =
            "MemTotal:       24684544 kB\nMemFree:  1324800 kB\nMemAvailable:   23730000 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(23_730_000 * 1024));
        assert!(mem_available().is_some_and(|b| b > 0));
        let two = [
            Memory {
                rss_kib: 10,
                pss_kib: 4,
            },
            Memory {
                rss_kib: 10,
                pss_kib: 6,
            },
        ];
        assert_eq!(
            two.into_iter().sum::<Memory>(),
            Memory {
                rss_kib: 20,
                pss_kib: 10
            }
        );
    }
}
