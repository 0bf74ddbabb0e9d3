//! A helper for the tests. Without arguments: prints every `tracing` event of the pool on
//! stdout (as `event <LEVEL> <message>`) while a pool named `chatty`, with a forced progress
//! bar, runs a batch whose task 13 crashes its worker and whose tasks write to stderr.
//!
//! With `marked`: no subscriber, and a pool named `plain` whose entry writes lines that carry
//! the mark of a forwarded `tracing` record.
//!
//! With `panicky`: a subscriber that panics on the events whose message asks it to, and a pool
//! named `panicky` whose entry emits two such events, then more calls that write to stderr and
//! log; each call's outcome is printed on stdout (`call <n>: <outcome>`).

use ppool::{ProcessPool, pool_entry};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

#[pool_entry]
fn shout(x: u32) -> u32 {
    eprintln!("hello from task {x}");
    // Long enough that jobs are not sent ahead, so both workers get some.
    std::thread::sleep(std::time::Duration::from_millis(3));
    if x == 13 {
        std::process::abort();
    }
    x
}

/// Writes lines that look like forwarded records: one alone, one after text the line began
/// with. (Without a subscriber nothing in the worker writes real ones.)
#[pool_entry]
fn marked() {
    eprintln!("\x01ppool-trace:00ff");
    eprintln!("text first\x01ppool-trace:zz");
}

/// Step 0 logs two events the subscriber panics on; every step writes a line to stderr and
/// logs an event.
#[pool_entry]
fn chatter(step: u32) -> u32 {
    if step == 0 {
        tracing::info!("first panic please");
        tracing::info!("second panic please");
    }
    eprintln!("chatter line {step}");
    tracing::info!("chatter event {step}");
    step
}

/// How many events the panicking subscriber panicked on.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// The smallest subscriber: events to stdout, spans ignored. With `panics`, it panics on an
/// event whose message says `panic please`.
struct Print {
    panics: bool,
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl Subscriber for Print {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        if self.panics && message.0.contains("panic please") {
            PANICS.fetch_add(1, Ordering::SeqCst);
            panic!("the subscriber panics on `{}`", message.0.trim());
        }
        println!("event {}{}", event.metadata().level(), message.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn chatty() -> Result<(), ppool::Error> {
    if tracing::subscriber::set_global_default(Print { panics: false }).is_err() {
        eprintln!("cannot install the subscriber");
    }
    let pool = ProcessPool::<shout>::builder()
        .n_jobs(2)
        .name("chatty")
        .chunk_size(1)
        .force_progress_bar(true)
        .build()?;
    let results = pool.batch(0..40).wait_all();
    let failed = results.iter().filter(|r| r.is_err()).count();
    println!("done: {} results, {failed} failed", results.len());
    pool.join()
}

fn marked_without_subscriber() -> Result<(), ppool::Error> {
    let pool = ProcessPool::<marked>::builder()
        .n_jobs(1)
        .name("plain")
        .build()?;
    pool.call(())?;
    pool.join()
}

fn panicky() -> Result<(), ppool::Error> {
    if tracing::subscriber::set_global_default(Print { panics: true }).is_err() {
        eprintln!("cannot install the subscriber");
    }
    let pool = ProcessPool::<chatter>::builder()
        .n_jobs(1)
        .name("panicky")
        .build()?;
    println!("call 0: {:?}", pool.call(0));
    // The events reach the subscriber after the call returned: wait for the first panic, and
    // for a while for the second (a forwarder the first one ended never sees it), then a
    // little longer, so that such a forwarder would be gone by the next call.
    let started = Instant::now();
    while PANICS.load(Ordering::SeqCst) < 1 && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let first = Instant::now();
    while PANICS.load(Ordering::SeqCst) < 2 && first.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    println!("panics: {}", PANICS.load(Ordering::SeqCst));
    for step in 1..=3 {
        println!("call {step}: {:?}", pool.call(step));
    }
    pool.join()
}

ppool::main! {
    fn main() -> Result<(), ppool::Error> {
        match std::env::args().nth(1).as_deref() {
            Some("marked") => marked_without_subscriber(),
            Some("panicky") => panicky(),
            _ => chatty(),
        }
    }
}
