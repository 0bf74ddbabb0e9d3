use super::*;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + 'static>(v: T) {
    let mut out = Vec::new();
    encode_into(&v, &mut out).unwrap();
    assert_eq!(decode::<T>(&out).unwrap(), v);
}

#[test]
fn values_round_trip() {
    round_trip(7u64);
    round_trip((1i64, -2i64));
    round_trip(String::from("héllo"));
    round_trip(Ok::<u32, String>(3));
    round_trip(Some(vec![1u32, 2, 3]));
    round_trip(());
}

#[test]
fn byte_buffers_take_the_fast_path_and_match_postcard() {
    let v: Vec<u8> = (0..=255).cycle().take(100_000).collect();
    let mut fast = Vec::new();
    encode_into(&v, &mut fast).unwrap();
    assert_eq!(fast, postcard::to_allocvec(&v).unwrap());
    assert_eq!(decode::<Vec<u8>>(&fast).unwrap(), v);
    // and postcard's slow path reads it too
    assert_eq!(postcard::from_bytes::<Vec<u8>>(&fast).unwrap(), v);
}

#[test]
fn bad_input_is_an_error() {
    assert!(decode::<u64>(&[]).is_err());
    assert!(decode::<Vec<u8>>(&[5, 1, 2]).is_err());
    assert!(decode::<Vec<u8>>(&[0xff; 11]).is_err());
    assert!(decode::<u8>(&[1, 2]).is_err(), "trailing bytes");
    assert!(decode::<String>(&[2, 0xff, 0xfe]).is_err(), "invalid utf-8");
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct Image {
    width: u32,
    #[serde(with = "serde_bytes")]
    pixels: Vec<u8>,
}

#[test]
fn byte_fields_marked_serde_bytes_travel_as_one_block() {
    let image = Image {
        width: 7,
        pixels: vec![9; 1 << 20],
    };
    let mut out = Vec::new();
    encode_into(&image, &mut out).unwrap();
    // a varint width, a varint length, then the bytes themselves
    assert!(out.len() <= (1 << 20) + 8, "{}", out.len());
    assert_eq!(&out[out.len() - (1 << 20)..], &image.pixels[..]);
    assert_eq!(decode::<Image>(&out).unwrap(), image);
}

/// A width that must be even: its own `Serialize` and `Deserialize` refuse odd ones, each
/// with its own message.
#[derive(PartialEq, Debug)]
struct Even(u32);

impl Serialize for Even {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 % 2 == 1 {
            return Err(serde::ser::Error::custom(format!(
                "{} is odd, refusing to send it",
                self.0
            )));
        }
        s.serialize_u32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Even {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        if v % 2 == 1 {
            return Err(serde::de::Error::custom(format!("width {v} must be even")));
        }
        Ok(Even(v))
    }
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
enum Shape {
    Square(Even),
    Boxes { sides: Vec<Option<Even>> },
}

#[test]
fn a_custom_deserialize_error_keeps_its_message_at_any_depth() {
    let odd = postcard::to_allocvec(&7u32).unwrap();
    assert_eq!(decode::<Even>(&odd).unwrap_err(), "width 7 must be even");

    // deep inside an enum, a struct variant, a sequence and an option
    let bytes = postcard::to_allocvec(&(1u8, vec![Some(4u32), None, Some(9)])).unwrap();
    assert_eq!(decode::<Shape>(&bytes).unwrap_err(), "width 9 must be even");
    let good = postcard::to_allocvec(&(1u8, vec![Some(4u32)])).unwrap();
    assert_eq!(
        decode::<Shape>(&good).unwrap(),
        Shape::Boxes {
            sides: vec![Some(Even(4))]
        }
    );
}

#[test]
fn a_custom_serialize_error_keeps_its_message_at_any_depth() {
    let mut out = vec![1, 2, 3];
    let e = encode_into(&Even(3), &mut out).unwrap_err();
    assert_eq!(e, "3 is odd, refusing to send it");
    assert_eq!(
        out,
        [1, 2, 3],
        "a failed encoding leaves the buffer as it was"
    );
    let shape = Shape::Boxes {
        sides: vec![Some(Even(2)), Some(Even(5))],
    };
    assert_eq!(
        encode_into(&shape, &mut out).unwrap_err(),
        "5 is odd, refusing to send it"
    );
}

#[test]
fn serde_own_messages_come_through_and_codec_errors_stay_the_codecs() {
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    enum Two {
        A,
        B,
    }
    // serde's derived code raises `invalid value` through the same `custom` hook
    let e = decode::<Two>(&[5]).unwrap_err();
    assert!(e.contains("variant index 0 <= i < 2"), "{e}");
    // an error of postcard's own is postcard's text, and a stale saved text is not reused
    let _ = decode::<Even>(&postcard::to_allocvec(&7u32).unwrap());
    let e = decode::<u32>(&[]).unwrap_err();
    assert!(!e.contains("even"), "{e}");
    assert!(e.contains("Hit the end of buffer"), "{e}");
}

#[test]
fn a_message_swallowed_by_an_untagged_enum_does_not_leak_into_its_success() {
    #[derive(serde::Deserialize, serde::Serialize, PartialEq, Debug)]
    #[serde(untagged)]
    enum Either {
        E(Even),
        N(u32),
    }
    // postcard cannot read untagged enums (they need deserialize_any): the error is
    // postcard's, not a stale text
    let e = decode::<Either>(&[7]).unwrap_err();
    assert!(!e.contains("even"), "{e}");
    assert!(
        e.contains("self-describing") && e.contains("untagged"),
        "{e}"
    );
}
