//! The stream between a pool and a host agent (see `transport::agent`): one byte stream, the
//! launcher's stdio, that carries the frames of all the host's workers and the agent's own
//! control messages. Pure framing: no I/O but reading and writing the given streams.
//!
//! The agent's side starts with [`PREAMBLE`]; the pool skips what comes before it (a login
//! shell's noise), up to [`NOISE_MAX`] bytes. After it, both ways, every message is
//! `len: u32` (the body's bytes), `channel: u32`, then the body: a worker's frame body (as
//! `protocol` defines it) for the worker the agent holds in slot `channel`, or, on
//! [`CONTROL`], a control message, whose first byte is its kind ([`ctl`]).

use crate::error::ExitCause;
use crate::protocol::{Fields, FrameBuf, FrameError};
use std::io::{self, Read, Write};

/// The bytes an agent writes first, once its stdout is its own.
pub(crate) const PREAMBLE: &[u8] = b"\x00PPOOL-HOST-AGENT/1\n";
/// The most bytes of noise skipped before the preamble.
pub(crate) const NOISE_MAX: usize = 64 * 1024;
/// The channel of control messages.
pub(crate) const CONTROL: u32 = u32::MAX;
/// The version of the control messages, checked in the agent's greeting.
pub(crate) const MUX_VERSION: u32 = 3;
/// The largest control message accepted (a greeting's environment included).
pub(crate) const CONTROL_MAX: usize = 16 << 20;

/// Kinds of control messages.
pub(crate) mod ctl {
    /// Pool to agent, first: settings for the host's workers.
    pub(crate) const HELLO: u8 = 1;
    /// Agent to pool: who it is.
    pub(crate) const READY: u8 = 2;
    /// Pool to agent: start a worker in a slot, with its greeting.
    pub(crate) const SPAWN: u8 = 3;
    /// Agent to pool: the worker of a slot runs.
    pub(crate) const SPAWNED: u8 = 4;
    /// Agent to pool: the worker of a slot could not start.
    pub(crate) const SPAWN_FAILED: u8 = 5;
    /// Pool to agent: kill the worker of a slot.
    pub(crate) const KILL: u8 = 6;
    /// Agent to pool: the worker of a slot ended; how, and how far it got.
    pub(crate) const EXITED: u8 = 7;
    /// Either way: are you there?
    pub(crate) const PING: u8 = 8;
    /// Either way: yes.
    pub(crate) const PONG: u8 = 9;
    /// Pool to agent: a shared value's bytes follow, in parts; store them for the workers.
    pub(crate) const SHARE: u8 = 10;
    /// Pool to agent: a part of a shared value's bytes, at an offset.
    pub(crate) const SHARE_PART: u8 = 11;
    /// Pool to agent: a shared value is no longer used; let it go.
    pub(crate) const FORGET: u8 = 12;
    /// Agent to pool: the worker of a slot holds this much memory of its own, past the
    /// pool's limit.
    pub(crate) const MEMORY: u8 = 13;
}

/// The header of a message of `len` bytes on `channel`.
pub(crate) fn header(channel: u32, len: usize) -> io::Result<[u8; 8]> {
    let len =
        u32::try_from(len).map_err(|_| io::Error::other(format!("a message of {len} bytes")))?;
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..].copy_from_slice(&channel.to_le_bytes());
    Ok(header)
}

/// Writes one message.
pub(crate) fn write_message(out: &mut impl Write, channel: u32, body: &[u8]) -> io::Result<()> {
    write_parts(out, channel, &[body])
}

/// Writes one message whose body is `parts`, one after another: in one write while it is
/// small, else part by part (not to copy a large body).
pub(crate) fn write_parts(out: &mut impl Write, channel: u32, parts: &[&[u8]]) -> io::Result<()> {
    const GATHER_BELOW: usize = 64 << 10;
    let len = parts.iter().map(|p| p.len()).sum();
    let header = header(channel, len)?;
    if len < GATHER_BELOW && parts.len() > 1 {
        let mut message = Vec::with_capacity(header.len() + len);
        message.extend_from_slice(&header);
        parts.iter().for_each(|p| message.extend_from_slice(p));
        return out.write_all(&message);
    }
    out.write_all(&header)?;
    parts.iter().try_for_each(|p| out.write_all(p))
}

/// The largest body accepted on a worker's channel of a host stream, for a pool whose frames
/// are at most `max_frame`: a frame, or a run of outcomes the agent forwards behind a RESULTS
/// header, cut to within a frame (with room to spare should a worker misjudge one outcome).
pub(crate) fn host_message_limit(max_frame: usize) -> usize {
    max_frame
        .saturating_mul(2)
        .saturating_add(64 << 10)
        .min(u32::MAX as usize)
}

/// Reads one message into `body`; its channel. A body above `max` (or, on [`CONTROL`],
/// above [`CONTROL_MAX`] more than `max`, since a worker's greeting, which may be as large
/// as a frame, travels in one) is refused before it is read, and the buffer grows only as the
/// body's bytes arrive: a stray header that claims gigabytes costs nothing until they come.
pub(crate) fn read_message(
    input: &mut impl Read,
    body: &mut Vec<u8>,
    max: usize,
) -> Result<u32, FrameError> {
    let mut header = [0u8; 8];
    read_exact(input, &mut header, true)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let channel = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let limit = if channel == CONTROL {
        CONTROL_MAX.saturating_add(max)
    } else {
        max
    };
    if len > limit {
        return Err(match text_header(&header) {
            Some(text) => stray_text(&text),
            None => FrameError::TooLarge { len, max: limit },
        });
    }
    body.clear();
    // What is reserved up front is bounded; past it, the buffer doubles as bytes arrive.
    body.reserve(len.min(1 << 20));
    let got = match Read::take(&mut *input, len as u64).read_to_end(body) {
        Ok(got) => got,
        Err(e) => return Err(FrameError::Io(e)),
    };
    if got < len {
        return Err(match text_header(&header) {
            Some(text) => stray_text(&text),
            None => FrameError::Malformed(format!(
                "the stream ended inside a message, after {got} of {len} bytes"
            )),
        });
    }
    Ok(channel)
}

/// A message header that is printable text (a launcher or shell that wrote to the stream),
/// as that text.
fn text_header(header: &[u8; 8]) -> Option<String> {
    header
        .iter()
        .all(|&b| b.is_ascii_graphic() || b == b' ' || b == b'\n' || b == b'\t' || b == b'\r')
        .then(|| String::from_utf8_lossy(header).into_owned())
}

fn stray_text(text: &str) -> FrameError {
    FrameError::Malformed(format!(
        "text ({text:?}) where a message was due: something other than the host agent wrote to \
         the stream (a launcher that prints to its stdout, or merges stderr into it?)"
    ))
}

/// Fills `buf`; at a clean end before the first byte (if `at_start`), `Closed`.
fn read_exact(input: &mut impl Read, buf: &mut [u8], at_start: bool) -> Result<(), FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) if got == 0 && at_start => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Malformed(format!(
                    "the stream ended inside a message, after {got} of {} bytes",
                    buf.len()
                )));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(())
}

/// Reads up to and including the preamble; returns the bytes before it (noise). More than
/// [`NOISE_MAX`] of them, or an end first, is an error that quotes the start of the noise.
pub(crate) fn skip_to_preamble(input: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if seen.ends_with(PREAMBLE) {
            seen.truncate(seen.len() - PREAMBLE.len());
            return Ok(seen);
        }
        if seen.len() > NOISE_MAX + PREAMBLE.len() {
            return Err(format!(
                "no ppool host agent answered: {} bytes of other output, starting with {:?}",
                seen.len(),
                quote(&seen)
            ));
        }
        match input.read(&mut byte) {
            Ok(0) => {
                return Err(if seen.is_empty() {
                    "its launcher ended without starting the host agent".into()
                } else {
                    format!(
                        "its launcher ended without starting the host agent, after {:?}",
                        quote(&seen)
                    )
                });
            }
            Ok(_) => seen.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read from its launcher: {e}")),
        }
    }
}

/// The start of some bytes, as text, for a message.
pub(crate) fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    text.trim().to_string()
}

/// The pool's greeting to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentHello {
    pub(crate) version: u32,
    pub(crate) pool: String,
    pub(crate) max_frame: u64,
    /// Silence from the pool this long means it is gone.
    pub(crate) host_timeout_ms: u64,
    pub(crate) disable_gpu: bool,
    pub(crate) forward_stderr: bool,
    pub(crate) env: Vec<(Vec<u8>, Vec<u8>)>,
    /// The workers' memory limit in bytes (0: none): the agent reports a worker past it.
    pub(crate) memory_limit: u64,
    /// The CPUs to pin the workers to, on the host (empty: none).
    pub(crate) cpus: Vec<u32>,
}

impl AgentHello {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut f = FrameBuf::default();
        f.start(ctl::HELLO)
            .u32(self.version)
            .str(&self.pool)
            .u64(self.max_frame)
            .u64(self.host_timeout_ms)
            .u8(u8::from(self.disable_gpu))
            .u8(u8::from(self.forward_stderr))
            .u32(self.env.len() as u32);
        for (k, v) in &self.env {
            f.bytes(k).bytes(v);
        }
        f.u64(self.memory_limit).u32(self.cpus.len() as u32);
        for &cpu in &self.cpus {
            f.u32(cpu);
        }
        f.finish()[4..].to_vec()
    }

    pub(crate) fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(body);
        expect_kind(&mut f, ctl::HELLO)?;
        let version = f.u32("version")?;
        let pool = f.str("pool name")?.to_string();
        let max_frame = f.u64("frame limit")?;
        let host_timeout_ms = f.u64("host timeout")?;
        let disable_gpu = f.u8("disable_gpu")? != 0;
        let forward_stderr = f.u8("forward_stderr")? != 0;
        let n = f.u32("environment size")?;
        let mut env = Vec::new();
        for _ in 0..n {
            let k = f.bytes("variable name")?.to_vec();
            let v = f.bytes("variable value")?.to_vec();
            env.push((k, v));
        }
        let memory_limit = f.u64("memory limit")?;
        let n = f.u32("CPU count")?;
        let mut cpus = Vec::new();
        for _ in 0..n {
            cpus.push(f.u32("CPU")?);
        }
        f.end()?;
        Ok(AgentHello {
            version,
            pool,
            max_frame,
            host_timeout_ms,
            disable_gpu,
            forward_stderr,
            env,
            memory_limit,
            cpus,
        })
    }
}

/// The agent's answer: who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentReady {
    /// The identity of the agent's executable file.
    pub(crate) exe: u64,
    /// The table of entries it was built with.
    pub(crate) build_id: u64,
    pub(crate) pid: u32,
    pub(crate) hostname: String,
    /// `arch-os` of its build.
    pub(crate) target: String,
}

impl AgentReady {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut f = FrameBuf::default();
        f.start(ctl::READY)
            .u64(self.exe)
            .u64(self.build_id)
            .u32(self.pid)
            .str(&self.hostname)
            .str(&self.target);
        f.finish()[4..].to_vec()
    }

    pub(crate) fn parse(body: &[u8]) -> Result<Self, FrameError> {
        let mut f = Fields::new(body);
        expect_kind(&mut f, ctl::READY)?;
        let ready = AgentReady {
            exe: f.u64("executable id")?,
            build_id: f.u64("build id")?,
            pid: f.u32("pid")?,
            hostname: f.str("host name")?.to_string(),
            target: f.str("target")?.to_string(),
        };
        f.end()?;
        Ok(ready)
    }
}

/// The other control messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control<'a> {
    Spawn {
        slot: u32,
        index: u32,
        greeting: &'a [u8],
    },
    Spawned {
        slot: u32,
        pid: u32,
    },
    SpawnFailed {
        slot: u32,
        why: &'a str,
    },
    Kill {
        slot: u32,
    },
    Exited {
        slot: u32,
        cause: ExitCause,
        /// The job its progress word named, and how many of its tasks started.
        progress: Option<(u64, u32)>,
    },
    Ping(u64),
    Pong(u64),
    /// A shared value of the pool with `token` comes next, in parts: `len` bytes of kind
    /// `kind` (see `shm::sealed`) whose hash is `hash`.
    Share {
        token: u64,
        id: u64,
        kind: u8,
        len: u64,
        hash: u64,
    },
    /// Bytes `offset..offset + data.len()` of shared value `id`.
    SharePart {
        id: u64,
        offset: u64,
        data: &'a [u8],
    },
    /// Shared value `id` is no longer used.
    Forget {
        id: u64,
    },
    /// The worker of `slot` holds `bytes` of memory of its own, past the pool's limit.
    Memory {
        slot: u32,
        bytes: u64,
    },
}

impl Control<'_> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut f = FrameBuf::default();
        match *self {
            Control::Spawn {
                slot,
                index,
                greeting,
            } => {
                f.start(ctl::SPAWN).u32(slot).u32(index).bytes(greeting);
            }
            Control::Spawned { slot, pid } => {
                f.start(ctl::SPAWNED).u32(slot).u32(pid);
            }
            Control::SpawnFailed { slot, why } => {
                f.start(ctl::SPAWN_FAILED).u32(slot).str(why);
            }
            Control::Kill { slot } => {
                f.start(ctl::KILL).u32(slot);
            }
            Control::Exited {
                slot,
                cause,
                progress,
            } => {
                let (tag, n) = match cause {
                    ExitCause::Code(c) => (0, c),
                    ExitCause::Signal(s) => (1, s),
                    ExitCause::Lost => (3, 0),
                    _ => (2, 0),
                };
                let (known, job, started) = match progress {
                    Some((job, started)) => (1, job, started),
                    None => (0, 0, 0),
                };
                f.start(ctl::EXITED)
                    .u32(slot)
                    .u8(tag)
                    .u32(n as u32)
                    .u8(known)
                    .u64(job)
                    .u32(started);
            }
            Control::Ping(n) => {
                f.start(ctl::PING).u64(n);
            }
            Control::Pong(n) => {
                f.start(ctl::PONG).u64(n);
            }
            Control::Share {
                token,
                id,
                kind,
                len,
                hash,
            } => {
                f.start(ctl::SHARE)
                    .u64(token)
                    .u64(id)
                    .u8(kind)
                    .u64(len)
                    .u64(hash);
            }
            Control::SharePart { id, offset, data } => {
                let mut body = Control::share_part_prefix(id, offset);
                body.extend_from_slice(data);
                return body;
            }
            Control::Forget { id } => {
                f.start(ctl::FORGET).u64(id);
            }
            Control::Memory { slot, bytes } => {
                f.start(ctl::MEMORY).u32(slot).u64(bytes);
            }
        }
        f.finish()[4..].to_vec()
    }

    /// The body of a SHARE_PART message up to its bytes, which follow it unframed (the
    /// pool writes them from where they lie).
    pub(crate) fn share_part_prefix(id: u64, offset: u64) -> Vec<u8> {
        let mut f = FrameBuf::default();
        f.start(ctl::SHARE_PART).u64(id).u64(offset);
        f.finish()[4..].to_vec()
    }

    pub(crate) fn parse(body: &[u8]) -> Result<Control<'_>, FrameError> {
        let mut f = Fields::new(body);
        let control = match f.u8("control kind")? {
            ctl::SPAWN => Control::Spawn {
                slot: f.u32("slot")?,
                index: f.u32("worker index")?,
                greeting: f.bytes("greeting")?,
            },
            ctl::SPAWNED => Control::Spawned {
                slot: f.u32("slot")?,
                pid: f.u32("pid")?,
            },
            ctl::SPAWN_FAILED => Control::SpawnFailed {
                slot: f.u32("slot")?,
                why: f.str("reason")?,
            },
            ctl::KILL => Control::Kill {
                slot: f.u32("slot")?,
            },
            ctl::EXITED => {
                let slot = f.u32("slot")?;
                let tag = f.u8("exit kind")?;
                let n = f.u32("exit code or signal")? as i32;
                let known = f.u8("progress known")?;
                let job = f.u64("job")?;
                let started = f.u32("tasks started")?;
                let cause = match tag {
                    0 => ExitCause::Code(n),
                    1 => ExitCause::Signal(n),
                    3 => ExitCause::Lost,
                    _ => ExitCause::Unknown,
                };
                Control::Exited {
                    slot,
                    cause,
                    progress: (known != 0).then_some((job, started)),
                }
            }
            ctl::PING => Control::Ping(f.u64("nonce")?),
            ctl::PONG => Control::Pong(f.u64("nonce")?),
            ctl::SHARE => Control::Share {
                token: f.u64("pool token")?,
                id: f.u64("shared value")?,
                kind: f.u8("kind")?,
                len: f.u64("length")?,
                hash: f.u64("hash")?,
            },
            ctl::SHARE_PART => Control::SharePart {
                id: f.u64("shared value")?,
                offset: f.u64("offset")?,
                data: f.take_rest(),
            },
            ctl::FORGET => Control::Forget {
                id: f.u64("shared value")?,
            },
            ctl::MEMORY => Control::Memory {
                slot: f.u32("slot")?,
                bytes: f.u64("bytes")?,
            },
            k => {
                return Err(FrameError::Malformed(format!(
                    "unknown control message kind {k}"
                )));
            }
        };
        f.end()?;
        Ok(control)
    }
}

fn expect_kind(f: &mut Fields<'_>, kind: u8) -> Result<(), FrameError> {
    match f.u8("control kind")? {
        k if k == kind => Ok(()),
        k => Err(FrameError::Malformed(format!(
            "control message kind {k} where {kind} was due"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_a_limit_holds_before_reading() {
        let mut stream = Vec::new();
        write_message(&mut stream, 3, b"frame").expect("write");
        let ping = Control::Ping(7).encode();
        write_message(&mut stream, CONTROL, &ping).expect("write");
        let mut input = stream.as_slice();
        let mut body = Vec::new();
        assert_eq!(read_message(&mut input, &mut body, 100).expect("read"), 3);
        assert_eq!(body, b"frame");
        assert_eq!(
            read_message(&mut input, &mut body, 100).expect("read"),
            CONTROL
        );
        assert_eq!(Control::parse(&body).expect("parse"), Control::Ping(7));
        assert!(matches!(
            read_message(&mut input, &mut body, 100),
            Err(FrameError::Closed)
        ));
        let mut big = Vec::new();
        write_message(&mut big, 1, &[0; 101]).expect("write");
        assert!(matches!(
            read_message(&mut big.as_slice(), &mut body, 100),
            Err(FrameError::TooLarge { .. })
        ));
        let cut = &stream[..6];
        assert!(matches!(
            read_message(&mut &cut[..], &mut body, 100),
            Err(FrameError::Malformed(_))
        ));
        // A control message may hold a frame (a greeting) besides its own limit, no more.
        let mut control = Vec::new();
        write_message(&mut control, CONTROL, &vec![0; CONTROL_MAX + 100]).expect("write");
        let read = read_message(&mut control.as_slice(), &mut body, 100).expect("read");
        assert_eq!((read, body.len()), (CONTROL, CONTROL_MAX + 100));
        assert!(matches!(
            read_message(&mut control.as_slice(), &mut body, 99),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_stray_header_costs_only_the_bytes_that_came_and_text_is_named() {
        // A header that claims a gigabyte, and then the stream ends.
        let mut stream = Vec::new();
        stream.extend_from_slice(&(1u32 << 30).to_le_bytes());
        stream.extend_from_slice(&3u32.to_le_bytes());
        stream.extend_from_slice(b"only this");
        let mut body = Vec::new();
        assert!(matches!(
            read_message(&mut stream.as_slice(), &mut body, usize::MAX),
            Err(FrameError::Malformed(_))
        ));
        assert!(body.capacity() <= 1 << 21, "{}", body.capacity());
        // Text where a header was due: refused or cut short, and named as text.
        for limit in [100, usize::MAX] {
            let text = b"Warning: the agent has ended\n";
            match read_message(&mut &text[..], &mut body, limit) {
                Err(FrameError::Malformed(why)) => assert!(why.contains("Warning:"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(host_message_limit(1 << 30) <= u32::MAX as usize);
        assert!(host_message_limit(1 << 20) >= 2 << 20);
    }

    #[test]
    fn noise_before_the_preamble_is_skipped_and_returned() {
        let mut stream = b"Welcome to node1\nlast login: never\n".to_vec();
        stream.extend_from_slice(PREAMBLE);
        stream.extend_from_slice(b"rest");
        let mut input = stream.as_slice();
        let noise = skip_to_preamble(&mut input).expect("found");
        assert!(noise.starts_with(b"Welcome"));
        assert_eq!(input, b"rest");
        assert!(skip_to_preamble(&mut &b"bash: ppool: not found\n"[..]).is_err());
        let flood = vec![b'x'; NOISE_MAX + 100];
        assert!(skip_to_preamble(&mut flood.as_slice()).is_err());
    }

    #[test]
    fn control_messages_round_trip() {
        let hello = AgentHello {
            version: MUX_VERSION,
            pool: "p".into(),
            max_frame: 1 << 20,
            host_timeout_ms: 30_000,
            disable_gpu: true,
            forward_stderr: false,
            env: vec![(b"K".to_vec(), b"V".to_vec())],
            memory_limit: 1 << 30,
            cpus: vec![0, 3],
        };
        assert_eq!(AgentHello::parse(&hello.encode()).ok(), Some(hello));
        let ready = AgentReady {
            exe: 1,
            build_id: 2,
            pid: 3,
            hostname: "h".into(),
            target: "x86_64-linux".into(),
        };
        assert_eq!(AgentReady::parse(&ready.encode()).ok(), Some(ready));
        for c in [
            Control::Spawn {
                slot: 1,
                index: 5,
                greeting: b"g",
            },
            Control::Spawned { slot: 1, pid: 9 },
            Control::Share {
                token: 9,
                id: 3,
                kind: 2,
                len: 1 << 40,
                hash: u64::MAX,
            },
            Control::SharePart {
                id: 3,
                offset: 7,
                data: b"bytes",
            },
            Control::SharePart {
                id: 3,
                offset: 0,
                data: b"",
            },
            Control::Forget { id: 3 },
            Control::Memory {
                slot: 2,
                bytes: 1 << 33,
            },
            Control::SpawnFailed { slot: 1, why: "no" },
            Control::Kill { slot: 2 },
            Control::Exited {
                slot: 2,
                cause: ExitCause::Signal(9),
                progress: Some((4, 2)),
            },
            Control::Exited {
                slot: 2,
                cause: ExitCause::Code(3),
                progress: None,
            },
            Control::Pong(8),
        ] {
            let body = c.encode();
            assert_eq!(Control::parse(&body).ok(), Some(c));
        }
        assert!(Control::parse(&[99]).is_err());
    }
}
