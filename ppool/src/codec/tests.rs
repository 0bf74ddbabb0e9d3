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
