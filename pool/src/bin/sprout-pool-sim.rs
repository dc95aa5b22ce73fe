//! Replays a seeded Azure-Functions-shaped trace through no pool, a sweep
//! of fixed keep-alives and the hybrid histogram policy, and prints the
//! per-function cold-start percentiles against idle memory-time.

use anyhow::{Context, Result, bail};
use clap::Parser;
use sprout_pool::HybridConfig;
use sprout_pool::replay::{policy_sweep, replay};
use sprout_pool::sim::Report;
use sprout_pool::trace::{Trace, TraceConfig};

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
    /// Hybrid histogram ranges, hours.
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
    /// Node memory budget in MB (default: unlimited).
    #[arg(long)]
    budget_mb: Option<u64>,
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
    if args
        .hybrid
        .iter()
        .any(|h| !(*h >= 1.0 / 60.0 && *h <= 24.0))
    {
        bail!(
            "--hybrid ranges must lie between 1 minute and 24 hours, got {:?}",
            args.hybrid
        );
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
        ..HybridConfig::default()
    };
    hybrid.validate().context("hybrid policy settings")?;
    let policies = policy_sweep(&args.fixed, &args.hybrid, hybrid);
    let (reports, stats) =
        replay(&trace, &policies, args.budget_mb).context("replaying the trace")?;

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
        "{:<14} {:>8} {:>8} {:>8} {:>8} {:>12} {:>11} {:>9} {:>9}  idle periods by tier",
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
            "{:<14} {:>6.1} {:>6.1} {:>6.1}   idle GB-h {:>7.0} {:>7.0} {:>7.0}   {}",
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
    Ok(())
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
        "{:<14} {:>8.1} {:>8.1} {:>8.1} {:>8.2} {:>12.1} {:>11.1} {:>9} {:>9.1}  {}{}",
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
