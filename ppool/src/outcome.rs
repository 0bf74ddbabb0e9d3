//! The typed side of a job's answer: each task's outcome decoded into the entry's
//! `Result<Output, Error>`.

use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::protocol::{self, Outcome};
use crate::supervisor::Delivery;

/// Calls `each(k, result)` for the `k`-th task of a job of `count` tasks.
pub(crate) fn for_each_result<F: Entry>(
    delivery: Delivery<'_>,
    count: u32,
    mut each: impl FnMut(usize, Result<F::Output>),
) {
    match delivery {
        Ok((results, worker)) => {
            for (k, outcome) in results.outcomes().enumerate() {
                each(k, convert::<F>(outcome, worker));
            }
        }
        Err(error) => {
            for k in 0..count as usize {
                each(k, Err(error.clone()));
            }
        }
    }
}

/// The result of a job of one task.
pub(crate) fn first_result<F: Entry>(delivery: Delivery<'_>) -> Result<F::Output> {
    let mut out = None;
    for_each_result::<F>(delivery, 1, |_, r| {
        if out.is_none() {
            out = Some(r);
        }
    });
    out.unwrap_or(Err(Error::Protocol {
        worker: 0,
        message: "a job came back without results".into(),
    }))
}

fn convert<F: Entry>(outcome: Outcome<'_>, worker: usize) -> Result<F::Output> {
    match outcome {
        Outcome::Ok(bytes) => {
            crate::entry::decode::<F::Output>(bytes).map_err(|message| Error::Codec {
                entry: F::NAME.to_string(),
                action: "decode the result",
                message,
            })
        }
        Outcome::Panicked {
            message,
            location,
            backtrace,
        } => {
            tracing::debug!(entry = F::NAME, worker, message, location, "task panicked");
            Err(panicked::<F>(worker, message, location, backtrace))
        }
        Outcome::Codec { action, message } => Err(Error::Codec {
            entry: F::NAME.to_string(),
            action: if action.starts_with("decode") {
                "decode the arguments"
            } else {
                "encode the result"
            },
            message: message.to_string(),
        }),
    }
}

/// The result of a worker-exit hook, from an EXITED body.
pub(crate) fn exit_result<E: Entry>(body: &[u8]) -> Result<E::Output> {
    match protocol::parse_exited(body) {
        Ok(outcome) => convert::<E>(outcome, 0),
        Err(e) => Err(Error::Protocol {
            worker: 0,
            message: e.to_string(),
        }),
    }
}

fn panicked<F: Entry>(worker: usize, message: &str, location: &str, backtrace: &str) -> Error {
    Error::Panicked {
        entry: F::NAME.to_string(),
        worker,
        message: message.to_string(),
        location: (!location.is_empty()).then(|| location.to_string()),
        backtrace: (!backtrace.is_empty()).then(|| backtrace.to_string()),
    }
}
