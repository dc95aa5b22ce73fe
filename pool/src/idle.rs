//! The hybrid histogram policy's decision (Shahrad et al., ATC'20 §4.2):
//! from a function's idle times, when to load it again after it goes idle
//! (pre-warm) and until when to keep it loaded (keep-alive). Three tiers:
//! the histogram when it is representative, the time-series predictor when
//! most idle times lie beyond the histogram's range, and the standard
//! keep-alive (the whole range) while neither knows better.
//!
//! Two additions of ours, both off in [`HybridConfig::published`]: a
//! periodic tier for functions that arrive on a period to the second
//! ([`crate::periodic`]), and the memory economy ([`crate::economy`]),
//! which shortens a tier's keep-alive to what the memory buys.

use std::fmt;
use std::time::Duration;

use crate::economy::EconomyConfig;
use crate::error::PoolError;
use crate::forecast::IdleSeries;
use crate::histogram::IdleHistogram;
use crate::periodic::PeriodDetector;
use crate::sample::IdleSample;
use crate::time::Timestamp;

/// The published parameters; defaults are the paper's (and its
/// reimplementations') values, see `notes/warm-pool-policy.md` §1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HybridConfig {
    /// Idle times at or beyond this are out of range (4 h).
    pub range: Duration,
    /// Histogram bin width (1 min).
    pub bin_width: Duration,
    /// Percentile whose bin start is the head (0.05).
    pub head_percentile: f64,
    /// Percentile whose bin end is the tail (0.99).
    pub tail_percentile: f64,
    /// Pre-warm at head × (1 − margin), keep alive to tail × (1 + margin) (0.10).
    pub histogram_margin: f64,
    /// Bin-count CV below this means "spread out, not representative" (2.0).
    pub cv_threshold: f64,
    /// Out-of-range share at or above this switches to the time series (0.5).
    pub out_of_range_threshold: f64,
    /// In-range idle times needed before the histogram is trusted; not
    /// published, ours (the reimplementations effectively use 1).
    pub min_samples: u64,
    /// Pre-warm at p × (1 − margin), keep alive to p × (1 + margin) (0.15).
    pub series_margin: f64,
    /// Idle times the time-series predictor fits on.
    pub series_window: usize,
    /// Arrival intervals that must agree before a function counts as
    /// periodic (0: no periodic tier). Ours.
    pub periodic_intervals: usize,
    /// How far an interval may stray from the period, relative to it...
    pub periodic_tolerance: f64,
    /// ...or absolutely; also the least margin kept on each side of the
    /// predicted arrival. A period must be at least 10 × this.
    pub periodic_jitter: Duration,
    /// Recent raw idle times kept for the economy.
    pub sample_window: usize,
    /// The memory economy; `None` keeps the tiers' own keep-alives. Ours.
    pub economy: Option<EconomyConfig>,
}

/// The published policy plus the periodic tier: timers are loaded only
/// around their next firing. The economy is opt-in: it trades overall
/// warm starts for memory (see [`crate::economy`]).
impl Default for HybridConfig {
    fn default() -> Self {
        HybridConfig {
            periodic_intervals: 4,
            ..Self::published()
        }
    }
}

impl HybridConfig {
    /// The paper's policy and parameters (and its reimplementations'),
    /// see `notes/warm-pool-policy.md` §1: no periodic tier, no economy.
    pub fn published() -> Self {
        HybridConfig {
            range: Duration::from_secs(4 * 3600),
            bin_width: Duration::from_secs(60),
            head_percentile: 0.05,
            tail_percentile: 0.99,
            histogram_margin: 0.10,
            cv_threshold: 2.0,
            out_of_range_threshold: 0.5,
            min_samples: 1,
            series_margin: 0.15,
            series_window: 32,
            periodic_intervals: 0,
            periodic_tolerance: 0.005,
            periodic_jitter: Duration::from_secs(2),
            sample_window: 64,
            economy: None,
        }
    }

    pub fn validate(&self) -> Result<(), PoolError> {
        let bad = |setting, reason| Err(PoolError::InvalidConfig { setting, reason });
        if self.bin_width.is_zero() {
            return bad("bin_width", "must be positive");
        }
        if self.range < self.bin_width {
            return bad("range", "must hold at least one bin");
        }
        if self.range.as_nanos() / self.bin_width.as_nanos() > 1 << 20 {
            return bad("range", "more than 2^20 bins");
        }
        let unit = |p: f64| (0.0..=1.0).contains(&p);
        if !unit(self.head_percentile) || !unit(self.tail_percentile) {
            return bad("head_percentile/tail_percentile", "must lie in [0, 1]");
        }
        if self.head_percentile > self.tail_percentile {
            return bad("head_percentile", "must not exceed tail_percentile");
        }
        if !(0.0..1.0).contains(&self.histogram_margin) || !(0.0..1.0).contains(&self.series_margin)
        {
            return bad("histogram_margin/series_margin", "must lie in [0, 1)");
        }
        if !self.cv_threshold.is_finite() || self.cv_threshold < 0.0 {
            return bad("cv_threshold", "must be a finite non-negative number");
        }
        if !unit(self.out_of_range_threshold) {
            return bad("out_of_range_threshold", "must lie in [0, 1]");
        }
        if self.series_window == 0 {
            return bad("series_window", "must be positive");
        }
        if !(0.0..1.0).contains(&self.periodic_tolerance) {
            return bad("periodic_tolerance", "must lie in [0, 1)");
        }
        if self.periodic_intervals > 0 && self.periodic_jitter.is_zero() {
            return bad("periodic_jitter", "must be positive");
        }
        if self.sample_window == 0 {
            return bad("sample_window", "must be positive");
        }
        if let Some(e) = &self.economy {
            e.validate()?;
        }
        Ok(())
    }
}

/// Which rule produced a function's windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Too little or too spread-out history: keep alive for the whole range.
    Standard,
    /// Pre-warm and keep-alive from the idle-time histogram.
    Histogram,
    /// Most idle times beyond the range: from the predicted next idle time.
    TimeSeries,
    /// Arrivals on a period to the second: loaded just around the next one.
    Periodic,
    /// A fixed keep-alive (the baseline policy).
    Fixed,
    /// Nothing kept: every instance goes as soon as it is idle.
    NoPool,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Standard => "standard",
            Tier::Histogram => "histogram",
            Tier::TimeSeries => "time-series",
            Tier::Periodic => "periodic",
            Tier::Fixed => "fixed",
            Tier::NoPool => "no-pool",
        })
    }
}

/// What to do once a function goes idle, relative to that moment: unload
/// it, load one instance again at `pre_warm` (zero: never unload), unload
/// it for good at `keep_alive_until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    pub tier: Tier,
    pub pre_warm: Duration,
    pub keep_alive_until: Duration,
}

/// What the windows of one idle period depend on besides the idle times.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct IdleContext {
    /// The function's instance memory, when the caller said.
    pub memory_mb: Option<f64>,
    /// Time from the start of the busy period that just ended to its end
    /// (the periodic tier predicts the next start from the last one).
    pub busy_for: Option<Duration>,
}

/// One function's idle-time history, as the hybrid policy keeps it.
#[derive(Clone, Debug)]
pub struct IdleModel {
    histogram: IdleHistogram,
    series: IdleSeries,
    sample: IdleSample,
    starts: PeriodDetector,
}

impl IdleModel {
    pub fn new(config: &HybridConfig) -> Self {
        IdleModel {
            histogram: IdleHistogram::new(config.range, config.bin_width),
            series: IdleSeries::new(config.series_window),
            sample: IdleSample::new(config.sample_window),
            starts: PeriodDetector::new(config.periodic_intervals),
        }
    }

    pub fn record(&mut self, idle: Duration) {
        self.histogram.record(idle);
        self.series.record(idle);
        self.sample.record(idle);
    }

    /// A request arrived with none in flight: a busy period starts.
    pub fn record_start(&mut self, now: Timestamp) {
        self.starts.record_start(now);
    }

    pub fn histogram(&self) -> &IdleHistogram {
        &self.histogram
    }

    /// The windows from the idle times alone (no periodic tier, the
    /// economy's assumed memory).
    pub fn windows(&self, config: &HybridConfig) -> Windows {
        self.windows_for(config, &IdleContext::default())
    }

    pub fn windows_for(&self, config: &HybridConfig, context: &IdleContext) -> Windows {
        if let Some(w) = self.periodic_windows(config, context) {
            return w;
        }
        let published = self.published_windows(config);
        let Some(economy) = &config.economy else {
            return published;
        };
        let memory_mb = context.memory_mb.unwrap_or(economy.assumed_memory_mb);
        let sorted = self.sample.sorted();
        let longest = sorted.last().copied().unwrap_or_default();
        // Where the tier would open, and always from the start of the idle
        // period (a function called at random is most likely called again
        // soon); never longer than the tier keeps, except that a
        // prediction too irregular to have caught the recent idle times
        // may stretch to the longest of them.
        let (openings, tier_end) = match published.tier {
            Tier::Histogram => (
                [Duration::ZERO, published.pre_warm],
                published.keep_alive_until,
            ),
            Tier::TimeSeries => (
                [Duration::ZERO, published.pre_warm],
                published
                    .keep_alive_until
                    .max(longest.mul_f64(1.0 + config.histogram_margin)),
            ),
            _ => ([Duration::ZERO; 2], published.keep_alive_until),
        };
        match economy.window(
            &sorted,
            &openings,
            tier_end,
            memory_mb,
            config.histogram_margin,
        ) {
            Some((pre_warm, keep_alive_until)) => Windows {
                tier: published.tier,
                pre_warm,
                keep_alive_until,
            },
            None => published,
        }
    }

    /// Just around the next arrival, when the last ones came on a period.
    fn periodic_windows(&self, config: &HybridConfig, context: &IdleContext) -> Option<Windows> {
        let busy_for = context.busy_for?;
        let p = self.starts.period(
            config.periodic_tolerance,
            config.periodic_jitter,
            config.periodic_jitter * 10,
        )?;
        let next = p.period.saturating_sub(busy_for);
        let half = config.periodic_jitter.max(p.deviation * 2);
        Some(Windows {
            tier: Tier::Periodic,
            pre_warm: next.saturating_sub(half),
            keep_alive_until: next + half,
        })
    }

    /// The paper's three tiers.
    fn published_windows(&self, config: &HybridConfig) -> Windows {
        let h = &self.histogram;
        let standard = Windows {
            tier: Tier::Standard,
            pre_warm: Duration::ZERO,
            keep_alive_until: h.range(),
        };
        if h.out_of_range() > 0 && h.out_of_range_share() >= config.out_of_range_threshold {
            let Some(p) = self.series.predict() else {
                return standard;
            };
            return Windows {
                tier: Tier::TimeSeries,
                pre_warm: p.mul_f64(1.0 - config.series_margin),
                keep_alive_until: p.mul_f64(1.0 + config.series_margin),
            };
        }
        if h.in_range() < config.min_samples.max(1) || h.bin_count_cv() < config.cv_threshold {
            return standard;
        }
        let (Some(head), Some(tail)) = (
            h.percentile_floor(config.head_percentile),
            h.percentile_ceil(config.tail_percentile),
        ) else {
            return standard;
        };
        Windows {
            tier: Tier::Histogram,
            pre_warm: head.mul_f64(1.0 - config.histogram_margin),
            keep_alive_until: tail.mul_f64(1.0 + config.histogram_margin),
        }
    }
}
