use ppool::pool_entry;

#[pool_entry]
fn greeting() -> &'static str {
    "hello"
}

fn main() {}
