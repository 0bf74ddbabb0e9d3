use super::*;
use crate::SharedBytes;
use crate::share::Store;
use std::sync::atomic::{AtomicU64, Ordering};

/// A store of a pool of its own (values are found by token and id).
fn store() -> Store {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let token =
        (u64::from(std::process::id()) << 32) | 0x8000_0000 | NEXT.fetch_add(1, Ordering::Relaxed);
    Store::new(token, Arc::new(|_| {}))
}

/// Pushes `args` as a task.
fn push<T: serde::Serialize + 'static>(
    chunk: &mut ChunkEncoder,
    args: &T,
) -> Result<Option<ChunkEncoder>> {
    chunk.push_with("test", |out| crate::codec::encode_into(args, out))
}

fn holds(chunk: &ChunkEncoder, value: &SharedBytes) -> bool {
    let stored = value.stored().expect("stored here");
    chunk.needs.iter().any(|n| Arc::ptr_eq(n, stored))
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn a_chunk_keeps_one_arc_of_a_value_and_the_task_that_starts_the_next_takes_it_along() {
    let store = store();
    let text = store.share_bytes(vec![7; 10]).expect("shared");
    let other = store.share_bytes(vec![8; 10]).expect("shared");
    let mut chunk = ChunkEncoder::new(200);
    let full = (0..100u8)
        .find_map(|i| push(&mut chunk, &(text.clone(), vec![i; 20])).expect("pushed"))
        .expect("the frame limit closed a chunk");
    assert!(full.count() > 1);
    assert_eq!(full.needs.len(), 1, "one Arc for all its tasks");
    assert!(holds(&full, &text));
    assert_eq!(chunk.count(), 1);
    assert_eq!(chunk.needs.len(), 1);
    assert!(
        holds(&chunk, &text),
        "the task that starts the next chunk names it too"
    );

    // The same when the task names another value after it.
    let full = (0..100u8)
        .find_map(|i| {
            push(&mut chunk, &(text.clone(), other.clone(), vec![i; 20])).expect("pushed")
        })
        .expect("the frame limit closed a chunk");
    assert!(holds(&full, &text) && holds(&full, &other));
    assert!(holds(&chunk, &text) && holds(&chunk, &other));

    // A task too large for any frame is refused and leaves the chunk as it was.
    let (count, needs) = (chunk.count(), chunk.needs.len());
    let refused = push(&mut chunk, &(other.clone(), vec![0u8; 400]));
    assert!(
        matches!(refused, Err(Error::ArgumentsTooLarge { .. })),
        "too large"
    );
    assert_eq!((chunk.count(), chunk.needs.len()), (count, needs));
}
