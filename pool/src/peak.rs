//! The largest value a step function took over a trailing window: what a
//! fixed keep-alive of K keeps is every instance used in the last K, i.e.
//! the peak number of instances needed at once during the last K.

use std::collections::VecDeque;
use std::time::Duration;

use crate::time::Timestamp;

#[derive(Clone, Debug)]
struct Step {
    value: u32,
    /// When the value was replaced; `None` while it is current.
    ended: Option<Timestamp>,
}

/// Monotonic deque: values strictly decrease from front to back, so the
/// front is the peak; a step is dropped once it ended a full window ago.
#[derive(Clone, Debug)]
pub struct PeakWindow {
    window: Duration,
    steps: VecDeque<Step>,
}

impl PeakWindow {
    pub fn new(window: Duration) -> Self {
        PeakWindow {
            window,
            steps: VecDeque::new(),
        }
    }

    pub fn set(&mut self, now: Timestamp, value: u32) {
        if let Some(last) = self.steps.back_mut() {
            if last.value == value && last.ended.is_none() {
                return;
            }
            last.ended.get_or_insert(now);
        }
        // A larger current value dominates every earlier smaller one in all
        // windows that still reach now.
        while self.steps.back().is_some_and(|s| s.value <= value) {
            self.steps.pop_back();
        }
        self.steps.push_back(Step { value, ended: None });
        self.expire(now);
    }

    pub fn peak(&self, now: Timestamp) -> u32 {
        self.steps
            .iter()
            .find(|s| !self.expired(s, now))
            .map_or(0, |s| s.value)
    }

    /// When the peak next drops if the value does not change.
    pub fn next_drop(&self, now: Timestamp) -> Option<Timestamp> {
        self.steps
            .iter()
            .find(|s| !self.expired(s, now))
            .and_then(|s| s.ended)
            .map(|ended| ended + self.window)
    }

    fn expired(&self, step: &Step, now: Timestamp) -> bool {
        step.ended.is_some_and(|e| e + self.window <= now)
    }

    fn expire(&mut self, now: Timestamp) {
        while self
            .steps
            .front()
            .is_some_and(|s| s.ended.is_some_and(|e| e + self.window <= now))
        {
            self.steps.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_duration(Duration::from_secs(secs))
    }

    #[test]
    fn peak_over_the_trailing_window() {
        let mut w = PeakWindow::new(Duration::from_secs(600));
        assert_eq!(w.peak(at(0)), 0);
        assert_eq!(w.next_drop(at(0)), None);
        w.set(at(0), 1);
        w.set(at(10), 3);
        w.set(at(20), 2);
        w.set(at(30), 0);
        assert_eq!(w.peak(at(30)), 3);
        // 3 ended at 20 → gone at 620; then 2 (ended 30) until 630.
        assert_eq!(w.next_drop(at(30)), Some(at(620)));
        assert_eq!(w.peak(at(619)), 3);
        assert_eq!(w.peak(at(620)), 2);
        assert_eq!(w.next_drop(at(620)), Some(at(630)));
        assert_eq!(w.peak(at(630)), 0);
        assert_eq!(w.next_drop(at(630)), None);
        w.set(at(700), 1);
        assert_eq!(w.peak(at(100_000)), 1);
    }
}
