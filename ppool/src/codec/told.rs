//! Keeping the message of an error that a user type's own `Serialize` or `Deserialize` raises.
//!
//! postcard's `Error::custom` drops its message: a `Deserialize` that says "width must be
//! even" reaches the user as "Serde Deserialization Error". So user code never sees postcard's
//! error type. [`Tell`] wraps a `Deserializer` (and [`grow`](super::grow) a `Serializer`) so
//! that the error type user code builds is [`Told`], which keeps the text.
//!
//! Between the user's code and postcard, a `Told` has to become postcard's error again, which
//! loses the text, so the text waits in a thread-local slot and is read on the way out.
//! Everything runs on the caller's thread (`stacker` switches stacks, not threads), and
//! [`begin`] clears the slot before each value. The latest error wins: a message that user code
//! swallowed (an untagged enum trying its variants) is replaced by the one that ends the value.

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};
use std::cell::RefCell;
use std::fmt;

use super::SEGMENT;

thread_local! {
    /// The text of the error on its way out of the value being encoded or decoded.
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Clears the thread's saved text: called before each value is encoded or decoded.
pub(super) fn begin() {
    LAST.with(|last| last.borrow_mut().take());
}

/// The text of the error that ended the value being encoded or decoded.
pub(super) fn text() -> String {
    LAST.with(|last| last.borrow_mut().take())
        .unwrap_or_else(|| "a serde error without a message".to_string())
}

fn save(text: String) {
    LAST.with(|last| *last.borrow_mut() = Some(text));
}

/// An error raised by user serde code, or by the codec beneath it. Its text waits in the
/// thread's slot (read with [`text`]), so that the error itself is as small as postcard's and
/// costs nothing on the way through a value that succeeds.
#[derive(Debug)]
pub(super) struct Told;

impl Told {
    /// The error of the codec beneath, as a `Told`. When it is the codec's custom error, the
    /// text is already saved: it was saved when a `Told` became that error.
    #[cold]
    pub(super) fn from_inner(error: impl fmt::Display) -> Told {
        let text = error.to_string();
        if !is_custom(&text) {
            save(text);
        }
        Told
    }

    /// This error as a deserializer's own error type; its text stays saved.
    #[cold]
    pub(super) fn into_de<E: de::Error>(self) -> E {
        E::custom(SAVED)
    }

    /// This error as a serializer's own error type; its text stays saved.
    #[cold]
    pub(super) fn into_ser<E: serde::ser::Error>(self) -> E {
        E::custom(SAVED)
    }
}

/// What a `Told` says to a codec that keeps custom texts (postcard does not).
const SAVED: &str = "see the error saved by ppool's codec";

/// postcard's custom errors, whose text is fixed, and [`SAVED`].
fn is_custom(text: &str) -> bool {
    text == SAVED
        || text == postcard::Error::SerdeDeCustom.to_string()
        || text == postcard::Error::SerdeSerCustom.to_string()
}

impl fmt::Display for Told {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        LAST.with(|last| match &*last.borrow() {
            Some(text) => f.write_str(text),
            None => f.write_str("a serde error"),
        })
    }
}

impl std::error::Error for Told {}

impl de::Error for Told {
    #[cold]
    fn custom<T: fmt::Display>(msg: T) -> Self {
        save(msg.to_string());
        Told
    }
}

impl serde::ser::Error for Told {
    #[cold]
    fn custom<T: fmt::Display>(msg: T) -> Self {
        save(msg.to_string());
        Told
    }
}

fn back<E: de::Error>(told: Told) -> E {
    told.into_de()
}

/// A `Deserializer` whose error is [`Told`]: everything is forwarded, and every visitor,
/// seed and access handed down is wrapped so that nested values see `Told` too.
/// It carries its depth of nesting, and makes sure the stack has room every
/// [`CHECK_EVERY`] levels, moving to a fresh segment (with `stacker`) when it does not.
pub(super) struct Tell<D>(pub(super) D, pub(super) u32);

/// How close to the end of the stack a nested value may come before a new segment is used.
const RED_ZONE: usize = 256 * 1024;
/// The stack is checked every this many levels of nesting: 32 KiB of stack per level before
/// the red zone runs out, far more than serde's derived code takes.
const CHECK_EVERY: u32 = 8;

macro_rules! forward_de {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $name<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Told> {
            let depth = self.1;
            let run = move || self.0.$name($($arg,)* Wrap(visitor, depth)).map_err(Told::from_inner);
            if depth.is_multiple_of(CHECK_EVERY) {
                stacker::maybe_grow(RED_ZONE, SEGMENT, run)
            } else {
                run()
            }
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Tell<D> {
    type Error = Told;

    forward_de! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// A visitor, seed or access of the user's, handed to the codec beneath.
/// Its depth is that of the value it belongs to; what it hands on is one level deeper.
struct Wrap<T>(T, u32);

macro_rules! forward_visit {
    ($($name:ident($ty:ty);)*) => {$(
        fn $name<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.0.$name::<Told>(v).map_err(back)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_none::<Told>().map_err(back)
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_unit::<Told>().map_err(back)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_some(Tell(d, self.1 + 1)).map_err(back)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0
            .visit_newtype_struct(Tell(d, self.1 + 1))
            .map_err(back)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.0.visit_seq(Wrap(seq, self.1 + 1)).map_err(back)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(Wrap(map, self.1 + 1)).map_err(back)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.0.visit_enum(Wrap(data, self.1 + 1)).map_err(back)
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Wrap<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Tell(d, self.1)).map_err(back)
    }
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Wrap<A> {
    type Error = Told;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Told> {
        self.0
            .next_element_seed(Wrap(seed, self.1))
            .map_err(Told::from_inner)
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for Wrap<A> {
    type Error = Told;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Told> {
        self.0
            .next_key_seed(Wrap(seed, self.1))
            .map_err(Told::from_inner)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Told> {
        self.0
            .next_value_seed(Wrap(seed, self.1))
            .map_err(Told::from_inner)
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for Wrap<A> {
    type Error = Told;
    type Variant = Wrap<A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Wrap<A::Variant>), Told> {
        let depth = self.1;
        self.0
            .variant_seed(Wrap(seed, depth))
            .map(|(value, variant)| (value, Wrap(variant, depth)))
            .map_err(Told::from_inner)
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Wrap<A> {
    type Error = Told;

    fn unit_variant(self) -> Result<(), Told> {
        self.0.unit_variant().map_err(Told::from_inner)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Told> {
        self.0
            .newtype_variant_seed(Wrap(seed, self.1))
            .map_err(Told::from_inner)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Told> {
        self.0
            .tuple_variant(len, Wrap(visitor, self.1))
            .map_err(Told::from_inner)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Told> {
        self.0
            .struct_variant(fields, Wrap(visitor, self.1))
            .map_err(Told::from_inner)
    }
}
