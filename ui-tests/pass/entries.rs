//! Entries with zero, one and several arguments, and a `Result` return, all named in a pool
//! type; `main` runs no pool.
use ppool::{Entry, ProcessPool, pool_entry};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Point {
    x: f64,
    y: f64,
}

#[pool_entry]
fn pid() -> u32 {
    std::process::id()
}

#[pool_entry]
fn square(x: u64) -> u64 {
    x * x
}

#[pool_entry]
fn add(a: i64, b: i64, c: i64) -> i64 {
    a + b + c
}

#[pool_entry]
fn parse(s: String) -> Result<u32, String> {
    s.parse().map_err(|e| format!("{e}"))
}

#[pool_entry]
fn scale(p: Point, k: f64) -> Point {
    Point {
        x: p.x * k,
        y: p.y * k,
    }
}

#[pool_entry]
fn nothing() {}

/// Types the pool by the entry without starting it.
fn typed<F: Entry>(_pool: Option<ProcessPool<F>>) {}

ppool::main! {
    fn main() {
        typed::<pid>(None);
        typed::<square>(None);
        typed::<add>(None);
        typed::<parse>(None);
        typed::<scale>(None);
        typed::<nothing>(None);
        // Still ordinary functions.
        assert_eq!(square(3), 9);
        assert_eq!(add(1, 2, 3), 6);
        assert_eq!(parse("7".to_string()), Ok(7));
        assert_eq!(scale(Point { x: 1.0, y: 2.0 }, 2.0).y, 4.0);
        nothing();
        let _ = pid();
        // The task and result types are the arguments and the return type.
        let _: <add as Entry>::Args = (1, 2, 3);
        let _: <parse as Entry>::Output = Err(String::new());
        let _: <pid as Entry>::Args = ();
    }
}
