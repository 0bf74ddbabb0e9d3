//! Debug mode: the same channel, served in this process on the driver thread, so tasks can be
//! stepped through in a debugger and their panics show up in place.

use crate::entry::{self, EntryRecord};
use crate::error::Error;
use crate::process::Spec;
use crate::protocol::{FrameBuf, FrameError, kind};
use crate::worker;
use std::collections::VecDeque;

/// An in-process worker.
#[derive(Debug)]
pub(crate) struct Local {
    record: &'static EntryRecord,
    pending: VecDeque<Vec<u8>>,
    body: Vec<u8>,
    out: FrameBuf,
    pub(crate) tasks_done: u64,
}

impl Local {
    /// Looks the entry up and runs the initializer here.
    pub(crate) fn start(spec: &Spec, index: usize) -> Result<Self, Error> {
        worker::install_panic_hook();
        let record = entry::find(spec.entry)?;
        if let Some((name, args)) = &spec.initializer {
            let mut frame = FrameBuf::default();
            crate::protocol::write_init(&mut frame, name, args);
            if let Some(why) = worker::init_failure(&frame.finish()[4..]) {
                return Err(Error::spawn(format!("worker {index} (in-process): {why}")));
            }
        }
        Ok(Local {
            record,
            pending: VecDeque::new(),
            body: Vec::new(),
            out: FrameBuf::default(),
            tasks_done: 0,
        })
    }

    /// Runs the tasks of the frames in `frames` now (several may come in one write) and keeps
    /// their results for [`recv`](Self::recv).
    pub(crate) fn send(&mut self, mut frames: &[u8]) -> Result<(), FrameError> {
        while !frames.is_empty() {
            let header: [u8; 4] = frames
                .get(..4)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| FrameError::Malformed("short frame".into()))?;
            let len = u32::from_le_bytes(header) as usize;
            let body = frames
                .get(4..4 + len)
                .ok_or_else(|| FrameError::Malformed("truncated frame".into()))?;
            if body.first() != Some(&kind::TASKS) {
                return Err(FrameError::Malformed("debug mode runs only tasks".into()));
            }
            worker::run_tasks(self.record, body, &mut self.out)?;
            self.pending.push_back(self.out.finish()[4..].to_vec());
            frames = &frames[4 + len..];
        }
        Ok(())
    }

    pub(crate) fn recv(&mut self) -> Result<(), FrameError> {
        self.body = self.pending.pop_front().ok_or(FrameError::Closed)?;
        Ok(())
    }

    pub(crate) fn body(&self) -> &[u8] {
        &self.body
    }
}
