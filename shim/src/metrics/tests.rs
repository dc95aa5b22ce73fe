use std::sync::Arc;

use super::check::{self, Family};
use super::*;

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

fn family<'a>(fs: &'a [Family], name: &str) -> &'a Family {
    fs.iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no family {name}"))
}

fn render(m: &Metrics, g: &Gauges) -> Vec<Family> {
    let text = m.render(g);
    check::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The `(le, count)` buckets of one histogram series, `+Inf` included.
fn buckets(f: &Family, labels: &[(&str, &str)]) -> Vec<(String, f64)> {
    f.samples
        .iter()
        .filter(|s| s.name.ends_with("_bucket"))
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| (s.labels["le"].clone(), s.value))
        .collect()
}

fn pool_gauges() -> Gauges {
    Gauges {
        functions: vec![
            FunctionGauges {
                function: "hello".into(),
                frozen: 3,
                idle: 1,
                busy: 2,
                leases: 5,
                target: 4,
                bytes_per_instance: 8 << 20,
            },
            FunctionGauges {
                function: "quiet".into(),
                ..Default::default()
            },
        ],
        budget: BudgetGauges {
            limit_bytes: 1 << 30,
            used_bytes: 48 << 20,
        },
        netns_pools: vec![NetnsPoolGauges {
            vpc: "blue".into(),
            ready: 6,
            leased: 2,
            target: 8,
            takes: 40,
            misses: 3,
        }],
        instances: vec![InstanceGauges {
            id: "hello-1".into(),
            function: "hello".into(),
            usage: InstanceUsage {
                cpu_ns: 1_500_000_000,
                memory_bytes: 7 << 20,
                minor_faults: 900,
                major_faults: 4,
            },
        }],
    }
}

#[test]
fn buckets_run_from_50us_to_about_10s_doubling() {
    assert_eq!(BUCKET_BOUNDS_NS[0], 50_000);
    for w in BUCKET_BOUNDS_NS.windows(2) {
        assert_eq!(w[1], 2 * w[0]);
    }
    let last = *BUCKET_BOUNDS_NS.last().unwrap();
    assert!((10_000_000_000..20_000_000_000).contains(&last), "{last}");
}

#[test]
fn start_counters_cover_every_path_of_every_known_function() {
    let m = Metrics::new();
    m.record_start("hello", StartPath::PoolHit, us(300), &[]);
    m.record_start("hello", StartPath::PoolHit, us(400), &[]);
    m.record_start("hello", StartPath::Fork, us(7000), &[]);
    let fs = render(&m, &pool_gauges());
    let f = family(&fs, "sprout_starts_total");
    assert_eq!(f.kind, "counter");
    assert!(f.help.as_deref().unwrap().contains("pool_hit"));
    let v = |func, path| f.value("sprout_starts_total", &[("function", func), ("path", path)]);
    assert_eq!(v("hello", "pool_hit"), Some(2.0));
    assert_eq!(v("hello", "fork"), Some(1.0));
    assert_eq!(v("hello", "restore"), Some(0.0));
    assert_eq!(v("hello", "cold"), Some(0.0));
    // Known from the gauges only: zeros, so its rates start at its first start.
    assert_eq!(v("quiet", "cold"), Some(0.0));
    assert_eq!(f.samples.len(), 8);

    let c = m.start_counts("hello");
    assert_eq!((c.pool_hit, c.fork, c.restore, c.cold), (2, 1, 0, 0));
    assert_eq!(m.start_counts("nobody"), StartCounts::default());
}

#[test]
fn histograms_are_cumulative_with_inf_sum_and_count() {
    let m = Metrics::new();
    // 50 µs sits on the first bound (le is inclusive); 20 s is past the last.
    for d in [
        us(40),
        us(50),
        us(60),
        Duration::from_secs(1),
        Duration::from_secs(20),
    ] {
        m.record_start("hello", StartPath::Restore, d, &[]);
    }
    let fs = render(&m, &Gauges::default());
    let f = family(&fs, "sprout_start_seconds");
    assert_eq!(f.kind, "histogram");
    let labels = [("function", "hello"), ("path", "restore")];
    let b = buckets(f, &labels);
    assert_eq!(b.len(), BUCKET_BOUNDS_NS.len() + 1);
    assert_eq!(b[0], ("0.00005".to_string(), 2.0));
    assert_eq!(b[1], ("0.0001".to_string(), 3.0));
    let at = |le: &str| b.iter().find(|(l, _)| l == le).unwrap().1;
    assert_eq!(at("0.8192"), 3.0);
    assert_eq!(at("1.6384"), 4.0);
    assert_eq!(at("13.1072"), 4.0);
    assert_eq!(at("+Inf"), 5.0);
    for w in b.windows(2) {
        assert!(w[1].1 >= w[0].1, "not cumulative: {b:?}");
    }
    assert_eq!(f.value("sprout_start_seconds_count", &labels), Some(5.0));
    let sum = f.value("sprout_start_seconds_sum", &labels).unwrap();
    assert!((sum - 21.00015).abs() < 1e-9, "{sum}");
    // Paths without starts have no series.
    assert!(f.samples.iter().all(|s| s.labels["path"] == "restore"));
}

#[test]
fn stages_claims_and_lease_waits_are_histograms_of_their_own() {
    let m = Metrics::new();
    let stages = [("clone".to_string(), us(310)), ("fds".to_string(), us(120))];
    m.record_start("hello", StartPath::Fork, us(5000), &stages);
    m.record_start("hello", StartPath::Fork, us(6000), &stages[..1]);
    m.record_claim("hello", us(450));
    m.record_lease_wait("hello", us(90));
    m.record_lease_wait("hello", us(2000));
    let fs = render(&m, &Gauges::default());

    let st = family(&fs, "sprout_start_stage_seconds");
    let count = |stage| {
        st.value(
            "sprout_start_stage_seconds_count",
            &[("function", "hello"), ("stage", stage)],
        )
    };
    assert_eq!(count("clone"), Some(2.0));
    assert_eq!(count("fds"), Some(1.0));
    let claims = family(&fs, "sprout_claim_seconds");
    assert_eq!(
        claims.value("sprout_claim_seconds_count", &[("function", "hello")]),
        Some(1.0)
    );
    assert_eq!(
        buckets(claims, &[("function", "hello")])[4],
        ("0.0008".to_string(), 1.0)
    );
    let waits = family(&fs, "sprout_lease_wait_seconds");
    assert_eq!(
        waits.value("sprout_lease_wait_seconds_count", &[("function", "hello")]),
        Some(2.0)
    );
    // Histograms without observations have no series, only their header.
    let fs = render(&Metrics::new(), &pool_gauges());
    for name in [
        "sprout_start_seconds",
        "sprout_start_stage_seconds",
        "sprout_claim_seconds",
        "sprout_lease_wait_seconds",
    ] {
        assert!(family(&fs, name).samples.is_empty(), "{name}");
    }
}

#[test]
fn cold_start_ratio_evictions_and_replaced_crashes() {
    let m = Metrics::new();
    m.record_start("hello", StartPath::PoolHit, us(300), &[]);
    for path in [StartPath::Fork, StartPath::Restore, StartPath::Cold] {
        m.record_start("hello", path, us(9000), &[]);
    }
    m.record_eviction("hello");
    m.record_eviction("hello");
    m.record_replaced_crash("hello");
    let fs = render(&m, &pool_gauges());
    let ratio = family(&fs, "sprout_cold_start_ratio");
    assert_eq!(ratio.kind, "gauge");
    assert_eq!(
        ratio.value("sprout_cold_start_ratio", &[("function", "hello")]),
        Some(0.75)
    );
    // No starts, no ratio (rather than a made-up 0).
    assert_eq!(
        ratio.value("sprout_cold_start_ratio", &[("function", "quiet")]),
        None
    );
    let one = |name: &str, function| family(&fs, name).value(name, &[("function", function)]);
    assert_eq!(one("sprout_pool_evictions_total", "hello"), Some(2.0));
    assert_eq!(one("sprout_pool_evictions_total", "quiet"), Some(0.0));
    assert_eq!(
        one("sprout_pool_replaced_crashes_total", "hello"),
        Some(1.0)
    );
}

#[test]
fn gauges_of_pools_budget_netns_and_instances() {
    let fs = render(&Metrics::new(), &pool_gauges());
    let one = |name: &str, labels: &[(&str, &str)]| family(&fs, name).value(name, labels);
    let hello = [("function", "hello")];
    let state = |s| [("function", "hello"), ("state", s)];
    assert_eq!(one("sprout_pool_instances", &state("frozen")), Some(3.0));
    assert_eq!(one("sprout_pool_instances", &state("idle")), Some(1.0));
    assert_eq!(one("sprout_pool_instances", &state("busy")), Some(2.0));
    assert_eq!(one("sprout_pool_leases", &hello), Some(5.0));
    assert_eq!(one("sprout_pool_target_instances", &hello), Some(4.0));
    assert_eq!(
        one("sprout_pool_instance_bytes", &hello),
        Some((8 << 20) as f64)
    );
    assert_eq!(
        one("sprout_pool_held_bytes", &hello),
        Some((6 * (8 << 20)) as f64)
    );
    assert_eq!(
        one("sprout_pool_budget_bytes", &[]),
        Some((1u64 << 30) as f64)
    );
    assert_eq!(
        one("sprout_pool_budget_used_bytes", &[]),
        Some((48 << 20) as f64)
    );
    let vpc = |s| [("vpc", "blue"), ("state", s)];
    assert_eq!(
        one("sprout_netns_pool_namespaces", &vpc("ready")),
        Some(6.0)
    );
    assert_eq!(
        one("sprout_netns_pool_namespaces", &vpc("leased")),
        Some(2.0)
    );
    assert_eq!(
        one("sprout_netns_pool_target", &[("vpc", "blue")]),
        Some(8.0)
    );
    assert_eq!(
        one("sprout_netns_takes_total", &[("vpc", "blue")]),
        Some(40.0)
    );
    assert_eq!(
        one("sprout_netns_misses_total", &[("vpc", "blue")]),
        Some(3.0)
    );
    assert_eq!(family(&fs, "sprout_netns_takes_total").kind, "counter");

    let inst = [("id", "hello-1"), ("function", "hello")];
    assert_eq!(one("sprout_instance_cpu_seconds_total", &inst), Some(1.5));
    assert_eq!(
        family(&fs, "sprout_instance_cpu_seconds_total").kind,
        "counter"
    );
    assert_eq!(
        one("sprout_instance_memory_bytes", &inst),
        Some((7 << 20) as f64)
    );
    let faults = |kind| {
        one(
            "sprout_instance_page_faults_total",
            &[("id", "hello-1"), ("function", "hello"), ("kind", kind)],
        )
    };
    assert_eq!(faults("minor"), Some(900.0));
    assert_eq!(faults("major"), Some(4.0));
    assert!(fs.iter().all(|f| f.name.starts_with("sprout_")));
    assert!(fs.iter().all(|f| f.help.is_some() && f.kind != "untyped"));
}

#[test]
fn label_values_are_escaped_and_read_back() {
    let m = Metrics::new();
    let odd = "fn \"quoted\" back\\slash\nnewline";
    m.record_start(odd, StartPath::Fork, us(100), &[(odd.into(), us(50))]);
    let mut g = pool_gauges();
    g.instances[0].id = odd.into();
    let text = m.render(&g);
    assert!(text.contains(r#"function="fn \"quoted\" back\\slash\nnewline""#));
    // Every line is still one line.
    assert!(
        text.lines()
            .all(|l| l.starts_with('#') || l.starts_with("sprout_"))
    );
    let fs = check::parse(&text).unwrap();
    let f = family(&fs, "sprout_starts_total");
    assert_eq!(
        f.value(
            "sprout_starts_total",
            &[("function", odd), ("path", "fork")]
        ),
        Some(1.0)
    );
    let st = family(&fs, "sprout_start_stage_seconds");
    assert_eq!(
        st.value(
            "sprout_start_stage_seconds_count",
            &[("function", odd), ("stage", odd)]
        ),
        Some(1.0)
    );
}

/// The whole exposition of a busy registry read by prometheus-parse, an
/// independent parser: every line is understood and the values agree
/// with the strict reader's.
#[test]
fn a_real_prometheus_parser_reads_the_whole_output() {
    use prometheus_parse::{LineInfo, Scrape, Value};

    let m = Metrics::new();
    for (i, path) in StartPath::ALL.iter().enumerate() {
        let stages = [("clone".to_string(), us(200 + i as u64))];
        m.record_start("hello", *path, us(1000 * (i as u64 + 1)), &stages);
    }
    m.record_claim("hello", us(420));
    m.record_lease_wait("hello", us(42));
    m.record_eviction("quiet");
    let text = m.render(&pool_gauges());

    for line in text.lines() {
        assert!(
            !matches!(LineInfo::parse(line), LineInfo::Ignored | LineInfo::Empty),
            "prometheus-parse does not understand {line:?}"
        );
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(scrape.docs.contains_key("sprout_starts_total"));
    let strict = check::parse(&text).unwrap();

    let mut counters = 0;
    let mut histograms = 0;
    for s in &scrape.samples {
        let labels: Vec<(&str, &str)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match &s.value {
            Value::Counter(v) | Value::Gauge(v) => {
                counters += 1;
                assert_eq!(
                    family(&strict, &s.metric).value(&s.metric, &labels),
                    Some(*v),
                    "{s:?}"
                );
            }
            Value::Histogram(hs) => {
                histograms += 1;
                let f = family(&strict, &s.metric);
                let count = f.value(&format!("{}_count", s.metric), &labels).unwrap();
                assert_eq!(hs.last().unwrap().less_than, f64::INFINITY);
                assert_eq!(hs.last().unwrap().count, count);
                assert!(hs.windows(2).all(|w| w[0].count <= w[1].count));
            }
            // prometheus-parse types a histogram's _sum and _count lines
            // as untyped.
            Value::Untyped(_) => {
                assert!(
                    s.metric.ends_with("_sum") || s.metric.ends_with("_count"),
                    "{s:?}"
                )
            }
            Value::Summary(_) => panic!("no summaries are written: {s:?}"),
        }
    }
    // 4 start paths × 2 functions, 2 ratios... every plain sample counted.
    let plain: usize = strict
        .iter()
        .filter(|f| f.kind != "histogram")
        .map(|f| f.samples.len())
        .sum();
    assert_eq!(counters, plain);
    // 4 start paths, 1 stage, 1 claim, 1 lease wait.
    assert_eq!(histograms, 7);
}

#[test]
fn usage_from_v1_and_v2_stats() {
    let mut v1 = Stats::default();
    v1.cpu.usage.total = 2_000_000;
    v1.memory.usage.usage = 4096 * 300;
    v1.memory.raw = [
        ("pgfault", 10),
        ("pgmajfault", 1),
        ("total_pgfault", 120),
        ("total_pgmajfault", 20),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(
        InstanceUsage::from_stats(&v1),
        InstanceUsage {
            cpu_ns: 2_000_000,
            memory_bytes: 4096 * 300,
            minor_faults: 100,
            major_faults: 20,
        }
    );
    let mut v2 = Stats::default();
    v2.memory.raw = [("pgfault", 50), ("pgmajfault", 5), ("file", 9)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let u = InstanceUsage::from_stats(&v2);
    assert_eq!((u.minor_faults, u.major_faults), (45, 5));
    // No memory controller: zeros, not an underflow.
    assert_eq!(
        InstanceUsage::from_stats(&Stats::default()),
        InstanceUsage::default()
    );
}

#[test]
fn concurrent_recorders_lose_nothing() {
    let m = Arc::new(Metrics::new());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let m = m.clone();
            std::thread::spawn(move || {
                for i in 0..500u64 {
                    let path = StartPath::ALL[(i % 4) as usize];
                    m.record_start(&format!("f{}", t % 2), path, us(i), &[("s".into(), us(i))]);
                    m.record_claim("f0", us(i));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let c = m.start_counts("f0");
    assert_eq!(c.pool_hit + c.fork + c.restore + c.cold, 1000);
    assert_eq!(c.pool_hit, 250);
    let fs = render(&m, &Gauges::default());
    let claims = family(&fs, "sprout_claim_seconds");
    assert_eq!(
        claims.value("sprout_claim_seconds_count", &[("function", "f0")]),
        Some(2000.0)
    );
}

#[test]
fn forgotten_functions_leave_the_exposition() {
    let m = Metrics::new();
    m.record_start("gone", StartPath::Fork, us(100), &[]);
    m.record_eviction("gone");
    m.forget("gone");
    let text = m.render(&Gauges::default());
    assert!(!text.contains("gone"), "{text}");
    check::parse(&text).unwrap();
}
