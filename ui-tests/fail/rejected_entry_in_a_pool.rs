//! An entry the attribute rejects is one error, the attribute's: naming it in a pool type
//! adds none.
use ppool::{ProcessPool, pool_entry};

#[pool_entry]
fn identity<T>(x: T) -> T {
    x
}

#[pool_entry]
async fn later(x: u64) -> u64 {
    x
}

fn main() {
    let _ = ProcessPool::<identity>::new(1);
    let _ = ProcessPool::<later>::builder().n_jobs(1).build();
}
