//! Entries: the [`Entry`] trait that `#[pool_entry]` implements, and the link-time table in
//! which every entry of the binary is found by its stable name.

use crate::codec;
use crate::error::Error;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::OnceLock;

/// A value that can travel to a worker and back: serde in both directions and `'static`.
/// Implemented for every such type, and only for them. An entry's arguments and return type
/// are `Portable + Send`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be sent to or from a worker process",
    label = "must implement `serde::Serialize` and `serde::de::DeserializeOwned`",
    note = "an entry's arguments and its return type must be `serde::Serialize + serde::de::DeserializeOwned + Send + 'static`",
    note = "derive `serde::Serialize` and `serde::Deserialize` for it, or pass an owned type that has them"
)]
pub trait Portable: Sized + 'static {
    /// Appends the encoding of `self` to `out`.
    #[doc(hidden)]
    fn encode_into(&self, out: &mut Vec<u8>, _: sealed::Token) -> Result<(), String>;

    /// Decodes a whole value from `bytes`.
    #[doc(hidden)]
    fn decode_from(bytes: &[u8], _: sealed::Token) -> Result<Self, String>;
}

// `do_not_recommend`: a type that misses `Serialize`, `Deserialize` or both is one error,
// `Portable`'s own, rather than one per missing trait. `Portable` has no serde supertraits
// for the same reason: each would be checked, and reported, on its own.
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned + 'static> Portable for T {
    #[inline]
    fn encode_into(&self, out: &mut Vec<u8>, _: sealed::Token) -> Result<(), String> {
        codec::encode_into(self, out)
    }

    #[inline]
    fn decode_from(bytes: &[u8], _: sealed::Token) -> Result<Self, String> {
        codec::decode(bytes)
    }
}

/// Encodes `value` with the codec: `Portable`'s method, which only this crate can call.
pub(crate) fn encode_into<T: Portable>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    value.encode_into(out, sealed::Token(()))
}

/// Decodes a `T` with the codec.
pub(crate) fn decode<T: Portable>(bytes: &[u8]) -> Result<T, String> {
    T::decode_from(bytes, sealed::Token(()))
}

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
pub trait Entry: sealed::MadeByPoolEntry + 'static {
    /// The task: the single argument, a tuple of the arguments, or `()`.
    type Args: Portable + Send;
    /// The return type.
    type Output: Portable + Send;
    /// The stable name: module path and identifier.
    const NAME: &'static str;
    /// Calls the function.
    fn call(args: Self::Args) -> Self::Output;

    /// What a returned value says went wrong, when it is an `Err`: the error's `Display` (or
    /// `Debug`) text. An initializer whose entry returns one fails the worker's start.
    #[doc(hidden)]
    fn failure(output: &Self::Output) -> Option<String> {
        let _ = output;
        None
    }
}

/// Reading an `Err` out of any return type, by autoref specialization in the code that
/// `#[pool_entry]` expands to (where the type is concrete): `(&&&Probe(&value)).failure()`
/// finds the first of these that applies.
pub(crate) mod failure {
    use std::fmt::{Debug, Display};

    /// A returned value, looked at.
    #[derive(Debug)]
    pub struct Probe<'a, T>(pub &'a T);

    /// A `Result` whose error is `Display`.
    pub trait ViaDisplay {
        /// The error's text, for an `Err`.
        fn failure(&self) -> Option<String>;
    }

    impl<T, E: Display> ViaDisplay for &&Probe<'_, Result<T, E>> {
        fn failure(&self) -> Option<String> {
            self.0.as_ref().err().map(|e| e.to_string())
        }
    }

    /// A `Result` whose error is `Debug` only.
    pub trait ViaDebug {
        /// The error's text, for an `Err`.
        fn failure(&self) -> Option<String>;
    }

    impl<T, E: Debug> ViaDebug for &Probe<'_, Result<T, E>> {
        fn failure(&self) -> Option<String> {
            self.0.as_ref().err().map(|e| format!("{e:?}"))
        }
    }

    /// Anything else: never a failure.
    pub trait ViaAny {
        /// `None`.
        fn failure(&self) -> Option<String>;
    }

    impl<T> ViaAny for Probe<'_, T> {
        fn failure(&self) -> Option<String> {
            None
        }
    }
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
    /// Runs the entry as an initializer: `Some(text)` when it returned an `Err`.
    pub(crate) init: fn(&[u8]) -> Result<Option<String>, CodecFailure>,
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
            init: init::<E>,
            signature: signature::<E>,
        }
    }

    pub(crate) fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

fn run<E: Entry>(input: &[u8], out: &mut Vec<u8>) -> Result<(), CodecFailure> {
    let args: E::Args = decode(input).map_err(|message| CodecFailure {
        action: "decode the arguments",
        message,
    })?;
    let output = E::call(args);
    encode_into(&output, out).map_err(|message| CodecFailure {
        action: "encode the result",
        message,
    })
}

fn init<E: Entry>(input: &[u8]) -> Result<Option<String>, CodecFailure> {
    let args: E::Args = decode(input).map_err(|message| CodecFailure {
        action: "decode the arguments",
        message,
    })?;
    Ok(E::failure(&E::call(args)))
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
    found.ok_or_else(|| Error::UnknownEntry {
        name: name.to_string(),
    })
}

/// The index of entry `name` in this binary's entry table (the same in every process of one
/// build), for TASKS frames of another entry than a pool's own.
pub(crate) fn index_of(name: &str) -> Result<u32, Error> {
    let record = find(name)?;
    ENTRIES
        .iter()
        .position(|r| std::ptr::eq(r, record))
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| Error::UnknownEntry {
            name: name.to_string(),
        })
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

/// Sealing [`Entry`]: only `#[pool_entry]` implements it, since a worker finds an entry by the
/// record that the attribute puts in the link-time table, and a hand-written impl would have
/// none.
pub(crate) mod sealed {
    /// A value only this crate can make: `Portable`'s methods take one, so no other crate can
    /// implement or call them.
    #[derive(Debug)]
    pub struct Token(pub(crate) ());

    /// Implemented by `#[pool_entry]` for its marker type, and by nothing else.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` implements `Entry` by hand; only `#[pool_entry]` may implement it",
        label = "not made by `#[pool_entry]`",
        note = "a worker finds an entry through the record `#[pool_entry]` registers; mark the function with `#[pool_entry]` instead"
    )]
    pub trait MadeByPoolEntry {}
}

/// What `#[pool_entry]` needs beyond [`Entry`].
pub(crate) mod check {
    /// The argument and return type of an entry whose signature `#[pool_entry]` rejected: it
    /// keeps `ProcessPool::<that_entry>` from adding errors of its own to the attribute's.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub struct InvalidEntry;
}
