//! A helper for the defect tests: a program that restores the default SIGPIPE disposition (as
//! many C libraries and some programs do), runs a one-worker pool, and SIGKILLs the idle
//! worker before each further call. Prints `call <k>: <result>` for each call and exits 0; a
//! supervisor that writes to the dead worker's pipe dies of SIGPIPE instead.
//!
//! With the argument `stderr`, the worker writes many lines to stderr for each call instead,
//! and the test closes the program's stderr: the forwarder's writes to it must not kill it.
//!
//! Started with `--ppool-worker` it is a worker.

use ppool::{ProcessPool, pool_entry};
use std::io::Write;
use std::time::{Duration, Instant};

#[pool_entry]
fn pid() -> u32 {
    std::process::id()
}

#[pool_entry]
fn shout(lines: u32) -> u32 {
    for i in 0..lines {
        eprintln!("line {i} of a worker that talks a lot");
    }
    lines
}

/// True once `pid` has exited (a zombie nobody reaped yet counts) or is gone.
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
    }
}

ppool::main! {
    fn main() -> Result<(), ppool::Error> {
        // SAFETY: no other thread runs yet; SIG_DFL is a valid disposition for SIGPIPE.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
        if std::env::args().nth(1).as_deref() == Some("stderr") {
            let pool = ProcessPool::<shout>::new(1)?;
            for k in 0..20 {
                let result = pool.call(1000);
                println!("call {k}: {result:?}");
            }
            return pool.join();
        }
        let pool = ProcessPool::<pid>::new(1)?;
        let mut out = std::io::stdout().lock();
        let mut worker = pool.call(())?;
        let _ = writeln!(out, "call 0: Ok({worker})");
        for k in 1..=4 {
            // Kill the idle worker and wait until it has exited, so that its pipe is closed.
            // SAFETY: kill(2) with a pid of this process's child.
            unsafe {
                libc::kill(worker as libc::pid_t, libc::SIGKILL);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while !has_exited(worker) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let result = pool.call(());
            let _ = writeln!(out, "call {k}: {result:?}");
            let _ = out.flush();
            match result {
                Ok(pid) => worker = pid,
                Err(_) => break,
            }
        }
        drop(out);
        Ok(())
    }
}
