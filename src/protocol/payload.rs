//! The one check every published payload goes through, whatever its path
//! (client `publish` frame, `POST /api/publish`, a message arriving from the
//! broker): valid JSON, nested at most [`MAX_DEPTH`] levels, and small enough
//! in *each* wire encoding. The check reads the JSON once without building a
//! tree and computes the exact size its MessagePack encoding will have, so a
//! payload that is small as JSON but large as MessagePack (floats: 3 bytes
//! become 9) is caught as surely as the reverse (nils: 1 byte becomes 5).
//!
//! Why both limits: an event is delivered to JSON and MessagePack sockets
//! alike, and one that does not fit a socket's queue evicts every subscriber
//! of the room with 4008; one that cannot be converted must not reach one
//! format as data and the other as `null`.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of arrays and objects a payload may have. serde_json's
/// own recursion guard stops at 128; staying below it means a payload that
/// passes here always converts to MessagePack.
pub const MAX_DEPTH: usize = 64;

/// Why a payload is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    /// Not JSON (or not UTF-8).
    NotJson,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Its JSON or MessagePack encoding exceeds the limit.
    TooLarge {
        /// Bytes as JSON.
        json: usize,
        /// Bytes as MessagePack.
        msgpack: usize,
    },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::NotJson => f.write_str("data is not valid JSON"),
            PayloadError::TooDeep => {
                write!(f, "data is nested deeper than {MAX_DEPTH} levels")
            }
            PayloadError::TooLarge { json, msgpack } => write!(
                f,
                "data is too large once encoded ({json} bytes as JSON, {msgpack} as MessagePack)"
            ),
        }
    }
}

impl std::error::Error for PayloadError {}

/// What the check learned about a payload that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspected {
    /// Bytes of the payload as JSON (as given).
    pub json: usize,
    /// Bytes the payload will take as MessagePack.
    pub msgpack: usize,
}

/// Checks `payload` (JSON text) against the depth limit and `limit` bytes in
/// each encoding.
pub fn inspect(payload: &[u8], limit: usize) -> Result<Inspected, PayloadError> {
    let text = std::str::from_utf8(payload).map_err(|_| PayloadError::NotJson)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let msgpack = de
        .deserialize_any(Sizer { depth: 0 })
        .map_err(|e| match e.classify() {
            // Our own depth error is raised through `de::Error::custom`.
            serde_json::error::Category::Data if e.to_string().starts_with(DEPTH_ERROR) => {
                PayloadError::TooDeep
            }
            // serde_json's guard (128) can only fire above ours; kept as a net.
            _ if e.to_string().contains("recursion limit") => PayloadError::TooDeep,
            _ => PayloadError::NotJson,
        })?;
    de.end().map_err(|_| PayloadError::NotJson)?;
    let json = payload.len();
    if json > limit || msgpack > limit {
        return Err(PayloadError::TooLarge { json, msgpack });
    }
    Ok(Inspected { json, msgpack })
}

const DEPTH_ERROR: &str = "gateway: nested too deep";

/// A visitor that returns the MessagePack size of what it visits.
struct Sizer {
    depth: usize,
}

impl Sizer {
    fn deeper<E: de::Error>(&self) -> Result<Sizer, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(DEPTH_ERROR));
        }
        Ok(Sizer {
            depth: self.depth + 1,
        })
    }
}

/// Header bytes of a MessagePack str / array / map of `len` items, as
/// rmp-serde writes them (the smallest form).
fn str_header(len: usize) -> usize {
    match len {
        0..=31 => 1,
        32..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    }
}

fn container_header(len: usize) -> usize {
    match len {
        0..=15 => 1,
        16..=0xffff => 3,
        _ => 5,
    }
}

fn uint_size(v: u64) -> usize {
    match v {
        0..=127 => 1,
        128..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

fn sint_size(v: i64) -> usize {
    if v >= 0 {
        return uint_size(v as u64);
    }
    match v {
        -32..=-1 => 1,
        -128..=-33 => 2,
        -32_768..=-129 => 3,
        -2_147_483_648..=-32_769 => 5,
        _ => 9,
    }
}

impl<'de> Visitor<'de> for Sizer {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<usize, E> {
        Ok(1)
    }

    fn visit_i64<E>(self, v: i64) -> Result<usize, E> {
        Ok(sint_size(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<usize, E> {
        Ok(uint_size(v))
    }

    fn visit_f64<E>(self, _: f64) -> Result<usize, E> {
        Ok(9)
    }

    fn visit_str<E>(self, v: &str) -> Result<usize, E> {
        Ok(str_header(v.len()) + v.len())
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<usize, E> {
        Ok(str_header(v.len()) + v.len())
    }

    fn visit_string<E>(self, v: String) -> Result<usize, E> {
        Ok(str_header(v.len()) + v.len())
    }

    fn visit_unit<E>(self) -> Result<usize, E> {
        Ok(1)
    }

    fn visit_none<E>(self) -> Result<usize, E> {
        Ok(1)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let inner = self.deeper()?;
        let (mut items, mut size) = (0usize, 0usize);
        while let Some(n) = seq.next_element_seed(Seed(inner.depth))? {
            items += 1;
            size += n;
        }
        Ok(container_header(items) + size)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let inner = self.deeper()?;
        let (mut entries, mut size) = (0usize, 0usize);
        while let Some(k) = map.next_key_seed(Seed(inner.depth))? {
            let v = map.next_value_seed(Seed(inner.depth))?;
            entries += 1;
            size += k + v;
        }
        Ok(container_header(entries) + size)
    }
}

/// Carries the depth into nested values.
struct Seed(usize);

impl<'de> de::DeserializeSeed<'de> for Seed {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_any(Sizer { depth: self.0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgpack_len(json: &str) -> usize {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        rmp_serde::to_vec(&v).unwrap().len()
    }

    #[test]
    fn the_msgpack_size_is_exact() {
        for json in [
            "null",
            "true",
            "0",
            "127",
            "128",
            "65536",
            "4294967296",
            "18446744073709551615",
            "-1",
            "-33",
            "-129",
            "-40000",
            "-3000000000",
            "1.5",
            r#""""#,
            &format!("\"{}\"", "x".repeat(31)),
            &format!("\"{}\"", "x".repeat(32)),
            &format!("\"{}\"", "x".repeat(300)),
            &format!("\"{}\"", "x".repeat(70_000)),
            "[]",
            &format!("[{}]", vec!["1"; 16].join(",")),
            r#"{"a":{"b":[1,"x",null,{"c":2.5}]}}"#,
            r#""é\n\u0041""#,
        ] {
            let got = inspect(json.as_bytes(), usize::MAX).unwrap();
            assert_eq!(got.msgpack, msgpack_len(json), "{json}");
            assert_eq!(got.json, json.len());
        }
    }

    #[test]
    fn depth_is_limited_below_serde_json_guard() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(inspect(ok.as_bytes(), usize::MAX).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(
            inspect(deep.as_bytes(), usize::MAX),
            Err(PayloadError::TooDeep)
        );
        let very = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
        assert_eq!(
            inspect(very.as_bytes(), usize::MAX),
            Err(PayloadError::TooDeep)
        );
        let objects = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
        assert_eq!(
            inspect(objects.as_bytes(), usize::MAX),
            Err(PayloadError::TooDeep)
        );
    }

    #[test]
    fn each_encoding_is_bounded() {
        // Floats grow as MessagePack: 3 bytes of JSON become 9.
        let floats = format!("[{}]", vec!["1.5"; 100].join(","));
        let err = inspect(floats.as_bytes(), 500).unwrap_err();
        assert!(
            matches!(err, PayloadError::TooLarge { json, msgpack } if json < 500 && msgpack > 500)
        );
        // Nils shrink: the JSON side is the large one.
        let nulls = format!("[{}]", vec!["null"; 100].join(","));
        let err = inspect(nulls.as_bytes(), 200).unwrap_err();
        assert!(
            matches!(err, PayloadError::TooLarge { json, msgpack } if json > 200 && msgpack < 200)
        );
    }

    #[test]
    fn not_json_is_refused() {
        for bad in [&b"{"[..], b"nope", b"\"\xff\"", b"1 2", b""] {
            assert_eq!(inspect(bad, usize::MAX), Err(PayloadError::NotJson));
        }
    }
}
