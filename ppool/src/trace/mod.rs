//! `tracing` from inside entries, forwarded to the supervisor's subscriber.
//!
//! Workers never run `main`, so a subscriber installed there does not exist in them. When the
//! supervisor has one, the greeting tells each worker the most verbose level it wants; the
//! worker then installs the subscriber of [`capture::dispatch`], which writes each enabled
//! event, with its spans, as one marked line on the worker's stderr. The supervisor's stderr
//! forwarder recognizes the mark and hands the record to [`replay::emit`], which re-emits the
//! event to the pool's subscriber with its level, target, fields and spans, inside a `task`
//! span tagged with the pool, the worker, its host and pid.
//!
//! A record says what happened, never who it came from: an entry can write any line on its
//! stderr, a record's imitation included. Who it came from ([`Origin`]) is what the reader of
//! the stderr knows. For a local worker that is the supervisor's forwarder, which knows the
//! worker it started. On another host, the host agent's forwarder of each worker passes the
//! worker's records on as [`stamped`] lines, which name the worker and its pid, and the pool
//! reading the agent's stderr adds its own name and the host's. It takes a record only from a
//! line that starts with the stamp (the rest of a line cut for its length does not start
//! one), and every line the agent passes on from a worker starts with the worker's tag
//! instead, so an entry cannot stamp a line itself.
//!
//! Without a subscriber nothing is installed in the workers and nothing is written: the cost
//! is nil, and a local worker's line that looks like a record is a line like any other. The
//! records are postcard, written in hex so that a line never holds a newline.

pub(crate) mod capture;
pub(crate) mod replay;

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};

/// What starts a forwarded record on a line of a worker's stderr.
pub(crate) const MARK: &[u8] = b"\x01ppool-trace:";

/// What starts a record a host agent passes on, stamped with the worker it came from: the
/// line is this, the worker's index, `.`, its pid, `:`, and the record's hex (see
/// [`stamped`]).
pub(crate) const STAMP: &[u8] = b"\x01ppool-trace@";

/// Who a record came from: what the reader of a worker's stderr knows, never what the record
/// says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The pool's name.
    pub(crate) pool: String,
    /// The worker's index in the pool.
    pub(crate) worker: u64,
    /// This machine's name (`uname`) for a local worker; for a remote one, its host's name as
    /// the pool was given it (as in its insights).
    pub(crate) host: String,
    /// The worker's process id, on its host.
    pub(crate) pid: u32,
}

/// Set in a host agent: the records of its workers are passed on for its pool, stamped.
static PASS_ON: AtomicBool = AtomicBool::new(false);

/// Makes this process pass its workers' records on, [`stamped`], to the pool that reads its
/// stderr, instead of showing them as lines: called by a host agent before it starts workers.
pub(crate) fn pass_records_on() {
    PASS_ON.store(true, Ordering::Relaxed);
}

/// Whether this process passes its workers' records on (see [`pass_records_on`]).
pub(crate) fn passes_records_on() -> bool {
    PASS_ON.load(Ordering::Relaxed)
}

/// A record's hex (what follows [`MARK`]), stamped by a host agent with the worker it read it
/// from: one line, for the pool that reads the agent's stderr.
pub(crate) fn stamped(worker: u64, pid: u32, hex: &[u8]) -> Vec<u8> {
    let hex = hex.trim_ascii_end();
    let mut line = Vec::with_capacity(STAMP.len() + 32 + hex.len());
    line.extend_from_slice(STAMP);
    line.extend_from_slice(format!("{worker}.{pid}:").as_bytes());
    line.extend_from_slice(hex);
    line.push(b'\n');
    line
}

/// Reads a line [`stamped`] by a host agent: the worker, its pid and the record's hex. Only a
/// line that starts with the stamp is one.
pub(crate) fn read_stamped(line: &[u8]) -> Option<(u64, u32, &[u8])> {
    let rest = line.strip_prefix(STAMP)?;
    let colon = rest.iter().position(|&b| b == b':')?;
    let (who, hex) = (&rest[..colon], &rest[colon + 1..]);
    let (worker, pid) = std::str::from_utf8(who).ok()?.split_once('.')?;
    Some((worker.parse().ok()?, pid.parse().ok()?, hex))
}

/// A level as one byte: 1 ERROR .. 5 TRACE; 0, as a most verbose level, is off.
pub(crate) fn level_byte(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 1,
        tracing::Level::WARN => 2,
        tracing::Level::INFO => 3,
        tracing::Level::DEBUG => 4,
        tracing::Level::TRACE => 5,
    }
}

/// The most verbose level a subscriber wants, as [`level_byte`] (0 when it wants none).
pub(crate) fn filter_byte(filter: tracing::level_filters::LevelFilter) -> u8 {
    filter.into_level().map_or(0, level_byte)
}

fn level_of(byte: u8) -> Option<tracing::Level> {
    Some(match byte {
        1 => tracing::Level::ERROR,
        2 => tracing::Level::WARN,
        3 => tracing::Level::INFO,
        4 => tracing::Level::DEBUG,
        5 => tracing::Level::TRACE,
        _ => return None,
    })
}

/// One event from inside a worker: what happened, not who it came from (see [`Origin`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) level: u8,
    pub(crate) target: String,
    pub(crate) module_path: Option<String>,
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
    pub(crate) fields: Vec<(String, Value)>,
    /// The spans it happened in, outermost first.
    pub(crate) spans: Vec<SpanRecord>,
    /// The entry running, and how many tasks this worker had started before it.
    pub(crate) task: Option<(String, u64)>,
}

/// A span an event happened in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SpanRecord {
    pub(crate) name: String,
    pub(crate) target: String,
    pub(crate) level: u8,
    pub(crate) fields: Vec<(String, Value)>,
}

/// A field's value, as `tracing` recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Value {
    Bool(bool),
    I64(i64),
    U64(u64),
    I128(i128),
    U128(u128),
    F64(f64),
    Str(String),
    /// Recorded with `Debug` (the message, `?x`, `%x`): its text.
    Debug(String),
    /// Recorded as `&dyn Error`: its message, then each source's.
    Error(Vec<String>),
}

/// The largest record, encoded: in hex, with the mark, its line stays below the 64 KiB at which
/// the stderr forwarder cuts a line.
pub(crate) const MAX_RECORD: usize = 24 * 1024;

/// What a text value keeps of itself when a record is too large.
const CUT_TEXT: usize = 2048;

impl Record {
    /// The record as one line: the mark, hex, and a newline. A record too large for a line
    /// is cut down first: long texts, then fields past the 16th and the spans' fields, then
    /// every field but the message.
    pub(crate) fn to_line(&self) -> Option<Vec<u8>> {
        let mut bytes = postcard::to_allocvec(self).ok()?;
        if bytes.len() > MAX_RECORD {
            let mut cut = self.clone();
            let texts = cut
                .fields
                .iter_mut()
                .chain(cut.spans.iter_mut().flat_map(|s| s.fields.iter_mut()));
            for (_, value) in texts {
                value.cut(CUT_TEXT);
            }
            bytes = postcard::to_allocvec(&cut).ok()?;
            if bytes.len() > MAX_RECORD {
                cut.fields.truncate(16);
                for span in &mut cut.spans {
                    span.fields.clear();
                }
                bytes = postcard::to_allocvec(&cut).ok()?;
            }
            if bytes.len() > MAX_RECORD {
                cut.fields.retain(|(name, _)| name == "message");
                cut.spans.truncate(8);
                bytes = postcard::to_allocvec(&cut).ok()?;
            }
            if bytes.len() > MAX_RECORD {
                return None;
            }
        }
        let mut line = Vec::with_capacity(MARK.len() + 2 * bytes.len() + 1);
        line.extend_from_slice(MARK);
        for b in bytes {
            line.push(HEX[usize::from(b >> 4)]);
            line.push(HEX[usize::from(b & 0xf)]);
        }
        line.push(b'\n');
        Some(line)
    }

    /// Reads what follows the mark on a line (the end of line may be there or not).
    pub(crate) fn from_hex(text: &[u8]) -> Option<Record> {
        let text = text.trim_ascii_end();
        if !text.len().is_multiple_of(2) {
            return None;
        }
        let bytes: Option<Vec<u8>> = text
            .chunks_exact(2)
            .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
            .collect();
        postcard::from_bytes(&bytes?).ok()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl Value {
    /// Keeps at most `max` bytes of a text (on a character boundary), saying how much went.
    fn cut(&mut self, max: usize) {
        let cut = |text: &mut String| {
            if text.len() > max {
                let mut end = max;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                let gone = text.len() - end;
                text.truncate(end);
                text.push_str(&format!("… ({gone} more bytes not forwarded)"));
            }
        };
        match self {
            Value::Str(t) | Value::Debug(t) => cut(t),
            Value::Error(chain) => chain.iter_mut().for_each(cut),
            _ => {}
        }
    }
}

/// Splits a line of a worker's stderr into the text before a record and the record's hex.
pub(crate) fn split_marked(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = line.windows(MARK.len()).position(|w| w == MARK)?;
    Some((&line[..at], &line[at + MARK.len()..]))
}

#[cfg(test)]
mod tests;
