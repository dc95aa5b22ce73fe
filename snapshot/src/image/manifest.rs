//! `manifest.json`: the envelope, the body, and the one parser every
//! reader goes through ([`parse_manifest`]).

use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::encoding::{ChunkHash, Sha256Digest};
use super::envelope::{EnvelopedFile, short};
use super::error::{ImageError, Result};
use super::fds::Fd;
use super::host::Host;
use super::limits::{FORMAT, MAX_MANIFEST_BYTES, VERSION};
use super::memory::{FileRecord, SharedObject, Vma};
use super::process::Process;
use super::thread::Thread;
use super::validate;

/// Everything an image records besides page contents. Stored as the
/// `body` of `manifest.json`; see the [module docs](super) for the format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestBody {
    /// Who wrote the image, e.g. `"sprout 0.1.0"`. Informational.
    pub producer: String,
    /// What the restoring host must match.
    pub host: Host,
    /// Process-wide state.
    pub process: Process,
    /// Threads, the leader first.
    pub threads: Vec<Thread>,
    /// The address space, sorted by address.
    pub vmas: Vec<Vma>,
    /// Files mapped by `vmas`, referenced by index.
    pub files: Vec<FileRecord>,
    /// Shared-memory objects mapped by `vmas`, referenced by index.
    pub shared_memory: Vec<SharedObject>,
    /// Open file descriptors, sorted by number.
    pub fds: Vec<Fd>,
    /// Index of `pages.img`. [`ImageWriter::finish`](super::ImageWriter::finish)
    /// fills it in; pass `PagesIndex::default()`.
    pub pages: PagesIndex,
}

/// Hash function of the pages file's chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkHashKind {
    /// XXH3, 64-bit, seed 0: fast enough to check tens of MiB in a few
    /// milliseconds. Integrity against corruption only; the manifest's
    /// SHA-256 protects the list of chunk hashes itself.
    #[default]
    #[serde(rename = "xxh3-64")]
    Xxh3_64,
}

/// Index of the pages file: its size and per-chunk checksums.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagesIndex {
    /// Always `pages.img`; recorded for readers of the JSON, never used as
    /// a path.
    pub file: String,
    /// Exact size of the file in bytes, a multiple of 4096.
    pub size: u64,
    /// Chunk size in bytes: a power of two within
    /// [`MIN_CHUNK_BYTES`](super::limits::MIN_CHUNK_BYTES)..=[`MAX_CHUNK_BYTES`](super::limits::MAX_CHUNK_BYTES).
    pub chunk_size: u64,
    /// Hash function of `chunks`.
    pub hash: ChunkHashKind,
    /// Hash of each chunk, in order: `ceil(size / chunk_size)` entries; the
    /// last chunk may be shorter.
    pub chunks: Vec<ChunkHash>,
}

impl PagesIndex {
    /// Byte range `(offset, len)` of chunk `index`.
    pub fn chunk_range(&self, index: usize) -> (u64, u64) {
        let off = (index as u64).saturating_mul(self.chunk_size);
        (off, self.chunk_size.min(self.size.saturating_sub(off)))
    }
}

impl ManifestBody {
    /// Total bytes of page data the VMAs and shared objects reference.
    pub fn stored_page_bytes(&self) -> u64 {
        self.vmas
            .iter()
            .flat_map(|v| v.pages.iter())
            .chain(self.shared_memory.iter().flat_map(|o| o.pages.iter()))
            .map(|r| r.len())
            .fold(0u64, u64::saturating_add)
    }

    /// Number of page runs over all VMAs and shared objects.
    pub fn page_run_count(&self) -> usize {
        self.vmas.iter().map(|v| v.pages.len()).sum::<usize>()
            + self
                .shared_memory
                .iter()
                .map(|o| o.pages.len())
                .sum::<usize>()
    }
}

/// How `manifest.json` is wrapped and named in errors.
const MANIFEST: EnvelopedFile = EnvelopedFile {
    name: "manifest.json",
    body_name: "manifest.json body",
    field_prefix: "",
    max_bytes: MAX_MANIFEST_BYTES,
};

/// Reads `manifest.json` from `file` (at `path`, `size` bytes by its
/// fstat), bounded by [`MAX_MANIFEST_BYTES`].
pub(crate) fn read_manifest(file: File, path: &Path, size: u64) -> Result<Vec<u8>> {
    MANIFEST.read(file, path, size)
}

/// Parses and validates the bytes of a `manifest.json`: size limit, format
/// and version, envelope, the body's SHA-256 over its exact stored bytes,
/// the body's structure, then every rule of the format (limits, alignment,
/// ordering, references, consistency with its own host record). Never
/// panics; the only way to a [`ManifestBody`] from bytes.
///
/// It does not look at the pages file (its size is checked by
/// [`Image::open`](super::Image::open)) nor at this host.
pub fn parse_manifest(bytes: &[u8]) -> Result<ManifestBody> {
    parse_manifest_with_digest(bytes).map(|(body, _)| body)
}

/// [`parse_manifest`], also returning the body's SHA-256 (verified against
/// the envelope's checksum): the identity of the image that a working set
/// ([`super::WorkingSet`]) is bound to.
pub(crate) fn parse_manifest_with_digest(bytes: &[u8]) -> Result<(ManifestBody, Sha256Digest)> {
    let probe = MANIFEST.probe(bytes)?;
    if probe.format.as_str() != Some(FORMAT) {
        return Err(ImageError::NotAnImage {
            found: short(&probe.format),
        });
    }
    match probe.version.as_u64() {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => {
            return Err(ImageError::UnsupportedVersion {
                found: v,
                supported: VERSION,
            });
        }
        None => {
            return Err(ImageError::invalid(
                "version",
                format!(
                    "{} is not a version number",
                    probe
                        .version
                        .to_string()
                        .chars()
                        .take(64)
                        .collect::<String>()
                ),
            ));
        }
    }
    let (body, digest): (ManifestBody, _) = MANIFEST.body(bytes)?;
    validate::body(&body)?;
    Ok((body, digest))
}

/// Serializes a body into the bytes of a `manifest.json`, after validating
/// it by the same rules [`parse_manifest`] applies.
pub fn encode_manifest(body: &ManifestBody) -> Result<Vec<u8>> {
    validate::body(body)?;
    MANIFEST.encode(FORMAT, VERSION, body)
}
