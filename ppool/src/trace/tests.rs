use super::*;

fn record() -> Record {
    Record {
        level: 3,
        target: "app::load".into(),
        module_path: Some("app::load".into()),
        file: Some("src/load.rs".into()),
        line: Some(42),
        fields: vec![
            ("message".into(), Value::Debug("loaded 3 files".into())),
            ("count".into(), Value::U64(3)),
            (
                "error".into(),
                Value::Error(vec!["outer".into(), "inner".into()]),
            ),
        ],
        spans: vec![SpanRecord {
            name: "load".into(),
            target: "app".into(),
            level: 3,
            fields: vec![("dir".into(), Value::Str("/data\n".into()))],
        }],
        task: Some(("app::work".into(), 12)),
    }
}

#[test]
fn a_record_is_one_line_and_reads_back() {
    let r = record();
    let line = r.to_line().unwrap();
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    assert_eq!(line.last(), Some(&b'\n'));
    let mut text = b"partial output ".to_vec();
    text.extend_from_slice(&line);
    let (before, hex) = split_marked(&text).unwrap();
    assert_eq!(before, b"partial output ");
    assert_eq!(Record::from_hex(hex), Some(r));
}

#[test]
fn bad_records_are_not_records() {
    assert!(split_marked(b"an ordinary line\n").is_none());
    assert_eq!(Record::from_hex(b"abc"), None, "odd length");
    assert_eq!(Record::from_hex(b"zz"), None, "not hex");
    assert_eq!(Record::from_hex(b"00ff"), None, "not a record");
}

#[test]
fn levels_map_both_ways() {
    use tracing::Level;
    for level in [
        Level::ERROR,
        Level::WARN,
        Level::INFO,
        Level::DEBUG,
        Level::TRACE,
    ] {
        assert_eq!(level_of(level_byte(level)), Some(level));
    }
    assert_eq!(level_of(0), None);
    assert_eq!(filter_byte(tracing::level_filters::LevelFilter::OFF), 0);
    assert_eq!(filter_byte(tracing::level_filters::LevelFilter::DEBUG), 4);
}

#[test]
fn a_record_too_large_for_a_line_is_cut_down_to_fit() {
    let mut r = record();
    r.fields
        .push(("blob".into(), Value::Str("é".repeat(200_000))));
    r.spans[0]
        .fields
        .push(("big".into(), Value::Debug("x".repeat(100_000))));
    let line = r.to_line().unwrap();
    assert!(line.len() < 64 * 1024, "{}", line.len());
    let (_, hex) = split_marked(&line).unwrap();
    let back = Record::from_hex(hex).unwrap();
    let (_, blob) = back.fields.iter().find(|(n, _)| n == "blob").unwrap();
    let Value::Str(blob) = blob else {
        panic!("{blob:?}")
    };
    assert!(
        blob.ends_with("more bytes not forwarded)"),
        "{}",
        &blob[blob.len() - 60..]
    );
    assert_eq!(back.fields[0], r.fields[0], "the message is whole");

    // more fields than fit, each short: only the message is left
    let mut many = record();
    for i in 0..3000 {
        many.fields
            .push((format!("field{i}"), Value::Str("v".repeat(40))));
    }
    let line = many.to_line().unwrap();
    assert!(line.len() < 64 * 1024, "{}", line.len());
}

#[test]
fn a_stamp_names_the_worker_and_pid_and_must_start_the_line() {
    let line = stamped(12, 4242, b"00ff\n");
    assert_eq!(line, b"\x01ppool-trace@12.4242:00ff\n");
    assert_eq!(read_stamped(&line), Some((12, 4242, &b"00ff\n"[..])));
    assert_eq!(read_stamped(&line[1..]), None);
    assert_eq!(read_stamped(&[b" ".as_slice(), &line].concat()), None);
    assert_eq!(read_stamped(b"\x01ppool-trace@x.1:00\n"), None);
    assert_eq!(read_stamped(b"\x01ppool-trace@1:00\n"), None);
    assert_eq!(read_stamped(b"\x01ppool-trace@1.2\n"), None);
}
