use ppool::pool_entry;

struct Point {
    x: f64,
    y: f64,
}

#[pool_entry]
fn scale(k: f64, p: Point) -> f64 {
    (p.x * p.x + p.y * p.y).sqrt() * k
}

fn main() {}
