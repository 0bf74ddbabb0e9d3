//! A progress bar over a lazy `map`, then the pool's insights.
//!
//! ```text
//! cargo run --release --example progress
//! ```

use ppool::{ProcessPool, pool_entry};

/// About a millisecond of arithmetic.
#[pool_entry]
fn work(seed: u64) -> u64 {
    let mut x = seed * 2 + 1;
    for _ in 0..300_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

ppool::main! {
    fn main() -> Result<(), ppool::Error> {
        // The bar is drawn when stderr is a terminal; `force_progress_bar` draws it anyway.
        let pool = ProcessPool::<work>::builder().name("work").progress_bar(true).build()?;
        let mut checksum = 0u64;
        for result in pool.map(0..3000u64) {
            checksum ^= result?;
        }
        println!("checksum {checksum:016x}");
        println!("{}", pool.insights());
        pool.join()
    }
}
