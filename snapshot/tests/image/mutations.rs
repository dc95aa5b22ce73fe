//! Property tests of the manifest parser: random mutations of a valid
//! manifest give errors, never panics. Byte mutations of the whole file
//! mostly stop at the checksum, so the body is also mutated with the
//! checksum recomputed (as a hostile producer would), which drives the
//! mutations into the JSON parser and the validator.

use serde_json::{Value, json};
use sprout_snapshot::image::*;

use crate::common::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn sample_body() -> (ManifestBody, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = Rootfs::new();
    let dir = tmp.path().join("img");
    let body = write_sample(&dir, &rootfs).body;
    let raw = std::fs::read(dir.join("manifest.json")).unwrap();
    (body, raw)
}

fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        if data.is_empty() {
            data.push(b'{');
        }
        let i = rng.below(data.len());
        match rng.below(7) {
            0 => data[i] ^= 1 << rng.below(8),
            1 => data[i] = rng.next() as u8,
            2 => data.truncate(i),
            3 => {
                data.remove(i);
            }
            4 => {
                const BYTES: &[u8] = b"{}[]\",:0-9eE.\\ u\x00\xff";
                data.insert(i, BYTES[rng.below(BYTES.len())]);
            }
            5 => {
                let j = rng.below(data.len());
                let (a, b) = (i.min(j), i.max(j).min(a_plus(i.min(j), 64)));
                let piece = data[a..b].to_vec();
                let k = rng.below(data.len());
                data.splice(k..k, piece);
            }
            _ => {
                let j = rng.below(data.len());
                data.swap(i, j);
            }
        }
    }
}

fn a_plus(a: usize, n: usize) -> usize {
    a + n
}

const INTERESTING: &[&str] = &[
    "0",
    "-1",
    "1",
    "4096",
    "4095",
    "18446744073709551615",
    "18446744073709551616",
    "9007199254740993",
    "-9223372036854775808",
    "1e308",
    "0.5",
    "\"\"",
    "\"0x\"",
    "\"0x0\"",
    "\"0xffffffffffffffff\"",
    "\"0x7ffffffff000\"",
    "\"0x10000000000000000\"",
    "\"/\"",
    "\"/../etc/passwd\"",
    "\"r-x\"",
    "\"rwxp\"",
    "\"AAAA\"",
    "\"====\"",
    "\"unlimited\"",
    "\"none\"",
    "null",
    "true",
    "[]",
    "{}",
    "[0,0]",
    "{\"kind\":\"file\",\"file\":4294967295,\"offset\":\"0x0\"}",
    "{\"state\":\"restart\",\"nr\":18446744073709551615}",
    "{\"page\":18446744073709551615,\"count\":2,\"offset\":0}",
];

/// Every node of `v` as a JSON pointer.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                pointers(x, format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
}

fn mutate_value(rng: &mut Rng, v: &mut Value, nodes: &[String]) {
    let p = &nodes[rng.below(nodes.len())];
    let Some(node) = v.pointer_mut(p) else { return };
    match rng.below(6) {
        0..=2 => *node = serde_json::from_str(INTERESTING[rng.below(INTERESTING.len())]).unwrap(),
        3 => match node {
            Value::Object(o) if !o.is_empty() => {
                let k = o.keys().nth(rng.below(o.len())).unwrap().clone();
                o.remove(&k);
            }
            Value::Array(a) if !a.is_empty() => {
                a.remove(rng.below(a.len()));
            }
            _ => *node = Value::Null,
        },
        4 => match node {
            Value::Array(a) if !a.is_empty() => {
                let x = a[rng.below(a.len())].clone();
                let at = rng.below(a.len() + 1);
                a.insert(at, x);
            }
            Value::Number(n) => {
                let x = n.as_u64().unwrap_or(0);
                *node = json!(x.wrapping_add(rng.next() % 8192).wrapping_sub(4096));
            }
            Value::String(s) if s.starts_with("0x") => {
                let x = u64::from_str_radix(&s[2..], 16).unwrap_or(0);
                *node = json!(format!("{:#x}", x ^ (1 << rng.below(64))));
            }
            _ => *node = json!({}),
        },
        _ => {
            if let Value::Object(o) = node {
                o.insert("unexpected".into(), Value::Bool(true));
            } else {
                *node = json!([node.clone()]);
            }
        }
    }
}

#[test]
fn random_byte_mutations_of_the_manifest_never_panic() {
    let (_, raw) = sample_body();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..3000 {
        let mut m = raw.clone();
        mutate_bytes(&mut rng, &mut m);
        if m != raw {
            let _ = parse_manifest(&m);
        }
    }
}

#[test]
fn random_byte_mutations_of_the_body_never_panic() {
    let (body, _) = sample_body();
    let json = serde_json::to_vec(&body).unwrap();
    let mut rng = Rng(0xfeed_face_cafe_beef);
    let (mut ok, mut json_err, mut other) = (0, 0, 0);
    for _ in 0..3000 {
        let mut m = json.clone();
        mutate_bytes(&mut rng, &mut m);
        match parse_manifest(&envelope(&m)) {
            Ok(_) => ok += 1,
            Err(ImageError::Json { .. }) => json_err += 1,
            Err(_) => other += 1,
        }
    }
    assert!(json_err > 0, "ok {ok}, json {json_err}, other {other}");
}

#[test]
fn random_structured_mutations_of_the_body_never_panic() {
    let (body, _) = sample_body();
    let base = serde_json::to_value(&body).unwrap();
    let mut nodes = Vec::new();
    pointers(&base, String::new(), &mut nodes);
    let mut rng = Rng(0x0bad_c0de_dead_10cc);
    let (mut ok, mut invalid, mut json_err, mut other) = (0, 0, 0, 0);
    for _ in 0..3000 {
        let mut v = base.clone();
        for _ in 0..=rng.below(3) {
            mutate_value(&mut rng, &mut v, &nodes);
        }
        match parse_manifest(&envelope(&serde_json::to_vec(&v).unwrap())) {
            Ok(b) => {
                ok += 1;
                // Whatever is accepted re-encodes and parses back the same.
                let again = encode_manifest(&b).unwrap();
                assert_eq!(parse_manifest(&again).unwrap(), b);
            }
            Err(ImageError::Invalid { .. } | ImageError::Limit { .. }) => invalid += 1,
            Err(ImageError::Json { .. }) => json_err += 1,
            Err(_) => other += 1,
        }
    }
    // The mutations reach every stage: some survive, some are caught by
    // the validator, some by the parser.
    assert!(
        ok > 0 && invalid > 0 && json_err > 0,
        "ok {ok}, invalid {invalid}, json {json_err}, other {other}"
    );
}

#[test]
fn deep_nesting_and_huge_numbers_are_errors() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(parse_manifest(&envelope(deep.as_bytes())).is_err());
    let deep = format!(
        "{{\"format\":\"sprout-image\",\"version\":{}1{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(parse_manifest(deep.as_bytes()).is_err());
    assert!(parse_manifest(&envelope(b"{\"producer\":1e999999}")).is_err());
    assert!(parse_manifest(b"{\"format\":\"sprout-image\",\"version\":1e400}").is_err());
}
