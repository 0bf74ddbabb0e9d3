//! Every pool setting and feature, with real worker processes.

use ppool::{Error, ProcessPool, pool_entry};
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Duration;

ppool::test_support!();

static PREFIX: OnceLock<String> = OnceLock::new();

#[pool_entry]
fn warm_up(prefix: String) {
    let _ = PREFIX.set(prefix);
}

#[pool_entry]
fn greet(name: String) -> String {
    format!("{}{name}", PREFIX.get().map_or("", |s| s.as_str()))
}

#[pool_entry]
fn failing_init(reason: String) {
    panic!("{reason}")
}

#[pool_entry]
fn pid_of(_x: u64) -> u32 {
    std::process::id()
}

#[pool_entry]
fn whoami(_x: u64) -> (Option<usize>, u32) {
    (ppool::worker_index(), std::process::id())
}

#[pool_entry]
fn env_var(name: String) -> Option<String> {
    std::env::var(name).ok()
}

#[pool_entry]
fn allowed_cpus() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("")
        .trim()
        .to_string()
}

#[pool_entry]
fn goodbye(tag: String) -> String {
    format!(
        "{tag} from worker {}",
        ppool::worker_index().unwrap_or(usize::MAX)
    )
}

#[pool_entry]
fn double(x: u64) -> u64 {
    x * 2
}

/// An entry that runs a pool of its own.
#[pool_entry]
fn nested_sum(n: u64) -> u64 {
    match ProcessPool::<double>::new(2) {
        Ok(inner) => inner.batch(0..n).wait().map_or(0, |v| v.iter().sum()),
        Err(_) => u64::MAX,
    }
}

#[pool_entry]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[pool_entry]
fn echo_bytes(v: Vec<u8>) -> Vec<u8> {
    v
}

#[test]
fn initializer_runs_in_every_worker_and_replacements() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<greet>::builder()
        .n_jobs(2)
        .initializer::<warm_up>("hello ".to_string())
        .max_tasks_per_worker(2)
        .build()
        .unwrap();
    for r in pool.batch((0..10).map(|i| format!("bob{i}"))).wait_all() {
        assert!(r.unwrap().starts_with("hello bob"));
    }
    assert!(
        pool.insights()
            .workers
            .iter()
            .map(|w| w.restarts)
            .sum::<u64>()
            >= 2
    );
}

#[test]
fn failing_initializer_fails_build_with_its_message() {
    let _deadline = ppool_tests::deadline();
    let e = ProcessPool::<greet>::builder()
        .n_jobs(1)
        .initializer::<failing_init>("no config file".into())
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::Spawn { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("failing_init") && text.contains("no config file"),
        "{text}"
    );
}

/// An initializer that reports failure by returning an `Err` rather than panicking.
#[pool_entry]
fn init_returning(config: Option<String>) -> Result<(), String> {
    match config {
        Some(c) => PREFIX_SET.set(c).map_err(|_| "set twice".to_string()),
        None => Err("no config given; set PPOOL_EXAMPLE_CONFIG".into()),
    }
}

static PREFIX_SET: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// An error type that is `Debug` but not `Display`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum InitTrouble {
    NoDevice { tried: u32 },
}

#[pool_entry]
fn init_debug_only(tried: u32) -> Result<u32, InitTrouble> {
    Err(InitTrouble::NoDevice { tried })
}

/// Contract: "an initializer that panics or fails makes build() return an error that says
/// so". Returning `Err` is failing, with the error's text; `Ok` is success.
#[test]
fn an_initializer_that_returns_err_fails_build_with_its_text() {
    let _deadline = ppool_tests::deadline();
    let e = ProcessPool::<greet>::builder()
        .n_jobs(1)
        .initializer::<init_returning>(None)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::Spawn { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("init_returning") && text.contains("returned an error: no config given"),
        "{text}"
    );
    let e = ProcessPool::<greet>::builder()
        .n_jobs(1)
        .initializer::<init_debug_only>(3)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("NoDevice { tried: 3 }"), "{e}");
    let pool = ProcessPool::<greet>::builder()
        .n_jobs(1)
        .initializer::<init_returning>(Some("x".into()))
        .build()
        .unwrap();
    assert_eq!(pool.call("y".into()).unwrap(), "y");
}

#[test]
fn max_tasks_per_worker_recycles_processes() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<pid_of>::builder()
        .n_jobs(2)
        .max_tasks_per_worker(3)
        .build()
        .unwrap();
    let pids = pool.batch(0..30).wait().unwrap();
    let mut per_pid: HashMap<u32, usize> = HashMap::new();
    for p in &pids {
        *per_pid.entry(*p).or_default() += 1;
    }
    assert!(per_pid.values().all(|&n| n <= 3), "{per_pid:?}");
    assert!(per_pid.len() >= 10, "{per_pid:?}");
}

#[test]
fn entries_know_their_worker_index() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<whoami>::builder()
        .n_jobs(2)
        .chunk_size(1)
        .build()
        .unwrap();
    let seen: HashSet<(Option<usize>, u32)> =
        pool.batch(0..200).wait().unwrap().into_iter().collect();
    for (index, _) in &seen {
        assert!(matches!(index, Some(0) | Some(1)), "{seen:?}");
    }
    assert_eq!(
        ppool::worker_index(),
        None,
        "the supervisor is not a worker"
    );
}

#[test]
fn worker_exit_hook_results_are_collected_at_join() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<double>::builder()
        .n_jobs(2)
        .worker_exit::<goodbye>("bye".into())
        .build()
        .unwrap();
    assert_eq!(pool.call(21).unwrap(), 42);
    pool.join().unwrap();
    let mut results: Vec<String> = pool
        .worker_exit_results::<goodbye>()
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    results.sort();
    assert_eq!(results, ["bye from worker 0", "bye from worker 1"]);
    assert!(matches!(
        pool.worker_exit_results::<greet>(),
        Err(Error::InvalidConfig { .. })
    ));
}

/// An initializer, or an exit hook, that sleeps `ms` milliseconds.
#[pool_entry]
fn slow_hook(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[test]
fn an_initializer_past_init_timeout_fails_the_build_saying_so() {
    let _deadline = ppool_tests::deadline();
    let started = std::time::Instant::now();
    let e = ProcessPool::<double>::builder()
        .n_jobs(1)
        .initializer::<slow_hook>(30_000)
        .init_timeout(Duration::from_millis(300))
        .build()
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(&e, Error::Spawn { message, .. } if message.contains("init_timeout")),
        "{e:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_exit_hook_past_exit_timeout_is_cut_short_at_join() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<double>::builder()
        .n_jobs(1)
        .worker_exit::<slow_hook>(30_000)
        .exit_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(pool.call(2).unwrap(), 4);
    let started = std::time::Instant::now();
    pool.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "join waited {:?} for a 30 s exit hook",
        started.elapsed()
    );
    assert!(
        pool.worker_exit_results::<slow_hook>()
            .map(|r| r.is_empty())
            .unwrap_or(true),
        "a hook cut short has no result"
    );
}

#[test]
fn entries_can_run_nested_pools() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<nested_sum>::new(1).unwrap();
    assert_eq!(pool.call(10).unwrap(), 90);
}

#[test]
fn env_and_disable_gpu_reach_the_workers() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<env_var>::builder()
        .n_jobs(1)
        .env("PPOOL_TEST_VAR", "42")
        .build()
        .unwrap();
    assert_eq!(
        pool.call("PPOOL_TEST_VAR".into()).unwrap().as_deref(),
        Some("42")
    );
    assert_eq!(
        pool.call("CUDA_VISIBLE_DEVICES".into()).unwrap().as_deref(),
        Some("-1")
    );
    let gpu = ProcessPool::<env_var>::builder()
        .n_jobs(1)
        .disable_gpu(false)
        .build()
        .unwrap();
    assert_eq!(
        gpu.call("CUDA_VISIBLE_DEVICES".into()).unwrap(),
        std::env::var("CUDA_VISIBLE_DEVICES").ok()
    );
}

#[test]
fn cpu_affinity_pins_workers() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<allowed_cpus>::builder()
        .n_jobs(1)
        .cpu_affinity([0])
        .build()
        .unwrap();
    assert_eq!(pool.call(()).unwrap(), "0");
}

#[test]
fn insights_count_tasks_and_time() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<nap>::builder()
        .n_jobs(2)
        .chunk_size(1)
        .build()
        .unwrap();
    pool.batch(vec![5; 20]).wait().unwrap();
    let insights = pool.insights();
    assert_eq!(insights.tasks_done(), 20);
    assert_eq!(insights.workers.len(), 2);
    for w in insights.workers.iter().filter(|w| w.tasks_done > 0) {
        assert!(w.max_task >= Duration::from_millis(5), "{insights}");
        let least = Duration::from_millis(5) * w.tasks_done as u32;
        assert!(w.busy >= least, "{insights}");
    }
    let table = insights.to_string();
    assert!(
        table.contains("worker") && table.contains("utilization"),
        "{table}"
    );
}

#[test]
fn forced_progress_bar_runs_batch_and_map() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<double>::builder()
        .n_jobs(2)
        .force_progress_bar(true)
        .build()
        .unwrap();
    assert_eq!(pool.batch(0..500).wait().unwrap().len(), 500);
    assert_eq!(pool.map(0..500).count(), 500);
    assert_eq!(pool.map((0..500).filter(|x| x % 2 == 0)).count(), 250);
}

#[test]
fn chunk_size_keeps_order() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<double>::builder()
        .n_jobs(2)
        .chunk_size(7)
        .build()
        .unwrap();
    let out: Vec<u64> = pool.map(0..1000).map(|r| r.unwrap()).collect();
    assert_eq!(out, (0..1000).map(|x| x * 2).collect::<Vec<_>>());
    let out = pool.batch(0..1001).wait().unwrap();
    assert_eq!(out, (0..1001).map(|x| x * 2).collect::<Vec<_>>());
}

#[test]
fn map_is_lazy_and_bounded() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<double>::builder()
        .n_jobs(2)
        .stream_window(16)
        .build()
        .unwrap();
    let pulled = std::cell::Cell::new(0u64);
    let input = (0..u64::MAX).inspect(|_| pulled.set(pulled.get() + 1));
    let mut stream = pool.map(input);
    for expected in 0..100u64 {
        assert_eq!(stream.next().unwrap().unwrap(), expected * 2);
    }
    assert!(
        pulled.get() <= 100 + 16,
        "pulled {} items for 100 results",
        pulled.get()
    );
    drop(stream);
    assert_eq!(
        pool.call(1).unwrap(),
        2,
        "the pool goes on after a dropped stream"
    );
}

#[test]
fn dropping_a_stream_cancels_queued_tasks() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<nap>::builder()
        .n_jobs(1)
        .chunk_size(1)
        .stream_window(50)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    {
        let mut stream = pool.map(std::iter::repeat_n(20u64, 50));
        assert_eq!(stream.next().unwrap().unwrap(), 20);
    }
    pool.join().unwrap();
    // 50 tasks of 20 ms would take a second; cancelled ones never run.
    let done = pool.insights().tasks_done();
    assert!(
        done < 50,
        "{done} tasks ran after the stream was dropped ({:?})",
        started.elapsed()
    );
}

#[test]
fn map_unordered_yields_in_completion_order() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<nap>::builder()
        .n_jobs(2)
        .chunk_size(1)
        .build()
        .unwrap();
    let order: Vec<u64> = pool
        .map_unordered([300u64, 1, 1, 1])
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(order.len(), 4);
    assert_eq!(order.last(), Some(&300), "{order:?}");
}

#[test]
fn submit_wait_timeout_and_is_done() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<nap>::new(1).unwrap();
    let task = pool.submit(300);
    assert!(!task.is_done());
    assert!(task.wait_timeout(Duration::from_millis(10)).is_none());
    assert_eq!(
        task.wait_timeout(Duration::from_secs(30)).unwrap().unwrap(),
        300
    );
    assert!(task.is_done());
}

#[test]
fn debug_mode_runs_in_this_process() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<pid_of>::builder()
        .debug(true)
        .build()
        .unwrap();
    assert_eq!(pool.call(0).unwrap(), std::process::id());
    assert_eq!(
        pool.batch(0..10).wait().unwrap(),
        vec![std::process::id(); 10]
    );
    let greeter = ProcessPool::<greet>::builder()
        .debug(true)
        .initializer::<warm_up>("hi ".into())
        .build()
        .unwrap();
    assert_eq!(greeter.call("ann".into()).unwrap(), "hi ann");
}

#[test]
fn start_false_waits_for_start() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<double>::builder()
        .n_jobs(1)
        .start(false)
        .build()
        .unwrap();
    assert!(!pool.is_running());
    assert!(matches!(pool.call(1), Err(Error::NotStarted)));
    pool.start().unwrap();
    assert!(pool.is_running());
    assert_eq!(pool.call(1).unwrap(), 2);
    pool.shutdown();
    assert!(!pool.is_running());
    assert!(matches!(pool.call(1), Err(Error::Closed)));
}

/// `new` and `build()` refuse a bad setting with `InvalidConfig` naming it and saying what is
/// allowed. Each rule has its unit test in the crate (`Config::validate`); these two check, end
/// to end, that `new` and `build()` go through it.
#[test]
fn bad_settings_are_errors_that_say_what_is_allowed() {
    let _deadline = ppool_tests::deadline();
    match ProcessPool::<double>::new(1.5) {
        Err(Error::InvalidConfig {
            setting: "n_jobs",
            message,
            ..
        }) => assert!(message.contains("-1 for every CPU"), "{message}"),
        other => panic!("expected InvalidConfig for n_jobs, got {other:?}"),
    }
    let e = ProcessPool::<double>::builder()
        .n_jobs(1)
        .chunk_size(0)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                setting: "chunk_size",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("`chunk_size`"), "{e}");
}

#[test]
fn n_jobs_respects_the_cpus() {
    let _deadline = ppool_tests::deadline();
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        ProcessPool::<double>::builder()
            .n_jobs(-1)
            .start(false)
            .build()
            .unwrap()
            .n_jobs(),
        cpus
    );
    assert_eq!(
        ProcessPool::<double>::builder()
            .n_jobs(10_000)
            .start(false)
            .build()
            .unwrap()
            .n_jobs(),
        cpus
    );
    assert_eq!(
        ProcessPool::<double>::builder()
            .n_jobs(0.01)
            .start(false)
            .build()
            .unwrap()
            .n_jobs(),
        1
    );
    let named = ProcessPool::<double>::builder()
        .name("squares")
        .start(false)
        .build()
        .unwrap();
    assert_eq!(named.name(), "squares");
}

#[test]
fn calls_from_many_threads_use_every_worker() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<whoami>::new(2).unwrap();
    let pids: HashSet<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| (0..50).map(|i| pool.call(i).unwrap().1).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(pids.len(), pool.n_jobs().min(2), "{pids:?}");
}

#[test]
fn large_byte_buffers_round_trip() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<echo_bytes>::new(1).unwrap();
    let big: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(pool.call(big.clone()).unwrap(), big);
    let small = ProcessPool::<echo_bytes>::builder()
        .n_jobs(1)
        .max_frame_size(4096)
        .build()
        .unwrap();
    let e = small.call(vec![0u8; 10_000]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ArgumentsTooLarge {
                size,
                limit: 4096,
                ..
            } if size > 10_002
        ),
        "{e}"
    );
    assert!(!e.is_worker_failure(), "no worker was involved: {e}");
    assert_eq!(
        small.call(vec![1, 2, 3]).unwrap(),
        [1, 2, 3],
        "the pool recovers"
    );
}

#[test]
fn submitted_tasks_are_futures() {
    let _deadline = ppool_tests::deadline();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = ProcessPool::<double>::new(2).unwrap();
    let sum = rt.block_on(async {
        let tasks: Vec<_> = (0..20).map(|i| pool.submit(i)).collect();
        let mut sum = 0;
        for t in tasks {
            sum += t.await.unwrap();
        }
        sum
    });
    assert_eq!(sum, 380);
}

#[pool_entry]
fn grow(n: u64) -> Vec<u8> {
    vec![7; n as usize]
}

#[test]
fn results_larger_than_the_frame_limit_fail_alone() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<grow>::builder()
        .n_jobs(1)
        .max_frame_size(4096)
        .build()
        .unwrap();
    let before = pool.call(1).unwrap();
    let e = pool.call(10_000).unwrap_err();
    assert!(matches!(e, Error::Codec { .. }), "{e}");
    assert!(e.to_string().contains("max_frame_size"), "{e}");
    assert_eq!(pool.call(3).unwrap(), [7, 7, 7]);
    assert_eq!(before, [7]);
    assert_eq!(
        pool.insights().workers[0].restarts,
        0,
        "the worker was not replaced"
    );
}

/// Starts a long-lived grandchild (which inherits whatever the worker did not protect), then
/// aborts the worker.
#[pool_entry]
fn orphan_then_abort(seconds: u32) -> u32 {
    let child = std::process::Command::new("sleep")
        .arg(seconds.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Ok(child) = child {
        let _ = std::fs::write(
            std::env::temp_dir().join(format!("ppool-orphan-{}", std::process::id())),
            child.id().to_string(),
        );
    }
    std::process::abort()
}

#[test]
fn a_grandchild_does_not_hide_its_worker_death() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<orphan_then_abort>::new(1).unwrap();
    let started = std::time::Instant::now();
    let e = pool.call(30).unwrap_err();
    assert!(matches!(e, Error::WorkerDied { .. }), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the death was seen only when the grandchild ended"
    );
    if let Error::WorkerDied { pid, .. } = e {
        let marker = std::env::temp_dir().join(format!("ppool-orphan-{pid}"));
        if let Ok(orphan) = std::fs::read_to_string(&marker) {
            let _ = std::process::Command::new("kill")
                .arg(orphan.trim())
                .status();
        }
        let _ = std::fs::remove_file(marker);
    }
}

#[test]
fn workers_start_after_the_executable_was_replaced_on_disk() {
    let _deadline = ppool_tests::deadline();
    let dir = std::env::temp_dir().join(format!("ppool-rebuilt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("rebuilt");
    std::fs::copy(env!("CARGO_BIN_EXE_ppool-test-rebuilt"), &copy).unwrap();
    let out = std::process::Command::new(&copy).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("ok "),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn events_stderr_lines_and_progress_are_visible() {
    let _deadline = ppool_tests::deadline();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ppool-test-observe"))
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("done: 40 results, 1 failed"), "{stdout}");
    // tracing events for start, failure, replacement and exit
    for expected in [
        "worker started",
        "worker failed",
        "worker replaced",
        "worker retired",
    ] {
        assert!(
            stdout.contains(expected),
            "no `{expected}` event in:\n{stdout}"
        );
    }
    // each worker line tagged with the pool's name and the worker's index
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("[chatty:0] hello from task"))
            && stderr
                .lines()
                .any(|l| l.starts_with("[chatty:1] hello from task")),
        "{stderr}"
    );
    // the forced progress bar drew the total
    assert!(stderr.contains("40/40"), "{stderr}");
}

/// Two entries that end up with one name: functions named alike in two function bodies of
/// one module.
fn first_twin() -> Result<ProcessPool<impl ppool::Entry>, Error> {
    #[pool_entry]
    fn twin() -> u32 {
        1
    }
    ProcessPool::<twin>::new(1)
}

fn second_twin() -> Result<ProcessPool<impl ppool::Entry>, Error> {
    #[pool_entry]
    fn twin() -> u32 {
        2
    }
    ProcessPool::<twin>::new(1)
}

#[test]
fn entries_with_one_name_are_reported_with_both_places() {
    let _deadline = ppool_tests::deadline();
    for result in [first_twin().map(drop), second_twin().map(drop)] {
        match result {
            Err(Error::DuplicateEntry {
                name,
                first,
                second,
                ..
            }) => {
                assert_eq!(name, "features::twin");
                assert!(
                    first.contains("features.rs") && second.contains("features.rs"),
                    "{first} {second}"
                );
                assert_ne!(first, second);
            }
            other => panic!("expected DuplicateEntry, got {other:?}"),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
struct Image {
    width: u32,
    #[serde(with = "ppool::serde_bytes")]
    pixels: Vec<u8>,
}

#[pool_entry]
fn invert(image: Image) -> Image {
    Image {
        width: image.width,
        pixels: image.pixels.iter().map(|p| !p).collect(),
    }
}

#[test]
fn byte_fields_in_user_types_round_trip() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<invert>::new(1).unwrap();
    let image = Image {
        width: 3,
        pixels: (0..3_000_000u32).map(|i| i as u8).collect(),
    };
    let back = pool.call(image.clone()).unwrap();
    assert_eq!(back.width, 3);
    assert!(
        back.pixels
            .iter()
            .zip(&image.pixels)
            .all(|(a, b)| *a == !*b)
    );
}

/// A launcher that cannot even start: `Spawn` naming the host, with the system's error as its
/// `source()`.
#[test]
fn a_launcher_that_cannot_start_is_spawn_with_the_io_error_as_source() {
    use std::error::Error as _;
    let _deadline = ppool_tests::deadline();
    let e = ProcessPool::<double>::builder()
        .remote(ppool::Remote::command(["/nonexistent/launcher"]).workers(1))
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::Spawn { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/launcher"), "{e}");
    let io = e
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("the io::Error beneath");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
}
