//! A type that serializes but does not deserialize is one error, at the return type.
use ppool::pool_entry;
use serde::Serialize;

#[derive(Serialize)]
struct Report {
    lines: u32,
}

#[pool_entry]
fn count(text: String) -> Report {
    Report {
        lines: text.lines().count() as u32,
    }
}

fn main() {}
