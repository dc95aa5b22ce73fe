//! `working-set.json`: the pages a restored process touched first, recorded
//! by a lazy restore and loaded ahead of everything else by later ones
//! (REAP, FaaSnap). See the [module docs](super) for where it sits in an
//! image.
//!
//! ```json
//! {"format":"sprout-working-set","version":2,"checksum":"sha256:<64 hex>",
//!  "body":{"image":"<64 hex>","ranges":[{"start":"0x7f3a1c000000","pages":12}, …],
//!          "pages":{"file":"working-set.img","size":5242880,"chunk_size":262144,
//!                   "hash":"xxh3-64","chunks":["<16 hex>", …],
//!                   "extents":[{"offset":40960,"pages":12}, …]}}}
//! ```
//!
//! - `format`, `version` ([`WORKING_SET_VERSION`]; version 1, which has no
//!   `pages`, is still read), `checksum` (SHA-256 of the body's bytes
//!   exactly as stored) work as in `manifest.json`;
//! - `image`: the SHA-256 of the manifest body of the image it was recorded
//!   from ([`Image::digest`]): a working set left next to a newer image in
//!   the same directory is refused ([`ImageError::WorkingSetForeign`]);
//! - `ranges`: page ranges by address, sorted, not overlapping, page
//!   aligned, at most [`MAX_WORKING_SET_RANGES`], each inside one VMA of
//!   the image. A page of a range is either a stored page of the image
//!   (loaded from `pages.img`) or a page the process touched that the image
//!   does not store (mapped zero-filled ahead of time);
//! - `pages` (optional): the index of `working-set.img`, the pages a lazy
//!   restore with this working set loads before the process runs, stored
//!   contiguously ([`WorkingSetPages`], [`working_set_pages`]).
//!   Without it those pages come from `pages.img`.
//!
//! Like the manifest it is untrusted input: the file is bounded
//! ([`MAX_WORKING_SET_BYTES`]), opened with the same type, owner and mode
//! checks, checksummed, parsed strictly and validated against the image
//! before a restore uses any of it.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;

use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, fsync, unlinkat};
use serde::{Deserialize, Serialize};

use super::encoding::{Sha256Digest, hex};
use super::envelope::{EnvelopedFile, short};
use super::error::{ImageError, Result};
use super::limits::{MIN_MAP_ADDR, PAGE_SIZE, TASK_SIZE_MAX};
use super::reader::Image;
use super::working_set_pages::{self, WORKING_SET_PAGES_FILE, WorkingSetPages};

/// File name of the working set inside the image directory.
pub const WORKING_SET_FILE: &str = "working-set.json";
/// The `format` field of every working set.
pub const WORKING_SET_FORMAT: &str = "sprout-working-set";
/// The working-set version this crate writes; it reads it and version 1
/// (the same without `pages`).
pub const WORKING_SET_VERSION: u32 = 2;
/// Largest `working-set.json`, in bytes.
pub const MAX_WORKING_SET_BYTES: u64 = 16 << 20;
/// Most ranges in a working set.
pub const MAX_WORKING_SET_RANGES: usize = 1 << 18;

const TMP_FILE: &str = "working-set.json.tmp";

/// A run of pages by address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageRange {
    /// First page's address, page aligned.
    #[serde(with = "hex")]
    pub start: u64,
    /// Number of pages, at least 1.
    pub pages: u64,
}

impl PageRange {
    /// End address (exclusive; exact in a validated working set).
    pub fn end(&self) -> u64 {
        self.start
            .saturating_add(self.pages.saturating_mul(PAGE_SIZE))
    }
}

/// The pages a restored process touched first: which to load before it
/// runs. Sorted, merged, bound to one image; with the index of its
/// `working-set.img` once saved with one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingSet {
    image: Sha256Digest,
    ranges: Vec<PageRange>,
    pages: Option<WorkingSetPages>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    image: Sha256Digest,
    ranges: Vec<PageRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pages: Option<WorkingSetPages>,
}

/// How `working-set.json` is wrapped and named in errors.
const WORKING_SET_JSON: EnvelopedFile = EnvelopedFile {
    name: WORKING_SET_FILE,
    body_name: WORKING_SET_FILE,
    field_prefix: "working-set.json ",
    max_bytes: MAX_WORKING_SET_BYTES,
};

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ImageError {
    WORKING_SET_JSON.invalid(field, reason)
}

impl WorkingSet {
    /// The working set of the image with digest `image` made of the pages
    /// at `pages` (page addresses, any order, duplicates allowed): sorted
    /// and merged into ranges.
    pub fn from_pages(image: Sha256Digest, pages: impl IntoIterator<Item = u64>) -> WorkingSet {
        let mut pages: Vec<u64> = pages.into_iter().map(|p| p & !(PAGE_SIZE - 1)).collect();
        pages.sort_unstable();
        pages.dedup();
        let mut ranges: Vec<PageRange> = Vec::new();
        for p in pages {
            match ranges.last_mut() {
                Some(r) if r.end() == p => r.pages += 1,
                _ => ranges.push(PageRange { start: p, pages: 1 }),
            }
        }
        WorkingSet {
            image,
            ranges,
            pages: None,
        }
    }

    /// Digest of the image it was recorded from.
    pub fn image(&self) -> &Sha256Digest {
        &self.image
    }

    /// Its ranges, sorted by address.
    pub fn ranges(&self) -> &[PageRange] {
        &self.ranges
    }

    /// Number of pages.
    pub fn page_count(&self) -> u64 {
        self.ranges.iter().map(|r| r.pages).sum()
    }

    /// The index of its `working-set.img`, if it was saved with one (and
    /// loaded back: [`WorkingSet::load`]).
    pub fn pages_file(&self) -> Option<&WorkingSetPages> {
        self.pages.as_ref()
    }

    /// Whether it names no page.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Every page address, in order.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges
            .iter()
            .flat_map(|r| (0..r.pages).map(move |i| r.start + i * PAGE_SIZE))
    }

    /// Parses and validates the bytes of a `working-set.json`: size limit,
    /// format and version, the body's SHA-256 over its stored bytes, its
    /// structure and the rules of the format (not yet against an image:
    /// [`WorkingSet::check_against`]). Never panics.
    pub fn parse(bytes: &[u8]) -> Result<WorkingSet> {
        let probe = WORKING_SET_JSON.probe(bytes)?;
        if probe.format.as_str() != Some(WORKING_SET_FORMAT) {
            return Err(invalid(
                "format",
                format!("{:?} is not \"{WORKING_SET_FORMAT}\"", short(&probe.format)),
            ));
        }
        let version = match probe.version.as_u64() {
            Some(v @ 1..=2) => v,
            Some(v) => {
                return Err(ImageError::UnsupportedWorkingSetVersion {
                    found: v,
                    supported: WORKING_SET_VERSION,
                });
            }
            None => {
                return Err(invalid(
                    "version",
                    format!("{} is not a version number", short(&probe.version)),
                ));
            }
        };
        let (body, _): (Body, _) = WORKING_SET_JSON.body(bytes)?;
        if version == 1 && body.pages.is_some() {
            return Err(invalid("pages", "version 1 has no pages file"));
        }
        let ws = WorkingSet {
            image: body.image,
            ranges: body.ranges,
            pages: body.pages,
        };
        ws.validate()?;
        Ok(ws)
    }

    /// The rules every working set follows, whoever made it.
    fn validate(&self) -> Result<()> {
        let n = self.ranges.len();
        if n > MAX_WORKING_SET_RANGES {
            return Err(ImageError::limit(
                "working-set.json ranges",
                n as u64,
                MAX_WORKING_SET_RANGES as u64,
            ));
        }
        let mut prev_end = 0u64;
        for (i, r) in self.ranges.iter().enumerate() {
            let field = format!("ranges[{i}]");
            if !r.start.is_multiple_of(PAGE_SIZE) {
                return Err(invalid(
                    field,
                    format!("{:#x} is not page aligned", r.start),
                ));
            }
            if r.pages == 0 {
                return Err(invalid(field, "a range of 0 pages"));
            }
            let end = r
                .pages
                .checked_mul(PAGE_SIZE)
                .and_then(|l| r.start.checked_add(l))
                .filter(|&e| r.start >= MIN_MAP_ADDR && e <= TASK_SIZE_MAX)
                .ok_or_else(|| {
                    invalid(
                        format!("ranges[{i}]"),
                        format!(
                            "{:#x} + {} pages is outside the user address space",
                            r.start, r.pages
                        ),
                    )
                })?;
            if r.start < prev_end {
                return Err(invalid(
                    field,
                    format!(
                        "{:#x} is not above the previous range's end {prev_end:#x}",
                        r.start
                    ),
                ));
            }
            prev_end = end;
        }
        if let Some(p) = &self.pages {
            p.validate()?;
        }
        Ok(())
    }

    /// Checks that it was recorded from `image`, that every range lies
    /// inside the image's VMAs (one, or adjacent ones) and that its pages
    /// file's extents lie inside `pages.img`.
    pub fn check_against(&self, image: &Image) -> Result<()> {
        if self.image != *image.digest() {
            return Err(ImageError::WorkingSetForeign {
                recorded: self.image.to_string(),
                image: image.digest().to_string(),
            });
        }
        let vmas = &image.manifest().vmas;
        for (i, r) in self.ranges.iter().enumerate() {
            let mut at = vmas.partition_point(|v| v.end <= r.start);
            let mut covered = match vmas.get(at) {
                Some(v) if v.start <= r.start => v.end,
                _ => r.start,
            };
            while covered < r.end() {
                at += 1;
                match vmas.get(at) {
                    Some(v) if v.start == covered => covered = v.end,
                    _ => break,
                }
            }
            if covered < r.end() {
                return Err(invalid(
                    format!("ranges[{i}]"),
                    format!(
                        "{:#x} + {} pages is not inside the image's mappings",
                        r.start, r.pages
                    ),
                ));
            }
        }
        if let Some(p) = &self.pages {
            p.check_against(image)?;
        }
        Ok(())
    }

    /// Serializes it into the bytes of a `working-set.json`, after
    /// validating it by the rules [`WorkingSet::parse`] applies.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.validate()?;
        WORKING_SET_JSON.encode(
            WORKING_SET_FORMAT,
            WORKING_SET_VERSION,
            &Body {
                image: self.image,
                ranges: self.ranges.clone(),
                pages: self.pages.clone(),
            },
        )
    }

    /// The working set stored with `image`, validated against it; `None`
    /// if the image has none.
    pub fn load(image: &Image) -> Result<Option<WorkingSet>> {
        let Some((file, st)) = image.open_optional_member(WORKING_SET_FILE)? else {
            return Ok(None);
        };
        let path = image.dir().join(WORKING_SET_FILE);
        let bytes = WORKING_SET_JSON.read(file, &path, st.st_size as u64)?;
        let ws = WorkingSet::parse(&bytes)?;
        ws.check_against(image)?;
        Ok(Some(ws))
    }

    /// Stores it in the image directory `dir`, which must hold the image
    /// it was recorded from: `working-set.img` (the pages a lazy restore
    /// with it loads before the process runs, copied from `pages.img`, each
    /// chunk of which is checked as it is read) and `working-set.json`
    /// indexing it, replacing those there. Each is written to a temporary
    /// file and fsynced; the old `working-set.json` is removed before
    /// either is renamed into place, so that a crash leaves the old working
    /// set, none, or the new one (a `working-set.img` without a
    /// `working-set.json` is ignored); then the directory is fsynced.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let image = Image::open(dir)?;
        self.check_against(&image)?;
        let dir_fd = image.dir_fd();
        // Temporary files left by a crashed writer.
        for tmp in [TMP_FILE, working_set_pages::TMP_FILE] {
            let _ = unlinkat(dir_fd, tmp, UnlinkatFlags::NoRemoveDir);
        }
        let written = self.write_files(&image, dir);
        if written.is_err() {
            for tmp in [TMP_FILE, working_set_pages::TMP_FILE] {
                let _ = unlinkat(dir_fd, tmp, UnlinkatFlags::NoRemoveDir);
            }
        }
        written
    }

    fn write_files(&self, image: &Image, dir: &Path) -> Result<()> {
        let dir_fd = image.dir_fd();
        let extents = working_set_pages::extents_for(image, self);
        let pages = working_set_pages::write_tmp(image, dir_fd, dir, extents)?;
        let ws = WorkingSet {
            pages: Some(pages),
            ..self.clone()
        };
        let bytes = ws.encode()?;
        let tmp_path = dir.join(TMP_FILE);
        let tmp = openat(
            dir_fd,
            TMP_FILE,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(ImageError::errno(&tmp_path, "create"))?;
        let mut tmp = File::from(tmp);
        tmp.write_all(&bytes)
            .and_then(|()| tmp.sync_all())
            .map_err(ImageError::io(&tmp_path, "write"))?;
        let json_path = dir.join(WORKING_SET_FILE);
        match unlinkat(dir_fd, WORKING_SET_FILE, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(ImageError::errno(&json_path, "remove")(e)),
        }
        fsync(dir_fd).map_err(ImageError::errno(dir, "fsync"))?;
        renameat(
            dir_fd,
            working_set_pages::TMP_FILE,
            dir_fd,
            WORKING_SET_PAGES_FILE,
        )
        .map_err(ImageError::errno(
            dir.join(WORKING_SET_PAGES_FILE),
            "rename into place",
        ))?;
        renameat(dir_fd, TMP_FILE, dir_fd, WORKING_SET_FILE)
            .map_err(ImageError::errno(&json_path, "rename into place"))?;
        fsync(dir_fd).map_err(ImageError::errno(dir, "fsync"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Sha256Digest {
        Sha256Digest::of(b"an image")
    }

    #[test]
    fn pages_are_sorted_and_merged() {
        let ws = WorkingSet::from_pages(
            digest(),
            [0x5000, 0x3000, 0x4000, 0x4000, 0x9123, 0x1000_0000],
        );
        assert_eq!(
            ws.ranges(),
            [
                PageRange {
                    start: 0x3000,
                    pages: 3
                },
                PageRange {
                    start: 0x9000,
                    pages: 1
                },
                PageRange {
                    start: 0x1000_0000,
                    pages: 1
                }
            ]
        );
        assert_eq!(ws.page_count(), 5);
        assert_eq!(
            ws.pages().collect::<Vec<_>>(),
            [0x3000, 0x4000, 0x5000, 0x9000, 0x1000_0000]
        );
    }

    #[test]
    fn encodes_and_parses_back() {
        let ws = WorkingSet::from_pages(digest(), [0x7f00_0000_0000, 0x7f00_0000_1000, 0x10000]);
        let bytes = ws.encode().unwrap();
        assert_eq!(WorkingSet::parse(&bytes).unwrap(), ws);
        // With the index of its pages file.
        let with_pages = WorkingSet {
            pages: Some(pages_index()),
            ..ws
        };
        let bytes = with_pages.encode().unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains(r#""version":2"#));
        let back = WorkingSet::parse(&bytes).unwrap();
        assert_eq!(back.pages_file(), Some(&pages_index()));
        assert_eq!(back, with_pages);
    }

    fn pages_index() -> WorkingSetPages {
        use super::super::encoding::ChunkHash;
        use super::super::working_set_pages::Extent;
        WorkingSetPages {
            file: WORKING_SET_PAGES_FILE.into(),
            size: 3 * 4096,
            chunk_size: 64 << 10,
            hash: super::super::ChunkHashKind::Xxh3_64,
            chunks: vec![ChunkHash(7)],
            extents: vec![
                Extent {
                    offset: 0,
                    pages: 1,
                },
                Extent {
                    offset: 0x8000,
                    pages: 2,
                },
            ],
        }
    }

    #[test]
    fn version_1_is_read_without_a_pages_file() {
        let d = digest();
        let body = format!(r#"{{"image":"{d}","ranges":[{{"start":"0x10000","pages":2}}]}}"#);
        let ws = WorkingSet::parse(&envelope(&body, 1)).unwrap();
        assert_eq!(ws.page_count(), 2);
        assert!(ws.pages_file().is_none());
        let pages = serde_json::to_string(&pages_index()).unwrap();
        let body = format!(r#"{{"image":"{d}","ranges":[],"pages":{pages}}}"#);
        match WorkingSet::parse(&envelope(&body, 1)) {
            Err(ImageError::Invalid { field, reason }) => {
                assert!(field.ends_with("pages") && reason.contains("version 1"))
            }
            other => panic!("{other:?}"),
        }
        assert!(WorkingSet::parse(&envelope(&body, 2)).is_ok());
        // A pages index that breaks its rules is refused with the document.
        let bad = pages.replace(r#""size":12288"#, r#""size":8192"#);
        let body = format!(r#"{{"image":"{d}","ranges":[],"pages":{bad}}}"#);
        assert!(matches!(
            WorkingSet::parse(&envelope(&body, 2)),
            Err(ImageError::Invalid { .. })
        ));
    }

    fn envelope(body: &str, version: u32) -> Vec<u8> {
        let d = Sha256Digest::of(body.as_bytes());
        format!(
            "{{\"format\":\"sprout-working-set\",\"version\":{version},\"checksum\":\"sha256:{d}\",\"body\":{body}}}"
        )
        .into_bytes()
    }

    #[test]
    fn refuses_bad_input_with_typed_errors() {
        let ws = WorkingSet::from_pages(digest(), [0x10000, 0x20000]);
        let good = ws.encode().unwrap();
        // A flipped byte in the body.
        let mut bad = good.clone();
        let at = bad.len() - 10;
        bad[at] ^= 1;
        assert!(matches!(
            WorkingSet::parse(&bad),
            Err(ImageError::ChecksumMismatch { .. } | ImageError::Json { .. })
        ));
        // Truncated.
        assert!(matches!(
            WorkingSet::parse(&good[..good.len() / 2]),
            Err(ImageError::Json { .. })
        ));
        // Another version.
        let d = digest();
        let body = format!(r#"{{"image":"{d}","ranges":[]}}"#);
        assert!(matches!(
            WorkingSet::parse(&envelope(&body, 7)),
            Err(ImageError::UnsupportedWorkingSetVersion { found: 7, .. })
        ));
        // Out of the address space, misaligned, overlapping, empty.
        for (ranges, want) in [
            (r#"[{"start":"0x7ffffffff000","pages":2}]"#, "outside"),
            (r#"[{"start":"0x0","pages":1}]"#, "outside"),
            (r#"[{"start":"0x10001","pages":1}]"#, "aligned"),
            (
                r#"[{"start":"0x10000","pages":2},{"start":"0x11000","pages":1}]"#,
                "previous",
            ),
            (r#"[{"start":"0x10000","pages":0}]"#, "0 pages"),
            (
                r#"[{"start":"0xffffffffffff0000","pages":1000000}]"#,
                "outside",
            ),
        ] {
            let body = format!(r#"{{"image":"{d}","ranges":{ranges}}}"#);
            match WorkingSet::parse(&envelope(&body, 1)) {
                Err(ImageError::Invalid { field, reason }) => {
                    assert!(
                        field.starts_with("working-set.json ranges[") && reason.contains(want),
                        "{field}: {reason}"
                    )
                }
                other => panic!("{ranges}: {other:?}"),
            }
        }
        // Unknown fields, a manifest instead.
        let body = format!(r#"{{"image":"{d}","ranges":[],"extra":1}}"#);
        assert!(matches!(
            WorkingSet::parse(&envelope(&body, 1)),
            Err(ImageError::Json { .. })
        ));
        assert!(matches!(
            WorkingSet::parse(br#"{"format":"sprout-image","version":1}"#),
            Err(ImageError::Invalid { .. })
        ));
        // Too large.
        let huge = vec![b' '; MAX_WORKING_SET_BYTES as usize + 1];
        assert!(matches!(
            WorkingSet::parse(&huge),
            Err(ImageError::Limit { .. })
        ));
    }
}
