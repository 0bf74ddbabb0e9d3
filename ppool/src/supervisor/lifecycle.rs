//! A worker's life seen from the supervisor, the same for every transport: greet it and wait
//! for it to be ready, register it with the watchdog, retire it gracefully, replace it.

use super::events;
use super::state::{Conn, Inner, Phase, Slot, WorkerSpec};
use crate::entry;
use crate::error::Error;
use crate::protocol::{self, FrameBuf, Hello, Ready};
use crate::sync::lock;
use crate::transport::{Link, Peer, Worker};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a started worker may take to answer the greeting.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many more times a replacement that died while it started is tried, and the first
/// pause before that (doubled each time).
const START_RETRIES: u32 = 3;
const START_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long a retired worker may take to exit before it is killed.
const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// The frames that greet worker `index`: HELLO, then INIT and ON_EXIT when there are hooks.
pub(super) fn greeting(spec: &WorkerSpec, index: usize) -> Vec<u8> {
    let mut frame = FrameBuf::default();
    Hello {
        build_id: entry::build_id(),
        token: spec.token,
        worker: index as u32,
        pool: &spec.pool,
        entry: spec.entry,
        trace: spec.trace,
    }
    .write(&mut frame);
    let mut greeting = frame.take();
    if let Some((name, args)) = &spec.initializer {
        protocol::write_init(&mut frame, name, args);
        greeting.extend_from_slice(frame.finish());
    }
    if let Some((name, args)) = &spec.on_exit {
        protocol::write_on_exit(&mut frame, name, args);
        greeting.extend_from_slice(frame.finish());
    }
    greeting
}

/// Lets the watchdog and `shutdown` see slot `i`'s process.
pub(super) fn register(shared: &Inner, i: usize, conn: &Conn) {
    shared.watch.register(i, Arc::clone(&conn.peer));
}

/// Starts every worker at once, then waits for each to be ready. Under `min_workers`, a
/// worker that did not start is `None`, and its host's failure is kept for `insights`, as
/// long as enough did; otherwise the first failure is the error.
pub(super) fn start_all(shared: &Inner) -> Result<Vec<Option<Conn>>, Error> {
    let n = shared.settings.n_jobs;
    let min = shared.settings.min_workers;
    let mut conns = Vec::with_capacity(n);
    let mut failed: Vec<(String, Error)> = Vec::new();
    for (i, conn) in start_range(shared, 0, n).into_iter().enumerate() {
        match conn {
            Ok(conn) => conns.push(Some(conn)),
            Err(e) if min.is_none() => return Err(e),
            Err(e) => {
                let host = shared.launch.host(i);
                if !failed.iter().any(|(h, _)| *h == host) {
                    failed.push((host, e));
                }
                conns.push(None);
            }
        }
    }
    let running = conns.iter().flatten().count();
    if let Some(min) = min
        && running < min
    {
        let why: Vec<String> = failed.iter().map(|(_, e)| e.to_string()).collect();
        return Err(Error::spawn(format!(
            "{running} of {n} workers started, fewer than min_workers ({min}): {}",
            why.join("; ")
        )));
    }
    for (host, error) in failed {
        let reason = error.to_string();
        shared.host_event_of(
            host.clone(),
            crate::insights::HostEvent::NotStarted { reason },
        );
        tracing::warn!(pool = %shared.spec.pool, host = %host, error = &error as &dyn std::error::Error, "a host's workers did not start; the pool goes on without them (min_workers)");
        lock(&shared.host_failures).push((host, error.to_string()));
    }
    Ok(conns)
}

/// Starts workers `first..first + n` at once (every host at once: a remote pool's start
/// costs its slowest host, not their sum), then waits for each to be ready.
pub(super) fn start_range(shared: &Inner, first: usize, n: usize) -> Vec<Result<Conn, Error>> {
    let greetings: Vec<Vec<u8>> = (first..first + n)
        .map(|i| greeting(&shared.spec, i))
        .collect();
    let started = shared.launch.start_many(first, &greetings);
    started
        .into_iter()
        .zip(first..)
        .map(|(worker, i)| {
            let mut conn = worker.and_then(|w| ready(&shared.spec, i, w).map_err(|f| f.error))?;
            events::install(shared, i, &mut conn);
            tracing::debug!(pool = %shared.spec.pool, worker = i, pid = conn.peer.pid(), "worker started");
            Ok(conn)
        })
        .collect()
}

/// Starts the workers of `slots` (in order), each contiguous run at once.
pub(super) fn start_slots(shared: &Inner, slots: &[usize]) -> Vec<(usize, Result<Conn, Error>)> {
    let mut started = Vec::with_capacity(slots.len());
    let mut k = 0;
    while k < slots.len() {
        let first = slots[k];
        let mut n = 1;
        while k + n < slots.len() && slots[k + n] == first + n {
            n += 1;
        }
        started.extend((first..).zip(start_range(shared, first, n)));
        k += n;
    }
    started
}

/// Starts a replacement for slot `i`, or marks it dead. A replacement that died while it
/// started (killed from outside, say) is tried again, a few times with a pause; one that
/// refused, timed out, or whose initializer failed is not, so nothing loops restarting.
pub(super) fn replace(shared: &Inner, i: usize) -> Slot {
    let mut tries = 0;
    shared.stats.restarted(i);
    let started = loop {
        if shared.state().phase == Phase::Closed {
            shared.watch.unregister(i);
            return Slot::Retired;
        }
        let started = shared
            .launch
            .start(i, &greeting(&shared.spec, i))
            .map_err(|error| StartFailure { error, retry: true })
            .and_then(|worker| {
                // Registered while it starts, which lasts as long as its initializer:
                // `shutdown` kills it (it closes the pool, then kills what is registered).
                shared.watch.register(i, Arc::clone(&worker.peer));
                if shared.state().phase == Phase::Closed {
                    worker.peer.kill();
                }
                ready(&shared.spec, i, worker)
            });
        match started {
            Err(f) if f.retry && tries < START_RETRIES => {
                tracing::warn!(pool = %shared.spec.pool, worker = i, error = &f.error as &dyn std::error::Error, "a replacement worker died while it started; trying again");
                std::thread::sleep(START_RETRY_PAUSE.saturating_mul(1 << tries));
                tries += 1;
            }
            other => break other.map_err(|f| f.error),
        }
    };
    match started {
        Ok(mut conn) => {
            events::install(shared, i, &mut conn);
            tracing::info!(pool = %shared.spec.pool, worker = i, pid = conn.peer.pid(), "worker replaced");
            register(shared, i, &conn);
            Slot::Idle(Box::new(conn))
        }
        Err(e) => {
            shared.host_event(
                i,
                crate::insights::HostEvent::Down {
                    reason: e.to_string(),
                },
            );
            shared.watch.unregister(i);
            tracing::error!(pool = %shared.spec.pool, worker = i, error = &e as &dyn std::error::Error, "cannot replace worker");
            shared.set_last_error(e);
            Slot::Dead
        }
    }
}

/// Why a worker did not start, and whether starting another may succeed.
#[derive(Debug)]
struct StartFailure {
    error: Error,
    /// It died before it could answer (a kill from outside, a crash): not a verdict on the
    /// worker's set-up.
    retry: bool,
}

/// Waits for worker `i`'s answer to the greeting, and for its initializer.
fn ready(spec: &WorkerSpec, i: usize, worker: Worker) -> Result<Conn, StartFailure> {
    let Worker { mut link, peer } = worker;
    // How the worker ended is told only when it ended by itself (it died before answering):
    // after a refusal, a failed initializer or a timeout it is this kill's SIGKILL.
    let fail = |why: &str, retry: bool| -> StartFailure {
        let ended_by_itself = peer.wait_exit(Duration::ZERO);
        peer.kill();
        let cause = peer.reap();
        let error = if ended_by_itself && cause != crate::error::ExitCause::Unknown {
            Error::spawn(format!("worker {i} (pid {}): {why} ({cause})", peer.pid()))
        } else {
            Error::spawn(format!("worker {i} (pid {}): {why}", peer.pid()))
        };
        StartFailure { error, retry }
    };
    match link.wait_readable(Duration::ZERO, Some(READY_TIMEOUT)) {
        Ok(true) => {}
        Ok(false) => {
            let why = format!("it did not answer within {READY_TIMEOUT:?}");
            return Err(fail(&why, false));
        }
        Err(e) => return Err(fail(&format!("cannot wait for it: {e}"), false)),
    }
    let answer = match link.recv() {
        Err(e) => Err((e.to_string(), true)),
        Ok(incoming) => match incoming.frame().and_then(Ready::parse) {
            Ok(Ready::Ok {
                build_id, token, ..
            }) if build_id == entry::build_id() && token == spec.token => Ok(()),
            Ok(Ready::Ok { .. }) => Err(("it is a worker of another build".to_string(), false)),
            Ok(Ready::Refused(why)) => Err((format!("it refused: {why}"), false)),
            Err(e) => Err((e.to_string(), false)),
        },
    };
    if let Err((why, retry)) = answer {
        return Err(fail(&why, retry));
    }
    if let Some((name, _)) = &spec.initializer {
        let limit = spec.init_timeout;
        // A timeout too large for a deadline is no limit.
        match link.wait_readable(Duration::ZERO, crate::sync::limit(limit)) {
            Ok(true) => {}
            Ok(false) => {
                let why = format!(
                    "its initializer `{name}` did not finish within {limit:?} (init_timeout)"
                );
                return Err(fail(&why, false));
            }
            Err(e) => return Err(fail(&format!("cannot wait for it: {e}"), false)),
        }
        let done = match link.recv() {
            Ok(incoming) => incoming
                .frame()
                .and_then(protocol::parse_init_done)
                .map_err(|e| (e.to_string(), false)),
            Err(e) => Err((
                format!("its initializer `{name}` did not finish: {e}"),
                true,
            )),
        };
        match done {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(fail(&why, false)),
            Err((why, retry)) => return Err(fail(&why, retry)),
        }
    }
    Ok(Conn {
        link,
        peer,
        tasks_done: 0,
        events: None,
    })
}

/// Stops worker `i` gracefully, keeping what its exit hook returned; kills it if it lingers.
pub(super) fn retire(shared: &Inner, i: usize, conn: Conn) {
    let Conn { mut link, peer, .. } = conn;
    let pid = peer.pid();
    let hook = shared
        .spec
        .on_exit
        .is_some()
        .then_some(shared.spec.exit_timeout);
    if let Some(body) = exit(&mut *link, &*peer, hook) {
        shared.push_exit_result(body);
    }
    tracing::debug!(pool = %shared.spec.pool, worker = i, pid, "worker retired");
}

/// Stops workers gracefully, as [`retire`] does, all at once: each is asked to exit, then
/// each is waited for, so that retiring many costs about what retiring one does.
pub(super) fn retire_many(shared: &Inner, conns: Vec<(usize, Box<Conn>)>) {
    let hook = shared
        .spec
        .on_exit
        .is_some()
        .then_some(shared.spec.exit_timeout);
    let asked: Vec<(usize, Box<Conn>, bool)> = conns
        .into_iter()
        .map(|(i, mut conn)| {
            events::uninstall(&mut conn);
            let asked = ask_exit(&mut *conn.link);
            (i, conn, asked)
        })
        .collect();
    let from = Instant::now();
    for (i, conn, asked) in asked {
        let Conn { mut link, peer, .. } = *conn;
        if let Some(body) = await_exit(&mut *link, &*peer, hook, asked, from) {
            shared.push_exit_result(body);
        }
        shared.watch.unregister(i);
        tracing::debug!(pool = %shared.spec.pool, worker = i, pid = peer.pid(), "worker retired");
    }
}

/// Sends the worker the frame that asks it to exit; whether it went.
fn ask_exit(link: &mut dyn Link) -> bool {
    let mut frame = FrameBuf::default();
    protocol::write_exit(&mut frame);
    link.send(&[frame.finish()]).is_ok()
}

/// Asks the worker to exit after its current work, and waits for it to; with an exit hook
/// (which may run for `hook`), returns the EXITED frame's body.
fn exit(link: &mut dyn Link, peer: &dyn Peer, hook: Option<Duration>) -> Option<Vec<u8>> {
    let asked = ask_exit(link);
    await_exit(link, peer, hook, asked, Instant::now())
}

/// Waits for a worker that was `asked` to exit (else it is killed), keeping the EXITED
/// frame's body of its exit hook, if it has one (which may run for `hook`); `from` is when
/// the wait began, shared by workers asked together, so that waiting for many costs the
/// longest wait, not their sum.
fn await_exit(
    link: &mut dyn Link,
    peer: &dyn Peer,
    hook: Option<Duration>,
    asked: bool,
    from: Instant,
) -> Option<Vec<u8>> {
    let left = |d: Duration| -> Option<Duration> {
        // A timeout too large for a deadline is no limit.
        crate::sync::deadline(from, d).map(|at| at.saturating_duration_since(Instant::now()))
    };
    let mut exited = None;
    if asked {
        if let Some(limit) = hook
            && link
                .wait_readable(Duration::ZERO, left(limit))
                .unwrap_or(false)
            && let Ok(Ok(body)) = link.recv().map(|incoming| incoming.frame())
        {
            exited = Some(body.to_vec());
        }
        let grace = hook.map_or(RETIRE_GRACE, |h| h.saturating_add(RETIRE_GRACE));
        if peer.wait_exit(left(grace).unwrap_or(RETIRE_GRACE)) {
            return exited;
        }
    }
    peer.kill();
    peer.reap();
    exited
}
