//! Forwarding a worker's stderr to ours, each line tagged with the pool and the worker. A
//! line that carries a forwarded `tracing` record goes to the pool's subscriber instead.
//!
//! A subscriber that panics on an event does not end the forwarding: the first such panic of
//! each forwarder is reported with a line on our stderr, and the event is left out.

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
pub(crate) fn forward_stderr(
    stderr: std::process::ChildStderr,
    tag: String,
    dispatch: Option<tracing::Dispatch>,
) -> Option<Forwarder> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let spawned = std::thread::Builder::new()
        .name("ppool-stderr".into())
        .spawn(move || {
            use std::io::Read;
            // Our stderr may be a pipe that was closed (`prog 2>&1 | head`): that must not
            // kill the program through this thread.
            super::sigpipe::block_sigpipe_on_this_thread();
            let mut stderr = stderr;
            let mut pending: Vec<u8> = Vec::new();
            let mut reported = false;
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
                    write_tagged(&tag, &pending[..end], dispatch.as_ref(), &mut reported);
                    pending.drain(..end);
                }
                while pending.len() >= FORWARD_LINE_CAP {
                    // A line this long without an end is forwarded in pieces of the cap.
                    let mut piece: Vec<u8> = pending.drain(..FORWARD_LINE_CAP).collect();
                    piece.push(b'\n');
                    write_tagged(&tag, &piece, dispatch.as_ref(), &mut reported);
                }
            }
            if !pending.is_empty() {
                pending.push(b'\n');
                write_tagged(&tag, &pending, dispatch.as_ref(), &mut reported);
            }
        });
    match spawned {
        Ok(thread) => Some(Forwarder { thread, stop }),
        Err(e) => {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "cannot forward a worker's stderr"
            );
            None
        }
    }
}

/// Writes whole lines to our stderr, each prefixed with `tag`. A line ends at `\n`, or at
/// `\r` (a progress line that redraws itself).
///
/// A line that carries a `tracing` record is re-emitted to `dispatch`, or, without one in a
/// host agent (whose pool reads its stderr), passed on untagged with the record at the start
/// of its line. The text before a record (a line the entry had not ended) is a line of its
/// own. Without a subscriber and outside a host agent, nothing takes records: such a line is
/// tagged like any other. `reported`: whether a panic of the subscriber was reported (see
/// [`emit`]).
fn write_tagged(
    tag: &str,
    lines: &[u8],
    dispatch: Option<&tracing::Dispatch>,
    reported: &mut bool,
) {
    use crate::trace::MARK;
    let wanted = dispatch.is_some() || crate::trace::passes_records_on();
    for line in Lines(lines) {
        let marked = if wanted {
            crate::trace::split_marked(line)
        } else {
            None
        };
        let Some((before, hex)) = marked else {
            write_parts(&[tag.as_bytes(), line]);
            continue;
        };
        if !before.is_empty() {
            write_parts(&[tag.as_bytes(), before, b"\n"]);
        }
        match (dispatch, crate::trace::Record::from_hex(hex)) {
            (Some(dispatch), Some(record)) => emit(tag, dispatch, &record, reported),
            // Not a record after all: the line as the worker wrote it, tagged.
            (Some(_), None) => write_parts(&[tag.as_bytes(), MARK, hex]),
            // A host agent passes records on as they are, for its pool to read.
            (None, _) => write_parts(&[MARK, hex]),
        }
    }
}

/// Re-emits `record` to `dispatch`. A panic of the subscriber leaves the event out and the
/// forwarding goes on; the first (`reported` says whether there was one) is reported on our
/// stderr, as a line (a `tracing` event could panic it again).
fn emit(
    tag: &str,
    dispatch: &tracing::Dispatch,
    record: &crate::trace::Record,
    reported: &mut bool,
) {
    let emitted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::trace::replay::emit(dispatch, record)
    }));
    let Err(panic) = emitted else {
        return;
    };
    if std::mem::replace(reported, true) {
        return;
    }
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    let report = format!(
        "{tag}ppool: the subscriber panicked on a forwarded event ({message}); the later \
         events read here still go to it, and its panics on them are not reported\n"
    );
    write_parts(&[report.as_bytes()]);
}

/// Writes `parts` to our stderr, holding its lock, so that they stay together.
fn write_parts(parts: &[&[u8]]) {
    let mut err = io::stderr().lock();
    for part in parts {
        let _ = err.write_all(part);
    }
}

/// The lines of a buffer, each with its end: `\n`, `\r\n` (one end, not two), or a `\r` alone.
struct Lines<'a>(&'a [u8]);

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.0.is_empty() {
            return None;
        }
        let end = match self.0.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(at) if self.0[at] == b'\r' && self.0.get(at + 1) == Some(&b'\n') => at + 2,
            Some(at) => at + 1,
            None => self.0.len(),
        };
        let (line, rest) = self.0.split_at(end);
        self.0 = rest;
        Some(line)
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

#[cfg(test)]
mod tests {
    use super::Lines;

    #[test]
    fn lines_end_at_newlines_and_lone_carriage_returns_and_crlf_is_one_end() {
        let lines: Vec<&[u8]> = Lines(b"a\nb\r\nc\rd").collect();
        assert_eq!(lines, [&b"a\n"[..], b"b\r\n", b"c\r", b"d"]);
        assert_eq!(Lines(b"").count(), 0);
    }
}
