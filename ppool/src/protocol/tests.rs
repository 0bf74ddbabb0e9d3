//! Tests of the frame layer: every message round trips, every malformed input is refused, and a
//! property test feeds random and mutated frames to the reader and every parser.
//!
//! The property test runs `PPOOL_FUZZ_ITERS` iterations (by default as many as take about a
//! second in a debug build) from the seed `PPOOL_FUZZ_SEED` (by default a fixed one), e.g.
//! `PPOOL_FUZZ_ITERS=5000000 cargo test -p ppool --release --lib protocol -- --nocapture`.

#![allow(clippy::unwrap_used)]

use super::*;
use std::convert::Infallible;
use std::io::Cursor;
use std::io::Write;
use std::time::Instant;

/// What `FrameReader::read` reserves at most before the body arrives.
const RESERVE_CAP: usize = 16 << 20;
/// The most a body buffer may hold after reading streams of a few KiB.
const CAP_BOUND: usize = RESERVE_CAP + (64 << 10);

// ---------------------------------------------------------------------------------------------
// Helpers

type Parser = fn(&[u8]) -> Result<(), FrameError>;

fn start_tasks(f: &mut FrameBuf, job: u64, count: u32) {
    TasksHeader::new(job, count).start(f);
}

fn set_count(f: &mut FrameBuf, count: u32) {
    let mut header = TasksHeader::read(f.body_mut()).unwrap();
    header.count = count;
    header.store(f.body_mut());
}

fn stamp_job(frame: &mut [u8], job: u64) {
    let mut header = TasksHeader::read(&frame[4..]).unwrap();
    header.job = job;
    header.store(&mut frame[4..]);
}

fn start_results(f: &mut FrameBuf, job: u64, count: u32) {
    ResultsHeader {
        more: false,
        ..ResultsHeader::run(job, count)
    }
    .start(f);
}

fn patch_results(f: &mut FrameBuf, patch: impl FnOnce(&mut ResultsHeader)) {
    let mut header = ResultsHeader::read(f.body_mut()).unwrap();
    patch(&mut header);
    header.store(f.body_mut());
}

fn set_busy(f: &mut FrameBuf, nanos: u64) {
    patch_results(f, |h| h.busy_nanos = nanos);
}

fn set_max_task(f: &mut FrameBuf, nanos: u64) {
    patch_results(f, |h| h.max_task_nanos = nanos);
}

/// A RESULTS body parsed: its header and a view of its outcomes.
#[derive(Debug)]
struct Parsed<'a> {
    job: u64,
    count: u32,
    busy_nanos: u64,
    max_task_nanos: u64,
    more: bool,
    raw: &'a [u8],
}

impl<'a> Parsed<'a> {
    fn outcomes(&self) -> Outcomes<'a> {
        Results::from_parts(self.count, self.busy_nanos, self.max_task_nanos, self.raw).outcomes()
    }
}

fn parse_results(body: &[u8]) -> Result<Parsed<'_>, FrameError> {
    let (h, raw) = ResultsHeader::parse(body)?;
    Ok(Parsed {
        job: h.job,
        count: h.count,
        busy_nanos: h.busy_nanos,
        max_task_nanos: h.max_task_nanos,
        more: h.more,
        raw,
    })
}

fn frame(build: impl FnOnce(&mut FrameBuf)) -> Vec<u8> {
    let mut f = FrameBuf::default();
    build(&mut f);
    f.take()
}

/// The body of a finished frame, checking that its header is right.
fn body(frame: &[u8]) -> &[u8] {
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4, "header of {frame:?}");
    &frame[4..]
}

/// Frames a body with a correct header.
fn reframe(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn fill(bytes: &[u8]) -> impl FnOnce(&mut Vec<u8>) -> Result<(), Infallible> + '_ {
    move |out| {
        out.extend_from_slice(bytes);
        Ok(())
    }
}

/// Parses an INIT body the way the worker does.
fn parse_init(body: &[u8]) -> Result<(&str, &[u8]), FrameError> {
    let mut r = Fields::new(body);
    if r.u8("kind")? != kind::INIT {
        return Err(malformed("expected INIT"));
    }
    let name = r.str("initializer name")?;
    let args = r.bytes("initializer arguments")?;
    r.end()?;
    Ok((name, args))
}

#[track_caller]
fn malformed_msg<T: std::fmt::Debug>(r: Result<T, FrameError>) -> String {
    match r {
        Err(FrameError::Malformed(m)) => m,
        other => panic!("expected a malformed-frame error, got {other:?}"),
    }
}

#[track_caller]
fn assert_malformed<T: std::fmt::Debug>(r: Result<T, FrameError>, needle: &str) {
    let m = malformed_msg(r);
    assert!(m.contains(needle), "{m:?} does not mention {needle:?}");
}

#[track_caller]
fn assert_eof(r: Result<(), FrameError>) {
    match r {
        Err(FrameError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}"),
        other => panic!("expected an unexpected-EOF error, got {other:?}"),
    }
}

/// Reads frames until an error; returns the bodies and the error.
fn read_all<R: Read>(r: R, max: usize) -> (Vec<Vec<u8>>, FrameError) {
    let mut reader = FrameReader::new(r, max);
    let mut body = Vec::new();
    let mut bodies = Vec::new();
    loop {
        match reader.read(&mut body) {
            Ok(()) => bodies.push(body.clone()),
            Err(e) => return (bodies, e),
        }
    }
}

/// Serves its data a few bytes at a time, with `Interrupted` errors in between.
#[derive(Debug)]
struct Trickle<'a> {
    data: &'a [u8],
    rng: Rng,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rng.chance(4) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = (1 + self.rng.below(7)).min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Serves a frame header in one read, then up to `limit` bytes of filler, counting them.
#[derive(Debug)]
struct Flood {
    header: [u8; 4],
    header_sent: bool,
    limit: u64,
    flooded: u64,
}

impl Flood {
    fn new(len: u32, limit: u64) -> Self {
        Flood {
            header: len.to_le_bytes(),
            header_sent: false,
            limit,
            flooded: 0,
        }
    }
}

impl Read for Flood {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.header_sent {
            self.header_sent = true;
            buf[..4].copy_from_slice(&self.header);
            return Ok(4);
        }
        let n = (buf.len() as u64).min(self.limit - self.flooded) as usize;
        buf[..n].fill(0xa5);
        self.flooded += n as u64;
        Ok(n)
    }
}

/// One frame of every message kind; the tests below index into it.
fn sample_frames() -> Vec<Vec<u8>> {
    vec![
        // 0
        frame(|f| {
            Hello {
                build_id: 1,
                token: 2,
                worker: 3,
                pool: "pool",
                entry: "entry",
                trace: 3,
            }
            .write(f)
        }),
        // 1
        frame(|f| {
            Ready::Ok {
                build_id: 1,
                token: 2,
                pid: 3,
            }
            .write(f)
        }),
        // 2
        frame(|f| Ready::Refused("no such entry").write(f)),
        // 3
        frame(|f| write_init(f, "init", b"args")),
        // 4
        frame(|f| write_init_done(f, None)),
        // 5
        frame(|f| write_init_done(f, Some("it failed"))),
        // 6
        frame(|f| {
            start_tasks(f, 5, 0);
            f.block(fill(b"one")).unwrap();
            f.block(fill(b"")).unwrap();
            set_count(f, 2);
        }),
        // 7
        frame(|f| {
            start_results(f, 5, 3);
            Outcome::write_ok(f, fill(b"value")).unwrap();
            Outcome::write_panicked(f, "boom", "here");
            Outcome::write_codec(f, "decode", "bad");
            set_busy(f, 77);
            set_max_task(f, 70);
        }),
        // 8
        frame(write_exit),
        // 9
        frame(|f| write_on_exit(f, "goodbye", b"\x01\x02")),
        // 10
        frame(|f| {
            start_exited(f);
            Outcome::write_panicked(f, "exit hook panicked", "src/main.rs:3:5");
        }),
    ]
}

// ---------------------------------------------------------------------------------------------
// Round trips

#[test]
fn hello_round_trips() {
    for (pool, entry) in [("", ""), ("pool", "my_crate::work"), ("ünïcødé 𝄞", "\0")] {
        let hello = Hello {
            build_id: 0xdead_beef_0123_4567,
            token: u64::MAX,
            worker: u32::MAX,
            pool,
            entry,
            trace: 3,
        };
        let fr = frame(|f| hello.write(f));
        assert_eq!(fr[4], kind::HELLO);
        assert_eq!(fr[5..9], MAGIC);
        assert_eq!(Hello::parse(body(&fr)).unwrap(), hello);
    }
}

#[test]
fn ready_round_trips() {
    for ready in [
        Ready::Ok {
            build_id: 0,
            token: u64::MAX,
            pid: 4242,
        },
        Ready::Refused(""),
        Ready::Refused("the worker binary is of another build ✗"),
    ] {
        let fr = frame(|f| ready.write(f));
        assert_eq!(Ready::parse(body(&fr)).unwrap(), ready);
    }
}

#[test]
fn tasks_round_trip() {
    let args: Vec<Vec<u8>> = vec![vec![], vec![1], (0..=255).collect(), vec![0xff; 70_000]];
    let mut f = FrameBuf::default();
    start_tasks(&mut f, 0, 0);
    for a in &args {
        f.block(fill(a)).unwrap();
    }
    // A failing block leaves the frame as it was.
    let len = f.len();
    let failed = f.block(|out| {
        out.extend_from_slice(b"partial");
        Err("cannot encode")
    });
    assert_eq!(failed.err(), Some("cannot encode"));
    assert_eq!(f.len(), len);
    set_count(&mut f, args.len() as u32);
    let mut fr = f.take();
    stamp_job(&mut fr, 0x0102_0304_0506_0708);
    assert_eq!(
        TasksHeader::read(body(&fr)).unwrap(),
        TasksHeader {
            job: 0x0102_0304_0506_0708,
            count: 4,
            flags: 0,
            entry: POOL_ENTRY
        }
    );
    assert_eq!(
        fr[4..4 + TasksHeader::LEN],
        TasksHeader::read(body(&fr)).unwrap().encode()
    );

    let mut tasks = Tasks::parse(body(&fr)).unwrap();
    assert_eq!((tasks.job, tasks.count), (0x0102_0304_0506_0708, 4));
    for a in &args {
        assert_eq!(tasks.next_args().unwrap(), &a[..]);
    }
    tasks.fields.end().unwrap();
    assert_malformed(tasks.next_args(), "task arguments");

    // No tasks at all.
    let fr = frame(|f| start_tasks(f, 9, 0));
    let tasks = Tasks::parse(body(&fr)).unwrap();
    assert_eq!((tasks.job, tasks.count), (9, 0));
    tasks.fields.end().unwrap();
}

#[test]
fn results_round_trip() {
    let mut f = FrameBuf::default();
    start_results(&mut f, 9, 5);
    Outcome::write_ok(&mut f, fill(b"value")).unwrap();
    Outcome::write_panicked(&mut f, "boom", "src/lib.rs:1:1");
    // A failed `write_ok` leaves nothing behind, not even its tag.
    let len = f.len();
    let failed = Outcome::write_ok(&mut f, |out| {
        out.extend_from_slice(b"partial");
        Err("nope")
    });
    assert_eq!(failed, Err("nope"));
    assert_eq!(f.len(), len);
    Outcome::write_codec(&mut f, "decode the arguments", "unexpected end of input");
    // What the worker does when the entry panics halfway through writing its value.
    let at = f.len();
    Outcome::write_ok(&mut f, fill(b"half")).unwrap();
    f.truncate(at);
    Outcome::write_panicked(&mut f, "", "");
    Outcome::write_ok(&mut f, fill(&[0u8; 100_000])).unwrap();
    set_busy(&mut f, 123_456_789);
    set_max_task(&mut f, u64::MAX);
    let fr = f.take();

    let results = parse_results(body(&fr)).unwrap();
    assert_eq!(
        (
            results.job,
            results.count,
            results.busy_nanos,
            results.max_task_nanos
        ),
        (9, 5, 123_456_789, u64::MAX)
    );
    let outcomes: Vec<_> = results.outcomes().collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Ok(b"value"),
            Outcome::Panicked {
                message: "boom",
                location: "src/lib.rs:1:1",
                backtrace: ""
            },
            Outcome::Codec {
                action: "decode the arguments",
                message: "unexpected end of input"
            },
            Outcome::Panicked {
                message: "",
                location: "",
                backtrace: ""
            },
            Outcome::Ok(&[0u8; 100_000]),
        ]
    );
    // The iterator can be restarted.
    assert_eq!(results.outcomes().count(), 5);

    let fr = frame(|f| start_results(f, 1, 0));
    let results = parse_results(body(&fr)).unwrap();
    assert_eq!((results.busy_nanos, results.max_task_nanos), (0, 0));
    assert_eq!(results.outcomes().next(), None);
}

#[test]
fn init_init_done_on_exit_exited_and_exit_round_trip() {
    let fr = frame(|f| write_init(f, "setup", &[0, 1, 2]));
    assert_eq!(parse_init(body(&fr)).unwrap(), ("setup", &[0u8, 1, 2][..]));
    let fr = frame(|f| write_init(f, "", &[]));
    assert_eq!(parse_init(body(&fr)).unwrap(), ("", &[][..]));

    let fr = frame(|f| write_init_done(f, None));
    assert_eq!(parse_init_done(body(&fr)).unwrap(), Ok(()));
    for why in ["", "initializer `setup` panicked: no ☕"] {
        let fr = frame(|f| write_init_done(f, Some(why)));
        assert_eq!(parse_init_done(body(&fr)).unwrap(), Err(why.to_string()));
    }

    let fr = frame(|f| write_on_exit(f, "flush", &[9; 300]));
    assert_eq!(
        parse_on_exit(body(&fr)).unwrap(),
        ("flush", &[9u8; 300][..])
    );

    let exited = [
        Outcome::Ok(b"done"),
        Outcome::Panicked {
            message: "m",
            location: "l",
            backtrace: "0: main\n1: start",
        },
        Outcome::Codec {
            action: "encode the result",
            message: "too deep",
        },
    ];
    for outcome in exited {
        let fr = frame(|f| {
            start_exited(f);
            match outcome {
                Outcome::Ok(v) => Outcome::write_ok(f, fill(v)).unwrap(),
                Outcome::Panicked {
                    message,
                    location,
                    backtrace,
                } => Outcome::write_panicked_with(f, message, location, backtrace),
                Outcome::Codec { action, message } => Outcome::write_codec(f, action, message),
            }
        });
        assert_eq!(parse_exited(body(&fr)).unwrap(), outcome);
    }

    let fr = frame(write_exit);
    assert_eq!(body(&fr), [kind::EXIT]);
}

#[test]
fn frame_buf_reuse_discards_the_previous_frame() {
    let mut f = FrameBuf::default();
    write_init(&mut f, "a long entry name", &[7; 100]);
    let first = f.finish().to_vec();
    write_exit(&mut f);
    assert_eq!(f.finish(), [1, 0, 0, 0, kind::EXIT]);
    assert_eq!(f.len(), 5);
    write_init(&mut f, "a long entry name", &[7; 100]);
    assert_eq!(f.take(), first);
}

#[test]
fn back_to_back_frames_through_slices_cursors_and_trickles() {
    let frames = sample_frames();
    let stream = frames.concat();
    let expect: Vec<Vec<u8>> = frames.iter().map(|f| body(f).to_vec()).collect();

    let (bodies, end) = read_all(&stream[..], DEFAULT_MAX_FRAME);
    assert_eq!(bodies, expect);
    assert!(matches!(end, FrameError::Closed), "{end:?}");

    let (bodies, end) = read_all(Cursor::new(stream.clone()), 1024);
    assert_eq!(bodies, expect);
    assert!(matches!(end, FrameError::Closed), "{end:?}");

    for seed in 1..20 {
        let trickle = Trickle {
            data: &stream,
            rng: Rng::new(seed),
        };
        let (bodies, end) = read_all(trickle, DEFAULT_MAX_FRAME);
        assert_eq!(bodies, expect);
        assert!(matches!(end, FrameError::Closed), "{end:?}");
    }

    // Every body parses as what it is.
    assert!(Hello::parse(&bodies[0]).is_ok());
    assert!(matches!(Ready::parse(&bodies[1]), Ok(Ready::Ok { .. })));
    assert!(matches!(Ready::parse(&bodies[2]), Ok(Ready::Refused(_))));
    assert!(parse_init(&bodies[3]).is_ok());
    assert_eq!(parse_init_done(&bodies[4]).unwrap(), Ok(()));
    assert!(parse_init_done(&bodies[5]).unwrap().is_err());
    assert_eq!(Tasks::parse(&bodies[6]).unwrap().count, 2);
    assert_eq!(parse_results(&bodies[7]).unwrap().outcomes().count(), 3);
    assert_eq!(bodies[8], [kind::EXIT]);
    assert!(parse_on_exit(&bodies[9]).is_ok());
    assert!(parse_exited(&bodies[10]).is_ok());

    // Closed stays closed.
    let mut reader = FrameReader::new(&stream[..], DEFAULT_MAX_FRAME);
    let mut body = Vec::new();
    for _ in &frames {
        reader.read(&mut body).unwrap();
    }
    for _ in 0..3 {
        assert!(matches!(reader.read(&mut body), Err(FrameError::Closed)));
    }
    assert!(reader.get_ref().is_empty());
}

#[test]
fn frames_cross_a_real_pipe() {
    let mut frames = sample_frames();
    // Larger than a pipe's buffer, so the writer blocks while the reader reads.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
    frames.push(frame(|f| {
        start_tasks(f, 1, 1);
        f.block(fill(&big)).unwrap();
    }));
    frames.extend(sample_frames());
    let (rx, mut tx) = io::pipe().unwrap();
    let sent = frames.clone();
    let writer = std::thread::spawn(move || {
        for f in &sent {
            tx.write_all(f).unwrap();
        }
        // Dropping `tx` closes the pipe.
    });
    let mut reader = FrameReader::new(rx, DEFAULT_MAX_FRAME);
    let mut body = Vec::new();
    for f in &frames {
        reader.read(&mut body).unwrap();
        assert!(body == f[4..]);
    }
    writer.join().unwrap();
    assert!(matches!(reader.read(&mut body), Err(FrameError::Closed)));
    let mut tasks = Tasks::parse(&frames[11][4..]).unwrap();
    assert_eq!(tasks.next_args().unwrap(), &big[..]);
}

#[test]
fn a_writer_dying_inside_a_frame_is_an_eof_error() {
    let fr = sample_frames().swap_remove(0);
    for cut in [2, 4, 9] {
        let (rx, mut tx) = io::pipe().unwrap();
        let part = fr[..cut].to_vec();
        let writer = std::thread::spawn(move || tx.write_all(&part).unwrap());
        let mut reader = FrameReader::new(rx, DEFAULT_MAX_FRAME);
        assert_eof(reader.read(&mut Vec::new()));
        writer.join().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals

#[test]
fn truncated_headers() {
    let mut body = Vec::new();
    let fr = frame(write_exit);
    assert!(matches!(
        FrameReader::new(&fr[..0], 100).read(&mut body),
        Err(FrameError::Closed)
    ));
    for cut in 1..4 {
        assert_eof(FrameReader::new(&fr[..cut], 100).read(&mut body));
    }
    // After a whole frame, too.
    let mut stream = fr.clone();
    stream.extend_from_slice(&fr[..2]);
    let mut reader = FrameReader::new(&stream[..], 100);
    reader.read(&mut body).unwrap();
    assert_eof(reader.read(&mut body));
}

#[test]
fn truncated_bodies() {
    let mut body = Vec::new();
    let mut claims_10_has_3 = 10u32.to_le_bytes().to_vec();
    claims_10_has_3.extend_from_slice(&[kind::EXIT, 0, 0]);
    match FrameReader::new(&claims_10_has_3[..], 100).read(&mut body) {
        Err(FrameError::Io(e)) => {
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            assert!(e.to_string().contains("3 of 10"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    for fr in sample_frames() {
        for cut in 4..fr.len() {
            assert_eof(FrameReader::new(&fr[..cut], DEFAULT_MAX_FRAME).read(&mut body));
        }
    }
}

#[test]
fn oversize_frames_are_refused_before_reading_or_allocating() {
    for (len, max) in [
        (1025u32, 1024usize),
        (u32::MAX, DEFAULT_MAX_FRAME),
        (u32::MAX, u32::MAX as usize - 1),
        ((DEFAULT_MAX_FRAME + 1) as u32, DEFAULT_MAX_FRAME),
        (17, 16),
        (1, 0),
    ] {
        let mut flood = Flood::new(len, u64::MAX);
        let mut body = b"previous".to_vec();
        let mut reader = FrameReader::new(&mut flood, max);
        let e = reader.read(&mut body).unwrap_err();
        drop(reader);
        let FrameError::TooLarge { len: l, max: m } = e else {
            panic!("{e:?}")
        };
        assert_eq!((l, m), (len as usize, max));
        let shown = e.to_string();
        assert!(
            shown.contains(&len.to_string()) && shown.contains(&max.to_string()),
            "{shown}"
        );
        assert_eq!(
            flood.flooded, 0,
            "read past the header of an oversize frame"
        );
        assert_eq!(body, b"previous", "the body was touched");
        assert_eq!(body.capacity(), 8);
    }

    // Exactly the limit is fine.
    let mut stream = 16u32.to_le_bytes().to_vec();
    stream.extend_from_slice(&[kind::EXIT; 16]);
    let mut body = Vec::new();
    FrameReader::new(&stream[..], 16).read(&mut body).unwrap();
    assert_eq!(body, [kind::EXIT; 16]);
}

#[test]
fn a_lying_header_within_the_limit_reserves_a_bounded_amount() {
    for (len, arrives) in [
        (DEFAULT_MAX_FRAME as u32, 0u64),
        (DEFAULT_MAX_FRAME as u32, 1 << 20),
        (u32::MAX, 100),
        ((RESERVE_CAP + 1) as u32, RESERVE_CAP as u64),
    ] {
        let mut flood = Flood::new(len, arrives);
        let mut body = Vec::new();
        let mut reader = FrameReader::new(&mut flood, u32::MAX as usize);
        let r = reader.read(&mut body);
        drop(reader);
        match r {
            Err(FrameError::Io(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
                assert!(
                    e.to_string().contains(&format!("{arrives} of {len}")),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(flood.flooded, arrives);
        assert_eq!(body.len() as u64, arrives);
        assert!(
            body.capacity() <= RESERVE_CAP,
            "a header claiming {len} bytes, of which {arrives} arrived, grew the buffer to {}",
            body.capacity()
        );
    }
}

#[test]
fn zero_length_frames_are_refused_and_the_stream_stays_in_step() {
    let mut stream = vec![0, 0, 0, 0];
    stream.extend(frame(write_exit));
    let mut reader = FrameReader::new(&stream[..], 100);
    let mut body = Vec::new();
    assert_malformed(reader.read(&mut body), "empty frame");
    reader.read(&mut body).unwrap();
    assert_eq!(body, [kind::EXIT]);
}

#[test]
fn read_errors_are_passed_on() {
    #[derive(Debug)]
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("the disk is on fire"))
        }
    }
    match FrameReader::new(Broken, 100).read(&mut Vec::new()) {
        Err(FrameError::Io(e)) => assert_eq!(e.to_string(), "the disk is on fire"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_magic_and_version() {
    let frames = sample_frames();
    let checks: [(&[u8], Parser); 2] = [
        (&frames[0], |b| Hello::parse(b).map(drop)),
        (&frames[1], |b| Ready::parse(b).map(drop)),
    ];
    for (fr, parse) in checks {
        let good = body(fr);
        parse(good).unwrap();
        for at in 1..5 {
            let mut bad = good.to_vec();
            bad[at] ^= 0x20;
            assert_malformed(parse(&bad), "bad magic");
        }
        for version in [0, PROTOCOL_VERSION + 1, u32::MAX] {
            let mut bad = good.to_vec();
            bad[5..9].copy_from_slice(&version.to_le_bytes());
            assert_malformed(parse(&bad), &format!("version {version}"));
        }
    }
}

#[test]
fn wrong_kinds_and_empty_bodies() {
    let parsers: [(&[u8], Parser); 8] = [
        (&[kind::HELLO], |b| Hello::parse(b).map(drop)),
        (&[kind::READY, kind::REFUSE], |b| Ready::parse(b).map(drop)),
        (&[kind::TASKS], |b| Tasks::parse(b).map(drop)),
        (&[kind::RESULTS], |b| parse_results(b).map(drop)),
        (&[kind::INIT_DONE], |b| parse_init_done(b).map(drop)),
        (&[kind::INIT], |b| parse_init(b).map(drop)),
        (&[kind::ON_EXIT], |b| parse_on_exit(b).map(drop)),
        (&[kind::EXITED], |b| parse_exited(b).map(drop)),
    ];
    let frames = sample_frames();
    for (kinds, parse) in parsers {
        assert!(parse(&[]).is_err());
        for fr in &frames {
            let b = body(fr);
            if kinds.contains(&b[0]) {
                parse(b).unwrap();
            } else {
                malformed_msg(parse(b));
            }
            // The kind byte alone is never enough.
            malformed_msg(parse(&b[..1]));
        }
        for k in [0, 6, 10, 16, 200, 255] {
            malformed_msg(parse(&[k; 40]));
            malformed_msg(parse(&[k]));
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let frames = sample_frames();
    let checks: [(usize, Parser); 9] = [
        (0, |b| Hello::parse(b).map(drop)),
        (1, |b| Ready::parse(b).map(drop)),
        (2, |b| Ready::parse(b).map(drop)),
        (3, |b| parse_init(b).map(drop)),
        (4, |b| parse_init_done(b).map(drop)),
        (5, |b| parse_init_done(b).map(drop)),
        (7, |b| parse_results(b).map(drop)),
        (9, |b| parse_on_exit(b).map(drop)),
        (10, |b| parse_exited(b).map(drop)),
    ];
    for (i, parse) in checks {
        for extra in [&[0u8][..], &[1, 2, 3, 4, 5, 6, 7, 8, 9]] {
            let mut b = body(&frames[i]).to_vec();
            b.extend_from_slice(extra);
            assert_malformed(parse(&b), "unexpected bytes at the end");
        }
    }
    // TASKS leaves the end to its reader: `Tasks::parse` and `next_args` accept trailing bytes,
    // and only `fields.end()` notices them.
    let mut b = body(&frames[6]).to_vec();
    b.push(0);
    let mut tasks = Tasks::parse(&b).unwrap();
    for _ in 0..tasks.count {
        tasks.next_args().unwrap();
    }
    assert_malformed(tasks.fields.end(), "1 unexpected bytes");
}

#[test]
fn strings_must_be_utf8() {
    let bad = [0x66, 0xff, 0x6f];
    let mut f = FrameBuf::default();

    f.start(kind::HELLO).buf.extend_from_slice(&MAGIC);
    f.u32(PROTOCOL_VERSION).u64(1).u64(2).u32(3);
    f.bytes(&bad).str("entry");
    assert_malformed(Hello::parse(&f.take()[4..]), "pool name: not UTF-8");

    f.start(kind::HELLO).buf.extend_from_slice(&MAGIC);
    f.u32(PROTOCOL_VERSION).u64(1).u64(2).u32(3);
    f.str("pool").bytes(&[0xc3]);
    assert_malformed(Hello::parse(&f.take()[4..]), "entry name: not UTF-8");

    f.start(kind::REFUSE).bytes(&bad);
    assert_malformed(Ready::parse(&f.take()[4..]), "reason: not UTF-8");

    f.start(kind::INIT_DONE).u8(1).bytes(&bad);
    assert_malformed(parse_init_done(&f.take()[4..]), "failure: not UTF-8");

    f.start(kind::INIT).bytes(&bad).bytes(&[]);
    assert_malformed(parse_init(&f.take()[4..]), "initializer name: not UTF-8");

    f.start(kind::ON_EXIT).bytes(&bad).bytes(&[]);
    assert_malformed(parse_on_exit(&f.take()[4..]), "exit entry: not UTF-8");

    for (tag, first_bad, needle) in [
        (OUTCOME_PANICKED, true, "panic message: not UTF-8"),
        (OUTCOME_PANICKED, false, "panic location: not UTF-8"),
        (OUTCOME_CODEC, true, "codec action: not UTF-8"),
        (OUTCOME_CODEC, false, "codec message: not UTF-8"),
    ] {
        let outcome = |f: &mut FrameBuf| {
            f.u8(tag);
            if first_bad {
                f.bytes(&bad).str("ok");
            } else {
                f.str("ok").bytes(&bad);
            }
        };
        start_results(&mut f, 1, 1);
        outcome(&mut f);
        assert_malformed(parse_results(&f.take()[4..]), needle);
        start_exited(&mut f);
        outcome(&mut f);
        assert_malformed(parse_exited(&f.take()[4..]), needle);
    }
    // Values are bytes, not strings.
    start_results(&mut f, 1, 1);
    f.u8(OUTCOME_OK).bytes(&bad);
    parse_results(&f.take()[4..]).unwrap();
}

#[test]
fn results_count_must_match_the_outcomes() {
    let build = |count: u32, present: usize| {
        frame(|f| {
            start_results(f, 1, count);
            for _ in 0..present {
                Outcome::write_panicked(f, "m", "l");
            }
        })
    };
    parse_results(body(&build(2, 2))).unwrap();
    assert_malformed(parse_results(body(&build(3, 2))), "outcome tag");
    assert_malformed(parse_results(body(&build(u32::MAX, 2))), "outcome tag");
    assert_malformed(parse_results(body(&build(1, 2))), "unexpected bytes");
    assert_malformed(parse_results(body(&build(0, 1))), "unexpected bytes");
    // A header cut short.
    let fr = build(0, 0);
    for cut in 1..body(&fr).len() {
        malformed_msg(parse_results(&body(&fr)[..cut]));
    }
    // EXITED holds exactly one outcome.
    let fr = frame(start_exited);
    assert_malformed(parse_exited(body(&fr)), "outcome tag");
}

#[test]
fn unknown_outcome_tags_are_refused() {
    for tag in [3u8, 4, 127, 255] {
        let fr = frame(|f| {
            start_results(f, 1, 2);
            Outcome::write_ok(f, fill(b"x")).unwrap();
            f.u8(tag).str("a").str("b");
        });
        let needle = format!("unknown outcome tag {tag}");
        assert_malformed(parse_results(body(&fr)), &needle);
        let fr = frame(|f| {
            start_exited(f);
            f.u8(tag).str("a").str("b");
        });
        assert_malformed(parse_exited(body(&fr)), &needle);
    }
}

#[test]
fn inner_lengths_past_the_end_are_refused() {
    for claim in [1u32, 100, u32::MAX] {
        let fr = frame(|f| {
            f.start(kind::REFUSE).u32(claim);
        });
        assert_malformed(Ready::parse(body(&fr)), "reason: needs");
        let fr = frame(|f| {
            start_results(f, 1, 1);
            f.u8(OUTCOME_OK).u32(claim).u8(0).u8(0);
        });
        let wanted = if claim == 1 {
            "unexpected bytes"
        } else {
            "needs"
        };
        assert_malformed(parse_results(body(&fr)), wanted);
        let fr = frame(|f| {
            start_tasks(f, 1, 1);
            f.u32(claim);
        });
        let mut tasks = Tasks::parse(body(&fr)).unwrap();
        assert_malformed(tasks.next_args(), "task arguments: needs");
    }
    // A TASKS count above the tasks present fails on the first missing one.
    let fr = frame(|f| {
        start_tasks(f, 1, 3);
        f.block(fill(b"a")).unwrap();
    });
    let mut tasks = Tasks::parse(body(&fr)).unwrap();
    assert_eq!(tasks.next_args().unwrap(), b"a");
    assert_malformed(tasks.next_args(), "task arguments");
}

// ---------------------------------------------------------------------------------------------
// Property test

/// xorshift64*.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64, so that neighbouring seeds give unrelated streams and none is zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// In `0..n`; `n` > 0.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn u64(&mut self) -> u64 {
        match self.below(5) {
            0 => 0,
            1 => u64::MAX,
            2 => self.below(300) as u64,
            _ => self.next_u64(),
        }
    }

    fn u32(&mut self) -> u32 {
        self.u64() as u32
    }

    fn size(&mut self) -> usize {
        match self.below(10) {
            0 => 0,
            1 => self.below(4096),
            _ => self.below(24),
        }
    }

    fn bytes(&mut self) -> Vec<u8> {
        let n = self.size();
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    fn string(&mut self) -> String {
        const CHARS: [char; 10] = ['a', 'Z', '0', ' ', ':', '\0', '\n', 'é', '€', '𝄞'];
        let n = self.size().min(64);
        (0..n)
            .map(|_| {
                if self.chance(2) {
                    CHARS[self.below(CHARS.len())]
                } else {
                    char::from(b' ' + self.below(95) as u8)
                }
            })
            .collect()
    }
}

/// An owned message, to generate and compare.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    Hello {
        build_id: u64,
        token: u64,
        worker: u32,
        pool: String,
        entry: String,
    },
    Ready {
        build_id: u64,
        token: u64,
        pid: u32,
    },
    Refused(String),
    Tasks {
        job: u64,
        args: Vec<Vec<u8>>,
    },
    Results {
        job: u64,
        busy: u64,
        max_task: u64,
        outcomes: Vec<Out>,
    },
    Init {
        entry: String,
        args: Vec<u8>,
    },
    InitDone(Option<String>),
    OnExit {
        entry: String,
        args: Vec<u8>,
    },
    Exited(Out),
    Exit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Ok(Vec<u8>),
    Panicked(String, String),
    Codec(String, String),
}

impl Out {
    fn of(o: &Outcome<'_>) -> Self {
        match *o {
            Outcome::Ok(v) => Out::Ok(v.to_vec()),
            Outcome::Panicked {
                message, location, ..
            } => Out::Panicked(message.into(), location.into()),
            Outcome::Codec { action, message } => Out::Codec(action.into(), message.into()),
        }
    }

    fn random(rng: &mut Rng) -> Self {
        match rng.below(3) {
            0 => Out::Ok(rng.bytes()),
            1 => Out::Panicked(rng.string(), rng.string()),
            _ => Out::Codec(rng.string(), rng.string()),
        }
    }

    fn write(&self, f: &mut FrameBuf) {
        match self {
            Out::Ok(v) => Outcome::write_ok(f, fill(v)).unwrap(),
            Out::Panicked(m, l) => Outcome::write_panicked(f, m, l),
            Out::Codec(a, m) => Outcome::write_codec(f, a, m),
        }
    }
}

fn random_msg(rng: &mut Rng) -> Msg {
    let items = |rng: &mut Rng| {
        if rng.chance(8) {
            rng.below(40)
        } else {
            rng.below(4)
        }
    };
    match rng.below(11) {
        0 => Msg::Hello {
            build_id: rng.u64(),
            token: rng.u64(),
            worker: rng.u32(),
            pool: rng.string(),
            entry: rng.string(),
        },
        1 => Msg::Ready {
            build_id: rng.u64(),
            token: rng.u64(),
            pid: rng.u32(),
        },
        2 => Msg::Refused(rng.string()),
        3 => Msg::Tasks {
            job: rng.u64(),
            args: (0..items(rng)).map(|_| rng.bytes()).collect(),
        },
        4 => Msg::Results {
            job: rng.u64(),
            busy: rng.u64(),
            max_task: rng.u64(),
            outcomes: (0..items(rng)).map(|_| Out::random(rng)).collect(),
        },
        5 => Msg::Init {
            entry: rng.string(),
            args: rng.bytes(),
        },
        6 => Msg::InitDone(rng.chance(2).then(|| rng.string())),
        7 => Msg::OnExit {
            entry: rng.string(),
            args: rng.bytes(),
        },
        8 => Msg::Exited(Out::random(rng)),
        // TASKS and RESULTS are the frames that matter most.
        9 => Msg::Tasks {
            job: rng.u64(),
            args: (0..items(rng)).map(|_| rng.bytes()).collect(),
        },
        _ if rng.chance(2) => Msg::Exit,
        _ => Msg::Results {
            job: rng.u64(),
            busy: rng.u64(),
            max_task: rng.u64(),
            outcomes: (0..items(rng)).map(|_| Out::random(rng)).collect(),
        },
    }
}

/// Encodes with the writers under test.
fn encode(msg: &Msg, f: &mut FrameBuf) -> Vec<u8> {
    match msg {
        Msg::Hello {
            build_id,
            token,
            worker,
            pool,
            entry,
        } => Hello {
            build_id: *build_id,
            token: *token,
            worker: *worker,
            pool,
            entry,
            trace: 3,
        }
        .write(f),
        Msg::Ready {
            build_id,
            token,
            pid,
        } => Ready::Ok {
            build_id: *build_id,
            token: *token,
            pid: *pid,
        }
        .write(f),
        Msg::Refused(why) => Ready::Refused(why).write(f),
        Msg::Tasks { job, args } => {
            start_tasks(f, 0, 0);
            for a in args {
                f.block(fill(a)).unwrap();
            }
            set_count(f, args.len() as u32);
            let mut fr = f.finish().to_vec();
            stamp_job(&mut fr, *job);
            return fr;
        }
        Msg::Results {
            job,
            busy,
            max_task,
            outcomes,
        } => {
            start_results(f, *job, outcomes.len() as u32);
            for o in outcomes {
                o.write(f);
            }
            set_busy(f, *busy);
            set_max_task(f, *max_task);
        }
        Msg::Init { entry, args } => write_init(f, entry, args),
        Msg::InitDone(failure) => write_init_done(f, failure.as_deref()),
        Msg::OnExit { entry, args } => write_on_exit(f, entry, args),
        Msg::Exited(o) => {
            start_exited(f);
            o.write(f);
        }
        Msg::Exit => write_exit(f),
    }
    f.finish().to_vec()
}

/// Decodes a body strictly, as the message its kind byte names.
fn decode(body: &[u8]) -> Result<Msg, FrameError> {
    match *body.first().ok_or_else(|| malformed("empty"))? {
        kind::HELLO => {
            let h = Hello::parse(body)?;
            Ok(Msg::Hello {
                build_id: h.build_id,
                token: h.token,
                worker: h.worker,
                pool: h.pool.into(),
                entry: h.entry.into(),
            })
        }
        kind::READY | kind::REFUSE => Ok(match Ready::parse(body)? {
            Ready::Ok {
                build_id,
                token,
                pid,
            } => Msg::Ready {
                build_id,
                token,
                pid,
            },
            Ready::Refused(why) => Msg::Refused(why.into()),
        }),
        kind::TASKS => {
            let mut t = Tasks::parse(body)?;
            let mut args = Vec::new();
            for _ in 0..t.count {
                args.push(t.next_args()?.to_vec());
            }
            t.fields.end()?;
            Ok(Msg::Tasks { job: t.job, args })
        }
        kind::RESULTS => {
            let r = parse_results(body)?;
            Ok(Msg::Results {
                job: r.job,
                busy: r.busy_nanos,
                max_task: r.max_task_nanos,
                outcomes: r.outcomes().map(|o| Out::of(&o)).collect(),
            })
        }
        kind::INIT => {
            let (entry, args) = parse_init(body)?;
            Ok(Msg::Init {
                entry: entry.into(),
                args: args.into(),
            })
        }
        kind::INIT_DONE => Ok(Msg::InitDone(parse_init_done(body)?.err())),
        kind::ON_EXIT => {
            let (entry, args) = parse_on_exit(body)?;
            Ok(Msg::OnExit {
                entry: entry.into(),
                args: args.into(),
            })
        }
        kind::EXITED => Ok(Msg::Exited(Out::of(&parse_exited(body)?))),
        kind::EXIT if body.len() == 1 => Ok(Msg::Exit),
        k => Err(malformed(format!("kind {k}"))),
    }
}

#[derive(Debug, Default)]
struct Stats {
    mutated: u64,
    frames: u64,
    closed: u64,
    io: u64,
    too_large: u64,
    empty: u64,
    /// Bodies some parser accepted, per parser: HELLO, READY, TASKS, RESULTS, INIT_DONE, INIT,
    /// ON_EXIT, EXITED.
    parsed: [u64; 8],
    /// Bodies that no parser accepted.
    refused: u64,
    max_capacity: usize,
}

/// Runs every parser over `body`; checks that whatever parses re-encodes to the same bytes.
fn exercise(body: &[u8], f: &mut FrameBuf, stats: &mut Stats) {
    let before = stats.parsed.iter().sum::<u64>();
    if let Ok(h) = Hello::parse(body) {
        h.write(f);
        assert_eq!(&f.finish()[4..], body, "HELLO re-encodes differently");
        stats.parsed[0] += 1;
    }
    if let Ok(r) = Ready::parse(body) {
        r.write(f);
        assert_eq!(&f.finish()[4..], body, "READY re-encodes differently");
        stats.parsed[1] += 1;
    }
    if let Ok(mut t) = Tasks::parse(body) {
        assert_eq!(body[0], kind::TASKS);
        let mut complete = true;
        for _ in 0..t.count {
            if t.next_args().is_err() {
                complete = false;
                break;
            }
        }
        if complete && t.fields.end().is_ok() {
            stats.parsed[2] += 1;
        }
    }
    if let Ok(r) = parse_results(body) {
        let outcomes: Vec<_> = r.outcomes().collect();
        assert_eq!(outcomes.len(), r.count as usize, "RESULTS yields its count");
        start_results(f, r.job, r.count);
        for o in &outcomes {
            Out::of(o).write(f);
        }
        set_busy(f, r.busy_nanos);
        set_max_task(f, r.max_task_nanos);
        if r.more {
            patch_results(f, |h| h.more = true);
        }
        assert_eq!(&f.finish()[4..], body, "RESULTS re-encodes differently");
        stats.parsed[3] += 1;
    }
    if let Ok(done) = parse_init_done(body) {
        // Any non-zero status is a failure; only 1 is canonical.
        if body[1] <= 1 {
            write_init_done(f, done.as_ref().err().map(String::as_str));
            assert_eq!(&f.finish()[4..], body, "INIT_DONE re-encodes differently");
        }
        stats.parsed[4] += 1;
    }
    if let Ok((entry, args)) = parse_init(body) {
        write_init(f, entry, args);
        assert_eq!(&f.finish()[4..], body, "INIT re-encodes differently");
        stats.parsed[5] += 1;
    }
    if let Ok((entry, args)) = parse_on_exit(body) {
        write_on_exit(f, entry, args);
        assert_eq!(&f.finish()[4..], body, "ON_EXIT re-encodes differently");
        stats.parsed[6] += 1;
    }
    if let Ok(outcome) = parse_exited(body) {
        start_exited(f);
        Out::of(&outcome).write(f);
        assert_eq!(&f.finish()[4..], body, "EXITED re-encodes differently");
        stats.parsed[7] += 1;
    }
    if stats.parsed.iter().sum::<u64>() == before {
        stats.refused += 1;
    }
}

fn mutate(rng: &mut Rng, data: &mut Vec<u8>, max: usize) {
    const KINDS: [u8; 12] = [0, 1, 2, 3, 4, 5, 11, 12, 13, 14, 15, 255];
    for _ in 0..1 + rng.below(3) {
        let pos = |rng: &mut Rng, data: &Vec<u8>| rng.below(data.len().max(1));
        match rng.below(11) {
            0 if !data.is_empty() => {
                let p = pos(rng, data);
                data[p] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let p = pos(rng, data);
                data[p] = rng.next_u64() as u8;
            }
            2 => {
                let p = pos(rng, data);
                data.truncate(p);
            }
            3 => {
                let n = 1 + rng.below(16);
                data.extend((0..n).map(|_| rng.next_u64() as u8));
            }
            4 => {
                let p = pos(rng, data).min(data.len());
                data.insert(p, rng.next_u64() as u8);
            }
            5 if !data.is_empty() => {
                let p = pos(rng, data);
                data.remove(p);
            }
            6 | 7 if data.len() >= 4 => {
                // A length: the frame header, or any field.
                let p = if rng.chance(2) {
                    0
                } else {
                    rng.below(data.len() - 3)
                };
                let rest = (data.len() - p - 4) as u32;
                let len = match rng.below(10) {
                    0 => 0,
                    1 => rng.below(16) as u32,
                    2 => rest.wrapping_add(rng.below(5) as u32).wrapping_sub(2),
                    3 => max.min(u32::MAX as usize) as u32,
                    4 => max.saturating_add(1).min(u32::MAX as usize) as u32,
                    5 => u32::MAX,
                    6 => (RESERVE_CAP as u32)
                        .wrapping_add(rng.below(3) as u32)
                        .wrapping_sub(1),
                    7 => DEFAULT_MAX_FRAME as u32,
                    _ => rng.next_u64() as u32,
                };
                data[p..p + 4].copy_from_slice(&len.to_le_bytes());
            }
            8 if !data.is_empty() => {
                // A kind byte (that of the first frame, if `data` is a stream).
                let p = if data.len() > 4 && rng.chance(2) {
                    4
                } else {
                    0
                };
                data[p] = KINDS[rng.below(KINDS.len())];
            }
            9 if rng.chance(8) => {
                *data = (0..rng.size()).map(|_| rng.next_u64() as u8).collect();
            }
            _ if !data.is_empty() => {
                // Duplicate a slice somewhere.
                let a = pos(rng, data);
                let b = a + rng.below(data.len() - a + 1);
                let piece = data[a..b].to_vec();
                let at = pos(rng, data);
                data.splice(at..at, piece);
            }
            _ => {}
        }
    }
}

/// Reads frames off `src`, checking the reader's promises, and exercises every parser.
fn read_stream<R: Read>(
    src: R,
    max: usize,
    body: &mut Vec<u8>,
    f: &mut FrameBuf,
    stats: &mut Stats,
) -> (Vec<Result<Msg, String>>, FrameError) {
    let mut reader = FrameReader::new(src, max);
    let mut decoded = Vec::new();
    loop {
        let (cap_before, len_before) = (body.capacity(), body.len());
        let r = reader.read(body);
        assert!(
            body.capacity() <= cap_before.max(CAP_BOUND),
            "the body grew from {cap_before} to {} bytes",
            body.capacity()
        );
        stats.max_capacity = stats.max_capacity.max(body.capacity());
        match r {
            Ok(()) => {
                assert!(!body.is_empty() && body.len() <= max);
                stats.frames += 1;
                exercise(body, f, stats);
                decoded.push(decode(body).map_err(|e| e.to_string()));
            }
            Err(e) => {
                match &e {
                    FrameError::Closed => stats.closed += 1,
                    FrameError::Io(_) => stats.io += 1,
                    FrameError::Send(e) => panic!("a read failed as a write: {e}"),
                    FrameError::TooLarge { len, max: m } => {
                        assert!(*len > max && *m == max);
                        assert_eq!(
                            (body.capacity(), body.len()),
                            (cap_before, len_before),
                            "an oversize frame touched the body"
                        );
                        stats.too_large += 1;
                    }
                    FrameError::Malformed(_) => stats.empty += 1,
                }
                return (decoded, e);
            }
        }
    }
}

fn fuzz_one(rng: &mut Rng, f: &mut FrameBuf, reused: &mut Vec<u8>, stats: &mut Stats) {
    let msgs: Vec<Msg> = (0..1 + rng.below(3)).map(|_| random_msg(rng)).collect();
    let frames: Vec<Vec<u8>> = msgs.iter().map(|m| encode(m, f)).collect();
    let longest = frames.iter().map(|fr| fr.len() - 4).max().unwrap();
    let mutated = !rng.chance(4);
    let max = if mutated {
        [DEFAULT_MAX_FRAME, 1 << 20, 64, longest, longest - 1][rng.below(5)]
    } else {
        [DEFAULT_MAX_FRAME, longest][rng.below(2)]
    };
    let mut stream = if !mutated {
        frames.concat()
    } else if rng.chance(2) {
        // Mutate the stream as a whole, headers included.
        let mut s = frames.concat();
        mutate(rng, &mut s, max);
        s
    } else {
        // Mutate one body and give it a header that matches, so the parsers see it.
        let i = rng.below(frames.len());
        let mut b = frames[i][4..].to_vec();
        mutate(rng, &mut b, max);
        let mut s = Vec::new();
        for (j, fr) in frames.iter().enumerate() {
            if j == i {
                s.extend(reframe(&b));
            } else {
                s.extend_from_slice(fr);
            }
        }
        s
    };
    if mutated && rng.chance(32) {
        // A bare length header in front.
        let len = [0, 1, u32::MAX, max.min(u32::MAX as usize) as u32][rng.below(4)];
        stream.splice(0..0, len.to_le_bytes());
    }
    stats.mutated += u64::from(mutated);

    // Usually the buffer is reused, as the real readers do; sometimes it is fresh.
    let mut fresh = Vec::new();
    let body = if rng.chance(4) { &mut fresh } else { reused };
    let (decoded, end) = if rng.chance(4) {
        let trickle = Trickle {
            data: &stream,
            rng: Rng::new(rng.next_u64()),
        };
        read_stream(trickle, max, body, f, stats)
    } else {
        read_stream(&stream[..], max, body, f, stats)
    };

    if !mutated {
        let expect: Vec<Result<Msg, String>> = msgs.into_iter().map(Ok).collect();
        assert_eq!(decoded, expect, "valid frames did not parse back");
        assert!(matches!(end, FrameError::Closed), "{end:?}");
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().replace('_', "");
    Some(match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
        None => v.parse().unwrap(),
    })
}

#[test]
fn random_and_mutated_frames() {
    let default = if cfg!(debug_assertions) {
        60_000
    } else {
        500_000
    };
    let iterations = env_u64("PPOOL_FUZZ_ITERS").unwrap_or(default);
    let seed = env_u64("PPOOL_FUZZ_SEED").unwrap_or(0x5eed_f00d);
    let started = Instant::now();
    let mut f = FrameBuf::default();
    let mut reused = Vec::new();
    let mut stats = Stats::default();
    for i in 0..iterations {
        let mut rng = Rng::new(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fuzz_one(&mut rng, &mut f, &mut reused, &mut stats)
        }));
        if let Err(panic) = run {
            eprintln!(
                "the frame property failed at iteration {i}; rerun with \
                 PPOOL_FUZZ_SEED={seed:#x} PPOOL_FUZZ_ITERS={}",
                i + 1
            );
            std::panic::resume_unwind(panic);
        }
    }
    let mode = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "frame property: {iterations} iterations in {:.2?} ({mode}, seed {seed:#x}): {stats:?}",
        started.elapsed()
    );
    // The generator reaches every outcome.
    if iterations >= 10_000 {
        assert!(stats.closed > 0 && stats.io > 0 && stats.too_large > 0 && stats.empty > 0);
        assert!(stats.parsed.iter().all(|&n| n > 0), "{stats:?}");
        assert!(stats.refused > 0, "{stats:?}");
    }
}

#[test]
fn results_larger_than_a_frame_split_into_frames_within_it_and_merge_back() {
    let mut f = FrameBuf::default();
    start_results(&mut f, 7, 10);
    for k in 0..10u8 {
        Outcome::write_ok(&mut f, |out| {
            out.extend(std::iter::repeat_n(k, 1000));
            Ok::<(), ()>(())
        })
        .unwrap();
    }
    set_busy(&mut f, 123);
    set_max_task(&mut f, 45);
    let whole = f.finish().to_vec();
    assert!(
        split_results(&whole, whole.len()).is_none(),
        "a frame that fits stays whole"
    );
    let max = 2500;
    let parts = split_results(&whole, max).expect("split");
    assert_eq!(
        parts.len(),
        5,
        "two outcomes of 1006 bytes per 2500-byte frame"
    );
    let (mut count, mut raw) = (0, Vec::new());
    for (n, part) in parts.iter().enumerate() {
        assert!(part.len() - 4 <= max, "part {n} is within the limit");
        let r = parse_results(&part[4..]).unwrap();
        assert_eq!(r.job, 7);
        assert_eq!(r.more, n + 1 < parts.len());
        if r.more {
            assert_eq!(
                (r.busy_nanos, r.max_task_nanos),
                (0, 0),
                "timing comes last"
            );
        } else {
            assert_eq!((r.busy_nanos, r.max_task_nanos), (123, 45));
        }
        count += r.count;
        raw.extend_from_slice(r.raw);
    }
    let whole = parse_results(&whole[4..]).unwrap();
    assert_eq!(
        (count, &raw[..]),
        (whole.count, whole.raw),
        "the runs are the outcomes, in order"
    );
}

#[test]
fn outcomes_cut_into_runs_within_a_frame() {
    let mut f = FrameBuf::default();
    start_results(&mut f, 1, 3);
    for len in [10, 3000, 10] {
        Outcome::write_ok(&mut f, |out| {
            out.extend(std::iter::repeat_n(1u8, len));
            Ok::<(), ()>(())
        })
        .unwrap();
    }
    let fr = f.take();
    let r = parse_results(body(&fr)).unwrap();
    let runs = cut_outcomes(r.raw, 3, 100).unwrap();
    let counts: Vec<u32> = runs.iter().map(|(n, _)| *n).collect();
    assert_eq!(counts, [1, 1, 1], "the large one alone, in order");
    let joined: Vec<u8> = runs
        .iter()
        .flat_map(|(_, raw)| raw.iter().copied())
        .collect();
    assert_eq!(joined, r.raw);
    let runs = cut_outcomes(r.raw, 3, 1 << 20).unwrap();
    assert_eq!(runs, [(3, r.raw)], "all in one when they fit");
    assert!(
        cut_outcomes(r.raw, 2, 1 << 20).is_none(),
        "a count that does not match"
    );
    assert!(
        cut_outcomes(r.raw, 4, 1 << 20).is_none(),
        "a count that does not match"
    );
}

#[test]
fn an_outcome_too_large_for_any_frame_is_not_split() {
    let mut f = FrameBuf::default();
    start_results(&mut f, 1, 1);
    Outcome::write_ok(&mut f, |out| {
        out.extend([0u8; 3000]);
        Ok::<(), ()>(())
    })
    .unwrap();
    let whole = f.finish().to_vec();
    let parts = split_results(&whole, 2000).expect("split");
    assert_eq!(
        parts,
        vec![whole],
        "one outcome stays one frame; the worker bounds it"
    );
}
