//! Fuzzes `parse_manifest` with raw `manifest.json` bytes: the size limit,
//! the version probe, the envelope and the checksum gate. Whatever parses
//! must re-encode and parse back to the same body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sprout_snapshot::image::{encode_manifest, parse_manifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = parse_manifest(data) {
        let again = encode_manifest(&body).expect("an accepted body re-encodes");
        assert_eq!(parse_manifest(&again).expect("and parses back"), body);
    }
});
