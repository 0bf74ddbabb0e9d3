use ppool::ProcessPool;

fn square(x: u64) -> u64 {
    x * x
}

ppool::main! {
    fn main() -> Result<(), ppool::Error> {
        let _pool = ProcessPool::<square>::new(1)?;
        let _ = square(2);
        Ok(())
    }
}
