//! How values are spelled in the manifest's JSON.
//!
//! - Addresses, register values, masks and CPUID words are hex strings
//!   (`"0x7ffd5e8c1000"`): JSON numbers above 2^53 lose precision in most
//!   JSON tools (jq, JavaScript), and hex is how these values are read.
//!   Counts, sizes and pages-file offsets stay JSON numbers (all below 2^53).
//! - Byte strings (xsave areas, siginfo, queued pipe/socket data) are
//!   standard base64 with padding.
//! - Digests are lowercase hex of fixed length.
//!
//! Parsing is strict: `0x` is required, at most 16 hex digits, canonical
//! base64 only.

use std::fmt;

use base64::Engine as _;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

fn parse_hex_u64(s: &str) -> Result<u64, String> {
    let digits = s
        .strip_prefix("0x")
        .ok_or_else(|| format!("{s:?}: expected a hex number starting with 0x"))?;
    if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{s:?}: expected 1 to 16 hex digits after 0x"));
    }
    u64::from_str_radix(digits, 16).map_err(|e| format!("{s:?}: {e}"))
}

struct HexVisitor;

impl Visitor<'_> for HexVisitor {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a hex string such as \"0x1000\"")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_hex_u64(v).map_err(E::custom)
    }
}

/// `#[serde(with = "hex")]`: an unsigned integer as a `"0x…"` string.
pub(crate) mod hex {
    use super::*;

    pub fn serialize<S: Serializer, T: Copy + Into<u64>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:#x}", (*v).into()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
        let v = d.deserialize_str(HexVisitor)?;
        T::try_from(v).map_err(|_| {
            de::Error::custom(format!(
                "{v:#x} is out of range for a {}-bit field",
                std::mem::size_of::<T>() * 8
            ))
        })
    }
}

/// `#[serde(with = "hex_vec")]`: a `Vec<u64>` as an array of hex strings.
pub(crate) mod hex_vec {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u64], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for x in v {
            seq.serialize_element(&format!("{x:#x}"))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<u64>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of hex strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u64>, A::Error> {
                let mut out = Vec::new();
                while let Some(Hex(x)) = seq.next_element()? {
                    out.push(x);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }

    struct Hex(u64);
    impl<'de> Deserialize<'de> for Hex {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_str(HexVisitor).map(Hex)
        }
    }
}

/// `#[serde(with = "b64")]`: bytes as a standard base64 string.
pub(crate) mod b64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map_err(|e| E::custom(format!("bad base64: {e}")))
            }
        }
        d.deserialize_str(V)
    }
}

/// `#[serde(with = "b64_vec")]`: a list of byte strings (queued messages).
pub(crate) mod b64_vec {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for x in v {
            seq.serialize_element(&base64::engine::general_purpose::STANDARD.encode(x))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<Vec<u8>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of base64 strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(B(x)) = seq.next_element()? {
                    out.push(x);
                }
                Ok(out)
            }
        }
        struct B(Vec<u8>);
        impl<'de> Deserialize<'de> for B {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                super::b64::deserialize(d).map(B)
            }
        }
        d.deserialize_seq(V)
    }
}

/// `#[serde(with = "rlim")]`: an rlimit value, `"unlimited"` for
/// `RLIM_INFINITY`, else a number.
pub(crate) mod rlim {
    use super::*;

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        if *v == u64::MAX {
            s.serialize_str("unlimited")
        } else {
            s.serialize_u64(*v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or \"unlimited\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                if v == u64::MAX {
                    return Err(E::custom("write RLIM_INFINITY as \"unlimited\""));
                }
                Ok(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                if v == "unlimited" {
                    Ok(u64::MAX)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

fn lower_hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn parse_lower_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2)
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// A SHA-256 digest, spelled as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Sha256Digest(sha2::Sha256::digest(data).into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&lower_hex(&self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

impl std::str::FromStr for Sha256Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match parse_lower_hex(s) {
            Some(v) if v.len() == 32 => {
                let mut d = [0u8; 32];
                d.copy_from_slice(&v);
                Ok(Sha256Digest(d))
            }
            _ => Err(format!(
                "{s:?}: expected a SHA-256 digest as 64 lowercase hex digits"
            )),
        }
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Sha256Digest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("64 lowercase hex digits")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Sha256Digest, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// The xxh3-64 hash of one chunk of the pages file, spelled as exactly 16
/// lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkHash(pub u64);

impl ChunkHash {
    /// The hash of `data`.
    pub fn of(data: &[u8]) -> Self {
        ChunkHash(xxhash_rust::xxh3::xxh3_64(data))
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for ChunkHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:016x}", self.0))
    }
}

impl<'de> Deserialize<'de> for ChunkHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ChunkHash;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("16 lowercase hex digits")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ChunkHash, E> {
                match parse_lower_hex(v) {
                    Some(b) if b.len() == 8 => Ok(ChunkHash(u64::from_be_bytes(
                        b.try_into().expect("8 bytes"),
                    ))),
                    _ => Err(E::custom(format!(
                        "{v:?}: expected a chunk hash as 16 lowercase hex digits"
                    ))),
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// Bytes spelled as lowercase hex (an ELF build-id).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct HexBytes(pub Vec<u8>);

impl fmt::Display for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&lower_hex(&self.0))
    }
}

impl fmt::Debug for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for HexBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HexBytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("lowercase hex digits")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HexBytes, E> {
                parse_lower_hex(v)
                    .map(HexBytes)
                    .ok_or_else(|| E::custom(format!("{v:?}: expected lowercase hex bytes")))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(with = "hex")]
        a: u64,
        #[serde(with = "hex")]
        b: u32,
        #[serde(with = "hex_vec")]
        c: Vec<u64>,
        #[serde(with = "b64")]
        d: Vec<u8>,
        #[serde(with = "rlim")]
        e: u64,
        #[serde(with = "rlim")]
        f: u64,
    }

    #[test]
    fn round_trip_and_strictness() {
        let t = T {
            a: u64::MAX,
            b: 0x33,
            c: vec![0, 0x7fff_ffff_f000],
            d: vec![1, 2, 3, 255],
            e: u64::MAX,
            f: 1024,
        };
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(
            s,
            r#"{"a":"0xffffffffffffffff","b":"0x33","c":["0x0","0x7ffffffff000"],"d":"AQID/w==","e":"unlimited","f":1024}"#
        );
        assert_eq!(serde_json::from_str::<T>(&s).unwrap(), t);
        for bad in [
            s.replace("\"0x33\"", "\"33\""),
            s.replace("\"0x33\"", "\"0x1ffffffff\""),
            s.replace("\"0x33\"", "\"0x\""),
            s.replace("\"0x33\"", "\"0x3g\""),
            s.replace("\"0x0\"", "\"0x00000000000000000\""),
            s.replace("AQID/w==", "AQID/w"),
            s.replace("AQID/w==", "AQID/x=="),
            s.replace("\"unlimited\"", "\"infinity\""),
            s.replace("1024", "18446744073709551615"),
        ] {
            assert!(serde_json::from_str::<T>(&bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn digests() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(
            d.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Sha256Digest>(&j).unwrap(), d);
        assert!(serde_json::from_str::<Sha256Digest>(&j.to_uppercase()).is_err());
        let c = ChunkHash(0x0123_4567_89ab_cdef);
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(j, "\"0123456789abcdef\"");
        assert_eq!(serde_json::from_str::<ChunkHash>(&j).unwrap(), c);
        assert!(serde_json::from_str::<ChunkHash>("\"123456789abcdef\"").is_err());
    }
}
