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
    index: usize,
    /// The pool's name, kept for as long as the program runs, as a worker's is.
    pool: &'static str,
    max_frame: usize,
    on_exit: Option<(&'static EntryRecord, Vec<u8>)>,
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
        let pool: &'static str = Box::leak(spec.pool.clone().into_boxed_str());
        if let Some((name, args)) = &spec.initializer {
            let mut frame = FrameBuf::default();
            crate::protocol::write_init(&mut frame, name, args);
            let failure =
                worker::as_in_process(index, pool, || worker::init_failure(&frame.finish()[4..]));
            if let Some(why) = failure {
                return Err(Error::spawn(format!("worker {index} (in-process): {why}")));
            }
        }
        let on_exit = match &spec.on_exit {
            Some((name, args)) => Some((entry::find(name)?, args.clone())),
            None => None,
        };
        Ok(Local {
            record,
            index,
            pool,
            max_frame: spec.max_frame,
            on_exit,
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
            let (record, out, max) = (self.record, &mut self.out, self.max_frame);
            worker::as_in_process(self.index, self.pool, || {
                worker::run_tasks(record, body, out, max)
            })?;
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

    /// Runs the worker-exit hook, if there is one, as a worker does when it retires; the
    /// EXITED body.
    pub(crate) fn retire(self) -> Option<Vec<u8>> {
        let (record, args) = self.on_exit.as_ref()?;
        let mut out = FrameBuf::default();
        crate::protocol::start_exited(&mut out);
        worker::as_in_process(self.index, self.pool, || {
            worker::run_one(record, args, &mut out, self.max_frame)
        });
        Some(out.finish()[4..].to_vec())
    }
}
