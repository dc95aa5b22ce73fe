//! Periodic functions (timers: cron jobs, pollers) arrive on a fixed
//! period to within a second or two. The histogram sees them only to the
//! minute, so it keeps a 1-minute timer loaded all the time and a 5-minute
//! one for the last 1.4 minutes of each period; the time series keeps a
//! daily one for 7 hours a day. Knowing the period to the second, the
//! policy can load such a function just before its next arrival.
//!
//! The detector watches the starts of busy periods (requests arriving to
//! a function with none in flight): idle times vary with each request's
//! duration, the intervals between arrivals do not.

use std::collections::VecDeque;
use std::time::Duration;

use crate::time::Timestamp;

/// A detected period and how far the recent intervals strayed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub period: Duration,
    pub deviation: Duration,
}

#[derive(Clone, Debug)]
pub struct PeriodDetector {
    window: usize,
    intervals: VecDeque<Duration>,
    last_start: Option<Timestamp>,
}

impl PeriodDetector {
    /// Judges periodicity on the last `window` intervals (0: never periodic).
    pub fn new(window: usize) -> Self {
        PeriodDetector {
            window,
            intervals: VecDeque::with_capacity(window),
            last_start: None,
        }
    }

    /// A request arrived to a function with none in flight.
    pub fn record_start(&mut self, now: Timestamp) {
        if let Some(last) = self.last_start
            && self.window > 0
        {
            if self.intervals.len() == self.window {
                self.intervals.pop_front();
            }
            self.intervals.push_back(now - last);
        }
        self.last_start = Some(now);
    }

    pub fn last_start(&self) -> Option<Timestamp> {
        self.last_start
    }

    /// The period, when each of the last `window` intervals lies within
    /// `max(tolerance × median, jitter)` of their median and the median is
    /// at least `min_period`.
    pub fn period(&self, tolerance: f64, jitter: Duration, min_period: Duration) -> Option<Period> {
        if self.window == 0 || self.intervals.len() < self.window {
            return None;
        }
        let mut sorted: Vec<Duration> = self.intervals.iter().copied().collect();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        if median < min_period {
            return None;
        }
        let allowed = median.mul_f64(tolerance).max(jitter);
        let deviation = sorted
            .iter()
            .map(|d| d.abs_diff(median))
            .max()
            .unwrap_or_default();
        (deviation <= allowed).then_some(Period {
            period: median,
            deviation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn at(secs: f64) -> Timestamp {
        Timestamp::from_secs_f64(secs)
    }

    fn detector(starts: &[f64]) -> PeriodDetector {
        let mut d = PeriodDetector::new(4);
        for s in starts {
            d.record_start(at(*s));
        }
        d
    }

    #[test]
    fn a_jittery_timer_is_periodic() {
        let d = detector(&[0.3, 60.9, 120.1, 180.7, 240.2]);
        let p = d.period(0.005, 2 * SEC, 20 * SEC).expect("periodic");
        assert!(p.period.abs_diff(60 * SEC) < SEC, "{p:?}");
        assert!(p.deviation < 2 * SEC, "{p:?}");
        assert_eq!(d.last_start(), Some(at(240.2)));
    }

    #[test]
    fn too_few_irregular_or_too_short_intervals_are_not() {
        // Three intervals where four are needed.
        assert_eq!(
            detector(&[0.0, 60.0, 120.0, 180.0]).period(0.005, 2 * SEC, 20 * SEC),
            None
        );
        // Poisson-like gaps.
        assert_eq!(
            detector(&[0.0, 40.0, 130.0, 150.0, 260.0]).period(0.005, 2 * SEC, 20 * SEC),
            None
        );
        // A busy function's second-long gaps agree to the jitter, but are no timer.
        assert_eq!(
            detector(&[0.0, 1.0, 2.5, 3.1, 4.0]).period(0.005, 2 * SEC, 20 * SEC),
            None
        );
        // One late firing breaks the pattern until it leaves the window.
        let mut d = detector(&[0.0, 3600.0, 7200.0, 10800.0, 14400.0]);
        assert!(d.period(0.005, 2 * SEC, 20 * SEC).is_some());
        d.record_start(at(14400.0 + 7200.0));
        assert_eq!(d.period(0.005, 2 * SEC, 20 * SEC), None);
        // A window of 0 never calls anything periodic.
        let mut off = PeriodDetector::new(0);
        for s in [0.0, 60.0, 120.0, 180.0, 240.0, 300.0] {
            off.record_start(at(s));
        }
        assert_eq!(off.period(0.005, 2 * SEC, 20 * SEC), None);
    }

    #[test]
    fn relative_tolerance_admits_long_periods() {
        // A daily job drifting by a minute: 60 s ≤ 0.005 × 24 h = 432 s.
        let day = 86_400.0;
        let d = detector(&[0.0, day + 60.0, 2.0 * day, 3.0 * day + 30.0, 4.0 * day]);
        assert!(d.period(0.005, 2 * SEC, 20 * SEC).is_some());
    }
}
