//! A helper for the tests. Without arguments: prints every `tracing` event of the pool on
//! stdout (as `event <LEVEL> <message>`) while a pool named `chatty`, with a forced progress
//! bar, runs a batch whose task 13 crashes its worker and whose tasks write to stderr.
//!
//! With `marked`: no subscriber, and a pool named `plain` whose entry writes lines that carry
//! the mark of a forwarded `tracing` record.

use ppool::{ProcessPool, pool_entry};
use std::fmt::Write as _;
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

/// The smallest subscriber: events to stdout, spans ignored.
struct Print;

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
        println!("event {}{}", event.metadata().level(), message.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn chatty() -> Result<(), ppool::Error> {
    if tracing::subscriber::set_global_default(Print).is_err() {
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

ppool::main! {
    fn main() -> Result<(), ppool::Error> {
        match std::env::args().nth(1).as_deref() {
            Some("marked") => marked_without_subscriber(),
            _ => chatty(),
        }
    }
}
