use ppool::pool_entry;

struct Point {
    x: f64,
    y: f64,
}

#[pool_entry]
fn origin(scale: f64) -> Point {
    Point { x: scale, y: scale }
}

fn main() {}
