use super::*;
use crate::shm::testing::round_trip;

#[test]
fn layout_separates_lines_and_checks_sizes() {
    let l = Layout::new(64, 1 << 20).unwrap();
    assert_eq!(l.job_ring_bytes(), 64);
    assert_eq!(l.result_data, 2 * PAGE);
    assert_eq!(l.region_bytes(), 2 * PAGE + (1 << 20));
    let l = Layout::new(1 << 16, 128).unwrap();
    assert_eq!(l.result_data, PAGE + (1 << 16));
    assert_eq!(l.region_bytes(), 2 * PAGE + (1 << 16));
    for bad in [0, 1, 32, 63, 65, 100, 3 << 10, MAX_RING * 2] {
        assert!(
            matches!(Layout::new(bad, 64), Err(RingError::Layout(_))),
            "{bad}"
        );
        assert!(
            matches!(Layout::new(64, bad), Err(RingError::Layout(_))),
            "{bad}"
        );
    }
    assert!(Layout::new(MAX_RING, MAX_RING).is_ok());
    // Every word that one side writes often has a line of its own.
    let lines = [
        H_MAGIC,
        PROGRESS,
        JOB_CONTROL + TAIL,
        JOB_CONTROL + HEAD,
        JOB_CONTROL + DATA_BELL,
        RESULT_CONTROL + TAIL,
        RESULT_CONTROL + HEAD,
        RESULT_CONTROL + DATA_BELL,
    ]
    .map(|off| off / LINE);
    for (i, a) in lines.iter().enumerate() {
        assert!(lines[i + 1..].iter().all(|b| b != a), "line {a} shared");
    }
}

#[test]
fn header_round_trip_and_rejections() {
    let region = Region::heap(Layout::new(256, 512).unwrap()).unwrap();
    assert_eq!(read_header(&region.map).unwrap(), region.layout());
    assert!(region.fd().is_none());
    for (off, value, what) in [
        (H_MAGIC, 0, "magic"),
        (H_VERSION, 2, "version"),
        (H_JOB_BYTES, 100, "sizes"),
        (H_JOB_BYTES, 8192, "region"),
        (H_RESULT_BYTES, 1 << 40, "sizes"),
        (H_REGION_BYTES, 4 * PAGE as u64, "region"),
    ] {
        let region = Region::heap(Layout::new(256, 512).unwrap()).unwrap();
        region.map.u64_at(off).store(value, Ordering::Relaxed);
        let e = read_header(&region.map).unwrap_err();
        assert!(matches!(e, RingError::Corrupt(_)), "{what}: {e}");
    }
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot map a memfd")]
fn from_fd_checks_what_it_maps() {
    // Two mappings of one memfd in one process see the same memory.
    let mut region = Region::create(Layout::new(256, 256).unwrap()).unwrap();
    let fd = region.fd().unwrap().try_clone_to_owned().unwrap();
    let other = Region::from_fd(fd).unwrap();
    assert_eq!(other.layout(), region.layout());
    assert!(region.take_fd().is_some() && region.fd().is_none());
    let mut s = region.supervisor();
    let mut w = other.worker();
    round_trip(&mut s.jobs, &mut w.jobs, b"across mappings");
    round_trip(&mut w.results, &mut s.results, b"and back");

    let memfd = |len: u64, seal: bool| {
        let fd = rustix::fs::memfd_create("t", MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        if seal {
            rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();
        }
        fd
    };
    let unsealed = memfd(3 * PAGE as u64, false);
    let e = Region::from_fd(unsealed).unwrap_err();
    assert!(e.to_string().contains("sealed"), "{e}");
    let (r, _w) = std::io::pipe().unwrap();
    let e = Region::from_fd(OwnedFd::from(r)).unwrap_err();
    assert!(matches!(e, RingError::Corrupt(_)), "{e}");
    assert!(matches!(
        Region::from_fd(memfd(100, true)),
        Err(RingError::Corrupt(_))
    ));
    // The right size, but zeros: no magic.
    let e = Region::from_fd(memfd(3 * PAGE as u64, true)).unwrap_err();
    assert!(e.to_string().contains("magic"), "{e}");
    // A header whose sizes do not match the file.
    let fd = memfd(4 * PAGE as u64, true);
    let map = Mapping::map(fd.as_fd(), 4 * PAGE).unwrap();
    write_header(&map, &Layout::new(256, 256).unwrap());
    drop(map);
    let e = Region::from_fd(fd).unwrap_err();
    assert!(e.to_string().contains("region"), "{e}");
}
