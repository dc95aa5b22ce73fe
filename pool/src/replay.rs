//! Replays one trace through several policies in lockstep (the trace is
//! generated once, as it streams) and measures the trace's own shape
//! against the published statistics it was calibrated to.

use std::time::Duration;

use crate::error::PoolError;
use crate::idle::HybridConfig;
use crate::policy::{PolicyConfig, Strategy};
use crate::sim::{Report, Simulator, ratio};
use crate::time::Timestamp;
use crate::trace::Trace;

/// What the generated trace looks like, next to the published targets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TraceStats {
    pub apps_invoked: usize,
    pub functions_invoked: usize,
    pub invocations: u64,
    /// Share of invoked apps at ≤ 1 invocation per hour (published: 45%).
    pub apps_at_most_hourly: f64,
    /// Share of invoked apps at ≤ 1 invocation per minute (published: 81%).
    pub apps_at_most_per_minute: f64,
    /// Share of apps with ≥ 3 inter-arrival times whose CV exceeds 1 (published: 40%).
    pub apps_bursty: f64,
    /// Busiest over quietest hour of the weekday profile (published: ≈ 2).
    pub peak_to_trough: f64,
}

#[derive(Clone, Copy, Debug, Default)]
struct AppArrivals {
    count: u64,
    last: Option<Timestamp>,
    gaps: u64,
    mean: f64,
    m2: f64,
}

impl AppArrivals {
    fn record(&mut self, at: Timestamp) {
        self.count += 1;
        if let Some(last) = self.last {
            // Welford's running variance of the gaps.
            let gap = (at - last).as_secs_f64();
            self.gaps += 1;
            let delta = gap - self.mean;
            self.mean += delta / self.gaps as f64;
            self.m2 += delta * (gap - self.mean);
        }
        self.last = Some(at);
    }

    fn cv(&self) -> Option<f64> {
        (self.gaps >= 3 && self.mean > 0.0).then(|| (self.m2 / self.gaps as f64).sqrt() / self.mean)
    }
}

/// Replays `trace` through every `(label, policy)`.
pub fn replay(
    trace: &Trace,
    policies: &[(String, PolicyConfig)],
    budget_mb: Option<u64>,
) -> Result<(Vec<Report>, TraceStats), PoolError> {
    let mut sims = policies
        .iter()
        .map(|(label, config)| Simulator::new(label.clone(), trace, *config, budget_mb))
        .collect::<Result<Vec<_>, _>>()?;
    let mut apps = vec![AppArrivals::default(); trace.config.apps as usize];
    let mut functions_invoked = vec![false; trace.functions.len()];
    let mut invocations = 0u64;
    let mut weekday_hours = [0u64; 24];
    for inv in trace.invocations() {
        let hour = inv.start.since_origin().as_secs() / 3600;
        if (hour / 24) % 7 < 5 {
            weekday_hours[(hour % 24) as usize] += 1;
        }
        apps[inv.app as usize].record(inv.start);
        functions_invoked[inv.function as usize] = true;
        invocations += 1;
        for sim in &mut sims {
            sim.arrive(&inv)?;
        }
    }
    let end = trace.end();
    let reports = sims
        .into_iter()
        .map(|s| s.finish(end))
        .collect::<Result<Vec<_>, _>>()?;
    let invoked: Vec<&AppArrivals> = apps.iter().filter(|a| a.count > 0).collect();
    let per_day = |a: &AppArrivals| a.count as f64 / trace.config.days;
    let share = |pred: &dyn Fn(&AppArrivals) -> bool, of: &[&AppArrivals]| {
        ratio(
            of.iter().filter(|a| pred(a)).count() as u64,
            of.len() as u64,
        )
    };
    let with_cv: Vec<&AppArrivals> = invoked
        .iter()
        .copied()
        .filter(|a| a.cv().is_some())
        .collect();
    let stats = TraceStats {
        apps_invoked: invoked.len(),
        functions_invoked: functions_invoked.iter().filter(|f| **f).count(),
        invocations,
        apps_at_most_hourly: share(&|a| per_day(a) <= 24.0, &invoked),
        apps_at_most_per_minute: share(&|a| per_day(a) <= 1440.0, &invoked),
        apps_bursty: share(&|a| a.cv().is_some_and(|cv| cv > 1.0), &with_cv),
        peak_to_trough: ratio(
            weekday_hours.iter().copied().max().unwrap_or(0),
            weekday_hours.iter().copied().min().unwrap_or(0),
        ),
    };
    Ok((reports, stats))
}

/// [`replay`] on `threads` threads, each replaying its share of the
/// policies through its own pass over the trace (the trace streams from
/// its seed, so every pass sees the same requests). Same results, in the
/// same order, as one thread.
pub fn replay_parallel(
    trace: &Trace,
    policies: &[(String, PolicyConfig)],
    budget_mb: Option<u64>,
    threads: usize,
) -> Result<(Vec<Report>, TraceStats), PoolError> {
    let threads = threads.clamp(1, policies.len().max(1));
    if threads == 1 {
        return replay(trace, policies, budget_mb);
    }
    let chunk = policies.len().div_ceil(threads);
    let results: Vec<Result<(Vec<Report>, TraceStats), PoolError>> = std::thread::scope(|s| {
        let handles: Vec<_> = policies
            .chunks(chunk)
            .map(|part| s.spawn(move || replay(trace, part, budget_mb)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut reports = Vec::with_capacity(policies.len());
    let mut stats = None;
    for result in results {
        let (part, part_stats) = result?;
        reports.extend(part);
        stats.get_or_insert(part_stats);
    }
    Ok((reports, stats.unwrap_or_default()))
}

/// The comparison the replayer prints: [`baselines`], then
/// [`hybrid_variants`].
pub fn policy_sweep(
    fixed_minutes: &[u64],
    hybrid_hours: &[f64],
    hybrids: &[(String, HybridConfig)],
) -> Vec<(String, PolicyConfig)> {
    let mut out = baselines(fixed_minutes);
    out.extend(hybrid_variants(hybrid_hours, hybrids));
    out
}

/// No pool, then a fixed keep-alive of each of `fixed_minutes`.
pub fn baselines(fixed_minutes: &[u64]) -> Vec<(String, PolicyConfig)> {
    let mut out = vec![("no pool".to_string(), PolicyConfig::no_pool())];
    for &m in fixed_minutes {
        out.push((
            format!("fixed {m} min"),
            PolicyConfig::fixed(Duration::from_secs(m * 60)),
        ));
    }
    out
}

/// Each named hybrid configuration with each histogram range, labelled
/// `<name> <range> h`.
pub fn hybrid_variants(
    hours: &[f64],
    hybrids: &[(String, HybridConfig)],
) -> Vec<(String, PolicyConfig)> {
    let mut out = Vec::new();
    for (name, hybrid) in hybrids {
        for &h in hours {
            let config = HybridConfig {
                range: Duration::from_secs_f64(h * 3600.0),
                ..*hybrid
            };
            out.push((
                format!("{name} {h} h"),
                PolicyConfig {
                    strategy: Strategy::Hybrid(config),
                    ..PolicyConfig::hybrid()
                },
            ));
        }
    }
    out
}
