//! The Python function (tests/programs/function.py: asyncio HTTP, imports
//! and an initializer) from nothing to its first HTTP response, in one run:
//! - `python/runc_run`: `runc run -d` cold start;
//! - `python/sprout_run`: `sprout run -d` cold start;
//! - `python/sprout_restore`: `sprout restore -d` of an image taken after
//!   the initializer.
//!
//! Each container joins one network namespace the bench made (with `lo`
//! up), as a pre-plugged namespace would be; the client connects from a
//! thread inside it, so traffic stays on that namespace's loopback. Only
//! start-to-response is timed; deleting the container is not. At the end
//! the restore's per-stage split (library API, same image) is printed.

mod common;

use std::time::Duration;

use common::{Fixture, first_response};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let f = Fixture::new("sprout-bench-py-", "img");
    let bundle = f.bundle.to_str().unwrap().to_string();
    let image = f.image.to_str().unwrap().to_string();
    let runc = common::runc();
    let mut g = c.benchmark_group("python");
    g.sample_size(15)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(2));
    if let Some(r) = &runc {
        let root = f.root("runc");
        g.bench_function("runc_run", |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| {
                        f.start_to_response(r, &root, &["run", "-d", "--bundle", &bundle, "a"], "a")
                    })
                    .sum()
            })
        });
    }
    let root = f.root("sprout");
    g.bench_function("sprout_run", |b| {
        b.iter_custom(|n| {
            (0..n)
                .map(|_| {
                    f.start_to_response(
                        &f.sprout,
                        &root,
                        &["run", "-d", "--bundle", &bundle, "b"],
                        "b",
                    )
                })
                .sum()
        })
    });
    g.bench_function("sprout_restore", |b| {
        b.iter_custom(|n| {
            (0..n)
                .map(|_| {
                    f.start_to_response(
                        &f.sprout,
                        &root,
                        &[
                            "restore",
                            "-d",
                            "--image-path",
                            &image,
                            "--bundle",
                            &bundle,
                            "c",
                        ],
                        "c",
                    )
                })
                .sum()
        })
    });
    g.finish();

    // The restore's stages, through the library, median of 15.
    let (rt, tracer) = f.library();
    let mut runs: Vec<Vec<(&'static str, Duration)>> = Vec::new();
    for _ in 0..15 {
        let null = || -> Option<std::os::fd::OwnedFd> {
            Some(std::fs::File::open("/dev/null").unwrap().into())
        };
        let (ct, report) = sprout::snapshot::restore::restore(
            &rt,
            &tracer,
            "lib",
            &f.bundle,
            &f.image,
            sprout::snapshot::restore::RestoreOptions {
                stdio: [null(), null(), null()],
                ..Default::default()
            },
        )
        .unwrap();
        first_response(&f.ns_file);
        runs.push(report.stages.clone());
        ct.delete(true).unwrap();
    }
    let mut line = Vec::new();
    for (i, (name, _)) in runs[0].iter().enumerate() {
        let mut v: Vec<Duration> = runs.iter().map(|r| r[i].1).collect();
        v.sort();
        line.push(format!("{name} {}µs", v[v.len() / 2].as_micros()));
    }
    let mut totals: Vec<Duration> = runs.iter().map(|r| r.iter().map(|s| s.1).sum()).collect();
    totals.sort();
    println!(
        "restore stages (library, median of {}): {}; total {}µs",
        runs.len(),
        line.join(", "),
        totals[totals.len() / 2].as_micros()
    );
    drop(f.netns);
}

criterion_group!(benches, bench);
criterion_main!(benches);
