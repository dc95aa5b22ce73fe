//! Fuzzes the body parser and validator: the input is a manifest *body*,
//! wrapped in an envelope with its correct SHA-256 (as a hostile producer
//! would write it), so mutations get past the checksum and reach serde and
//! every validation rule. Whatever parses must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sprout_snapshot::image::{Sha256Digest, encode_manifest, parse_manifest};

fuzz_target!(|body: &[u8]| {
    let mut manifest = format!(
        "{{\"format\":\"sprout-image\",\"version\":1,\"checksum\":\"sha256:{}\",\"body\":",
        Sha256Digest::of(body)
    )
    .into_bytes();
    manifest.extend_from_slice(body);
    manifest.push(b'}');
    if let Ok(parsed) = parse_manifest(&manifest) {
        let again = encode_manifest(&parsed).expect("an accepted body re-encodes");
        assert_eq!(parse_manifest(&again).expect("and parses back"), parsed);
    }
});
