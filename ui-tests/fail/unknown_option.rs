use ppool::pool_entry;

#[pool_entry(foo)]
fn square(x: u64) -> u64 {
    x * x
}

fn main() {}
