//! The one place that turns user values into bytes and back: postcard, with a fast path that
//! copies a top-level `Vec<u8>` as one block instead of element by element.
//!
//! The fast path writes exactly what postcard writes for a `Vec<u8>` (a varint length, then the
//! bytes), so both paths read each other's output.
//!
//! User types are hostile input here: their `Serialize` and `Deserialize` may panic, which is
//! caught and becomes an error, and they may nest deeper than any thread's stack, so both
//! directions move to a fresh stack segment when the current one runs low instead of
//! overflowing it: decoding through `told`, encoding through `grow`. The same two adapters
//! keep the text of errors that user types raise themselves, which postcard drops.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

/// How big a fresh stack segment is.
pub(super) const SEGMENT: usize = 4 * 1024 * 1024;

/// Runs user serde code, turning a panic into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(format!(
            "{what} panicked: {}",
            crate::error::panic_message(payload.as_ref())
        )),
    }
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize + 'static>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    if let Some(bytes) = (value as &dyn Any).downcast_ref::<Vec<u8>>() {
        crate::huge::reserve(out, bytes.len() + 10);
        write_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
        return Ok(());
    }
    let at = out.len();
    let result = guarded("its Serialize implementation", || {
        let mut inner = postcard::Serializer {
            output: VecFlavor(&mut *out),
        };
        told::begin();
        grow::serialize(value, &mut inner).map_err(|e| {
            Told::from_inner(e);
            told::text()
        })
    });
    if result.is_err() {
        out.truncate(at);
    }
    result
}

/// Decodes a whole value from `bytes`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, String> {
    let mut slot: Option<T> = None;
    if let Some(vec_slot) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Vec<u8>>>() {
        let (len, rest) = read_varint(bytes).ok_or("malformed length of a byte buffer")?;
        if rest.len() as u64 != len {
            return Err(format!(
                "byte buffer claims {len} bytes, {} are present",
                rest.len()
            ));
        }
        let mut vec = crate::huge::with_capacity(rest.len());
        vec.extend_from_slice(rest);
        *vec_slot = Some(vec);
        return slot.ok_or_else(|| "internal: byte buffer fast path".to_string());
    }
    guarded("its Deserialize implementation", || {
        let mut inner = postcard::Deserializer::from_bytes(bytes);
        told::begin();
        let value = T::deserialize(Tell(&mut inner, 1)).map_err(|_| explain(told::text()))?;
        let rest = inner.finalize().map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!("{} unexpected bytes after the value", rest.len()));
        }
        Ok(value)
    })
}

/// postcard's answer to a type that needs a self-describing format, with what to do about it.
fn explain(text: String) -> String {
    if text == postcard::Error::WontImplement.to_string() {
        format!(
            "{text}: the type needs a self-describing format (`#[serde(untagged)]`, \
             `#[serde(flatten)]`, `deserialize_any`), which postcard is not; use a tagged enum \
             or plain fields, or send it as bytes of another format (`serde_json::to_vec`)"
        )
    } else {
        text
    }
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// A postcard output that appends to a borrowed buffer, so buffers are reused.
struct VecFlavor<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for VecFlavor<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        crate::huge::extend(self.0, data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

mod grow;
mod told;

use told::{Tell, Told};
#[cfg(test)]
mod tests;
