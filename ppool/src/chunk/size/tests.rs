use super::*;

#[test]
fn fixed_size_wins() {
    let c = Chunking::new(Some(7), None);
    c.observe(1, 1);
    assert_eq!(c.for_stream(), 7);
    assert_eq!(c.for_len(1000, 2), 7);
}

#[test]
fn adapts_to_task_duration() {
    let c = Chunking::new(None, None);
    assert_eq!(c.for_stream(), 1, "nothing known yet");
    c.observe(100 * 1000, 1000); // 100 ns a task
    assert_eq!(c.for_stream(), MAX_CHUNK);
    let slow = Chunking::new(None, None);
    slow.observe(10_000_000, 1); // 10 ms a task
    assert_eq!(slow.for_stream(), 1);
    assert_eq!(slow.for_len(200, 2), 1);
}

#[test]
fn balances_known_lengths_and_respects_the_cap() {
    let c = Chunking::new(None, Some(3));
    assert_eq!(c.for_len(1000, 2), 3);
    let c = Chunking::new(None, None);
    assert_eq!(c.for_len(80, 2), 10);
    assert_eq!(c.for_len(1, 8), 1);
}

#[test]
fn tiny_tasks_are_not_spread_thinner_than_pays() {
    let c = Chunking::new(None, None);
    c.observe(100 * 1000, 1000); // 100 ns a task: 20,000 make the 2 ms target
    // On 1024 workers, balance alone would give chunks of 5: 4,000 messages.
    let chunk = c.for_len(20_000, 1024);
    assert_eq!(chunk, MAX_CHUNK.min(20_000 / 8));
    assert!(20_000usize.div_ceil(chunk) <= 16);
    // Slow tasks still go one a chunk, balanced over every worker.
    let slow = Chunking::new(None, None);
    slow.observe(50_000_000, 1); // 50 ms a task
    assert_eq!(slow.for_len(4096, 1024), 1);
    // Before anything is known, balance decides.
    assert_eq!(Chunking::new(None, None).for_len(20_000, 1024), 5);
    // Tasks of 1 ms: at least two a chunk... at most two (the target).
    let ms = Chunking::new(None, None);
    ms.observe(1_000_000, 1);
    assert_eq!(ms.for_len(100_000, 4), 2);
}
