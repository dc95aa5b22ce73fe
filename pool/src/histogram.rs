//! The idle-time histogram of "Serverless in the Wild" (Shahrad et al.,
//! ATC'20): fixed-width bins up to a range, plus a counter of idle times
//! beyond it. 240 one-minute bins of `u32` is the ~960 bytes per function
//! the paper reports for production.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct IdleHistogram {
    bin_width: Duration,
    bins: Vec<u32>,
    in_range: u64,
    out_of_range: u64,
    /// Σ count², kept so the coefficient of variation costs O(1).
    sum_of_squares: u64,
}

impl IdleHistogram {
    /// `range / bin_width` bins (at least one); the caller validates both.
    pub fn new(range: Duration, bin_width: Duration) -> Self {
        let n = (range.as_nanos() / bin_width.as_nanos().max(1)).max(1);
        IdleHistogram {
            bin_width,
            bins: vec![0; usize::try_from(n).unwrap_or(usize::MAX)],
            in_range: 0,
            out_of_range: 0,
            sum_of_squares: 0,
        }
    }

    pub fn record(&mut self, idle: Duration) {
        let index = idle.as_nanos() / self.bin_width.as_nanos();
        match usize::try_from(index).ok().filter(|&i| i < self.bins.len()) {
            Some(i) => {
                let c = u64::from(self.bins[i]);
                if c < u64::from(u32::MAX) {
                    self.bins[i] += 1;
                    self.sum_of_squares += 2 * c + 1;
                }
                self.in_range += 1;
            }
            None => self.out_of_range += 1,
        }
    }

    pub fn bin_width(&self) -> Duration {
        self.bin_width
    }

    pub fn bin_count(&self) -> usize {
        self.bins.len()
    }

    pub fn range(&self) -> Duration {
        self.bin_width * self.bins.len() as u32
    }

    pub fn in_range(&self) -> u64 {
        self.in_range
    }

    pub fn out_of_range(&self) -> u64 {
        self.out_of_range
    }

    /// Share of all recorded idle times that fell beyond the range.
    pub fn out_of_range_share(&self) -> f64 {
        let total = self.in_range + self.out_of_range;
        if total == 0 {
            0.0
        } else {
            self.out_of_range as f64 / total as f64
        }
    }

    /// Coefficient of variation of the bin *counts* (population std / mean
    /// over all bins, empty ones included): high when idle times pile up in
    /// a few bins, i.e. when the histogram predicts something. 0 when empty.
    pub fn bin_count_cv(&self) -> f64 {
        if self.in_range == 0 {
            return 0.0;
        }
        let n = self.bins.len() as f64;
        let mean = self.in_range as f64 / n;
        let variance = (self.sum_of_squares as f64 / n - mean * mean).max(0.0);
        variance.sqrt() / mean
    }

    /// Index of the first bin at which the in-range cumulative share reaches
    /// `p`; `None` when no idle time is in range.
    pub fn percentile_bin(&self, p: f64) -> Option<usize> {
        if self.in_range == 0 {
            return None;
        }
        let mut cumulative = 0u64;
        for (i, &c) in self.bins.iter().enumerate() {
            cumulative += u64::from(c);
            if cumulative as f64 >= p * self.in_range as f64 {
                return Some(i);
            }
        }
        Some(self.bins.len() - 1)
    }

    /// The `p`-percentile rounded down to its bin's start (the paper's head).
    pub fn percentile_floor(&self, p: f64) -> Option<Duration> {
        self.percentile_bin(p)
            .map(|i| self.bin_width * u32::try_from(i).unwrap_or(u32::MAX))
    }

    /// The `p`-percentile rounded up to its bin's end (the paper's tail).
    pub fn percentile_ceil(&self, p: f64) -> Option<Duration> {
        self.percentile_bin(p)
            .map(|i| self.bin_width * u32::try_from(i + 1).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn four_hours() -> IdleHistogram {
        IdleHistogram::new(240 * MIN, MIN)
    }

    #[test]
    fn bins_and_out_of_range() {
        let mut h = four_hours();
        assert_eq!(h.bin_count(), 240);
        assert_eq!(h.range(), 240 * MIN);
        h.record(Duration::from_secs(59));
        h.record(Duration::from_secs(60));
        h.record(240 * MIN - Duration::from_millis(1));
        h.record(240 * MIN);
        h.record(3 * 24 * 60 * MIN);
        assert_eq!(h.in_range(), 3);
        assert_eq!(h.out_of_range(), 2);
        assert!((h.out_of_range_share() - 0.4).abs() < 1e-12);
        assert_eq!(h.percentile_bin(0.0), Some(0));
        assert_eq!(h.percentile_bin(0.34), Some(1));
        assert_eq!(h.percentile_bin(1.0), Some(239));
    }

    #[test]
    fn cv_of_bin_counts_matches_closed_form() {
        // k equally filled bins out of 240: CV = sqrt(240/k - 1).
        for k in [1usize, 10, 48, 60, 240] {
            let mut h = four_hours();
            for i in 0..k {
                for _ in 0..3 {
                    h.record(MIN * i as u32 + Duration::from_secs(30));
                }
            }
            let expected = (240.0 / k as f64 - 1.0).sqrt();
            assert!((h.bin_count_cv() - expected).abs() < 1e-9, "k={k}");
        }
        assert_eq!(four_hours().bin_count_cv(), 0.0);
    }

    #[test]
    fn head_rounds_down_and_tail_rounds_up() {
        let mut h = four_hours();
        // 100 idle times: 5 at 10.5 min, 90 at 30.2 min, 5 at 61.9 min.
        for _ in 0..5 {
            h.record(Duration::from_secs(630));
        }
        for _ in 0..90 {
            h.record(Duration::from_secs(1812));
        }
        for _ in 0..5 {
            h.record(Duration::from_secs(3714));
        }
        assert_eq!(h.percentile_floor(0.05), Some(10 * MIN));
        assert_eq!(h.percentile_ceil(0.99), Some(62 * MIN));
        assert_eq!(h.percentile_floor(0.5), Some(30 * MIN));
    }
}
