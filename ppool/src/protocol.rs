//! The worker channel: length-prefixed frames over any byte stream, and the messages they
//! carry. Pure `Read`/`Write`; nothing here knows about processes, descriptors or user types.
//!
//! A frame is a little-endian `u32` body length followed by the body. The body's first byte is
//! the message kind. Integers are little-endian, strings and byte blocks are `u32`-length
//! prefixed. Reading a frame allocates for the bytes that actually arrive, beyond one bounded
//! reservation (16 MiB at most), and a length above the limit is refused before anything is
//! read.

use std::io::{self, Read};

/// Bumped whenever the frame layout changes.
pub const PROTOCOL_VERSION: u32 = 6;
/// The first bytes of a handshake, to recognise a ppool peer.
pub(crate) const MAGIC: [u8; 4] = *b"PPL\x01";
/// The default largest frame, in bytes.
pub(crate) const DEFAULT_MAX_FRAME: usize = 1 << 30;

/// Message kinds, supervisor to worker.
pub(crate) mod kind {
    pub(crate) const HELLO: u8 = 1;
    pub(crate) const INIT: u8 = 2;
    pub(crate) const TASKS: u8 = 3;
    pub(crate) const EXIT: u8 = 4;
    pub(crate) const ON_EXIT: u8 = 5;
    // worker to supervisor
    pub(crate) const READY: u8 = 11;
    pub(crate) const REFUSE: u8 = 12;
    pub(crate) const INIT_DONE: u8 = 13;
    pub(crate) const RESULTS: u8 = 14;
    pub(crate) const EXITED: u8 = 15;
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The stream ended cleanly between frames.
    Closed,
    /// Reading failed, or the stream ended inside a frame.
    Io(io::Error),
    /// Writing failed.
    Send(io::Error),
    /// The frame claims more bytes than the limit allows.
    TooLarge { len: usize, max: usize },
    /// The frame's content does not parse.
    Malformed(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Closed => f.write_str("the channel closed"),
            FrameError::Io(e) => write!(f, "reading the channel failed: {e}"),
            FrameError::Send(e) => write!(f, "writing to the channel failed: {e}"),
            FrameError::TooLarge { len, max } => {
                write!(
                    f,
                    "a frame claims {len} bytes, more than the {max}-byte limit"
                )
            }
            FrameError::Malformed(m) => write!(f, "malformed frame: {m}"),
        }
    }
}

fn malformed(what: impl Into<String>) -> FrameError {
    FrameError::Malformed(what.into())
}

/// Reads frames from a byte stream into a reused buffer.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    inner: io::BufReader<R>,
    max: usize,
}

impl<R: Read> FrameReader<R> {
    pub(crate) fn new(inner: R, max: usize) -> Self {
        FrameReader {
            inner: io::BufReader::with_capacity(64 * 1024, inner),
            max,
        }
    }

    /// Reads one frame's body into `body` (replacing its contents).
    pub(crate) fn read(&mut self, body: &mut Vec<u8>) -> Result<(), FrameError> {
        let mut header = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.inner.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Err(FrameError::Closed),
                Ok(0) => {
                    return Err(FrameError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the channel closed inside a frame header",
                    )));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
        let len = u32::from_le_bytes(header) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if len == 0 {
            return Err(malformed("empty frame"));
        }
        body.clear();
        // Grow with what arrives, not with what the header claims: a lying header costs at
        // most one bounded reservation.
        body.reserve(len.min(16 << 20));
        let read = (&mut self.inner)
            .take(len as u64)
            .read_to_end(body)
            .map_err(FrameError::Io)?;
        if read < len {
            return Err(FrameError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the channel closed inside a frame ({read} of {len} bytes)"),
            )));
        }
        Ok(())
    }

    /// Whether bytes already read from the stream wait in the buffer: a wait on the stream
    /// itself would not see them.
    pub(crate) fn has_buffered(&self) -> bool {
        !self.inner.buffer().is_empty()
    }

    /// Changes the largest frame accepted.
    pub(crate) fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The underlying stream.
    pub(crate) fn get_ref(&self) -> &R {
        self.inner.get_ref()
    }
}

/// Builds one frame in a buffer, then writes it with a single `write_all`.
#[derive(Debug, Default)]
pub(crate) struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    /// Starts a frame of `kind`, discarding what the buffer held.
    pub(crate) fn start(&mut self, kind: u8) -> &mut Self {
        self.buf.clear();
        self.buf.extend_from_slice(&[0, 0, 0, 0, kind]);
        self
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
        self
    }

    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// Appends a length-prefixed block filled by `fill`, which appends to the buffer.
    pub(crate) fn block<E>(
        &mut self,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<&mut Self, E> {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        let result = fill(&mut self.buf);
        if result.is_err() {
            self.buf.truncate(at);
        }
        result?;
        let len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        Ok(self)
    }

    /// The finished frame, its length header filled in.
    pub(crate) fn finish(&mut self) -> &[u8] {
        let len = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        &self.buf
    }

    /// Takes the finished frame out of the buffer.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.finish();
        std::mem::take(&mut self.buf)
    }

    /// Drops what was appended after `len` bytes.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }

    /// The frame's length so far, header included.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The bytes so far, header included (its length is filled in by `finish`).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The body so far, after the length header: where a header is stored.
    pub(crate) fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buf[4..]
    }

    /// Appends bytes that are already encoded fields.
    pub(crate) fn append_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Gives back the memory of a buffer that held a frame much larger than usual.
    pub(crate) fn shrink(&mut self) {
        shrink(&mut self.buf);
    }
}

/// A buffer that held more than this keeps no more than this after use. Below it, the memory
/// of a freed buffer stays in the allocator's heap anyway (glibc maps blocks above 32 MiB on
/// their own), so keeping it costs nothing and saves the page faults of the next big frame.
pub(crate) const KEEP_BUFFER: usize = 64 << 20;

/// Gives back the memory of a buffer that grew past [`KEEP_BUFFER`] for one big frame, so
/// that one large payload does not stay resident for the rest of the process's life.
pub(crate) fn shrink(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_BUFFER {
        buf.clear();
        buf.shrink_to(1 << 20);
    }
}

/// Reads the fields of a frame body, checking every bound.
#[derive(Debug, Clone)]
pub(crate) struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Fields { rest: body }
    }

    #[inline]
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(malformed(format!(
                "{what}: needs {n} bytes, {} left",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    #[inline]
    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, FrameError> {
        Ok(self.take(1, what)?[0])
    }

    #[inline]
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, FrameError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    #[inline]
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, FrameError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    #[inline]
    pub(crate) fn bytes(&mut self, what: &str) -> Result<&'a [u8], FrameError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    pub(crate) fn str(&mut self, what: &str) -> Result<&'a str, FrameError> {
        std::str::from_utf8(self.bytes(what)?).map_err(|_| malformed(format!("{what}: not UTF-8")))
    }

    pub(crate) fn array4(&mut self, what: &str) -> Result<[u8; 4], FrameError> {
        let b = self.take(4, what)?;
        Ok([b[0], b[1], b[2], b[3]])
    }

    /// Fails unless every byte was read.
    /// Whatever is left, taken whole.
    pub(crate) fn take_rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    pub(crate) fn end(&self) -> Result<(), FrameError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!(
                "{} unexpected bytes at the end",
                self.rest.len()
            )))
        }
    }
}

/// The supervisor's greeting: who it is and what the worker will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello<'a> {
    pub(crate) build_id: u64,
    pub(crate) token: u64,
    pub(crate) worker: u32,
    pub(crate) pool: &'a str,
    pub(crate) entry: &'a str,
    /// The most verbose `tracing` level the pool's subscriber wants from entries (1 ERROR ..
    /// 5 TRACE), or 0: none, and nothing is installed.
    pub(crate) trace: u8,
}

impl<'a> Hello<'a> {
    pub(crate) fn write(&self, f: &mut FrameBuf) {
        f.start(kind::HELLO);
        f.buf.extend_from_slice(&MAGIC);
        f.u32(PROTOCOL_VERSION)
            .u64(self.build_id)
            .u64(self.token)
            .u32(self.worker);
        f.str(self.pool).str(self.entry).u8(self.trace);
    }

    /// Parses a HELLO body (kind byte included). A version or magic mismatch is an error that
    /// names both sides.
    pub(crate) fn parse(body: &'a [u8]) -> Result<Self, FrameError> {
        let mut r = Fields::new(body);
        if r.u8("kind")? != kind::HELLO {
            return Err(malformed("expected a HELLO frame"));
        }
        if r.array4("magic")? != MAGIC {
            return Err(malformed("not a ppool supervisor (bad magic)"));
        }
        let version = r.u32("version")?;
        if version != PROTOCOL_VERSION {
            return Err(malformed(format!(
                "protocol version {version}, this build speaks {PROTOCOL_VERSION}"
            )));
        }
        let hello = Hello {
            build_id: r.u64("build id")?,
            token: r.u64("token")?,
            worker: r.u32("worker index")?,
            pool: r.str("pool name")?,
            entry: r.str("entry name")?,
            trace: r.u8("tracing level")?,
        };
        r.end()?;
        Ok(hello)
    }
}

/// The worker's answer to HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ready<'a> {
    /// It serves; `build_id` is its own.
    Ok { build_id: u64, token: u64, pid: u32 },
    /// It refuses, and says why.
    Refused(&'a str),
}

impl<'a> Ready<'a> {
    pub(crate) fn write(&self, f: &mut FrameBuf) {
        match self {
            Ready::Ok {
                build_id,
                token,
                pid,
            } => {
                f.start(kind::READY);
                f.buf.extend_from_slice(&MAGIC);
                f.u32(PROTOCOL_VERSION).u64(*build_id).u64(*token).u32(*pid);
            }
            Ready::Refused(why) => {
                f.start(kind::REFUSE).str(why);
            }
        }
    }

    pub(crate) fn parse(body: &'a [u8]) -> Result<Self, FrameError> {
        let mut r = Fields::new(body);
        match r.u8("kind")? {
            kind::READY => {
                if r.array4("magic")? != MAGIC {
                    return Err(malformed("the worker is not a ppool worker (bad magic)"));
                }
                let version = r.u32("version")?;
                if version != PROTOCOL_VERSION {
                    return Err(malformed(format!(
                        "the worker speaks protocol version {version}, this supervisor {PROTOCOL_VERSION}"
                    )));
                }
                let ready = Ready::Ok {
                    build_id: r.u64("build id")?,
                    token: r.u64("token")?,
                    pid: r.u32("pid")?,
                };
                r.end()?;
                Ok(ready)
            }
            kind::REFUSE => {
                let why = r.str("reason")?;
                r.end()?;
                Ok(Ready::Refused(why))
            }
            k => Err(malformed(format!("expected READY, got message kind {k}"))),
        }
    }
}

/// What became of one task, as sent back in a RESULTS frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome<'a> {
    /// The encoded return value.
    Ok(&'a [u8]),
    /// The entry panicked.
    Panicked {
        message: &'a str,
        location: &'a str,
        /// The worker's backtrace, when it was asked for one; else empty.
        backtrace: &'a str,
    },
    /// The arguments could not be decoded or the result not encoded.
    Codec { action: &'a str, message: &'a str },
}

const OUTCOME_OK: u8 = 0;
const OUTCOME_PANICKED: u8 = 1;
const OUTCOME_CODEC: u8 = 2;

impl Outcome<'_> {
    #[cfg(test)]
    pub(crate) fn write_panicked(f: &mut FrameBuf, message: &str, location: &str) {
        Self::write_panicked_with(f, message, location, "");
    }

    /// A panic, with the worker's backtrace (empty: none).
    pub(crate) fn write_panicked_with(
        f: &mut FrameBuf,
        message: &str,
        location: &str,
        backtrace: &str,
    ) {
        f.u8(OUTCOME_PANICKED)
            .str(message)
            .str(location)
            .str(backtrace);
    }

    pub(crate) fn write_codec(f: &mut FrameBuf, action: &str, message: &str) {
        f.u8(OUTCOME_CODEC).str(action).str(message);
    }

    /// Starts an `Ok` outcome whose value `fill` appends.
    pub(crate) fn write_ok<E>(
        f: &mut FrameBuf,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        f.u8(OUTCOME_OK);
        match f.block(fill) {
            Ok(_) => Ok(()),
            Err(e) => {
                f.buf.pop();
                Err(e)
            }
        }
    }
}

/// The entry of a TASKS frame that means "the pool's own entry" (named in HELLO); any other
/// value is an index into the binary's entry table, the same in every process of one build.
pub(crate) const POOL_ENTRY: u32 = u32::MAX;

/// An entry index that stands for an entry with no index (its name is not unique): such a
/// job is never sent.
pub(crate) const BROKEN_ENTRY: u32 = u32::MAX - 1;

/// TASKS flag: a caller waits for this job and will likely send the next one at once, so the
/// worker should spin for it rather than sleep.
pub(crate) const FLAG_SPIN: u8 = 1;

/// The header of a TASKS body: the kind byte, then the job id, the number of tasks, the
/// flags and the entry. Each task follows as a length-prefixed block.
///
/// Headers are read and written at the start of a body (the kind byte at 0), never at an
/// offset of a whole frame: one convention for every header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TasksHeader {
    pub(crate) job: u64,
    pub(crate) count: u32,
    pub(crate) flags: u8,
    /// [`POOL_ENTRY`], or an index into the entry table.
    pub(crate) entry: u32,
}

impl TasksHeader {
    /// Its bytes, at the start of a TASKS body.
    pub(crate) const LEN: usize = 1 + 8 + 4 + 1 + 4;

    /// A job of `count` tasks of the pool's own entry, without flags.
    pub(crate) fn new(job: u64, count: u32) -> Self {
        TasksHeader {
            job,
            count,
            flags: 0,
            entry: POOL_ENTRY,
        }
    }

    /// Starts a TASKS frame with this header; the tasks follow.
    pub(crate) fn start(&self, f: &mut FrameBuf) {
        f.start(kind::TASKS);
        f.buf.extend_from_slice(&self.encode()[1..]);
    }

    /// The header's bytes.
    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut h = [0u8; Self::LEN];
        h[0] = kind::TASKS;
        h[1..9].copy_from_slice(&self.job.to_le_bytes());
        h[9..13].copy_from_slice(&self.count.to_le_bytes());
        h[13] = self.flags;
        h[14..18].copy_from_slice(&self.entry.to_le_bytes());
        h
    }

    /// Overwrites the header at the start of `body`, a TASKS body at least [`Self::LEN`]
    /// bytes long.
    pub(crate) fn store(&self, body: &mut [u8]) {
        body[..Self::LEN].copy_from_slice(&self.encode());
    }

    /// Reads the header at the start of a TASKS body.
    pub(crate) fn read(body: &[u8]) -> Result<Self, FrameError> {
        Self::read_fields(&mut Fields::new(body))
    }

    fn read_fields(fields: &mut Fields<'_>) -> Result<Self, FrameError> {
        if fields.u8("kind")? != kind::TASKS {
            return Err(malformed("expected TASKS"));
        }
        Ok(TasksHeader {
            job: fields.u64("job id")?,
            count: fields.u32("task count")?,
            flags: fields.u8("flags")?,
            entry: fields.u32("entry")?,
        })
    }
}

/// A parsed TASKS body: iterate the encoded arguments.
#[derive(Debug)]
pub(crate) struct Tasks<'a> {
    pub(crate) job: u64,
    pub(crate) count: u32,
    pub(crate) flags: u8,
    /// [`POOL_ENTRY`], or an index into the entry table.
    pub(crate) entry: u32,
    fields: Fields<'a>,
}

impl<'a> Tasks<'a> {
    pub(crate) fn parse(body: &'a [u8]) -> Result<Self, FrameError> {
        let mut fields = Fields::new(body);
        let TasksHeader {
            job,
            count,
            flags,
            entry,
        } = TasksHeader::read_fields(&mut fields)?;
        Ok(Tasks {
            job,
            count,
            flags,
            entry,
            fields,
        })
    }

    /// The next task's encoded arguments.
    pub(crate) fn next_args(&mut self) -> Result<&'a [u8], FrameError> {
        self.fields.bytes("task arguments")
    }
}

/// The header of a RESULTS body: the kind byte, then the job id, the number of outcomes that
/// follow, the job's busy time and longest task (in nanoseconds, in the frame that ends the
/// job), and whether more frames of the same job follow (its outcomes came in several runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResultsHeader {
    pub(crate) job: u64,
    pub(crate) count: u32,
    pub(crate) busy_nanos: u64,
    pub(crate) max_task_nanos: u64,
    pub(crate) more: bool,
}

impl ResultsHeader {
    /// Its bytes, at the start of a RESULTS body.
    pub(crate) const LEN: usize = 1 + 8 + 4 + 8 + 8 + 1;

    /// A run of `count` outcomes of `job`, followed by more (no timing: that comes at the
    /// job's end).
    pub(crate) fn run(job: u64, count: u32) -> Self {
        ResultsHeader {
            job,
            count,
            busy_nanos: 0,
            max_task_nanos: 0,
            more: true,
        }
    }

    /// Starts a RESULTS frame with this header; the outcomes follow.
    pub(crate) fn start(&self, f: &mut FrameBuf) {
        f.start(kind::RESULTS);
        f.buf.extend_from_slice(&self.encode()[1..]);
    }

    /// The header's bytes.
    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut h = [0u8; Self::LEN];
        h[0] = kind::RESULTS;
        h[1..9].copy_from_slice(&self.job.to_le_bytes());
        h[9..13].copy_from_slice(&self.count.to_le_bytes());
        h[13..21].copy_from_slice(&self.busy_nanos.to_le_bytes());
        h[21..29].copy_from_slice(&self.max_task_nanos.to_le_bytes());
        h[29] = u8::from(self.more);
        h
    }

    /// Overwrites the header at the start of `body`, a RESULTS body at least [`Self::LEN`]
    /// bytes long.
    pub(crate) fn store(&self, body: &mut [u8]) {
        body[..Self::LEN].copy_from_slice(&self.encode());
    }

    /// Reads the header at the start of a RESULTS body, without looking at its outcomes.
    #[cfg(test)]
    pub(crate) fn read(body: &[u8]) -> Result<Self, FrameError> {
        Self::read_fields(&mut Fields::new(body))
    }

    fn read_fields(fields: &mut Fields<'_>) -> Result<Self, FrameError> {
        let kind = fields.u8("kind")?;
        if kind != kind::RESULTS {
            return Err(malformed(format!(
                "expected RESULTS, got message kind {kind}"
            )));
        }
        Ok(ResultsHeader {
            job: fields.u64("job id")?,
            count: fields.u32("result count")?,
            busy_nanos: fields.u64("busy time")?,
            max_task_nanos: fields.u64("longest task")?,
            more: match fields.u8("more flag")? {
                0 => false,
                1 => true,
                m => return Err(malformed(format!("bad more flag {m}"))),
            },
        })
    }

    /// Parses a RESULTS body: its header and its outcomes' bytes, checked to hold exactly
    /// `count` well-formed outcomes, so that consumers can iterate without failing halfway.
    pub(crate) fn parse(body: &[u8]) -> Result<(Self, &[u8]), FrameError> {
        let mut fields = Fields::new(body);
        let header = Self::read_fields(&mut fields)?;
        check_outcomes(fields.rest, header.count)?;
        Ok((header, fields.rest))
    }
}

/// Checks that `raw` holds exactly `count` well-formed outcomes, one after another.
pub(crate) fn check_outcomes(raw: &[u8], count: u32) -> Result<(), FrameError> {
    let mut check = Outcomes {
        fields: Fields::new(raw),
        left: count,
    };
    for _ in 0..count {
        check.next_outcome()?;
    }
    check.fields.end()
}

/// Cuts a run of `count` well-formed outcomes into runs whose RESULTS bodies are each within
/// `max` bytes, in order: each run's outcome count and bytes. An outcome larger than that
/// alone goes in a run of its own (a worker keeps every outcome within a frame). `None` if
/// `raw` does not hold `count` outcomes.
pub(crate) fn cut_outcomes(raw: &[u8], count: u32, max: usize) -> Option<Vec<(u32, &[u8])>> {
    let mut outcomes = Outcomes {
        fields: Fields::new(raw),
        left: count,
    };
    let mut runs = Vec::new();
    let (mut start, mut end, mut in_run) = (0usize, 0usize, 0u32);
    for _ in 0..count {
        let len = outcomes.next_raw().ok()?.len();
        if in_run > 0 && ResultsHeader::LEN + (end - start) + len > max {
            runs.push((in_run, &raw[start..end]));
            (start, in_run) = (end, 0);
        }
        end += len;
        in_run += 1;
    }
    outcomes.fields.end().ok()?;
    runs.push((in_run, &raw[start..end]));
    Some(runs)
}

/// Cuts a finished RESULTS frame whose body is larger than `max` into frames that are each
/// within it, in order, every one but the last marked as followed by more; the last keeps the
/// timing. A worker uses it for an answer larger than a frame (each outcome fits a frame of
/// its own: the worker makes sure). `None` when the frame fits already.
pub(crate) fn split_results(frame: &[u8], max: usize) -> Option<Vec<Vec<u8>>> {
    let body = frame.get(4..)?;
    if body.len() <= max {
        return None;
    }
    let (header, raw) = ResultsHeader::parse(body).ok()?;
    let runs = cut_outcomes(raw, header.count, max)?;
    let last = runs.len() - 1;
    let mut part = FrameBuf::default();
    let frames = runs
        .into_iter()
        .enumerate()
        .map(|(k, (count, raw))| {
            let run = if k == last {
                ResultsHeader { count, ..header }
            } else {
                ResultsHeader::run(header.job, count)
            };
            run.start(&mut part);
            part.append_raw(raw);
            part.take()
        })
        .collect();
    Some(frames)
}

/// Splits the first frame off `bytes`, finished frames one after another: its body and the
/// rest. `None` when `bytes` do not start with a whole frame.
pub(crate) fn split_frame(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let header: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    let len = u32::from_le_bytes(header) as usize;
    let body = bytes.get(4..4usize.checked_add(len)?)?;
    Some((body, &bytes[4 + len..]))
}

/// The outcomes of one job, as `deliver` sees them: its timing, and its `count` outcomes'
/// bytes, one after another, as a worker wrote them.
#[derive(Debug, Clone)]
pub(crate) struct Results<'a> {
    pub(crate) count: u32,
    pub(crate) busy_nanos: u64,
    pub(crate) max_task_nanos: u64,
    raw: &'a [u8],
}

impl<'a> Results<'a> {
    /// The outcomes `raw` of a job: `count` of them, checked to be well formed already
    /// (by [`ResultsHeader::parse`] or [`check_outcomes`]); an ill-formed one ends the
    /// iteration early.
    pub(crate) fn from_parts(
        count: u32,
        busy_nanos: u64,
        max_task_nanos: u64,
        raw: &'a [u8],
    ) -> Self {
        Results {
            count,
            busy_nanos,
            max_task_nanos,
            raw,
        }
    }

    /// The outcomes, in task order.
    pub(crate) fn outcomes(&self) -> Outcomes<'a> {
        Outcomes {
            fields: Fields::new(self.raw),
            left: self.count,
        }
    }
}

/// Iterates the outcomes of a job.
#[derive(Debug, Clone)]
pub(crate) struct Outcomes<'a> {
    fields: Fields<'a>,
    left: u32,
}

impl<'a> Outcomes<'a> {
    /// The next outcome's bytes, as they stand in the frame.
    pub(crate) fn next_raw(&mut self) -> Result<&'a [u8], FrameError> {
        let before = self.fields.rest;
        self.next_outcome()?;
        Ok(&before[..before.len() - self.fields.rest.len()])
    }

    #[inline]
    fn next_outcome(&mut self) -> Result<Outcome<'a>, FrameError> {
        let f = &mut self.fields;
        Ok(match f.u8("outcome tag")? {
            OUTCOME_OK => Outcome::Ok(f.bytes("result value")?),
            OUTCOME_PANICKED => Outcome::Panicked {
                message: f.str("panic message")?,
                location: f.str("panic location")?,
                backtrace: f.str("panic backtrace")?,
            },
            OUTCOME_CODEC => Outcome::Codec {
                action: f.str("codec action")?,
                message: f.str("codec message")?,
            },
            t => return Err(malformed(format!("unknown outcome tag {t}"))),
        })
    }
}

impl<'a> Iterator for Outcomes<'a> {
    type Item = Outcome<'a>;

    fn next(&mut self) -> Option<Outcome<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The outcomes were checked as they came (`ResultsHeader::parse`, `check_outcomes`).
        self.next_outcome().ok()
    }
}

/// An INIT frame: run the initializer entry with these encoded arguments.
pub(crate) fn write_init(f: &mut FrameBuf, entry: &str, args: &[u8]) {
    f.start(kind::INIT).str(entry).bytes(args);
}

/// An INIT_DONE frame: `None` for success, else the failure.
pub(crate) fn write_init_done(f: &mut FrameBuf, failure: Option<&str>) {
    f.start(kind::INIT_DONE);
    match failure {
        None => f.u8(0),
        Some(why) => f.u8(1).str(why),
    };
}

/// Parses INIT_DONE: `Ok(())` or the initializer's failure.
pub(crate) fn parse_init_done(body: &[u8]) -> Result<Result<(), String>, FrameError> {
    let mut r = Fields::new(body);
    if r.u8("kind")? != kind::INIT_DONE {
        return Err(malformed(format!(
            "expected INIT_DONE, got message kind {}",
            body[0]
        )));
    }
    let done = match r.u8("status")? {
        0 => Ok(()),
        _ => Err(r.str("failure")?.to_string()),
    };
    r.end()?;
    Ok(done)
}

/// An EXIT frame: finish and exit.
pub(crate) fn write_exit(f: &mut FrameBuf) {
    f.start(kind::EXIT);
}

/// An ON_EXIT frame: run this entry with these arguments when told to exit.
pub(crate) fn write_on_exit(f: &mut FrameBuf, entry: &str, args: &[u8]) {
    f.start(kind::ON_EXIT).str(entry).bytes(args);
}

/// Parses ON_EXIT: the entry's name and its encoded arguments.
pub(crate) fn parse_on_exit(body: &[u8]) -> Result<(&str, &[u8]), FrameError> {
    let mut r = Fields::new(body);
    if r.u8("kind")? != kind::ON_EXIT {
        return Err(malformed("expected ON_EXIT"));
    }
    let parsed = (r.str("exit entry")?, r.bytes("exit arguments")?);
    r.end()?;
    Ok(parsed)
}

/// An EXITED frame: the worker-exit entry's outcome.
pub(crate) fn start_exited(f: &mut FrameBuf) {
    f.start(kind::EXITED);
}

/// Parses EXITED: the exit entry's one outcome.
pub(crate) fn parse_exited(body: &[u8]) -> Result<Outcome<'_>, FrameError> {
    let mut r = Fields::new(body);
    if r.u8("kind")? != kind::EXITED {
        return Err(malformed("expected EXITED"));
    }
    let mut outcomes = Outcomes { fields: r, left: 1 };
    let outcome = outcomes.next_outcome()?;
    outcomes.fields.end()?;
    Ok(outcome)
}

#[cfg(test)]
mod tests;
