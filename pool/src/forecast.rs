//! The time-series tier's predictor for functions whose idle times mostly
//! exceed the histogram's range. The paper fits ARIMA; we fit its simplest
//! member, AR(1) around the mean (ARIMA(1,0,0)), on the *logarithm* of the
//! last few idle times: idle times are heavy-tailed, and a periodic
//! function's series is flat in any space. Least squares, closed form, no
//! iteration that can fail to converge.

use std::collections::VecDeque;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct IdleSeries {
    window: usize,
    log_secs: VecDeque<f64>,
}

/// Below this the logarithm is meaningless; such idle times are "immediately".
const FLOOR_SECS: f64 = 1e-3;
/// |φ| is kept below 1 so a short, trending window cannot extrapolate away.
const MAX_PHI: f64 = 0.95;

impl IdleSeries {
    pub fn new(window: usize) -> Self {
        IdleSeries {
            window: window.max(1),
            log_secs: VecDeque::with_capacity(window.max(1)),
        }
    }

    pub fn record(&mut self, idle: Duration) {
        if self.log_secs.len() == self.window {
            self.log_secs.pop_front();
        }
        self.log_secs
            .push_back(idle.as_secs_f64().max(FLOOR_SECS).ln());
    }

    pub fn len(&self) -> usize {
        self.log_secs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.log_secs.is_empty()
    }

    /// The next idle time: `exp(μ + φ·(x_last − μ))`; `None` before any sample.
    pub fn predict(&self) -> Option<Duration> {
        let last = *self.log_secs.back()?;
        let n = self.log_secs.len() as f64;
        let mean = self.log_secs.iter().sum::<f64>() / n;
        let (mut lagged, mut variance) = (0.0, 0.0);
        for (i, x) in self.log_secs.iter().enumerate() {
            variance += (x - mean).powi(2);
            if let Some(next) = self.log_secs.get(i + 1) {
                lagged += (x - mean) * (next - mean);
            }
        }
        let phi = if variance > 1e-12 {
            (lagged / variance).clamp(-MAX_PHI, MAX_PHI)
        } else {
            0.0
        };
        let log_next = mean + phi * (last - mean);
        Some(Duration::from_secs_f64(log_next.exp().min(1e12)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn close(a: Duration, b: Duration, rel: f64) -> bool {
        (a.as_secs_f64() - b.as_secs_f64()).abs() <= rel * b.as_secs_f64()
    }

    #[test]
    fn empty_predicts_nothing_one_sample_predicts_itself() {
        let mut s = IdleSeries::new(8);
        assert_eq!(s.predict(), None);
        s.record(6 * HOUR);
        assert!(close(s.predict().unwrap(), 6 * HOUR, 1e-9));
    }

    #[test]
    fn periodic_series_predicts_its_period() {
        let mut s = IdleSeries::new(16);
        for _ in 0..20 {
            s.record(24 * HOUR - Duration::from_secs(2));
        }
        assert_eq!(s.len(), 16);
        assert!(close(s.predict().unwrap(), 24 * HOUR, 1e-3));
    }

    #[test]
    fn alternating_series_predicts_the_other_value() {
        // 5 h, 20 h, 5 h, ...: strong negative lag-1 correlation.
        let mut s = IdleSeries::new(32);
        for i in 0..31 {
            s.record(if i % 2 == 0 { 5 * HOUR } else { 20 * HOUR });
        }
        // Last was 5 h, so the next should be well above the geometric mean (10 h).
        let p = s.predict().unwrap();
        assert!(p > 15 * HOUR, "predicted {p:?}");
    }
}
