//! `sprout restore` of the Python function (tests/programs/function.py) to
//! its first HTTP answer, from a cold and a warm image, loading memory
//! eagerly or lazily (userfaultfd) with and without the recorded working
//! set (issue "execution profiles fed back"), in one run:
//! - `cold/eager`: the image evicted from the page cache
//!   (`evict_page_cache`, checked with `mincore`), `sprout restore -d`;
//! - `cold/lazy`: the same, `--lazy-pages --no-working-set`;
//! - `cold/lazy_ws`: the same, `--lazy-pages` with the working set the
//!   bench recorded first (restore with `MemoryLoading::Record`, one
//!   request, `finish_recording`, saved with its `working-set.img`);
//! - `warm/eager`, `warm/lazy_ws`: the image in the page cache;
//! - `runc/run`: `runc run -d` cold start of the same function.
//!
//! Each start joins one pre-made network namespace, as the other Python
//! benches do; only start-to-answer is timed (eviction and delete are not).
//! Then p50s and ratios, and per-stage splits of each mode through the
//! library (median of 11): the restore's stages, time to the first answer
//! after the restore returned, and what the loader did (pages before the
//! process ran, faults during the first request, pages in the background).

mod common;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Fixture, first_response};
use criterion::{Criterion, criterion_group, criterion_main};
use sprout::snapshot::image::{
    Image, WorkingSet, evict_page_cache, file_resident_fraction, resident_fraction,
};
use sprout::snapshot::ptrace::Tracer;
use sprout::snapshot::restore::{
    LoadReport, MemoryLoading, RestoreOptions, RestoreReport, restore_with_loader,
};

/// Evicts the image and checks it is cold (`pages.img` and
/// `working-set.img`). The loader of the previous lazy restore may still
/// have reads in flight (its readahead): evict again until they are done.
fn make_cold(image: &Path) {
    let ws_pages = image.join("working-set.img");
    let mut r = 1.0;
    for _ in 0..100 {
        evict_page_cache(image).unwrap();
        r = resident_fraction(image).unwrap();
        if ws_pages.exists() {
            r = r.max(file_resident_fraction(&ws_pages).unwrap());
        }
        if r < 0.02 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{:.0}% of the image still cached", r * 100.0);
}

/// Reads the whole pages file (a warm image).
fn make_warm(image: &Path) {
    std::fs::read(image.join("pages.img")).unwrap();
    let r = resident_fraction(image).unwrap();
    assert!(r > 0.95, "only {:.0}% of pages.img cached", r * 100.0);
}

fn p50(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn null() -> Option<OwnedFd> {
    Some(std::fs::File::open("/dev/null").unwrap().into())
}

/// Records the function's first request as the image's working set,
/// through the library; saves it (`working-set.json` and
/// `working-set.img`) and returns it as stored.
fn record_working_set(f: &Fixture, rt: &sprout::runtime::Runtime, tracer: &Tracer) -> WorkingSet {
    let restored = restore_with_loader(
        rt,
        tracer,
        "rec",
        &f.bundle,
        &f.image,
        RestoreOptions {
            stdio: [null(), null(), null()],
            memory: MemoryLoading::Record,
            ..Default::default()
        },
    )
    .unwrap();
    first_response(&f.ns_file);
    let ws = restored.finish_recording().unwrap();
    ws.save(&f.image).unwrap();
    let sprout::snapshot::restore::Restored {
        container, loader, ..
    } = restored;
    loader.unwrap().wait().unwrap();
    container.delete(true).unwrap();
    WorkingSet::load(&Image::open(&f.image).unwrap())
        .unwrap()
        .expect("just saved")
}

/// One library restore to the first answer: the report, the time from the
/// restore's return to the answer, and the loader's report.
fn lib_run(
    f: &Fixture,
    rt: &sprout::runtime::Runtime,
    tracer: &Tracer,
    memory: MemoryLoading,
) -> (RestoreReport, Duration, Duration, Option<LoadReport>) {
    let t0 = Instant::now();
    let mut restored = restore_with_loader(
        rt,
        tracer,
        "lib",
        &f.bundle,
        &f.image,
        RestoreOptions {
            stdio: [null(), null(), null()],
            memory,
            ..Default::default()
        },
    )
    .unwrap();
    let t1 = Instant::now();
    first_response(&f.ns_file);
    let answer = t1.elapsed();
    let total = t0.elapsed();
    let load = restored.wait_loaded().unwrap();
    let report = restored.report.clone();
    let sprout::snapshot::restore::Restored { container, .. } = restored;
    container.delete(true).unwrap();
    (report, answer, total, load)
}

fn bench(c: &mut Criterion) {
    let f = Fixture::new("sprout-bench-cold-", "img");
    let bundle = f.bundle.to_str().unwrap().to_string();
    let image = f.image.to_str().unwrap().to_string();
    let (rt, tracer) = f.library();
    let ws = record_working_set(&f, &rt, &tracer);
    let stored_pages: u64 = Image::open(&f.image)
        .unwrap()
        .manifest()
        .stored_page_bytes()
        / 4096;
    println!(
        "working set: {} pages in {} ranges (the image stores {} pages); working-set.img {} KiB in {} extents",
        ws.page_count(),
        ws.ranges().len(),
        stored_pages,
        ws.pages_file().map_or(0, |p| p.size / 1024),
        ws.pages_file().map_or(0, |p| p.extents.len()),
    );

    let samples: Mutex<BTreeMap<&'static str, Vec<Duration>>> = Mutex::default();
    let root = f.root("sprout");
    let restore_args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = ["restore", "-d", "--image-path", &image, "--bundle", &bundle]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push("c".into());
        v
    };
    let cases: [(&'static str, &'static str, bool, &[&'static str]); 5] = [
        ("cold", "eager", true, &[]),
        ("cold", "lazy", true, &["--lazy-pages", "--no-working-set"]),
        ("cold", "lazy_ws", true, &["--lazy-pages"]),
        ("warm", "eager", false, &[]),
        ("warm", "lazy_ws", false, &["--lazy-pages"]),
    ];
    for (group, name, cold, extra) in cases {
        let mut g = c.benchmark_group(group);
        g.sample_size(15)
            .measurement_time(Duration::from_secs(12))
            .warm_up_time(Duration::from_secs(1));
        let args = restore_args(extra);
        let key: &'static str = Box::leak(format!("{group}/{name}").into_boxed_str());
        g.bench_function(name, |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| {
                        if cold {
                            make_cold(&f.image);
                        } else {
                            make_warm(&f.image);
                        }
                        let a: Vec<&str> = args.iter().map(String::as_str).collect();
                        let t = f.start_to_response(&f.sprout, &root, &a, "c");
                        samples.lock().unwrap().entry(key).or_default().push(t);
                        t
                    })
                    .sum()
            })
        });
        g.finish();
    }
    if let Some(runc) = common::runc() {
        let mut g = c.benchmark_group("runc");
        g.sample_size(10)
            .measurement_time(Duration::from_secs(10))
            .warm_up_time(Duration::from_secs(1));
        let rroot = f.root("runc");
        g.bench_function("run", |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| {
                        let t = f.start_to_response(
                            &runc,
                            &rroot,
                            &["run", "-d", "--bundle", &bundle, "a"],
                            "a",
                        );
                        samples
                            .lock()
                            .unwrap()
                            .entry("runc/run")
                            .or_default()
                            .push(t);
                        t
                    })
                    .sum()
            })
        });
        g.finish();
    }

    let s = samples.lock().unwrap();
    let p = |k: &str| s.get(k).map(|v| p50(v));
    println!("\nsprout restore -d to first answer, p50 (criterion samples):");
    for (k, v) in s.iter() {
        println!(
            "  {k:<14} {:>8.2} ms  (n={})",
            p50(v).as_secs_f64() * 1e3,
            v.len()
        );
    }
    let ratio = |a: &str, b: &str| match (p(a), p(b)) {
        (Some(x), Some(y)) => format!("{:.2}x", x.as_secs_f64() / y.as_secs_f64()),
        _ => "-".into(),
    };
    println!(
        "  cold: eager / lazy with working set = {} (goal >= 2x); eager / lazy without = {}; lazy without / with = {}",
        ratio("cold/eager", "cold/lazy_ws"),
        ratio("cold/eager", "cold/lazy"),
        ratio("cold/lazy", "cold/lazy_ws")
    );
    println!(
        "  warm: eager / lazy with working set = {}; runc / warm lazy_ws = {}; runc / warm eager = {}",
        ratio("warm/eager", "warm/lazy_ws"),
        ratio("runc/run", "warm/lazy_ws"),
        ratio("runc/run", "warm/eager")
    );
    drop(s);

    // Per-stage splits through the library.
    println!("\nlibrary restores (median of 11 per mode):");
    let modes: [(&str, bool, MemoryLoading); 5] = [
        ("cold eager", true, MemoryLoading::Eager),
        ("cold lazy", true, MemoryLoading::Lazy { working_set: None }),
        (
            "cold lazy+ws",
            true,
            MemoryLoading::Lazy {
                working_set: Some(ws.clone()),
            },
        ),
        ("warm eager", false, MemoryLoading::Eager),
        (
            "warm lazy+ws",
            false,
            MemoryLoading::Lazy {
                working_set: Some(ws.clone()),
            },
        ),
    ];
    for (name, cold, memory) in modes {
        let mut runs = Vec::new();
        for _ in 0..11 {
            if cold {
                make_cold(&f.image);
            } else {
                make_warm(&f.image);
            }
            runs.push(lib_run(&f, &rt, &tracer, memory.clone()));
        }
        let mut line = Vec::new();
        for (i, (stage, _)) in runs[0].0.stages.iter().enumerate() {
            let v: Vec<Duration> = runs.iter().map(|r| r.0.stages[i].1).collect();
            line.push(format!("{stage} {}µs", p50(&v).as_micros()));
        }
        let restore: Vec<Duration> = runs.iter().map(|r| r.0.total()).collect();
        let answer: Vec<Duration> = runs.iter().map(|r| r.1).collect();
        let total: Vec<Duration> = runs.iter().map(|r| r.2).collect();
        println!(
            "  {name}: to first answer {}µs = restore {}µs + answer {}µs",
            p50(&total).as_micros(),
            p50(&restore).as_micros(),
            p50(&answer).as_micros()
        );
        println!("    stages: {}", line.join(", "));
        let loads: Vec<&LoadReport> = runs.iter().filter_map(|r| r.3.as_ref()).collect();
        if !loads.is_empty() {
            let med = |g: fn(&LoadReport) -> u64| {
                let mut v: Vec<u64> = loads.iter().map(|l| g(l)).collect();
                v.sort();
                v[v.len() / 2]
            };
            let elapsed: Vec<Duration> = loads.iter().map(|l| l.elapsed).collect();
            let prefetch: Vec<Duration> = loads.iter().map(|l| l.prefetch_time).collect();
            let dur = |g: fn(&LoadReport) -> Duration| {
                let v: Vec<Duration> = loads.iter().map(|l| g(l)).collect();
                p50(&v).as_micros()
            };
            println!(
                "    loader: {} pages before the process ran (+{} zero) in {}µs (working-set.img {} KiB read+verified in {}µs on the side; pages.img reading+verifying {}µs, filling {}µs); {} faults loading {} pages, {} zero faults; {} pages in the background; pages.img {} KiB read in {}µs, {}µs filling; all loaded after {}µs",
                med(|l| l.prefetched_pages),
                med(|l| l.prefetched_zero_pages),
                p50(&prefetch).as_micros(),
                med(|l| l.prefetched_file_bytes) / 1024,
                dur(|l| l.prefetched_file_time),
                dur(|l| l.prefetch_read_time),
                dur(|l| l.prefetch_fill_time),
                med(|l| l.faults),
                med(|l| l.fault_pages),
                med(|l| l.zero_faults),
                med(|l| l.background_pages),
                med(|l| l.read_bytes) / 1024,
                dur(|l| l.read_time),
                dur(|l| l.fill_time),
                p50(&elapsed).as_micros()
            );
        }
    }
    drop(f.netns);
}

criterion_group!(benches, bench);
criterion_main!(benches);
