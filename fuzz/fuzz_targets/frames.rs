//! Feeds arbitrary bytes to `FrameReader` and every frame parser.
//!
//! `cargo +nightly fuzz run frames` from the `fuzz` folder. The first input byte picks the frame
//! limit; the rest is the stream. The property test in `ppool/src/protocol/tests.rs` checks the
//! same promises with generated frames and runs on stable.

#![no_main]

// The frame layer is crate-private and pure std, so it is compiled straight into this crate.
#[allow(dead_code, unreachable_pub)]
#[rustfmt::skip]
#[path = "../../ppool/src/protocol.rs"]
mod protocol;

use libfuzzer_sys::fuzz_target;
use protocol::*;

/// What `FrameReader::read` reserves at most before the body arrives, plus slack.
const CAP_BOUND: usize = (16 << 20) + (64 << 10);

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let max = [DEFAULT_MAX_FRAME, 64, 4096, 1 << 20][usize::from(pick & 3)];
    let mut reader = FrameReader::new(stream, max);
    let mut body = Vec::new();
    let mut f = FrameBuf::default();
    loop {
        let (cap, len) = (body.capacity(), body.len());
        let r = reader.read(&mut body);
        assert!(body.capacity() <= cap.max(CAP_BOUND));
        match r {
            Ok(()) => {
                assert!(!body.is_empty() && body.len() <= max);
                exercise(&body, &mut f);
            }
            Err(FrameError::TooLarge { len: l, max: m }) => {
                assert!(l > max && m == max);
                assert_eq!((body.capacity(), body.len()), (cap, len));
                break;
            }
            Err(_) => break,
        }
    }
    // The parsers also see the stream itself as a body.
    exercise(stream, &mut f);
});

/// Runs every parser; whatever parses must re-encode to the same bytes.
fn exercise(body: &[u8], f: &mut FrameBuf) {
    if let Ok(h) = Hello::parse(body) {
        h.write(f);
        assert_eq!(&f.finish()[4..], body);
    }
    if let Ok(r) = Ready::parse(body) {
        r.write(f);
        assert_eq!(&f.finish()[4..], body);
    }
    if let Ok(h) = TasksHeader::read(body) {
        assert_eq!(h.encode()[..], body[..TasksHeader::LEN]);
    }
    if let Ok(mut t) = Tasks::parse(body) {
        for _ in 0..t.count {
            if t.next_args().is_err() {
                break;
            }
        }
    }
    if let Ok((header, raw)) = ResultsHeader::parse(body) {
        let r = Results::from_parts(header.count, header.busy_nanos, header.max_task_nanos, raw);
        let outcomes: Vec<_> = r.outcomes().collect();
        assert_eq!(outcomes.len(), header.count as usize);
        header.start(f);
        for o in &outcomes {
            write_outcome(f, o);
        }
        assert_eq!(&f.finish()[4..], body);
    }
    if let Ok(done) = parse_init_done(body) {
        if body[1] <= 1 {
            write_init_done(f, done.as_ref().err().map(String::as_str));
            assert_eq!(&f.finish()[4..], body);
        }
    }
    if let Ok((entry, args)) = parse_on_exit(body) {
        write_on_exit(f, entry, args);
        assert_eq!(&f.finish()[4..], body);
    }
    if let Ok(outcome) = parse_exited(body) {
        start_exited(f);
        write_outcome(f, &outcome);
        assert_eq!(&f.finish()[4..], body);
    }
}

fn write_outcome(f: &mut FrameBuf, o: &Outcome<'_>) {
    match *o {
        Outcome::Ok(v) => Outcome::write_ok(f, |out| {
            out.extend_from_slice(v);
            Ok::<(), ()>(())
        })
        .unwrap(),
        Outcome::Panicked {
            message,
            location,
            backtrace,
        } => Outcome::write_panicked_with(f, message, location, backtrace),
        Outcome::Codec { action, message } => Outcome::write_codec(f, action, message),
    }
}
