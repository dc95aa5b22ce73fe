//! Where a template's instances may be populated: its private writable
//! memory, known from the image it was restored from.

use crate::image::limits::PAGE_SIZE;
use crate::image::{Backing, VmFlag, Vma};

use super::{PageRange, WriteSet};

/// The template's private writable memory that every instance inherits:
/// writable, not `MAP_SHARED`, not `MADV_DONTFORK` (an instance has no
/// such VMA), without its guard pages (populating one fails). Sorted,
/// not overlapping, touching parts joined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WritableLayout {
    regions: Vec<PageRange>,
}

fn inherited_writable(v: &Vma) -> bool {
    v.prot.write
        && !v.shared
        && !v.flags.contains(&VmFlag::DontCopy)
        && !matches!(
            v.backing,
            Backing::SharedMemory { .. } | Backing::Vdso | Backing::Vvar | Backing::VvarVclock
        )
}

impl WritableLayout {
    /// From the image's VMAs (sorted and disjoint, as a valid manifest's
    /// are).
    pub(crate) fn from_vmas(vmas: &[Vma]) -> WritableLayout {
        let mut regions: Vec<PageRange> = Vec::new();
        let mut add = |start: u64, end: u64| {
            if start >= end {
                return;
            }
            match regions.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => regions.push(PageRange { start, end }),
            }
        };
        for v in vmas.iter().filter(|v| inherited_writable(v)) {
            let mut guards: Vec<(u64, u64)> = v
                .guard_pages
                .iter()
                .map(|g| {
                    let s = v.start.saturating_add(g.page.saturating_mul(PAGE_SIZE));
                    (s, s.saturating_add(g.count.saturating_mul(PAGE_SIZE)))
                })
                .collect();
            guards.sort_unstable();
            let mut at = v.start;
            for (s, e) in guards {
                add(at, s.min(v.end));
                at = at.max(e);
            }
            add(at, v.end);
        }
        WritableLayout { regions }
    }

    /// The regions, sorted.
    pub(crate) fn regions(&self) -> &[PageRange] {
        &self.regions
    }

    /// The parts of `set` inside the layout (ranges split where a region
    /// ends), and how many of its pages lie outside.
    pub(crate) fn clip(&self, set: &WriteSet) -> (Vec<PageRange>, u64) {
        let mut inside = Vec::new();
        let mut inside_pages = 0;
        let mut i = 0;
        for r in set.ranges() {
            // Regions wholly before `r` are done with (ranges are sorted).
            while i < self.regions.len() && self.regions[i].end <= r.start {
                i += 1;
            }
            let mut j = i;
            while j < self.regions.len() && self.regions[j].start < r.end {
                let part = PageRange {
                    start: r.start.max(self.regions[j].start),
                    end: r.end.min(self.regions[j].end),
                };
                inside_pages += part.pages();
                inside.push(part);
                j += 1;
            }
        }
        (inside, set.pages() - inside_pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{PageSpan, Prot};

    const P: u64 = PAGE_SIZE;

    fn vma(start: u64, end: u64, prot: &str, shared: bool, backing: Backing) -> Vma {
        Vma {
            start,
            end,
            prot: Prot {
                read: prot.contains('r'),
                write: prot.contains('w'),
                exec: prot.contains('x'),
            },
            shared,
            flags: Vec::new(),
            backing,
            pages: Vec::new(),
            guard_pages: Vec::new(),
        }
    }

    fn r(start: u64, end: u64) -> PageRange {
        PageRange { start, end }
    }

    #[test]
    fn keeps_private_writable_memory_only() {
        let file = Backing::File { file: 0, offset: 0 };
        let mut dontfork = vma(0x50_0000, 0x51_0000, "rw-", false, Backing::Anonymous);
        dontfork.flags.push(VmFlag::DontCopy);
        let mut stack = vma(0x7ff0_0000, 0x7ff1_0000, "rw-", false, Backing::Stack);
        stack.guard_pages = vec![
            PageSpan { page: 0, count: 2 },
            PageSpan { page: 8, count: 1 },
        ];
        let l = WritableLayout::from_vmas(&[
            vma(0x10_0000, 0x11_0000, "r-x", false, file),
            vma(0x11_0000, 0x12_0000, "rw-", false, file),
            vma(0x12_0000, 0x14_0000, "rw-", false, Backing::Heap),
            vma(0x20_0000, 0x21_0000, "rw-", true, file),
            vma(0x30_0000, 0x31_0000, "---", false, Backing::Anonymous),
            vma(0x31_0000, 0x32_0000, "rw-", false, Backing::Anonymous),
            dontfork,
            stack,
        ]);
        assert_eq!(
            l.regions(),
            [
                // .data and the heap touch: one region.
                r(0x11_0000, 0x14_0000),
                r(0x31_0000, 0x32_0000),
                r(0x7ff0_0000 + 2 * P, 0x7ff0_0000 + 8 * P),
                r(0x7ff0_0000 + 9 * P, 0x7ff1_0000),
            ]
        );
    }

    #[test]
    fn clips_a_set_to_the_layout() {
        let l = WritableLayout {
            regions: vec![r(0x10_0000, 0x10_4000), r(0x20_0000, 0x20_2000)],
        };
        let set = WriteSet::from_ranges(vec![
            r(0x8_0000, 0x8_1000),       // before everything: 1 page out
            r(0x10_2000, 0x20_1000),     // tail of one region, gap, head of the next
            r(0x20_1000, 0x20_3000),     // one page in, one out
            r(0x7000_0000, 0x7000_2000), // after everything: 2 out
        ])
        .unwrap();
        let (inside, outside) = l.clip(&set);
        assert_eq!(
            inside,
            [
                r(0x10_2000, 0x10_4000),
                r(0x20_0000, 0x20_1000),
                r(0x20_1000, 0x20_2000)
            ]
        );
        let gap = (0x20_0000 - 0x10_4000) / P;
        assert_eq!(outside, 1 + gap + 1 + 2);
        assert_eq!(l.clip(&WriteSet::default()), (vec![], 0));
    }
}
