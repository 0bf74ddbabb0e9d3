//! Examples of ppool: run them with `cargo run --release --example <name>`.
