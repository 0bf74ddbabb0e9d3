use super::*;
use crate::codec::{decode, encode_into};
use crate::shm::SealedWriter;
use serde::{Deserialize, Deserializer, Serialize};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token no other test of this process uses (values are found by token and id).
fn token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (u64::from(std::process::id()) << 32) | NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A store whose release hook records the ids it is told.
fn store() -> (Store, Arc<Mutex<Vec<u64>>>) {
    let released = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&released);
    let hook: ReleaseHook = Arc::new(move |id| log.lock().unwrap().push(id));
    (Store::new(token(), hook), released)
}

/// The resolver of a worker of `store`'s pool living in this process.
fn resolver(store: &Store) -> Arc<Resolver> {
    Arc::new(Resolver::new(std::process::id(), store.token()))
}

fn encode<T: Serialize + 'static>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out).unwrap();
    out
}

/// Decodes `bytes` as a worker of `resolver`'s pool would.
fn receive<T: serde::de::DeserializeOwned + 'static>(
    resolver: &Arc<Resolver>,
    bytes: &[u8],
) -> Result<T, String> {
    scoped(resolver, || decode::<T>(bytes))
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 33) as u8
        })
        .collect()
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Model {
    name: String,
    weights: Vec<f32>,
}

fn model(n: usize) -> Model {
    Model {
        name: "m".into(),
        weights: (0..n).map(|i| i as f32 * 0.5).collect(),
    }
}

#[test]
fn a_reference_is_a_few_bytes_under_postcard() {
    let r = Reference {
        id: 3,
        len: 256 << 20,
        hash: u64::MAX,
    };
    let bytes = postcard::to_allocvec(&r).unwrap();
    // The string's length, the id, the length, the hash in 8 bytes.
    assert_eq!(bytes.len(), 1 + 1 + 5 + 8);
    assert_eq!(bytes[0], 14);
    assert_eq!(&bytes[7..], &u64::MAX.to_le_bytes());
    assert_eq!(postcard::from_bytes::<Reference>(&bytes).unwrap(), r);
    assert_eq!(decode::<Reference>(&encode(&r)).unwrap(), r);
    let r = Reference {
        id: u64::MAX,
        len: u64::MAX,
        hash: 0,
    };
    let bytes = postcard::to_allocvec(&r).unwrap();
    assert_eq!(bytes.len(), 1 + 10 + 10 + 8);
    assert_eq!(postcard::from_bytes::<Reference>(&bytes).unwrap(), r);
    // A tiny task's reference: one of the first values of a pool, of 1 MiB.
    let r = Reference {
        id: 1,
        len: 1 << 20,
        hash: 0x0123_4567_89ab_cdef,
    };
    assert_eq!(encode(&r).len(), 13);
}

#[test]
fn the_compact_form_round_trips_and_refuses_what_no_pool_wrote() {
    let edges = [
        0,
        1,
        127,
        128,
        16_383,
        16_384,
        u64::from(u32::MAX),
        u64::MAX - 1,
        u64::MAX,
    ];
    for id in edges {
        for len in edges {
            let r = Reference {
                id,
                len,
                hash: id.rotate_left(17) ^ len,
            };
            let wire = reference::Wire::new(r);
            assert_eq!(wire.reference(), r);
            let bytes = postcard::to_allocvec(&wire).unwrap();
            assert_eq!(
                bytes,
                postcard::to_allocvec(&r).unwrap(),
                "made once or each time"
            );
            assert_eq!(Reference::from_compact(&bytes[1..]), Some(r), "{id} {len}");
        }
    }
    let good = encode(&Reference {
        id: 5,
        len: 300,
        hash: 42,
    });
    let compact = &good[1..];
    assert!(Reference::from_compact(compact).is_some());
    assert_eq!(Reference::from_compact(&[]), None);
    assert_eq!(
        Reference::from_compact(&compact[..compact.len() - 1]),
        None,
        "short hash"
    );
    assert_eq!(
        Reference::from_compact(&[compact, &[0]].concat()),
        None,
        "a byte too many"
    );
    // A varint longer than 10 bytes, or past 64 bits.
    let eleven = [[0x80; 10].as_slice(), &[0], &[0], &[0; 8]].concat();
    assert_eq!(Reference::from_compact(&eleven), None);
    let too_big = [[0xff; 9].as_slice(), &[0x02], &[0], &[0; 8]].concat();
    assert_eq!(Reference::from_compact(&too_big), None);
    let max = [[0xff; 9].as_slice(), &[0x01], &[0], &[0; 8]].concat();
    assert_eq!(Reference::from_compact(&max).map(|r| r.id), Some(u64::MAX));
    // In a task, a malformed reference is the task's error, and says so.
    let (store, _) = store();
    let r = resolver(&store);
    let bad = encode(&(1u8, vec![7u8; 5]));
    let e = receive::<(u8, SharedBytes)>(&r, &bad).unwrap_err();
    assert!(e.contains("a malformed reference to a shared value"), "{e}");
    let e = receive::<(u8, Shared<Model>)>(&r, &bad).unwrap_err();
    assert!(e.contains("a malformed reference to a shared value"), "{e}");
}

#[test]
fn a_human_readable_format_reads_the_tuple() {
    use serde::de::value::{Error, SeqDeserializer};
    let tuple = SeqDeserializer::<_, Error>::new([7u64, 8, 9].into_iter());
    let r = Reference::deserialize(tuple).unwrap();
    assert_eq!((r.id, r.len, r.hash), (7, 8, 9));
}

#[test]
fn handles_are_one_pointer() {
    assert_eq!(size_of::<SharedBytes>(), size_of::<usize>());
    assert_eq!(size_of::<Shared<Model>>(), size_of::<usize>());
    assert_eq!(size_of::<Option<SharedBytes>>(), size_of::<usize>());
}

#[test]
fn share_errors_say_what_to_do() {
    let store_error = |code| ShareError::Store {
        len: 1 << 30,
        source: std::io::Error::from_raw_os_error(code),
    };
    let text = store_error(libc::ENOMEM).to_string();
    assert!(
        text.starts_with("could not store a value of 1073741824 bytes in shared memory"),
        "{text}"
    );
    assert!(text.contains("not enough free memory"), "{text}");
    assert!(store_error(libc::ENOSPC).to_string().contains("not enough"));
    assert!(
        store_error(libc::EPERM)
            .to_string()
            .contains("memfds are refused")
    );
    assert!(
        store_error(libc::EMFILE)
            .to_string()
            .contains("too many are open")
    );
    assert!(std::error::Error::source(&store_error(libc::EIO)).is_some());
    let text = ShareError::Encode("boom".into()).to_string();
    assert_eq!(text, "could not encode the value: boom");
}

#[test]
fn room_reads_meminfo_and_cgroup_files() {
    let meminfo = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   23607960 kB\n";
    assert_eq!(room::mem_available(meminfo), Some(23_607_960 * 1024));
    assert_eq!(room::mem_available("MemFree: 1 kB\n"), None);
    assert_eq!(room::limit_room("max\n", "100\n", 0), None);
    assert_eq!(room::limit_room("9223372036854771712\n", "100\n", 0), None);
    assert_eq!(room::limit_room("1000\n", "600\n", 0), Some(400));
    assert_eq!(room::limit_room("1000\n", "600\n", 100), Some(500));
    assert_eq!(room::limit_room("1000\n", "1600\n", 0), Some(0));
    assert_eq!(room::limit_room("1000\n", "10\n", 100), Some(1000));
    let stat = "anon 5\nfile 20\ninactive_file 12\ntotal_inactive_file 30\n";
    assert_eq!(room::stat_field(stat, "inactive_file"), Some(12));
    assert_eq!(room::stat_field(stat, "total_inactive_file"), Some(30));
    assert_eq!(room::stat_field(stat, "active_file"), None);
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot read /proc")]
fn room_finds_this_process_cgroups() {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    for (dir, _) in room::cgroup_dirs(&text) {
        assert!(dir.is_dir(), "{}", dir.display());
    }
    // This machine has room for a small value, and none for a petabyte.
    assert!(room::check(1 << 20).is_ok());
    assert!(room::check(1 << 50).is_err());
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn a_shared_value_travels_as_a_reference_and_resolves_in_a_worker() {
    let (store, _) = store();
    let shared = store.share(model(100_000)).unwrap();
    assert_eq!(
        shared.weights[7], 3.5,
        "the owner reads the value it shared"
    );
    let (args, named) = collect(|| encode(&(shared.clone(), vec![1.0f32; 4])));
    assert!(args.len() < 40, "{} bytes", args.len());
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].reference(), shared.reference());
    assert_eq!(named[0].header().kind, crate::shm::Kind::Value);
    assert!(named[0].fd().is_some());

    let r = resolver(&store);
    let (got, row): (Shared<Model>, Vec<f32>) = receive(&r, &args).unwrap();
    assert_eq!(*got, *shared);
    assert_eq!(row, [1.0; 4]);
    assert_eq!(got.reference(), shared.reference());
    assert!(got.stored().is_none());
    // A worker can send it on (in a result, say): the same reference again.
    assert_eq!(encode(&got), encode(&shared));
    assert!(format!("{got:?}").starts_with("Shared { id: 1, bytes: "));
}

static DECODES: AtomicUsize = AtomicUsize::new(0);

/// A value whose decoding is counted.
#[derive(Debug, Serialize)]
struct Counted(Vec<u64>);

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DECODES.fetch_add(1, Ordering::SeqCst);
        Ok(Counted(Vec::deserialize(d)?))
    }
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn a_worker_decodes_a_value_once_for_all_its_tasks() {
    let (store, _) = store();
    let shared = store.share(Counted((0..10_000).collect())).unwrap();
    let r = resolver(&store);
    let t = Instant::now();
    let mut first: Option<Shared<Counted>> = None;
    for i in 0..2000u32 {
        let (got, n): (Shared<Counted>, u32) = receive(&r, &encode(&(shared.clone(), i))).unwrap();
        assert_eq!(n, i);
        assert_eq!(got.0[9999], 9999);
        let first = first.get_or_insert_with(|| got.clone());
        assert!(std::ptr::eq(&**first, &*got), "the same decoded value");
    }
    let per_task = t.elapsed() / 2000;
    assert_eq!(DECODES.load(Ordering::SeqCst), 1);
    assert_eq!(r.cached(), (0, 1), "the decoded value, not the mapping");
    eprintln!("2000 tasks naming one Shared<Counted>: {per_task:?} per task (encode + decode)");
    // Another worker (another resolver) decodes it once more.
    let other = resolver(&store);
    let _: Shared<Counted> = receive(&other, &encode(&shared)).unwrap();
    assert_eq!(DECODES.load(Ordering::SeqCst), 2);
}

/// The permissions that `/proc/self/maps` shows for the mapping holding `addr`.
fn perms_of(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (
            usize::from_str_radix(start, 16).unwrap(),
            usize::from_str_radix(end, 16).unwrap(),
        );
        if (start..end).contains(&addr) {
            return fields.next().unwrap().to_string();
        }
    }
    panic!("no mapping holds {addr:x}");
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn shared_bytes_are_mapped_read_only_never_copied() {
    let (store, _) = store();
    let data = pattern(3 << 20, 1);
    let text = store.share_bytes(data.clone()).unwrap();
    assert_eq!(&*text, &data[..]);
    assert_eq!(
        perms_of(text.as_ptr() as usize),
        "r--s",
        "the owner's view too"
    );
    let (args, named) = collect(|| encode(&(text.clone(), b'\n')));
    assert!(args.len() < 20, "{} bytes", args.len());
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].header().kind, crate::shm::Kind::Bytes);

    let r = resolver(&store);
    let (got, byte): (SharedBytes, u8) = receive(&r, &args).unwrap();
    assert_eq!(byte, b'\n');
    assert_eq!(&*got, &data[..]);
    assert_ne!(
        got.as_ptr(),
        text.as_ptr(),
        "another mapping of the same memfd"
    );
    assert_eq!(perms_of(got.as_ptr() as usize), "r--s");
    assert_eq!(perms_of(got.as_ptr() as usize + data.len() - 1), "r--s");
    let (again, _): (SharedBytes, u8) = receive(&r, &args).unwrap();
    assert_eq!(again.as_ptr(), got.as_ptr(), "mapped once per worker");
    assert_eq!(r.cached(), (1, 0));
    assert_eq!(
        format!("{got:?}"),
        format!("SharedBytes {{ id: 1, len: {} }}", 3 << 20)
    );

    let empty = store.share_bytes(Vec::new()).unwrap();
    let got: SharedBytes = receive(&r, &encode(&empty)).unwrap();
    assert!(got.is_empty() && empty.is_empty());
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn forged_stale_and_foreign_references_are_errors() {
    let (store, _) = store();
    let value = store.share(model(10)).unwrap();
    let bytes = store.share_bytes(b"abc".to_vec()).unwrap();
    let r = resolver(&store);
    let good = value.reference();
    let as_value = |reference: Reference| {
        receive::<(u8, Shared<Model>)>(&r, &encode(&(1u8, reference))).map(|_| ())
    };
    let as_bytes =
        |reference: Reference| receive::<SharedBytes>(&r, &encode(&reference)).map(|_| ());
    let expect_error = |result: Result<(), String>, what: &str| {
        let e = result.unwrap_err();
        assert!(e.contains(what), "{what}: {e}");
    };
    let forged = Reference { id: 99, ..good };
    expect_error(as_value(forged), "shared value #99 is not held by process");
    expect_error(as_bytes(forged), "shared value #99 is not held by process");
    let other_hash = Reference {
        hash: good.hash ^ 1,
        ..good
    };
    expect_error(as_value(other_hash), "the reference says");
    let other_len = Reference {
        len: good.len + 1,
        ..good
    };
    expect_error(as_value(other_len), "bytes long");
    expect_error(
        as_value(bytes.reference()),
        "holds bytes, not an encoded value",
    );
    expect_error(as_bytes(good), "holds an encoded value, not bytes");
    // Once resolved and cached, a reference must still match.
    as_value(good).unwrap();
    as_bytes(bytes.reference()).unwrap();
    expect_error(as_value(other_hash), "the reference says");
    expect_error(
        as_bytes(Reference {
            hash: 0,
            ..bytes.reference()
        }),
        "the reference says",
    );
    // Failed lookups leave nothing in the caches.
    assert_eq!(r.cached(), (1, 1));
    // Another pool's worker does not find it.
    let (other_store, _) = self::store();
    let other = resolver(&other_store);
    let e = receive::<Shared<Model>>(&other, &encode(&value)).unwrap_err();
    assert!(e.contains("not held by process"), "{e}");
    // A value that does not decode as the type asked for.
    let e = receive::<Shared<Vec<String>>>(&r, &encode(&value)).unwrap_err();
    assert!(
        e.contains("cannot decode shared value #1 as `alloc::vec::Vec"),
        "{e}"
    );
}

#[test]
fn without_a_resolver_a_reference_cannot_be_received() {
    let r = Reference {
        id: 1,
        len: 2,
        hash: 3,
    };
    let bytes = encode(&r);
    std::thread::spawn(move || {
        let e = decode::<Shared<u32>>(&bytes).unwrap_err();
        assert!(e.contains("can only be received by a pool's worker"), "{e}");
        let e = decode::<SharedBytes>(&bytes).unwrap_err();
        assert!(e.contains("can only be received by a pool's worker"), "{e}");
    })
    .join()
    .unwrap();
}

#[derive(Serialize)]
struct Args {
    a: Shared<Model>,
    again: Shared<Model>,
    b: SharedBytes,
    n: u32,
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn collect_names_each_value_once_and_keeps_it_alive() {
    let (store, released) = store();
    let a = store.share(model(3)).unwrap();
    let b = store.share_bytes(vec![1, 2, 3]).unwrap();
    let args = Args {
        a: a.clone(),
        again: a.clone(),
        b: b.clone(),
        n: 1,
    };
    let ((), named) = collect(|| {
        encode(&args);
        // A nested collection is separate.
        let c = store.share_bytes(vec![4]).unwrap();
        let (_, inner) = collect(|| encode(&c));
        assert_eq!(inner.len(), 1);
    });
    let ids: Vec<u64> = named.iter().map(|s| s.id()).collect();
    assert_eq!(ids, [a.reference().id, b.reference().id]);
    assert_eq!(
        *released.lock().unwrap(),
        [3],
        "the nested value is dropped"
    );
    // Outside a collection, encoding records nothing.
    encode(&args);
    drop((a, b, args));
    assert_eq!(*released.lock().unwrap(), [3], "the job keeps its values");
    drop(named);
    assert_eq!(*released.lock().unwrap(), [3, 1, 2]);
    // A panic inside a collection leaves none active.
    let caught = std::panic::catch_unwind(|| collect(|| panic!("in encode")));
    assert!(caught.is_err());
    let c = store.share_bytes(vec![5]).unwrap();
    encode(&c);
    let ((), named) = collect(|| ());
    assert!(named.is_empty());
}

/// Encodes `value` into a collection to `sink`: whether it named the value the sink ended
/// with (which it does not add again).
fn name_into<T: Serialize + 'static>(sink: &mut Vec<Arc<Stored>>, value: &T) -> bool {
    let mut out = Vec::new();
    let (encoded, repeated) = collect_into(sink, || encode_into(value, &mut out));
    encoded.unwrap();
    repeated
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn a_chunk_keeps_one_arc_of_a_value_its_tasks_all_name() {
    let (store, released) = store();
    let text = store.share_bytes(vec![1, 2, 3]).unwrap();
    let base = Arc::strong_count(text.stored().unwrap());
    let mut sink = Vec::new();
    assert!(!name_into(&mut sink, &(text.clone(), 0u32)), "a first");
    for i in 1..1000u32 {
        assert!(name_into(&mut sink, &(text.clone(), i)), "a repeat");
    }
    assert_eq!(sink.len(), 1);
    assert_eq!(Arc::strong_count(text.stored().unwrap()), base + 1);
    assert!(!name_into(&mut sink, &7u32), "not named");

    // A value that names others: it, and they, once.
    let inner = store.share(model(2)).unwrap();
    let outer = store
        .share(Outer {
            inner: inner.clone(),
            text: text.clone(),
            x: 1,
        })
        .unwrap();
    sink.clear();
    for _ in 0..100 {
        name_into(&mut sink, &outer);
    }
    let ids: Vec<u64> = sink.iter().map(|s| s.id()).collect();
    let (i, t, o) = (
        inner.reference().id,
        text.reference().id,
        outer.reference().id,
    );
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(ids.last(), Some(&o), "{ids:?}");
    assert!(ids.contains(&i) && ids.contains(&t), "{ids:?}");

    // Values in turn are each kept where they change, and `dedup` leaves one of each.
    sink.clear();
    for k in 0..10 {
        let repeated = if k % 2 == 0 {
            name_into(&mut sink, &text)
        } else {
            name_into(&mut sink, &inner)
        };
        assert!(!repeated);
    }
    assert_eq!(sink.len(), 10);
    dedup(&mut sink);
    assert_eq!(sink.len(), 2);
    // Named again after another value, the value the sink ended with is added again.
    sink.clear();
    name_into(&mut sink, &text);
    assert!(!name_into(&mut sink, &(inner.clone(), text.clone())));
    assert_eq!(sink.len(), 3);

    // A collection inside another names its values to its own sink only, and the outer one
    // still knows what it named last.
    sink.clear();
    name_into(&mut sink, &text);
    let mut out = Vec::new();
    let (encoded, repeated) = collect_into(&mut sink, || {
        encode_into(&text, &mut out)?;
        let mut nested = Vec::new();
        assert!(!name_into(&mut nested, &(inner.clone(), text.clone())));
        assert_eq!(nested.len(), 2);
        encode_into(&text, &mut out)
    });
    encoded.unwrap();
    assert!(repeated);
    assert_eq!(sink.len(), 1);

    // A panic keeps what was named before it, and leaves no collection active.
    sink.clear();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        collect_into(&mut sink, || {
            encode(&text);
            panic!("in encode")
        })
    }));
    assert!(caught.is_err());
    assert_eq!(sink.len(), 1);
    encode(&inner);
    let ((), named) = collect(|| ());
    assert!(named.is_empty());

    drop((sink, text, inner, outer));
    let released = released.lock().unwrap().len();
    assert_eq!(released, 3, "nothing is kept beyond its holders");
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn a_host_agent_stores_what_it_receives_in_pieces_for_its_workers() {
    let (store, released) = store();
    let text = store.share_bytes(pattern(1 << 20, 3)).unwrap();
    let value = store.share(model(1000)).unwrap();
    let (args, named) = collect(|| encode(&(text.clone(), value.clone())));
    assert!(Arc::ptr_eq(&named[0], text.stored().unwrap()));
    assert!(Arc::ptr_eq(&named[1], value.stored().unwrap()));
    // The agent of another host receives each one's header fields, then its bytes in chunks.
    let agent: Vec<Stored> = named
        .iter()
        .map(|s| {
            let h = s.header();
            let mut w = SealedWriter::create(h.token, h.id, h.kind, h.len).unwrap();
            for chunk in s.bytes().chunks(64 * 1024) {
                w.write(chunk).unwrap();
            }
            Stored::from_sealed(w.finish(Some(h.hash)).unwrap())
        })
        .collect();
    assert_eq!(agent[0].reference(), text.reference());
    // The supervisor's copies gone, its workers find the agent's.
    let expected = (text.to_vec(), model(1000));
    drop((text, value, named));
    assert_eq!(*released.lock().unwrap(), [1, 2]);
    let r = resolver(&store);
    let (got_text, got_value): (SharedBytes, Shared<Model>) = receive(&r, &args).unwrap();
    assert_eq!((got_text.to_vec(), &*got_value), (expected.0, &expected.1));
    drop(agent);
    assert_eq!(released.lock().unwrap().len(), 2, "the agent has no hook");
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn the_last_clone_releases_the_value() {
    let (store, released) = store();
    let a = store.share(model(3)).unwrap();
    let clones: Vec<_> = (0..10).map(|_| a.clone()).collect();
    drop(a);
    drop(clones);
    assert_eq!(*released.lock().unwrap(), [1]);
    let b = store.share_bytes(vec![1]).unwrap();
    let b2 = b.clone();
    drop(b);
    assert_eq!(released.lock().unwrap().len(), 1);
    drop(b2);
    assert_eq!(*released.lock().unwrap(), [1, 2]);
}

#[derive(Debug, Serialize, Deserialize)]
struct Outer {
    inner: Shared<Model>,
    text: SharedBytes,
    x: u32,
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn values_inside_a_shared_value_travel_and_live_with_it() {
    let (store, released) = store();
    let inner = store.share(model(5)).unwrap();
    let text = store.share_bytes(b"hello".to_vec()).unwrap();
    let outer = store
        .share(Outer {
            inner: inner.clone(),
            text: text.clone(),
            x: 7,
        })
        .unwrap();
    let inner_id = inner.reference().id;
    drop((inner, text));
    assert!(released.lock().unwrap().is_empty());
    let (args, named) = collect(|| encode(&outer));
    let ids: Vec<u64> = named.iter().map(|s| s.id()).collect();
    assert_eq!(ids, [1, 2, 3], "the outer value and those it names");

    let r = resolver(&store);
    let got: Shared<Outer> = receive(&r, &args).unwrap();
    assert_eq!(got.x, 7);
    assert_eq!(*got.inner, model(5));
    assert_eq!(&*got.text, b"hello");
    assert_eq!(r.cached(), (1, 2));
    drop(outer);
    assert!(released.lock().unwrap().is_empty(), "the job holds them");
    drop(named);
    assert_eq!(*released.lock().unwrap(), [3, inner_id, 2]);
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn forget_empties_the_caches_and_a_freed_value_is_gone() {
    let (store, _) = store();
    let value = store.share(Counted(vec![1, 2])).unwrap();
    let bytes = store.share_bytes(vec![9; 10]).unwrap();
    let (v, b) = (value.reference().id, bytes.reference().id);
    let r = resolver(&store);
    let args = encode(&(value.clone(), bytes.clone()));
    let (held_value, held_bytes): (Shared<Counted>, SharedBytes) = receive(&r, &args).unwrap();
    assert_eq!(r.cached(), (1, 1));
    let before = DECODES.load(Ordering::SeqCst);
    r.forget(v);
    assert_eq!(r.cached(), (1, 0));
    r.forget(b);
    assert_eq!(r.cached(), (0, 0));
    // Handles still held keep what they point to.
    assert_eq!(held_value.0, [1, 2]);
    assert_eq!(&*held_bytes, &[9; 10]);
    // The next task resolves them again.
    let _: (Shared<Counted>, SharedBytes) = receive(&r, &args).unwrap();
    assert_eq!(r.cached(), (1, 1));
    assert!(DECODES.load(Ordering::SeqCst) > before);
    // Once the pool freed them and the workers forgot them, they are gone.
    drop((value, bytes));
    r.forget(v);
    r.forget(b);
    let e = receive::<(Shared<Counted>, SharedBytes)>(&r, &args).unwrap_err();
    assert!(e.contains("not held by process"), "{e}");
    assert_eq!(held_value.0, [1, 2]);
    assert_eq!(&*held_bytes, &[9; 10]);
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn later_lookups_follow_where_the_first_search_saw_values() {
    let (store, _) = store();
    let values: Vec<SharedBytes> = (0..4u8)
        .map(|i| store.share_bytes(vec![i; 10]).unwrap())
        .collect();
    let r = resolver(&store);
    let get = |v: &SharedBytes| receive::<SharedBytes>(&r, &encode(v)).map(|b| b[0]);
    assert_eq!(get(&values[0]), Ok(0));
    assert_eq!(r.hinted(), 3, "the others were seen on the way");
    assert_eq!(get(&values[1]), Ok(1));
    assert_eq!(r.hinted(), 2);
    // A hint to a descriptor closed since, and maybe reused, is checked before use.
    let [_, _, two, three] = <[SharedBytes; 4]>::try_from(values).unwrap();
    let three_ref = encode(&three);
    drop(three);
    let reuse = store.share_bytes(vec![9; 10]).unwrap();
    let e = receive::<SharedBytes>(&r, &three_ref).unwrap_err();
    assert!(e.contains("is not held by process"), "{e}");
    assert_eq!(get(&two), Ok(2));
    assert_eq!(get(&reuse), Ok(9));
    assert_eq!(r.hinted(), 0);
    r.forget(2);
    assert_eq!(r.hinted(), 0);
    // A hint from the pool, right or wrong.
    let six = store.share_bytes(vec![6; 10]).unwrap();
    let fd = six.stored().unwrap().fd().unwrap().as_raw_fd() as u32;
    r.hint(6, fd);
    assert_eq!(get(&six), Ok(6));
    let seven = store.share_bytes(vec![7; 10]).unwrap();
    r.hint(7, fd);
    assert_eq!(get(&seven), Ok(7));
}

#[derive(Debug)]
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("no encoding for this"))
    }
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot make a memfd")]
fn a_value_that_does_not_encode_is_an_error() {
    let (store, released) = store();
    let e = store.share(Unencodable).unwrap_err();
    assert!(matches!(e, ShareError::Encode(_)), "{e}");
    assert!(e.to_string().contains("no encoding for this"), "{e}");
    assert!(released.lock().unwrap().is_empty(), "nothing was stored");
    // A value of another pool inside: its workers could not reach it.
    let (other, _) = self::store();
    let foreign = other.share(model(1)).unwrap();
    let e = store
        .share(Outer {
            inner: foreign,
            text: store.share_bytes(vec![]).unwrap(),
            x: 1,
        })
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("holds shared value #1 of another pool"),
        "{e}"
    );
}

/// The variable that makes `child_side` act, in a child process.
const CHILD: &str = "PPOOL_SHARE_TEST_CHILD";

/// Runs `child_side` in a child process (this test binary again) with `spec` in [`CHILD`].
fn run_child(spec: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "share::tests::child_side",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, spec)
        .output()
        .unwrap()
}

/// In a child process, what [`CHILD`] says: resolve a parent's values as a worker would, or
/// try to share a value with too few descriptors left. Without it, nothing.
#[test]
fn child_side() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let words: Vec<&str> = spec.split(' ').collect();
    match words[..] {
        ["resolve", owner, token, value, bytes, hash] => {
            install(owner.parse().unwrap(), token.parse().unwrap());
            let value: Reference = decode(&hex(value)).unwrap();
            let bytes: Reference = decode(&hex(bytes)).unwrap();
            for _ in 0..3 {
                let args = encode(&(value, bytes));
                let (m, text): (Shared<Model>, SharedBytes) = decode(&args).unwrap();
                assert_eq!(*m, model(1000));
                assert_eq!(
                    crate::share::hash::hash(&text),
                    hash.parse::<u64>().unwrap()
                );
                assert_eq!(perms_of(text.as_ptr() as usize), "r--s");
            }
            // What this thread resolved last is kept for the next task, and a reference
            // that differs from it in anything is checked anew, and refused.
            for wrong in [
                Reference {
                    hash: bytes.hash ^ 1,
                    ..bytes
                },
                Reference {
                    len: bytes.len + 1,
                    ..bytes
                },
            ] {
                let e = decode::<SharedBytes>(&encode(&wrong)).unwrap_err();
                assert!(
                    e.contains("the reference says") || e.contains("bytes long"),
                    "{e}"
                );
            }
            let wrong = Reference {
                hash: value.hash ^ 1,
                ..value
            };
            let e = decode::<Shared<Model>>(&encode(&wrong)).unwrap_err();
            assert!(e.contains("the reference says"), "{e}");
            let _: SharedBytes = decode(&encode(&bytes)).unwrap();
            // A scoped resolver of another pool does not see what the thread kept.
            let other = Arc::new(Resolver::new(owner.parse().unwrap(), 1));
            let e = scoped(&other, || decode::<SharedBytes>(&encode(&bytes))).unwrap_err();
            assert!(e.contains("not held by process"), "{e}");
            let e = scoped(&other, || decode::<Shared<Model>>(&encode(&value))).unwrap_err();
            assert!(e.contains("not held by process"), "{e}");
            let _: (Shared<Model>, SharedBytes) = decode(&encode(&(value, bytes))).unwrap();
            forget(value.id);
            forget(bytes.id);
            println!("child resolved both");
        }
        ["emfile"] => {
            let (store, _) = store();
            // Every descriptor number below the lowest free one is taken: make that the limit.
            let lowest_free = {
                let probe = std::fs::File::open("/dev/null").unwrap();
                std::os::fd::AsRawFd::as_raw_fd(&probe) as u64
            };
            let nofile = rustix::process::Resource::Nofile;
            let limit = rustix::process::getrlimit(nofile);
            rustix::process::setrlimit(
                nofile,
                rustix::process::Rlimit {
                    current: Some(lowest_free),
                    ..limit
                },
            )
            .unwrap();
            let e = store.share(model(1)).unwrap_err();
            println!("child error: {e}");
        }
        _ => panic!("unknown child spec {spec:?}"),
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot spawn processes")]
fn another_process_resolves_through_proc() {
    let (store, _) = store();
    let value = store.share(model(1000)).unwrap();
    let data = pattern(1 << 20, 2);
    let bytes = store.share_bytes(data.clone()).unwrap();
    let spec = format!(
        "resolve {} {} {} {} {}",
        std::process::id(),
        store.token(),
        to_hex(&encode(&value.reference())),
        to_hex(&encode(&bytes.reference())),
        crate::share::hash::hash(&data),
    );
    let out = run_child(&spec);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("child resolved both"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot spawn processes")]
fn a_refused_memfd_is_an_error_not_a_panic() {
    let out = run_child("emfile");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("child error: could not store a value of")
            && stdout.contains("cannot create a memfd for shared value #1")
            && stdout.contains("too many are open"),
        "{stdout}"
    );
}

/// What the main operations cost, on this machine (`cargo test --release -- --ignored costs
/// --nocapture`).
#[test]
#[ignore = "a measurement, run by hand"]
fn costs() {
    let best = |n: usize, mut f: Box<dyn FnMut() -> Duration>| (0..n).map(|_| f()).min().unwrap();
    let (store, _) = store();
    let r = resolver(&store);
    let data = pattern(256 << 20, 5);
    let create = best(
        3,
        Box::new(|| {
            let input = data.clone();
            let t = Instant::now();
            let b = store.share_bytes(input).unwrap();
            let spent = t.elapsed();
            drop(b);
            spent
        }),
    );
    let copy = best(
        3,
        Box::new(|| {
            let t = Instant::now();
            let c = data.clone();
            let spent = t.elapsed();
            drop(c);
            spent
        }),
    );
    eprintln!(
        "share_bytes of 256 MiB (check room, create, reserve, hash, write, seal, map): \
         {create:?}; for scale, a clone of the input: {copy:?}"
    );
    let hash = best(
        3,
        Box::new(|| {
            let t = Instant::now();
            std::hint::black_box(crate::share::hash::hash(&data));
            t.elapsed()
        }),
    );
    eprintln!("xxh3 of 256 MiB: {hash:?}");
    let text = store.share_bytes(data.clone()).unwrap();
    let args = encode(&text);
    let t = Instant::now();
    let got: SharedBytes = receive(&r, &args).unwrap();
    let first = t.elapsed();
    let t = Instant::now();
    let sum: u64 = got.iter().step_by(4096).map(|&b| u64::from(b)).sum();
    let touch = t.elapsed();
    std::hint::black_box(sum);
    let t = Instant::now();
    for _ in 0..1000 {
        let _: SharedBytes = receive(&r, &args).unwrap();
    }
    let cached = t.elapsed() / 1000;
    eprintln!(
        "SharedBytes of 256 MiB in a worker: first resolve (scan /proc, open, check, map) \
         {first:?}, touching every page {touch:?}, later tasks {cached:?} each"
    );
    let t = Instant::now();
    let small: Vec<_> = (0..1000)
        .map(|i| store.share_bytes(vec![i as u8; 100]).unwrap())
        .collect();
    let per_small = t.elapsed() / 1000;
    // The first resolve lists the owner's descriptors: with many of them (a pool of a
    // thousand workers holds a few thousand), it reads a link per descriptor.
    let t = Instant::now();
    for s in &small {
        let _: SharedBytes = receive(&r, &encode(s)).unwrap();
    }
    let per_first = t.elapsed() / 1000;
    let files: Vec<_> = (0..3000)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let last = store.share_bytes(vec![1; 100]).unwrap();
    let t = Instant::now();
    let _: SharedBytes = receive(&r, &encode(&last)).unwrap();
    let crowded = t.elapsed();
    drop(files);
    eprintln!(
        "a value of 100 bytes: share {per_small:?}, first resolve {per_first:?} among ~1000 \
         descriptors, {crowded:?} among ~4000"
    );
    let n = 16 << 20;
    let t = Instant::now();
    let m = store.share(model(n)).unwrap();
    let share = t.elapsed();
    let args = encode(&m);
    let t = Instant::now();
    let got: Shared<Model> = receive(&r, &args).unwrap();
    let first = t.elapsed();
    assert_eq!(got.weights.len(), n);
    let t = Instant::now();
    for _ in 0..1000 {
        let _: Shared<Model> = receive(&r, &args).unwrap();
    }
    let cached = t.elapsed() / 1000;
    eprintln!(
        "Shared<Model> of {n} f32 ({} MiB encoded): share {share:?}, first decode in a \
         worker {first:?}, later tasks {cached:?} each",
        m.reference().len >> 20
    );
}
