//! Compile-fail tests of ppool live in `fail/`; see `compile_fail.rs`.
