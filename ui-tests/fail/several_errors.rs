use ppool::pool_entry;

#[pool_entry]
async unsafe fn bad<T>(s: &str, x: impl Clone, (a, b): (u8, u8)) -> &'static str {
    let _ = (s, x, a, b);
    "bad"
}

fn main() {}
