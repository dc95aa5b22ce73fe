//! Execution profiles fed back into forks: the **write set** of a
//! function's first request (DESIGN "Templates and fork").
//!
//! An instance forked from a template shares the template's pages
//! copy-on-write; its first request writes hundreds of them (CPython's
//! reference counts touch the whole heap) and pays a page fault for each.
//! [`WriteSet::record`] takes, from an instance that has served a request,
//! the pages it owns alone in the template's private writable memory —
//! after a fork every page still shared with the template is mapped twice,
//! so a page mapped exclusively (pagemap bit 56) was written, or first
//! faulted, by the instance. [`ForkSpec::populate`] hands a recorded set to
//! later forks, which break copy-on-write for all of it in one batch of
//! `MADV_POPULATE_WRITE` before the instance runs. The copies still cost
//! what they cost (page allocation and charge dominate, not the fault's
//! entry and exit): the gain is where the fork happens before the request
//! arrives, as for pre-warmed instances.
//!
//! A write set is persisted by its user (sproutd) and read back, so it is
//! untrusted input: deserializing validates it (version, page alignment,
//! order, user address space, [`MAX_RANGES`], [`MAX_PAGES`]). A valid set
//! that does not fit the template (another image, a stale profile) costs
//! nothing but its own pages: forks populate only what lies in the
//! template's private writable memory and never fail because of it.
//!
//! [`ForkSpec::populate`]: crate::template::ForkSpec::populate

mod layout;
mod populate;
mod record;

use serde::{Deserialize, Serialize};

use crate::image::limits::{MIN_MAP_ADDR, PAGE_SIZE, TASK_SIZE_MAX};

pub(crate) use layout::WritableLayout;
pub use populate::Populated;
pub(crate) use populate::populate;

/// The one write-set format version this crate reads and writes.
pub const WRITE_SET_VERSION: u32 = 1;
/// Most ranges in a write set (one `madvise` each at fork).
pub const MAX_RANGES: usize = 16384;
/// Most pages in a write set: 1 GiB of 4 KiB pages, far above a first
/// request's, low enough that a bad profile cannot make a fork copy the
/// world.
pub const MAX_PAGES: u64 = 1 << 18;

/// Why a write set is refused or could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// A persisted set of another format version.
    #[error("write set version {found}: this sprout reads version {WRITE_SET_VERSION}")]
    Version {
        /// The version found.
        found: u32,
    },
    /// A range that is empty, not page aligned, outside the user address
    /// space, or out of order with the one before it.
    #[error("write set range {start:#x}..{end:#x}: {reason}")]
    BadRange {
        /// Its first address.
        start: u64,
        /// One past its last address.
        end: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// More ranges or pages than the bounds allow.
    #[error(
        "write set too large: {ranges} ranges and {pages} pages (at most {MAX_RANGES} ranges and {MAX_PAGES} pages)"
    )]
    TooLarge {
        /// Ranges (as far as counted).
        ranges: usize,
        /// Pages (as far as counted).
        pages: u64,
    },
    /// The instance's `/proc/PID/maps` could not be read.
    #[error("recording the write set of pid {pid}: {source}")]
    Maps {
        /// The instance.
        pid: i32,
        /// Why.
        #[source]
        source: crate::ptrace::PtraceError,
    },
    /// The instance's `/proc/PID/pagemap` could not be read.
    #[error("recording the write set of pid {pid}: {source}")]
    Pagemap {
        /// The instance.
        pid: i32,
        /// Why.
        #[source]
        source: crate::proc::ProcError,
    },
}

/// Pages `[start, end)` of an address space (page aligned, `start < end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageRange {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
}

impl PageRange {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Never true for a range of a valid write set.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.len() / PAGE_SIZE
    }
}

/// The pages an instance's first request wrote, as sorted, non-overlapping
/// page ranges in the user address space, within [`MAX_RANGES`] and
/// [`MAX_PAGES`]. Serialized as `{"version": 1, "ranges": [{"start": …,
/// "end": …}, …]}`; deserializing validates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WriteSetFile", into = "WriteSetFile")]
pub struct WriteSet {
    ranges: Vec<PageRange>,
}

/// The persisted form of a [`WriteSet`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteSetFile {
    version: u32,
    ranges: Vec<PageRange>,
}

impl TryFrom<WriteSetFile> for WriteSet {
    type Error = ProfileError;

    fn try_from(f: WriteSetFile) -> Result<WriteSet, ProfileError> {
        if f.version != WRITE_SET_VERSION {
            return Err(ProfileError::Version { found: f.version });
        }
        WriteSet::from_ranges(f.ranges)
    }
}

impl From<WriteSet> for WriteSetFile {
    fn from(w: WriteSet) -> WriteSetFile {
        WriteSetFile {
            version: WRITE_SET_VERSION,
            ranges: w.ranges,
        }
    }
}

fn check_range(r: &PageRange) -> Result<(), ProfileError> {
    let bad = |reason| ProfileError::BadRange {
        start: r.start,
        end: r.end,
        reason,
    };
    if !r.start.is_multiple_of(PAGE_SIZE) || !r.end.is_multiple_of(PAGE_SIZE) {
        return Err(bad("not page aligned"));
    }
    if r.start >= r.end {
        return Err(bad("empty"));
    }
    if r.start < MIN_MAP_ADDR || r.end > TASK_SIZE_MAX {
        return Err(bad("outside the user address space"));
    }
    Ok(())
}

impl WriteSet {
    /// A write set of `ranges` as they are: each page aligned, non-empty,
    /// inside the user address space, sorted and not overlapping the one
    /// before (touching is allowed); within the bounds.
    pub fn from_ranges(ranges: Vec<PageRange>) -> Result<WriteSet, ProfileError> {
        let mut pages = 0u64;
        for (i, r) in ranges.iter().enumerate() {
            check_range(r)?;
            if i > 0 && ranges[i - 1].end > r.start {
                return Err(ProfileError::BadRange {
                    start: r.start,
                    end: r.end,
                    reason: "overlaps or precedes the range before it",
                });
            }
            pages += r.pages();
        }
        if ranges.len() > MAX_RANGES || pages > MAX_PAGES {
            return Err(ProfileError::TooLarge {
                ranges: ranges.len(),
                pages,
            });
        }
        Ok(WriteSet { ranges })
    }

    /// A write set of the pages at `addrs` (page aligned, in any order,
    /// repeats allowed), merged into ranges.
    pub fn from_pages(addrs: impl IntoIterator<Item = u64>) -> Result<WriteSet, ProfileError> {
        let mut addrs: Vec<u64> = addrs.into_iter().collect();
        addrs.sort_unstable();
        addrs.dedup();
        let mut m = Merger::default();
        for a in addrs {
            m.push(a)?;
        }
        Ok(m.finish())
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[PageRange] {
        &self.ranges
    }

    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(PageRange::pages).sum()
    }

    /// Whether it holds no page.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// Builds a write set from page addresses pushed in increasing order,
/// checking the bounds as it goes (so recording a huge set stops early).
#[derive(Default)]
pub(crate) struct Merger {
    ranges: Vec<PageRange>,
    pages: u64,
}

impl Merger {
    /// Adds the page at `addr` (page aligned, above every page before).
    pub(crate) fn push(&mut self, addr: u64) -> Result<(), ProfileError> {
        let page = PageRange {
            start: addr,
            end: addr.saturating_add(PAGE_SIZE),
        };
        check_range(&page)?;
        match self.ranges.last_mut() {
            Some(last) if last.end > addr => {
                return Err(ProfileError::BadRange {
                    start: page.start,
                    end: page.end,
                    reason: "overlaps or precedes the range before it",
                });
            }
            Some(last) if last.end == addr => last.end = page.end,
            _ => self.ranges.push(page),
        }
        self.pages += 1;
        if self.ranges.len() > MAX_RANGES || self.pages > MAX_PAGES {
            return Err(ProfileError::TooLarge {
                ranges: self.ranges.len(),
                pages: self.pages,
            });
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> WriteSet {
        WriteSet {
            ranges: self.ranges,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE;

    fn r(start: u64, end: u64) -> PageRange {
        PageRange { start, end }
    }

    #[test]
    fn pages_merge_into_sorted_ranges() {
        let base = 0x7f00_0000_0000;
        let w = WriteSet::from_pages([
            base + 5 * P,
            base,
            base + P,
            base + 3 * P,
            base + P,
            base + 4 * P,
            base + 9 * P,
        ])
        .unwrap();
        assert_eq!(
            w.ranges(),
            [
                r(base, base + 2 * P),
                r(base + 3 * P, base + 6 * P),
                r(base + 9 * P, base + 10 * P)
            ]
        );
        assert_eq!(w.pages(), 6);
        assert!(WriteSet::from_pages([]).unwrap().is_empty());
    }

    #[test]
    fn bad_pages_and_ranges_are_refused_by_name() {
        let reason = |e: ProfileError| match e {
            ProfileError::BadRange { reason, .. } => reason,
            other => panic!("expected BadRange, got {other:?}"),
        };
        assert_eq!(
            reason(WriteSet::from_pages([0x10_0001]).unwrap_err()),
            "not page aligned"
        );
        assert_eq!(
            reason(WriteSet::from_pages([0]).unwrap_err()),
            "outside the user address space"
        );
        assert_eq!(
            reason(WriteSet::from_pages([TASK_SIZE_MAX]).unwrap_err()),
            "outside the user address space"
        );
        assert_eq!(
            reason(WriteSet::from_ranges(vec![r(0x20_0000, 0x20_0000)]).unwrap_err()),
            "empty"
        );
        assert_eq!(
            reason(WriteSet::from_ranges(vec![r(0x30_0000, 0x20_0000)]).unwrap_err()),
            "empty"
        );
        assert_eq!(
            reason(
                WriteSet::from_ranges(vec![r(0x20_0000, 0x30_0000), r(0x10_0000, 0x11_0000)])
                    .unwrap_err()
            ),
            "overlaps or precedes the range before it"
        );
        assert_eq!(
            reason(
                WriteSet::from_ranges(vec![r(0x20_0000, 0x30_0000), r(0x2f_f000, 0x31_0000)])
                    .unwrap_err()
            ),
            "overlaps or precedes the range before it"
        );
        // Touching ranges are fine.
        let w =
            WriteSet::from_ranges(vec![r(0x20_0000, 0x30_0000), r(0x30_0000, 0x31_0000)]).unwrap();
        assert_eq!(w.pages(), 0x110);
        assert!(
            WriteSet::from_ranges(vec![r(TASK_SIZE_MAX - P, TASK_SIZE_MAX)]).is_ok(),
            "the last user page"
        );
    }

    #[test]
    fn bounds_are_enforced() {
        let too_many_pages = vec![r(0x10_0000, 0x10_0000 + (MAX_PAGES + 1) * P)];
        assert!(matches!(
            WriteSet::from_ranges(too_many_pages),
            Err(ProfileError::TooLarge { ranges: 1, pages }) if pages == MAX_PAGES + 1
        ));
        let exactly = vec![r(0x10_0000, 0x10_0000 + MAX_PAGES * P)];
        assert_eq!(WriteSet::from_ranges(exactly).unwrap().pages(), MAX_PAGES);
        // Every other page: one range each.
        let scattered = (0..=MAX_RANGES as u64).map(|i| 0x10_0000 + 2 * i * P);
        assert!(matches!(
            WriteSet::from_pages(scattered),
            Err(ProfileError::TooLarge { ranges, .. }) if ranges == MAX_RANGES + 1
        ));
    }

    #[test]
    fn persists_and_validates_on_load() {
        let w = WriteSet::from_pages([0x55_0000_0000, 0x55_0000_1000, 0x7ffd_0000_0000]).unwrap();
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"version":1,"ranges":[{{"start":{},"end":{}}},{{"start":{},"end":{}}}]}}"#,
                0x55_0000_0000u64, 0x55_0000_2000u64, 0x7ffd_0000_0000u64, 0x7ffd_0000_1000u64
            )
        );
        assert_eq!(serde_json::from_str::<WriteSet>(&json).unwrap(), w);

        let load = |s: &str| serde_json::from_str::<WriteSet>(s).unwrap_err().to_string();
        let e = load(r#"{"version":2,"ranges":[]}"#);
        assert!(e.contains("write set version 2"), "{e}");
        let e = load(r#"{"version":1,"ranges":[{"start":4097,"end":8192}]}"#);
        assert!(e.contains("0x1001..0x2000: not page aligned"), "{e}");
        let e = load(
            r#"{"version":1,"ranges":[{"start":8192,"end":12288},{"start":4096,"end":8192}]}"#,
        );
        assert!(e.contains("overlaps or precedes"), "{e}");
        let e = load(r#"{"version":1,"ranges":[{"start":140737488351232,"end":140737488355328}]}"#);
        assert!(e.contains("outside the user address space"), "{e}");
        let e = load(r#"{"version":1,"ranges":[],"extra":0}"#);
        assert!(e.contains("unknown field"), "{e}");
        let e = load(r#"{"ranges":[]}"#);
        assert!(e.contains("missing field `version`"), "{e}");
    }
}
