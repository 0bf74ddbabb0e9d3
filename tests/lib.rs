//! Integration tests of ppool live in this package's test targets; this library holds what
//! they share: temporary directories and a look at this process's children and descriptors.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system's temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new, empty directory whose name starts with `ppool-<tag>`.
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ppool-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        if let Err(e) = std::fs::create_dir_all(&path) {
            panic!("cannot create {}: {e}", path.display());
        }
        TempDir(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The directory as a `String`, to pass to an entry.
    pub fn arg(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    /// The names of the files in it.
    pub fn files(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `(pid, state, parent)` of every process there is, read from `/proc`.
fn processes() -> Vec<(u32, char, u32)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let parent = fields
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        found.push((pid, state, parent));
    }
    found.sort_unstable();
    found
}

/// `(pid, state)` of every process whose parent is this one.
pub fn children() -> Vec<(u32, char)> {
    let me = std::process::id();
    processes()
        .into_iter()
        .filter(|&(_, _, parent)| parent == me)
        .map(|(pid, state, _)| (pid, state))
        .collect()
}

/// The processes whose environment holds `var` (see [`processes_with_env`]) and whose parent
/// is `parent`: a host's agents are this test's children, its workers the agent's.
pub fn children_with_env(var: &str, parent: u32) -> Vec<u32> {
    processes_with_env(var)
        .into_iter()
        .filter(|&(_, p)| p == parent)
        .map(|(pid, _)| pid)
        .collect()
}

/// Sends `signal` to process `pid`, one this test found among its own processes.
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) takes any pid and signal; it touches no memory of ours.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Whether `done` holds within `limit`, looking every 20 ms (and once more at the end).
pub fn eventually(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    done()
}

/// `(pid, parent)` of every live process (zombies left out: they have ended) whose
/// environment holds `var` (`NAME=value`) exactly: how a test finds the host agents and
/// workers it tagged.
pub fn processes_with_env(var: &str) -> Vec<(u32, u32)> {
    processes()
        .into_iter()
        .filter(|&(_, state, _)| state != 'Z')
        .filter(|&(pid, _, _)| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == var.as_bytes()))
        })
        .map(|(pid, _, parent)| (pid, parent))
        .collect()
}

/// How many file descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// How long a test may run by default before [`deadline`] fails it, in seconds.
pub const DEFAULT_DEADLINE_SECS: u64 = 120;

/// The environment variable that overrides [`DEFAULT_DEADLINE_SECS`] (a whole number of
/// seconds), for a slow machine.
pub const DEADLINE_ENV: &str = "PPOOL_TEST_DEADLINE_SECS";

/// A test's deadline: while it lives, a monitor thread ends this process if the test is still
/// running when the deadline passes. Dropping it (at the end of the test) cancels it.
///
/// Made by [`deadline`] or [`deadline_secs`].
#[derive(Debug)]
#[must_use = "the deadline is cancelled when the guard is dropped: bind it with `let _deadline`"]
pub struct Deadline {
    id: u64,
}

/// A deadline of [`DEFAULT_DEADLINE_SECS`] (or `$PPOOL_TEST_DEADLINE_SECS`) for the calling
/// test; the first line of a test:
///
/// ```
/// let _deadline = ppool_tests::deadline();
/// ```
///
/// A test that hangs past it fails the whole test binary at once, with a message naming the
/// test (`test <name> did not finish within <n> s: it hangs`) and exit code 101, instead of
/// running into CI's time limit.
pub fn deadline() -> Deadline {
    let secs = std::env::var(DEADLINE_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(DEFAULT_DEADLINE_SECS);
    deadline_secs(secs)
}

/// A deadline of `secs` seconds for the calling test; see [`deadline`].
pub fn deadline_secs(secs: u64) -> Deadline {
    monitor::register(test_name(), secs)
}

impl Drop for Deadline {
    fn drop(&mut self) {
        monitor::unregister(self.id);
    }
}

/// The calling test's name: libtest names each test's thread after the test.
fn test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        Some(_) | None => format!("<unnamed, thread {:?}>", std::thread::current().id()),
    }
}

/// The one monitor thread and its registry of running tests.
mod monitor {
    use super::Deadline;
    use std::collections::HashMap;
    use std::io::Write;
    use std::mem::ManuallyDrop;
    use std::os::fd::FromRawFd;
    use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
    use std::time::{Duration, Instant};

    struct Entry {
        test: String,
        secs: u64,
        expires: Instant,
    }

    #[derive(Default)]
    struct Registry {
        next_id: u64,
        running: HashMap<u64, Entry>,
    }

    struct Monitor {
        registry: Mutex<Registry>,
        changed: Condvar,
    }

    fn lock(m: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The monitor, started on first use.
    fn monitor() -> &'static Monitor {
        static MONITOR: OnceLock<&'static Monitor> = OnceLock::new();
        MONITOR.get_or_init(|| {
            let m: &'static Monitor = Box::leak(Box::new(Monitor {
                registry: Mutex::new(Registry::default()),
                changed: Condvar::new(),
            }));
            std::thread::Builder::new()
                .name("test-deadline".into())
                .spawn(move || watch(m))
                .expect("cannot start the test deadline monitor");
            m
        })
    }

    pub(super) fn register(test: String, secs: u64) -> Deadline {
        let m = monitor();
        let expires = Instant::now() + Duration::from_secs(secs);
        let mut reg = lock(&m.registry);
        reg.next_id += 1;
        let id = reg.next_id;
        reg.running.insert(
            id,
            Entry {
                test,
                secs,
                expires,
            },
        );
        drop(reg);
        m.changed.notify_all();
        Deadline { id }
    }

    pub(super) fn unregister(id: u64) {
        let m = monitor();
        lock(&m.registry).running.remove(&id);
        m.changed.notify_all();
    }

    fn watch(m: &'static Monitor) {
        let mut reg = lock(&m.registry);
        loop {
            let now = Instant::now();
            if let Some(late) = reg.running.values().find(|e| e.expires <= now) {
                hang(&late.test, late.secs);
            }
            let next = reg.running.values().map(|e| e.expires).min();
            reg = match next {
                Some(at) => {
                    m.changed
                        .wait_timeout(reg, at.saturating_duration_since(now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => m.changed.wait(reg).unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// Says which test hangs and ends the process. The message goes straight to descriptor 2,
    /// past libtest's capture and past any lock a hung thread may hold on `stderr`.
    fn hang(test: &str, secs: u64) -> ! {
        let message = format!("\ntest {test} did not finish within {secs} s: it hangs\n");
        // SAFETY: descriptor 2 is open for the whole life of the process; ManuallyDrop keeps
        // the `File` from closing it.
        let mut stderr = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(2) });
        let _ = stderr.write_all(message.as_bytes());
        // `_exit`: no exit handlers, which a hung thread could block.
        // SAFETY: `_exit` ends the process at once; it is always safe to call.
        unsafe { libc::_exit(101) }
    }
}

/// Runs `f` on a helper thread and waits at most `limit` for it; panics naming `what` if it
/// has not returned by then (the thread is given up on; it may be stuck for good).
pub fn within<T: Send + 'static>(
    limit: std::time::Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    use std::sync::mpsc;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("within: {what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("cannot start a helper thread");
    match rx.recv_timeout(limit) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: no answer within {limit:?}; it hangs")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the helper thread panicked"),
    }
}

/// The CPUs this process (or thread) may run on, as `/proc/self/status` says.
pub fn my_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("")
        .trim()
        .to_string();
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().unwrap_or(0), b.parse().unwrap_or(0));
                cpus.extend(a..=b);
            }
            None => cpus.extend(part.parse::<usize>().ok()),
        }
    }
    cpus
}

/// `VAR=<tag>.<this process's pid>`: a value by which a test tags the hosts it starts through
/// a command prefix (`env VAR=…`), and finds them again with [`processes_with_env`], never
/// seeing those of another test process.
pub fn env_tag(var: &str, tag: &str) -> String {
    format!("{var}={tag}.{}", std::process::id())
}

/// The command prefix `env VAR=<tag>.<pid>` (see [`env_tag`]).
pub fn tagged_prefix(var: &str, tag: &str) -> Vec<String> {
    vec!["env".into(), env_tag(var, tag)]
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Output, Stdio};
    use std::time::{Duration, Instant};

    /// Runs one `#[ignore]`d test of this binary in a child process; kills it after 30 s.
    fn run_ignored(test: &str) -> Output {
        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .args([test, "--ignored", "--exact", "--test-threads=1"])
            .env_remove(super::DEADLINE_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot re-run this test binary");
        let started = Instant::now();
        while child.try_wait().expect("try_wait").is_none() {
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("the child's output")
    }

    #[test]
    #[ignore = "run by deadline_fails_a_hung_test_and_names_it"]
    fn sleeps_past_its_deadline() {
        let _deadline = super::deadline_secs(1);
        std::thread::sleep(Duration::from_secs(20));
    }

    #[test]
    #[ignore = "run by a_dropped_deadline_is_cancelled"]
    fn drops_its_deadline_then_sleeps() {
        let deadline = super::deadline_secs(1);
        drop(deadline);
        let _longer = super::deadline_secs(10);
        std::thread::sleep(Duration::from_millis(1500));
    }

    #[test]
    fn deadline_fails_a_hung_test_and_names_it() {
        let _deadline = super::deadline_secs(30);
        let started = Instant::now();
        let out = run_ignored("tests::sleeps_past_its_deadline");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(101), "{:?}: {stderr}", out.status);
        assert!(
            stderr.contains(
                "test tests::sleeps_past_its_deadline did not finish within 1 s: it hangs"
            ),
            "{stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the deadline fired only after {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_dropped_deadline_is_cancelled() {
        let _deadline = super::deadline_secs(30);
        let out = run_ignored("tests::drops_its_deadline_then_sleeps");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{:?}: {stderr}", out.status);
        assert!(!stderr.contains("did not finish"), "{stderr}");
    }
}
