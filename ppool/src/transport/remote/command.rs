//! The command lines that reach a host: the agent's, and the two that copy this program
//! there first (`copy_program`). Every command run here is waited for with a deadline: a
//! launcher that hangs is killed and named in the error, never waited for forever.

use crate::error::Error;
use crate::hosts::{HostSpec, Via, shell_quote};
use crate::transport::sigpipe::without_sigpipe;
use std::ffi::OsString;
use std::io::{self, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a copy command may go without taking a byte, or a look without ending, at least.
const COPY_SILENCE_MIN: Duration = Duration::from_secs(10);

/// The command line that starts the agent on `spec`'s host. ssh hands its command to the
/// host's shell, so there every word is quoted; the other launchers run it as it is. A copied
/// program is found through the host's `$HOME`, so the command goes through `sh` there.
pub(super) fn agent_command(spec: &HostSpec, copied: Option<&str>) -> Result<Vec<OsString>, Error> {
    let agent = format!("{}=1", crate::relaunch::AGENT_ENV);
    let mut words: Vec<OsString> = match copied {
        None => vec!["env".into(), agent.into(), spec.program.clone()],
        Some(path) => vec![
            "sh".into(),
            "-c".into(),
            format!("exec env {agent} \"$HOME/{path}\" \"$@\"").into(),
            "sh".into(),
        ],
    };
    words.extend(crate::relaunch::worker_args()?);
    Ok(launch_words(spec, words))
}

/// `spec`'s launcher followed by `words`, quoted for the host's shell where ssh needs it.
fn launch_words(spec: &HostSpec, words: Vec<OsString>) -> Vec<OsString> {
    let mut argv = spec.prefix.clone();
    match spec.via {
        Via::Ssh => argv.extend(
            words
                .iter()
                .map(|w| OsString::from(shell_quote(&w.to_string_lossy()))),
        ),
        Via::Srun | Via::Command => argv.extend(words),
    }
    argv
}

/// Copies this program to `spec`'s host, into `~/.cache/ppool/<build>/` (content-addressed:
/// the build's identity), unless it is there already; returns its path under `$HOME`. Two
/// commands of their own over the launcher, never the pool's channel: one that looks, and
/// one that writes a temporary file and renames it into place, so that a copy cut short is
/// never run. The look must end, and the copy must take bytes, within `patience` (at least
/// 10 s) of silence; else the command is killed and the copy fails.
pub(super) fn install(spec: &HostSpec, patience: Duration) -> Result<String, Error> {
    let name = &spec.name;
    let patience = patience.max(COPY_SILENCE_MIN);
    let fail = |why: String| Error::spawn(format!("host {name}: cannot copy the program: {why}"));
    let id = crate::relaunch::exe_identity().map_err(&fail)?;
    let file: String = crate::relaunch::program_path()?
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = format!(".cache/ppool/{id:016x}/{file}");
    let sh = |script: String| -> Vec<OsString> {
        launch_words(spec, vec!["sh".into(), "-c".into(), script.into()])
    };
    let look = sh(format!("test -x \"$HOME/{path}\""));
    let child = Command::new(&look[0])
        .args(&look[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("cannot run its launcher: {e}")))?;
    let progress = AtomicU64::new(0);
    let present = wait_with_patience(child, &progress, patience)
        .map_err(|e| fail(format!("looking for an earlier copy: {e}")))?;
    if present.success() {
        return Ok(path);
    }
    let write = sh(format!(
        "set -e; d=\"$HOME/.cache/ppool/{id:016x}\"; mkdir -p \"$d\"; t=\"$d/.{file}.$$\"; \
         cat > \"$t\"; chmod 755 \"$t\"; mv -f \"$t\" \"$d/{file}\""
    ));
    let mut child = Command::new(&write[0])
        .args(&write[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("cannot run its launcher: {e}")))?;
    let exe = match std::fs::read(crate::relaunch::program_path()?) {
        Ok(exe) => exe,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!("cannot read this program: {e}")));
        }
    };
    // The bytes go from a thread of their own, which counts them, so that this one can watch
    // the command and kill it when it stops taking them. The thread is never joined: a
    // process the launcher left behind may hold the pipe; it ends with that pipe.
    let progress = Arc::new(AtomicU64::new(0));
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let fed = match child.stdin.take() {
        Some(stdin) => {
            let progress = Arc::clone(&progress);
            std::thread::Builder::new()
                .name("ppool-copy".into())
                .spawn(move || {
                    let _ = sent_tx.send(feed(stdin, &exe, &progress));
                })
                .map(drop)
        }
        None => Err(io::Error::other("the copy command has no stdin")),
    };
    if let Err(e) = fed {
        let _ = child.kill();
        let _ = child.wait();
        return Err(fail(format!("cannot feed the copy command: {e}")));
    }
    let status = wait_with_patience(child, &progress, patience).map_err(&fail)?;
    let sent = sent_rx
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_else(|_| {
            Err(io::Error::other(
                "the copy command ended before it took the whole program",
            ))
        });
    match sent {
        Ok(()) if status.success() => {
            tracing::info!(host = %name, path = %path, "copied the program");
            Ok(path)
        }
        Ok(()) => Err(fail(format!("the copy command failed ({status})"))),
        Err(e) => Err(fail(format!("{e} ({status})"))),
    }
}

/// Writes `bytes` to `stdin` in pieces, counting them into `progress`, then closes it.
fn feed(mut stdin: std::process::ChildStdin, bytes: &[u8], progress: &AtomicU64) -> io::Result<()> {
    for piece in bytes.chunks(64 << 10) {
        without_sigpipe(|| stdin.write_all(piece))?;
        progress.fetch_add(piece.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Waits for `child` while `progress` moves at least once every `patience`; kills and reaps it
/// when it does not, and says so.
fn wait_with_patience(
    mut child: Child,
    progress: &AtomicU64,
    patience: Duration,
) -> Result<ExitStatus, String> {
    let mut seen = progress.load(Ordering::Relaxed);
    let mut since = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(format!("cannot wait for its launcher: {e}")),
        }
        let now = progress.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            since = Instant::now();
        } else if since.elapsed() >= patience {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "its launcher did nothing for {patience:?} (it took {now} bytes); it was killed"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
