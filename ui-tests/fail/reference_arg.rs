use ppool::pool_entry;

#[pool_entry]
fn count(s: &str) -> usize {
    s.len()
}

fn main() {}
