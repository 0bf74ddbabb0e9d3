use ppool::pool_entry;

#[pool_entry]
fn show(x: impl std::fmt::Display) -> String {
    x.to_string()
}

fn main() {}
