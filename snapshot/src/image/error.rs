//! [`ImageError`]: every way an image can be refused, each naming the file,
//! field, chunk or host property at fault.

use std::io;
use std::path::PathBuf;

/// Why an image was refused, or could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A system call on a path failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("open", "read", "fsync", ...).
        op: &'static str,
        /// The error from the kernel.
        #[source]
        source: io::Error,
    },
    /// The image directory or one of its files has the wrong type, mode or
    /// owner.
    #[error("{path}: {reason}")]
    BadPermissions {
        /// The file or directory.
        path: PathBuf,
        /// Mode bits found (`st_mode & 0o7777`).
        mode: u32,
        /// Owner found.
        uid: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`ImageWriter::create`](super::ImageWriter::create) found a directory
    /// that already holds files.
    #[error("{path}: image directory exists and is not empty")]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// A file is shorter (or longer) than the manifest says.
    #[error("{file}: truncated: expected {expected} bytes, found {actual}")]
    Truncated {
        /// Which file.
        file: PathBuf,
        /// Bytes the manifest records.
        expected: u64,
        /// Bytes found.
        actual: u64,
    },
    /// The manifest is not JSON of the expected shape.
    #[error("{file}: malformed JSON at {path}: {message}")]
    Json {
        /// Which file (or "manifest body").
        file: &'static str,
        /// JSON path of the offending value (`.` for the document).
        path: String,
        /// serde_json's message, with line and column.
        message: String,
    },
    /// The manifest's `format` field is not `sprout-image`.
    #[error("not a sprout image: format is {found:?}, expected \"sprout-image\"")]
    NotAnImage {
        /// The format found.
        found: String,
    },
    /// The manifest has a version this build does not read.
    #[error("unsupported image version {found} (this sprout reads version {supported})")]
    UnsupportedVersion {
        /// Version found.
        found: u64,
        /// Version supported.
        supported: u32,
    },
    /// A checksum over a whole object (the manifest body, a mapped file's
    /// contents, the vDSO) did not match.
    #[error("{what}: checksum mismatch: recorded {expected}, computed {actual}")]
    ChecksumMismatch {
        /// What was checksummed.
        what: String,
        /// Checksum recorded in the image.
        expected: String,
        /// Checksum computed now.
        actual: String,
    },
    /// One chunk of the pages file does not match its checksum.
    #[error(
        "pages.img: chunk {index} (bytes {offset}..{}) is corrupt: recorded xxh3 {expected:016x}, computed {actual:016x}",
        offset + len
    )]
    ChunkCorrupt {
        /// Chunk number.
        index: u64,
        /// Byte offset of the chunk in the pages file.
        offset: u64,
        /// Chunk length.
        len: u64,
        /// Hash recorded in the manifest.
        expected: u64,
        /// Hash of the bytes found.
        actual: u64,
    },
    /// One chunk of `working-set.img` does not match its checksum.
    #[error(
        "working-set.img: chunk {index} (bytes {offset}..{}) is corrupt: recorded xxh3 {expected:016x}, computed {actual:016x}",
        offset + len
    )]
    WorkingSetChunkCorrupt {
        /// Chunk number.
        index: u64,
        /// Byte offset of the chunk in `working-set.img`.
        offset: u64,
        /// Chunk length.
        len: u64,
        /// Hash recorded in `working-set.json`.
        expected: u64,
        /// Hash of the bytes found.
        actual: u64,
    },
    /// A size or count is over one of the format's [limits](super::limits).
    #[error("{what}: {value} exceeds the limit of {max}")]
    Limit {
        /// What was counted or measured.
        what: String,
        /// The value found.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// A manifest field has a value that is not allowed (misaligned,
    /// overlapping, out of range, dangling reference, ...).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// JSON-like path of the field, e.g. `vmas[3].pages[0].offset`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The image was taken on a host this one does not match.
    #[error("image is foreign to this host: {field} is {image} in the image, {host} here")]
    Foreign {
        /// The host property, e.g. `host.kernel_release`.
        field: &'static str,
        /// The image's value.
        image: String,
        /// This host's value.
        host: String,
    },
    /// A file in the rootfs differs from the file the image mapped.
    #[error(
        "{path}: differs from the file in the image: {what} is {found}, image recorded {image}"
    )]
    FileChanged {
        /// Path inside the rootfs.
        path: String,
        /// `size`, `sha256` or `type`.
        what: &'static str,
        /// Value recorded in the image.
        image: String,
        /// Value found.
        found: String,
    },
    /// `working-set.json` has a version this build does not read.
    #[error(
        "working-set.json: unsupported version {found} (this sprout reads versions 1 to {supported})"
    )]
    UnsupportedWorkingSetVersion {
        /// Version found.
        found: u64,
        /// Version supported.
        supported: u32,
    },
    /// `working-set.json` was recorded from another image (or an earlier
    /// image in the same directory).
    #[error(
        "working-set.json was recorded from image sha256:{recorded}, not from this one (sha256:{image})"
    )]
    WorkingSetForeign {
        /// The image digest the working set names.
        recorded: String,
        /// This image's digest.
        image: String,
    },
    /// Something needed from the running host could not be read.
    #[error("reading this host's {what}: {reason}")]
    HostProbe {
        /// What was being read (`vdso`, `cpuid`, ...).
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| ImageError::Io { path, op, source }
    }

    pub(crate) fn errno(
        path: impl Into<PathBuf>,
        op: &'static str,
    ) -> impl FnOnce(nix::errno::Errno) -> Self {
        let path = path.into();
        move |e| ImageError::Io {
            path,
            op,
            source: io::Error::from(e),
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ImageError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn limit(what: impl Into<String>, value: u64, max: u64) -> Self {
        ImageError::Limit {
            what: what.into(),
            value,
            max,
        }
    }
}

/// Result with [`ImageError`].
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
