//! `submit` returns a `Task`, which is also a `Future`: await it in any runtime.
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
    fn main() -> Result<(), ppool::Error> {
        let pool = ProcessPool::<fib>::new(-1)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| ppool::Error::Spawn { message: e.to_string() })?;
        let total = runtime.block_on(async {
            let tasks: Vec<_> = (0..50).map(|n| pool.submit(n)).collect();
            let mut total = 0u64;
            for task in tasks {
                total = total.wrapping_add(task.await?);
            }
            Ok::<_, ppool::Error>(total)
        })?;
        println!("sum of the first 50 Fibonacci numbers: {total}");
        pool.join()
    }
}
