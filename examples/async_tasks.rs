//! `submit` returns a `Task`, which is also a `Future`, and a `Batch` is `IntoFuture`: await
//! them in any runtime, with `ppool::main!` around an `async fn main`.
//!
//! ```text
//! cargo run --release --example async_tasks
//! ```

use ppool::{ProcessPool, pool_entry};

#[pool_entry]
fn fib(n: u32) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a.wrapping_add(b));
    }
    a
}

ppool::main! {
    // The worker check runs before the runtime starts: workers never build one.
    #[tokio::main(flavor = "current_thread")]
    async fn main() -> Result<(), ppool::Error> {
        let pool = ProcessPool::<fib>::new(-1)?;
        // A task is a future...
        let tasks: Vec<_> = (0..50).map(|n| pool.submit(n)).collect();
        let mut total = 0u64;
        for task in tasks {
            total = total.wrapping_add(task.await?);
        }
        println!("sum of the first 50 Fibonacci numbers: {total}");
        // ...and a batch is one too.
        let first: Vec<u64> = pool.batch(0..10).await?;
        println!("the first ten: {first:?}");
        assert_eq!(first, [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]);
        pool.join()
    }
}
