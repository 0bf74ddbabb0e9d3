use super::*;
use std::time::Duration;

fn pair(ring: usize) -> (SupervisorEnd, WorkerEnd) {
    let layout = Layout::new(ring, ring).expect("layout");
    Region::heap(layout).expect("region").into_both()
}

fn no_wait(_: &mut Producer, _: usize) -> Result<(), RingError> {
    Err(RingError::Corrupt("full".into()))
}

#[test]
fn frames_and_outcomes_cross_whole_and_in_pieces() {
    let (mut sup, mut worker) = pair(4096);
    let big: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
    let mut frame = Vec::new();
    let mut outcome = Vec::new();
    let mut asm = Assembler::new(1 << 20);
    // An outcome, then a frame in several pieces, read as they come.
    push_item(
        &mut worker.results,
        ITEM_OUTCOME,
        b"one",
        true,
        &mut no_wait,
    )
    .expect("push");
    assert_eq!(
        asm.pop(&mut sup.results, &mut frame, &mut outcome)
            .expect("pop"),
        Some(ITEM_OUTCOME)
    );
    assert_eq!((outcome.as_slice(), frame.len()), (&b"one"[..], 0));
    // Larger than the ring: the writer waits for the reader, on another thread.
    let got = std::thread::scope(|scope| {
        let results = &mut worker.results;
        let big = &big;
        scope.spawn(move || {
            let mut wait = |p: &mut Producer, len: usize| {
                p.wait_writable(len, Duration::ZERO, Some(Duration::from_millis(10)))
                    .map(drop)
            };
            push_item(results, ITEM_FRAME, big, false, &mut wait).expect("push");
        });
        loop {
            match asm.pop(&mut sup.results, &mut frame, &mut outcome) {
                Ok(Some(item)) => break item,
                Ok(None) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
    });
    assert_eq!(got, ITEM_FRAME);
    assert_eq!(frame, big);
}

#[test]
fn an_unknown_tag_a_kind_change_and_an_oversized_item_are_corrupt() {
    let (mut sup, mut worker) = pair(4096);
    let (mut frame, mut outcome) = (Vec::new(), Vec::new());
    assert!(worker.results.try_push(&[&[9], b"x"]).expect("push"));
    let mut asm = Assembler::new(100);
    assert!(matches!(
        asm.pop(&mut sup.results, &mut frame, &mut outcome),
        Err(RingError::Corrupt(_))
    ));

    let (mut sup, mut worker) = pair(4096);
    assert!(
        worker
            .results
            .try_push(&[&[ITEM_FRAME | MORE], b"x"])
            .expect("push")
    );
    assert!(
        worker
            .results
            .try_push(&[&[ITEM_OUTCOME], b"y"])
            .expect("push")
    );
    let mut asm = Assembler::new(100);
    assert!(matches!(
        asm.pop(&mut sup.results, &mut frame, &mut outcome),
        Err(RingError::Corrupt(_))
    ));

    let (mut sup, mut worker) = pair(4096);
    push_item(
        &mut worker.results,
        ITEM_FRAME,
        &[0; 101],
        false,
        &mut no_wait,
    )
    .expect("push");
    let mut asm = Assembler::new(100);
    assert!(matches!(
        asm.pop(&mut sup.results, &mut frame, &mut outcome),
        Err(RingError::Corrupt(_))
    ));
}
