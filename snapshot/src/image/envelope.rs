//! The checksummed JSON envelope `manifest.json` and `working-set.json`
//! share: `{"format":…,"version":…,"checksum":"sha256:<64 hex>","body":{…}}`,
//! the checksum over the body's bytes exactly as stored, the whole file
//! bounded in size. Each file decides for itself which formats and
//! versions it reads and what its body must hold; this module only reads
//! and writes the wrapping the same way for both.

use std::fs::File;
use std::io::Read as _;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::encoding::Sha256Digest;
use super::error::{ImageError, Result};

/// One kind of enveloped file, as its errors name it.
pub(super) struct EnvelopedFile {
    /// Its file name (`manifest.json`).
    pub name: &'static str,
    /// What a JSON error in its body names.
    pub body_name: &'static str,
    /// Put before a field's name in [`ImageError::Invalid`]: empty for the
    /// manifest, whose fields are the image's own.
    pub field_prefix: &'static str,
    /// Its largest size in bytes.
    pub max_bytes: u64,
}

/// The first look at a file: only what decides whether this build can
/// read it at all, so that a future version gets a version error rather
/// than a JSON error about a field it added.
#[derive(Deserialize)]
pub(super) struct Probe {
    pub format: serde_json::Value,
    pub version: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[allow(dead_code)]
    format: &'a str,
    #[allow(dead_code)]
    version: u32,
    checksum: &'a str,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// At most 64 characters of a JSON value, for an error message (a string
/// without its quotes).
pub(super) fn short(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.chars().take(64).collect(),
        other => other.to_string().chars().take(64).collect(),
    }
}

fn json_error(file: &'static str, e: serde_path_to_error::Error<serde_json::Error>) -> ImageError {
    let path = e.path().to_string();
    ImageError::Json {
        file,
        path,
        message: e.into_inner().to_string(),
    }
}

fn deserialize<'a, T: Deserialize<'a>>(file: &'static str, bytes: &'a [u8]) -> Result<T> {
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes))
        .map_err(|e| json_error(file, e))
}

impl EnvelopedFile {
    /// [`ImageError::Invalid`] for `field` of this file.
    pub fn invalid(&self, field: impl Into<String>, reason: impl Into<String>) -> ImageError {
        ImageError::invalid(format!("{}{}", self.field_prefix, field.into()), reason)
    }

    /// Refuses `len` bytes of this file if that is more than it may hold.
    pub fn check_size(&self, len: u64) -> Result<()> {
        if len > self.max_bytes {
            return Err(ImageError::limit(
                format!("{} size in bytes", self.name),
                len,
                self.max_bytes,
            ));
        }
        Ok(())
    }

    /// Reads `file` (at `path`, `size` bytes by its fstat), refusing one
    /// larger than it may be, and reading no more than that even if it
    /// grows meanwhile.
    pub fn read(&self, file: File, path: &Path, size: u64) -> Result<Vec<u8>> {
        self.check_size(size)?;
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(self.max_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(ImageError::io(path, "read"))?;
        Ok(bytes)
    }

    /// The size check and the first look at `bytes`: format and version,
    /// whatever else they hold.
    pub fn probe(&self, bytes: &[u8]) -> Result<Probe> {
        self.check_size(bytes.len() as u64)?;
        deserialize(self.name, bytes)
    }

    /// The body of `bytes` (a file whose format and version its reader
    /// accepted), parsed strictly once its SHA-256 matched the envelope's
    /// checksum; with that SHA-256.
    pub fn body<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<(T, Sha256Digest)> {
        let envelope: Envelope = deserialize(self.name, bytes)?;
        let recorded = envelope
            .checksum
            .strip_prefix("sha256:")
            .and_then(|h| h.parse::<Sha256Digest>().ok())
            .ok_or_else(|| {
                self.invalid(
                    "checksum",
                    "expected \"sha256:\" and 64 lowercase hex digits",
                )
            })?;
        let body_bytes = envelope.body.get().as_bytes();
        let actual = Sha256Digest::of(body_bytes);
        if actual != recorded {
            return Err(ImageError::ChecksumMismatch {
                what: format!("{} body", self.name),
                expected: format!("sha256:{recorded}"),
                actual: format!("sha256:{actual}"),
            });
        }
        Ok((deserialize(self.body_name, body_bytes)?, actual))
    }

    /// The bytes of a file of `format` and `version` holding `body`.
    pub fn encode(&self, format: &str, version: u32, body: &impl Serialize) -> Result<Vec<u8>> {
        let body = serde_json::to_vec(body).map_err(|e| ImageError::Json {
            file: self.body_name,
            path: ".".into(),
            message: e.to_string(),
        })?;
        let digest = Sha256Digest::of(&body);
        let mut out = Vec::with_capacity(body.len() + 160);
        out.extend_from_slice(
            format!(
                "{{\"format\":\"{format}\",\"version\":{version},\"checksum\":\"sha256:{digest}\",\"body\":"
            )
            .as_bytes(),
        );
        out.extend_from_slice(&body);
        out.extend_from_slice(b"}\n");
        self.check_size(out.len() as u64)?;
        Ok(out)
    }
}
