//! The writing half of a host's stream. Any thread posts a message and returns at once; no
//! thread ever waits behind another's bytes, and none holds a lock across a write that can
//! block.
//!
//! The stream is non-blocking. A message posted while nothing is queued or being written is
//! written at once by the thread that posts it, as far as the pipe takes it (a round trip
//! costs no thread hop); the rest, and every message posted meanwhile, is queued for the
//! host's writer thread, which waits for room with `poll` and looks at the `dead` flag between
//! waits. So a host that stops reading stalls only its writer thread, and only until the host
//! is declared lost: then the queue is dropped and the writer ends.
//!
//! Invariants:
//! 1. At most one thread writes at a time: the one that set `writing` (a poster or the writer
//!    thread). Every other message goes to the back of the queue, and a poster's unwritten
//!    rest goes to its front, so messages leave in the order they were posted and are never
//!    interleaved.
//! 2. Only the writer thread closes the stream, and only once no poster writes (`writing` is
//!    false) and the queue is empty (closing) or dropped (dead).

use crate::mux;
use crate::sync::{lock, wait};
use crate::transport::sigpipe::{block_sigpipe_on_this_thread, without_sigpipe};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How often a writer waiting for room looks whether the host was declared lost.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// The messages on their way to a host.
#[derive(Debug)]
pub(super) struct Outbox {
    state: Mutex<Pending>,
    /// Wakes the writer thread: a message queued, the stream free again, closing, dead.
    wake: Condvar,
    /// The stream, for posters; `None` once the writer thread closed it.
    stream: Mutex<Option<File>>,
    /// Mirrors `Pending::dead`, for a writer waiting for room.
    dead: AtomicBool,
    host: String,
    /// Every this many milliseconds of an idle stream, the writer thread sends a ping of its
    /// own (0: never), so that the agent hears the pool even while the host's reader is
    /// busy (a slow delivery) and cannot ping.
    keep_alive_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    /// Messages (header and body) still to write; the first may be the rest of one that a
    /// poster began.
    queue: VecDeque<Queued>,
    /// A thread is writing (invariant 1).
    writing: bool,
    /// No more messages: the writer ends once the queue is written.
    closing: bool,
    /// The host is lost: the queue is dropped and the writer ends now.
    dead: bool,
}

/// Bytes shared with whoever else holds them (a shared value's mapping): a message may end
/// with a range of them, written from where they lie, never copied into the queue.
pub(crate) type SharedData = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A message, or the rest of one, waiting in the queue: bytes of its own, then perhaps a
/// range of shared bytes.
#[derive(Clone)]
struct Queued {
    head: Vec<u8>,
    tail: Option<(SharedData, std::ops::Range<usize>)>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("head", &self.head.len())
            .field("tail", &self.tail.as_ref().map(|(_, r)| r.len()))
            .finish()
    }
}

impl Queued {
    /// Its bytes, in order, as slices.
    fn parts(&self) -> [&[u8]; 2] {
        let tail = match &self.tail {
            Some((data, range)) => (*data).as_ref().as_ref().get(range.clone()).unwrap_or(&[]),
            None => &[],
        };
        [&self.head, tail]
    }
}

/// What is left of a message of `parts` once its first `n` bytes were written: the owned
/// parts copied, the shared tail only referred to.
fn rest_of(
    parts: [&[u8]; 3],
    tail: Option<&(SharedData, std::ops::Range<usize>)>,
    n: usize,
) -> Queued {
    let owned = parts[0].len() + parts[1].len();
    let mut head = Vec::new();
    if n < owned {
        let mut skip = n;
        for part in &parts[..2] {
            let from = skip.min(part.len());
            head.extend_from_slice(&part[from..]);
            skip -= from;
        }
    }
    let tail = tail.map(|(data, range)| {
        let done = n.saturating_sub(owned).min(range.len());
        (Arc::clone(data), range.start + done..range.end)
    });
    Queued { head, tail }
}

/// A PING message of the writer's own, ready to write.
fn ping(nonce: u64) -> Queued {
    let body = mux::Control::Ping(nonce | 1 << 63).encode();
    let mut head = mux::header(mux::CONTROL, body.len())
        .map(|h| h.to_vec())
        .unwrap_or_default();
    head.extend_from_slice(&body);
    Queued { head, tail: None }
}

/// Waits on `cv` at most `ms` milliseconds; whether the time ran out.
fn wait_timeout_result<'a, T>(
    cv: &Condvar,
    guard: std::sync::MutexGuard<'a, T>,
    ms: u64,
) -> (std::sync::MutexGuard<'a, T>, bool) {
    match cv.wait_timeout(guard, Duration::from_millis(ms)) {
        Ok((guard, result)) => (guard, result.timed_out()),
        Err(poisoned) => {
            let (guard, result) = poisoned.into_inner();
            (guard, result.timed_out())
        }
    }
}

/// Why a post was refused.
fn gone(host: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        format!("host {host} is lost or closed"),
    )
}

impl Outbox {
    /// An outbox over `stream` (the launcher's stdin), and the writer thread's body.
    pub(super) fn new(
        stream: OwnedFd,
        host: &str,
    ) -> io::Result<(Arc<Outbox>, impl FnOnce() + Send + 'static)> {
        rustix::io::ioctl_fionbio(&stream, true)?;
        let own = File::from(stream);
        let theirs = own.try_clone()?;
        let outbox = Arc::new(Outbox {
            state: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            stream: Mutex::new(Some(theirs)),
            dead: AtomicBool::new(false),
            host: host.to_string(),
            keep_alive_ms: AtomicU64::new(0),
        });
        let writer = Arc::clone(&outbox);
        Ok((outbox, move || writer.run(own)))
    }

    /// Posts one message; it is written now or by the writer thread, in order. An error
    /// means it will never be written: the host is lost or closed.
    pub(super) fn post(&self, channel: u32, body: &[u8]) -> io::Result<()> {
        self.post_parts(channel, body, None)
    }

    /// Posts one message whose body is `prefix` and then `data[range]`: the shared bytes are
    /// written from where they lie, however long they wait in the queue.
    pub(super) fn post_shared(
        &self,
        channel: u32,
        prefix: &[u8],
        data: SharedData,
        range: std::ops::Range<usize>,
    ) -> io::Result<()> {
        if (*data).as_ref().get(range.clone()).is_none() {
            return Err(io::Error::other("a range past the end of the shared bytes"));
        }
        self.post_parts(channel, prefix, Some((data, range)))
    }

    fn post_parts(
        &self,
        channel: u32,
        body: &[u8],
        tail: Option<(SharedData, std::ops::Range<usize>)>,
    ) -> io::Result<()> {
        let tail_len = tail.as_ref().map_or(0, |(_, range)| range.len());
        let header = mux::header(channel, body.len() + tail_len)?;
        let mut st = lock(&self.state);
        if st.dead || st.closing {
            return Err(gone(&self.host));
        }
        if st.writing || !st.queue.is_empty() {
            st.queue.push_back(Queued {
                head: [&header[..], body].concat(),
                tail,
            });
            drop(st);
            self.wake.notify_one();
            return Ok(());
        }
        st.writing = true;
        drop(st);
        let shared: &[u8] = match &tail {
            Some((data, range)) => (**data).as_ref().get(range.clone()).unwrap_or(&[]),
            None => &[],
        };
        let parts = [&header[..], body, shared];
        let total = header.len() + body.len() + shared.len();
        let written = self.write_now(parts);
        let mut st = lock(&self.state);
        st.writing = false;
        match written {
            Ok(n) if n == total => {}
            Ok(n) => {
                // Invariant 1: nobody wrote meanwhile, so the rest goes first.
                st.queue.push_front(rest_of(parts, tail.as_ref(), n));
            }
            Err(e) => {
                st.dead = true;
                st.queue.clear();
                self.dead.store(true, Ordering::Release);
                drop(st);
                self.wake.notify_one();
                return Err(e);
            }
        }
        let more = !st.queue.is_empty();
        drop(st);
        if more {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Posts a message only if the stream is idle (nothing queued, nobody writing): for
    /// heartbeats, which bytes already on their way make needless. Whether it was posted.
    pub(super) fn post_if_idle(&self, channel: u32, body: &[u8]) -> bool {
        {
            let st = lock(&self.state);
            if st.writing || !st.queue.is_empty() || st.dead || st.closing {
                return false;
            }
        }
        self.post(channel, body).is_ok()
    }

    /// Writes as much of `parts`, one after another, as the stream takes without blocking,
    /// on the caller's thread; how much it wrote.
    fn write_now(&self, parts: [&[u8]; 3]) -> io::Result<usize> {
        let stream = lock(&self.stream);
        let Some(mut file) = stream.as_ref() else {
            return Err(gone(&self.host));
        };
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut done = 0;
        while done < total {
            let mut skip = done;
            let mut slices = [IoSlice::new(&[]), IoSlice::new(&[]), IoSlice::new(&[])];
            let mut k = 0;
            for part in parts {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                slices[k] = IoSlice::new(&part[skip..]);
                skip = 0;
                k += 1;
            }
            match without_sigpipe(|| file.write_vectored(&slices[..k])) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// From now on, the writer thread pings the agent after `every` of an idle stream.
    pub(super) fn keep_alive(&self, every: Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        self.keep_alive_ms.store(ms, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// No more messages: the writer writes what is queued, then closes the stream (the agent
    /// reads its end).
    pub(super) fn close(&self) {
        lock(&self.state).closing = true;
        self.wake.notify_one();
    }

    /// The host is lost: what is queued is dropped and the writer closes the stream now.
    pub(super) fn kill(&self) {
        {
            let mut st = lock(&self.state);
            st.dead = true;
            st.queue.clear();
        }
        self.dead.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The writer thread: writes queued messages until the outbox closes or dies, then
    /// closes the stream (invariant 2).
    fn run(&self, mut own: File) {
        block_sigpipe_on_this_thread();
        let mut pings = 0u64;
        loop {
            let mut st = lock(&self.state);
            let message = loop {
                if st.dead {
                    break None;
                }
                if !st.writing {
                    if let Some(message) = st.queue.pop_front() {
                        break Some(message);
                    }
                    if st.closing {
                        break None;
                    }
                }
                let every = self.keep_alive_ms.load(Ordering::Relaxed);
                if every == 0 {
                    st = wait(&self.wake, st);
                    continue;
                }
                let (next, timed_out) = wait_timeout_result(&self.wake, st, every);
                st = next;
                if timed_out && !st.writing && st.queue.is_empty() && !st.closing && !st.dead {
                    pings += 1;
                    break Some(ping(pings));
                }
            };
            let Some(queued) = message else {
                break;
            };
            st.writing = true;
            drop(st);
            let [head, tail] = queued.parts();
            let written = self
                .write_waiting(&mut own, head)
                .and_then(|()| self.write_waiting(&mut own, tail));
            let mut st = lock(&self.state);
            st.writing = false;
            if written.is_err() {
                st.dead = true;
                st.queue.clear();
                self.dead.store(true, Ordering::Release);
            }
        }
        // Both descriptors of the stream go, so that the agent reads its end.
        lock(&self.stream).take();
        drop(own);
    }

    /// Writes `bytes`, waiting for room as long as the host is not declared lost.
    fn write_waiting(&self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        let mut at = 0;
        while at < bytes.len() {
            if self.dead.load(Ordering::Acquire) {
                return Err(gone(&self.host));
            }
            match file.write(&bytes[at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [rustix::event::PollFd::new(
                        &*file,
                        rustix::event::PollFlags::OUT,
                    )];
                    let timeout = rustix::event::Timespec::try_from(LOOK_EVERY).ok();
                    match rustix::event::poll(&mut fds, timeout.as_ref()) {
                        Ok(_) | Err(rustix::io::Errno::INTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn outbox() -> (
        Arc<Outbox>,
        std::io::PipeReader,
        std::thread::JoinHandle<()>,
    ) {
        let (reader, writer) = std::io::pipe().expect("pipe");
        let (outbox, run) = Outbox::new(OwnedFd::from(writer), "test").expect("outbox");
        let thread = std::thread::spawn(run);
        (outbox, reader, thread)
    }

    /// Reads every message until the stream ends: `(channel, body)`.
    fn read_all(mut reader: std::io::PipeReader) -> Vec<(u32, Vec<u8>)> {
        let mut got = Vec::new();
        let mut body = Vec::new();
        loop {
            match mux::read_message(&mut reader, &mut body, usize::MAX) {
                Ok(channel) => got.push((channel, std::mem::take(&mut body))),
                Err(_) => return got,
            }
        }
    }

    #[test]
    fn messages_from_many_threads_arrive_whole_and_in_each_posters_order() {
        let (outbox, reader, thread) = outbox();
        let reading = std::thread::spawn(move || read_all(reader));
        let posters: Vec<_> = (0..4u32)
            .map(|t| {
                let outbox = Arc::clone(&outbox);
                std::thread::spawn(move || {
                    for i in 0..200u32 {
                        // Some larger than a pipe holds, so that writes are cut.
                        let len = if i % 50 == 0 { 200_000 } else { 10 };
                        let body = vec![(i % 251) as u8; len];
                        outbox.post(t, &body).expect("post");
                    }
                })
            })
            .collect();
        for p in posters {
            p.join().expect("poster");
        }
        outbox.close();
        thread.join().expect("writer");
        let got = reading.join().expect("reader");
        assert_eq!(got.len(), 800);
        for t in 0..4u32 {
            let mine: Vec<&Vec<u8>> = got
                .iter()
                .filter(|(c, _)| *c == t)
                .map(|(_, b)| b)
                .collect();
            assert_eq!(mine.len(), 200);
            for (i, body) in mine.iter().enumerate() {
                let len = if i % 50 == 0 { 200_000 } else { 10 };
                assert_eq!(body.len(), len);
                assert!(body.iter().all(|&b| b == (i % 251) as u8));
            }
        }
    }

    #[test]
    fn shared_tails_arrive_whole_and_in_order_however_the_writes_are_cut() {
        let (outbox, reader, thread) = outbox();
        let reading = std::thread::spawn(move || read_all(reader));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let shared: SharedData = Arc::new(data.clone());
        let posters: Vec<_> = (0..3u32)
            .map(|t| {
                let (outbox, shared) = (Arc::clone(&outbox), Arc::clone(&shared));
                std::thread::spawn(move || {
                    for i in 0..40usize {
                        let start = i * 50_000;
                        // Parts larger than a pipe holds, so that writes are cut.
                        let range = start..start + 300_000 + i;
                        let prefix = [t as u8, i as u8];
                        outbox
                            .post_shared(t, &prefix, Arc::clone(&shared), range)
                            .expect("post");
                        outbox.post(t, &[i as u8; 3]).expect("post");
                    }
                })
            })
            .collect();
        for p in posters {
            p.join().expect("poster");
        }
        assert!(
            outbox
                .post_shared(9, b"", Arc::clone(&shared), 0..data.len() + 1)
                .is_err(),
            "a range past the end is refused"
        );
        outbox.close();
        thread.join().expect("writer");
        let got = reading.join().expect("reader");
        assert_eq!(got.len(), 240);
        for t in 0..3u32 {
            let mine: Vec<&Vec<u8>> = got
                .iter()
                .filter(|(c, _)| *c == t)
                .map(|(_, b)| b)
                .collect();
            for i in 0..40usize {
                let (with_tail, plain) = (mine[2 * i], mine[2 * i + 1]);
                assert_eq!(&with_tail[..2], &[t as u8, i as u8]);
                let start = i * 50_000;
                assert!(with_tail[2..] == data[start..start + 300_000 + i]);
                assert_eq!(plain, &vec![i as u8; 3]);
            }
        }
    }

    #[test]
    fn a_reader_that_stops_stalls_only_the_writer_and_a_kill_ends_it() {
        let (outbox, mut reader, thread) = outbox();
        // Nobody reads: the first post fills the pipe and the rest is queued.
        outbox.post(1, &vec![7u8; 4 << 20]).expect("post");
        let started = std::time::Instant::now();
        for _ in 0..10 {
            outbox.post(2, b"small").expect("a post never waits");
        }
        assert!(
            !outbox.post_if_idle(mux::CONTROL, b"ping"),
            "a ping waits for an idle stream"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        outbox.kill();
        thread.join().expect("the writer ends on kill");
        assert!(outbox.post(3, b"late").is_err());
        // The stream is closed: the reader reaches its end after what was written.
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).expect("read");
        assert!(rest.len() < (4 << 20) + 8 + 10 * 13);
    }
}
