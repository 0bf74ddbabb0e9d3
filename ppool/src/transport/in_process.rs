//! Debug mode: the worker's side of the protocol served in this process, on the thread that
//! drives it, so tasks can be stepped through in a debugger and their panics show up in place.
//! The supervisor speaks to it exactly as to a worker process: greeting, tasks, exit.

use super::{Incoming, Launch, Link, Peer, Started, Worker};
use crate::error::{Error, ExitCause};
use crate::protocol::FrameError;
use crate::worker::exec::KeepAll;
use crate::worker::{AnswerFrames, Session, Step};
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Starts in-process workers.
#[derive(Debug)]
pub(crate) struct InProcess {
    max_frame: usize,
}

impl InProcess {
    pub(crate) fn new(max_frame: usize) -> Self {
        InProcess { max_frame }
    }
}

impl Launch for InProcess {
    fn start(&self, index: usize, greeting: &[u8]) -> Result<Worker, Error> {
        // The pool's name is kept for as long as the program runs, as a worker process's is.
        let pool: &'static str = Box::leak(pool_name(greeting).into_boxed_str());
        let mut link = InProcessLink {
            session: Session::in_process(self.max_frame, index, pool),
            answers: VecDeque::new(),
            body: Vec::new(),
        };
        link.send(&[greeting])
            .map_err(|e| Error::spawn(format!("worker {index} (in-process): {e}")))?;
        Ok(Worker {
            link: Box::new(link),
            peer: Arc::new(ThisProcess),
        })
    }
}

/// The pool's name in a greeting, for the session's `worker_pool_name`.
fn pool_name(greeting: &[u8]) -> String {
    split_frame(greeting)
        .ok()
        .and_then(|(body, _)| crate::protocol::Hello::parse(body).ok())
        .map(|hello| hello.pool.to_string())
        .unwrap_or_default()
}

/// A session served on the calling thread: frames sent are answered at once, and the answers
/// wait to be received.
#[derive(Debug)]
struct InProcessLink {
    session: Session,
    answers: VecDeque<Vec<u8>>,
    body: Vec<u8>,
}

impl Link for InProcessLink {
    fn send(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        for frame in frames {
            let mut rest: &[u8] = frame;
            while !rest.is_empty() {
                let (body, next) = split_frame(rest)?;
                rest = next;
                let step = self
                    .session
                    .handle(body, &mut KeepAll)
                    .map_err(io::Error::other)?;
                let answer = match step {
                    Step::Answer { .. } | Step::Exit { answer: true } => true,
                    Step::Quiet | Step::Exit { answer: false } => false,
                };
                if answer {
                    match self.session.answer_frames() {
                        AnswerFrames::One(frame) => self.answers.push_back(frame[4..].to_vec()),
                        AnswerFrames::Many(frames) => self
                            .answers
                            .extend(frames.into_iter().map(|f| f[4..].to_vec())),
                    }
                }
            }
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<Incoming<'_>, FrameError> {
        self.body = self.answers.pop_front().ok_or(FrameError::Closed)?;
        Incoming::from_body(&self.body)
    }

    fn wait_readable(&mut self, _spin: Duration, _timeout: Option<Duration>) -> io::Result<bool> {
        Ok(!self.answers.is_empty())
    }

    fn budget(&self) -> usize {
        usize::MAX
    }

    /// Never asked: an in-process worker does not die apart from its supervisor.
    fn started(&mut self, _job: u64, _sent_bytes: usize) -> Started {
        Started::Unknown
    }

    fn shrink_buffers(&mut self) {
        crate::protocol::shrink(&mut self.body);
        self.session.shrink_buffers();
    }
}

/// Splits the first frame off `bytes`: its body and the rest.
fn split_frame(bytes: &[u8]) -> io::Result<(&[u8], &[u8])> {
    crate::protocol::split_frame(bytes).ok_or_else(|| io::Error::other("a short frame"))
}

/// This process, standing in for the worker: it is never killed or reaped.
#[derive(Debug)]
struct ThisProcess;

impl Peer for ThisProcess {
    fn pid(&self) -> u32 {
        std::process::id()
    }

    fn kill(&self) {}

    fn wait_exit(&self, _timeout: Duration) -> bool {
        true
    }

    fn reap(&self) -> ExitCause {
        ExitCause::Unknown
    }

    fn resident_bytes(&self) -> Option<u64> {
        None
    }
}
