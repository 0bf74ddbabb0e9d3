//! The supervisor's recovery rules, driven through a whole [`Core`] with scripted fake
//! workers: no process is started. A fake worker answers the greeting, and answers each task
//! by what its arguments say: `ok`, `panic`, `crash` (dies while running it), `hang` (runs
//! until killed), `grow` (hangs with a resident memory above any limit), `garbage` (answers
//! with a malformed frame) or `flush` (sends the outcomes so far, its own included, as a run
//! ahead of the job's end, as a pipe worker does with long tasks). A test can also kill a worker while it is idle. Like a worker on
//! shared memory, a fake one publishes each task's start and outcome as it goes, so that
//! when it dies mid-job the supervisor sees which tasks finished and which one was running.
//! The script counts how often each task ran.
//!
//! A script may also make its workers evented, as remote ones are: their answers then reach
//! the pool through a sink, on a thread of the fake transport's own (a host's reader, in a
//! real pool), and a worker's end is reported there too.
//!
//! The pure rules are tested on their own at the end.

use super::job::{Deliver, Job, Sent, Split};
use super::recovery::{self, Failed, Fate, HeadFacts, MAX_BOUNCES};
use super::{Core, HookValues, PoolStore, Settings, WorkerSpec};
use crate::entry;
use crate::error::{Error, ExitCause};
use crate::protocol::{
    FrameBuf, FrameError, Hello, Outcome, Ready, ResultsHeader, Tasks, TasksHeader, kind,
};
use crate::supervisor::watchdog::Verdict;
use crate::sync::lock;
use crate::transport::{Incoming, Launch, Link, Peer, Sink, Started, Worker};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);

/// How the fake workers of one pool behave, and what the test sees of them.
#[derive(Debug, Default)]
struct Script {
    /// Workers started so far.
    started: AtomicUsize,
    /// The peers, by start order.
    peers: Mutex<Vec<Arc<FakePeer>>>,
    /// How many times each task started, by its arguments.
    runs: Arc<Mutex<HashMap<String, u32>>>,
    /// Its workers are evented (see the module's docs).
    evented: bool,
}

#[derive(Debug)]
struct FakeLaunch(Arc<Script>);

impl Launch for FakeLaunch {
    fn is_local(&self, _index: usize) -> bool {
        !self.0.evented
    }

    fn start(&self, _index: usize, greeting: &[u8]) -> Result<Worker, Error> {
        let n = self.0.started.fetch_add(1, Ordering::SeqCst);
        let peer = Arc::new(FakePeer {
            pid: 1000 + n as u32,
            dead: Mutex::new(None),
            changed: Condvar::new(),
            rss: AtomicU64::new(0),
            idle_death: AtomicBool::new(false),
            on_death: Mutex::new(None),
        });
        lock(&self.0.peers).push(Arc::clone(&peer));
        let mut link = FakeLink {
            peer: Arc::clone(&peer),
            answers: VecDeque::new(),
            progress: (u64::MAX, 0),
            runs: Arc::clone(&self.0.runs),
            body: Vec::new(),
            evented: self.0.evented,
            events: None,
        };
        link.send(&[greeting])
            .map_err(|e| Error::spawn(e.to_string()))?;
        Ok(Worker {
            link: Box::new(link),
            peer,
        })
    }
}

#[derive(Debug)]
struct FakePeer {
    pid: u32,
    /// How it ended, once it has.
    dead: Mutex<Option<ExitCause>>,
    changed: Condvar,
    rss: AtomicU64,
    /// Killed from outside while idle: the next frame sent is never read.
    idle_death: AtomicBool,
    /// An evented worker's transport thread, told of its end.
    on_death: Mutex<Option<mpsc::Sender<Event>>>,
}

/// What an evented fake's transport thread hands to the sink, in order.
#[derive(Debug)]
enum Event {
    Body(Vec<u8>),
    End,
}

impl FakePeer {
    fn die(&self, cause: ExitCause) {
        let mut dead = lock(&self.dead);
        let first = dead.is_none();
        dead.get_or_insert(cause);
        drop(dead);
        self.changed.notify_all();
        if first && let Some(tx) = lock(&self.on_death).as_ref() {
            let _ = tx.send(Event::End);
        }
    }

    fn is_dead(&self) -> bool {
        lock(&self.dead).is_some()
    }

    /// Waits until killed.
    fn hang(&self) {
        let mut dead = lock(&self.dead);
        while dead.is_none() {
            dead = crate::sync::wait(&self.changed, dead);
        }
    }
}

impl Peer for FakePeer {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn kill(&self) {
        self.die(ExitCause::Signal(9));
    }

    fn wait_exit(&self, _timeout: Duration) -> bool {
        self.die(ExitCause::Code(0));
        true
    }

    fn reap(&self) -> ExitCause {
        lock(&self.dead).unwrap_or(ExitCause::Signal(9))
    }

    fn resident_bytes(&self) -> Option<u64> {
        Some(self.rss.load(Ordering::SeqCst))
    }
}

#[derive(Debug)]
struct FakeLink {
    peer: Arc<FakePeer>,
    answers: VecDeque<Vec<u8>>,
    /// The job it runs and how many of its tasks started, as published.
    progress: (u64, u32),
    runs: Arc<Mutex<HashMap<String, u32>>>,
    body: Vec<u8>,
    /// It may deliver to a sink.
    evented: bool,
    /// Once it does: where its answers go, for its transport thread to hand to the sink.
    events: Option<mpsc::Sender<Event>>,
}

impl FakeLink {
    /// An answer: for the sink, through the transport thread, once there is one; else kept
    /// for `recv`.
    fn emit(&mut self, body: Vec<u8>) {
        match &self.events {
            Some(tx) => {
                let _ = tx.send(Event::Body(body));
            }
            None => self.answers.push_back(body),
        }
    }

    fn answer(&mut self, body: &[u8]) -> io::Result<()> {
        let mut out = FrameBuf::default();
        match body[0] {
            kind::HELLO => {
                let hello = Hello::parse(body).map_err(|e| io::Error::other(e.to_string()))?;
                Ready::Ok {
                    build_id: entry::build_id(),
                    token: hello.token,
                    pid: self.peer.pid,
                }
                .write(&mut out);
            }
            kind::TASKS => {
                let mut tasks = Tasks::parse(body).map_err(|e| io::Error::other(e.to_string()))?;
                ResultsHeader::run(tasks.job, 0).start(&mut out);
                let mut in_frame = 0;
                for k in 0..tasks.count {
                    let args = tasks
                        .next_args()
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    self.progress = (tasks.job, k + 1);
                    *lock(&self.runs)
                        .entry(String::from_utf8_lossy(args).into_owned())
                        .or_default() += 1;
                    match args {
                        b"panic" => Outcome::write_panicked(&mut out, "boom", "here:1:1"),
                        b"crash" => {
                            // Dies running this task: what finished before it was published.
                            if in_frame > 0 {
                                ResultsHeader::run(tasks.job, in_frame).store(out.body_mut());
                                self.emit(out.finish()[4..].to_vec());
                            }
                            self.peer.die(ExitCause::Signal(6));
                            return Ok(());
                        }
                        b"hang" => {
                            self.peer.hang();
                            return Ok(());
                        }
                        b"grow" => {
                            self.peer.rss.store(1 << 40, Ordering::SeqCst);
                            self.peer.hang();
                            return Ok(());
                        }
                        b"garbage" => {
                            self.emit(vec![kind::RESULTS, 1, 2, 3]);
                            return Ok(());
                        }
                        // Stands for a bug of the supervisor's own: its thread panics.
                        b"bug" => panic!("a bug in the thread that drives the worker"),
                        _ => {
                            let _ = Outcome::write_ok(&mut out, |v| {
                                v.extend_from_slice(args);
                                Ok::<(), ()>(())
                            });
                        }
                    }
                    in_frame += 1;
                    if args == b"flush" {
                        ResultsHeader::run(tasks.job, in_frame).store(out.body_mut());
                        self.emit(out.finish()[4..].to_vec());
                        ResultsHeader::run(tasks.job, 0).start(&mut out);
                        in_frame = 0;
                    }
                }
                let end = ResultsHeader {
                    job: tasks.job,
                    count: in_frame,
                    busy_nanos: 0,
                    max_task_nanos: 0,
                    more: false,
                };
                end.store(out.body_mut());
            }
            kind::EXIT => {
                self.peer.die(ExitCause::Code(0));
                return Ok(());
            }
            _ => return Ok(()),
        }
        self.emit(out.finish()[4..].to_vec());
        Ok(())
    }
}

impl Link for FakeLink {
    fn send(&mut self, frames: &[&[u8]]) -> io::Result<()> {
        for frame in frames {
            let mut rest: &[u8] = frame;
            while rest.len() >= 4 {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let (body, next) = rest[4..].split_at(len);
                rest = next;
                if self.peer.idle_death.load(Ordering::SeqCst) || self.peer.is_dead() {
                    // Written into the channel of a dead worker: never read.
                    continue;
                }
                self.answer(body)?;
            }
        }
        Ok(())
    }

    fn recv(&mut self) -> Result<Incoming<'_>, FrameError> {
        if self.peer.idle_death.load(Ordering::SeqCst) {
            self.peer.die(ExitCause::Signal(9));
        }
        match self.answers.pop_front() {
            Some(body) => {
                self.body = body;
                Incoming::from_body(&self.body)
            }
            None => Err(FrameError::Closed),
        }
    }

    fn wait_readable(&mut self, _spin: Duration, _timeout: Option<Duration>) -> io::Result<bool> {
        Ok(true)
    }

    fn budget(&self) -> usize {
        1 << 20
    }

    fn started(&mut self, job: u64, _sent_bytes: usize) -> Started {
        match self.progress {
            (j, n) if j == job => Started::Upto(n),
            _ => Started::None,
        }
    }

    fn shrink_buffers(&mut self) {}

    fn is_evented(&self) -> bool {
        self.evented
    }

    fn deliver_to(&mut self, sink: Option<Arc<dyn Sink>>) -> bool {
        let Some(sink) = sink.filter(|_| self.evented) else {
            // Back to `recv` (to retire it): what is on its way to the old sink is dropped,
            // which a retired (idle) worker never has.
            self.events = None;
            *lock(&self.peer.on_death) = None;
            return self.evented;
        };
        let (tx, rx) = mpsc::channel::<Event>();
        std::thread::spawn(move || {
            for event in rx {
                match event {
                    Event::Body(body) => sink.arrived(Incoming::from_body(&body)),
                    Event::End => {
                        sink.arrived(Err(FrameError::Closed));
                        return;
                    }
                }
            }
        });
        let ready = self.answers.is_empty() && !self.peer.is_dead();
        *lock(&self.peer.on_death) = Some(tx.clone());
        if self.peer.is_dead() {
            let _ = tx.send(Event::End);
        }
        self.events = Some(tx);
        ready
    }
}

/// What a job's handler received: each task's outcome, or the job's error.
type Got = Result<Vec<String>, Error>;

fn describe(outcome: Outcome<'_>) -> String {
    match outcome {
        Outcome::Ok(v) => String::from_utf8_lossy(v).into_owned(),
        Outcome::Panicked { message, .. } => format!("panicked: {message}"),
        Outcome::Codec { message, .. } => format!("codec: {message}"),
    }
}

/// A job of `tasks`, whose outcome goes to `tx`; split into one job per task when its worker
/// fails under it.
fn job(tasks: &[&str], tx: &mpsc::Sender<(Vec<String>, Got)>) -> Job {
    let mut frame = FrameBuf::default();
    TasksHeader::new(0, tasks.len() as u32).start(&mut frame);
    for t in tasks {
        frame.bytes(t.as_bytes());
    }
    let names: Vec<String> = tasks.iter().map(|t| t.to_string()).collect();
    let deliver = deliver_to(names.clone(), tx.clone());
    let tx = tx.clone();
    let split: Split = Box::new(move |frame: &[u8]| {
        crate::chunk::split_frame(frame)
            .into_iter()
            .zip(&names)
            .map(|(one, name)| (one, deliver_to(vec![name.clone()], tx.clone())))
            .collect()
    });
    Job {
        count: tasks.len() as u32,
        frame: frame.take(),
        deliver,
        cancelled: None,
        cancel_kills: false,
        entry: None,
        attempts: 0,
        bounces: 0,
        split: (tasks.len() > 1).then_some(split),
        needs: Vec::new(),
    }
}

fn deliver_to(names: Vec<String>, tx: mpsc::Sender<(Vec<String>, Got)>) -> Deliver {
    Deliver::new(move |d| {
        let got = d.map(|(results, _)| results.outcomes().map(describe).collect());
        let _ = tx.send((names, got));
    })
}

fn settings(n_jobs: usize) -> Settings {
    Settings {
        n_jobs,
        debug: false,
        max_tasks_per_worker: None,
        min_workers: None,
        host_timeout: Duration::from_secs(30),
        rejoin: false,
        task_timeout: None,
        memory_limit: None,
        retries: 0,
    }
}

fn core(settings: Settings) -> (Core, Arc<Script>) {
    core_of(settings, Script::default())
}

/// A pool of evented fake workers, driven as remote ones are.
fn core_evented(settings: Settings) -> (Core, Arc<Script>) {
    core_of(
        settings,
        Script {
            evented: true,
            ..Script::default()
        },
    )
}

fn core_of(settings: Settings, script: Script) -> (Core, Arc<Script>) {
    let script = Arc::new(script);
    let spec = WorkerSpec {
        pool: "fake".into(),
        entry: "fake::entry",
        max_frame: 1 << 20,
        initializer: None,
        on_exit: None,
        hook_values: HookValues::default(),
        init_timeout: Duration::from_secs(300),
        exit_timeout: Duration::from_secs(60),
        token: 42,
        trace: 0,
    };
    let core = Core::new(
        spec,
        settings,
        Box::new(FakeLaunch(Arc::clone(&script))),
        PoolStore::new(42),
    );
    core.start().expect("a pool of fake workers starts");
    (core, script)
}

/// The outcomes of `n` jobs, by the names of their tasks.
fn collect(rx: &mpsc::Receiver<(Vec<String>, Got)>, n: usize) -> Vec<(Vec<String>, Got)> {
    let mut all: Vec<_> = (0..n)
        .map(|_| {
            rx.recv_timeout(10 * SECOND)
                .expect("every job is delivered")
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

#[test]
fn a_panic_fails_its_task_alone_and_the_worker_serves_on() {
    let (core, script) = core(settings(1));
    let (tx, rx) = mpsc::channel();
    core.submit(job(&["a", "panic", "b"], &tx));
    core.submit(job(&["c"], &tx));
    let got = collect(&rx, 2);
    assert_eq!(
        got[0].1.as_ref().ok(),
        Some(&vec!["a".into(), "panicked: boom".into(), "b".into()])
    );
    assert_eq!(got[1].1.as_ref().ok(), Some(&vec!["c".to_string()]));
    assert_eq!(
        script.started.load(Ordering::SeqCst),
        1,
        "no worker was replaced"
    );
}

#[test]
fn a_crash_mid_chunk_fails_the_culprit_alone_keeps_what_finished_and_runs_the_rest_once() {
    crash_mid_chunk(core(settings(1)));
}

/// The pool's one worker crashes on the second task of three: the first is kept, the culprit
/// fails alone, the third runs on a replacement, and no task runs twice.
fn crash_mid_chunk((core, script): (Core, Arc<Script>)) {
    let (tx, rx) = mpsc::channel();
    core.submit(job(&["a", "crash", "b"], &tx));
    let got = collect(&rx, 3);
    let by_name: Vec<(&str, bool)> = got
        .iter()
        .map(|(names, got)| (names[0].as_str(), got.is_ok()))
        .collect();
    assert_eq!(by_name, [("a", true), ("b", true), ("crash", false)]);
    assert_eq!(got[0].1.as_ref().ok(), Some(&vec!["a".to_string()]));
    let culprit = &got[2].1;
    assert!(
        matches!(
            culprit,
            Err(Error::WorkerDied {
                cause: ExitCause::Signal(6),
                ..
            })
        ),
        "{culprit:?}"
    );
    let runs = lock(&script.runs).clone();
    let once: HashMap<String, u32> = ["a", "crash", "b"].map(|t| (t.to_string(), 1)).into();
    assert_eq!(runs, once, "no task ran twice");
    assert_eq!(
        script.started.load(Ordering::SeqCst),
        2,
        "the first worker died with the culprit; the second ran what never started"
    );
}

#[test]
fn a_job_whose_outcomes_come_in_runs_is_delivered_whole_in_order() {
    let (core, _script) = core(settings(1));
    let (tx, rx) = mpsc::channel();
    // The second job's end comes alone, after its last run.
    core.submit(job(&["a", "flush", "b", "c"], &tx));
    core.submit(job(&["d", "flush"], &tx));
    let got = collect(&rx, 2);
    let want = |names: &[&str]| Some(names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
    assert_eq!(
        got[0].1.as_ref().ok().cloned(),
        want(&["a", "flush", "b", "c"])
    );
    assert_eq!(got[1].1.as_ref().ok().cloned(), want(&["d", "flush"]));
}

#[test]
fn a_crash_after_runs_keeps_the_outcomes_of_every_run() {
    let (core, script) = core(settings(1));
    let (tx, rx) = mpsc::channel();
    core.submit(job(&["a", "flush", "b", "crash", "c"], &tx));
    let got = collect(&rx, 5);
    let by_name: Vec<(&str, Option<Vec<String>>)> = got
        .iter()
        .map(|(names, got)| (names[0].as_str(), got.as_ref().ok().cloned()))
        .collect();
    let ok = |v: &str| Some(vec![v.to_string()]);
    assert_eq!(
        by_name,
        [
            ("a", ok("a")),
            ("b", ok("b")),
            ("c", ok("c")),
            ("crash", None),
            ("flush", ok("flush")),
        ]
    );
    let runs = lock(&script.runs).clone();
    assert!(
        runs.values().all(|&n| n == 1),
        "no task ran twice: {runs:?}"
    );
}

#[test]
fn with_retries_only_the_task_that_was_running_runs_again() {
    let mut s = settings(1);
    s.retries = 1;
    let (core, script) = core(s);
    let (tx, rx) = mpsc::channel();
    core.submit(job(&["a", "crash", "b"], &tx));
    let got = collect(&rx, 3);
    assert!(matches!(got[2].1, Err(Error::WorkerDied { .. })), "{got:?}");
    let runs = lock(&script.runs).clone();
    assert_eq!(runs.get("a"), Some(&1));
    assert_eq!(runs.get("b"), Some(&1));
    assert_eq!(runs.get("crash"), Some(&2), "the culprit ran again, once");
}

#[test]
fn a_job_sent_to_a_worker_that_died_idle_is_bounced_unblamed() {
    let (core, script) = core(settings(1));
    let (tx, rx) = mpsc::channel();
    core.submit(job(&["a"], &tx));
    assert!(collect(&rx, 1)[0].1.is_ok());
    let first = Arc::clone(&lock(&script.peers)[0]);
    first.idle_death.store(true, Ordering::SeqCst);
    core.submit(job(&["b"], &tx));
    let got = collect(&rx, 1);
    assert_eq!(
        got[0].1.as_ref().ok(),
        Some(&vec!["b".to_string()]),
        "{got:?}"
    );
    assert_eq!(
        script.started.load(Ordering::SeqCst),
        2,
        "the dead worker was replaced"
    );
    assert!(
        core.last_error().is_some(),
        "the death is still reported as a worker failure"
    );
}

#[test]
fn a_task_past_its_timeout_fails_with_timeout_and_the_others_run() {
    let mut s = settings(1);
    s.task_timeout = Some(Duration::from_millis(100));
    let (core, _script) = core(s);
    let (tx, rx) = mpsc::channel();
    core.submit(job(&["hang"], &tx));
    core.submit(job(&["after"], &tx));
    let got = collect(&rx, 2);
    assert_eq!(got[0].1.as_ref().ok(), Some(&vec!["after".to_string()]));
    assert!(matches!(got[1].1, Err(Error::Timeout { .. })), "{got:?}");
}

/// Defect: `task_timeout(Duration::MAX)` made the driver thread panic on `Instant + Duration`
/// as it armed the watchdog, holding its slot busy for good: the job got `Closed`, the next
/// one waited forever.
#[test]
fn a_task_timeout_too_large_for_a_deadline_is_no_limit() {
    for timeout in [Duration::MAX, Duration::from_secs(u64::MAX)] {
        let mut s = settings(1);
        s.task_timeout = Some(timeout);
        let (core, _script) = core(s);
        let (tx, rx) = mpsc::channel();
        core.submit(job(&["a"], &tx));
        core.submit(job(&["b", "c"], &tx));
        let got = collect(&rx, 2);
        assert_eq!(
            got[0].1.as_ref().ok(),
            Some(&vec!["a".to_string()]),
            "{got:?}"
        );
        let bc = vec!["b".to_string(), "c".to_string()];
        assert_eq!(got[1].1.as_ref().ok(), Some(&bc), "{got:?}");
        core.join().expect("join");
    }
}

/// A panic in a thread that drives a worker (a bug) fails the jobs it held with
/// `Error::Internal`, and the pool goes on with a fresh worker in that slot.
#[test]
fn a_panicking_driver_fails_its_job_as_internal_and_the_slot_is_refilled() {
    let (core, script) = core(settings(1));
    let (tx, rx) = mpsc::channel();
    core.submit(job(&["bug"], &tx));
    let got = collect(&rx, 1);
    assert!(matches!(got[0].1, Err(Error::Internal { .. })), "{got:?}");
    for name in ["after", "and after"] {
        core.submit(job(&[name], &tx));
        let got = collect(&rx, 1);
        assert_eq!(
            got[0].1.as_ref().ok(),
            Some(&vec![name.to_string()]),
            "{got:?}"
        );
    }
    assert_eq!(
        script.started.load(Ordering::SeqCst),
        2,
        "the slot was refilled"
    );
    assert!(
        lock(&script.peers)[0].is_dead(),
        "the first worker was killed"
    );
    assert!(matches!(core.last_error(), Some(Error::Internal { .. })));
    core.join().expect("join");
}

#[test]
fn a_worker_over_its_memory_limit_fails_its_task_with_memory_limit() {
    let mut s = settings(1);
    s.memory_limit = Some(1 << 30);
    let (core, _script) = core(s);
    let (tx, rx) = mpsc::channel();
    core.submit(job(&["grow"], &tx));
    let got = collect(&rx, 1);
    assert!(
        matches!(got[0].1, Err(Error::MemoryLimit { limit, .. }) if limit == 1 << 30),
        "{got:?}"
    );
}

#[test]
fn shutdown_while_busy_ends_the_running_and_queued_jobs_with_closed() {
    let (core, _script) = core(settings(1));
    let (tx, rx) = mpsc::channel();
    core.submit(job(&["hang"], &tx));
    core.submit(job(&["queued"], &tx));
    std::thread::sleep(Duration::from_millis(50));
    core.shutdown();
    let got = collect(&rx, 2);
    for (names, got) in got {
        assert!(matches!(got, Err(Error::Closed)), "{names:?}: {got:?}");
    }
}

#[test]
fn retries_run_a_task_again_until_the_budget_is_used_up() {
    let mut s = settings(1);
    s.retries = 2;
    let (core, script) = core(s);
    let (tx, rx) = mpsc::channel();
    core.submit(job(&["crash"], &tx));
    let got = collect(&rx, 1);
    assert!(matches!(got[0].1, Err(Error::WorkerDied { .. })), "{got:?}");
    let crashed = lock(&script.peers)
        .iter()
        .filter(|p| *lock(&p.dead) == Some(ExitCause::Signal(6)))
        .count();
    assert_eq!(
        crashed, 3,
        "the first run and 2 retries, each on a worker of its own"
    );
}

#[test]
fn an_evented_worker_that_breaks_its_protocol_fails_its_job_alone_and_is_replaced() {
    let (core, script) = core_evented(settings(1));
    let (tx, rx) = mpsc::channel();
    core.submit(job(&["a"], &tx));
    assert_eq!(collect(&rx, 1)[0].1, Ok(vec!["a".to_string()]));
    // Its answer is malformed: it is killed, and its job fails once its end is reported on
    // the transport's thread, the very thread the malformed answer came on; nothing waits
    // for the host's silence (30 s here) and nothing calls the worker lost.
    core.submit(job(&["garbage"], &tx));
    let got = collect(&rx, 1);
    assert!(
        matches!(got[0].1, Err(Error::Protocol { worker: 0, .. })),
        "{got:?}"
    );
    core.submit(job(&["b"], &tx));
    assert_eq!(collect(&rx, 1)[0].1, Ok(vec!["b".to_string()]));
    assert_eq!(script.started.load(Ordering::SeqCst), 2, "replaced once");
    assert!(lock(&script.peers)[0].is_dead());
}

#[test]
fn an_evented_worker_that_crashes_mid_chunk_fails_the_culprit_alone_and_runs_the_rest_once() {
    crash_mid_chunk(core_evented(settings(1)));
}

#[test]
fn a_malformed_answer_is_a_protocol_error() {
    let (core, _script) = core(settings(1));
    let (tx, rx) = mpsc::channel();
    core.submit(job(&["garbage"], &tx));
    let got = collect(&rx, 1);
    assert!(
        matches!(got[0].1, Err(Error::Protocol { worker: 0, .. })),
        "{got:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The pure rules
// ---------------------------------------------------------------------------------------------

fn sent(tasks: &[&[&str]], tx: &mpsc::Sender<(Vec<String>, Got)>) -> VecDeque<Sent> {
    tasks
        .iter()
        .enumerate()
        .map(|(n, t)| Sent {
            job: job(t, tx),
            id: n as u64 + 1,
        })
        .collect()
}

fn died() -> Error {
    Error::WorkerDied {
        entry: "e".into(),
        worker: 0,
        pid: 1,
        cause: ExitCause::Signal(9),
    }
}

fn facts(count: u32, kept: u32, started: Started) -> HeadFacts {
    HeadFacts {
        count,
        kept,
        started,
        attempts: 0,
        bounces: 0,
    }
}

#[test]
fn when_closing_the_jobs_after_the_first_end_with_closed_and_the_first_keeps_its_results() {
    let (tx, _rx) = mpsc::channel();
    let plan = recovery::plan_rest(
        sent(&[&["a"], &["b"]], &tx),
        true,
        Started::None,
        &died(),
        5,
    );
    assert!(plan.requeue.is_empty());
    assert_eq!(plan.settle.len(), 2);
    assert!(plan.settle.iter().all(|(_, e)| matches!(e, Error::Closed)));
    let fate = recovery::fate(facts(4, 2, Started::Upto(3)), &Error::Closed, true, 5);
    assert_eq!(
        fate,
        Fate::Cut {
            kept: 2,
            ran: 4,
            retry: false
        }
    );
}

#[test]
fn a_job_none_of_whose_tasks_started_bounces_a_bounded_number_of_times() {
    for started in [Started::None, Started::Upto(0)] {
        let f = facts(3, 0, started);
        assert_eq!(recovery::fate(f, &died(), false, 0), Fate::Bounce);
        let tired = HeadFacts {
            bounces: MAX_BOUNCES,
            ..f
        };
        assert_eq!(
            recovery::fate(tired, &died(), false, 0),
            Fate::Cut {
                kept: 0,
                ran: 3,
                retry: false
            }
        );
    }
}

#[test]
fn only_the_task_that_was_running_fails_and_what_never_started_runs_again() {
    assert_eq!(
        recovery::fate(facts(10, 4, Started::Upto(5)), &died(), false, 0),
        Fate::Cut {
            kept: 4,
            ran: 5,
            retry: false
        }
    );
    // Died between tasks: nothing fails, the rest runs elsewhere.
    assert_eq!(
        recovery::fate(facts(10, 4, Started::Upto(4)), &died(), false, 0),
        Fate::Cut {
            kept: 4,
            ran: 4,
            retry: false
        }
    );
    // A link that cannot tell: every task without a result may have started.
    assert_eq!(
        recovery::fate(facts(10, 4, Started::Unknown), &died(), false, 0),
        Fate::Cut {
            kept: 4,
            ran: 10,
            retry: false
        }
    );
    // A progress word beyond the job, or behind its results, is clamped.
    assert_eq!(
        recovery::fate(facts(10, 4, Started::Upto(99)), &died(), false, 0),
        Fate::Cut {
            kept: 4,
            ran: 10,
            retry: false
        }
    );
    assert_eq!(
        recovery::fate(facts(10, 4, Started::Upto(1)), &died(), false, 0),
        Fate::Cut {
            kept: 4,
            ran: 4,
            retry: false
        }
    );
}

#[test]
fn retries_cover_only_worker_deaths_and_only_within_the_budget() {
    let f = facts(1, 0, Started::Upto(1));
    assert!(matches!(
        recovery::fate(f, &died(), false, 1),
        Fate::Cut { retry: true, .. }
    ));
    let used = HeadFacts { attempts: 1, ..f };
    assert!(matches!(
        recovery::fate(used, &died(), false, 1),
        Fate::Cut { retry: false, .. }
    ));
    let timeout = Error::Timeout {
        entry: "e".into(),
        worker: 0,
        pid: 1,
        timeout: SECOND,
    };
    assert!(matches!(
        recovery::fate(f, &timeout, false, 5),
        Fate::Cut { retry: false, .. }
    ));
}

#[test]
fn the_jobs_after_the_first_never_started_and_are_queued_again_unblamed() {
    let (tx, _rx) = mpsc::channel();
    for started in [Started::None, Started::Upto(3), Started::Unknown] {
        let plan = recovery::plan_rest(
            sent(&[&["b"], &["c", "d"]], &tx),
            false,
            started,
            &died(),
            0,
        );
        let counts: Vec<u32> = plan.requeue.iter().map(|j| j.count).collect();
        assert_eq!(counts, [1, 2]);
        assert!(plan.requeue.iter().all(|j| j.attempts == 0));
        assert!(plan.settle.is_empty());
    }
}

#[test]
fn after_a_lost_host_the_jobs_sent_ahead_may_have_started_and_run_again_only_with_retries() {
    let (tx, _rx) = mpsc::channel();
    let rest = || sent(&[&["b"], &["c", "d"]], &tx);
    let plan = recovery::plan_rest(rest(), false, Started::Lost, &died(), 0);
    assert!(plan.requeue.is_empty());
    assert_eq!(plan.settle.len(), 2);
    let plan = recovery::plan_rest(rest(), false, Started::Lost, &died(), 1);
    assert_eq!(plan.requeue.len(), 2);
    assert!(plan.requeue.iter().all(|j| j.attempts == 1));
    assert_eq!(
        recovery::fate(facts(5, 2, Started::Lost), &died(), false, 0),
        Fate::Cut {
            kept: 2,
            ran: 5,
            retry: false
        }
    );
}

#[test]
fn classify_puts_the_watchdog_first_and_the_channel_second() {
    let who = Failed {
        entry: "e",
        worker: 3,
        pid: 77,
        task_timeout: Some(SECOND),
        memory_limit: Some(10),
    };
    let closed = FrameError::Closed;
    let c =
        |v, cause: &FrameError, shut| recovery::classify(who, v, cause, ExitCause::Code(1), shut);
    assert!(matches!(
        c(Some(Verdict::Timeout), &closed, false),
        Error::Timeout { pid: 77, .. }
    ));
    assert!(matches!(
        c(Some(Verdict::Memory { rss: 11 }), &closed, false),
        Error::MemoryLimit {
            rss: 11,
            limit: 10,
            ..
        }
    ));
    assert!(matches!(
        c(None, &closed, false),
        Error::WorkerDied {
            worker: 3,
            cause: ExitCause::Code(1),
            ..
        }
    ));
    let bad = FrameError::Malformed("x".into());
    assert!(matches!(
        c(None, &bad, false),
        Error::Protocol { worker: 3, .. }
    ));
    assert!(matches!(
        c(Some(Verdict::Timeout), &bad, true),
        Error::Closed
    ));
}
