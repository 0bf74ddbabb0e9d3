//! Child-process modes: the bench re-executes its own binary with one of these flags.
//!
//! The flag check runs first thing in `main` (inside `ppool::main!`, which serves
//! ppool's workers before `main` ever runs).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::anchors::{raw_pipe, shm_pingpong};
use crate::{BenchResult, metrics, ppool_side};

/// Raw pipe echo child (stdin -> stdout).
pub(crate) const RAW_ECHO: &str = "--raw-pipe-child";
/// Raw pipe sink child (length-prefixed payloads, 8-byte acks).
pub(crate) const RAW_SINK: &str = "--raw-sink-child";
/// Shared-memory echo child (spins on a shared page; argument: its memfd).
pub(crate) const SHM_ECHO: &str = "--shm-echo-child";
/// Exits at once.
pub(crate) const NOOP: &str = "--noop-child";
/// Starts two `NOOP` children of itself, waits for them, exits.
pub(crate) const REEXEC_TWICE: &str = "--reexec-twice-child";
/// ppool: pool of 2, 2 tasks, shut down, exit.
pub(crate) const STARTUP: &str = "--startup-child";
/// ppool: lazy map over N items, prints its peak RSS growth as JSON.
pub(crate) const MAP_RSS: &str = "--map-rss-child";
/// Sync round trips of ppool and the raw pipe (run under `taskset`), prints JSON.
pub(crate) const PINNED_RTT: &str = "--pinned-rtt-child";
/// ppool: one size of `remote_scale`, figures as JSON lines as they are measured.
pub(crate) const REMOTE_SCALE: &str = "--remote-scale-child";
/// ppool: one run of the `shared` broadcast (one way of passing the value, one layout).
pub(crate) const SHARED_BROADCAST: &str = "--shared-broadcast-child";

/// Runs the child mode named by `args[0]`, if any; `Ok(true)` when one ran.
pub(crate) fn dispatch(args: &[String]) -> BenchResult<bool> {
    let Some(mode) = args.first() else {
        return Ok(false);
    };
    match mode.as_str() {
        RAW_ECHO => raw_pipe::echo_child()?,
        RAW_SINK => raw_pipe::sink_child()?,
        SHM_ECHO => shm_pingpong::echo_child(count_arg(args)?)?,
        NOOP => {}
        REEXEC_TWICE => reexec_twice()?,
        STARTUP => ppool_side::startup_child()?,
        MAP_RSS => ppool_side::map_rss_child(count_arg(args)?)?,
        PINNED_RTT => metrics::latency::pinned_child(count_arg(args)?)?,
        REMOTE_SCALE => metrics::remote_scale::child(&args[1..])?,
        SHARED_BROADCAST => metrics::shared_broadcast::child(&args[1..])?,
        _ => return Ok(false),
    }
    Ok(true)
}

fn count_arg(args: &[String]) -> BenchResult<u64> {
    let value = args.get(1).ok_or("child mode needs a count")?;
    Ok(value.parse().map_err(|_| format!("bad count {value:?}"))?)
}

/// A command that re-executes this binary in child mode `mode`.
pub(crate) fn self_command(mode: &str) -> BenchResult<Command> {
    let mut cmd = Command::new(self_exe()?);
    cmd.arg(mode);
    Ok(cmd)
}

/// This binary, as a path that children can exec. On Linux, `/proc/<our pid>/exe` still
/// runs the same file after `cargo build` replaced it on disk during a long run (where
/// `current_exe` would name a deleted file); unlike `/proc/self/exe` it also means us when
/// another program such as `taskset` opens it.
pub(crate) fn self_exe() -> io::Result<PathBuf> {
    let proc_exe = PathBuf::from(format!("/proc/{}/exe", std::process::id()));
    if proc_exe.exists() {
        Ok(proc_exe)
    } else {
        std::env::current_exe()
    }
}

/// Longest a timed whole-process run may take (startup metric).
pub(crate) const PROCESS_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a measuring child (pinned round trips, map, Python anchors) may take.
pub(crate) const CAPTURE_TIMEOUT: Duration = Duration::from_secs(1800);

/// Wall time of a whole process, from spawn to exit; fails if it did not exit with 0
/// within [`PROCESS_TIMEOUT`].
pub(crate) fn time_process(cmd: &mut Command) -> BenchResult<Duration> {
    Ok(run_child(cmd, false, PROCESS_TIMEOUT)?.0)
}

/// Runs a process to completion and returns its stdout; fails on a non-zero exit or
/// after [`CAPTURE_TIMEOUT`].
pub(crate) fn capture_stdout(cmd: &mut Command) -> BenchResult<String> {
    Ok(run_child(cmd, true, CAPTURE_TIMEOUT)?.1)
}

type ChildOutcome = (io::Result<ExitStatus>, io::Result<String>, Duration);

/// Spawns `cmd` (stdin closed, stderr inherited), waits on a helper thread so that a hung
/// child is killed after `limit` instead of hanging the bench; returns the wall time from
/// spawn to exit and, with `capture`, stdout.
fn run_child(cmd: &mut Command, capture: bool, limit: Duration) -> BenchResult<(Duration, String)> {
    cmd.stdin(Stdio::null()).stdout(if capture {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    // Only the file name: messages end up in results/latest.json.
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or_default()
        .to_owned();
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel::<ChildOutcome>();
    thread::spawn(move || {
        let mut out = String::new();
        let read = match child.stdout.take() {
            Some(mut stdout) => stdout.read_to_string(&mut out).map(|_| out),
            None => Ok(out),
        };
        let status = child.wait();
        done_tx.send((status, read, start.elapsed())).ok();
    });
    let Ok((status, out, elapsed)) = done_rx.recv_timeout(limit) else {
        // The waiting thread owns the child; kill it by pid and let that thread reap it.
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .ok();
        return Err(format!("{program:?} timed out after {limit:?} and was killed").into());
    };
    let status = status?;
    if !status.success() {
        return Err(format!("{program:?} exited with {status}").into());
    }
    Ok((elapsed, out?))
}

/// How a run of [`run_lines`] went.
#[derive(Debug)]
pub(crate) struct Lines {
    /// Every line the child printed on stdout, in order.
    pub(crate) lines: Vec<String>,
    /// `Ok` if it exited with 0 within its limit; else what happened.
    pub(crate) end: Result<(), String>,
}

/// Runs `cmd` in a process group of its own (stdin closed, stderr inherited), collecting its
/// stdout lines as they come and handing each to `on_line` (for progress). If it has not
/// exited after `limit`, the whole group (the child and everything it started that stayed
/// in its group) is killed; the lines printed until then are kept.
pub(crate) fn run_lines(
    cmd: &mut Command,
    limit: Duration,
    mut on_line: impl FnMut(&str),
) -> BenchResult<Lines> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;

    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0);
    let deadline = Instant::now() + limit;
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (line_tx, line_rx) = mpsc::channel::<String>();
    // Not joined: a grandchild outside the group could keep the pipe open.
    thread::spawn(move || {
        for line in io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let kill_group = |child: &std::process::Child| {
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    };
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match line_rx.recv_timeout(left) {
            Ok(line) => {
                on_line(&line);
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    // Stdout closed (or time is up): wait for the exit within what is left of the limit.
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if timed_out || Instant::now() >= deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    if timed_out || status.is_none() {
        // Whatever of the group is still there (it may be only what the child left behind).
        kill_group(&child);
    }
    let end = match status {
        Some(status) if status.success() && !timed_out => Ok(()),
        Some(status) if !timed_out => Err(format!("exited with {status}")),
        _ => {
            if status.is_none() {
                child.wait()?;
            }
            Err(format!(
                "timed out after {limit:?}; killed with its process group"
            ))
        }
    };
    Ok(Lines { lines, end })
}

fn reexec_twice() -> BenchResult<()> {
    let mut kids = Vec::with_capacity(2);
    for _ in 0..2 {
        kids.push(self_command(NOOP)?.stdin(Stdio::null()).spawn()?);
    }
    for mut kid in kids {
        let status = kid.wait()?;
        if !status.success() {
            return Err(format!("no-op child exited with {status}").into());
        }
    }
    Ok(())
}
