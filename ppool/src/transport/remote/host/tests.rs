//! A host's reader and heartbeat driven by a scripted agent: a thread that writes the agent's
//! side of the stream into a pipe, message by message, with a real process (`sleep`) standing
//! in for the launcher. No agent and no worker run.

use super::*;
use std::io::Write;

/// A connection to a scripted agent: the conn, the writer for the agent's side, and the
/// reader of what the pool writes to the agent.
fn scripted(host_timeout: Duration) -> (Arc<Conn>, std::io::PipeWriter, std::io::PipeReader) {
    scripted_as(host_timeout, None)
}

/// [`scripted`], with its reader thread named `scripted-reader`.
fn scripted_named(host_timeout: Duration) -> (Arc<Conn>, std::io::PipeWriter, std::io::PipeReader) {
    scripted_as(host_timeout, Some("scripted-reader"))
}

fn scripted_as(
    host_timeout: Duration,
    reader_name: Option<&str>,
) -> (Arc<Conn>, std::io::PipeWriter, std::io::PipeReader) {
    let launcher = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("sleep runs");
    let (to_agent_r, to_agent_w) = std::io::pipe().expect("pipe");
    let (outbox, writer) = Outbox::new(OwnedFd::from(to_agent_w), "scripted").expect("outbox");
    std::thread::spawn(writer);
    let conn = Arc::new(Conn::new(
        "scripted",
        Via::Command,
        outbox,
        launcher,
        host_timeout,
        1 << 20,
    ));
    let (from_agent_r, from_agent_w) = std::io::pipe().expect("pipe");
    let (ready_tx, _ready_rx) = mpsc::channel();
    let reader = Arc::clone(&conn);
    let read = move || read_agent(&reader, from_agent_r, 1 << 20, &ready_tx);
    let builder = std::thread::Builder::new();
    let builder = match reader_name {
        Some(name) => builder.name(name.to_string()),
        None => builder,
    };
    builder.spawn(read).expect("reader thread");
    let mut agent = from_agent_w;
    agent.write_all(mux::PREAMBLE).expect("preamble");
    let ready = AgentReady {
        exe: 1,
        build_id: 2,
        pid: 3,
        hostname: "h".into(),
        target: "t".into(),
    };
    mux::write_message(&mut agent, CONTROL, &ready.encode()).expect("ready");
    (conn, agent, to_agent_r)
}

/// Allots `n` slots as `spawn_many` would, and returns their bells.
fn allot(conn: &Conn, n: u32) -> Vec<Arc<Condvar>> {
    (0..n)
        .map(|_| {
            let slot = conn.next_slot.fetch_add(1, Ordering::Relaxed);
            let inbox = Inbox::default();
            let bell = Arc::clone(&inbox.bell);
            lock(&conn.state).slots.insert(slot, inbox);
            bell
        })
        .collect()
}

/// Waits up to 10 s for `done` on the host's state.
fn until(conn: &Conn, done: impl Fn(&HostState) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if done(&lock(&conn.state)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn frames_of(st: &HostState, slot: u32) -> Vec<Vec<u8>> {
    st.slots
        .get(&slot)
        .map(|inbox| inbox.frames.iter().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn interleaved_frames_reach_their_own_inboxes_in_order() {
    let (conn, mut agent, _to_agent) = scripted(Duration::from_secs(30));
    allot(&conn, 3);
    for (slot, body) in [(1u32, "b1"), (0, "a1"), (2, "c1"), (0, "a2"), (1, "b2")] {
        mux::write_message(&mut agent, slot, body.as_bytes()).expect("write");
    }
    let exited = Control::Exited {
        slot: 2,
        cause: ExitCause::Signal(9),
        progress: Some((7, 1)),
    };
    mux::write_message(&mut agent, CONTROL, &exited.encode()).expect("write");
    assert!(until(&conn, |st| st
        .slots
        .get(&2)
        .is_some_and(|i| i.exited.is_some())));
    let st = lock(&conn.state);
    assert_eq!(frames_of(&st, 0), vec![b"a1".to_vec(), b"a2".to_vec()]);
    assert_eq!(frames_of(&st, 1), vec![b"b1".to_vec(), b"b2".to_vec()]);
    assert_eq!(frames_of(&st, 2), vec![b"c1".to_vec()]);
    assert_eq!(
        st.slots.get(&2).and_then(|i| i.exited),
        Some((ExitCause::Signal(9), Some((7, 1))))
    );
    assert!(st.lost.is_none());
}

#[test]
fn a_frame_for_a_slot_never_allotted_loses_the_host_and_wakes_every_worker() {
    let (conn, mut agent, _to_agent) = scripted(Duration::from_secs(30));
    let bells = allot(&conn, 1);
    // A driver waits on its worker's bell for a frame that will never come.
    let waiter = {
        let conn = Arc::clone(&conn);
        let bell = Arc::clone(&bells[0]);
        std::thread::spawn(move || {
            let mut st = lock(&conn.state);
            while st.lost.is_none() {
                st = crate::sync::wait(&bell, st);
            }
        })
    };
    mux::write_message(&mut agent, 5, b"stray").expect("write");
    assert!(until(&conn, |st| st.lost.is_some()));
    let why = lock(&conn.state).lost.clone().unwrap_or_default();
    assert!(why.contains("never had"), "{why}");
    waiter.join().expect("the waiter was woken");
    // The launcher is stopped: `lose` marks the host lost first, then kills and reaps it, so
    // on a busy machine the reap may come a moment after `lost` is seen.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lock(&conn.launcher).try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "the launcher was never stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_agent_that_goes_silent_is_lost_within_the_host_timeout() {
    let (conn, _agent, _to_agent) = scripted(Duration::from_secs(1));
    allot(&conn, 1);
    let started = Instant::now();
    assert!(until(&conn, |st| st.lost.is_some()));
    let why = lock(&conn.state).lost.clone().unwrap_or_default();
    assert!(why.contains("nothing came"), "{why}");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[test]
fn a_silent_host_is_pinged_and_a_closed_stream_loses_it() {
    let (conn, agent, mut to_agent) = scripted(Duration::from_secs(30));
    // The heartbeat pings an idle stream (every quarter of the timeout, at most every 1 s).
    let mut body = Vec::new();
    let channel = mux::read_message(&mut to_agent, &mut body, 0).expect("a ping");
    assert_eq!(channel, CONTROL);
    assert!(matches!(Control::parse(&body), Ok(Control::Ping(_))));
    drop(agent);
    assert!(until(&conn, |st| st.lost.is_some()));
    let why = lock(&conn.state).lost.clone().unwrap_or_default();
    assert!(why.contains("closed the stream"), "{why}");
}

#[test]
fn a_kill_is_posted_at_once_while_a_large_message_is_stuck() {
    let (conn, _agent, _to_agent) = scripted(Duration::from_secs(30));
    allot(&conn, 2);
    // Nobody reads what the pool writes: the pipe fills and the rest waits in the outbox.
    conn.outbox.post(0, &vec![1u8; 8 << 20]).expect("posted");
    let started = Instant::now();
    let peer = super::super::link::RemotePeer {
        conn: Arc::clone(&conn),
        bell: Arc::new(Condvar::new()),
        slot: 1,
        pid: 42,
    };
    crate::transport::Peer::kill(&peer);
    assert!(started.elapsed() < Duration::from_secs(1));
    conn.lose("test over".into());
}

/// A sink that records what it is handed: each frame's bytes, a run as `R<job>:<count>`, and
/// its end as `end`; it may take long over the first message.
#[derive(Debug, Default)]
struct Record {
    got: Mutex<Vec<String>>,
    on_reader: Mutex<Vec<bool>>,
    first_takes: Option<Duration>,
}

impl Sink for Record {
    fn arrived(&self, incoming: Result<Incoming<'_>, FrameError>) {
        let what = match incoming {
            Ok(Incoming::Frame(body)) => String::from_utf8_lossy(body).into_owned(),
            Ok(Incoming::Outcomes { job, count, .. }) => format!("R{job}:{count}"),
            Err(_) => "end".to_string(),
        };
        let mut got = lock(&self.got);
        if got.is_empty()
            && let Some(pause) = self.first_takes
        {
            std::thread::sleep(pause);
        }
        got.push(what);
        let name = std::thread::current().name().map(str::to_string);
        lock(&self.on_reader).push(name.as_deref() == Some("scripted-reader"));
    }
}

impl Record {
    fn got(&self) -> Vec<String> {
        lock(&self.got).clone()
    }
}

/// Worker `slot`'s link on `conn`, as `Remotes` makes it.
fn link_of(conn: &Arc<Conn>, slot: u32) -> super::super::link::RemoteLink {
    super::super::link::RemoteLink {
        conn: Arc::clone(conn),
        bell: Arc::new(Condvar::new()),
        slot,
        body: Vec::new(),
    }
}

/// Waits up to 10 s for `done` on what a sink got.
fn until_got(record: &Record, done: impl Fn(&[String]) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if done(&record.got()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn a_sink_gets_its_workers_messages_in_order_on_the_reader_and_its_end_once() {
    let (conn, mut agent, _to_agent) = scripted_named(Duration::from_secs(30));
    allot(&conn, 2);
    let record = Arc::new(Record::default());
    let mut link = link_of(&conn, 0);
    assert!(crate::transport::Link::deliver_to(
        &mut link,
        Some(record.clone())
    ));
    for (slot, body) in [(0u32, "a1"), (1, "b1"), (0, "a2"), (0, "a3"), (1, "b2")] {
        mux::write_message(&mut agent, slot, body.as_bytes()).expect("write");
    }
    let exited = Control::Exited {
        slot: 0,
        cause: ExitCause::Code(0),
        progress: None,
    };
    mux::write_message(&mut agent, CONTROL, &exited.encode()).expect("write");
    assert!(until_got(&record, |got| got.len() == 4));
    // The host lost after the end: the sink hears nothing more.
    drop(agent);
    assert!(until(&conn, |st| st.lost.is_some()));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(record.got(), ["a1", "a2", "a3", "end"]);
    assert!(
        lock(&record.on_reader).iter().all(|&r| r),
        "called on the reader"
    );
    let st = lock(&conn.state);
    assert!(frames_of(&st, 0).is_empty(), "nothing kept for recv");
    assert_eq!(frames_of(&st, 1), vec![b"b1".to_vec(), b"b2".to_vec()]);
}

#[test]
fn a_lost_host_ends_every_sink_and_a_sink_taken_away_hears_nothing_more() {
    let (conn, mut agent, _to_agent) = scripted_named(Duration::from_secs(30));
    allot(&conn, 3);
    let records: Vec<Arc<Record>> = (0..3).map(|_| Arc::new(Record::default())).collect();
    let mut links: Vec<_> = (0..3).map(|slot| link_of(&conn, slot)).collect();
    for (link, record) in links.iter_mut().zip(&records) {
        let sink: Arc<dyn Sink> = record.clone();
        assert!(crate::transport::Link::deliver_to(link, Some(sink)));
    }
    // Slot 2 is read by a thread again, as it is when its worker is retired.
    assert!(crate::transport::Link::deliver_to(&mut links[2], None));
    mux::write_message(&mut agent, 2, b"c1").expect("write");
    mux::write_message(&mut agent, 0, b"a1").expect("write");
    assert!(until_got(&records[0], |got| got.len() == 1));
    drop(agent);
    assert!(until(&conn, |st| st.lost.is_some()));
    assert!(until_got(&records[1], |got| got == ["end"]));
    assert!(until_got(&records[0], |got| got == ["a1", "end"]));
    assert!(records[2].got().is_empty());
    assert_eq!(frames_of(&lock(&conn.state), 2), vec![b"c1".to_vec()]);
    // A sink set on a link that ended is refused: its worker is taken for failed.
    assert!(!crate::transport::Link::deliver_to(
        &mut links[1],
        Some(records[1].clone())
    ));
}

#[test]
fn a_sink_that_takes_long_is_not_taken_for_a_silent_host() {
    let (conn, mut agent, _to_agent) = scripted_named(Duration::from_millis(300));
    allot(&conn, 1);
    let record = Arc::new(Record {
        first_takes: Some(Duration::from_millis(1500)),
        ..Record::default()
    });
    let mut link = link_of(&conn, 0);
    let sink: Arc<dyn Sink> = record.clone();
    assert!(crate::transport::Link::deliver_to(&mut link, Some(sink)));
    mux::write_message(&mut agent, 0, b"slow").expect("write");
    // While the reader is busy with the first, the agent goes on talking.
    for k in 0..12 {
        std::thread::sleep(Duration::from_millis(100));
        mux::write_message(&mut agent, 0, format!("m{k}").as_bytes()).expect("write");
    }
    assert!(until_got(&record, |got| got.len() == 13));
    assert!(
        lock(&conn.state).lost.is_none(),
        "{:?}",
        lock(&conn.state).lost
    );
    conn.lose("test over".into());
}
