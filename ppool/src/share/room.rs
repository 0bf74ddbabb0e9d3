//! Whether a value fits in memory, asked before it is stored.
//!
//! A memfd lives in memory, and the kernel does not refuse to grow one past what the machine
//! or the process' cgroup can hold: it reclaims, swaps, and in the end the OOM killer picks a
//! process. So a value too large to store would end in a kill rather than an error. Before
//! storing `len` bytes, [`check`] compares them with the memory available: the system's
//! `MemAvailable`, and, for each memory cgroup above this process that has a limit, the limit
//! less what the cgroup uses that it cannot reclaim (its usage less its inactive page cache).
//! This is a forecast, not a reservation (the memory may be gone by the time the bytes are
//! written), but it turns the common mistake (a value larger than the machine) into a clear
//! error. What cannot be read (no `/proc`, an unknown cgroup layout) is taken as no limit.

use std::io;
use std::path::{Path, PathBuf};

/// Values smaller than this are not checked (they cannot matter, and reading the limits costs
/// more than storing them).
const SMALL: u64 = 1 << 20;

/// Refuses `len` bytes when they do not fit the memory available, with an error of kind
/// `OutOfMemory` that says how much there is and whose limit it is ("does not fit in
/// memory: ...", to follow the name of what does not fit).
pub(crate) fn check(len: u64) -> io::Result<()> {
    if len < SMALL {
        return Ok(());
    }
    match room() {
        Some((room, whose)) if len > room => Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "does not fit in memory: {room} bytes are available ({whose}), and a shared \
                 value is held in memory, once per host"
            ),
        )),
        _ => Ok(()),
    }
}

/// The memory available now, and whose limit it is: the least of the system's and the
/// cgroups'.
fn room() -> Option<(u64, String)> {
    let system = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_available(&text))
        .map(|bytes| (bytes, "the system's MemAvailable".to_string()));
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .map(|text| cgroup_dirs(&text))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(dir, v2)| cgroup_room(&dir, v2).map(|b| (b, dir)))
        .map(|(bytes, dir)| {
            (
                bytes,
                format!("the memory limit of cgroup {}", dir.display()),
            )
        });
    system
        .into_iter()
        .chain(cgroups)
        .min_by_key(|(bytes, _)| *bytes)
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub(crate) fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemAvailable:")?;
        let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kib.saturating_mul(1024))
    })
}

/// The memory cgroup directories of this process and of its ancestors, from
/// `/proc/self/cgroup`: `(directory, whether it is cgroup v2)`, the innermost first. Only the
/// directories that exist are kept (in a cgroup namespace, the path shown may be relative to a
/// mount of the cgroup itself; then the mount's root is the cgroup).
pub(crate) fn cgroup_dirs(proc_cgroup: &str) -> Vec<(PathBuf, bool)> {
    let mut dirs = Vec::new();
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (mounts, v2): (&[&str], bool) = if controllers.is_empty() {
            (&["/sys/fs/cgroup", "/sys/fs/cgroup/unified"], true)
        } else if controllers.split(',').any(|c| c == "memory") {
            (&["/sys/fs/cgroup/memory"], false)
        } else {
            continue;
        };
        for mount in mounts {
            let mount = Path::new(mount);
            let limit = if v2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            if !mount
                .join(if v2 { "cgroup.controllers" } else { limit })
                .exists()
            {
                continue;
            }
            let leaf = mount.join(path.trim_start_matches('/'));
            let start = if leaf.join(limit).exists() {
                leaf
            } else {
                mount.to_path_buf()
            };
            let mut dir = Some(start.as_path());
            while let Some(d) = dir.filter(|d| d.starts_with(mount)) {
                dirs.push((d.to_path_buf(), v2));
                dir = d.parent();
            }
            break;
        }
    }
    dirs
}

/// The room left under the limit of the cgroup at `dir`, if it has one.
fn cgroup_room(dir: &Path, v2: bool) -> Option<u64> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let (limit, usage, stat, inactive) = if v2 {
        (
            "memory.max",
            "memory.current",
            "memory.stat",
            "inactive_file",
        )
    } else {
        (
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            "memory.stat",
            "total_inactive_file",
        )
    };
    let reclaimable = read(stat)
        .and_then(|s| stat_field(&s, inactive))
        .unwrap_or(0);
    limit_room(&read(limit)?, &read(usage)?, reclaimable)
}

/// The room under a cgroup's limit: `limit - (usage - reclaimable)`, or `None` for no limit
/// (`max`, or cgroup v1's "unlimited", a number near `i64::MAX`).
pub(crate) fn limit_room(limit: &str, usage: &str, reclaimable: u64) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok()?;
    if limit >= 1 << 62 {
        return None;
    }
    let usage: u64 = usage.trim().parse().ok()?;
    Some(limit.saturating_sub(usage.saturating_sub(reclaimable)))
}

/// The value of `key` in a `memory.stat` file (`key value` lines).
pub(crate) fn stat_field(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}
