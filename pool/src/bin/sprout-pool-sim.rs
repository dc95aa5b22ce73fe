//! Replays a seeded Azure-Functions-shaped trace through no pool, a sweep
//! of fixed keep-alives, the hybrid histogram policy as published and with
//! our periodic tier, and optionally a sweep of the memory economy, and
//! prints the per-function cold-start percentiles against idle
//! memory-time (the Pareto frontier of "Serverless in the Wild").

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use sprout_pool::breakdown::{ClassRow, Grouping, breakdown};
use sprout_pool::replay::{baselines, hybrid_variants, replay_parallel};
use sprout_pool::sim::Report;
use sprout_pool::trace::{Arrivals, Trace, TraceConfig};
use sprout_pool::{EconomyConfig, HybridConfig};

#[derive(Parser, Debug)]
#[command(about = "Replay a synthetic serverless trace through warm-pool policies")]
struct Args {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 2000)]
    apps: u32,
    #[arg(long, default_value_t = 7.0)]
    days: f64,
    /// Cap on an app's invocations per day.
    #[arg(long, default_value_t = 2880.0)]
    max_app_rate: f64,
    /// Share of queue/event/other functions that arrive in bursts.
    #[arg(long, default_value_t = TraceConfig::default().bursty_share)]
    bursty_share: f64,
    /// Share of HTTP/orchestration functions with a diurnal rate.
    #[arg(long, default_value_t = TraceConfig::default().diurnal_share)]
    diurnal_share: f64,
    /// Share of HTTP/orchestration functions called at a steady pace.
    #[arg(long, default_value_t = TraceConfig::default().regular_share)]
    regular_share: f64,
    /// Fixed keep-alive sweep, minutes.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10,20,30,60,120")]
    fixed: Vec<u64>,
    /// Hybrid histogram ranges, hours (the published policy and the default).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    hybrid: Vec<f64>,
    /// In-range idle times before the histogram is trusted.
    #[arg(long, default_value_t = HybridConfig::default().min_samples)]
    min_samples: u64,
    /// Percentile whose bin end is the histogram's keep-alive tail.
    #[arg(long, default_value_t = HybridConfig::default().tail_percentile)]
    tail_percentile: f64,
    /// Bin-count CV below which the histogram is not representative.
    #[arg(long, default_value_t = HybridConfig::default().cv_threshold)]
    cv_threshold: f64,
    /// Time-series tier margin around the predicted idle time.
    #[arg(long, default_value_t = HybridConfig::default().series_margin)]
    series_margin: f64,
    /// Arrival intervals that must agree for the periodic tier (0: off).
    #[arg(long, default_value_t = HybridConfig::default().periodic_intervals)]
    periodic_intervals: usize,
    /// Also run the hybrid policy with the memory economy, once per
    /// allowance × price × range.
    #[arg(long)]
    economy: bool,
    /// Economy: histogram ranges, hours.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    economy_hours: Vec<f64>,
    /// Economy: share of idle periods each function should end warm.
    #[arg(long, default_value_t = EconomyConfig::default().target_warm_share)]
    target_warm_share: f64,
    /// Economy: average idle MB a function may hold to reach its target share.
    #[arg(long, value_delimiter = ',', default_value = "64,128,192,256")]
    allowance_mb: Vec<f64>,
    /// Economy: requests per idle GB-hour a longer keep-alive must catch.
    #[arg(long, value_delimiter = ',', default_value = "25,100")]
    min_hits_per_gb_hour: Vec<f64>,
    /// Economy: idle times needed before it decides.
    #[arg(long, default_value_t = EconomyConfig::default().min_samples)]
    economy_min_samples: usize,
    /// Threads replaying policies side by side (default: the CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Node memory budget in MB (default: unlimited).
    #[arg(long)]
    budget_mb: Option<u64>,
    /// Break these policies' functions down by class (labels, comma-separated).
    #[arg(long, value_delimiter = ',')]
    breakdown: Vec<String>,
    /// Also write every function's results under every policy to this CSV.
    #[arg(long)]
    per_function_csv: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(args.days > 0.0 && args.days <= 60.0) {
        bail!("--days must lie in (0, 60], got {}", args.days);
    }
    for (flag, share) in [
        ("--bursty-share", args.bursty_share),
        ("--diurnal-share", args.diurnal_share),
        ("--regular-share", args.regular_share),
    ] {
        if !(0.0..=1.0).contains(&share) {
            bail!("{flag} must lie in [0, 1], got {share}");
        }
    }
    if args.apps == 0 {
        bail!("--apps must be positive");
    }
    for (flag, hours) in [
        ("--hybrid", &args.hybrid),
        ("--economy-hours", &args.economy_hours),
    ] {
        if hours.iter().any(|h| !(*h >= 1.0 / 60.0 && *h <= 24.0)) {
            bail!("{flag} ranges must lie between 1 minute and 24 hours, got {hours:?}");
        }
    }
    if !args.fixed.contains(&10) {
        bail!("--fixed must include 10: memory is normalised to fixed 10-minute keep-alive");
    }
    let trace = Trace::generate(TraceConfig {
        seed: args.seed,
        apps: args.apps,
        days: args.days,
        max_app_rate_per_day: args.max_app_rate,
        bursty_share: args.bursty_share,
        diurnal_share: args.diurnal_share,
        regular_share: args.regular_share,
        ..TraceConfig::default()
    });
    let hybrid = HybridConfig {
        min_samples: args.min_samples,
        tail_percentile: args.tail_percentile,
        cv_threshold: args.cv_threshold,
        series_margin: args.series_margin,
        periodic_intervals: args.periodic_intervals,
        ..HybridConfig::default()
    };
    hybrid.validate().context("hybrid policy settings")?;
    let published = HybridConfig {
        periodic_intervals: 0,
        ..hybrid
    };
    let mut policies = baselines(&args.fixed);
    policies.extend(hybrid_variants(
        &args.hybrid,
        &[
            ("published".to_string(), published),
            ("hybrid".to_string(), hybrid),
        ],
    ));
    if args.economy {
        let mut economies = Vec::new();
        for &allowance_mb in &args.allowance_mb {
            for &min_hits_per_gb_hour in &args.min_hits_per_gb_hour {
                let config = HybridConfig {
                    economy: Some(EconomyConfig {
                        target_warm_share: args.target_warm_share,
                        allowance_mb,
                        min_hits_per_gb_hour,
                        min_samples: args.economy_min_samples,
                        ..EconomyConfig::default()
                    }),
                    ..hybrid
                };
                config.validate().context("economy settings")?;
                economies.push((format!("eco {allowance_mb}/{min_hits_per_gb_hour}"), config));
            }
        }
        policies.extend(hybrid_variants(&args.economy_hours, &economies));
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let (reports, stats) = replay_parallel(&trace, &policies, args.budget_mb, threads)
        .context("replaying the trace")?;

    println!(
        "trace: seed {} · {} apps ({} invoked) · {} functions ({} invoked) · {:.1} days · {} invocations",
        args.seed,
        args.apps,
        stats.apps_invoked,
        trace.functions.len(),
        stats.functions_invoked,
        args.days,
        stats.invocations
    );
    println!(
        "shape: apps ≤1/h {:.0}% (paper 45%) · ≤1/min {:.0}% (81%) · IAT CV>1 {:.0}% (40%) · weekday peak/trough {:.1} (≈2)",
        100.0 * stats.apps_at_most_hourly,
        100.0 * stats.apps_at_most_per_minute,
        100.0 * stats.apps_bursty,
        stats.peak_to_trough
    );
    if let Some(mb) = args.budget_mb {
        println!("memory budget: {mb} MB");
    }
    let baseline = reports
        .iter()
        .find(|r| r.label == "fixed 10 min")
        .map(|r| r.idle_gb_secs)
        .unwrap_or(0.0);
    println!();
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>12} {:>11} {:>9} {:>9}  idle periods by tier",
        "policy",
        "p50 cs%",
        "p75 cs%",
        "app p75",
        "cold %",
        "idle inst-h",
        "idle GB-h",
        "vs 10min",
        "peak GB"
    );
    for r in &reports {
        print_row(r, baseline);
    }
    println!();
    println!(
        "p75 cold-start % by function rate (functions: ≤1/h {}, ≤1/min {}, >1/min {}), idle GB-h by tier",
        reports[0].functions_by_rate[0],
        reports[0].functions_by_rate[1],
        reports[0].functions_by_rate[2]
    );
    for r in &reports {
        let [rare, mid, hot] = r.p75_cold_pct_by_rate;
        let tiers: Vec<String> = r
            .idle_gb_secs_by_tier
            .iter()
            .filter(|(t, _)| !matches!(t, sprout_pool::Tier::Fixed | sprout_pool::Tier::NoPool))
            .map(|(t, gb_secs)| format!("{t} {:.0}", gb_secs / 3600.0))
            .collect();
        let [irare, imid, ihot] = r.idle_gb_secs_by_rate.map(|s| s / 3600.0);
        println!(
            "{:<22} {:>6.1} {:>6.1} {:>6.1}   idle GB-h {:>7.0} {:>7.0} {:>7.0}   {}",
            r.label,
            rare,
            mid,
            hot,
            irare,
            imid,
            ihot,
            tiers.join(", ")
        );
    }
    if !args.breakdown.is_empty() {
        let chosen: Vec<&Report> = args
            .breakdown
            .iter()
            .map(|label| {
                reports
                    .iter()
                    .find(|r| r.label == *label)
                    .with_context(|| format!("--breakdown: no policy {label:?}"))
            })
            .collect::<Result<_>>()?;
        // The goal's line: half the fixed 10-minute keep-alive's p75.
        let threshold = reports
            .iter()
            .find(|r| r.label == "fixed 10 min")
            .map_or(50.0, |r| r.p75_cold_pct / 2.0);
        print_breakdown(&trace, &chosen, threshold);
    }
    if let Some(path) = &args.per_function_csv {
        write_per_function(path, &trace, &reports)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn write_per_function(path: &Path, trace: &Trace, reports: &[Report]) -> Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    writeln!(
        out,
        "policy,function,app,trigger,arrivals,timer_period_s,diurnal_amplitude,lognormal_sigma,rate_per_day,memory_mb,slots,invocations,cold_starts,idle_mb_secs,idle_times,idle_mean_s,idle_cv,tier"
    )?;
    for r in reports {
        for (f, spec) in r.per_function.iter().zip(&trace.functions) {
            // The generator's parameters, for analyses that need the
            // process behind the requests (what an ideal policy knows).
            let (arrivals, period, amplitude, sigma) = match spec.arrivals {
                Arrivals::Timer { period, .. } => ("timer", period, 0.0, 0.0),
                Arrivals::Diurnal { amplitude, .. } => ("diurnal", 0.0, amplitude, 0.0),
                Arrivals::Bursty { sigma, .. } => ("bursty", 0.0, 0.0, sigma),
                Arrivals::Steady { sigma, .. } => ("steady", 0.0, 0.0, sigma),
                Arrivals::Poisson { .. } => ("poisson", 0.0, 0.0, 0.0),
            };
            writeln!(
                out,
                "{},{},{},{},{},{:.1},{:.4},{:.4},{:.3},{:.1},{},{},{},{:.0},{},{:.1},{},{}",
                r.label,
                f.function,
                spec.app,
                spec.trigger,
                arrivals,
                period,
                amplitude,
                sigma,
                spec.rate_per_day,
                spec.memory_mb,
                spec.slots,
                f.invocations,
                f.cold_starts,
                f.idle_mb_secs,
                f.idle_times,
                f.idle_time_mean_secs,
                f.idle_time_cv
                    .map_or(String::new(), |cv| format!("{cv:.3}")),
                f.main_tier.map_or(String::new(), |t| t.to_string()),
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Per class and policy: functions at or under `threshold` % cold of all
/// invoked, the class's p75 cold-start %, its idle GB-hours.
fn print_breakdown(trace: &Trace, reports: &[&Report], threshold: f64) {
    for (title, grouping) in [
        ("rate and trigger", Grouping::RateAndTrigger),
        ("rate and tier", Grouping::RateAndTier),
        ("rate and idle-time CV", Grouping::RateAndIdleCv),
    ] {
        println!();
        print!(
            "by {title} (functions ≤ {threshold:.0}% cold / all, p75 cs%, idle GB-h):\n{:<22}",
            "class"
        );
        let tables: Vec<Vec<ClassRow>> = reports
            .iter()
            .map(|r| breakdown(r, trace, grouping, threshold))
            .collect();
        for r in reports {
            print!(" {:>28}", r.label);
        }
        println!();
        let classes: std::collections::BTreeSet<(usize, &str, &str)> = tables
            .iter()
            .flatten()
            .map(|row| (row.rate, row.detail.as_str(), row.class.as_str()))
            .collect();
        for (_, _, class) in classes {
            print!("{class:<22}");
            for table in &tables {
                match table.iter().find(|row| row.class == class) {
                    Some(row) => print!(
                        " {:>11} {:>6.1} {:>9.0}",
                        format!("{}/{}", row.within, row.functions),
                        row.p75_cold_pct,
                        row.idle_gb_secs / 3600.0
                    ),
                    None => print!(" {:>28}", "-"),
                }
            }
            println!();
        }
    }
}

fn print_row(r: &Report, baseline_gb_secs: f64) {
    let normalised = if baseline_gb_secs > 0.0 {
        format!("{:.0}%", 100.0 * r.idle_gb_secs / baseline_gb_secs)
    } else {
        "-".to_string()
    };
    let tiers: Vec<String> = r
        .idle_periods_by_tier
        .iter()
        .filter(|(t, _)| !matches!(t, sprout_pool::Tier::Fixed | sprout_pool::Tier::NoPool))
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    let dropped = if r.dropped > 0 {
        format!(" dropped {}", r.dropped)
    } else {
        String::new()
    };
    println!(
        "{:<22} {:>8.1} {:>8.1} {:>8.1} {:>8.2} {:>12.1} {:>11.1} {:>9} {:>9.1}  {}{}",
        r.label,
        r.p50_cold_pct,
        r.p75_cold_pct,
        r.p75_app_cold_pct,
        100.0 * r.cold_ratio(),
        r.idle_instance_secs / 3600.0,
        r.idle_gb_secs / 3600.0,
        normalised,
        r.peak_memory_mb / 1024.0,
        tiers.join(", "),
        dropped
    );
}
