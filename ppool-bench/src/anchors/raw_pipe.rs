//! Anchor: two processes talking over plain anonymous pipes, no framing or serialization.
//!
//! The parent re-executes the bench binary as a child whose stdin and stdout are pipes
//! made with `std::io::pipe()`. The echo child writes back every byte it reads; the sink
//! child reads length-prefixed payloads and acknowledges each with 8 bytes.

use std::fs::File;
use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::BenchResult;
use crate::children::{self, RAW_ECHO, RAW_SINK};

/// Messages per `write` in the pipelined stream (64 KiB writes).
const STREAM_CHUNK_MSGS: u64 = 8 * 1024;

/// A child process of this binary connected by two pipes.
#[derive(Debug)]
pub(crate) struct RawPipeChild {
    child: Child,
    to_child: Option<PipeWriter>,
    from_child: PipeReader,
}

impl RawPipeChild {
    /// Starts the echo child (for ping-pong and pipelined streams).
    pub(crate) fn echo() -> BenchResult<RawPipeChild> {
        RawPipeChild::spawn(RAW_ECHO)
    }

    /// Starts the sink child (for one-direction bandwidth).
    pub(crate) fn sink() -> BenchResult<RawPipeChild> {
        RawPipeChild::spawn(RAW_SINK)
    }

    fn spawn(mode: &str) -> BenchResult<RawPipeChild> {
        let (child_stdin, to_child) = io::pipe()?;
        let (from_child, child_stdout) = io::pipe()?;
        let mut cmd = children::self_command(mode)?;
        cmd.stdin(Stdio::from(child_stdin))
            .stdout(Stdio::from(child_stdout));
        let child = cmd.spawn()?;
        // Dropping the command closes our copies of the child's ends, so EOF works.
        drop(cmd);
        Ok(RawPipeChild {
            child,
            to_child: Some(to_child),
            from_child,
        })
    }

    fn writer(&mut self) -> BenchResult<&mut PipeWriter> {
        Ok(self
            .to_child
            .as_mut()
            .ok_or("pipe to child already closed")?)
    }

    /// `n` strict round trips of one 8-byte message; returns the total time.
    pub(crate) fn ping_pong(&mut self, n: u64) -> BenchResult<Duration> {
        let mut reply = [0u8; 8];
        let start = Instant::now();
        for i in 0..n {
            self.writer()?.write_all(&i.to_le_bytes())?;
            self.from_child.read_exact(&mut reply)?;
            if u64::from_le_bytes(reply) != i {
                return Err(format!("raw pipe echo returned a wrong value at {i}").into());
            }
        }
        Ok(start.elapsed())
    }

    /// The median of `n` strict round trips of one 8-byte message, in microseconds.
    pub(crate) fn ping_pong_median(&mut self, n: u64) -> BenchResult<f64> {
        let mut reply = [0u8; 8];
        let mut samples = Vec::with_capacity(n as usize);
        for i in 0..n {
            let start = Instant::now();
            self.writer()?.write_all(&i.to_le_bytes())?;
            self.from_child.read_exact(&mut reply)?;
            samples.push(start.elapsed());
            if u64::from_le_bytes(reply) != i {
                return Err(format!("raw pipe echo returned a wrong value at {i}").into());
            }
        }
        Ok(crate::stats::median_micros(&mut samples))
    }

    /// Streams `n` 8-byte messages through the echo child while reading the echoes
    /// concurrently; returns the time until the last echo arrived.
    pub(crate) fn stream(&mut self, n: u64) -> BenchResult<Duration> {
        let RawPipeChild {
            to_child,
            from_child,
            ..
        } = self;
        let writer = to_child.as_mut().ok_or("pipe to child already closed")?;
        let start = Instant::now();
        let (sent, received) = thread::scope(|s| {
            let sender = s.spawn(move || write_messages(writer, n));
            let received = read_messages(from_child, n);
            (sender.join(), received)
        });
        let elapsed = start.elapsed();
        sent.map_err(|_| "raw pipe writer thread panicked")??;
        if received? != (0..n).sum::<u64>() {
            return Err("raw pipe stream returned wrong data".into());
        }
        Ok(elapsed)
    }

    /// Sends `payload` one way to the sink child and waits for its acknowledgement.
    pub(crate) fn send_one_way(&mut self, payload: &[u8]) -> BenchResult<Duration> {
        let len = u64::try_from(payload.len())?;
        let mut ack = [0u8; 8];
        let start = Instant::now();
        let writer = self.writer()?;
        writer.write_all(&len.to_le_bytes())?;
        writer.write_all(payload)?;
        self.from_child.read_exact(&mut ack)?;
        let elapsed = start.elapsed();
        if u64::from_le_bytes(ack) != len {
            return Err("raw pipe sink acknowledged a wrong length".into());
        }
        Ok(elapsed)
    }
}

impl Drop for RawPipeChild {
    fn drop(&mut self) {
        // Closing the pipe makes the child see EOF and exit.
        self.to_child.take();
        if self.child.wait().is_err() {
            self.child.kill().ok();
        }
    }
}

fn write_messages(writer: &mut PipeWriter, n: u64) -> io::Result<()> {
    let mut buf = Vec::with_capacity(8 * STREAM_CHUNK_MSGS as usize);
    let mut next = 0;
    while next < n {
        let end = (next + STREAM_CHUNK_MSGS).min(n);
        buf.clear();
        for i in next..end {
            buf.extend_from_slice(&i.to_le_bytes());
        }
        writer.write_all(&buf)?;
        next = end;
    }
    Ok(())
}

/// Reads `n` echoed messages; returns their sum as a cheap integrity check.
fn read_messages(reader: &mut PipeReader, n: u64) -> BenchResult<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending = Vec::with_capacity(8);
    let mut remaining = n;
    let mut sum = 0u64;
    while remaining > 0 {
        let got = reader.read(&mut buf)?;
        if got == 0 {
            return Err("raw pipe echo child closed early".into());
        }
        let mut bytes = &buf[..got];
        // Complete a message split across two reads.
        if !pending.is_empty() {
            let take = (8 - pending.len()).min(bytes.len());
            pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if pending.len() == 8 {
                sum = sum.wrapping_add(le_u64(&pending));
                remaining -= 1;
                pending.clear();
            }
        }
        let mut chunks = bytes.chunks_exact(8);
        for msg in &mut chunks {
            sum = sum.wrapping_add(le_u64(msg));
            remaining = remaining.saturating_sub(1);
        }
        pending.extend_from_slice(chunks.remainder());
    }
    Ok(sum)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

/// Our stdin and stdout as unbuffered files (std's stdout is line buffered).
fn raw_stdio() -> io::Result<(File, File)> {
    let input = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let output = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    Ok((input, output))
}

/// Child mode: write back every byte read, until EOF.
pub(crate) fn echo_child() -> BenchResult<()> {
    let (mut input, mut output) = raw_stdio()?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        output.write_all(&buf[..n])?;
    }
}

/// Child mode: read `len` + payload, discard it, acknowledge with `len`; until EOF.
pub(crate) fn sink_child() -> BenchResult<()> {
    let (mut input, mut output) = raw_stdio()?;
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let mut header = [0u8; 8];
        match input.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let len = u64::from_le_bytes(header);
        let mut left = len;
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64))?;
            let got = input.read(&mut buf[..want])?;
            if got == 0 {
                return Err("raw pipe sink: EOF inside a payload".into());
            }
            left -= got as u64;
        }
        output.write_all(&len.to_le_bytes())?;
    }
}
