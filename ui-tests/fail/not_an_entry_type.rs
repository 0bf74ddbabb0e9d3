use ppool::ProcessPool;

ppool::main! {
    fn main() -> Result<(), ppool::Error> {
        let _pool = ProcessPool::<u64>::new(1)?;
        Ok(())
    }
}
