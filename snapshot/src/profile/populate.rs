//! Breaking copy-on-write for a write set in a new instance, in one batch
//! of injected `madvise(MADV_POPULATE_WRITE)` before it runs.

use crate::ptrace::{Entry, Gadget, GadgetError, Tid, TraceCtx};

use super::{PageRange, WritableLayout, WriteSet};

/// What populating a write set did to an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Populated {
    /// Pages made the instance's own before it ran.
    pub pages: u64,
    /// `madvise` calls made (the set's ranges inside the template's
    /// private writable memory, split at its mappings' ends).
    pub ranges: usize,
    /// Of them, calls that failed: their pages are left to fault as usual.
    pub failed: usize,
    /// Pages of the set outside the template's private writable memory
    /// (a profile of another image, or stale): not touched.
    pub skipped_pages: u64,
}

/// Populates the parts of `set` inside `layout` in the stopped,
/// single-threaded `child` (which must already be in its memory cgroup:
/// the copies are charged there). A range the kernel refuses is counted,
/// not an error; only losing the child is.
pub(crate) fn populate(
    ctx: &mut TraceCtx,
    child: Tid,
    g: &mut Gadget,
    set: &WriteSet,
    layout: &WritableLayout,
) -> Result<Populated, GadgetError> {
    let (parts, skipped_pages) = layout.clip(set);
    let entries: Vec<Entry> = parts
        .iter()
        .map(|p| {
            Entry::new(
                libc::SYS_madvise,
                [p.start, p.len(), libc::MADV_POPULATE_WRITE as u64, 0, 0, 0],
            )
            .may_fail()
        })
        .collect();
    let results = if entries.is_empty() {
        Vec::new()
    } else {
        g.run(ctx, child, &entries)?
    };
    Ok(tally(&parts, &results, skipped_pages))
}

/// Counts pages and failures from the `madvise` results (0 or `-errno`).
fn tally(parts: &[PageRange], results: &[i64], skipped_pages: u64) -> Populated {
    let mut out = Populated {
        ranges: parts.len(),
        skipped_pages,
        ..Populated::default()
    };
    for (p, &r) in parts.iter().zip(results) {
        if r < 0 {
            out.failed += 1;
        } else {
            out.pages += p.pages();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_ranges_are_counted_not_their_pages() {
        let parts = [
            PageRange {
                start: 0x10_0000,
                end: 0x10_3000,
            },
            PageRange {
                start: 0x20_0000,
                end: 0x20_1000,
            },
            PageRange {
                start: 0x30_0000,
                end: 0x30_2000,
            },
        ];
        let t = tally(&parts, &[0, -(libc::ENOMEM as i64), 0], 7);
        assert_eq!(
            t,
            Populated {
                pages: 5,
                ranges: 3,
                failed: 1,
                skipped_pages: 7
            }
        );
    }
}
