//! Recording the write set of a forked instance from `/proc`.

use crate::image::limits::PAGE_SIZE;
use crate::proc::Pagemap;
use crate::ptrace::Tid;
use crate::ptrace::procfs::read_maps;
use crate::template::Template;

use super::{Merger, PageRange, ProfileError, WritableLayout, WriteSet};

impl WriteSet {
    /// The write set of `instance` (host pid of a process forked from
    /// `template`, e.g. once its first request was answered): the pages it
    /// maps exclusively (pagemap bit 56) and anonymously (bit 61 clear) in
    /// memory that is private and writable both in the instance now and in
    /// the template. Pages still shared with the template are mapped twice,
    /// so these are the pages the instance wrote (copied on write) or
    /// faulted in fresh since the fork — including the few the fork's own
    /// steps write, and every page a profile populated at its fork: record
    /// from an instance forked without one to learn a fresh set.
    ///
    /// Reads only `/proc` (no ptrace): the instance may be running or
    /// frozen.
    pub fn record(instance: Tid, template: &Template) -> Result<WriteSet, ProfileError> {
        record_in(instance, template.writable_layout())
    }
}

/// [`WriteSet::record`] against a known layout.
pub(crate) fn record_in(pid: Tid, layout: &WritableLayout) -> Result<WriteSet, ProfileError> {
    let maps = read_maps(pid).map_err(|source| ProfileError::Maps { pid, source })?;
    let pagemap = Pagemap::open(pid).map_err(|source| ProfileError::Pagemap { pid, source })?;
    let mut merger = Merger::default();
    let regions = layout.regions();
    let mut i = 0;
    // Both lists are sorted: one sweep over their intersections.
    for m in maps.iter().filter(|m| m.write && !m.shared) {
        while i < regions.len() && regions[i].end <= m.start {
            i += 1;
        }
        let mut j = i;
        while j < regions.len() && regions[j].start < m.end {
            let part = PageRange {
                start: m.start.max(regions[j].start),
                end: m.end.min(regions[j].end),
            };
            // A window at a time (a writable region may be a reservation of
            // terabytes).
            let mut pushed = Ok(());
            pagemap
                .for_each(part.start, part.end, |k, e| {
                    if pushed.is_ok() && e.present() && e.exclusive() && !e.file_or_shared() {
                        pushed = merger.push(part.start + k * PAGE_SIZE);
                    }
                })
                .map_err(|source| ProfileError::Pagemap { pid, source })?;
            pushed?;
            j += 1;
        }
    }
    Ok(merger.finish())
}
