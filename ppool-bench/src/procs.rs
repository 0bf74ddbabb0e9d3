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
    }
}
