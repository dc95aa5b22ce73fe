//! How many instances a function needs at once. The idle-time histogram
//! decides 0 ↔ 1 (unload / pre-warm); this model decides 1 → n, the
//! Knative way: arrival rate over a stable and a short "panic" window,
//! concurrency by Little's law (rate × mean duration), instances at a
//! target utilisation of each instance's request slots.

use std::time::Duration;

use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConcurrencyConfig {
    /// Time constant of the rate that scale-down follows (Knative: 60 s).
    pub stable_window: Duration,
    /// Time constant of the rate that reacts to bursts (Knative: 6 s).
    pub panic_window: Duration,
    /// Share of an instance's slots planned to be busy (Knative: 0.7).
    pub target_utilisation: f64,
    /// Panic when the short window wants this many times the stable one (2.0).
    pub panic_threshold: f64,
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        ConcurrencyConfig {
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            target_utilisation: 0.7,
            panic_threshold: 2.0,
        }
    }
}

/// An event rate as an exponentially decaying count: each event adds 1/τ,
/// so for steady arrivals the value is their rate per second.
#[derive(Clone, Copy, Debug)]
struct DecayingRate {
    tau_secs: f64,
    value: f64,
    at: Timestamp,
}

impl DecayingRate {
    fn new(tau: Duration) -> Self {
        DecayingRate {
            tau_secs: tau.as_secs_f64().max(1e-3),
            value: 0.0,
            at: Timestamp::ZERO,
        }
    }

    fn at(&self, now: Timestamp) -> f64 {
        self.value * (-(now - self.at).as_secs_f64() / self.tau_secs).exp()
    }

    fn record(&mut self, now: Timestamp) {
        self.value = self.at(now) + 1.0 / self.tau_secs;
        self.at = self.at.max(now);
    }

    /// How long until the rate decays from `at(now)` to `to` (0 if already).
    fn time_to_decay(&self, now: Timestamp, to: f64) -> Duration {
        let current = self.at(now);
        if to <= 0.0 || current <= to {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.tau_secs * (current / to).ln())
    }
}

#[derive(Clone, Debug)]
pub struct ConcurrencyModel {
    config: ConcurrencyConfig,
    stable: DecayingRate,
    panic: DecayingRate,
    mean_duration_secs: f64,
    durations_seen: u32,
}

/// After this many samples the mean duration becomes an EWMA, so it
/// follows a function whose work changes.
const DURATION_HISTORY: u32 = 20;

impl ConcurrencyModel {
    pub fn new(config: ConcurrencyConfig) -> Self {
        ConcurrencyModel {
            config,
            stable: DecayingRate::new(config.stable_window),
            panic: DecayingRate::new(config.panic_window),
            mean_duration_secs: 0.0,
            durations_seen: 0,
        }
    }

    pub fn record_arrival(&mut self, now: Timestamp) {
        self.stable.record(now);
        self.panic.record(now);
    }

    pub fn record_duration(&mut self, duration: Duration) {
        self.durations_seen = self.durations_seen.saturating_add(1);
        let weight = 1.0 / f64::from(self.durations_seen.min(DURATION_HISTORY));
        self.mean_duration_secs += weight * (duration.as_secs_f64() - self.mean_duration_secs);
    }

    pub fn mean_duration(&self) -> Duration {
        Duration::from_secs_f64(self.mean_duration_secs)
    }

    /// Requests expected in flight at once, over the stable and panic windows.
    pub fn predicted_concurrency(&self, now: Timestamp) -> (f64, f64) {
        (
            self.stable.at(now) * self.mean_duration_secs,
            self.panic.at(now) * self.mean_duration_secs,
        )
    }

    /// Instances wanted now for `slots` requests per instance: enough for
    /// the larger of the two predictions at the target utilisation, plus a
    /// spare while the short window runs ahead of the stable one.
    pub fn desired_instances(&self, now: Timestamp, slots: u32) -> u32 {
        let (stable, panic) = self.instance_demand(now, slots);
        let mut n = stable.max(panic).ceil();
        if self.panicking(stable, panic) {
            n += 1.0;
        }
        n.min(f64::from(u32::MAX)) as u32
    }

    /// When [`Self::desired_instances`] may next drop if no request comes:
    /// the earliest moment a window's demand decays below the current count
    /// (or the panic spare lapses). `None` when at most one is wanted.
    pub fn next_scale_down(&self, now: Timestamp, slots: u32) -> Option<Timestamp> {
        let wanted = self.desired_instances(now, slots);
        if wanted <= 1 {
            return None;
        }
        let (stable, panic) = self.instance_demand(now, slots);
        let per_instance_rate = self.rate_per_instance(slots)?;
        let below = f64::from(wanted - 1) * per_instance_rate;
        // The count drops once *both* windows are below it.
        let mut after = self
            .stable
            .time_to_decay(now, below)
            .max(self.panic.time_to_decay(now, below));
        if self.panicking(stable, panic) {
            let calm = self.config.panic_threshold * stable.max(1.0) * per_instance_rate;
            after = after.min(self.panic.time_to_decay(now, calm));
        }
        Some(now + after.max(Duration::from_secs(1)))
    }

    /// The arrival rate one instance absorbs at the target utilisation.
    fn rate_per_instance(&self, slots: u32) -> Option<f64> {
        let capacity = f64::from(slots.max(1)) * self.config.target_utilisation;
        (self.mean_duration_secs > 0.0).then(|| capacity / self.mean_duration_secs)
    }

    fn instance_demand(&self, now: Timestamp, slots: u32) -> (f64, f64) {
        let capacity = f64::from(slots.max(1)) * self.config.target_utilisation;
        let (stable, panic) = self.predicted_concurrency(now);
        (stable / capacity, panic / capacity)
    }

    fn panicking(&self, stable: f64, panic: f64) -> bool {
        panic >= 1.0 && panic >= self.config.panic_threshold * stable.max(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: f64) -> Timestamp {
        Timestamp::from_secs_f64(secs)
    }

    #[test]
    fn littles_law_at_target_utilisation() {
        let mut m = ConcurrencyModel::new(ConcurrencyConfig::default());
        // 10 requests/s for 10 minutes, each 2 s long: ~20 in flight.
        for i in 0..6000 {
            m.record_arrival(at(f64::from(i) * 0.1));
        }
        m.record_duration(Duration::from_secs(2));
        let now = at(600.0);
        let (stable, _) = m.predicted_concurrency(now);
        assert!((stable - 20.0).abs() < 1.0, "stable concurrency {stable}");
        // 20 / (4 slots × 0.7) = 7.1 → 8 instances; 20 / (100 × 0.7) → 1.
        assert_eq!(m.desired_instances(now, 4), 8);
        assert_eq!(m.desired_instances(now, 100), 1);
        assert_eq!(m.next_scale_down(now, 100), None);
    }

    #[test]
    fn burst_adds_a_spare_and_demand_decays() {
        let mut m = ConcurrencyModel::new(ConcurrencyConfig::default());
        m.record_duration(Duration::from_secs(1));
        // 30 arrivals within 3 s after a long quiet time: the panic window runs ahead.
        for i in 0..30 {
            m.record_arrival(at(1000.0 + f64::from(i) * 0.1));
        }
        let now = at(1003.0);
        let (stable, panic) = m.predicted_concurrency(now);
        assert!(panic > 2.0 * stable);
        let wanted = m.desired_instances(now, 1);
        let panic_only = (panic / 0.7).ceil() as u32;
        assert_eq!(wanted, panic_only + 1);
        let review = m.next_scale_down(now, 1).expect("a scale-down is due");
        assert!(review > now);
        assert!(m.desired_instances(review, 1) < wanted);
        // Ten minutes of silence later no scale-out is wanted.
        assert_eq!(m.desired_instances(at(1600.0), 1), 1);
        assert_eq!(m.next_scale_down(at(1600.0), 1), None);
    }
}
