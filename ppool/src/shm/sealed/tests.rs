use super::*;
use crate::share::hash::hash;
use crate::shm::testing::pattern;
use std::os::fd::AsRawFd;

fn header() -> Header {
    Header {
        token: 0x0123_4567_89ab_cdef,
        id: 42,
        kind: Kind::Bytes,
        len: 1 << 20,
        hash: 0xfeed_f00d,
    }
}

#[test]
fn header_round_trip() {
    let h = header();
    let bytes = h.to_bytes();
    assert_eq!(&bytes[..8], b"PPLSEAL\x01");
    assert_eq!(Header::parse(&bytes).unwrap(), h);
    assert_eq!(h.file_len(), HEADER as u64 + (1 << 20));
    let v = Header {
        kind: Kind::Value,
        len: 0,
        ..h
    };
    assert_eq!(Header::parse(&v.to_bytes()).unwrap(), v);
    // A whole header page parses too.
    let mut page = vec![0u8; HEADER];
    page[..FIELDS].copy_from_slice(&bytes);
    assert_eq!(Header::parse(&page).unwrap(), h);
}

#[test]
fn header_rejections() {
    let good = header().to_bytes();
    let with = |word: usize, value: u64| {
        let mut b = good;
        b[8 * word..8 * word + 8].copy_from_slice(&value.to_le_bytes());
        b
    };
    for (bytes, what) in [
        (with(0, 0), "bad magic"),
        (with(1, 2), "version 2"),
        (with(4, 0), "unknown kind 0"),
        (with(4, 4), "unknown kind 4"),
        (with(5, MAX_LEN + 1), "beyond the address space"),
        (with(5, u64::MAX), "beyond the address space"),
    ] {
        let e = Header::parse(&bytes).unwrap_err();
        assert!(e.contains(what), "{what}: {e}");
    }
    let e = Header::parse(&good[..FIELDS - 1]).unwrap_err();
    assert!(e.contains("too few"), "{e}");
    assert!(Header::parse(&with(5, MAX_LEN)).is_ok());
}

#[test]
fn expect_names_the_first_difference() {
    let h = header();
    assert!(h.expect(&h).is_ok());
    for (other, what) in [
        (Header { token: 1, ..h }, "another pool"),
        (Header { id: 7, ..h }, "holds value #42"),
        (
            Header {
                kind: Kind::Value,
                ..h
            },
            "holds bytes, not an encoded value",
        ),
        (Header { len: 5, ..h }, "reference says 5"),
        (
            Header { hash: 1, ..h },
            "the reference says 0000000000000001",
        ),
    ] {
        let e = h.expect(&other).unwrap_err();
        assert!(e.contains(what), "{what}: {e}");
    }
}

#[test]
fn every_seal_is_required() {
    assert!(check_seals(REQUIRED_SEALS).is_ok());
    assert!(check_seals(REQUIRED_SEALS | SealFlags::EXEC | SealFlags::FUTURE_WRITE).is_ok());
    for missing in [
        SealFlags::WRITE,
        SealFlags::GROW,
        SealFlags::SHRINK,
        SealFlags::SEAL,
    ] {
        let e = check_seals(REQUIRED_SEALS - missing).unwrap_err();
        assert!(e.contains("not fully sealed"), "{e}");
    }
    assert!(check_seals(SealFlags::empty()).is_err());
    assert!(check_seals(SealFlags::FUTURE_WRITE | SealFlags::SHRINK | SealFlags::GROW).is_err());
}

#[test]
fn names_and_links() {
    assert_eq!(
        memfd_name(0xab, 3),
        "ppool-share-00000000000000ab-0000000000000003"
    );
    assert_eq!(
        memfd_link(u64::MAX, 1),
        "/memfd:ppool-share-ffffffffffffffff-0000000000000001 (deleted)"
    );
    for (token, id) in [(0, 0), (0xab, 3), (u64::MAX, u64::MAX)] {
        let link = memfd_link(token, id);
        assert_eq!(parse_memfd_link(token, link.as_bytes()), Some(id));
        assert_eq!(parse_memfd_link(token ^ 1, link.as_bytes()), None);
    }
    for other in [
        "/memfd:ppool-share-00000000000000ab-0000000000000003",
        "/memfd:ppool-share-00000000000000ab-000000000000003 (deleted)",
        "/memfd:ppool-share-00000000000000ab-+000000000000003 (deleted)",
        "/memfd:ppool-share-00000000000000ab-000000000000000g (deleted)",
        "/memfd:ppool-shm (deleted)",
        "pipe:[1234]",
        "",
    ] {
        assert_eq!(parse_memfd_link(0xab, other.as_bytes()), None, "{other}");
    }
    // Within the kernel's limit of 249 bytes for a memfd name.
    assert!(memfd_name(u64::MAX, u64::MAX).len() <= 249);
}

#[test]
fn hashing_in_pieces_equals_hashing_whole() {
    let n = if cfg!(miri) { 700 } else { 300_000 };
    let data = pattern(n, 9);
    let whole = hash(&data);
    for piece in [1, 7, 64, 240, 1000, 65_536] {
        let mut h = Hasher::new();
        for p in data.chunks(piece) {
            h.update(p);
        }
        assert_eq!(h.digest(), whole, "pieces of {piece}");
    }
    assert_ne!(hash(&data[1..]), whole);
    assert_eq!(Hasher::new().digest(), hash(&[]));
}

/// The permissions that `/proc/self/maps` shows for the mapping that starts at `addr`.
fn perms_at(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let start = format!("{addr:x}-");
    let line = maps
        .lines()
        .find(|l| l.starts_with(&start))
        .unwrap_or_else(|| panic!("no mapping at {addr:x}"));
    line.split_whitespace().nth(1).unwrap().to_string()
}

/// A sealed value made by this process (its descriptor kept), and the same opened again
/// through `/proc/self/fd`, as another process would.
fn made_and_reopened(len: usize) -> (Sealed, Sealed, Vec<u8>) {
    let data = pattern(len, len as u64);
    let made = Sealed::create(7, 1, Kind::Bytes, &data).unwrap();
    let fd = made.fd().unwrap().as_raw_fd();
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{fd}"));
    let reopened = Sealed::open(&path).unwrap();
    (made, reopened, data)
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot map a memfd")]
fn create_then_read_back_from_another_descriptor() {
    for len in [0, 1, 4095, 4096, 4097, 1 << 20] {
        let (made, reopened, data) = made_and_reopened(len);
        let fd = made.fd().unwrap();
        let h = *made.header();
        assert_eq!(
            h,
            Header {
                token: 7,
                id: 1,
                kind: Kind::Bytes,
                len: len as u64,
                hash: hash(&data)
            }
        );
        assert_eq!(made.bytes(), &data[..]);
        assert_eq!(reopened.bytes(), &data[..]);
        assert_eq!(*reopened.header(), h);
        assert!(reopened.fd().is_none(), "the reader closes its descriptor");
        assert!(
            rustix::fs::fcntl_get_seals(fd)
                .unwrap()
                .contains(REQUIRED_SEALS)
        );
        assert_eq!(rustix::fs::fstat(fd).unwrap().st_size as u64, h.file_len());
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(link.to_str().unwrap(), memfd_link(7, 1));
        // The payload is page aligned: it is mapped on its own.
        if len > 0 {
            assert_eq!(made.bytes().as_ptr() as usize % HEADER, 0);
            assert_ne!(made.bytes().as_ptr(), reopened.bytes().as_ptr());
        }
    }
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot map a memfd")]
fn mappings_are_read_only_and_shared() {
    let (made, reopened, _) = made_and_reopened(3 * 4096 + 5);
    for s in [&made, &reopened] {
        let addr = s.map.as_ref().unwrap().addr();
        assert_eq!(s.bytes().as_ptr() as usize, addr);
        assert_eq!(perms_at(addr), "r--s");
    }
    let addr = reopened.map.as_ref().unwrap().addr();
    drop(reopened);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        !maps.lines().any(|l| l.starts_with(&format!("{addr:x}-"))),
        "unmapped on drop"
    );
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot map a memfd")]
fn nothing_writes_a_sealed_memfd() {
    let (made, reopened, data) = made_and_reopened(8192);
    let fd = made.fd().unwrap();
    let size = HEADER as u64 + 8192;
    assert_eq!(
        rustix::io::pwrite(fd, b"x", HEADER as u64),
        Err(rustix::io::Errno::PERM)
    );
    assert_eq!(
        rustix::io::pwrite(fd, b"x", 0),
        Err(rustix::io::Errno::PERM)
    );
    assert_eq!(
        rustix::fs::ftruncate(fd, size - 1),
        Err(rustix::io::Errno::PERM)
    );
    assert_eq!(
        rustix::fs::ftruncate(fd, size + 4096),
        Err(rustix::io::Errno::PERM)
    );
    assert_eq!(
        rustix::fs::fallocate(
            fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            HEADER as u64,
            4096
        ),
        Err(rustix::io::Errno::PERM)
    );
    assert_eq!(
        rustix::fs::fcntl_add_seals(fd, SealFlags::FUTURE_WRITE),
        Err(rustix::io::Errno::PERM),
        "F_SEAL_SEAL: the seals are final"
    );
    // No shared writable view can be made, even from the creator's read-write descriptor.
    // SAFETY: a null hint; the mapping (if the kernel made one, which is the failure tested)
    // would be unmapped at once and never accessed.
    let writable = unsafe {
        rustix::mm::mmap(
            ptr::null_mut(),
            4096,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            HEADER as u64,
        )
    };
    assert_eq!(writable.map(|_| ()), Err(rustix::io::Errno::PERM));
    // A private writable mapping is allowed, but its writes are copies of its own.
    // SAFETY: a null hint gives fresh addresses; the mapping is written and read through its
    // raw pointer only, then unmapped once.
    unsafe {
        let p = rustix::mm::mmap(
            ptr::null_mut(),
            4096,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
            fd,
            HEADER as u64,
        )
        .unwrap()
        .cast::<u8>();
        p.write(!data[0]);
        assert_eq!(p.read(), !data[0]);
        rustix::mm::munmap(p.cast(), 4096).unwrap();
    }
    assert_eq!(made.bytes(), &data[..]);
    assert_eq!(reopened.bytes(), &data[..]);
    // A read-only descriptor cannot even map shared for writing.
    let ro = rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        OFlags::RDONLY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    // SAFETY: as above.
    let writable = unsafe {
        rustix::mm::mmap(
            ptr::null_mut(),
            4096,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            &ro,
            HEADER as u64,
        )
    };
    assert!(writable.is_err());
}

/// A memfd holding `header` and `payload_len` zero bytes, with `seals`.
fn raw_memfd(header: &Header, file_len: u64, seals: SealFlags) -> OwnedFd {
    let fd = memfd("ppool-test-raw").unwrap();
    rustix::fs::ftruncate(&fd, file_len).unwrap();
    if file_len >= FIELDS as u64 {
        pwrite_all(fd.as_fd(), &header.to_bytes(), 0).unwrap();
    }
    rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    fd
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn readers_refuse_what_is_not_a_whole_sealed_value() {
    let h = Header {
        len: 100,
        ..header()
    };
    let good = raw_memfd(&h, h.file_len(), REQUIRED_SEALS);
    assert_eq!(*Sealed::from_fd(good, false).unwrap().header(), h);
    let refuse = |fd: OwnedFd, what: &str| {
        let e = Sealed::from_fd(fd, false).unwrap_err();
        assert!(e.to_string().contains(what), "{what}: {e}");
    };
    for seals in [
        SealFlags::empty(),
        SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::SEAL,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SEAL,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK,
        SealFlags::FUTURE_WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    ] {
        refuse(raw_memfd(&h, h.file_len(), seals), "not fully sealed");
    }
    refuse(
        raw_memfd(&h, h.file_len() - 1, REQUIRED_SEALS),
        "its memfd holds 99",
    );
    refuse(
        raw_memfd(&h, h.file_len() + 1, REQUIRED_SEALS),
        "its memfd holds 101",
    );
    refuse(raw_memfd(&h, 100, REQUIRED_SEALS), "too small");
    let mut bad = h.to_bytes();
    bad[0] ^= 1;
    let fd = memfd("ppool-test-raw").unwrap();
    rustix::fs::ftruncate(&fd, h.file_len()).unwrap();
    pwrite_all(fd.as_fd(), &bad, 0).unwrap();
    rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS).unwrap();
    refuse(fd, "bad magic");
    // Not a memfd at all.
    let (r, _w) = rustix::pipe::pipe().unwrap();
    refuse(r, "not a memfd");
    let file = std::fs::File::open("/proc/self/maps").unwrap();
    refuse(file.into(), "not a memfd");
    let e = Sealed::open(std::path::Path::new("/proc/self/fd/999999")).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn a_writer_takes_pieces_and_checks_length_and_hash() {
    let data = pattern(100_000, 3);
    let mut w = SealedWriter::create(9, 5, Kind::Value, data.len() as u64).unwrap();
    for piece in data.chunks(999) {
        w.write(piece).unwrap();
    }
    assert_eq!(w.remaining(), 0);
    let e = w.write(b"x").unwrap_err();
    assert!(
        e.to_string().contains("1 more bytes arrived after 100000"),
        "{e}"
    );
    let s = w.finish(Some(hash(&data))).unwrap();
    assert_eq!(s.bytes(), &data[..]);
    assert_eq!(s.header().hash, hash(&data));
    assert_eq!(s.header().kind, Kind::Value);

    let mut w = SealedWriter::create(9, 6, Kind::Value, data.len() as u64).unwrap();
    w.write(&data).unwrap();
    let e = w.finish(Some(hash(&data) ^ 1)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("arrived with hash"), "{e}");

    let mut w = SealedWriter::create(9, 7, Kind::Value, data.len() as u64).unwrap();
    w.write(&data[..10]).unwrap();
    let e = w.finish(None).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert!(e.to_string().contains("10 of 100000 bytes arrived"), "{e}");
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn a_value_larger_than_memory_is_an_error_before_any_allocation() {
    for len in [1 << 50, MAX_LEN] {
        let e = SealedWriter::create(1, 2, Kind::Bytes, len).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::OutOfMemory, "{e}");
        assert!(
            e.to_string()
                .starts_with("shared value #2 does not fit in memory: "),
            "{e}"
        );
    }
    let e = SealedWriter::create(1, 2, Kind::Bytes, MAX_LEN + 1).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
}
