use ppool::pool_entry;

#[pool_entry]
struct Square(u64);

fn main() {}
