//! A helper for the tests: deletes its own executable, as a rebuild during a long run would,
//! then starts a pool and runs a task. Prints `ok <worker pid>`.

use ppool::{ProcessPool, pool_entry};

#[pool_entry]
fn pid() -> u32 {
    std::process::id()
}

ppool::main! {
    fn main() -> Result<(), ppool::Error> {
        if let Ok(exe) = std::env::current_exe() {
            let _ = std::fs::remove_file(exe);
        }
        let pool = ProcessPool::<pid>::new(1)?;
        println!("ok {}", pool.call(())?);
        pool.join()
    }
}
