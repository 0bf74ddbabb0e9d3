use ppool::{ProcessPool, pool_entry};

#[pool_entry]
fn square(x: u64) -> u64 {
    x * x
}

ppool::main! {
    fn main() -> Result<(), ppool::Error> {
        let _y = ProcessPool::<square>::new(1)?.call("x")?;
        Ok(())
    }
}
