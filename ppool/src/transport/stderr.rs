//! Forwarding a worker's stderr to ours, each line tagged with the pool and the worker.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A thread that copies a worker's stderr, and the flag that tells it the worker is gone.
#[derive(Debug)]
pub(crate) struct Forwarder {
    thread: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

/// The longest piece of a line without an end that the forwarder holds before it writes it.
const FORWARD_LINE_CAP: usize = 64 * 1024;

/// How long the forwarder waits for output before it looks at its stop flag.
const FORWARD_POLL: Duration = Duration::from_millis(100);

/// Copies a worker's stderr to ours line by line, each line tagged with `tag`, until the
/// pipe closes or, once the worker is reaped, until nothing more is waiting (a process the
/// worker started may hold the pipe open).
pub(crate) fn forward_stderr(stderr: std::process::ChildStderr, tag: String) -> Option<Forwarder> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let spawned = std::thread::Builder::new()
        .name("ppool-stderr".into())
        .spawn(move || {
            use std::io::Read;
            let mut stderr = stderr;
            let mut pending: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut reads_after_stop = 0;
            loop {
                let stopping = stopped.load(Ordering::Acquire);
                if stopping {
                    reads_after_stop += 1;
                    if reads_after_stop > 64 {
                        break;
                    }
                }
                let wait = if stopping {
                    Duration::ZERO
                } else {
                    FORWARD_POLL
                };
                let wait = rustix::event::Timespec::try_from(wait).ok();
                let mut fds = [rustix::event::PollFd::new(
                    &stderr,
                    rustix::event::PollFlags::IN,
                )];
                match rustix::event::poll(&mut fds, wait.as_ref()) {
                    Ok(0) if stopping => break,
                    Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                    Ok(_) => {}
                    Err(_) => break,
                }
                let n = match stderr.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let scanned = pending.len();
                pending.extend_from_slice(&buf[..n]);
                // Only the new bytes are scanned, so a long line costs linear time.
                let end = pending[scanned..]
                    .iter()
                    .rposition(|&b| b == b'\n' || b == b'\r')
                    .map(|at| scanned + at + 1);
                if let Some(end) = end {
                    write_tagged(&tag, &pending[..end]);
                    pending.drain(..end);
                }
                if pending.len() >= FORWARD_LINE_CAP {
                    // A line this long without an end is forwarded in pieces.
                    pending.push(b'\n');
                    write_tagged(&tag, &pending);
                    pending.clear();
                }
            }
            if !pending.is_empty() {
                pending.push(b'\n');
                write_tagged(&tag, &pending);
            }
        });
    match spawned {
        Ok(thread) => Some(Forwarder { thread, stop }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot forward a worker's stderr");
            None
        }
    }
}

/// Writes whole lines to our stderr, each prefixed with `tag`. A line ends at `\n`, or at
/// `\r` (a progress line that redraws itself).
fn write_tagged(tag: &str, lines: &[u8]) {
    let mut err = io::stderr().lock();
    for line in lines.split_inclusive(|&b| b == b'\n' || b == b'\r') {
        let _ = err.write_all(tag.as_bytes());
        let _ = err.write_all(line);
    }
}

impl Forwarder {
    /// Lets the thread finish what is waiting in the pipe (a process the worker started may
    /// hold it open), then joins it. Called once the worker is reaped.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}
