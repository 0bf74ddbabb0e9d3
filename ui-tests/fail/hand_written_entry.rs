//! `Entry` is sealed: only `#[pool_entry]` implements it, since a worker finds an entry by the
//! record the attribute registers.
struct Fake;

impl ppool::Entry for Fake {
    type Args = u64;
    type Output = u64;
    const NAME: &'static str = "fake";
    fn call(x: u64) -> u64 {
        x
    }
}

fn main() {}
