//! The agent's watch on the pool: the guard, which ends everything when the pool is gone, and
//! the pinger, which lets the pool hear the host while the stream to it is idle.

use super::workers::Workers;
use super::{EXIT_NO_POOL, Heard, Out, end, fail_start};
use crate::mux::{self, CONTROL, Control};
use crate::sync::lock;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an agent waits for the pool's greeting.
const GREETING_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the guard looks.
const GUARD_EVERY: Duration = Duration::from_millis(250);

/// Pings the pool every quarter of the host timeout (at most every second) while the stream
/// to it is idle: a writer busy with a large message is heard already.
pub(super) fn spawn_pinger(out: Out, host_timeout: Duration) {
    let every = (host_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(1));
    let spawned = std::thread::Builder::new()
        .name("ppool-agent-ping".into())
        .spawn(move || {
            let mut nonce = 0u64;
            loop {
                std::thread::sleep(every);
                nonce += 1;
                let ping = Control::Ping(nonce).encode();
                if let Ok(mut out) = out.try_lock()
                    && mux::write_message(&mut *out, CONTROL, &ping)
                        .and_then(|()| out.flush())
                        .is_err()
                {
                    return;
                }
            }
        });
    if spawned.is_err() {
        eprintln!("ppool host agent: cannot start its ping thread");
        std::process::exit(EXIT_NO_POOL);
    }
}

/// Ends the agent when the pool is gone: its parent changed (the launcher died), no greeting
/// came in time, or nothing came from the pool for the host timeout.
pub(super) fn spawn_guard(
    started: Instant,
    last_heard: Arc<Heard>,
    hello: Arc<Mutex<Option<Duration>>>,
    workers: Arc<Workers>,
) {
    let parent = rustix::process::getppid();
    let spawned = std::thread::Builder::new()
        .name("ppool-agent-guard".into())
        .spawn(move || {
            loop {
                std::thread::sleep(GUARD_EVERY);
                if rustix::process::getppid() != parent {
                    end(&workers, 0);
                }
                let silent = started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(last_heard.at.load(Ordering::Relaxed)));
                if last_heard.delivering.load(Ordering::Relaxed) {
                    continue;
                }
                match *lock(&hello) {
                    None if started.elapsed() > GREETING_TIMEOUT => {
                        fail_start("no pool greeted it in time")
                    }
                    Some(timeout) if silent > timeout => {
                        eprintln!(
                            "ppool host agent: nothing from the pool for {silent:?}; \
                             ending its workers"
                        );
                        end(&workers, 0);
                    }
                    _ => {}
                }
            }
        });
    if spawned.is_err() {
        eprintln!("ppool host agent: cannot start its guard thread");
        std::process::exit(EXIT_NO_POOL);
    }
}
