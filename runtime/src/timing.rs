//! Stage timings of an operation, logged at debug level (`--debug`) and
//! returned to library callers that want them.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Stages {
    start: Instant,
    last: Instant,
    stages: Vec<(&'static str, Duration)>,
}

impl Default for Stages {
    fn default() -> Self {
        Self::new()
    }
}

impl Stages {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last: now,
            stages: Vec::new(),
        }
    }

    /// Ends the current stage under `name`.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.stages.push((name, now - self.last));
        self.last = now;
    }

    /// Appends stages measured elsewhere (another thread); the current
    /// stage starts now.
    pub fn append(&mut self, stages: &[(&'static str, Duration)]) {
        self.stages.extend_from_slice(stages);
        self.last = Instant::now();
    }

    pub fn stages(&self) -> &[(&'static str, Duration)] {
        &self.stages
    }

    pub fn total(&self) -> Duration {
        self.last - self.start
    }

    /// One debug line: `create of X: cgroup 120µs, spawn 800µs, ...`.
    pub fn log(&self, op: &str, id: &str) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let parts: Vec<String> = self
                .stages
                .iter()
                .map(|(n, d)| format!("{n} {}µs", d.as_micros()))
                .collect();
            tracing::debug!(
                container = id,
                "{op}: {} (total {}µs)",
                parts.join(", "),
                self.total().as_micros()
            );
        }
    }
}
