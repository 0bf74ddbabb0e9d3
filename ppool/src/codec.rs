//! The one place that turns user values into bytes and back: postcard, with a fast path that
//! copies a top-level `Vec<u8>` as one block instead of element by element.
//!
//! The fast path writes exactly what postcard writes for a `Vec<u8>` (a varint length, then the
//! bytes), so both paths read each other's output.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::Any;

/// Appends the encoding of `value` to `out`.
pub(crate) fn encode_into<T: Serialize + 'static>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    if let Some(bytes) = (value as &dyn Any).downcast_ref::<Vec<u8>>() {
        write_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
        return Ok(());
    }
    postcard::serialize_with_flavor(value, VecFlavor(out)).map_err(|e| e.to_string())
}

/// Decodes a whole value from `bytes`; trailing bytes are an error.
pub(crate) fn decode<T: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<T, String> {
    let mut slot: Option<T> = None;
    if let Some(vec_slot) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Vec<u8>>>() {
        let (len, rest) = read_varint(bytes).ok_or("malformed length of a byte buffer")?;
        if rest.len() as u64 != len {
            return Err(format!(
                "byte buffer claims {len} bytes, {} are present",
                rest.len()
            ));
        }
        *vec_slot = Some(rest.to_vec());
        return slot.ok_or_else(|| "internal: byte buffer fast path".to_string());
    }
    let (value, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} unexpected bytes after the value", rest.len()));
    }
    Ok(value)
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
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
