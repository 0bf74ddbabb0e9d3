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
