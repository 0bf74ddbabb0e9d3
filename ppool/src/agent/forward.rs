//! Forwarding a worker's answers to the pool: runs of outcomes as they come, each within a
//! frame, then, once the worker ends, how it ended and how far it got. A job's first outcomes
//! also tell the worker's feed that the job has left its ring.
//!
//! A fixed number of threads, whatever the number of workers: each forwarder serves a group
//! of up to [`GROUP`] workers. It takes what each has published, then sleeps on all their
//! result rings at once (`futex_waitv`, one futex word per ring, rung by a worker only when
//! its forwarder said it sleeps) for at most [`FORWARD_DEATH_CHECK`], after which it looks at
//! every worker's pidfd. So an idle host costs one wake-up per group per check, not one per
//! worker, and a busy worker holds up no other: a forwarder never waits for one worker's
//! ring. Where the kernel has no `futex_waitv` (before Linux 5.16), each worker gets a thread
//! of its own that waits on its ring alone, as before.

use super::workers::Worker;
use super::{Host, Out, send};
use crate::mux::{self, CONTROL, Control};
use crate::protocol::{FrameError, ResultsHeader};
use crate::sync::lock;
use crate::transport::{Incoming, JobEnd, Peer, ShmRx};
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The most workers one forwarder serves (`futex_waitv` takes 128 words; one is the group's
/// own, to hear of new members).
const GROUP: usize = 64;
const _: () = assert!(GROUP < crate::transport::WAIT_ANY_MAX);

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

/// One worker as its forwarder serves it.
struct Member {
    slot: u32,
    rx: ShmRx,
    worker: Arc<Worker>,
    /// The latest job with outcomes: the worker read it whole before it ran it.
    running: Option<u64>,
}

/// A forwarder thread and the workers it serves.
struct Group {
    /// Workers to take in, from the starters.
    joining: Mutex<Vec<Member>>,
    /// How many it serves or is to take in.
    size: AtomicU32,
    /// Bumped (and woken) when a worker is to be taken in.
    bell: AtomicU32,
}

/// The host's forwarders.
#[derive(Default)]
pub(super) struct Forwarders {
    groups: Mutex<Vec<Arc<Group>>>,
}

impl std::fmt::Debug for Forwarders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarders")
            .field("groups", &lock(&self.groups).len())
            .finish()
    }
}

/// Whether one thread can wait on many rings here (`futex_waitv`).
fn can_wait_on_many() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        // A word whose value is not the one expected: an immediate return if supported.
        let word = AtomicU32::new(1);
        crate::transport::wait_any(&[(&word, 0)], Duration::ZERO).is_ok()
    })
}

/// Forwards the answers of the worker in `slot` until it ends, then says how it ended and
/// how far it got: in the forwarder of a group with room, started if none has.
pub(super) fn forward(slot: u32, mut rx: ShmRx, worker: Arc<Worker>, host: Arc<Host>) {
    // Outcomes go on as they come, so that the pool keeps them should the host be lost.
    rx.hand_over_partials();
    rx.check_death_every(FORWARD_DEATH_CHECK);
    let member = Member {
        slot,
        rx,
        worker,
        running: None,
    };
    if !can_wait_on_many() {
        return alone(member, host);
    }
    let forwarders = &host.forwarders;
    let mut groups = lock(&forwarders.groups);
    let roomy = groups
        .iter()
        .find(|g| (g.size.load(Ordering::Relaxed) as usize) < GROUP)
        .cloned();
    let group = match roomy {
        Some(group) => group,
        None => {
            let group = Arc::new(Group {
                joining: Mutex::new(Vec::new()),
                size: AtomicU32::new(0),
                bell: AtomicU32::new(0),
            });
            let (g, h) = (Arc::clone(&group), Arc::clone(&host));
            let spawned = std::thread::Builder::new()
                .name(format!("ppool-forward-{}", groups.len()))
                .spawn(move || serve(&g, &h));
            if spawned.is_err() {
                eprintln!("ppool host agent: cannot start a thread; ending");
                std::process::exit(3);
            }
            groups.push(Arc::clone(&group));
            group
        }
    };
    group.size.fetch_add(1, Ordering::Relaxed);
    drop(groups);
    lock(&group.joining).push(member);
    group.bell.fetch_add(1, Ordering::Release);
    let _ = rustix::thread::futex::wake(&group.bell, rustix::thread::futex::Flags::empty(), 1);
}

/// A group's forwarder: forever takes in new workers, forwards what each published, ends
/// those that died, and sleeps on all their rings.
fn serve(group: &Group, host: &Host) {
    let mut members: Vec<Member> = Vec::new();
    let mut looked = Instant::now();
    loop {
        let rung = group.bell.load(Ordering::Acquire);
        members.append(&mut lock(&group.joining));
        let due = looked.elapsed() >= FORWARD_DEATH_CHECK;
        if due {
            looked = Instant::now();
        }
        if due && let Some(limit) = host.config.memory_limit {
            report_memory(&members, host, limit);
        }
        let mut k = 0;
        while k < members.len() {
            let exited = due && members[k].rx.has_exited();
            if pass_on(&mut members[k], host, exited) {
                k += 1;
            } else {
                let member = members.swap_remove(k);
                group.size.fetch_sub(1, Ordering::Relaxed);
                finish(member, host);
            }
        }
        // Sleep on every ring, and on the group's own bell, unless one has more already.
        let mut bells: Vec<(&AtomicU32, u32)> = Vec::with_capacity(members.len() + 1);
        bells.push((&group.bell, rung));
        let mut ready = false;
        for member in &members {
            match member.rx.arm() {
                Some(bell) => bells.push(bell),
                None => {
                    ready = true;
                    break;
                }
            }
        }
        if !ready {
            let left = FORWARD_DEATH_CHECK.saturating_sub(looked.elapsed());
            if crate::transport::wait_any(&bells, left).is_err() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for member in &members {
            member.rx.disarm();
        }
    }
}

/// Tells the pool of each worker whose own memory is past `limit`: the pool's watchdog kills
/// it, and its task fails with `Error::MemoryLimit`, as for a local worker.
fn report_memory(members: &[Member], host: &Host, limit: u64) {
    for member in members {
        if let Some(bytes) = member.worker.peer.resident_bytes()
            && bytes > limit
        {
            let report = Control::Memory {
                slot: member.slot,
                bytes,
            };
            let _ = send(&host.out, CONTROL, &report.encode());
        }
    }
}

/// Forwards everything `member` has published for now; false once its worker has ended
/// (`exited`: its pidfd said so) or its answers can no longer be sent.
fn pass_on(member: &mut Member, host: &Host, exited: bool) -> bool {
    let (out, max_frame) = (&host.out, host.config.max_frame);
    loop {
        let incoming = match member.rx.try_recv(exited) {
            Ok(Some(incoming)) => incoming,
            Ok(None) => return true,
            Err(FrameError::Closed) => return false,
            Err(_) => return false,
        };
        if send_one(
            out,
            member.slot,
            incoming,
            &member.worker,
            &mut member.running,
            max_frame,
        )
        .is_err()
        {
            return false;
        }
        member.rx.shrink_buffers();
    }
}

/// Sends one thing a worker published.
fn send_one(
    out: &Out,
    slot: u32,
    incoming: Incoming<'_>,
    worker: &Worker,
    running: &mut Option<u64>,
    max_frame: usize,
) -> std::io::Result<()> {
    match incoming {
        Incoming::Outcomes {
            job,
            count,
            raw,
            end,
        } => {
            if *running != Some(job) {
                // The job is out of the worker's ring: room for more.
                *running = Some(job);
                lock(&worker.feed).job_read(job);
            }
            send_run(out, slot, (job, count, raw, end), max_frame)
        }
        Incoming::Frame(body) => send(out, slot, body),
    }
}

/// A worker whose channel ended: it ends now, and the pool hears how and how far it got.
fn finish(member: Member, host: &Host) {
    let Member {
        slot, rx, worker, ..
    } = member;
    worker.kill();
    let cause = worker.peer.reap();
    host.workers.remove(slot);
    let exited = Control::Exited {
        slot,
        cause,
        progress: rx.progress(),
    };
    let _ = send(&host.out, CONTROL, &exited.encode());
}

/// A worker with a forwarder thread of its own, waiting on its ring alone (no `futex_waitv`).
fn alone(mut member: Member, host: Arc<Host>) {
    let spawned = std::thread::Builder::new()
        .name(format!("ppool-agent-{}", member.slot))
        .spawn(move || {
            let max_frame = host.config.max_frame;
            while let Ok(incoming) = member.rx.recv() {
                let sent = send_one(
                    &host.out,
                    member.slot,
                    incoming,
                    &member.worker,
                    &mut member.running,
                    max_frame,
                );
                if sent.is_err() {
                    break;
                }
                member.rx.shrink_buffers();
            }
            // Whatever ended the channel, the worker ends now.
            finish(member, &host);
        });
    if spawned.is_err() {
        eprintln!("ppool host agent: cannot start a thread; ending");
        std::process::exit(3);
    }
}
