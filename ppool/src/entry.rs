//! Entries: the [`Entry`] trait that `#[pool_entry]` implements, and the link-time table in
//! which every entry of the binary is found by its stable name.

use crate::codec;
use crate::error::Error;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::OnceLock;

/// A value that can travel to a worker and back: serde in both directions, `Send` and
/// `'static`. Implemented for every such type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be sent to or from a worker process",
    label = "must implement `serde::Serialize + serde::de::DeserializeOwned + Send + 'static`",
    note = "derive `serde::Serialize` and `serde::Deserialize` for it, or pass an owned type that does"
)]
pub trait Portable: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> Portable for T {}

/// A function registered with [`#[pool_entry]`](crate::pool_entry), seen as a type.
///
/// `#[pool_entry] fn square(x: u64) -> u64` defines a type `square` next to the function, and
/// `ProcessPool::<square>` is typed by it: its tasks are [`Args`](Entry::Args) and its results
/// [`Output`](Entry::Output). Implement it only through the attribute.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a pool entry",
    label = "not a `#[pool_entry]` function",
    note = "mark a free function with `#[pool_entry]` and name it as `ProcessPool::<that_function>`"
)]
pub trait Entry: 'static {
    /// The task: the single argument, a tuple of the arguments, or `()`.
    type Args: Portable;
    /// The return type.
    type Output: Portable;
    /// The stable name: module path and identifier.
    const NAME: &'static str;
    /// Calls the function.
    fn call(args: Self::Args) -> Self::Output;
}

/// Why an entry could not run on a worker, apart from panicking.
#[derive(Debug)]
pub(crate) struct CodecFailure {
    pub(crate) action: &'static str,
    pub(crate) message: String,
}

/// One row of the link-time table.
#[doc(hidden)]
#[derive(Debug)]
pub struct EntryRecord {
    pub(crate) name: &'static str,
    pub(crate) file: &'static str,
    pub(crate) line: u32,
    pub(crate) run: fn(&[u8], &mut Vec<u8>) -> Result<(), CodecFailure>,
    pub(crate) signature: fn() -> [&'static str; 2],
}

impl EntryRecord {
    /// The record of entry `E`, defined at `file:line`.
    pub const fn of<E: Entry>(file: &'static str, line: u32) -> Self {
        EntryRecord {
            name: E::NAME,
            file,
            line,
            run: run::<E>,
            signature: signature::<E>,
        }
    }

    pub(crate) fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

fn run<E: Entry>(input: &[u8], out: &mut Vec<u8>) -> Result<(), CodecFailure> {
    let args: E::Args = codec::decode(input).map_err(|message| CodecFailure {
        action: "decode the arguments",
        message,
    })?;
    let output = E::call(args);
    codec::encode_into(&output, out).map_err(|message| CodecFailure {
        action: "encode the result",
        message,
    })
}

fn signature<E: Entry>() -> [&'static str; 2] {
    [
        std::any::type_name::<E::Args>(),
        std::any::type_name::<E::Output>(),
    ]
}

/// Every entry of the binary, gathered by the linker.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static ENTRIES: [EntryRecord];

/// Finds an entry by name; two entries with the name are an error naming both places.
pub(crate) fn find(name: &str) -> Result<&'static EntryRecord, Error> {
    let mut found: Option<&'static EntryRecord> = None;
    for record in ENTRIES.iter().filter(|r| r.name == name) {
        if let Some(first) = found {
            return Err(Error::DuplicateEntry {
                name: name.to_string(),
                first: first.location(),
                second: record.location(),
            });
        }
        found = Some(record);
    }
    found.ok_or_else(|| Error::spawn(format!("no pool entry named `{name}` in this binary")))
}

/// The index of entry `name` in this binary's entry table (the same in every process of one
/// build), for TASKS frames of another entry than a pool's own.
pub(crate) fn index_of(name: &str) -> Result<u32, Error> {
    let record = find(name)?;
    ENTRIES
        .iter()
        .position(|r| std::ptr::eq(r, record))
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| Error::spawn(format!("no pool entry named `{name}` in this binary")))
}

/// The entry at `index` in this binary's entry table.
pub(crate) fn by_index(index: u32) -> Option<&'static EntryRecord> {
    ENTRIES.get(index as usize)
}

/// A fingerprint of this build's entry table (names and signatures) and protocol, so that a
/// worker binary of another build is refused instead of misreading the bytes it is sent.
pub(crate) fn build_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        let mut rows: Vec<String> = ENTRIES
            .iter()
            .map(|r| {
                let [args, output] = (r.signature)();
                format!("{}({args})->{output}", r.name)
            })
            .collect();
        rows.sort();
        let mut hash = Fnv::new();
        hash.write(env!("CARGO_PKG_VERSION").as_bytes());
        hash.write(&crate::protocol::PROTOCOL_VERSION.to_le_bytes());
        for row in &rows {
            hash.write(row.as_bytes());
            hash.write(&[0]);
        }
        hash.0
    })
}

/// FNV-1a, 64 bits: stable across Rust versions, unlike `DefaultHasher`.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Compile-time check that `T` can travel to a worker; emitted by `#[pool_entry]` at each of
/// the user's types so errors point there.
#[doc(hidden)]
pub const fn assert_portable<T: Portable>() {}
