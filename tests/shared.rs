//! Shared inputs with real worker processes: a value decoded once per worker, bytes read in
//! place from a read-only mapping, a value freed everywhere after its last handle, a forged
//! reference, a worker killed while it holds a value, another pool's value, and `share`
//! after `shutdown`; values shared with a builder, taken by the initializer (decoded once per
//! worker, replacements too; held while the pool lives; refused from another builder; in
//! debug mode). The remote half (a host sent a value once, a host that cannot store it, an
//! initializer's bytes sent to each host once before its workers start) uses command-prefix
//! hosts, so nothing here needs root.

use ppool::{Error, ProcessPool, Remote, Shared, SharedBytes, WorkerState, pool_entry};
use ppool_tests::eventually;
use serde::{Deserialize, Deserializer, Serialize};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

ppool::test_support!();

/// How many times this process decoded a [`Counted`].
static DECODES: AtomicU64 = AtomicU64::new(0);

/// A value whose `Deserialize` counts.
#[derive(Serialize, Debug)]
struct Counted(Vec<u64>);

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DECODES.fetch_add(1, Ordering::SeqCst);
        Ok(Counted(Vec::deserialize(d)?))
    }
}

/// This worker's pid, how many times it decoded a `Counted`, and the value's sum.
#[pool_entry]
fn decodes(table: Shared<Counted>, _i: u64) -> (u32, u64, u64) {
    let sum = table.0.iter().sum();
    (std::process::id(), DECODES.load(Ordering::SeqCst), sum)
}

#[test]
fn a_shared_value_is_decoded_once_per_worker_across_two_thousand_tasks() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<decodes>::new(2).expect("pool");
    let table = pool.share(Counted((0..10_000).collect())).expect("shared");
    let got = pool
        .batch((0..2_000).map(|i| (table.clone(), i)))
        .wait()
        .expect("batch");
    assert_eq!(got.len(), 2_000);
    let sum: u64 = (0..10_000).sum();
    assert!(got.iter().all(|&(_, _, s)| s == sum));
    let mut pids: Vec<u32> = got.iter().map(|&(pid, _, _)| pid).collect();
    pids.sort_unstable();
    pids.dedup();
    for pid in pids {
        let most = got.iter().filter(|g| g.0 == pid).map(|g| g.1).max();
        assert_eq!(most, Some(1), "worker {pid} decoded it more than once");
    }
    // The program that shared it reads it too, without decoding.
    assert_eq!(table.0.len(), 10_000);
    pool.join().expect("join");
}

/// The mapping of this process that holds address `at`, as `/proc/self/maps` says: its
/// permissions and its path.
fn mapping_of(at: *const u8) -> (String, String) {
    let at = at as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let line = maps.lines().find(|line| {
        let range = line.split_whitespace().next().unwrap_or("");
        let (lo, hi) = range.split_once('-').unwrap_or(("0", "0"));
        let lo = usize::from_str_radix(lo, 16).unwrap_or(0);
        let hi = usize::from_str_radix(hi, 16).unwrap_or(0);
        (lo..hi).contains(&at)
    });
    let mut fields = line.unwrap_or("").split_whitespace();
    let perms = fields.nth(1).unwrap_or("").to_string();
    let path = fields.nth(3).unwrap_or("").to_string();
    (perms, path)
}

/// The mapping that holds `bytes` in this worker, as `/proc/self/maps` says: its permissions
/// and its path; and the bytes' sum.
#[pool_entry]
fn where_bytes(bytes: SharedBytes) -> (String, String, u64) {
    let (perms, path) = mapping_of(bytes.as_ptr());
    (perms, path, bytes.iter().map(|&b| u64::from(b)).sum())
}

#[test]
fn shared_bytes_lie_in_a_read_only_shared_mapping_of_the_worker() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<where_bytes>::new(1).expect("pool");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
    let bytes = pool.share_bytes(data).expect("shared");
    let (perms, path, got) = pool.call(bytes).expect("call");
    assert_eq!(got, sum);
    assert_eq!(perms, "r--s", "the mapping is read-only and shared: {path}");
    assert!(path.contains("memfd:ppool-share"), "{path}");
    pool.join().expect("join");
}

/// This worker's pid, once it has read `bytes`.
#[pool_entry]
fn read_it(bytes: SharedBytes, _i: u32) -> u32 {
    assert!(bytes.len() > 1);
    std::process::id()
}

/// Whether process `pid` maps the memfd named `name` (its `/proc/<pid>/maps` names it).
fn maps_a_value(pid: u32, name: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| maps.contains(name))
}

/// Whether process `pid` holds the memfd named `name` open.
fn holds(pid: u32, name: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|link| link.to_string_lossy().contains(name))
        })
    })
}

/// The memfd name of a shared value, as a worker maps it (other tests of this binary run
/// pools of their own in this process).
fn memfd_name(path: &str) -> String {
    let name = path.trim_start_matches('/').to_string();
    assert!(name.starts_with("memfd:ppool-share-"), "{path}");
    name
}

#[test]
fn a_value_is_freed_on_every_worker_after_its_last_clone_is_dropped() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<read_it>::new(2).expect("pool");
    let bytes = pool.share_bytes(vec![7u8; 4 << 20]).expect("shared");
    let (_, path, _) = pool
        .entry::<where_bytes>()
        .call(bytes.clone())
        .expect("call");
    let name = memfd_name(&path);
    let mut pids: Vec<u32> = pool
        .batch((0..200).map(|i| (bytes.clone(), i)))
        .wait()
        .expect("batch");
    pids.sort_unstable();
    pids.dedup();
    assert!(pids.iter().all(|&pid| maps_a_value(pid, &name)), "{pids:?}");
    let me = std::process::id();
    assert!(holds(me, &name));
    drop(bytes);
    assert!(
        !holds(me, &name),
        "the supervisor let it go with its last handle"
    );
    let freed = eventually(Duration::from_secs(10), || {
        !pids.iter().any(|&pid| maps_a_value(pid, &name))
    });
    assert!(freed, "workers still map it");
    pool.join().expect("join");
}

/// Decodes `wire` as a `SharedBytes` in this worker, as a forged task argument would be, and
/// says what came of it.
#[pool_entry]
fn forge(wire: Vec<u8>) -> Result<usize, String> {
    postcard::from_bytes::<SharedBytes>(&wire)
        .map(|bytes| bytes.len())
        .map_err(|e| e.to_string())
}

/// Reads a varint at the start of `bytes`: its value and the rest.
fn varint(bytes: &[u8]) -> (u64, &[u8]) {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (value, &bytes[i + 1..]);
        }
    }
    panic!("a cut varint in {bytes:?}");
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The `(id, len, hash)` a handle travels as, read from its postcard form: a byte string of
/// the id and the length as varints, then the hash as 8 little-endian bytes.
fn reference_of(bytes: &SharedBytes) -> (u64, u64, u64) {
    let wire = postcard::to_allocvec(bytes).expect("encode");
    let (string_len, rest) = varint(&wire);
    assert_eq!(string_len as usize, rest.len());
    let (id, rest) = varint(rest);
    let (len, rest) = varint(rest);
    let hash = u64::from_le_bytes(rest.try_into().expect("8 bytes of hash"));
    (id, len, hash)
}

/// The postcard form of a reference to `(id, len, hash)`, made by hand.
fn forged(id: u64, len: u64, hash: u64) -> Vec<u8> {
    let mut compact = Vec::new();
    put_varint(&mut compact, id);
    put_varint(&mut compact, len);
    compact.extend_from_slice(&hash.to_le_bytes());
    let mut wire = Vec::new();
    put_varint(&mut wire, compact.len() as u64);
    wire.extend_from_slice(&compact);
    wire
}

#[test]
fn a_forged_reference_fails_its_task_alone() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<forge>::new(1).expect("pool");
    let real = pool.share_bytes(vec![1u8; 1000]).expect("shared");
    let (id, len, hash) = reference_of(&real);
    assert_eq!(len, 1000);
    // Made by hand, the real reference resolves: the forged ones below reach the same checks.
    assert_eq!(pool.call(forged(id, len, hash)), Ok(Ok(1000)));
    let refused = |wire: Vec<u8>| match pool.call(wire) {
        Ok(Err(why)) => why,
        other => panic!("a forged reference was not refused: {other:?}"),
    };
    // An id the pool never shared, the real id with a wrong hash or length, and bytes that
    // are no reference. (postcard keeps no error text of its own: the reasons are in the
    // pool's own errors, which the unit tests of `share` read.)
    refused(forged(id + 999, len, hash));
    refused(forged(id, len, hash ^ 1));
    refused(forged(id, len - 1, hash));
    refused(vec![3, 0xff, 0xff, 0xff]);
    // The pool and the value are unharmed.
    assert_eq!(pool.entry::<read_it>().call((real, 0)).map(|_| ()), Ok(()));
    pool.join().expect("join");
}

/// Reads `bytes` whole, then ends this worker if asked to.
#[pool_entry]
fn read_then_die(bytes: SharedBytes, die: bool) -> u64 {
    let sum = bytes.iter().map(|&b| u64::from(b)).sum();
    if die {
        std::process::abort();
    }
    sum
}

#[test]
fn a_worker_killed_while_it_holds_a_value_fails_its_task_alone() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<read_then_die>::new(2).expect("pool");
    let bytes = pool.share_bytes(vec![1u8; 1 << 20]).expect("shared");
    let results = pool
        .batch((0..20).map(|i| (bytes.clone(), i == 7)))
        .wait_all();
    for (i, result) in results.iter().enumerate() {
        if i == 7 {
            assert!(
                matches!(result, Err(Error::WorkerDied { .. })),
                "{result:?}"
            );
        } else {
            assert_eq!(
                result.as_ref().ok(),
                Some(&(1 << 20)),
                "task {i}: {result:?}"
            );
        }
    }
    assert_eq!(pool.call((bytes, false)).ok(), Some(1 << 20));
    pool.join().expect("join");
}

#[test]
fn a_value_of_another_pool_and_share_after_shutdown_are_errors() {
    let _deadline = ppool_tests::deadline();
    let one = ProcessPool::<read_it>::new(1).expect("pool");
    let other = ProcessPool::<read_it>::new(1).expect("pool");
    let bytes = one.share_bytes(vec![1u8; 10]).expect("shared");
    let refused = other.call((bytes.clone(), 0));
    assert!(matches!(refused, Err(Error::Share { .. })), "{refused:?}");
    assert!(one.call((bytes, 0)).is_ok());
    one.shutdown();
    assert!(matches!(one.share_bytes(vec![1]), Err(Error::Closed)));
    assert!(matches!(one.share(1u64), Err(Error::Closed)));
    other.join().expect("join");
}

/// The length of a shared value, on a remote host.
#[pool_entry]
fn length_there(bytes: SharedBytes, _i: u32) -> (usize, u32) {
    (bytes.len(), std::process::id())
}

const TAG: &str = "PPOOL_SHARED_TAG";

/// Bytes that process `pid` read (its `/proc/<pid>/io` `rchar`).
fn bytes_read(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_host_is_sent_a_value_once_for_two_hundred_tasks_on_four_workers() {
    let _deadline = ppool_tests::deadline();
    let tag = "sent-once";
    let pool = ProcessPool::<length_there>::builder()
        .remote(Remote::command(ppool_tests::tagged_prefix(TAG, tag)).workers(4))
        .build()
        .expect("pool");
    let me = std::process::id();
    let agent = ppool_tests::processes_with_env(&ppool_tests::env_tag(TAG, tag))
        .into_iter()
        .find(|&(_, parent)| parent == me)
        .map(|(pid, _)| pid)
        .expect("its agent");
    let before = bytes_read(agent);
    let size = 64 << 20;
    let bytes = pool.share_bytes(vec![3u8; size]).expect("shared");
    let got = pool
        .batch((0..200).map(|i| (bytes.clone(), i)))
        .wait()
        .expect("batch");
    assert!(got.iter().all(|&(len, _)| len == size));
    let mut workers: Vec<u32> = got.iter().map(|&(_, pid)| pid).collect();
    workers.sort_unstable();
    workers.dedup();
    let read = bytes_read(agent) - before;
    assert!(
        read >= size as u64 && read < size as u64 * 21 / 20,
        "the agent read {read} bytes for a value of {size} used by 200 tasks on {} workers",
        workers.len()
    );
    // Freed: its agent lets go of it, and so do its workers.
    let (_, path, _) = pool
        .entry::<where_bytes>()
        .call(bytes.clone())
        .expect("call");
    let name = memfd_name(&path);
    assert!(holds(agent, &name));
    drop(bytes);
    let freed = eventually(Duration::from_secs(10), || {
        !holds(agent, &name) && !workers.iter().any(|&pid| maps_a_value(pid, &name))
    });
    assert!(freed, "the host still holds it");
    pool.join().expect("join");
}

#[test]
fn a_host_that_cannot_store_a_value_fails_its_tasks_alone() {
    let _deadline = ppool_tests::deadline();
    // Files of at most 8 MiB on the first host (its workers' rings fit, the value does not): a
    // memfd is a file.
    let mut small = vec![
        "sh".to_string(),
        "-c".into(),
        "ulimit -f 8192 && exec \"$0\" \"$@\"".into(),
    ];
    small.splice(0..0, ppool_tests::tagged_prefix(TAG, "small"));
    let pool = ProcessPool::<length_there>::builder()
        .remote(Remote::command(small).workers(1))
        .remote(Remote::command(ppool_tests::tagged_prefix(TAG, "roomy")).workers(1))
        .build()
        .expect("pool");
    let bytes = pool.share_bytes(vec![5u8; 16 << 20]).expect("shared");
    let results = pool.batch((0..40).map(|i| (bytes.clone(), i))).wait_all();
    let (mut ok, mut failed) = (0, 0);
    for result in &results {
        match result {
            Ok((len, _)) => {
                assert_eq!(*len, 16 << 20);
                ok += 1;
            }
            Err(Error::Codec { message, .. }) => {
                assert!(message.contains("could not store"), "{message}");
                failed += 1;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(ok > 0 && failed > 0, "{ok} ran, {failed} failed");
    // Both hosts go on, values or not.
    let small_only = pool.call((bytes, 0));
    assert!(small_only.is_ok() || matches!(small_only, Err(Error::Codec { .. })));
    assert_eq!(
        pool.insights()
            .workers
            .iter()
            .map(|w| w.restarts)
            .sum::<u64>(),
        0
    );
    pool.join().expect("join");
}

/// Reads every byte of `bytes`.
#[pool_entry]
fn read_all(bytes: SharedBytes) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

#[test]
fn reading_a_large_shared_value_does_not_count_against_the_memory_limit() {
    let _deadline = ppool_tests::deadline();
    let pool = ProcessPool::<read_all>::builder()
        .n_jobs(1)
        .worker_memory_limit(64 << 20)
        .build()
        .expect("pool");
    let bytes = pool.share_bytes(vec![1u8; 160 << 20]).expect("shared");
    for _ in 0..3 {
        assert_eq!(pool.call(bytes.clone()).ok(), Some(160 << 20));
    }
    assert_eq!(pool.insights().workers[0].restarts, 0);
    pool.join().expect("join");
}

/// What this worker's initializer read of its shared value: the value's sum, and how many
/// times this worker had decoded a [`Counted`] by then.
static INIT_READ: OnceLock<(u64, u64)> = OnceLock::new();

/// An initializer that reads a shared value and keeps what it learned.
#[pool_entry]
fn init_counted(table: Shared<Counted>) {
    let _ = INIT_READ.set((table.0.iter().sum(), DECODES.load(Ordering::SeqCst)));
}

/// This worker's pid, what its initializer read, and how many times it decoded a `Counted`
/// so far; with `die`, it aborts first.
#[pool_entry]
fn init_read(die: bool) -> (u32, Option<(u64, u64)>, u64) {
    if die {
        std::process::abort();
    }
    let decoded = DECODES.load(Ordering::SeqCst);
    (std::process::id(), INIT_READ.get().copied(), decoded)
}

/// The pids of the pool's live workers.
fn live_pids<F: ppool::Entry>(pool: &ProcessPool<F>) -> Vec<u32> {
    let mut pids: Vec<u32> = pool
        .insights()
        .workers
        .iter()
        .filter(|w| matches!(w.state, WorkerState::Idle | WorkerState::Busy))
        .filter_map(|w| w.pid)
        .collect();
    pids.sort_unstable();
    pids
}

#[test]
fn an_initializer_takes_a_value_shared_with_the_builder_decoded_once_per_worker() {
    let _deadline = ppool_tests::deadline();
    let builder = ProcessPool::<init_read>::builder().n_jobs(2).chunk_size(1);
    let table = builder
        .share(Counted((0..10_000).collect()))
        .expect("shared");
    let pool = builder
        .initializer::<init_counted>(table.clone())
        .worker_exit::<init_read>(false)
        .build()
        .expect("pool");
    let sum: u64 = (0..10_000).sum();
    let first = live_pids(&pool);
    assert_eq!(first.len(), 2, "{first:?}");
    for (pid, read, decoded) in pool.batch(vec![false; 40]).wait().expect("batch") {
        assert_eq!(read, Some((sum, 1)), "worker {pid}");
        assert_eq!(decoded, 1, "worker {pid}");
    }
    // The same handle goes into the pool's tasks: the value the initializer decoded is kept.
    let (pid, decoded, got) = pool
        .entry::<decodes>()
        .call((table.clone(), 0))
        .expect("call");
    assert_eq!((decoded, got), (1, sum), "worker {pid}");
    // A worker that dies is replaced, and its replacement runs the initializer with it.
    let died = pool.call(true);
    assert!(matches!(died, Err(Error::WorkerDied { .. })), "{died:?}");
    let replaced = eventually(Duration::from_secs(20), || {
        let now = live_pids(&pool);
        now.len() == 2 && now.iter().any(|pid| !first.contains(pid))
    });
    assert!(replaced, "no replacement: {:?}", pool.insights());
    pool.join().expect("join");
    let exits = pool
        .worker_exit_results::<init_read>()
        .expect("exit results");
    assert_eq!(exits.len(), 2, "{exits:?}");
    let mut pids = Vec::new();
    for exit in exits {
        let (pid, read, decoded) = exit.expect("the exit hook ran");
        assert_eq!((read, decoded), (Some((sum, 1)), 1), "worker {pid}");
        pids.push(pid);
    }
    assert!(
        pids.iter().any(|pid| !first.contains(pid)),
        "the replacement's exit is among {pids:?} (first workers {first:?})"
    );
}

/// What this worker's initializer was given: the bytes, and their sum.
static KEPT: OnceLock<(SharedBytes, u64)> = OnceLock::new();

/// An initializer that reads shared bytes whole and keeps them.
#[pool_entry]
fn keep_bytes(bytes: SharedBytes) {
    let sum = bytes.iter().map(|&b| u64::from(b)).sum();
    let _ = KEPT.set((bytes, sum));
}

/// This worker's pid and, when its initializer kept bytes, their length, their sum and the
/// path of the mapping they lie in; with `die`, it aborts first.
#[pool_entry]
fn kept_bytes(die: bool) -> (u32, Option<(usize, u64, String)>) {
    if die {
        std::process::abort();
    }
    let kept = KEPT
        .get()
        .map(|(bytes, sum)| (bytes.len(), *sum, mapping_of(bytes.as_ptr()).1));
    (std::process::id(), kept)
}

/// The agent of the host tagged `tag` (see [`ppool_tests::tagged_prefix`]).
fn agent_of(tag: &str) -> u32 {
    let me = std::process::id();
    let mine = ppool_tests::children_with_env(&ppool_tests::env_tag(TAG, tag), me);
    assert_eq!(mine.len(), 1, "host {tag}: {mine:?}");
    mine[0]
}

#[test]
fn an_initializer_on_two_hosts_reads_shared_bytes_each_host_received_once() {
    let _deadline = ppool_tests::deadline();
    // What an agent reads with no value: its program (it checks which build it is), the
    // pool's messages, its workers' answers.
    let plain = ProcessPool::<kept_bytes>::builder()
        .remote(Remote::command(ppool_tests::tagged_prefix(TAG, "init-plain")).workers(2))
        .worker_exit::<kept_bytes>(false)
        .build()
        .expect("pool");
    let got = plain.batch(vec![false; 40]).wait().expect("batch");
    assert!(got.iter().all(|(_, kept)| kept.is_none()));
    let baseline = bytes_read(agent_of("init-plain"));
    plain.join().expect("join");
    let tags = ["init-a", "init-b"];
    let mut builder = ProcessPool::<kept_bytes>::builder();
    for tag in tags {
        let prefix = ppool_tests::tagged_prefix(TAG, tag);
        builder = builder.remote(Remote::command(prefix).workers(2));
    }
    let size = 16 << 20;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
    let bytes = builder.share_bytes(data).expect("shared");
    let pool = builder
        .initializer::<keep_bytes>(bytes.clone())
        .worker_exit::<kept_bytes>(false)
        .build()
        .expect("pool");
    assert_eq!(pool.n_jobs(), 4);
    let agents: Vec<u32> = tags.iter().map(|tag| agent_of(tag)).collect();
    let got = pool.batch(vec![false; 40]).wait().expect("batch");
    for (pid, kept) in &got {
        let (len, got_sum, _) = kept.as_ref().expect("the initializer kept the bytes");
        assert_eq!((*len, *got_sum), (size, sum), "worker {pid}");
    }
    let name = memfd_name(&got[0].1.as_ref().expect("kept").2);
    // A task that names the same handle finds it there: it is not sent again.
    let there = pool
        .entry::<length_there>()
        .call((bytes.clone(), 0))
        .expect("call");
    assert_eq!(there.0, size);
    for (agent, tag) in agents.iter().zip(tags) {
        assert!(holds(*agent, &name), "host {tag} holds the value");
        let read = bytes_read(*agent).saturating_sub(baseline);
        assert!(
            read >= size as u64 && read < size as u64 * 21 / 20,
            "host {tag}'s agent read {read} bytes more than one without a value, for a \
             value of {size} and two workers"
        );
    }
    pool.join().expect("join");
    let exits = pool
        .worker_exit_results::<kept_bytes>()
        .expect("exit results");
    assert_eq!(exits.len(), 4, "{exits:?}");
    let mut pids = Vec::new();
    for exit in exits {
        let (pid, kept) = exit.expect("the exit hook ran");
        let (len, got_sum, path) = kept.expect("the initializer kept the bytes");
        assert_eq!((len, got_sum), (size, sum), "worker {pid}");
        assert!(path.contains("memfd:ppool-share"), "worker {pid}: {path}");
        pids.push(pid);
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(
        pids.len(),
        4,
        "every remote worker ran the initializer: {pids:?}"
    );
}

#[test]
fn a_host_that_joins_or_comes_back_is_sent_the_initializers_value_before_its_workers_start() {
    let _deadline = ppool_tests::deadline();
    let builder = ProcessPool::<kept_bytes>::builder()
        .remote(Remote::command(ppool_tests::tagged_prefix(TAG, "init-lost")).workers(1))
        .worker_exit::<kept_bytes>(false);
    let bytes = builder.share_bytes(vec![4u8; 1 << 20]).expect("shared");
    let pool = builder
        .initializer::<keep_bytes>(bytes)
        .build()
        .expect("pool");
    let joining = Remote::command(ppool_tests::tagged_prefix(TAG, "init-joined")).workers(1);
    pool.add_remote(joining).expect("a host joins");
    let (_, kept) = pool.call(false).expect("call");
    let name = memfd_name(&kept.expect("the initializer kept the bytes").2);
    let joined = agent_of("init-joined");
    assert!(holds(joined, &name), "the joined host holds the value");
    // The lost host's worker starts again on a new agent, which is sent the value again.
    let lost = agent_of("init-lost");
    ppool_tests::signal(lost, libc::SIGKILL);
    let me = std::process::id();
    let tag = ppool_tests::env_tag(TAG, "init-lost");
    let back = eventually(Duration::from_secs(30), || {
        let agents = ppool_tests::children_with_env(&tag, me);
        agents.len() == 1 && agents[0] != lost && live_pids(&pool).len() == 2
    });
    assert!(back, "{:#?}", pool.insights());
    assert!(
        holds(agent_of("init-lost"), &name),
        "the new agent holds the value"
    );
    pool.join().expect("join");
    let exits = pool
        .worker_exit_results::<kept_bytes>()
        .expect("exit results");
    assert_eq!(exits.len(), 2, "{exits:?}");
    for exit in exits {
        let (pid, kept) = exit.expect("the exit hook ran");
        let got = kept.map(|(len, sum, _)| (len, sum));
        assert_eq!(got, Some((1 << 20, 4 << 20)), "worker {pid}");
    }
}

#[test]
fn an_initializer_refuses_a_value_of_another_builder_or_pool() {
    let _deadline = ppool_tests::deadline();
    let one = ProcessPool::<kept_bytes>::builder().n_jobs(1);
    let ours = one.share_bytes(vec![1u8; 10]).expect("shared");
    let refused = |result: Result<ProcessPool<kept_bytes>, Error>, what: &str| match result {
        Err(Error::Share { message, .. }) => {
            assert!(message.contains("another pool"), "{what}: {message}");
            assert!(
                message.contains("share it with this builder"),
                "{what}: {message}"
            );
        }
        Err(other) => panic!("{what}: {other}"),
        Ok(_) => panic!("{what}: built"),
    };
    let other = ProcessPool::<kept_bytes>::builder()
        .n_jobs(1)
        .initializer::<keep_bytes>(ours.clone())
        .build();
    refused(other, "another builder's value in the initializer");
    let other = ProcessPool::<kept_bytes>::builder()
        .n_jobs(1)
        .worker_exit::<keep_bytes>(ours.clone())
        .build();
    refused(other, "another builder's value in the exit hook");
    let pool = ProcessPool::<read_it>::new(1).expect("pool");
    let theirs = pool.share_bytes(vec![2u8; 10]).expect("shared");
    let other = ProcessPool::<kept_bytes>::builder()
        .n_jobs(1)
        .initializer::<keep_bytes>(theirs)
        .build();
    refused(other, "a pool's value in the initializer");
    // Its own builder's pool takes it, in the initializer and in tasks alike.
    let mine = one
        .initializer::<keep_bytes>(ours.clone())
        .build()
        .expect("pool");
    let (_, kept) = mine.call(false).expect("call");
    assert_eq!(kept.map(|(len, _, _)| len), Some(10));
    assert!(mine.entry::<read_it>().call((ours, 0)).is_ok());
    // And another pool refuses it in a task.
    let task = pool.call((mine.share_bytes(vec![3u8; 2]).expect("shared"), 0));
    assert!(matches!(task, Err(Error::Share { .. })), "{task:?}");
    mine.join().expect("join");
    pool.join().expect("join");
}

#[test]
fn an_initializers_value_lives_while_the_pool_does_without_a_handle_and_not_after() {
    let _deadline = ppool_tests::deadline();
    let builder = ProcessPool::<kept_bytes>::builder().n_jobs(1);
    let bytes = builder.share_bytes(vec![9u8; 1 << 20]).expect("shared");
    // The only handle goes to the initializer.
    let pool = builder
        .initializer::<keep_bytes>(bytes)
        .build()
        .expect("pool");
    let (first, kept) = pool.call(false).expect("call");
    let (len, sum, path) = kept.expect("the initializer kept the bytes");
    assert_eq!((len, sum), (1 << 20, 9 << 20));
    let name = memfd_name(&path);
    let me = std::process::id();
    assert!(holds(me, &name));
    let died = pool.call(true);
    assert!(matches!(died, Err(Error::WorkerDied { .. })), "{died:?}");
    // Its replacement's initializer finds the value.
    let (second, kept) = pool.call(false).expect("call");
    assert_ne!(first, second, "a new worker");
    assert_eq!(
        kept.map(|(len, sum, _)| (len, sum)),
        Some((1 << 20, 9 << 20))
    );
    assert!(holds(me, &name));
    pool.join().expect("join");
    assert!(!holds(me, &name), "the pool let it go at join");
}

#[test]
fn an_initializer_takes_a_shared_value_in_debug_mode() {
    let _deadline = ppool_tests::deadline();
    let builder = ProcessPool::<init_read>::builder().debug(true);
    let table = builder.share(Counted((0..100).collect())).expect("shared");
    let pool = builder
        .initializer::<init_counted>(table)
        .build()
        .expect("pool");
    let (pid, read, _) = pool.call(false).expect("call");
    assert_eq!(pid, std::process::id(), "served in this process");
    assert_eq!(read.map(|(sum, _)| sum), Some((0..100).sum()));
    pool.join().expect("join");
}

#[test]
fn a_host_that_cannot_store_an_initializers_value_fails_the_build_or_is_left_out() {
    let _deadline = ppool_tests::deadline();
    // Files of at most 8 MiB on the first host: the value (a memfd is a file) does not fit.
    let small = |tag: &str| {
        let mut prefix = vec![
            "sh".to_string(),
            "-c".into(),
            "ulimit -f 8192 && exec \"$0\" \"$@\"".into(),
        ];
        prefix.splice(0..0, ppool_tests::tagged_prefix(TAG, tag));
        prefix
    };
    let value = vec![3u8; 16 << 20];
    // Without `min_workers`, the build fails, naming the host and why.
    let builder = ProcessPool::<kept_bytes>::builder();
    let bytes = builder.share_bytes(value.clone()).expect("shared");
    let e = builder
        .remote(Remote::command(small("init-small")).workers(1))
        .remote(Remote::command(ppool_tests::tagged_prefix(TAG, "init-roomy")).workers(1))
        .initializer::<keep_bytes>(bytes)
        .build()
        .expect_err("a host cannot store the initializer's value");
    let text = e.to_string();
    assert!(matches!(e, Error::Spawn { .. }), "{e:?}");
    assert!(text.contains("could not store"), "{text}");
    // With `min_workers(1)`, the pool starts with the host that could, and says why the other
    // is missing.
    let builder = ProcessPool::<kept_bytes>::builder();
    let bytes = builder.share_bytes(value).expect("shared");
    let pool = builder
        .remote(Remote::command(small("init-small2")).workers(1))
        .remote(Remote::command(ppool_tests::tagged_prefix(TAG, "init-roomy2")).workers(1))
        .min_workers(1)
        .initializer::<keep_bytes>(bytes)
        .build()
        .expect("the roomy host's worker is enough");
    let (_, kept) = pool.call(false).expect("a task on the roomy host");
    let (len, sum, _) = kept.expect("its initializer kept the bytes");
    assert_eq!((len, sum), (16 << 20, 3 * (16 << 20)));
    let hosts = pool.insights().hosts;
    let failed: Vec<_> = hosts.iter().filter(|h| h.error.is_some()).collect();
    assert_eq!(failed.len(), 1, "{hosts:?}");
    let why = failed[0].error.as_deref().unwrap_or_default();
    assert!(why.contains("could not store"), "{why}");
    pool.join().expect("join");
}
