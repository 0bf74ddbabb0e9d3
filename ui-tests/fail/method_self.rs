use ppool::pool_entry;

struct Counter;

impl Counter {
    #[pool_entry]
    fn bump(&self, x: u64) -> u64 {
        x + 1
    }
}

fn main() {}
