//! The replayer on a small synthetic trace: results must obey the
//! invariants any correct replay has, and the binary must print its table.

use std::process::Command;
use std::time::Duration;

use sprout_pool::breakdown::{Grouping, breakdown};
use sprout_pool::replay::{policy_sweep, replay, replay_parallel};
use sprout_pool::sim::Report;
use sprout_pool::trace::{Arrivals, Trace, TraceConfig};
use sprout_pool::{EconomyConfig, HybridConfig, PolicyConfig, Strategy, Tier};

fn small_trace() -> Trace {
    Trace::generate(TraceConfig {
        seed: 11,
        apps: 120,
        days: 2.0,
        max_app_rate_per_day: 600.0,
        ..TraceConfig::default()
    })
}

fn find<'a>(reports: &'a [Report], label: &str) -> &'a Report {
    reports.iter().find(|r| r.label == label).expect(label)
}

#[test]
fn replay_invariants_hold_on_a_small_trace() {
    let trace = small_trace();
    let policies = policy_sweep(
        &[1, 10, 60],
        &[4.0],
        &[("hybrid".to_string(), HybridConfig::default())],
    );
    let (reports, stats) = replay(&trace, &policies, None).unwrap();
    assert_eq!(reports.len(), 5);
    assert!(stats.invocations > 1000, "{stats:?}");
    assert!(stats.functions_invoked > 50, "{stats:?}");

    for r in &reports {
        // Every request is counted once, none refused without a budget.
        assert_eq!(r.invocations, stats.invocations, "{}", r.label);
        assert_eq!(r.dropped, 0, "{}", r.label);
        assert_eq!(r.functions, stats.functions_invoked, "{}", r.label);
        // Nothing is warm before a function's first request: each first one is cold.
        assert!(r.cold_starts >= r.functions as u64, "{}", r.label);
        assert!(r.idle_instance_secs >= 0.0 && r.idle_gb_secs >= 0.0);
        assert!(r.p50_cold_pct <= r.p75_cold_pct && r.p75_cold_pct <= 100.0);
    }

    let none = find(&reports, "no pool");
    assert_eq!(none.idle_instance_secs, 0.0);
    assert_eq!(none.idle_gb_secs, 0.0);
    assert_eq!(none.p75_cold_pct, 100.0);
    for r in &reports {
        assert!(
            r.cold_starts <= none.cold_starts,
            "{} beats no pool",
            r.label
        );
    }

    // Longer fixed keep-alive: fewer cold starts, more idle memory.
    let fixed: Vec<&Report> = ["fixed 1 min", "fixed 10 min", "fixed 60 min"]
        .iter()
        .map(|l| find(&reports, l))
        .collect();
    for pair in fixed.windows(2) {
        assert!(
            pair[1].cold_starts < pair[0].cold_starts,
            "{} vs {}",
            pair[1].label,
            pair[0].label
        );
        assert!(
            pair[1].idle_gb_secs > pair[0].idle_gb_secs,
            "{} vs {}",
            pair[1].label,
            pair[0].label
        );
        assert!(pair[1].p75_cold_pct <= pair[0].p75_cold_pct);
    }
    assert!(fixed[0].cold_starts < none.cold_starts);

    // The hybrid policy used its tiers and beat no pool.
    let hybrid = find(&reports, "hybrid 4 h");
    assert!(hybrid.cold_starts < none.cold_starts);
    for tier in [Tier::Standard, Tier::Histogram] {
        assert!(
            hybrid
                .idle_periods_by_tier
                .get(&tier)
                .is_some_and(|n| *n > 0),
            "{tier}"
        );
    }

    // A replay is a function of the trace and the policy.
    let (again, _) = replay(&trace, &policies[4..], None).unwrap();
    assert_eq!(&again[0], hybrid);
}

#[test]
fn a_memory_budget_is_respected() {
    let trace = small_trace();
    let policies = vec![(
        "fixed 60 min".to_string(),
        PolicyConfig::fixed(Duration::from_secs(3600)),
    )];
    let (free, _) = replay(&trace, &policies, None).unwrap();
    let budget_mb = (free[0].peak_memory_mb / 3.0) as u64;
    assert!(
        budget_mb > 4096,
        "trace too small for the test: {budget_mb} MB"
    );
    let (tight, _) = replay(&trace, &policies, Some(budget_mb)).unwrap();
    let tight = &tight[0];
    assert!(
        tight.peak_memory_mb <= budget_mb as f64,
        "{} > {budget_mb}",
        tight.peak_memory_mb
    );
    assert!(tight.cold_starts > free[0].cold_starts);
    assert!(tight.idle_gb_secs < free[0].idle_gb_secs);
    assert_eq!(tight.invocations, free[0].invocations);
}

#[test]
fn the_binary_prints_the_comparison() {
    let out = Command::new(env!("CARGO_BIN_EXE_sprout-pool-sim"))
        .args([
            "--apps",
            "60",
            "--days",
            "1",
            "--max-app-rate",
            "300",
            "--fixed",
            "5,10,30",
            "--hybrid",
            "4",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for label in [
        "no pool",
        "fixed 5 min",
        "fixed 10 min",
        "fixed 30 min",
        "hybrid 4 h",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(label)),
            "no row {label:?} in\n{stdout}"
        );
    }
    let row = stdout
        .lines()
        .find(|l| l.starts_with("fixed 10 min"))
        .unwrap();
    assert!(
        row.contains("100%"),
        "fixed 10 min is the memory baseline: {row}"
    );

    let bad = Command::new(env!("CARGO_BIN_EXE_sprout-pool-sim"))
        .args(["--days", "0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--days"));
}

#[test]
fn per_function_results_add_up_and_break_down() {
    let trace = small_trace();
    let policies = policy_sweep(
        &[10],
        &[4.0],
        &[("hybrid".to_string(), HybridConfig::default())],
    );
    let (reports, stats) = replay(&trace, &policies, None).unwrap();
    for r in &reports {
        assert_eq!(r.per_function.len(), trace.functions.len());
        let invoked = r.per_function.iter().filter(|f| f.invocations > 0);
        assert_eq!(invoked.count(), stats.functions_invoked);
        let sum = |f: fn(&sprout_pool::sim::FunctionOutcome) -> f64| {
            r.per_function.iter().map(f).sum::<f64>()
        };
        assert_eq!(sum(|f| f.invocations as f64) as u64, r.invocations);
        assert_eq!(sum(|f| f.cold_starts as f64) as u64, r.cold_starts);
        assert!(
            (sum(|f| f.idle_mb_secs) / 1024.0 - r.idle_gb_secs).abs()
                < 1e-6 * r.idle_gb_secs.max(1.0)
        );
        for grouping in [
            Grouping::RateAndTrigger,
            Grouping::RateAndTier,
            Grouping::RateAndIdleCv,
        ] {
            let rows = breakdown(r, &trace, grouping, 50.0);
            let functions: usize = rows.iter().map(|row| row.functions).sum();
            assert_eq!(
                functions, stats.functions_invoked,
                "{} {grouping:?}",
                r.label
            );
            let within: usize = rows.iter().map(|row| row.within).sum();
            let expected = r
                .per_function
                .iter()
                .filter(|f| f.invocations > 0 && f.cold_pct() <= 50.0)
                .count();
            assert_eq!(within, expected);
            let idle: f64 = rows.iter().map(|row| row.idle_gb_secs).sum();
            // Functions never invoked hold no idle memory either.
            assert!((idle - r.idle_gb_secs).abs() < 1e-6 * r.idle_gb_secs.max(1.0));
        }
    }
    // Timers are found periodic by the default hybrid policy, and then
    // cold only while it learns their period.
    let hybrid = find(&reports, "hybrid 4 h");
    assert!(
        hybrid
            .idle_periods_by_tier
            .get(&Tier::Periodic)
            .is_some_and(|n| *n > 0)
    );
    let timers: Vec<_> = hybrid
        .per_function
        .iter()
        .zip(&trace.functions)
        .filter(|(f, spec)| f.invocations >= 20 && matches!(spec.arrivals, Arrivals::Timer { .. }))
        .collect();
    assert!(!timers.is_empty());
    for (f, _) in timers {
        assert_eq!(f.main_tier, Some(Tier::Periodic), "{f:?}");
        assert!(f.cold_starts <= 6, "{f:?}");
    }
}

#[test]
fn parallel_replay_is_the_same_replay() {
    let trace = Trace::generate(TraceConfig {
        seed: 5,
        apps: 40,
        days: 1.0,
        max_app_rate_per_day: 300.0,
        ..TraceConfig::default()
    });
    let economy = HybridConfig {
        economy: Some(EconomyConfig::default()),
        ..HybridConfig::default()
    };
    let mut policies = policy_sweep(
        &[5, 10],
        &[1.0, 4.0],
        &[
            ("hybrid".to_string(), HybridConfig::default()),
            ("economy".to_string(), economy),
        ],
    );
    policies.push((
        "published".to_string(),
        PolicyConfig {
            strategy: Strategy::Hybrid(HybridConfig::published()),
            ..PolicyConfig::hybrid()
        },
    ));
    let (one, stats_one) = replay(&trace, &policies, None).unwrap();
    for threads in [2, 3, 64] {
        let (many, stats_many) = replay_parallel(&trace, &policies, None, threads).unwrap();
        assert_eq!(many, one, "{threads} threads");
        assert_eq!(stats_many, stats_one);
    }
}
