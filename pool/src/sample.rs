//! A function's most recent idle times, raw and unbinned (out-of-range
//! ones included): what the memory economy ([`crate::economy`]) reads the
//! chance of a warm start and the memory it costs from, where the
//! histogram has only in-range minutes and the time series only a mean.

use std::collections::VecDeque;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct IdleSample {
    capacity: usize,
    recent: VecDeque<Duration>,
}

impl IdleSample {
    pub fn new(capacity: usize) -> Self {
        IdleSample {
            capacity: capacity.max(1),
            recent: VecDeque::with_capacity(capacity.max(1)),
        }
    }

    pub fn record(&mut self, idle: Duration) {
        if self.recent.len() == self.capacity {
            self.recent.pop_front();
        }
        self.recent.push_back(idle);
    }

    pub fn len(&self) -> usize {
        self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }

    /// The idle times in increasing order.
    pub fn sorted(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.recent.iter().copied().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recent_in_order_of_size() {
        let mut s = IdleSample::new(3);
        assert!(s.is_empty());
        for secs in [50, 10, 40, 20] {
            s.record(Duration::from_secs(secs));
        }
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.sorted(),
            [10, 20, 40].map(Duration::from_secs).to_vec(),
            "the oldest (50 s) is gone"
        );
    }
}
