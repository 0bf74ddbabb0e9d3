//! A host's reader and heartbeat driven by a scripted agent: a thread that writes the agent's
//! side of the stream into a pipe, message by message, with a real process (`sleep`) standing
//! in for the launcher. No agent and no worker run.

use super::*;
use std::io::Write;

/// A connection to a scripted agent: the conn, the writer for the agent's side, and the
/// reader of what the pool writes to the agent.
fn scripted(host_timeout: Duration) -> (Arc<Conn>, std::io::PipeWriter, std::io::PipeReader) {
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
    ));
    let (from_agent_r, from_agent_w) = std::io::pipe().expect("pipe");
    let (ready_tx, _ready_rx) = mpsc::channel();
    let reader = Arc::clone(&conn);
    std::thread::spawn(move || read_agent(&reader, from_agent_r, 1 << 20, &ready_tx));
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
    // The launcher was stopped and reaped.
    assert!(lock(&conn.launcher).try_wait().ok().flatten().is_some());
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
