//! Forwarding a worker's answers to the pool: runs of outcomes as they come, each within a
//! frame, then, once the worker ends, how it ended and how far it got. A job's first outcomes
//! also tell the worker's feed that the job has left its ring.
//!
//! One thread per worker: it waits on the worker's result ring (its futex, with a look at
//! the worker's pidfd every [`FORWARD_DEATH_CHECK`] while idle), the only wait `ShmRx` offers.

use super::workers::Worker;
use super::{Host, Out, send};
use crate::mux::{self, CONTROL, Control};
use crate::protocol::ResultsHeader;
use crate::sync::lock;
use crate::transport::{Incoming, JobEnd, Peer, ShmRx};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// How often an idle forwarder looks whether its worker died. A death wakes nothing here (the
/// worker's ring is what a forwarder waits on), so this bounds how late it is reported; the
/// pool's own local workers are looked at every few milliseconds, but a host may hold hundreds
/// of idle workers, each of whose checks is a wake-up.
const FORWARD_DEATH_CHECK: Duration = Duration::from_millis(100);

/// Sends a run of `count` outcomes of `job` as it is, behind a RESULTS header: marked as
/// followed by more unless it carries the job's `end`. A run larger than a frame (outcomes
/// the ring gathered while the stream was busy) goes as several, each within a frame, so the
/// pool never reads a message larger than `mux::host_message_limit`.
fn send_run(
    out: &Out,
    slot: u32,
    (job, count, raw, end): (u64, u32, &[u8], Option<JobEnd>),
    max_frame: usize,
) -> std::io::Result<()> {
    let header = |count: u32, end: Option<JobEnd>| {
        let mut header = ResultsHeader::run(job, count);
        if let Some(end) = end {
            header.busy_nanos = end.busy_nanos;
            header.max_task_nanos = end.max_task_nanos;
            header.more = false;
        }
        header.encode()
    };
    let send_one = |count: u32, raw: &[u8], end: Option<JobEnd>| {
        let mut out = lock(out);
        mux::write_parts(&mut *out, slot, &[&header(count, end), raw])?;
        out.flush()
    };
    if ResultsHeader::LEN + raw.len() <= max_frame {
        return send_one(count, raw, end);
    }
    let Some(runs) = crate::protocol::cut_outcomes(raw, count, max_frame) else {
        return send_one(count, raw, end);
    };
    let last = runs.len() - 1;
    for (k, (count, raw)) in runs.into_iter().enumerate() {
        send_one(count, raw, if k == last { end } else { None })?;
    }
    Ok(())
}

/// Forwards the answers of the worker in `slot` until it ends, then says how it ended and
/// how far it got.
pub(super) fn forward(slot: u32, mut rx: ShmRx, worker: Arc<Worker>, host: Arc<Host>) {
    // Outcomes go on as they come, so that the pool keeps them should the host be lost.
    rx.hand_over_partials();
    rx.check_death_every(FORWARD_DEATH_CHECK);
    let spawned = std::thread::Builder::new()
        .name(format!("ppool-agent-{slot}"))
        .spawn(move || {
            let (out, max_frame) = (&host.out, host.config.max_frame);
            // The latest job with outcomes: the worker read it whole before it ran it.
            let mut running = None;
            while let Ok(incoming) = rx.recv() {
                let sent = match incoming {
                    Incoming::Outcomes {
                        job,
                        count,
                        raw,
                        end,
                    } => {
                        if running != Some(job) {
                            // The job is out of the worker's ring: room for more.
                            running = Some(job);
                            lock(&worker.feed).job_read(job);
                        }
                        send_run(out, slot, (job, count, raw, end), max_frame)
                    }
                    Incoming::Frame(body) => send(out, slot, body),
                };
                if sent.is_err() {
                    break;
                }
                rx.shrink_buffers();
            }
            // Whatever ended the channel, the worker ends now.
            worker.kill();
            let cause = worker.peer.reap();
            host.workers.remove(slot);
            let exited = Control::Exited {
                slot,
                cause,
                progress: rx.progress(),
            };
            let _ = send(out, CONTROL, &exited.encode());
        });
    if spawned.is_err() {
        eprintln!("ppool host agent: cannot start a thread; ending");
        std::process::exit(3);
    }
}
