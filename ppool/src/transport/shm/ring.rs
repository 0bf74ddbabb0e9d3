//! placeholder
#[cfg(test)] mod tests { #[test] fn t() { let a = std::sync::atomic::AtomicU32::new(0); let _ = rustix::thread::futex::wake(&a, rustix::thread::futex::Flags::empty(), 1); } }
