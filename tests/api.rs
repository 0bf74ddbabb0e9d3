//! The contract's API, end to end, with real worker processes.

use ppool::{Error, ProcessPool, pool_entry};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

ppool::test_support!();

#[pool_entry]
fn square(x: u64) -> u64 {
    x * x
}

#[pool_entry]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[pool_entry]
fn pid() -> u32 {
    std::process::id()
}

#[pool_entry]
fn parse(s: String) -> Result<u32, String> {
    s.parse().map_err(|e| format!("{e}"))
}

#[pool_entry]
fn explode(message: String) -> u32 {
    panic!("{message}")
}

#[test]
fn call_runs_in_another_process() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<pid>::new(2).unwrap();
    let worker = pool.call(()).unwrap();
    assert_ne!(worker, std::process::id());
}

#[test]
fn call_batch_submit_and_streams() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<square>::new(2).unwrap();
    assert_eq!(pool.call(7).unwrap(), 49);
    let ys = pool.batch(0..1000u64).wait().unwrap();
    assert_eq!(ys, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    let task = pool.submit(5);
    assert_eq!(task.wait().unwrap(), 25);
    let mapped: Vec<u64> = pool.map(0..5000u64).map(|r| r.unwrap()).collect();
    assert_eq!(mapped, (0..5000u64).map(|x| x * x).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = pool.map_unordered(0..300u64).map(|r| r.unwrap()).collect();
    unordered.sort();
    assert_eq!(unordered, (0..300u64).map(|x| x * x).collect::<Vec<_>>());
    pool.join().unwrap();
}

#[test]
fn tuples_results_and_panics() {
    let _deadline = ppool_tests::deadline();
    let adder = ProcessPool::<add>::new(2).unwrap();
    assert_eq!(adder.call((2, 3)).unwrap(), 5);
    let parser = ProcessPool::<parse>::new(1).unwrap();
    assert_eq!(parser.call("12".into()).unwrap(), Ok(12));
    assert!(parser.call("x".into()).unwrap().is_err());
    let p = ProcessPool::<explode>::new(1).unwrap();
    let e = p.call("boom".into()).unwrap_err();
    match &e {
        Error::Panicked {
            message,
            location,
            entry,
            ..
        } => {
            assert_eq!(message, "boom");
            assert!(location.as_deref().unwrap_or("").contains("api.rs"), "{e}");
            assert!(entry.ends_with("explode"));
        }
        other => panic!("unexpected {other:?}"),
    }
    // the worker goes on
    assert!(matches!(
        p.call("again".into()),
        Err(Error::Panicked { .. })
    ));
}

#[test]
fn callbacks_all_arrive() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<square>::new(2).unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    for i in 0..200u64 {
        let done = Arc::clone(&done);
        pool.call_with(i, move |r| {
            assert_eq!(r.unwrap(), i * i);
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    pool.join().unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 200);
    let _ = Duration::ZERO;
}

/// An endless input: `map(1..)` streams (and `collect` asks for a size hint without
/// overflowing it), in order, as far as it is read.
#[test]
fn map_over_an_endless_input() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<square>::new(2).unwrap();
    let first: Vec<u64> = pool.map(1..).take(4).collect::<Result<_, _>>().unwrap();
    assert_eq!(first, [1, 4, 9, 16]);
    let stream = pool.map_unordered(0u64..);
    assert_eq!(stream.size_hint().0, usize::MAX);
    let mut got: Vec<u64> = stream.take(5).map(Result::unwrap).collect();
    got.sort_unstable();
    assert_eq!(got.len(), 5);
}
