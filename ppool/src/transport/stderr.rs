//! Forwarding a worker's stderr to ours, each line tagged with the pool and the worker. A
//! line that carries a forwarded `tracing` record goes to the pool's subscriber instead, as an
//! event of the worker the forwarder reads, whatever the record holds (see `crate::trace`).
//!
//! Three kinds of forwarder, by what reads what:
//! - the supervisor, a local worker's stderr: records go to the pool's subscriber, with the
//!   worker's origin; without a subscriber, a line with a record's mark is tagged like any
//!   other;
//! - a host agent, its worker's stderr: records are passed on [`stamped`] with the worker and
//!   its pid, for the pool, and every other line is tagged. (The agent cannot tell whether its
//!   pool wants records: without a subscriber, where its workers write none, an imitation of
//!   one that an entry writes reaches the pool's stderr stamped, untagged.)
//! - the supervisor, a host agent's stderr: lines pass as the agent wrote them (its workers'
//!   come tagged), and only a line that starts with the agent's stamp is a record, of the pool
//!   and that host. The rest of a line cut for its length never starts one.
//!
//! A subscriber that panics on an event does not end the forwarding: the first such panic of
//! each forwarder is reported with a line on our stderr, and the event is left out.
//!
//! [`stamped`]: crate::trace::stamped

use crate::trace::{Origin, Record};
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

/// Whose stderr a forwarder reads.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// Worker `index` of `pool`, process `pid`, which this process started.
    Worker {
        pool: String,
        index: usize,
        pid: u32,
    },
    /// The host agent of `host`, which runs workers of `pool` there.
    Agent { pool: String, host: String },
}

/// The longest piece of a line without an end that the forwarder holds before it writes it.
const FORWARD_LINE_CAP: usize = 64 * 1024;

/// How long the forwarder waits for output before it looks at its stop flag.
const FORWARD_POLL: Duration = Duration::from_millis(100);

/// Copies the stderr of `source` to ours line by line (see the module's docs), records to
/// `dispatch`, until the pipe closes or, once the worker is reaped, until nothing more is
/// waiting (a process the worker started may hold the pipe open).
pub(crate) fn forward_stderr(
    stderr: std::process::ChildStderr,
    source: Source,
    dispatch: Option<tracing::Dispatch>,
) -> Option<Forwarder> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let mut sink = Sink::new(source, dispatch);
    let spawned = std::thread::Builder::new()
        .name("ppool-stderr".into())
        .spawn(move || {
            use std::io::Read;
            // Our stderr may be a pipe that was closed (`prog 2>&1 | head`): that must not
            // kill the program through this thread.
            super::sigpipe::block_sigpipe_on_this_thread();
            let mut stderr = stderr;
            let mut pending = Pending::default();
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
                pending.push(&buf[..n], |lines, continued| sink.write(lines, continued));
            }
            pending.finish(|lines, continued| sink.write(lines, continued));
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

/// What a forwarder has read of lines it has not written yet.
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Whether `bytes` begin inside a line: the rest of one cut for its length.
    continued: bool,
}

impl Pending {
    /// Adds `new`, and hands `out` what is ready: the whole lines, then pieces of a line too
    /// long to wait for its end, each with whether it begins inside a line.
    fn push(&mut self, new: &[u8], mut out: impl FnMut(&[u8], bool)) {
        let scanned = self.bytes.len();
        self.bytes.extend_from_slice(new);
        // Only the new bytes are scanned, so a long line costs linear time.
        let end = self.bytes[scanned..]
            .iter()
            .rposition(|&b| b == b'\n' || b == b'\r')
            .map(|at| scanned + at + 1);
        if let Some(end) = end {
            out(&self.bytes[..end], self.continued);
            self.bytes.drain(..end);
            self.continued = false;
        }
        while self.bytes.len() >= FORWARD_LINE_CAP {
            // A line this long without an end is forwarded in pieces of the cap.
            let mut piece: Vec<u8> = self.bytes.drain(..FORWARD_LINE_CAP).collect();
            piece.push(b'\n');
            out(&piece, self.continued);
            self.continued = true;
        }
    }

    /// Hands `out` what is left, a line without its end, once nothing more comes.
    fn finish(&mut self, mut out: impl FnMut(&[u8], bool)) {
        if !self.bytes.is_empty() {
            self.bytes.push(b'\n');
            out(&self.bytes, self.continued);
            self.bytes.clear();
        }
    }
}

/// Where a forwarder writes what it read.
struct Sink {
    /// Who the records come from. On a host agent's stderr, only the pool and the host: each
    /// record's stamp names the worker and its pid.
    origin: Origin,
    /// Whether this reads a host agent's stderr.
    agent: bool,
    /// `[pool:index] `, before each line of a worker's (an agent's lines come tagged).
    tag: String,
    /// The pool's subscriber, which gets the records.
    dispatch: Option<tracing::Dispatch>,
    /// In a host agent: records are passed on, stamped, for the pool that reads our stderr.
    pass_on: bool,
    /// Whether a panic of the subscriber was reported.
    reported: bool,
}

impl Sink {
    fn new(source: Source, dispatch: Option<tracing::Dispatch>) -> Sink {
        let (origin, agent, tag) = match source {
            Source::Worker { pool, index, pid } => {
                let tag = format!("[{pool}:{index}] ");
                let origin = Origin {
                    pool,
                    worker: index as u64,
                    host: rustix::system::uname()
                        .nodename()
                        .to_string_lossy()
                        .into_owned(),
                    pid,
                };
                (origin, false, tag)
            }
            Source::Agent { pool, host } => {
                let origin = Origin {
                    pool,
                    worker: 0,
                    host,
                    pid: 0,
                };
                (origin, true, String::new())
            }
        };
        Sink {
            pass_on: !agent && dispatch.is_none() && crate::trace::passes_records_on(),
            origin,
            agent,
            tag,
            dispatch,
            reported: false,
        }
    }

    /// Writes whole lines; the first begins inside a line if `continued`. A line ends at
    /// `\n`, or at `\r` (a progress line that redraws itself).
    fn write(&mut self, lines: &[u8], continued: bool) {
        for (i, line) in Lines(lines).enumerate() {
            if self.agent {
                self.agent_line(line, continued && i == 0);
            } else {
                self.worker_line(line);
            }
        }
    }

    /// A line of a worker's, tagged. A record in it is re-emitted, or passed on, on a line of
    /// its own, after the text before it (a line the entry had not ended) if any; without a
    /// subscriber to take it, it is part of the line.
    fn worker_line(&mut self, line: &[u8]) {
        let wanted = self.dispatch.is_some() || self.pass_on;
        let record = crate::trace::split_marked(line)
            .filter(|_| wanted)
            .and_then(|(before, hex)| Some((before, hex, Record::from_hex(hex)?)));
        let Some((before, hex, record)) = record else {
            write_parts(&[self.tag.as_bytes(), line]);
            return;
        };
        if !before.is_empty() {
            write_parts(&[self.tag.as_bytes(), before, b"\n"]);
        }
        match &self.dispatch {
            Some(dispatch) => emit(dispatch, &record, &self.origin, &mut self.reported, false),
            None => {
                let stamped = crate::trace::stamped(self.origin.worker, self.origin.pid, hex);
                write_parts(&[&stamped]);
            }
        }
    }

    /// A line of a host agent's: as it is, unless it starts with the agent's stamp on a
    /// record (the rest of a line cut for its length does not start a line).
    fn agent_line(&mut self, line: &[u8], continued: bool) {
        let record = self.dispatch.as_ref().zip(agents_record(line, continued));
        let Some((dispatch, (worker, pid, record))) = record else {
            write_parts(&[line]);
            return;
        };
        self.origin.worker = worker;
        self.origin.pid = pid;
        emit(dispatch, &record, &self.origin, &mut self.reported, true);
    }
}

/// Re-emits `record` to `dispatch`. A panic of the subscriber leaves the event out; the first
/// (`reported` says whether there was one) is reported on our stderr, as a line (a `tracing`
/// event could panic it again). `agent`: the record came through a host agent.
fn emit(
    dispatch: &tracing::Dispatch,
    record: &Record,
    origin: &Origin,
    reported: &mut bool,
    agent: bool,
) {
    let emitted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::trace::replay::emit(dispatch, record, origin)
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
    let whose = if agent {
        format!("the workers of host {}", origin.host)
    } else {
        "this worker".to_string()
    };
    let report = format!(
        "[{}:{}] ppool: the subscriber panicked on a forwarded event ({message}); the later \
         events of {whose} still go to it, and its panics on them are not reported\n",
        origin.pool, origin.worker
    );
    write_parts(&[report.as_bytes()]);
}

/// The record on a line of a host agent's, with the worker and the pid its stamp names. Only
/// a line that starts with the stamp has one; the rest of a line cut for its length does not
/// start a line, even if it starts with the stamp.
fn agents_record(line: &[u8], continued: bool) -> Option<(u64, u32, Record)> {
    if continued {
        return None;
    }
    let (worker, pid, hex) = crate::trace::read_stamped(line)?;
    Some((worker, pid, Record::from_hex(hex)?))
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
    use super::{FORWARD_LINE_CAP, Lines, Pending, agents_record};
    use crate::trace::{MARK, Record, stamped};

    /// A record's line as a worker writes it, and its hex.
    fn record_line() -> (Vec<u8>, Vec<u8>) {
        let record = Record {
            level: 3,
            target: "app".into(),
            module_path: None,
            file: None,
            line: None,
            fields: Vec::new(),
            spans: Vec::new(),
            task: None,
        };
        let line = record.to_line().unwrap();
        let hex = line[MARK.len()..].to_vec();
        (line, hex)
    }

    /// What `Pending` hands on for `reads`: each piece, with whether it begins inside a line.
    fn pieces(reads: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut pending = Pending::default();
        let mut out = Vec::new();
        for read in reads {
            pending.push(read, |piece, continued| {
                out.push((piece.to_vec(), continued))
            });
        }
        pending.finish(|piece, continued| out.push((piece.to_vec(), continued)));
        out
    }

    #[test]
    fn the_pieces_of_a_line_cut_for_its_length_begin_inside_it() {
        let long = vec![b'x'; FORWARD_LINE_CAP + 10];
        let out = pieces(&[&long, b"y\nnext\n", b"last"]);
        let flags: Vec<bool> = out.iter().map(|(_, continued)| *continued).collect();
        assert_eq!(flags, [false, true, false]);
        assert_eq!(out[0].0.len(), FORWARD_LINE_CAP + 1);
        assert_eq!(out[1].0, [vec![b'x'; 10], b"y\nnext\n".to_vec()].concat());
        assert_eq!(out[2].0, b"last\n");

        let out = pieces(&[b"a\rb", b"c\n"]);
        assert_eq!(out, [(b"a\r".to_vec(), false), (b"bc\n".to_vec(), false)]);
    }

    #[test]
    fn only_a_line_that_starts_with_the_agents_stamp_has_a_record() {
        let (_, hex) = record_line();
        let line = stamped(3, 4242, &hex);
        let (worker, pid, _) = agents_record(&line, false).expect("a stamped record");
        assert_eq!((worker, pid), (3, 4242));
        assert!(
            agents_record(&line, true).is_none(),
            "the rest of a cut line"
        );
        let tagged = [b"[p:0] ".as_slice(), &line].concat();
        assert!(agents_record(&tagged, false).is_none(), "a worker's line");
        let (unstamped, _) = record_line();
        assert!(
            agents_record(&unstamped, false).is_none(),
            "a worker's record"
        );
        let bad = stamped(3, 4242, b"zz\n");
        assert!(agents_record(&bad, false).is_none(), "not a record");
    }

    #[test]
    fn lines_end_at_newlines_and_lone_carriage_returns_and_crlf_is_one_end() {
        let lines: Vec<&[u8]> = Lines(b"a\nb\r\nc\rd").collect();
        assert_eq!(lines, [&b"a\n"[..], b"b\r\n", b"c\r", b"d"]);
        assert_eq!(Lines(b"").count(), 0);
    }
}
