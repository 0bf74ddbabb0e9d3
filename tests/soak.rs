//! Soak: many tiny tasks while another thread SIGKILLs a random worker every ~10 ms.
//!
//! Every task gets exactly one result; each is correct or `Error::WorkerDied` (with
//! `retries(3)`, every one is correct); the pool works afterwards; and once it is dropped the
//! process has as many descriptors and children as before.
//!
//! `PPOOL_SOAK_TASKS` sets the number of tasks of each phase (default 20,000). Run with
//! `--nocapture` to see the figures.

use ppool::{Error, ProcessPool, pool_entry};
use ppool_tests::{children, open_fds};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

ppool::test_support!();

/// Where a worker announces itself, once it has run a task (so it is past its start-up).
const DIR_ENV: &str = "PPOOL_SOAK_DIR";

fn expected(x: u64) -> u64 {
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0x5555
}

#[pool_entry]
fn work(x: u64) -> (u64, u32) {
    static ANNOUNCED: std::sync::Once = std::sync::Once::new();
    ANNOUNCED.call_once(|| {
        if let Some(dir) = std::env::var_os(DIR_ENV) {
            let _ = std::fs::write(Path::new(&dir).join(std::process::id().to_string()), b"");
        }
    });
    // A little work, so that the killer finds workers busy as well as idle.
    let until = Instant::now() + Duration::from_micros(50);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
    (expected(x), std::process::id())
}

fn tasks() -> u64 {
    std::env::var("PPOOL_SOAK_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// A tiny xorshift: the killer's choice need not be good, only not always the same.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A thread that SIGKILLs a random announced worker every ~10 ms.
struct Killer {
    stop: Arc<AtomicBool>,
    kills: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Killer {
    fn start(dir: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let kills = Arc::new(AtomicU64::new(0));
        let (s, k) = (Arc::clone(&stop), Arc::clone(&kills));
        let handle = std::thread::spawn(move || {
            let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ u64::from(std::process::id()));
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                let announced: Vec<u32> = std::fs::read_dir(&dir)
                    .map(|d| {
                        d.flatten()
                            .filter_map(|e| e.file_name().to_str()?.parse().ok())
                            .collect()
                    })
                    .unwrap_or_default();
                if announced.is_empty() {
                    continue;
                }
                let pid = announced[rng.below(announced.len())];
                let _ = std::fs::remove_file(dir.join(pid.to_string()));
                // Only a live child of ours: never a stranger that got a recycled pid.
                let live: HashSet<u32> = children()
                    .into_iter()
                    .filter(|&(_, state)| state != 'Z')
                    .map(|(p, _)| p)
                    .collect();
                if !live.contains(&pid) {
                    continue;
                }
                if let Some(p) = rustix::process::Pid::from_raw(pid as i32)
                    && rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok()
                {
                    k.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Killer {
            stop,
            kills,
            handle: Some(handle),
        }
    }

    /// Stops the thread; the number of kills.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("the killer thread panicked");
        }
        self.kills.load(Ordering::Relaxed)
    }
}

impl Drop for Killer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn soak_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ppool-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cannot create the soak dir");
    dir
}

fn pool(dir: &Path, retries: u32) -> ProcessPool<work> {
    ProcessPool::<work>::builder()
        .n_jobs(2)
        .name(format!("soak-r{retries}"))
        .env(DIR_ENV, dir)
        .retries(retries)
        .build()
        .expect("the soak pool")
}

/// What one phase saw.
#[derive(Debug, Default)]
struct Figures {
    tasks: u64,
    kills: u64,
    died: u64,
    other_errors: u64,
    duration: Duration,
}

/// Runs `n` tasks through `call_with` under the killer; checks each result.
fn phase_call_with(pool: &ProcessPool<work>, dir: &Path, n: u64) -> Figures {
    let killer = Killer::start(dir.to_path_buf());
    let started = Instant::now();
    let seen: Arc<Vec<AtomicU8>> = Arc::new((0..n).map(|_| AtomicU8::new(0)).collect());
    let (tx, rx) = mpsc::channel();
    for x in 0..n {
        let tx = tx.clone();
        let seen = Arc::clone(&seen);
        pool.call_with(x, move |r| {
            seen[x as usize].fetch_add(1, Ordering::Relaxed);
            let _ = tx.send((x, r));
        });
    }
    drop(tx);
    let mut figures = Figures {
        tasks: n,
        ..Figures::default()
    };
    let deadline = Instant::now() + Duration::from_secs(120) + Duration::from_millis(n / 10);
    for _ in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        let (x, r) = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("results stopped coming ({e}); {figures:?}"));
        tally(&mut figures, x, r);
    }
    figures.duration = started.elapsed();
    figures.kills = killer.stop();
    for (x, count) in seen.iter().enumerate() {
        assert_eq!(count.load(Ordering::Relaxed), 1, "task {x}: results");
    }
    // Nothing more arrives.
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    figures
}

/// Runs `n` tasks as one batch under the killer; checks each result.
fn phase_batch(pool: &ProcessPool<work>, dir: &Path, n: u64) -> Figures {
    let killer = Killer::start(dir.to_path_buf());
    let started = Instant::now();
    let results = pool.batch(0..n).wait_all();
    let mut figures = Figures {
        tasks: n,
        duration: started.elapsed(),
        kills: killer.stop(),
        ..Figures::default()
    };
    assert_eq!(results.len() as u64, n);
    for (x, r) in results.into_iter().enumerate() {
        tally(&mut figures, x as u64, r);
    }
    figures
}

fn tally(figures: &mut Figures, x: u64, r: Result<(u64, u32), Error>) {
    match r {
        Ok((y, pid)) => {
            assert_eq!(y, expected(x), "task {x}: wrong result");
            assert_ne!(pid, std::process::id());
        }
        Err(Error::WorkerDied { .. }) => figures.died += 1,
        Err(e) => {
            figures.other_errors += 1;
            panic!("task {x}: expected a result or WorkerDied, got {e:?}");
        }
    }
}

fn report(phase: &str, f: &Figures) {
    eprintln!(
        "soak {phase}: {} tasks, {} kills, {:.2?}, {} WorkerDied, {} other errors ({:.0} tasks/s)",
        f.tasks,
        f.kills,
        f.duration,
        f.died,
        f.other_errors,
        f.tasks as f64 / f.duration.as_secs_f64()
    );
}

/// The pool still answers everything right.
fn still_usable(pool: &ProcessPool<work>) {
    let xs: Vec<u64> = (0..1000).collect();
    let ys = pool
        .batch(xs.clone())
        .wait()
        .expect("the pool after the soak");
    for (x, (y, _)) in xs.into_iter().zip(ys) {
        assert_eq!(y, expected(x));
    }
    assert!(pool.is_running());
}

#[test]
fn soak_under_sigkill() {
    let _deadline = ppool_tests::deadline();
    let n = tasks();
    let dir = soak_dir();
    let fds_before = open_fds();
    let children_before = children().len();

    {
        let pool = pool(&dir, 0);
        let f = phase_call_with(&pool, &dir, n);
        report("call_with, retries(0)", &f);
        still_usable(&pool);
        let f = phase_batch(&pool, &dir, n);
        report("batch, retries(0)", &f);
        still_usable(&pool);
    }
    {
        let pool = pool(&dir, 3);
        let f = phase_call_with(&pool, &dir, n);
        report("call_with, retries(3)", &f);
        assert_eq!(f.died, 0, "with retries(3) every task succeeds");
        still_usable(&pool);
    }

    // Everything the pools held is released (their stderr forwarders may take a moment).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (fds, kids) = (open_fds(), children());
        if fds == fds_before && kids.len() == children_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the pools: {fds} descriptors (before {fds_before}), children {kids:?} \
             (before {children_before})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
