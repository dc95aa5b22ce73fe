//! Time as the policy sees it: a point on one monotonic axis, always passed
//! in by the caller, so the policy does no I/O and replays deterministically
//! (the simulator's clock is the trace; sproutd's is [`MonotonicClock`]).

use std::cell::Cell;
use std::fmt;
use std::ops::{Add, Sub};
use std::time::{Duration, Instant};

/// A point in time: the span since the clock's origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(Duration);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(Duration::ZERO);

    pub const fn from_duration(since_origin: Duration) -> Self {
        Timestamp(since_origin)
    }

    pub fn from_secs_f64(secs: f64) -> Self {
        Timestamp(Duration::from_secs_f64(secs.max(0.0)))
    }

    pub const fn since_origin(self) -> Duration {
        self.0
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }

    /// The span from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0 + rhs)
    }
}

impl Sub<Timestamp> for Timestamp {
    type Output = Duration;
    /// Saturating: the policy never needs a negative span.
    fn sub(self, rhs: Timestamp) -> Duration {
        self.saturating_since(rhs)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t+{:.3}s", self.0.as_secs_f64())
    }
}

/// Where the caller's `now` comes from.
pub trait Clock {
    fn now(&self) -> Timestamp;
}

/// The real clock: monotonic, origin at construction.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.origin.elapsed())
    }
}

/// A clock that moves only when told to: for tests of time-driven decisions.
#[derive(Debug, Default)]
pub struct FakeClock {
    now: Cell<Timestamp>,
}

impl FakeClock {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn advance(&self, by: Duration) -> Timestamp {
        self.now.set(self.now.get() + by);
        self.now.get()
    }

    /// Moves to `to`; a clock never goes backwards, so an earlier `to` is ignored.
    pub fn set(&self, to: Timestamp) {
        if to > self.now.get() {
            self.now.set(to);
        }
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        self.now.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_forward() {
        let clock = FakeClock::new();
        assert_eq!(clock.now(), Timestamp::ZERO);
        let t = clock.advance(Duration::from_secs(90));
        assert_eq!(t.since_origin(), Duration::from_secs(90));
        clock.set(Timestamp::from_duration(Duration::from_secs(10)));
        assert_eq!(clock.now(), t);
        assert_eq!(Timestamp::ZERO - t, Duration::ZERO);
        assert_eq!(t - Timestamp::ZERO, Duration::from_secs(90));
    }
}
