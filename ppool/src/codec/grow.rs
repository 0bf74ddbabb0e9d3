//! A `Serializer` adapter that checks, at every level of nesting, that the stack has room, and
//! moves to a fresh stack segment when it does not (with `stacker`, the crate that
//! `serde_stacker` builds on). `serde_stacker`'s own `Serializer` grows only inside
//! `collect_seq` and `collect_map`, so a value nested through `Option`, newtypes or fields
//! would still overflow the caller's stack. Its error is [`Told`], so that the text of an
//! error raised by a user's `Serialize` is kept; decoding has the same in [`told`](super::told).

use serde::ser::{self, Serialize};

use super::SEGMENT;
use super::told::Told;

/// How close to the end of the stack a nested value may come before a new segment is used:
/// twice the decoder's, since the stack is looked at only every [`CHECK_EVERY`] levels.
const RED_ZONE: usize = 256 * 1024;
/// The stack is checked every this many levels of nesting: a level costs a few hundred bytes
/// of stack at most, far less than the red zone, and flat data (the elements of a sequence
/// are one level below it) costs no check at all.
const CHECK_EVERY: u32 = 32;

/// Serializes `value` with `serializer`, growing the stack as deep nesting needs.
pub(super) fn serialize<T, S>(value: &T, serializer: S) -> Result<S::Ok, S::Error>
where
    T: ?Sized + Serialize,
    S: ser::Serializer,
{
    Deep(value, 0).serialize(serializer)
}

/// A value at some depth of nesting, whose serialization makes sure the stack has room (at
/// every [`CHECK_EVERY`]th level), and whose nested values are wrapped the same way.
struct Deep<'a, T: ?Sized>(&'a T, u32);

impl<T: ?Sized + Serialize> Serialize for Deep<'_, T> {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let grow = Grow(serializer, self.1);
        if self.1.is_multiple_of(CHECK_EVERY) {
            stacker::maybe_grow(RED_ZONE, SEGMENT, || self.0.serialize(grow))
        } else {
            self.0.serialize(grow)
        }
        .map_err(Told::into_ser)
    }
}

/// The serializer adapter, at a depth of nesting: it forwards everything, wrapping nested
/// values in [`Deep`] one level down.
struct Grow<S>(S, u32);

impl<S> Grow<S> {
    fn deeper<'a, T: ?Sized>(&self, value: &'a T) -> Deep<'a, T> {
        Deep(value, self.1 + 1)
    }
}

macro_rules! forward {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $name(self, $($arg: $ty),*) -> Result<Self::Ok, Self::Error> {
            self.0.$name($($arg),*).map_err(Told::from_inner)
        }
    )*};
}

impl<S: ser::Serializer> ser::Serializer for Grow<S> {
    type Ok = S::Ok;
    type Error = Told;
    type SerializeSeq = Grow<S::SerializeSeq>;
    type SerializeTuple = Grow<S::SerializeTuple>;
    type SerializeTupleStruct = Grow<S::SerializeTupleStruct>;
    type SerializeTupleVariant = Grow<S::SerializeTupleVariant>;
    type SerializeMap = Grow<S::SerializeMap>;
    type SerializeStruct = Grow<S::SerializeStruct>;
    type SerializeStructVariant = Grow<S::SerializeStructVariant>;

    forward! {
        serialize_bool(v: bool);
        serialize_i8(v: i8);
        serialize_i16(v: i16);
        serialize_i32(v: i32);
        serialize_i64(v: i64);
        serialize_i128(v: i128);
        serialize_u8(v: u8);
        serialize_u16(v: u16);
        serialize_u32(v: u32);
        serialize_u64(v: u64);
        serialize_u128(v: u128);
        serialize_f32(v: f32);
        serialize_f64(v: f64);
        serialize_char(v: char);
        serialize_str(v: &str);
        serialize_bytes(v: &[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<S::Ok, Told> {
        let v = self.deeper(value);
        self.0.serialize_some(&v).map_err(Told::from_inner)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, Told> {
        let v = self.deeper(value);
        self.0
            .serialize_newtype_struct(name, &v)
            .map_err(Told::from_inner)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, Told> {
        let v = self.deeper(value);
        self.0
            .serialize_newtype_variant(name, index, variant, &v)
            .map_err(Told::from_inner)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, Told> {
        let depth = self.1;
        self.0
            .serialize_seq(len)
            .map(|c| Grow(c, depth))
            .map_err(Told::from_inner)
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, Told> {
        let depth = self.1;
        self.0
            .serialize_tuple(len)
            .map(|c| Grow(c, depth))
            .map_err(Told::from_inner)
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, Told> {
        let depth = self.1;
        self.0
            .serialize_tuple_struct(name, len)
            .map(|c| Grow(c, depth))
            .map_err(Told::from_inner)
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, Told> {
        let depth = self.1;
        self.0
            .serialize_tuple_variant(name, index, variant, len)
            .map(|c| Grow(c, depth))
            .map_err(Told::from_inner)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, Told> {
        let depth = self.1;
        self.0
            .serialize_map(len)
            .map(|c| Grow(c, depth))
            .map_err(Told::from_inner)
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, Told> {
        let depth = self.1;
        self.0
            .serialize_struct(name, len)
            .map(|c| Grow(c, depth))
            .map_err(Told::from_inner)
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, Told> {
        let depth = self.1;
        self.0
            .serialize_struct_variant(name, index, variant, len)
            .map(|c| Grow(c, depth))
            .map_err(Told::from_inner)
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// The compound serializers: each element, field, key and value is wrapped in [`Deep`].
macro_rules! compound {
    ($trait:ident, $method:ident $(, $key:ident: $kty:ty)?) => {
        impl<S: ser::$trait> ser::$trait for Grow<S> {
            type Ok = S::Ok;
            type Error = Told;

            fn $method<T: ?Sized + Serialize>(
                &mut self,
                $($key: $kty,)?
                value: &T,
            ) -> Result<(), Told> {
                let v = self.deeper(value);
                self.0.$method($($key,)? &v).map_err(Told::from_inner)
            }

            fn end(self) -> Result<S::Ok, Told> {
                self.0.end().map_err(Told::from_inner)
            }
        }
    };
}

compound!(SerializeSeq, serialize_element);
compound!(SerializeTuple, serialize_element);
compound!(SerializeTupleStruct, serialize_field);
compound!(SerializeTupleVariant, serialize_field);
compound!(SerializeStruct, serialize_field, key: &'static str);
compound!(SerializeStructVariant, serialize_field, key: &'static str);

impl<S: ser::SerializeMap> ser::SerializeMap for Grow<S> {
    type Ok = S::Ok;
    type Error = Told;

    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), Told> {
        let k = self.deeper(key);
        self.0.serialize_key(&k).map_err(Told::from_inner)
    }

    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Told> {
        let v = self.deeper(value);
        self.0.serialize_value(&v).map_err(Told::from_inner)
    }

    fn end(self) -> Result<S::Ok, Told> {
        self.0.end().map_err(Told::from_inner)
    }
}
