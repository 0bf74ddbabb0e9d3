//! A `pub(crate)` entry in a nested module, and an entry with an explicit `crate = ppool`.
mod jobs {
    pub(crate) mod math {
        #[ppool::pool_entry]
        pub(crate) fn cube(x: u64) -> u64 {
            x * x * x
        }

        #[ppool::pool_entry(crate = ppool)]
        pub(crate) fn halve(x: u64) -> u64 {
            x / 2
        }
    }
}

fn typed<F: ppool::Entry>() -> &'static str {
    F::NAME
}

fn main() {
    assert_eq!(jobs::math::cube(2), 8);
    assert_eq!(jobs::math::halve(8), 4);
    assert!(typed::<jobs::math::cube>().ends_with("jobs::math::cube"));
    assert!(typed::<jobs::math::halve>().ends_with("jobs::math::halve"));
    let _pool: Option<ppool::ProcessPool<jobs::math::cube>> = None;
}
