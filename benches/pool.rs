//! The warm pool: the Python function of `python_start`
//! (tests/programs/function.py) through a sproutd of the bench's own (the
//! real template engine), against a restore of the same image and a `runc
//! run` cold start, in one run, each from its first call to the first HTTP
//! answer from inside the instance's network namespace:
//! - `pool/pool_hit`: `POST /functions/py/claim` taking a pre-warmed,
//!   frozen instance (limits applied, thawed, output redirected); the pool
//!   holds one (`min_warm` 1) and is refilled before every claim, outside
//!   the clock — the refill each claim wakes runs while the instance
//!   answers, as in production. Every claim is checked to be a pool hit;
//! - `pool/claim_miss`: the same claim on a drained pool: a fork (its
//!   network namespace made by the fork);
//! - `pool/api_fork`: `POST /functions/py/instances` with a bundle joining
//!   a pre-made network namespace (as netplug's pool hands one over);
//! - `pool/restore_cli`: `sprout restore -d` of the image, pre-made netns;
//! - `pool/runc_run`: `runc run -d` cold start, pre-made netns (skipped
//!   without runc);
//! - `pool_hit_unprofiled` (not a criterion bench, 15 hits before the
//!   others): pool hits on instances pre-warmed before the function's
//!   write set was recorded (sproutd records it from the first claimed
//!   instance given back and populates later pre-warm forks with it), the
//!   claims held until all are taken; then the pool is drained and
//!   re-warmed for `pool_hit`.
//!
//! The policy is `none` (no speculative pre-warm) so that only `min_warm`
//! decides what the pool forks. Claims carry limits (memory, pids), as an
//! orchestrator's would. Releases and deletes are never timed. Then a
//! summary: p50s and ratios against runc, the claim's own time inside
//! sproutd (`claim_us`) against the goal of ≤ 0.5 ms from claim to
//! running, the stages of a pool hit and of the forks, and whether the
//! pre-warmed instances were populated with a recorded write set (the
//! pool-hit time with and without, when sproutd populates them).
//!
//! Uses the release binaries next to `sprout` (sproutd is another
//! package's): build them first with
//! `cargo build --release -p sprout -p sprout-shim --bins`. Everything
//! lives under one temp dir (`TMPDIR=/dev/shm` puts it, sproutd's state
//! root with it, on tmpfs); every cgroup path of the run and every id the
//! bench picks carries `sbp<pid>`; sproutd is stopped by pid and the bench
//! checks at the end that nothing of its own is left.

#[path = "../tests/common/mod.rs"]
mod harness;

mod common;

#[allow(dead_code)]
#[path = "common/ctr_timeline.rs"]
mod timeline;

#[allow(dead_code)]
#[path = "common/ctr_fixture.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Fixture, derived_bundle, first_response};
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use fixture::{Sproutd, check_binaries};
use sprout::shim::client::Client;
use sprout::shim::proto::{
    ClaimBody, Claimed, DrainBody, ForkBody, PolicyBody, PolicyStrategy, PrewarmBody, StageView,
    StartPath,
};
use sprout::shim::registry::FunctionSpec;

/// The function's name in sproutd.
const FUNCTION: &str = "py";
/// How long the pool may take to refill, or sproutd to answer.
const WAIT: Duration = Duration::from_secs(60);
/// Pool hits measured before the function's write set is recorded.
const UNPROFILED_HITS: usize = 15;
/// The goal of issue 7 for a claim, from its arrival to the instance
/// running.
const CLAIM_GOAL: Duration = Duration::from_micros(500);

/// One pool hit, as the client and sproutd saw it.
struct Hit {
    /// The claim's HTTP round trip.
    claim_rtt: Duration,
    /// From the claim's answer to the instance's first answer.
    to_answer: Duration,
    /// Inside sproutd: from the claim's arrival to the instance running.
    claim_us: u64,
    stages: Vec<StageView>,
    /// The stages of the fork that pre-warmed the instance.
    warm_fork: Vec<StageView>,
    /// That fork populated a recorded write set.
    populated: bool,
}

/// One fork on the request's path (a claim that missed, or the API).
struct ForkRun {
    /// sproutd's own time: `claim_us` for a claim, the stages' sum else.
    server_us: u64,
    stages: Vec<StageView>,
}

struct Bench {
    fx: Fixture,
    sproutd: Option<Sproutd>,
    client: Client,
    /// The function's bundle in a pre-made namespace (the API fork's).
    joined_bundle: PathBuf,
    tag: String,
    counter: AtomicU32,
    claim: ClaimBody,
    /// Every timed start, by bench name, warm-up included.
    samples: Mutex<BTreeMap<&'static str, Vec<Duration>>>,
    hits: Mutex<Vec<Hit>>,
    misses: Mutex<Vec<ForkRun>>,
    api_forks: Mutex<Vec<ForkRun>>,
    /// `write_set_pages` of the function's pool, last seen.
    write_set_pages: Mutex<u64>,
}

impl Bench {
    fn new() -> Bench {
        check_binaries();
        let tag = format!("sbp{}", std::process::id());
        let fx = Fixture::new("sprout-bench-pool-", &format!("{tag}-img"));
        // sproutd's instances live side by side: the function's bundle
        // gives each a network namespace of its own (made when it is
        // forked); its holder and the pool's cgroups carry the tag.
        let own_bundle = derived_bundle(
            &fx.bundle,
            fx.dir.path(),
            "fn-bundle",
            None,
            Some(&format!("{tag}-fn")),
        );
        let joined_bundle = derived_bundle(
            &fx.bundle,
            fx.dir.path(),
            "fork-bundle",
            Some(&fx.netns.path()),
            None,
        );
        let pool_cgroup = format!("{tag}-pool");
        let sproutd = Sproutd::start_with_args(fx.dir.path(), &["--pool-cgroup", &pool_cgroup]);
        let client = sproutd.client();
        sproutd.add_function(&FunctionSpec {
            name: FUNCTION.into(),
            image: fx.image.clone(),
            bundle: own_bundle,
            vpc: None,
            after_fork_signal: None,
            resources: None,
            concurrency: 1,
            callers: None,
        });
        client
            .set_policy(
                FUNCTION,
                &PolicyBody {
                    strategy: Some(PolicyStrategy::None),
                    ..Default::default()
                },
            )
            .unwrap();
        let claim: ClaimBody = serde_json::from_value(serde_json::json!({
            "resources": {"memory": {"limit": 256u64 << 20}, "pids": {"limit": 128}}
        }))
        .unwrap();
        Bench {
            fx,
            sproutd: Some(sproutd),
            client,
            joined_bundle,
            tag,
            counter: AtomicU32::new(0),
            claim,
            samples: Mutex::default(),
            hits: Mutex::default(),
            misses: Mutex::default(),
            api_forks: Mutex::default(),
            write_set_pages: Mutex::new(0),
        }
    }

    /// sproutd's log (`Sproutd::start` puts it in the directory given).
    fn sproutd_log(&self) -> String {
        std::fs::read_to_string(self.fx.dir.path().join("sproutd.log")).unwrap_or_default()
    }

    fn next_id(&self, kind: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{kind}{n}", self.tag)
    }

    fn record(&self, name: &'static str, d: Duration) -> Duration {
        self.samples
            .lock()
            .unwrap()
            .entry(name)
            .or_default()
            .push(d);
        d
    }

    /// Waits (untimed) until the pool holds exactly one frozen instance
    /// and nothing else; returns it and the stages of its fork.
    fn warm_one(&self) -> (String, Vec<StageView>) {
        let deadline = Instant::now() + WAIT;
        loop {
            let view = self.client.function_pool(FUNCTION).unwrap();
            *self.write_set_pages.lock().unwrap() = view.write_set_pages;
            if let [only] = view.instances.as_slice()
                && only.state == "frozen"
            {
                let inst = self.client.instance(&only.id).unwrap();
                return (only.id.clone(), inst.stages);
            }
            assert!(
                Instant::now() < deadline,
                "the pool was not refilled to one frozen instance: {view:?}\n{}",
                self.sproutd_log()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A claim of the pre-warmed instance to its first answer, recorded
    /// as `name`; returns the time and the claimed instance.
    fn timed_hit(&self, name: &'static str) -> (Duration, String) {
        let (warm, warm_fork) = self.warm_one();
        let t0 = Instant::now();
        let c = self.claim();
        let claimed = Instant::now();
        assert!(
            c.path == StartPath::PoolHit && c.id == warm,
            "not a pool hit of {warm}: {c:?}"
        );
        self.answer(c.pid);
        let t = t0.elapsed();
        self.hits.lock().unwrap().push(Hit {
            claim_rtt: claimed - t0,
            to_answer: t - (claimed - t0),
            claim_us: c.claim_us,
            populated: warm_fork.iter().any(|s| s.name == "populate"),
            stages: c.stages,
            warm_fork,
        });
        (self.record(name, t), c.id)
    }

    /// A pool hit, released (untimed) at once.
    fn pool_hit(&self) -> Duration {
        let (t, id) = self.timed_hit("pool_hit");
        self.client.release(&id).unwrap();
        t
    }

    /// `n` pool hits on instances pre-warmed before the function had a
    /// recorded write set (sproutd records it from the first instance
    /// given back, so the claims are held until all `n` are taken), then
    /// released (the first one records the write set) and the pool
    /// drained: what a pool hit costs without the profile.
    fn unprofiled_hits(&self, n: usize) {
        let pages = self.client.function_pool(FUNCTION).unwrap().write_set_pages;
        assert_eq!(pages, 0, "the function has a write set already");
        self.client
            .prewarm(FUNCTION, &PrewarmBody { count: 1 })
            .unwrap();
        let held: Vec<String> = (0..n)
            .map(|_| self.timed_hit("pool_hit_unprofiled").1)
            .collect();
        for id in held {
            self.client.release(&id).unwrap();
        }
        self.client.drain(FUNCTION, &DrainBody::default()).unwrap();
    }

    /// A claim on the drained pool (a fork) to its first answer.
    fn claim_miss(&self) -> Duration {
        let t0 = Instant::now();
        let c = self.claim();
        assert_eq!(c.path, StartPath::Fork, "not a miss: {c:?}");
        self.answer(c.pid);
        let t = t0.elapsed();
        self.client.release(&c.id).unwrap();
        self.misses.lock().unwrap().push(ForkRun {
            server_us: c.claim_us,
            stages: c.stages,
        });
        self.record("claim_miss", t)
    }

    /// `POST /functions/py/instances` into the pre-made namespace, to the
    /// first answer.
    fn api_fork(&self) -> Duration {
        let id = self.next_id("f");
        let body = ForkBody {
            id: id.clone(),
            bundle: Some(self.joined_bundle.clone()),
            ..Default::default()
        };
        let t0 = Instant::now();
        let f = self
            .client
            .fork(FUNCTION, &body)
            .unwrap_or_else(|e| panic!("fork {id}: {e}"));
        first_response(&self.fx.ns_file);
        let t = t0.elapsed();
        self.client.delete(&id, true).unwrap();
        self.api_forks.lock().unwrap().push(ForkRun {
            server_us: f.stages.iter().map(|s| s.us).sum(),
            stages: f.stages,
        });
        self.record("api_fork", t)
    }

    fn claim(&self) -> Claimed {
        self.client
            .claim(FUNCTION, &self.claim)
            .unwrap_or_else(|e| panic!("claim: {e}\n{}", self.sproutd_log()))
    }

    /// Waits for the first answer of the instance whose init is `pid`,
    /// from inside its network namespace.
    fn answer(&self, pid: i32) {
        let ns = File::open(format!("/proc/{pid}/ns/net")).unwrap();
        first_response(&ns);
    }

    fn restore_cli(&self) -> Duration {
        let id = self.next_id("c");
        let t = self.fx.start_to_response(
            &self.fx.sprout,
            &self.fx.root("sprout"),
            &[
                "restore",
                "-d",
                "--image-path",
                self.fx.image.to_str().unwrap(),
                "--bundle",
                self.fx.bundle.to_str().unwrap(),
                &id,
            ],
            &id,
        );
        self.record("restore_cli", t)
    }

    fn runc_run(&self, runc: &Path) -> Duration {
        let id = self.next_id("runc");
        let t = self.fx.start_to_response(
            runc,
            &self.fx.root("runc"),
            &[
                "run",
                "-d",
                "--bundle",
                self.fx.bundle.to_str().unwrap(),
                &id,
            ],
            &id,
        );
        self.record("runc_run", t)
    }

    /// Stops sproutd (the function removed first, then by pid) and deletes
    /// what outlives it by design (template holders), then the pool's
    /// cgroups.
    fn stop_sproutd(&mut self) {
        let Some(d) = self.sproutd.take() else {
            return;
        };
        if let Err(e) = self.client.drain(FUNCTION, &DrainBody { force: true }) {
            eprintln!("draining the pool: {e}");
        }
        drop(d);
        let root = self.fx.dir.path().join("sproutd");
        harness::delete_all_in(&root.join("engine/holders"));
        let mut dirs = harness::cgroup_leftovers(&format!("{}-pool", self.tag));
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }

    /// What of this bench is still around: cgroups and processes named
    /// with its tag, mounts under its temp dir, containers in its roots.
    fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = harness::cgroup_leftovers(&self.tag)
            .into_iter()
            .map(|p| format!("cgroup {}", p.display()))
            .collect();
        left.extend(
            harness::processes_in_cgroup_named(&self.tag)
                .into_iter()
                .map(|p| format!("process {p}")),
        );
        let dir = self.fx.dir.path().to_str().unwrap();
        left.extend(
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .filter(|l| l.contains(dir))
                .map(|l| format!("mount {l}")),
        );
        for root in [
            self.fx.root("sprout"),
            self.fx.root("runc"),
            self.fx.dir.path().join("sproutd/runtime"),
            self.fx.dir.path().join("sproutd/engine/holders"),
        ] {
            left.extend(
                std::fs::read_dir(&root)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.') && n != "file-hashes")
                    .map(|n| format!("state {} in {}", n, root.display())),
            );
        }
        left
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.stop_sproutd();
        // After a panic: whatever the roots still know.
        for (runtime, root) in std::iter::once((self.fx.sprout.clone(), self.fx.root("sprout")))
            .chain(common::runc().map(|r| (r, self.fx.root("runc"))))
        {
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if id.starts_with(&self.tag) {
                    let _ = std::process::Command::new(&runtime)
                        .arg("--root")
                        .arg(&root)
                        .args(["delete", "--force", &id])
                        .status();
                }
            }
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn bench(c: &mut Criterion) {
    let load_before = loadavg();
    let mut b = Bench::new();
    let runc = common::runc();
    if runc.is_none() {
        eprintln!("runc is not installed: the runc cold start is skipped");
    }

    let mut g = c.benchmark_group("pool");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500));

    b.unprofiled_hits(UNPROFILED_HITS);
    // Pre-warmed from now on with the write set the first release
    // recorded (if sproutd populates one).
    b.client
        .prewarm(FUNCTION, &PrewarmBody { count: 1 })
        .unwrap();
    g.measurement_time(Duration::from_millis(1500));
    g.bench_function("pool_hit", |x| {
        x.iter_custom(|n| (0..n).map(|_| b.pool_hit()).sum())
    });

    b.client.drain(FUNCTION, &DrainBody::default()).unwrap();
    g.measurement_time(Duration::from_secs(2));
    g.bench_function("claim_miss", |x| {
        x.iter_custom(|n| (0..n).map(|_| b.claim_miss()).sum())
    });
    g.bench_function("api_fork", |x| {
        x.iter_custom(|n| (0..n).map(|_| b.api_fork()).sum())
    });
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("restore_cli", |x| {
        x.iter_custom(|n| (0..n).map(|_| b.restore_cli()).sum())
    });
    if let Some(r) = &runc {
        g.measurement_time(Duration::from_secs(4));
        g.bench_function("runc_run", |x| {
            x.iter_custom(|n| (0..n).map(|_| b.runc_run(r)).sum())
        });
    }
    g.finish();

    *b.write_set_pages.lock().unwrap() = b.client.function_pool(FUNCTION).unwrap().write_set_pages;
    report(&b, &load_before);

    b.stop_sproutd();
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = loop {
        let left = b.leftovers();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(left.is_empty(), "left behind: {left:#?}");
    println!(
        "clean: no cgroup, mount, process or state of {} left",
        b.tag
    );
}

fn p50<T: Ord + Copy>(v: &[T]) -> Option<T> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(n: u64) -> String {
    format!("{n}µs")
}

/// Median by stage name, in first-seen order.
fn stage_p50s<'a>(runs: impl Iterator<Item = &'a [StageView]>) -> String {
    common::stage_medians(runs.map(|stages| {
        stages
            .iter()
            .map(|s| (s.name.as_str(), Duration::from_micros(s.us)))
    }))
}

fn report(b: &Bench, load_before: &str) {
    let samples = b.samples.lock().unwrap();
    let p = |name: &str| samples.get(name).and_then(|v| p50(v));
    println!("\n== warm pool summary (p50 over every timed start, warm-up included) ==");
    println!(
        "load average (1/5/15 min): {load_before} before, {} after; nice {}",
        loadavg(),
        // SAFETY: getpriority with plain integers, for this process.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    );
    common::print_runc_table(
        &[
            "pool_hit",
            "pool_hit_unprofiled",
            "claim_miss",
            "api_fork",
            "restore_cli",
            "runc_run",
        ],
        |name| Some((p(name)?, samples[name].len())),
    );

    let hits = b.hits.lock().unwrap();
    if !hits.is_empty() {
        let claim_us: Vec<u64> = hits.iter().map(|h| h.claim_us).collect();
        let claim_p50 = Duration::from_micros(p50(&claim_us).unwrap_or_default());
        let within = claim_us
            .iter()
            .filter(|&&u| Duration::from_micros(u) <= CLAIM_GOAL)
            .count();
        println!(
            "pool hit, claim inside sproutd (claim_us): p50 {} (min {}, max {}); {within} of {} within {}: goal ≤ {} p50 {}",
            us(claim_p50.as_micros() as u64),
            us(*claim_us.iter().min().unwrap()),
            us(*claim_us.iter().max().unwrap()),
            hits.len(),
            us(CLAIM_GOAL.as_micros() as u64),
            us(CLAIM_GOAL.as_micros() as u64),
            if claim_p50 <= CLAIM_GOAL {
                "MET"
            } else {
                "MISSED"
            },
        );
        println!(
            "pool hit, its steps (median): {}; client side: claim round trip p50 {}, claim answered → first answer p50 {}",
            stage_p50s(hits.iter().map(|h| h.stages.as_slice())),
            ms(p50(&hits.iter().map(|h| h.claim_rtt).collect::<Vec<_>>()).unwrap()),
            ms(p50(&hits.iter().map(|h| h.to_answer).collect::<Vec<_>>()).unwrap()),
        );
        println!(
            "pre-warm fork of those instances (off the request path), median: {}",
            stage_p50s(hits.iter().map(|h| h.warm_fork.as_slice())),
        );
        let pages = *b.write_set_pages.lock().unwrap();
        let (with, without): (Vec<&Hit>, Vec<&Hit>) = hits.iter().partition(|h| h.populated);
        let split = |v: &[&Hit]| -> String {
            if v.is_empty() {
                return "— (none)".into();
            }
            let total: Vec<Duration> = v.iter().map(|h| h.claim_rtt + h.to_answer).collect();
            let after: Vec<Duration> = v.iter().map(|h| h.to_answer).collect();
            format!(
                "{} (claim answered → first answer {}; {} hits)",
                ms(p50(&total).unwrap()),
                ms(p50(&after).unwrap()),
                v.len()
            )
        };
        println!(
            "write set: {pages} pages recorded; pre-warm forks that populated it: {} of {}",
            with.len(),
            hits.len()
        );
        println!(
            "pool hit to first answer p50, instance pre-warmed with the write set: {}; without: {}",
            split(&with),
            split(&without)
        );
    }
    for (what, runs) in [
        ("claim miss (fork, fresh netns)", &b.misses),
        ("API fork (pre-made netns)", &b.api_forks),
    ] {
        let runs = runs.lock().unwrap();
        if runs.is_empty() {
            continue;
        }
        println!(
            "{what}: inside sproutd p50 {}; fork stages (median): {}",
            us(p50(&runs.iter().map(|r| r.server_us).collect::<Vec<_>>()).unwrap()),
            stage_p50s(runs.iter().map(|r| r.stages.as_slice())),
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
