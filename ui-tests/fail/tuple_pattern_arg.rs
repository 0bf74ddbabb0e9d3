use ppool::pool_entry;

#[pool_entry]
fn add((a, b): (i64, i64)) -> i64 {
    a + b
}

fn main() {}
