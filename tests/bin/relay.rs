//! A launcher that stands in for a slow network link: `ppool-test-relay BYTES_PER_SEC -- CMD
//! ARGS…` runs the command and relays its stdin and stdout at most `BYTES_PER_SEC` each way,
//! in pieces of 16 KiB. Its stderr passes through. It exits with the command's status.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pump(mut from: impl Read, mut to: impl Write, rate: u64) {
    let mut buf = vec![0u8; 16 << 10];
    let started = Instant::now();
    let mut moved: u64 = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
            return;
        }
        moved += n as u64;
        // Sleep until the bytes so far fit the rate.
        let due = Duration::from_secs_f64(moved as f64 / rate as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rate: u64 = match args.next().and_then(|r| r.parse().ok()) {
        Some(rate) if rate > 0 => rate,
        _ => {
            eprintln!("usage: ppool-test-relay BYTES_PER_SEC -- CMD ARGS...");
            std::process::exit(2);
        }
    };
    let rest: Vec<String> = args.skip_while(|a| a != "--").skip(1).collect();
    let Some((program, argv)) = rest.split_first() else {
        eprintln!("ppool-test-relay: no command");
        std::process::exit(2);
    };
    let mut child = match Command::new(program)
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("ppool-test-relay: cannot run {program}: {e}");
            std::process::exit(2);
        }
    };
    let (Some(child_in), Some(child_out)) = (child.stdin.take(), child.stdout.take()) else {
        std::process::exit(2);
    };
    // Our stdin ends: the command's stdin ends too (the writer half is dropped with the thread).
    std::thread::spawn(move || pump(std::io::stdin(), child_in, rate));
    let out = std::thread::spawn(move || pump(child_out, std::io::stdout(), rate));
    let status = child.wait();
    let _ = out.join();
    std::process::exit(status.ok().and_then(|s| s.code()).unwrap_or(1));
}
