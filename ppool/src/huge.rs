//! Large buffers backed by transparent huge pages where the kernel allows it.
//!
//! A buffer of many megabytes that is filled right after it is allocated pays, page by page,
//! a fault and a cleared 4 KiB page: filling a fresh 100 MiB buffer costs about four times
//! what copying the same bytes into memory already touched does (`ppool-bench`, `echo_100mb`).
//! A payload crosses a local link through several such buffers (the encoded frame, the
//! receiving buffer, the decoded value), so this cost, not the copies themselves, is most of
//! the time of a large payload. Advising the kernel (`madvise(MADV_HUGEPAGE)`) that a large
//! buffer may be backed by 2 MiB pages makes that one fault per 2 MiB.
//!
//! Only buffers of at least [`HUGE_MIN`] bytes are advised, once, when they are allocated
//! or grow; smaller ones stay as the allocator made them. Where transparent huge pages are
//! off (`/sys/kernel/mm/transparent_hugepage/enabled` is `never`), or the kernel refuses the
//! advice, nothing changes but the one system call, whose result is ignored. Where memory is
//! fragmented, the kernel may compact it before it hands out a huge page (with `defrag` at
//! its default, `madvise`): a program that would rather not wait for that sets
//! `PPOOL_HUGE_PAGES=0` ([`ENV`]), which its workers inherit.
//!
//! # Safety
//!
//! This module holds the one `unsafe` call, [`madvise`](rustix::mm::madvise), with these
//! invariants:
//!
//! 1. **Owned, mapped memory.** The range advised lies within the allocation of a `Vec<u8>`
//!    borrowed mutably for the call (its capacity, rounded inwards to whole huge pages), so
//!    it is mapped memory that nothing else owns while the call runs.
//! 2. **Contents and validity unchanged.** `MADV_HUGEPAGE` only tells the kernel which page
//!    size it may use to back the range: it neither changes nor discards bytes, nor unmaps or
//!    protects anything, so every reference into the buffer stays valid and every byte keeps
//!    its value.
//!
//! Under Miri, which cannot run system calls, [`advise`] does nothing.

/// The smallest buffer advised to use huge pages.
pub(crate) const HUGE_MIN: usize = 4 << 20;

/// The environment variable that turns the advice off: `0`, `off`, `no` or `false`.
pub(crate) const ENV: &str = "PPOOL_HUGE_PAGES";

/// Whether the advice is given, for the value of [`ENV`].
fn enabled_by(value: Option<&str>) -> bool {
    !matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("0" | "off" | "no" | "false")
    )
}

/// Whether the advice is given in this process (read once).
fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| enabled_by(std::env::var(ENV).ok().as_deref()))
}

/// The huge page size the advice aims at (x86-64 and aarch64 with 4 KiB pages).
const HUGE_PAGE: usize = 2 << 20;

/// Makes room for `additional` more bytes in `buf`, and advises that it be backed by huge
/// pages when that takes a new allocation of at least [`HUGE_MIN`] bytes, or when the room
/// is for that many bytes at once (a buffer reserved ahead by someone else may be untouched).
pub(crate) fn reserve(buf: &mut Vec<u8>, additional: usize) {
    let before = buf.capacity();
    buf.reserve(additional);
    if buf.capacity() != before || additional >= HUGE_MIN {
        advise(buf);
    }
}

/// Appends `data` to `buf`, advising as [`reserve`] does when that grew it: for an encoder
/// that appends small pieces, which costs one more comparison each.
pub(crate) fn extend(buf: &mut Vec<u8>, data: &[u8]) {
    let before = buf.capacity();
    buf.extend_from_slice(data);
    if buf.capacity() != before {
        advise(buf);
    }
}

/// A new buffer with room for `capacity` bytes, advised as [`reserve`] does.
pub(crate) fn with_capacity(capacity: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(capacity);
    advise(&mut buf);
    buf
}

/// The whole huge pages within `len` bytes from address `start`: where the first begins, and
/// how many bytes they cover (zero when there is none).
fn huge_pages_within(start: usize, len: usize) -> (usize, usize) {
    let Some(first) = start.checked_next_multiple_of(HUGE_PAGE) else {
        return (start, 0);
    };
    let end = start.saturating_add(len);
    let last = end - end % HUGE_PAGE;
    (first, last.saturating_sub(first))
}

/// Advises that the whole huge pages within `buf`'s allocation be backed by huge pages.
fn advise(buf: &mut Vec<u8>) {
    if buf.capacity() < HUGE_MIN || cfg!(miri) || !enabled() {
        return;
    }
    let (first, len) = huge_pages_within(buf.as_mut_ptr() as usize, buf.capacity());
    if len == 0 {
        return;
    }
    #[cfg(not(miri))]
    // SAFETY: `first..first + len` lies within `buf`'s allocation, which `buf` owns and is
    // borrowed mutably here (invariant 1), and the advice changes neither the bytes nor the
    // mapping (invariant 2). A refusal changes nothing and is ignored.
    unsafe {
        let _ = rustix::mm::madvise(
            first as *mut std::ffi::c_void,
            len,
            rustix::mm::Advice::LinuxHugepage,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_huge_pages_inside_the_buffer_are_advised() {
        let mb2 = HUGE_PAGE;
        assert_eq!(huge_pages_within(0, 3 * mb2), (0, 3 * mb2));
        assert_eq!(huge_pages_within(4096, 3 * mb2), (mb2, 2 * mb2));
        assert_eq!(huge_pages_within(4096, 3 * mb2 - 8192), (mb2, mb2));
        assert_eq!(huge_pages_within(4096, mb2), (mb2, 0));
        assert_eq!(huge_pages_within(usize::MAX - 10, 5), (usize::MAX - 10, 0));
    }

    #[test]
    fn reserving_keeps_the_bytes_and_makes_room() {
        // Under Miri (which advises nothing) a small size keeps the test quick.
        let big = if cfg!(miri) { 4096 } else { HUGE_MIN };
        let mut buf = vec![7u8; 100];
        reserve(&mut buf, 2 * big);
        assert!(buf.capacity() >= 100 + 2 * big);
        assert_eq!(buf, vec![7u8; 100]);
        buf.resize(100 + big, 9);
        assert!(buf[..100].iter().all(|&b| b == 7) && buf[100..].iter().all(|&b| b == 9));
        let mut grown = Vec::new();
        extend(&mut grown, &buf);
        assert_eq!(grown, buf);
        let fresh = with_capacity(big);
        assert!(fresh.is_empty() && fresh.capacity() >= big);
    }

    #[test]
    fn the_advice_is_off_only_when_asked() {
        for off in ["0", "off", "OFF", " no ", "false"] {
            assert!(!enabled_by(Some(off)), "{off:?}");
        }
        for on in [None, Some("1"), Some("on"), Some(""), Some("yes")] {
            assert!(enabled_by(on), "{on:?}");
        }
    }

    #[test]
    fn a_small_buffer_is_left_alone() {
        let mut buf = Vec::new();
        reserve(&mut buf, 10);
        assert!(buf.capacity() >= 10);
    }
}
