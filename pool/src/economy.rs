//! The memory economy: how long to keep a function loaded once its window
//! opens, chosen by what the memory buys rather than by a fixed percentile.
//!
//! The published policy keeps every function to the 99th percentile of
//! its idle times. For a function called at random (Poisson-like) every
//! second of keep-alive buys the same chance of a warm start, so the last
//! percentiles cost as much as the first ones: most of the idle memory
//! goes to making functions that are warm 95% of the time warm 99% of the
//! time, while functions called every few hours stay cold. The economy
//! instead, from the function's recent idle times:
//!
//! 1. keeps it until a **target share** of its idle periods would have
//!    ended warm, if that costs at most an **allowance** of average idle
//!    memory (a per-function cold-start objective; this is what moves
//!    the per-function percentiles); and
//! 2. keeps it longer only while the keep-alive is expected to catch at
//!    least a **price** of requests per GB-hour of idle memory (the
//!    overall cold-start ratio; busy functions keep their full window).
//!
//! All ours, not published; off in [`crate::HybridConfig::published`].

use std::time::Duration;

use crate::error::PoolError;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EconomyConfig {
    /// Share of a function's idle periods that should end warm.
    pub target_warm_share: f64,
    /// Average idle memory (MB) a function may hold to reach that share.
    pub allowance_mb: f64,
    /// Beyond the target, keep only while expecting this many requests
    /// per GB-hour of idle memory.
    pub min_hits_per_gb_hour: f64,
    /// Idle times needed before the economy decides (until then the
    /// tier's own window applies).
    pub min_samples: usize,
    /// An instance's memory when the caller did not say.
    pub assumed_memory_mb: f64,
}

impl Default for EconomyConfig {
    fn default() -> Self {
        EconomyConfig {
            target_warm_share: 0.6,
            allowance_mb: 128.0,
            min_hits_per_gb_hour: 25.0,
            min_samples: 2,
            assumed_memory_mb: 128.0,
        }
    }
}

impl EconomyConfig {
    pub fn validate(&self) -> Result<(), PoolError> {
        let bad = |setting, reason| Err(PoolError::InvalidConfig { setting, reason });
        if !(0.0..=1.0).contains(&self.target_warm_share) {
            return bad("target_warm_share", "must lie in [0, 1]");
        }
        for (setting, v) in [
            ("allowance_mb", self.allowance_mb),
            ("min_hits_per_gb_hour", self.min_hits_per_gb_hour),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(setting, "must be a finite non-negative number");
            }
        }
        if !(self.assumed_memory_mb.is_finite() && self.assumed_memory_mb > 0.0) {
            return bad("assumed_memory_mb", "must be a finite positive number");
        }
        if self.min_samples == 0 {
            return bad("min_samples", "must be positive");
        }
        Ok(())
    }

    /// The window for the next idle period: the best of opening at each of
    /// `openings` (relative to the start of the idle period) and keeping
    /// until one of the recent idle times (`sorted`, ascending), or not
    /// loading at all. Never longer than `tier_end`; the chosen idle time
    /// is padded by `margin` as the histogram pads its tail. `None` while
    /// there are too few samples.
    ///
    /// A window scores, per idle period, in MB-seconds:
    /// `allowance × mean idle time` if it catches the target share, plus
    /// `share caught × (1 GB-hour / price)`, minus `memory × expected
    /// loaded time`. That is: a function may hold its allowance on
    /// average to meet its target, and beyond it each GB-hour must buy
    /// `price` requests.
    pub fn window(
        &self,
        sorted: &[Duration],
        openings: &[Duration],
        tier_end: Duration,
        memory_mb: f64,
        margin: f64,
    ) -> Option<(Duration, Duration)> {
        let n = sorted.len();
        if n < self.min_samples {
            return None;
        }
        let secs: Vec<f64> = sorted.iter().map(Duration::as_secs_f64).collect();
        let mean = secs.iter().sum::<f64>() / n as f64;
        let bonus = self.allowance_mb * mean;
        let hit_value = if self.min_hits_per_gb_hour > 0.0 {
            1024.0 * 3600.0 / self.min_hits_per_gb_hour
        } else {
            f64::INFINITY
        };
        let cap = tier_end.as_secs_f64();
        // The last idle time the tier's window reaches.
        let last = secs.partition_point(|s| *s <= cap).max(1) - 1;
        let mut best = (0.0, None::<(Duration, usize)>);
        for &opens in openings {
            let a = opens.as_secs_f64();
            let first = secs.partition_point(|s| *s < a);
            let mut inside = 0.0;
            for (j, &s) in secs.iter().enumerate().skip(first) {
                if s > cap {
                    break;
                }
                inside += s - a;
                let warm = (j + 1 - first) as f64 / n as f64;
                // Per idle period: those ending later were loaded for all of [a, s].
                let loaded = (inside + (n - j - 1) as f64 * (s - a)) / n as f64;
                let mut score = warm * hit_value - memory_mb * loaded;
                if self.target_warm_share > 0.0 && warm >= self.target_warm_share {
                    score += bonus;
                }
                if score > best.0 {
                    best = (score, Some((opens, j)));
                }
            }
        }
        Some(match best.1 {
            None => (Duration::ZERO, Duration::ZERO),
            // Worth it up to the longest idle time seen: no reason to cut
            // the tier's window short.
            Some((opens, j)) if j == last => (opens, tier_end.max(opens)),
            Some((opens, j)) => {
                let keep = sorted[j].mul_f64(1.0 + margin);
                (opens, keep.clamp(opens, tier_end.max(opens)))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    const NEVER: f64 = 1e12;

    fn economy(target: f64, allowance_mb: f64, price: f64) -> EconomyConfig {
        EconomyConfig {
            target_warm_share: target,
            allowance_mb,
            min_hits_per_gb_hour: price,
            min_samples: 2,
            assumed_memory_mb: 128.0,
        }
    }

    fn minutes(m: &[u32]) -> Vec<Duration> {
        let mut v: Vec<Duration> = m.iter().map(|m| MIN * *m).collect();
        v.sort();
        v
    }

    /// Mostly within 3 minutes, now and then much later.
    fn bursty() -> Vec<Duration> {
        minutes(&[1, 1, 1, 1, 2, 2, 3, 5, 10, 30])
    }

    #[test]
    fn too_few_samples_leave_the_tier_alone() {
        let e = EconomyConfig {
            min_samples: 3,
            ..economy(0.6, 1000.0, 1.0)
        };
        assert_eq!(
            e.window(&minutes(&[60, 120]), &[MIN], 4 * HOUR, 128.0, 0.1),
            None
        );
    }

    #[test]
    fn the_target_share_when_the_allowance_pays_for_it() {
        // Ten idle times of 1..10 h, a function of 100 MB. Warm on 6 of 10
        // needs keeping to 6 h: loaded (1+2+…+6 + 4×6)/10 = 4.5 h per
        // period against a 5.5 h mean: 82 MB on average.
        let idle = minutes(&[60, 120, 180, 240, 300, 360, 420, 480, 540, 600]);
        let rich = economy(0.6, 90.0, NEVER);
        assert_eq!(
            rich.window(&idle, &[Duration::ZERO], 24 * HOUR, 100.0, 0.1),
            Some((Duration::ZERO, (6 * HOUR).mul_f64(1.1)))
        );
        // 80 MB does not pay for it, nor does 90 for a function of 200 MB:
        // nothing is kept.
        let nothing = Some((Duration::ZERO, Duration::ZERO));
        let poor = economy(0.6, 80.0, NEVER);
        assert_eq!(
            poor.window(&idle, &[Duration::ZERO], 24 * HOUR, 100.0, 0.1),
            nothing
        );
        assert_eq!(
            rich.window(&idle, &[Duration::ZERO], 24 * HOUR, 200.0, 0.1),
            nothing
        );
    }

    #[test]
    fn the_price_cuts_the_tail_where_requests_thin_out() {
        let tier_end = (30 * MIN).mul_f64(1.1);
        let at = |price: f64| {
            economy(0.0, 0.0, price).window(&bursty(), &[Duration::ZERO], tier_end, 128.0, 0.1)
        };
        // Each step out must catch `price` requests per GB-hour it holds:
        // from 2 to 3 min catches 1 in 10 for 0.4 min × 0.125 GB per
        // period (120/GB-h), from 3 to 5 min 1 in 10 for 0.6 min (80/GB-h),
        // from 10 to 30 min 1 in 10 for 2 min (24/GB-h).
        assert_eq!(at(150.0), Some((Duration::ZERO, (2 * MIN).mul_f64(1.1))));
        assert_eq!(at(60.0), Some((Duration::ZERO, (5 * MIN).mul_f64(1.1))));
        // Worth it up to the longest idle time: the tier's window stands.
        assert_eq!(at(20.0), Some((Duration::ZERO, tier_end)));
        assert_eq!(at(2000.0), Some((Duration::ZERO, Duration::ZERO)));
    }

    #[test]
    fn opens_where_the_requests_are() {
        // Idle times spread evenly over 1..10 min: loading from 5 min on
        // catches the second half at a third of the memory.
        let even = minutes(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let e = economy(0.0, 0.0, 60.0);
        let openings = [Duration::ZERO, 5 * MIN];
        assert_eq!(
            e.window(&even, &openings, 11 * MIN, 128.0, 0.1),
            Some((5 * MIN, 11 * MIN))
        );
        // Bursty ones are caught right after the last request: opening at
        // 2 min would miss four of ten.
        let openings = [Duration::ZERO, 2 * MIN];
        assert_eq!(
            e.window(&bursty(), &openings, 33 * MIN, 128.0, 0.1),
            Some((Duration::ZERO, (5 * MIN).mul_f64(1.1)))
        );
    }

    #[test]
    fn the_target_prefers_the_cheapest_window_that_meets_it() {
        // Idle times 30..39 min, a window may open at 27 min: keeping to the
        // 6th (35 min) is loaded (3+4+…+8 + 4×8)/10 = 6.5 min per period.
        let idle: Vec<Duration> = (30..40).map(|m| MIN * m).collect();
        let e = economy(0.6, 1000.0, NEVER);
        let openings = [Duration::ZERO, 27 * MIN];
        assert_eq!(
            e.window(&idle, &openings, 60 * MIN, 128.0, 0.1),
            Some((27 * MIN, (35 * MIN).mul_f64(1.1)))
        );
        // Never beyond the tier's own end.
        assert_eq!(
            e.window(&idle, &openings, 36 * MIN, 128.0, 0.1),
            Some((27 * MIN, 36 * MIN))
        );
    }
}
