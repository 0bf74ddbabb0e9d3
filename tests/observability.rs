//! `tracing` inside entries reaches the supervisor's subscriber: level, target, message and
//! fields, in the entry's own spans, inside a `task` span tagged with the pool, the worker,
//! its host and pid; errors as `&dyn Error`, with their sources; and nothing above the level
//! the subscriber wants. One subscriber for the whole binary, so this file is its own test
//! binary.

use ppool::{ProcessPool, pool_entry};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

ppool::test_support!();

/// Logs at three levels, inside two spans of its own, and records an error with a source.
#[pool_entry]
fn noisy(n: u64) -> u64 {
    let _outer = tracing::info_span!("job", kind = "square").entered();
    let _span = tracing::info_span!("work", n).entered();
    tracing::info!(n, doubled = n * 2, "working on {n}");
    tracing::debug!(n, "a detail the subscriber does not want");
    let error = Chained(std::io::Error::other("disk gone"));
    tracing::error!(error = &error as &dyn std::error::Error, "could not save");
    n
}

#[derive(Debug)]
struct Chained(std::io::Error);

impl std::fmt::Display for Chained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("saving failed")
    }
}

impl std::error::Error for Chained {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// What the subscriber saw of one event.
#[derive(Debug, Clone)]
struct Seen {
    level: Level,
    target: String,
    fields: String,
    /// The spans it was in, outermost first: name and fields.
    spans: Vec<(String, String)>,
}

/// A span's name, fields and parent.
type SpanSeen = (String, String, Option<u64>);

#[derive(Default)]
struct Collect {
    events: Mutex<Vec<Seen>>,
    spans: Mutex<HashMap<u64, SpanSeen>>,
    next: AtomicU64,
}

thread_local! {
    static STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

struct Text<'a>(&'a mut String);

impl Visit for Text<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let _ = write!(self.0, "{}=error({value}", field.name());
        let mut source = value.source();
        while let Some(s) = source {
            let _ = write!(self.0, " <- {s}");
            source = s.source();
        }
        let _ = write!(self.0, ") ");
    }
}

impl Subscriber for &'static Collect {
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        *meta.level() <= Level::INFO
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::INFO)
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = String::new();
        attrs.record(&mut Text(&mut fields));
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        // The parent, as subscribers such as tracing-subscriber's see it: the span current
        // when this one was made, unless it names another.
        let parent = match attrs.parent() {
            Some(p) => Some(p.into_u64()),
            None if attrs.is_contextual() => STACK.with(|s| s.borrow().last().copied()),
            None => None,
        };
        self.spans
            .lock()
            .unwrap()
            .insert(id, (attrs.metadata().name().to_string(), fields, parent));
        Id::from_u64(id)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = String::new();
        event.record(&mut Text(&mut fields));
        let spans = self.spans.lock().unwrap();
        // The event's spans: the current one, then its parents.
        let mut chain = Vec::new();
        let mut at = STACK.with(|s| s.borrow().last().copied());
        while let Some(id) = at {
            let Some((name, fields, parent)) = spans.get(&id) else {
                break;
            };
            chain.push((name.clone(), fields.clone()));
            at = *parent;
        }
        chain.reverse();
        let seen = Seen {
            level: *event.metadata().level(),
            target: event.metadata().target().to_string(),
            fields,
            spans: chain,
        };
        drop(spans);
        self.events.lock().unwrap().push(seen);
    }
    fn enter(&self, span: &Id) {
        STACK.with(|s| s.borrow_mut().push(span.into_u64()));
    }
    fn exit(&self, _: &Id) {
        STACK.with(|s| s.borrow_mut().pop());
    }
}

fn collector() -> &'static Collect {
    static COLLECT: OnceLock<&'static Collect> = OnceLock::new();
    COLLECT.get_or_init(|| {
        let collect: &'static Collect = Box::leak(Box::default());
        tracing::subscriber::set_global_default(collect).expect("the only subscriber");
        collect
    })
}

fn seen_with(collect: &Collect, needle: &str) -> Vec<Seen> {
    collect
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.fields.contains(needle))
        .cloned()
        .collect()
}

#[test]
fn an_entrys_events_reach_the_supervisors_subscriber() {
    let _deadline = ppool_tests::deadline();
    let collect = collector();
    let pool = ProcessPool::<noisy>::builder()
        .name("observed")
        .n_jobs(1)
        .build()
        .unwrap();
    assert_eq!(pool.call(5).unwrap(), 5);
    let pid = pool.insights().workers[0].pid.expect("a pid");
    let started = Instant::now();
    while seen_with(collect, "could not save").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no forwarded event within 20 s: {:?}",
            collect.events.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let info = seen_with(collect, "working on 5");
    assert_eq!(info.len(), 1, "{info:?}");
    let info = &info[0];
    assert_eq!(info.level, Level::INFO);
    assert_eq!(info.target, "observability");
    assert!(
        info.fields.contains("n=5") && info.fields.contains("doubled=10"),
        "{info:?}"
    );
    let names: Vec<&str> = info.spans.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["task", "job", "work"], "{info:?}");
    let (_, task) = &info.spans[0];
    for tag in [
        "pool=observed".to_string(),
        "worker=0".to_string(),
        format!("pid={pid}"),
        "entry=\"observability::noisy\"".to_string(),
        "host=".to_string(),
    ] {
        assert!(task.contains(&tag), "{tag} not in the task span: {task}");
    }
    assert!(info.spans[1].1.contains("kind=\"square\""), "{info:?}");
    assert!(info.spans[2].1.contains("n=5"), "{info:?}");

    let error = &seen_with(collect, "could not save")[0];
    assert_eq!(error.level, Level::ERROR);
    assert!(
        error
            .fields
            .contains("error=error(saving failed <- disk gone)"),
        "recorded as &dyn Error with its source: {error:?}"
    );
    assert!(
        seen_with(collect, "does not want").is_empty(),
        "a level the subscriber does not want is not forwarded"
    );
}

/// The same through a host agent (started through a local command prefix, as ssh or srun
/// would start it): the records cross the launcher's stderr.
#[test]
fn events_from_a_remote_workers_entry_reach_the_subscriber() {
    let _deadline = ppool_tests::deadline();
    let collect = collector();
    let pool = ProcessPool::<noisy>::builder()
        .name("observed-remote")
        .remote(ppool::Remote::command(["env", "PPOOL_OBSERVED=1"]).workers(1))
        .build()
        .unwrap();
    assert_eq!(pool.call(7).unwrap(), 7);
    let started = Instant::now();
    while seen_with(collect, "working on 7").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no forwarded event from the remote worker within 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let info = &seen_with(collect, "working on 7")[0];
    let (name, task) = &info.spans[0];
    assert_eq!(name, "task");
    assert!(task.contains("pool=observed-remote"), "{task}");
    assert_eq!(info.spans[2].0, "work");
}

/// An initializer that logs, then installs a subscriber of its own in the worker, as programs
/// did before events were forwarded: both work, and its subscriber keeps the worker's events.
#[pool_entry]
fn own_logging(tag: String) -> Result<(), String> {
    tracing::info!(%tag, "initializer warming up");
    tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default())
        .map_err(|e| format!("the worker's own subscriber was refused: {e}"))
}

#[test]
fn an_initializer_logs_and_may_install_its_own_subscriber() {
    let _deadline = ppool_tests::deadline();
    let collect = collector();
    let pool = ProcessPool::<noisy>::builder()
        .n_jobs(1)
        .initializer::<own_logging>("w1".into())
        .build()
        .expect("the initializer's own subscriber is accepted");
    assert_eq!(pool.call(9).unwrap(), 9);
    let started = Instant::now();
    while seen_with(collect, "tag=w1").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the initializer's event was not forwarded"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    pool.join().unwrap();
    assert!(
        seen_with(collect, "working on 9").is_empty(),
        "the worker's own subscriber got the entry's events"
    );
}

/// Returns the line this worker's capture writes for an event with `message`, taken from its
/// stderr before the forwarder sees it: a genuine record of this pool and this worker, for
/// another pool's entry to imitate.
#[pool_entry]
fn record_line(message: String) -> Vec<u8> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let (mut reader, writer) = std::io::pipe().expect("a pipe");
    // SAFETY: descriptor calls on stderr and on descriptors this function owns; stderr is
    // put back before the function returns.
    let saved = unsafe { libc::dup(2) };
    assert!(saved >= 0, "cannot duplicate stderr");
    assert!(unsafe { libc::dup2(writer.as_raw_fd(), 2) } >= 0);
    tracing::info!(forged = true, "{message}");
    // SAFETY: as above.
    assert!(unsafe { libc::dup2(saved, 2) } >= 0);
    unsafe { libc::close(saved) };
    drop(writer);
    let mut line = Vec::new();
    reader.read_to_end(&mut line).expect("the captured line");
    assert!(line.starts_with(b"\x01ppool-trace:"), "{line:?}");
    line
}

/// Writes `lines` to stderr as they are, then logs `done`; returns this worker's pid.
#[pool_entry]
fn write_raw(lines: Vec<Vec<u8>>, done: String) -> u32 {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    for line in &lines {
        err.write_all(line).expect("stderr");
    }
    drop(err);
    tracing::info!("{done}");
    std::process::id()
}

/// A genuine record line of another pool, `evil-pool`, whose worker is another process.
fn line_of_another_pool(message: &str) -> (Vec<u8>, u32) {
    let evil = ProcessPool::<record_line>::builder()
        .name("evil-pool")
        .n_jobs(1)
        .build()
        .unwrap();
    let line = evil.call(message.to_string()).unwrap();
    let evil_pid = evil.insights().workers[0].pid.expect("a pid");
    evil.join().unwrap();
    (line, evil_pid)
}

/// Waits for an event whose fields contain `needle`, and returns the first.
fn wait_for(collect: &Collect, needle: &str) -> Seen {
    let started = Instant::now();
    loop {
        if let Some(seen) = seen_with(collect, needle).into_iter().next() {
            return seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no event with {needle:?} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Checks that the `task` span of an event has each of `tags` (`name=value`) among its
/// fields.
fn assert_task_names(seen: &Seen, tags: &[String]) {
    let (name, task) = &seen.spans[0];
    assert_eq!(name, "task", "{seen:?}");
    for tag in tags {
        // Each field is written as `name=value `.
        assert!(
            format!(" {task}").contains(&format!(" {tag} ")),
            "{tag} not in the task span: {task}"
        );
    }
}

/// An entry that writes a record line of another pool's worker on its stderr cannot pass it
/// off as that worker's: the forwarder names the worker it reads.
#[test]
fn a_record_an_entry_writes_is_replayed_as_its_own_workers() {
    let _deadline = ppool_tests::deadline();
    let collect = collector();
    let (line, evil_pid) = line_of_another_pool("imitation written locally");
    let pool = ProcessPool::<write_raw>::builder()
        .name("observed-forge")
        .n_jobs(1)
        .build()
        .unwrap();
    let pid = pool
        .call((vec![line], "local imitation written".to_string()))
        .unwrap();
    assert_ne!(pid, evil_pid);
    wait_for(collect, "local imitation written");
    let seen = wait_for(collect, "imitation written locally");
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    assert_task_names(
        &seen,
        &[
            "pool=observed-forge".into(),
            "worker=0".into(),
            format!("host={host}"),
            format!("pid={pid}"),
        ],
    );
    pool.join().unwrap();
}

/// The same through a host agent: the pool names the pool and the host, the agent the worker
/// and its pid, and a line an entry writes in the agent's own form is only a line.
#[test]
fn a_record_a_remote_entry_writes_is_replayed_as_its_own_workers() {
    let _deadline = ppool_tests::deadline();
    let collect = collector();
    let (line, evil_pid) = line_of_another_pool("imitation written remotely");
    let (agents, _) = line_of_another_pool("imitation of the agent's stamp");
    // The agent's stamp on a record, claiming worker 7, pid 1.
    let agents = [
        b"\x01ppool-trace@7.1:".as_slice(),
        &agents[b"\x01ppool-trace:".len()..],
    ]
    .concat();
    let pool = ProcessPool::<write_raw>::builder()
        .name("observed-forge-remote")
        .remote(ppool::Remote::command(["env", "PPOOL_FORGED=1"]).workers(1))
        .build()
        .unwrap();
    let pid = pool
        .call((vec![line, agents], "remote imitation written".to_string()))
        .unwrap();
    assert_ne!(pid, evil_pid);
    let insights = pool.insights();
    let worker = insights
        .workers
        .iter()
        .find(|w| w.pid == Some(pid))
        .expect("the remote worker");
    assert_ne!(worker.host, "localhost");
    // Both lines were written before this event, and a worker's output keeps its order.
    let done = wait_for(collect, "remote imitation written");
    assert_task_names(
        &done,
        &[
            "pool=observed-forge-remote".into(),
            format!("worker={}", worker.index),
            format!("host={}", worker.host),
            format!("pid={pid}"),
        ],
    );
    let seen = wait_for(collect, "imitation written remotely");
    assert_task_names(
        &seen,
        &[
            "pool=observed-forge-remote".into(),
            format!("worker={}", worker.index),
            format!("host={}", worker.host),
            format!("pid={pid}"),
        ],
    );
    assert!(
        seen_with(collect, "imitation of the agent").is_empty(),
        "a line an entry wrote passed for the agent's"
    );
    pool.join().unwrap();
}

/// Without a subscriber, a line that carries a record's mark is a line like any other, tagged
/// with the pool and the worker.
#[test]
fn marked_lines_keep_their_tag_without_a_subscriber() {
    let _deadline = ppool_tests::deadline();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ppool-test-observe"))
        .arg("marked")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    for expected in [
        "[plain:0] \x01ppool-trace:00ff",
        "[plain:0] text first\x01ppool-trace:zz",
    ] {
        assert!(lines.contains(&expected), "no {expected:?} in {lines:?}");
    }
}

/// A subscriber that panics on a forwarded event is reported once, and the worker's later
/// lines, events and calls are as if it had not.
#[test]
fn a_subscriber_that_panics_does_not_end_forwarding() {
    let _deadline = ppool_tests::deadline();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ppool-test-observe"))
        .arg("panicky")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("panics: 2\n"), "{stdout}\n{stderr}");
    for step in 0..=3 {
        assert!(
            stdout.contains(&format!("call {step}: Ok({step})\n")),
            "{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains(&format!("chatter event {step}")),
            "{stdout}\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("[panicky:0] chatter line {step}\n")),
            "{stderr}"
        );
    }
    let reports = stderr
        .matches("[panicky:0] ppool: the subscriber panicked on a forwarded event")
        .count();
    assert_eq!(reports, 1, "{stderr}");
}
