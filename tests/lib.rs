//! Integration tests of ppool live in this package's test targets.
