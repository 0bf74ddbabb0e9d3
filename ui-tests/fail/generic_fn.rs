use ppool::pool_entry;

#[pool_entry]
fn identity<T>(x: T) -> T {
    x
}

fn main() {}
