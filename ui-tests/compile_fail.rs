//! The compile-fail suite of ppool's macros, run by [trybuild](https://docs.rs/trybuild).
//!
//! - `fail/*.rs` must each fail to compile, with exactly the diagnostics in the `.stderr` file
//!   next to it: every error points at the offending token of the user's code.
//! - `pass/*.rs` must compile (and run: their `main` does nothing).
//!
//! After changing a message or span in `ppool-macros` or `ppool`, or adding a case, regenerate
//! the expected output and read every changed `.stderr` before committing it:
//!
//! ```text
//! TRYBUILD=overwrite cargo test -p ppool-ui-tests
//! ```
//!
//! The expected output depends on the compiler's wording, so a new Rust release can require a
//! regeneration too.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("fail/*.rs");
    t.pass("pass/*.rs");
}
