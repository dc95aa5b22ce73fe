//! The published behaviour of the hybrid histogram policy, driven by a fake
//! clock: pre-warm at 0.9 × the 5th-percentile idle time, keep alive to
//! 1.1 × the 99th, the standard keep-alive while the histogram is not
//! representative, the time-series tier when most idle times are out of
//! range; and the baselines (fixed keep-alive, no pool) and concurrency.
//! Then our additions, each off in the published configuration: the
//! periodic tier and the memory economy.

use std::time::Duration;

use sprout_pool::{
    Clock, EconomyConfig, FakeClock, HybridConfig, Plan, Policy, PolicyConfig, PoolError, Strategy,
    Tier, Timestamp, Windows,
};

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const RUN: Duration = Duration::from_millis(300);

/// The paper's policy, as published (the default adds the periodic tier).
fn hybrid() -> Policy<&'static str> {
    with(HybridConfig::published())
}

fn with(config: HybridConfig) -> Policy<&'static str> {
    Policy::new(PolicyConfig {
        strategy: Strategy::Hybrid(config),
        ..PolicyConfig::hybrid()
    })
    .unwrap()
}

/// One request: arrives now, runs for `RUN`.
fn invoke(p: &mut Policy<&'static str>, clock: &FakeClock, f: &'static str) {
    p.on_arrival(&f, clock.now()).unwrap();
    clock.advance(RUN);
    p.on_finish(&f, clock.now(), RUN).unwrap();
}

/// Invokes once, then once after each idle time in `idles`.
fn feed(p: &mut Policy<&'static str>, clock: &FakeClock, f: &'static str, idles: &[Duration]) {
    invoke(p, clock, f);
    for idle in idles {
        clock.advance(*idle);
        invoke(p, clock, f);
    }
}

fn repeat(n: usize, d: Duration) -> Vec<Duration> {
    vec![d; n]
}

fn close(a: Duration, b: Duration) -> bool {
    a.abs_diff(b) <= Duration::from_millis(1)
}

fn plan_at(p: &Policy<&'static str>, f: &'static str, at: Timestamp) -> Plan {
    p.plan(&f, at).unwrap()
}

#[test]
fn histogram_pre_warms_at_0_9_head_and_keeps_alive_to_1_1_tail() {
    let clock = FakeClock::new();
    let mut p = hybrid();
    p.register("f", 1).unwrap();
    // 100 idle times: 5 in minute 10, 89 in minute 30, 5 in minute 45, 1 in minute 61.
    // 5th percentile: minute 10 (head 10 min, rounded down); 99th: minute 45
    // (tail 46 min, rounded up).
    let mut idles = repeat(5, 10 * MIN + 30 * SEC);
    idles.extend(repeat(89, 30 * MIN + 12 * SEC));
    idles.extend(repeat(5, 45 * MIN + 30 * SEC));
    idles.push(61 * MIN + 50 * SEC);
    // Shuffle-free order is fine: the histogram has no memory of order.
    feed(&mut p, &clock, "f", &idles);

    let w = p.windows(&"f").unwrap();
    assert_eq!(w.tier, Tier::Histogram);
    assert!(close(w.pre_warm, (10 * MIN).mul_f64(0.9)), "{w:?}");
    assert!(close(w.keep_alive_until, (46 * MIN).mul_f64(1.1)), "{w:?}");

    // Idle from now: unloaded at once, one instance at +9 min, none after +50.6 min.
    let idle_start = clock.now();
    let first = plan_at(&p, "f", idle_start);
    assert_eq!((first.target, first.tier), (0, Tier::Histogram));
    assert!(first.pre_warm);
    let load_at = first.review_at.expect("a pre-warm is scheduled");
    assert!(close(load_at - idle_start, 9 * MIN));

    clock.set(load_at);
    let warm = plan_at(&p, "f", clock.now());
    assert_eq!(warm.target, 1);
    let unload_at = warm.review_at.expect("an unload is scheduled");
    assert!(close(unload_at - idle_start, 50 * MIN + 36 * SEC));
    clock.advance(20 * MIN);
    assert_eq!(plan_at(&p, "f", clock.now()).target, 1);

    clock.set(unload_at);
    let gone = plan_at(&p, "f", clock.now());
    assert_eq!((gone.target, gone.review_at), (0, None));

    // The request that ends the idle period is counted and served.
    p.on_arrival(&"f", clock.now()).unwrap();
    assert_eq!(plan_at(&p, "f", clock.now()).target, 1);
}

#[test]
fn frequent_calls_round_the_head_to_zero_and_never_unload() {
    let clock = FakeClock::new();
    let mut p = hybrid();
    p.register("f", 1).unwrap();
    let mut idles = repeat(50, 20 * SEC);
    idles.extend(repeat(50, 3 * MIN + 5 * SEC));
    feed(&mut p, &clock, "f", &idles);
    let w = p.windows(&"f").unwrap();
    assert_eq!(w.tier, Tier::Histogram);
    assert_eq!(w.pre_warm, Duration::ZERO);
    assert!(close(w.keep_alive_until, (4 * MIN).mul_f64(1.1)));
    let now = clock.now();
    let plan = plan_at(&p, "f", now);
    assert_eq!(plan.target, 1);
    assert!(close(plan.review_at.unwrap() - now, (4 * MIN).mul_f64(1.1)));
}

#[test]
fn spread_out_histogram_falls_back_to_the_standard_keep_alive() {
    let clock = FakeClock::new();
    let mut p = hybrid();
    p.register("f", 1).unwrap();
    // A new function keeps its first instance for the whole range.
    invoke(&mut p, &clock, "f");
    let first = p.windows(&"f").unwrap();
    assert_eq!(
        first,
        Windows {
            tier: Tier::Standard,
            pre_warm: Duration::ZERO,
            keep_alive_until: 4 * HOUR
        }
    );
    let plan = plan_at(&p, "f", clock.now());
    assert_eq!(plan.target, 1);
    assert_eq!(plan.review_at, Some(clock.now() + 4 * HOUR));

    // Idle times in 100 different minutes: bin-count CV = sqrt(240/100 - 1) ≈ 1.18 < 2.
    let idles: Vec<Duration> = (0..100u32).map(|i| MIN * (i * 2) + 30 * SEC).collect();
    for idle in &idles {
        clock.advance(*idle);
        invoke(&mut p, &clock, "f");
    }
    let w = p.windows(&"f").unwrap();
    assert_eq!(w.tier, Tier::Standard);
    assert_eq!((w.pre_warm, w.keep_alive_until), (Duration::ZERO, 4 * HOUR));
    let idle_start = clock.now();
    assert_eq!(plan_at(&p, "f", idle_start).target, 1);
    assert_eq!(plan_at(&p, "f", idle_start + (4 * HOUR - SEC)).target, 1);
    assert_eq!(plan_at(&p, "f", idle_start + 4 * HOUR).target, 0);
}

#[test]
fn the_histogram_waits_for_min_samples() {
    let clock = FakeClock::new();
    let mut p = with(HybridConfig {
        min_samples: 10,
        ..HybridConfig::published()
    });
    p.register("f", 1).unwrap();
    feed(&mut p, &clock, "f", &repeat(9, 20 * MIN));
    assert_eq!(p.windows(&"f").unwrap().tier, Tier::Standard);
    clock.advance(20 * MIN);
    invoke(&mut p, &clock, "f");
    let w = p.windows(&"f").unwrap();
    assert_eq!(w.tier, Tier::Histogram);
    assert!(close(w.pre_warm, 18 * MIN));
    assert!(close(w.keep_alive_until, (21 * MIN).mul_f64(1.1)));
}

#[test]
fn mostly_out_of_range_idle_times_switch_to_the_time_series() {
    let clock = FakeClock::new();
    let mut p = hybrid();
    p.register("daily", 1).unwrap();
    // A daily timer: every idle time is 24 h (beyond the 4 h range).
    feed(&mut p, &clock, "daily", &repeat(6, 24 * HOUR - RUN));
    let w = p.windows(&"daily").unwrap();
    assert_eq!(w.tier, Tier::TimeSeries);
    let predicted = 24 * HOUR - RUN;
    assert!(w.pre_warm.abs_diff(predicted.mul_f64(0.85)) < SEC, "{w:?}");
    assert!(
        w.keep_alive_until.abs_diff(predicted.mul_f64(1.15)) < SEC,
        "{w:?}"
    );
    let idle_start = clock.now();
    let plan = plan_at(&p, "daily", idle_start);
    assert_eq!(plan.target, 0);
    let load_at = plan.review_at.unwrap();
    assert!((load_at - idle_start).abs_diff(predicted.mul_f64(0.85)) < SEC);
    assert_eq!(plan_at(&p, "daily", load_at).target, 1);

    // 6 of 10 out of range (share 0.6 ≥ 0.5): time series; 4 of 10: not.
    let mut mostly_out = hybrid();
    mostly_out.register("f", 1).unwrap();
    let mut idles = repeat(4, 30 * MIN);
    idles.extend(repeat(6, 6 * HOUR));
    feed(&mut mostly_out, &clock, "f", &idles);
    assert_eq!(mostly_out.windows(&"f").unwrap().tier, Tier::TimeSeries);

    let mut mostly_in = hybrid();
    mostly_in.register("f", 1).unwrap();
    let mut idles = repeat(4, 6 * HOUR);
    idles.extend(repeat(6, 30 * MIN));
    feed(&mut mostly_in, &clock, "f", &idles);
    assert_eq!(mostly_in.windows(&"f").unwrap().tier, Tier::Histogram);
}

#[test]
fn fixed_keep_alive_and_no_pool_baselines() {
    let clock = FakeClock::new();
    let mut fixed = Policy::new(PolicyConfig::fixed(10 * MIN)).unwrap();
    let mut none = Policy::new(PolicyConfig::no_pool()).unwrap();
    for p in [&mut fixed, &mut none] {
        p.register("f", 1).unwrap();
        assert_eq!(p.plan(&"f", clock.now()).unwrap().target, 0);
    }
    // Two overlapping requests need two instances.
    let t0 = clock.now();
    for p in [&mut fixed, &mut none] {
        p.on_arrival(&"f", t0).unwrap();
        p.on_arrival(&"f", t0).unwrap();
        assert_eq!(p.plan(&"f", t0).unwrap().target, 2);
    }
    let t1 = clock.advance(SEC);
    for p in [&mut fixed, &mut none] {
        p.on_finish(&"f", t1, SEC).unwrap();
        p.on_finish(&"f", t1, SEC).unwrap();
    }
    let plan = fixed.plan(&"f", t1).unwrap();
    assert_eq!(plan.target, 2);
    assert!(!plan.pre_warm);
    assert_eq!(plan.review_at, Some(t1 + 10 * MIN));
    assert_eq!(fixed.plan(&"f", t1 + (10 * MIN - SEC)).unwrap().target, 2);
    assert_eq!(fixed.plan(&"f", t1 + 10 * MIN).unwrap().target, 0);
    assert_eq!(fixed.windows(&"f").unwrap().keep_alive_until, 10 * MIN);
    let plan = none.plan(&"f", t1).unwrap();
    assert_eq!(
        (plan.target, plan.tier, plan.review_at),
        (0, Tier::NoPool, None)
    );
}

#[test]
fn concurrency_decides_one_to_many() {
    let clock = FakeClock::new();
    let mut p = hybrid();
    p.register("f", 4).unwrap();
    // 10 requests/s, each 2 s: ~20 in flight; 20 / (4 × 0.7) → 8 instances.
    let mut in_flight = std::collections::VecDeque::new();
    for _ in 0..3000 {
        let now = clock.advance(Duration::from_millis(100));
        while in_flight.front().is_some_and(|end| *end <= now) {
            in_flight.pop_front();
            p.on_finish(&"f", now, 2 * SEC).unwrap();
        }
        p.on_arrival(&"f", now).unwrap();
        in_flight.push_back(now + 2 * SEC);
    }
    assert_eq!(p.in_flight(&"f").unwrap(), 20);
    let busy = plan_at(&p, "f", clock.now());
    assert_eq!(busy.target, 8);
    // Traffic stops: once idle, the extra instances go as the rate decays.
    let mut now = clock.now();
    while let Some(end) = in_flight.pop_front() {
        now = end;
        p.on_finish(&"f", now, 2 * SEC).unwrap();
    }
    let idle = plan_at(&p, "f", now);
    assert!(idle.target >= 1 && idle.target <= 8);
    let later = plan_at(&p, "f", now + 10 * MIN);
    assert_eq!(later.target, 1);
}

#[test]
fn misuse_is_a_clear_error() {
    let clock = FakeClock::new();
    let mut p = hybrid();
    assert_eq!(p.register("f", 0), Err(PoolError::ZeroSlots("f".into())));
    p.register("f", 1).unwrap();
    assert_eq!(
        p.register("f", 1),
        Err(PoolError::FunctionExists("f".into()))
    );
    assert_eq!(
        p.on_arrival(&"g", clock.now()),
        Err(PoolError::UnknownFunction("g".into()))
    );
    assert_eq!(
        p.on_finish(&"f", clock.now(), SEC),
        Err(PoolError::NothingInFlight("f".into()))
    );
    assert!(p.plan(&"g", clock.now()).is_err());
    p.remove(&"f").unwrap();
    assert_eq!(p.remove(&"f"), Err(PoolError::UnknownFunction("f".into())));

    let bad = HybridConfig {
        range: 30 * SEC,
        ..HybridConfig::default()
    };
    let err = Policy::<&str>::new(PolicyConfig {
        strategy: Strategy::Hybrid(bad),
        ..PolicyConfig::hybrid()
    })
    .unwrap_err();
    assert!(err.to_string().contains("range"), "{err}");
}

#[test]
fn seeded_idle_times_give_the_same_windows_as_lived_ones() {
    // sproutd persists the idle times it saw and seeds a new policy with
    // them after a restart: the windows must match the original's.
    let clock = FakeClock::new();
    let mut lived = hybrid();
    lived.register("f", 1).unwrap();
    let mut idles = repeat(40, 10 * MIN + 30 * SEC);
    idles.extend(repeat(10, 20 * MIN + 30 * SEC));
    feed(&mut lived, &clock, "f", &idles);

    let mut seeded = hybrid();
    seeded.register("f", 1).unwrap();
    for idle in &idles {
        seeded.record_idle(&"f", *idle).unwrap();
    }
    assert_eq!(seeded.windows(&"f").unwrap(), lived.windows(&"f").unwrap());
    assert_eq!(seeded.windows(&"f").unwrap().tier, Tier::Histogram);
    assert!(matches!(
        seeded.record_idle(&"nope", MIN),
        Err(PoolError::UnknownFunction(_))
    ));
    // Strategies without a history ignore seeds.
    let mut fixed = Policy::new(PolicyConfig::fixed(10 * MIN)).unwrap();
    fixed.register("f", 1).unwrap();
    fixed.record_idle(&"f", MIN).unwrap();
    assert_eq!(fixed.windows(&"f").unwrap().tier, Tier::Fixed);
}

#[test]
fn periodic_functions_are_loaded_just_around_their_next_arrival() {
    let clock = FakeClock::new();
    let mut p = with(HybridConfig {
        periodic_intervals: 4,
        ..HybridConfig::published()
    });
    p.register("cron", 1).unwrap();
    // A 10-minute timer firing up to a second late.
    let fire = |k: u32, late_ms: u64| {
        Timestamp::from_duration(10 * MIN * k + Duration::from_millis(late_ms))
    };
    for (k, late) in [0, 700, 200, 900, 400, 100].into_iter().enumerate() {
        clock.set(fire(k as u32, late));
        invoke(&mut p, &clock, "cron");
        let tier = p.windows(&"cron").unwrap().tier;
        // Four intervals are needed: the first four starts give three.
        assert_eq!(tier == Tier::Periodic, k >= 4, "after start {k}: {tier}");
    }
    // The last four intervals: 10 min −0.5 s, +0.7 s, −0.5 s, −0.3 s: the
    // period is their median (10 min − 0.3 s), the spread 1 s, so the
    // window is ±2 s around 50 min 0.1 s + period = 59 min 59.8 s. It is
    // relative to the end of the last request, 0.3 s after its start.
    let w = p.windows(&"cron").unwrap();
    let ms = Duration::from_millis;
    assert!(close(w.pre_warm, 10 * MIN - ms(2600)), "{w:?}");
    assert!(close(w.keep_alive_until, 10 * MIN + ms(1400)), "{w:?}");
    let idle_start = clock.now();
    let plan = plan_at(&p, "cron", idle_start);
    assert_eq!((plan.target, plan.tier), (0, Tier::Periodic));
    let load_at = plan.review_at.expect("a pre-warm is scheduled");
    assert!(close(load_at - idle_start, 10 * MIN - ms(2600)));
    let warm = plan_at(&p, "cron", load_at);
    assert_eq!(warm.target, 1);
    assert!(close(
        warm.review_at.unwrap() - idle_start,
        10 * MIN + ms(1400)
    ));
    // The firing at 60 min 0.5 s finds it loaded.
    let next = fire(6, 500);
    assert_eq!(plan_at(&p, "cron", next).target, 1);
    clock.set(next);
    invoke(&mut p, &clock, "cron");
    assert_eq!(p.windows(&"cron").unwrap().tier, Tier::Periodic);
    // A skipped firing (the next at 80 min) breaks the pattern: back to
    // the histogram until four intervals agree again.
    clock.set(fire(8, 0));
    invoke(&mut p, &clock, "cron");
    assert_eq!(p.windows(&"cron").unwrap().tier, Tier::Histogram);
}

#[test]
fn the_default_adds_the_periodic_tier_to_the_published_policy() {
    assert_eq!(HybridConfig::published().periodic_intervals, 0);
    assert_eq!(HybridConfig::published().economy, None);
    let default = HybridConfig::default();
    assert!(default.periodic_intervals > 0);
    assert_eq!(
        HybridConfig {
            periodic_intervals: 0,
            ..default
        },
        HybridConfig::published()
    );
    assert_eq!(
        PolicyConfig::hybrid().strategy,
        Strategy::Hybrid(HybridConfig::default())
    );
}

fn economy() -> HybridConfig {
    HybridConfig {
        economy: Some(EconomyConfig {
            target_warm_share: 0.6,
            allowance_mb: 128.0,
            min_hits_per_gb_hour: 100.0,
            min_samples: 2,
            assumed_memory_mb: 128.0,
        }),
        ..HybridConfig::published()
    }
}

#[test]
fn the_economy_keeps_what_the_memory_buys() {
    const MB: u64 = 1 << 20;
    let clock = FakeClock::new();
    // Called at random every 6.7 h on average (the deciles of an
    // exponential, shuffled): the published policy's time series predicts
    // one idle time and keeps ±15% around it.
    let idles: Vec<Duration> = [5.5, 0.4, 13.0, 2.8, 22.0, 1.0, 9.6, 4.0, 1.8, 7.3]
        .iter()
        .map(|h| HOUR.mul_f64(*h))
        .collect();
    let caught = |w: &Windows| {
        idles
            .iter()
            .filter(|i| **i >= w.pre_warm && **i <= w.keep_alive_until)
            .count()
    };
    let mut published = hybrid();
    let mut small = with(economy());
    let mut large = with(economy());
    for p in [&mut published, &mut small, &mut large] {
        p.register("f", 1).unwrap();
    }
    small.set_memory(&"f", 64 * MB).unwrap();
    large.set_memory(&"f", 1024 * MB).unwrap();
    for p in [&mut published, &mut small, &mut large] {
        feed(p, &clock, "f", &idles);
    }
    let w = published.windows(&"f").unwrap();
    assert_eq!(w.tier, Tier::TimeSeries);
    assert!(caught(&w) < 6, "{w:?}");
    // 64 MB: a window catching 60% of them, within its 128 MB allowance.
    let w = small.windows(&"f").unwrap();
    assert!(caught(&w) >= 6, "{w:?}");
    let now = clock.now();
    // 1 GB: the same coverage would hold ~800 MB on average, and a
    // request every 5.5 h is far below 100 per GB-hour: nothing is kept.
    let w = large.windows(&"f").unwrap();
    assert!(w.keep_alive_until <= w.pre_warm, "{w:?}");
    let plan = plan_at(&large, "f", now);
    assert_eq!((plan.target, plan.review_at), (0, None));

    // A busy function's requests are worth their memory: the published
    // window stands.
    let mut busy_published = hybrid();
    let mut busy = with(economy());
    for p in [&mut busy_published, &mut busy] {
        p.register("busy", 1).unwrap();
        let mut idles = repeat(50, 20 * SEC);
        idles.extend(repeat(50, 40 * SEC));
        feed(p, &clock, "busy", &idles);
    }
    assert_eq!(
        busy.windows(&"busy").unwrap(),
        busy_published.windows(&"busy").unwrap()
    );
    assert!(matches!(
        busy.set_memory(&"nope", MB),
        Err(PoolError::UnknownFunction(_))
    ));
}
