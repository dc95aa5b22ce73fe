//! Where a policy wins and loses: a report's functions grouped by class
//! (how often they run, their trigger, the tier that served them, how
//! regular their idle times are), with how many of each class meet a
//! cold-start threshold and the idle memory the class holds. This is
//! what explains a per-function percentile: the 75th is decided by
//! whichever classes hold the functions around it.

use std::collections::BTreeMap;

use crate::sim::{FunctionOutcome, Report, percentile};
use crate::trace::Trace;

/// How to group functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    /// Invocations per day (≤ 1/h, ≤ 1/min, more) × trigger.
    RateAndTrigger,
    /// Invocations per day × the tier that set most of their idle windows.
    RateAndTier,
    /// Invocations per day × coefficient of variation of their idle times.
    RateAndIdleCv,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClassRow {
    /// Index into [`RATE_CLASSES`].
    pub rate: usize,
    /// The trigger, tier or idle-time CV band.
    pub detail: String,
    pub class: String,
    /// Functions invoked at least once.
    pub functions: usize,
    /// Of those, how many had a cold-start share at or below the threshold.
    pub within: usize,
    pub p75_cold_pct: f64,
    pub idle_gb_secs: f64,
}

/// The rate classes, rarest first: at most hourly, at most once a
/// minute, more often (the paper's 45% / 81% split of apps).
pub const RATE_CLASSES: [&str; 3] = ["≤1/h", "≤1/min", ">1/min"];

/// The rate class (index into [`RATE_CLASSES`]) of a function invoked
/// `invocations` times in `days`.
pub fn rate_class(invocations: u64, days: f64) -> usize {
    let per_day = invocations as f64 / days;
    if per_day <= 24.0 {
        0
    } else if per_day <= 1440.0 {
        1
    } else {
        2
    }
}

fn cv_class(cv: Option<f64>) -> &'static str {
    match cv {
        None => "cv n/a",
        Some(cv) if cv < 0.5 => "cv<0.5",
        Some(cv) if cv < 1.5 => "cv 0.5-1.5",
        Some(_) => "cv≥1.5",
    }
}

/// `report`'s invoked functions grouped, in class order.
pub fn breakdown(
    report: &Report,
    trace: &Trace,
    grouping: Grouping,
    threshold_pct: f64,
) -> Vec<ClassRow> {
    let mut groups: BTreeMap<(usize, String), Vec<&FunctionOutcome>> = BTreeMap::new();
    for f in report.per_function.iter().filter(|f| f.invocations > 0) {
        let rate = rate_class(f.invocations, trace.config.days);
        let detail = match grouping {
            Grouping::RateAndTrigger => trace.functions[f.function as usize].trigger.to_string(),
            Grouping::RateAndTier => f.main_tier.map_or("never idle".into(), |t| t.to_string()),
            Grouping::RateAndIdleCv => cv_class(f.idle_time_cv).to_string(),
        };
        groups.entry((rate, detail)).or_default().push(f);
    }
    groups
        .into_iter()
        .map(|((rate, detail), fs)| {
            let mut cold: Vec<f64> = fs.iter().map(|f| f.cold_pct()).collect();
            ClassRow {
                class: format!("{} {detail}", RATE_CLASSES[rate]),
                rate,
                detail,
                functions: fs.len(),
                within: cold.iter().filter(|c| **c <= threshold_pct).count(),
                p75_cold_pct: percentile(&mut cold, 0.75),
                idle_gb_secs: fs.iter().map(|f| f.idle_mb_secs).sum::<f64>() / 1024.0,
            }
        })
        .collect()
}
