//! Which pages a lazy restore loads, and where they are in each address
//! space the loader serves.
//!
//! [`PageIndex`] is fixed by the image: the stored pages of the VMAs that
//! are loaded lazily, numbered in address order, with their offsets in
//! `pages.img`, and the address ranges registered with userfaultfd.
//! [`Space`] is the state of one address space: which of those pages are
//! still to be loaded (`pending`), and where the registered ranges are now
//! ([`Layout`]: `mremap` moves them, `munmap` takes them away).

use crate::image::{ManifestBody, Vma};

use super::PAGE;

/// Whether the restorer leaves `v`'s stored pages to the loader
/// ([`Vma::loads_lazily`]).
pub(crate) fn is_lazy(v: &Vma) -> bool {
    v.loads_lazily()
}

/// A run of stored pages, contiguous in memory and in `pages.img`.
#[derive(Debug, Clone, Copy)]
struct Run {
    addr: u64,
    off: u64,
    pages: u64,
    /// Number of the run's first page.
    first: usize,
}

/// The stored pages of the lazily loaded VMAs and the ranges registered
/// for them, by original (dumped) address.
#[derive(Debug)]
pub(crate) struct PageIndex {
    runs: Vec<Run>,
    pages: usize,
    ranges: Vec<(u64, u64)>,
}

impl PageIndex {
    /// The lazily loaded part of `m`: adjacent lazy VMAs share one
    /// registered range.
    pub(crate) fn new(m: &ManifestBody) -> PageIndex {
        let mut runs = Vec::new();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut pages = 0usize;
        for v in m.vmas.iter().filter(|v| is_lazy(v)) {
            match ranges.last_mut() {
                Some(r) if r.1 == v.start => r.1 = v.end,
                _ => ranges.push((v.start, v.end)),
            }
            for r in &v.pages {
                runs.push(Run {
                    addr: r.addr(v.start),
                    off: r.offset,
                    pages: r.count,
                    first: pages,
                });
                pages += r.count as usize;
            }
        }
        PageIndex {
            runs,
            pages,
            ranges,
        }
    }

    /// Number of pages.
    pub(crate) fn page_count(&self) -> usize {
        self.pages
    }

    /// The registered ranges `[start, end)`, sorted.
    pub(crate) fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Whether the original address `addr` lies in a registered range.
    pub(crate) fn in_ranges(&self, addr: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 <= addr);
        self.ranges.get(i).is_some_and(|r| r.0 <= addr)
    }

    /// The number of the stored page at original address `addr`.
    pub(crate) fn lookup(&self, addr: u64) -> Option<usize> {
        let i = self
            .runs
            .partition_point(|r| r.addr + r.pages * PAGE <= addr);
        let r = self.runs.get(i)?;
        (r.addr <= addr).then(|| r.first + ((addr - r.addr) / PAGE) as usize)
    }

    /// The numbers of the stored pages in original `[start, end)` (pages
    /// are numbered in address order).
    pub(crate) fn pages_in(&self, start: u64, end: u64) -> std::ops::Range<usize> {
        self.first_from(start)..self.first_from(end)
    }

    /// The number of the first stored page at or above `addr`.
    fn first_from(&self, addr: u64) -> usize {
        let i = self
            .runs
            .partition_point(|r| r.addr + r.pages * PAGE <= addr);
        match self.runs.get(i) {
            None => self.pages,
            Some(r) if r.addr >= addr => r.first,
            Some(r) => r.first + (addr - r.addr).div_ceil(PAGE) as usize,
        }
    }

    /// Original address and `pages.img` offset of page `n`.
    pub(crate) fn page(&self, n: usize) -> (u64, u64) {
        let i = self
            .runs
            .partition_point(|r| r.first + r.pages as usize <= n);
        let r = &self.runs[i];
        let k = (n - r.first) as u64;
        (r.addr + k * PAGE, r.off + k * PAGE)
    }
}

/// A set of page numbers.
#[derive(Debug, Clone)]
pub(crate) struct PageSet {
    words: Vec<u64>,
    len: usize,
}

impl PageSet {
    /// All of `0..n`.
    pub(crate) fn full(n: usize) -> PageSet {
        let mut words = vec![u64::MAX; n.div_ceil(64)];
        if !n.is_multiple_of(64)
            && let Some(w) = words.last_mut()
        {
            *w = (1u64 << (n % 64)) - 1;
        }
        PageSet { words, len: n }
    }

    /// Number of members.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Removes `i`; whether it was there.
    pub(crate) fn remove(&mut self, i: usize) -> bool {
        let Some(w) = self.words.get_mut(i / 64) else {
            return false;
        };
        let bit = 1u64 << (i % 64);
        let was = *w & bit != 0;
        *w &= !bit;
        if was {
            self.len -= 1;
        }
        was
    }

    /// The first member at or after `from`.
    pub(crate) fn next_from(&self, from: usize) -> Option<usize> {
        let mut wi = from / 64;
        let mut w = *self.words.get(wi)? & (u64::MAX << (from % 64));
        loop {
            if w != 0 {
                return Some(wi * 64 + w.trailing_zeros() as usize);
            }
            wi += 1;
            w = *self.words.get(wi)?;
        }
    }
}

/// A piece of a registered range: `len` bytes originally at `orig`, now at
/// `cur`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seg {
    cur: u64,
    orig: u64,
    len: u64,
}

/// Where the registered ranges are in one address space. Starts as the
/// identity; `mremap` moves pieces, `munmap` removes them.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Sorted by `cur`, not overlapping.
    segs: Vec<Seg>,
    moved: bool,
}

impl Layout {
    pub(crate) fn identity(ranges: &[(u64, u64)]) -> Layout {
        Layout {
            segs: ranges
                .iter()
                .map(|&(s, e)| Seg {
                    cur: s,
                    orig: s,
                    len: e - s,
                })
                .collect(),
            moved: false,
        }
    }

    /// The original address of current address `cur`.
    pub(crate) fn to_orig(&self, cur: u64) -> Option<u64> {
        let i = self.segs.partition_point(|s| s.cur + s.len <= cur);
        let s = self.segs.get(i)?;
        (s.cur <= cur).then(|| s.orig + (cur - s.cur))
    }

    /// The current address of original address `orig`, if it is still
    /// mapped.
    pub(crate) fn to_cur(&self, orig: u64) -> Option<u64> {
        if !self.moved {
            return self.to_orig(orig).map(|_| orig);
        }
        self.segs
            .iter()
            .find(|s| s.orig <= orig && orig < s.orig + s.len)
            .map(|s| s.cur + (orig - s.orig))
    }

    /// Takes `[start, end)` (current addresses) out, returning the pieces.
    fn cut(&mut self, start: u64, end: u64) -> Vec<Seg> {
        let mut out = Vec::new();
        let mut keep = Vec::with_capacity(self.segs.len() + 2);
        for s in self.segs.drain(..) {
            let (a, b) = (s.cur, s.cur + s.len);
            if b <= start || end <= a {
                keep.push(s);
                continue;
            }
            if a < start {
                keep.push(Seg {
                    cur: a,
                    orig: s.orig,
                    len: start - a,
                });
            }
            let (ia, ib) = (a.max(start), b.min(end));
            out.push(Seg {
                cur: ia,
                orig: s.orig + (ia - a),
                len: ib - ia,
            });
            if end < b {
                keep.push(Seg {
                    cur: end,
                    orig: s.orig + (end - a),
                    len: b - end,
                });
            }
        }
        self.segs = keep;
        out
    }

    /// The original ranges behind current `[start, end)`.
    pub(crate) fn orig_ranges(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.segs
            .iter()
            .filter(|s| s.cur < end && start < s.cur + s.len)
            .map(|s| {
                let (ia, ib) = (s.cur.max(start), (s.cur + s.len).min(end));
                (s.orig + (ia - s.cur), s.orig + (ib - s.cur))
            })
            .collect()
    }

    /// `munmap` of current `[start, end)`: returns the original ranges that
    /// went.
    pub(crate) fn unmap(&mut self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.cut(start, end)
            .into_iter()
            .map(|s| (s.orig, s.orig + s.len))
            .collect()
    }

    /// `mremap` of `[from, from+len)` to `to`.
    pub(crate) fn remap(&mut self, from: u64, to: u64, len: u64) {
        let moved = self.cut(from, from.saturating_add(len));
        if moved.is_empty() {
            return;
        }
        // The destination was unmapped first (its own event).
        self.cut(to, to.saturating_add(len));
        for mut s in moved {
            s.cur = s.cur - from + to;
            self.segs.push(s);
        }
        self.segs.sort_unstable_by_key(|s| s.cur);
        self.moved = true;
    }
}

/// One address space the loader fills: the restored process, or a child
/// it forked while pages were still missing.
#[derive(Debug)]
pub(crate) struct Space {
    pub(crate) uffd: super::uffd::Uffd,
    pub(crate) layout: Layout,
    /// Stored pages not loaded yet (and not dropped by the process).
    pub(crate) pending: PageSet,
    /// Faults read but not resolved yet (the kernel asked to retry after
    /// pending events).
    pub(crate) deferred: Vec<(u64, bool)>,
    /// Where the background pass goes on.
    pub(crate) cursor: usize,
    /// The restored process's own (not a fork's).
    pub(crate) main: bool,
    /// The address space went away (exit, exec).
    pub(crate) gone: bool,
}

impl Space {
    /// Drops the pending pages of original `[start, end)`: they were
    /// removed or unmapped by the process and must not come back.
    pub(crate) fn forget(&mut self, index: &PageIndex, start: u64, end: u64) -> u64 {
        index
            .pages_in(start, end)
            .filter(|&i| self.pending.remove(i))
            .count() as u64
    }
}

#[cfg(test)]
impl PageIndex {
    /// An index from `(addr, offset, pages)` runs (sorted) and registered
    /// ranges.
    pub(crate) fn from_runs(runs: &[(u64, u64, u64)], ranges: &[(u64, u64)]) -> PageIndex {
        let mut first = 0;
        let runs = runs
            .iter()
            .map(|&(addr, off, pages)| {
                let r = Run {
                    addr,
                    off,
                    pages,
                    first,
                };
                first += pages as usize;
                r
            })
            .collect();
        PageIndex {
            runs,
            pages: first,
            ranges: ranges.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_index_numbers_pages_in_address_order() {
        let ix = PageIndex::from_runs(
            &[(0x10000, 0, 2), (0x14000, 0x8000, 1), (0x40000, 0x2000, 3)],
            &[(0x10000, 0x20000), (0x40000, 0x48000)],
        );
        assert_eq!(ix.page_count(), 6);
        assert_eq!(ix.lookup(0x11000), Some(1));
        assert_eq!(ix.lookup(0x12000), None);
        assert_eq!(ix.lookup(0x42000), Some(5));
        assert_eq!(ix.page(5), (0x42000, 0x4000));
        assert_eq!(ix.page(2), (0x14000, 0x8000));
        assert_eq!(ix.pages_in(0x11000, 0x41000), 1..4);
        assert_eq!(ix.pages_in(0x12000, 0x14000), 2..2);
        assert_eq!(ix.pages_in(0, u64::MAX), 0..6);
        assert!(ix.in_ranges(0x1f000) && !ix.in_ranges(0x20000));
        let mut s = PageSet::full(6);
        let mut sp = Space {
            uffd: super::super::uffd::Uffd::new(std::fs::File::open("/dev/null").unwrap().into()),
            layout: Layout::identity(ix.ranges()),
            pending: s.clone(),
            deferred: Vec::new(),
            cursor: 0,
            main: true,
            gone: false,
        };
        assert_eq!(sp.forget(&ix, 0x11000, 0x41000), 3);
        assert_eq!(sp.forget(&ix, 0x11000, 0x41000), 0);
        s.remove(1);
        s.remove(2);
        s.remove(3);
        assert_eq!(sp.pending.next_from(1), s.next_from(1));
    }

    #[test]
    fn page_sets() {
        let mut s = PageSet::full(130);
        assert_eq!(s.len(), 130);
        assert!(s.contains(129) && !s.contains(130));
        assert!(s.remove(0) && !s.remove(0));
        assert_eq!(s.next_from(0), Some(1));
        for i in 1..128 {
            s.remove(i);
        }
        assert_eq!(s.next_from(0), Some(128));
        assert_eq!(s.next_from(129), Some(129));
        s.remove(128);
        s.remove(129);
        assert_eq!(s.next_from(0), None);
        assert_eq!(s.len(), 0);
        assert_eq!(PageSet::full(64).next_from(63), Some(63));
        assert_eq!(PageSet::full(0).next_from(0), None);
    }

    #[test]
    fn layouts_follow_remap_and_unmap() {
        let mut l = Layout::identity(&[(0x10000, 0x20000), (0x40000, 0x50000)]);
        assert_eq!(l.to_orig(0x10000), Some(0x10000));
        assert_eq!(l.to_orig(0x30000), None);
        // Move the middle of the first range away.
        l.remap(0x14000, 0x90000, 0x4000);
        assert_eq!(l.to_orig(0x14000), None);
        assert_eq!(l.to_orig(0x91000), Some(0x15000));
        assert_eq!(l.to_cur(0x15000), Some(0x91000));
        assert_eq!(l.to_cur(0x18000), Some(0x18000));
        // Unmap across the end of a range and the moved piece.
        assert_eq!(
            l.unmap(0x1f000, 0x41000),
            vec![(0x1f000, 0x20000), (0x40000, 0x41000)]
        );
        assert_eq!(l.to_orig(0x40000), None);
        assert_eq!(l.orig_ranges(0x8f000, 0x92000), vec![(0x14000, 0x16000)]);
        // A remap of nothing registered changes nothing.
        l.remap(0x100000, 0x200000, 0x1000);
        assert_eq!(l.to_cur(0x19000), Some(0x19000));
    }
}
