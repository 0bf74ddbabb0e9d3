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
