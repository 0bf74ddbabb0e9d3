//! Sealed memfds: a value written once into a memfd that is then sealed against every change,
//! and read-only mappings of it in any number of processes. The storage of shared inputs
//! (`share`); all the `unsafe` code it needs is here.
//!
//! # Layout
//!
//! A sealed memfd is a header page followed by the payload, so that the payload starts on a
//! page boundary and is mapped on its own (offset [`HEADER`]):
//!
//! | offset | bytes | content |
//! |---|---|---|
//! | 0 | 8 | magic, `b"PPLSEAL\x01"` |
//! | 8 | 8 | version of this layout ([`VERSION`]) |
//! | 16 | 8 | the pool's token |
//! | 24 | 8 | the value's id in its pool |
//! | 32 | 8 | what the payload is ([`Kind`]) |
//! | 40 | 8 | the payload's length in bytes |
//! | 48 | 8 | the payload's xxh3 hash |
//! | 56 | 4040 | zero |
//! | 4096 | len | the payload |
//!
//! Integers are little-endian. The file is exactly `HEADER + len` bytes. The header is read
//! with `pread` into a local buffer and parsed by pure code ([`Header::parse`]), so it is tested
//! under Miri with the rest of the checks; only the mapping needs the kernel.
//!
//! # Writing
//!
//! [`SealedWriter`] creates the memfd (close-on-exec, sealable, named
//! [`memfd_name`]`(token, id)` so that other processes can find it in `/proc/<pid>/fd`) once
//! the size is known to fit the memory available (`share::room`), sizes it and reserves its
//! memory at once (so that the kernel's refusal comes before any byte is copied), then takes the payload in
//! pieces through `pwrite` (never through a writable mapping), hashing as it goes. Its
//! [`finish`](SealedWriter::finish) checks the length and the hash, writes the header, adds
//! every seal, and opens the result as a reader would. [`Sealed::create`] does all of it
//! for a payload in memory.
//!
//! # Invariants
//!
//! The `unsafe` code below relies on these; its `SAFETY` notes cite them by number.
//!
//! 1. **Mapped only when sealed.** A mapping is made (by [`Sealed::from_fd`], the one caller
//!    of the `unsafe fn` [`ReadOnly::map`]) only for a descriptor whose seals include `F_SEAL_WRITE`,
//!    `F_SEAL_GROW`, `F_SEAL_SHRINK` and `F_SEAL_SEAL` ([`REQUIRED_SEALS`]), read back with
//!    `F_GET_SEALS` from the descriptor itself, never assumed. Seals cannot be removed. From
//!    then on, in every process: `write`, `pwrite`, `ftruncate` and `fallocate` on the file
//!    fail, no shared writable mapping of it can exist (the kernel refuses `F_SEAL_WRITE`
//!    while one exists, and refuses to make one afterwards), and its size is fixed.
//! 2. **Within the file.** The size is read with `fstat` after the seals are checked (so it
//!    cannot change any more), must equal `HEADER + len` of the header, and the mapping is
//!    `len` bytes at offset `HEADER`: every byte of it is backed by the file, so no access
//!    through it can fault with `SIGBUS`.
//! 3. **Read-only and shared.** The mapping is `PROT_READ`, `MAP_SHARED`. No writable view of
//!    the bytes exists in this process (the writer never maps; it writes with `pwrite` before
//!    sealing), nor, by 1, in any other.
//! 4. **Lifetime.** The mapping is unmapped once, in `Drop`, and every slice handed out
//!    borrows the [`ReadOnly`] (through `&self`), so none outlives it.
//!
//! By 1 to 3 the payload's bytes never change while mapped, so, unlike the rings of
//! `shm::mapping` (which a peer writes), handing out a `&[u8]` into the mapping is sound: it
//! is immutable memory for as long as the reference lives (4).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::{self, NonNull};

use rustix::fs::{FallocateFlags, MemfdFlags, OFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use crate::share::hash::Hasher;

/// The header's size, and the payload's offset: one page.
pub(crate) const HEADER: usize = 4096;
/// The version of this layout, in the header.
pub(crate) const VERSION: u64 = 1;
/// The first word of a sealed memfd.
const MAGIC: [u8; 8] = *b"PPLSEAL\x01";
/// The bytes of the header that carry fields; the rest of the page is zero.
const FIELDS: usize = 56;
/// The seals a reader insists on (invariant 1).
pub(crate) const REQUIRED_SEALS: SealFlags = SealFlags::WRITE
    .union(SealFlags::GROW)
    .union(SealFlags::SHRINK)
    .union(SealFlags::SEAL);
/// The largest payload: the file, header included, must fit an `isize` (a mapping's limit).
pub(crate) const MAX_LEN: u64 = isize::MAX as u64 - HEADER as u64;

/// What a payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A value encoded with the crate's codec (`Shared<T>`).
    Value,
    /// Raw bytes (`SharedBytes`).
    Bytes,
    /// In place of a value that its host could not store: why, as text, for the workers
    /// that look for it.
    Failed,
}

impl Kind {
    pub(crate) fn code(self) -> u64 {
        match self {
            Kind::Value => 1,
            Kind::Bytes => 2,
            Kind::Failed => 3,
        }
    }

    pub(crate) fn from_code(code: u64) -> Option<Kind> {
        match code {
            1 => Some(Kind::Value),
            2 => Some(Kind::Bytes),
            3 => Some(Kind::Failed),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Value => "an encoded value",
            Kind::Bytes => "bytes",
            Kind::Failed => "a value its host could not store",
        })
    }
}

/// The header of a sealed memfd: what it holds and whose it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The token of the pool that shared it.
    pub(crate) token: u64,
    /// Its id in that pool.
    pub(crate) id: u64,
    /// What the payload is.
    pub(crate) kind: Kind,
    /// The payload's length in bytes.
    pub(crate) len: u64,
    /// The payload's hash ([`crate::share::hash`]).
    pub(crate) hash: u64,
}

impl Header {
    /// The header's fields as they are stored (the rest of the header page is zero).
    pub(crate) fn to_bytes(self) -> [u8; FIELDS] {
        let mut out = [0u8; FIELDS];
        let words = [
            u64::from_le_bytes(MAGIC),
            VERSION,
            self.token,
            self.id,
            self.kind.code(),
            self.len,
            self.hash,
        ];
        for (chunk, word) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }

    /// Parses the first bytes of a sealed memfd: magic, version, kind and length in range.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Header, String> {
        let Some(fields) = bytes.get(..FIELDS) else {
            return Err(format!(
                "{} bytes are too few for the header of a shared value",
                bytes.len()
            ));
        };
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&fields[8 * i..8 * i + 8]);
            u64::from_le_bytes(w)
        };
        if word(0) != u64::from_le_bytes(MAGIC) {
            return Err("not a ppool shared value (bad magic)".into());
        }
        let version = word(1);
        if version != VERSION {
            return Err(format!(
                "shared-value layout version {version}, this build has {VERSION}"
            ));
        }
        let kind = Kind::from_code(word(4))
            .ok_or_else(|| format!("a shared value of unknown kind {}", word(4)))?;
        let len = word(5);
        if len > MAX_LEN {
            return Err(format!(
                "a shared value claims {len} bytes, beyond the address space"
            ));
        }
        Ok(Header {
            token: word(2),
            id: word(3),
            kind,
            len,
            hash: word(6),
        })
    }

    /// The size of the file that holds this header and its payload.
    pub(crate) fn file_len(&self) -> u64 {
        HEADER as u64 + self.len
    }

    /// Checks that this header is the one `expected` describes; the error names the first
    /// field that differs (a forged or stale reference, or another pool's value).
    pub(crate) fn expect(&self, expected: &Header) -> Result<(), String> {
        let id = expected.id;
        if self.token != expected.token {
            return Err(format!(
                "the memfd found for shared value #{id} belongs to another pool"
            ));
        }
        if self.id != id {
            return Err(format!(
                "the memfd found for shared value #{id} holds value #{}",
                self.id
            ));
        }
        if self.kind != expected.kind {
            return Err(format!(
                "shared value #{id} holds {}, not {}",
                self.kind, expected.kind
            ));
        }
        if self.len != expected.len {
            return Err(format!(
                "shared value #{id} is {} bytes long, the reference says {}",
                self.len, expected.len
            ));
        }
        if self.hash != expected.hash {
            return Err(format!(
                "shared value #{id} has hash {:016x}, the reference says {:016x}",
                self.hash, expected.hash
            ));
        }
        Ok(())
    }
}

/// The name of the memfd of value `id` of the pool with `token`, as `memfd_create` is given
/// it (the kernel shows it as `/memfd:<name> (deleted)`).
pub(crate) fn memfd_name(token: u64, id: u64) -> String {
    format!("ppool-share-{token:016x}-{id:016x}")
}

/// What `readlink` of `/proc/<pid>/fd/<n>` shows for the memfd of value `id` of the pool with
/// `token`.
pub(crate) fn memfd_link(token: u64, id: u64) -> String {
    format!("/memfd:{} (deleted)", memfd_name(token, id))
}

/// The id of the value of the pool with `token` whose memfd `readlink` shows as `link`, if it
/// is one (the inverse of [`memfd_link`]).
pub(crate) fn parse_memfd_link(token: u64, link: &[u8]) -> Option<u64> {
    let prefix = format!("/memfd:ppool-share-{token:016x}-");
    let hex = link
        .strip_prefix(prefix.as_bytes())?
        .strip_suffix(b" (deleted)")?;
    if hex.len() != 16 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// An error of kind `InvalidData` saying `what`.
fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Checks the seals of a descriptor (invariant 1).
pub(crate) fn check_seals(seals: SealFlags) -> Result<(), String> {
    if seals.contains(REQUIRED_SEALS) {
        Ok(())
    } else {
        Err(format!(
            "the memfd is not fully sealed (it has {seals:?}, a shared value needs {:?}): \
             a writable view of it could exist",
            REQUIRED_SEALS
        ))
    }
}

/// A system error with what was being done in front, keeping its kind and OS code as the
/// source.
fn context(what: impl fmt::Display, e: impl Into<io::Error>) -> io::Error {
    let e: io::Error = e.into();
    io::Error::new(e.kind(), Context(format!("{what}: {e}"), e))
}

/// An `io::Error` payload: a message with the system's error beneath it.
#[derive(Debug)]
struct Context(String, io::Error);

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Context {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.1)
    }
}

/// The system error beneath an error that [`context`] made, or the error itself.
pub(crate) fn os_error(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<Context>())
            .and_then(|c| c.1.raw_os_error())
    })
}

/// Writes all of `buf` at `offset`, going on after short writes and interruptions.
fn pwrite_all(fd: BorrowedFd<'_>, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::pwrite(fd, buf, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes at `offset`.
fn pread_exact(fd: BorrowedFd<'_>, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::pread(fd, &mut *buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Creates an empty sealable memfd named `name`, close-on-exec, also sealed against
/// execution where the kernel knows how (Linux 6.3 and newer, and required there when
/// `vm.memfd_noexec` is 2).
fn memfd(name: &str) -> io::Result<OwnedFd> {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    match rustix::fs::memfd_create(name, flags | MemfdFlags::NOEXEC_SEAL) {
        Err(rustix::io::Errno::INVAL) => Ok(rustix::fs::memfd_create(name, flags)?),
        other => Ok(other?),
    }
}

/// A sealed memfd in the making: sized, its memory reserved, its payload arriving in pieces.
#[derive(Debug)]
pub(crate) struct SealedWriter {
    fd: OwnedFd,
    header: Header,
    written: u64,
    hasher: Hasher,
}

impl SealedWriter {
    /// Creates the memfd of value `id` of the pool with `token`, for a payload of `len` bytes
    /// of `kind`, and reserves its memory. Fails (never panics) when `len` bytes do not fit
    /// the memory available (`OutOfMemory`, see `share::room`), when memfds are refused, or
    /// when the kernel has no room for them (`ENOMEM`, `ENOSPC`): with the system's error
    /// kind and code, and a message that says what was being done.
    pub(crate) fn create(token: u64, id: u64, kind: Kind, len: u64) -> io::Result<SealedWriter> {
        let header = Header {
            token,
            id,
            kind,
            len,
            hash: 0,
        };
        if len > MAX_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a shared value of {len} bytes does not fit the address space"),
            ));
        }
        crate::share::room::check(len)
            .map_err(|e| io::Error::new(e.kind(), format!("shared value #{id} {e}")))?;
        let fd = memfd(&memfd_name(token, id)).map_err(|e| {
            context(
                format_args!("cannot create a memfd for shared value #{id}"),
                e,
            )
        })?;
        let size = header.file_len();
        rustix::fs::ftruncate(&fd, size).map_err(|e| {
            context(
                format_args!("cannot size the memfd of shared value #{id} to {size} bytes"),
                e,
            )
        })?;
        if len > 0 {
            match rustix::fs::fallocate(&fd, FallocateFlags::empty(), HEADER as u64, len) {
                Ok(()) => {}
                // A kernel whose memfds cannot reserve: the writes will allocate instead.
                Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {}
                Err(e) => {
                    return Err(context(
                        format_args!("cannot reserve {len} bytes of memory for shared value #{id}"),
                        e,
                    ));
                }
            }
        }
        Ok(SealedWriter {
            fd,
            header,
            written: 0,
            hasher: Hasher::new(),
        })
    }

    /// The payload bytes still expected.
    /// How many bytes of the payload were written.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.header.len - self.written
    }

    /// Appends a piece of the payload. More bytes than announced is an error.
    pub(crate) fn write(&mut self, piece: &[u8]) -> io::Result<()> {
        let id = self.header.id;
        if piece.len() as u64 > self.remaining() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "shared value #{id}: {} more bytes arrived after {} of {}",
                    piece.len(),
                    self.written,
                    self.header.len
                ),
            ));
        }
        self.hasher.update(piece);
        pwrite_all(self.fd.as_fd(), piece, HEADER as u64 + self.written)
            .map_err(|e| context(format_args!("cannot write shared value #{id}"), e))?;
        self.written += piece.len() as u64;
        Ok(())
    }

    /// Checks that the whole payload arrived and, when `expected_hash` is given, that it
    /// hashes to it; writes the header, seals the memfd and maps it read-only.
    pub(crate) fn finish(mut self, expected_hash: Option<u64>) -> io::Result<Sealed> {
        let id = self.header.id;
        if self.remaining() != 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "shared value #{id}: {} of {} bytes arrived",
                    self.written, self.header.len
                ),
            ));
        }
        self.header.hash = self.hasher.digest();
        if let Some(expected) = expected_hash
            && expected != self.header.hash
        {
            return Err(invalid(format!(
                "shared value #{id} arrived with hash {:016x}, it was sent with {expected:016x}",
                self.header.hash
            )));
        }
        pwrite_all(self.fd.as_fd(), &self.header.to_bytes(), 0)
            .map_err(|e| context(format_args!("cannot write shared value #{id}"), e))?;
        rustix::fs::fcntl_add_seals(&self.fd, REQUIRED_SEALS)
            .map_err(|e| context(format_args!("cannot seal shared value #{id}"), e))?;
        Sealed::from_fd(self.fd, true)
    }
}

/// A sealed memfd, mapped read-only: its header and its payload.
#[derive(Debug)]
pub(crate) struct Sealed {
    header: Header,
    /// The payload's mapping; `None` for an empty payload (nothing to map).
    map: Option<ReadOnly>,
    /// The descriptor, kept by the process that other processes find the value in: held
    /// open for them, read only by the tests.
    #[cfg_attr(not(test), allow(dead_code))]
    fd: Option<OwnedFd>,
}

impl Sealed {
    /// Stores `payload` of `kind` as value `id` of the pool with `token`: see
    /// [`SealedWriter`].
    pub(crate) fn create(token: u64, id: u64, kind: Kind, payload: &[u8]) -> io::Result<Sealed> {
        /// Hashing and copying a piece while it is in the cache.
        const PIECE: usize = 256 * 1024;
        let mut writer = SealedWriter::create(token, id, kind, payload.len() as u64)?;
        for piece in payload.chunks(PIECE) {
            writer.write(piece)?;
        }
        writer.finish(None)
    }

    /// Checks a descriptor of a sealed memfd (its seals, its size, its header) and maps its
    /// payload read-only. `keep_fd`: keep the descriptor open for the value's life (in the
    /// process that others find it in); otherwise it is closed once mapped.
    pub(crate) fn from_fd(fd: OwnedFd, keep_fd: bool) -> io::Result<Sealed> {
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|e| context("not a memfd (it has no seals)", e))?;
        check_seals(seals).map_err(invalid)?;
        // Sealed against growing and shrinking (just checked): the size is final.
        let size = rustix::fs::fstat(&fd)?.st_size;
        let mut fields = [0u8; FIELDS];
        if size < HEADER as i64 {
            return Err(invalid(format!(
                "a memfd of {size} bytes is too small to hold a shared value"
            )));
        }
        pread_exact(fd.as_fd(), &mut fields, 0)?;
        let header = Header::parse(&fields).map_err(invalid)?;
        if header.file_len() != size as u64 {
            return Err(invalid(format!(
                "shared value #{} claims {} bytes, its memfd holds {}",
                header.id,
                header.len,
                size as u64 - HEADER as u64
            )));
        }
        let map = match usize::try_from(header.len) {
            Ok(0) => None,
            // SAFETY: the seals were checked above (invariant 1), and `HEADER + len` is the
            // file's size, final since it is sealed (invariant 2).
            Ok(len) => Some(unsafe { ReadOnly::map(fd.as_fd(), HEADER as u64, len) }?),
            Err(_) => return Err(invalid("a shared value larger than the address space")),
        };
        Ok(Sealed {
            header,
            map,
            fd: keep_fd.then_some(fd),
        })
    }

    /// Opens `path` (such as `/proc/<pid>/fd/<n>`) read-only and maps it as
    /// [`from_fd`](Sealed::from_fd) does, closing the descriptor once mapped.
    pub(crate) fn open(path: &std::path::Path) -> io::Result<Sealed> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| context(format_args!("cannot open {}", path.display()), e))?;
        Sealed::from_fd(fd, false)
    }

    /// The header.
    pub(crate) fn header(&self) -> &Header {
        &self.header
    }

    /// The payload, read-only, straight from the mapping.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.map.as_ref().map_or(&[], ReadOnly::bytes)
    }

    /// The descriptor, if kept.
    #[cfg(test)]
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }
}

/// A read-only shared mapping of part of a sealed memfd.
#[derive(Debug)]
struct ReadOnly {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a `ReadOnly` is a pointer to memory that no one can write while it is mapped
// (invariants 1 and 3) and that stays mapped until it is dropped (4); nothing about it is
// tied to a thread.
unsafe impl Send for ReadOnly {}
// SAFETY: as above: shared access is to immutable bytes.
unsafe impl Sync for ReadOnly {}

impl ReadOnly {
    /// Maps `len` (not zero) bytes of `fd` at `offset` (a multiple of the page size),
    /// read-only and shared.
    ///
    /// # Safety
    ///
    /// `fd` carries [`REQUIRED_SEALS`] (invariant 1) and `offset + len` is at most its size
    /// (invariant 2): [`bytes`](ReadOnly::bytes) hands the mapping out as a `&[u8]`.
    unsafe fn map(fd: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<ReadOnly> {
        // SAFETY: a null hint lets the kernel choose fresh addresses, which overlap no Rust
        // object. The mapping is read-only (invariant 3) and only ever read.
        let ptr = unsafe {
            rustix::mm::mmap(
                ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                fd,
                offset,
            )
        }
        .map_err(|e| context(format_args!("cannot map {len} bytes of a shared value"), e))?;
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        Ok(ReadOnly { base, len })
    }

    /// The mapped bytes.
    fn bytes(&self) -> &[u8] {
        // SAFETY: `base..base + len` is one live mapping (invariant 4: it lives as long as
        // `&self`, which the slice borrows), readable, backed by the file throughout
        // (invariant 2), and its bytes cannot change while mapped (invariants 1 and 3), so it
        // is valid, initialised, immutable memory for the slice's lifetime. `len` fits an
        // `isize` (the file's size was checked against `MAX_LEN`).
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }

    /// The mapping's address, for the tests that look it up in `/proc/self/maps`.
    #[cfg(test)]
    fn addr(&self) -> usize {
        self.base.as_ptr() as usize
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        // SAFETY: `base..base + len` is the mapping made in `ReadOnly::map`, unmapped once,
        // here; no slice of it outlives `self` (invariant 4). A failure leaves it mapped.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests;
