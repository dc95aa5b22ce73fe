//! Templates and fork: the Python function of `python_start`
//! (tests/programs/function.py) loaded once into a template, instances
//! forked from it, against a restore of the same image and a `runc run`
//! cold start, in one run:
//! - `template/fork`: `Template::fork` into a network namespace made
//!   beforehand (as netplug's pool hands one over), until the instance's
//!   first HTTP answer;
//! - `template/fork_fresh_netns`: the same, the fork making the namespace;
//! - `template/fork_profiled`: `template/fork` with the function's write
//!   set (recorded once, before the benches, from an instance that answered
//!   one request) populated by the fork;
//! - `template/restore_lib`: `snapshot::restore` of the image, in-process
//!   like the fork, to the first answer;
//! - `template/restore_cli`: `sprout restore -d`, to the first answer;
//! - `template/runc_run`: `runc run -d` cold start, to the first answer;
//! - `template_burst/forks_x50`: 50 forks back to back, each answering
//!   before the next (throughput: forks per second);
//! - `template_burst/forks_x50_2threads`: the same from two threads, as
//!   concurrent requests to sproutd would fork.
//!
//! Restores and runc join one pre-made namespace (one container at a
//! time); each instance gets its own. Deleting is never timed. Then a
//! summary: p50s and ratios, the fork's stages, and the memory (PSS and
//! private from smaps_rollup, cgroup charges) of 1, 10 and 100 idle
//! instances — criterion cannot measure memory, so it is printed.
//!
//! Everything lives under one temp dir (state roots) with ids carrying
//! `sbt<pid>`; the bench checks at the end that no cgroup, mount or
//! process of its own is left.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Fixture, bin, first_response};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use sprout::runtime::{Container, Runtime};
use sprout::snapshot::profile::{Populated, WriteSet};
use sprout::snapshot::ptrace::Tracer;
use sprout::snapshot::restore::{RestoreOptions, restore};
use sprout::snapshot::template::{ForkSpec, Template, Timings, fresh_netns};

/// Instances per `forks_x50` iteration.
const BURST: usize = 50;
/// Idle instance counts whose memory is reported.
const IDLE_COUNTS: [usize; 3] = [1, 10, 100];

/// A container deleted (forced) when dropped: instances and restores
/// never outlive their iteration, even on a panic.
struct Owned(Option<Container>);

impl Owned {
    fn pid(&self) -> i32 {
        self.0.as_ref().and_then(|c| c.pid()).expect("running")
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            let id = c.id().to_string();
            if let Err(e) = c.delete(true) {
                eprintln!("deleting {id}: {e}");
            }
        }
    }
}

/// Memory of one process, in kB, from /proc/PID/smaps_rollup.
#[derive(Debug, Default, Clone, Copy)]
struct Mem {
    rss: u64,
    pss: u64,
    /// Private_Clean + Private_Dirty.
    private: u64,
    /// Private_Dirty: pages of its own (copied on write, or new). The
    /// clean part is file pages no other process maps right now, which
    /// depends on what else runs.
    dirty: u64,
}

impl std::ops::AddAssign for Mem {
    fn add_assign(&mut self, o: Mem) {
        self.rss += o.rss;
        self.pss += o.pss;
        self.private += o.private;
        self.dirty += o.dirty;
    }
}

fn smaps_rollup(pid: i32) -> Mem {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let mut m = Mem::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(kb)) = (it.next(), it.next().and_then(|v| v.parse::<u64>().ok()))
        else {
            continue;
        };
        match key {
            "Rss:" => m.rss = kb,
            "Pss:" => m.pss = kb,
            "Private_Clean:" => m.private += kb,
            "Private_Dirty:" => {
                m.private += kb;
                m.dirty = kb;
            }
            _ => {}
        }
    }
    m
}

/// Bytes charged to the v1 memory cgroup of `pid` (user pages it
/// faulted in plus kernel memory allocated on its behalf).
fn memcg_usage(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = text
        .lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
            ctrls.split(',').any(|c| c == "memory").then_some(path)
        })
        .expect("a memory cgroup");
    let file = Path::new("/sys/fs/cgroup/memory")
        .join(path.trim_start_matches('/'))
        .join("memory.usage_in_bytes");
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn p50(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn mib(kb: u64) -> String {
    format!("{:.2} MiB", kb as f64 / 1024.0)
}

/// The fixture, the library runtime the template, its instances and the
/// library restores live in, and the template.
struct Bench {
    fx: Fixture,
    rt: Runtime,
    tracer: Tracer,
    template: Option<Template>,
    load: Timings,
    tag: String,
    counter: AtomicU32,
    /// Every timed start, by bench name, warm-up included.
    samples: Mutex<BTreeMap<&'static str, Vec<Duration>>>,
    /// The stages of every `template/fork` fork.
    fork_stages: Mutex<Vec<Timings>>,
    /// The function's write set, recorded once.
    profile: Option<Arc<WriteSet>>,
    /// The stages and populate counts of every `template/fork_profiled`
    /// fork.
    profiled_forks: Mutex<Vec<(Timings, Populated)>>,
    /// Minor faults from fork's return to the first answer, by bench name.
    faults: Mutex<BTreeMap<&'static str, Vec<u64>>>,
}

impl Bench {
    fn new() -> Bench {
        let tag = format!("sbt{}", std::process::id());
        let fx = Fixture::new("sprout-bench-tpl-", &format!("{tag}-img"));
        let (rt, tracer) = fx.library();
        let holder = format!("{tag}-holder");
        let (template, load) =
            Template::load(&rt, &tracer, "fn", &holder, &fx.image, &fx.bundle, None)
                .unwrap_or_else(|e| panic!("loading the template: {e}"));
        Bench {
            fx,
            rt,
            tracer,
            template: Some(template),
            load,
            tag,
            counter: AtomicU32::new(0),
            samples: Mutex::default(),
            fork_stages: Mutex::default(),
            profile: None,
            profiled_forks: Mutex::default(),
            faults: Mutex::default(),
        }
    }

    /// Records the function's write set from an instance that answered
    /// its first request (as sproutd will after an instance's first lease).
    fn record_profile(&mut self) {
        let (inst, client, _, _) = self.fork(Some(fresh_netns().unwrap()), false);
        first_response(&client);
        let set = WriteSet::record(inst.pid(), self.template())
            .unwrap_or_else(|e| panic!("recording the write set: {e}"));
        drop(inst);
        self.profile = Some(Arc::new(set));
    }

    fn template(&self) -> &Template {
        self.template.as_ref().expect("loaded")
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

    /// Forks an instance into `netns` (a fresh one made by the fork when
    /// `None`), with the recorded write set if `profiled`; returns it, a
    /// handle on its network namespace, the fork's stages and what it
    /// populated. Not timed here.
    fn fork(&self, netns: Option<OwnedFd>, profiled: bool) -> (Owned, OwnedFd, Timings, Populated) {
        let client = netns.as_ref().map(|n| n.try_clone().unwrap());
        let id = self.next_id("f");
        let forked = self
            .template()
            .fork(
                &self.rt,
                &id,
                ForkSpec {
                    netns,
                    populate: profiled.then(|| self.profile.clone().expect("recorded")),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("fork {id}: {e}"));
        let inst = Owned(Some(forked.container));
        let client = client.unwrap_or_else(|| {
            File::open(format!("/proc/{}/ns/net", inst.pid()))
                .unwrap()
                .into()
        });
        (inst, client, forked.timings, forked.populated)
    }

    /// From calling fork to the instance's first answer.
    fn fork_to_response(&self, pooled: bool) -> Duration {
        let netns = pooled.then(|| fresh_netns().unwrap());
        let t0 = Instant::now();
        let (inst, client, timings, _) = self.fork(netns, false);
        let forked = Instant::now();
        let faults = minflt(inst.pid());
        first_response(&client);
        let t = t0.elapsed();
        if pooled {
            self.record("first_request", forked.elapsed());
            self.record_faults("fork", minflt(inst.pid()) - faults);
        }
        // The same request again, to an instance that answered once: what
        // of the first answer's time is the client and the function.
        let t1 = Instant::now();
        common::get(&client).unwrap();
        self.record("warm_request", t1.elapsed());
        drop(inst);
        if pooled {
            self.fork_stages.lock().unwrap().push(timings);
            self.record("fork", t)
        } else {
            self.record("fork_fresh_netns", t)
        }
    }

    /// From calling fork with the write set to the instance's first
    /// answer (into a namespace made beforehand, as `fork`).
    fn profiled_fork_to_response(&self) -> Duration {
        let netns = Some(fresh_netns().unwrap());
        let t0 = Instant::now();
        let (inst, client, timings, populated) = self.fork(netns, true);
        let forked = Instant::now();
        let faults = minflt(inst.pid());
        first_response(&client);
        let t = t0.elapsed();
        self.record("first_request_profiled", forked.elapsed());
        self.record_faults("fork_profiled", minflt(inst.pid()) - faults);
        drop(inst);
        self.profiled_forks
            .lock()
            .unwrap()
            .push((timings, populated));
        self.record("fork_profiled", t)
    }

    fn record_faults(&self, name: &'static str, n: u64) {
        self.faults.lock().unwrap().entry(name).or_default().push(n);
    }

    /// `snapshot::restore` of the image to the first answer.
    fn restore_to_response(&self) -> Duration {
        let id = self.next_id("r");
        let null = || Some(File::open("/dev/null").unwrap().into());
        let t0 = Instant::now();
        let (ct, _) = restore(
            &self.rt,
            &self.tracer,
            &id,
            &self.fx.bundle,
            &self.fx.image,
            RestoreOptions {
                stdio: [null(), null(), null()],
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("restore {id}: {e}"));
        let ct = Owned(Some(ct));
        first_response(&self.fx.ns_file);
        let t = t0.elapsed();
        drop(ct);
        self.record("restore_lib", t)
    }

    fn restore_cli_to_response(&self) -> Duration {
        let id = self.next_id("c");
        let (bundle, image) = (self.bundle(), self.fx.image.to_str().unwrap());
        let t = self.fx.start_to_response(
            &self.fx.sprout,
            &self.fx.root("sprout"),
            &[
                "restore",
                "-d",
                "--image-path",
                image,
                "--bundle",
                bundle,
                &id,
            ],
            &id,
        );
        self.record("restore_cli", t)
    }

    fn runc_to_response(&self, runc: &Path) -> Duration {
        let id = self.next_id("runc");
        let t = self.fx.start_to_response(
            runc,
            &self.fx.root("runc"),
            &["run", "-d", "--bundle", self.bundle(), &id],
            &id,
        );
        self.record("runc_run", t)
    }

    fn bundle(&self) -> &str {
        self.fx.bundle.to_str().unwrap()
    }

    /// `n` forks, each answering, from `threads` threads forking back to
    /// back (as concurrent requests to sproutd would), into namespaces
    /// made beforehand; the time of the forks.
    fn burst(&self, name: &'static str, n: usize, threads: usize) -> Duration {
        let mut pools: Vec<Vec<OwnedFd>> = (0..threads).map(|_| Vec::new()).collect();
        for i in 0..n {
            pools[i % threads].push(fresh_netns().unwrap());
        }
        let t0 = Instant::now();
        let live: Vec<Vec<Owned>> = std::thread::scope(|s| {
            let handles: Vec<_> = pools
                .into_iter()
                .map(|pool| {
                    s.spawn(move || {
                        let mut live = Vec::with_capacity(pool.len());
                        for ns in pool {
                            let (inst, client, _, _) = self.fork(Some(ns), false);
                            first_response(&client);
                            live.push(inst);
                        }
                        live
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let t = t0.elapsed();
        drop(live);
        self.record(name, t)
    }

    /// `n` idle instances (each answered once): their memory, the
    /// template's, and the cgroup charges of the instances and of the
    /// holder's growth while forking them.
    fn idle_memory(&self, n: usize) -> IdleMemory {
        let holder_pid = self.template().holder().pid().expect("the holder runs");
        let holder_before = memcg_usage(holder_pid);
        let mut live = Vec::with_capacity(n);
        for _ in 0..n {
            let (inst, client, _, _) = self.fork(Some(fresh_netns().unwrap()), false);
            first_response(&client);
            live.push(inst);
        }
        std::thread::sleep(Duration::from_secs(1));
        let mut sum = Mem::default();
        let mut charged = 0;
        for inst in &live {
            sum += smaps_rollup(inst.pid());
            charged += memcg_usage(inst.pid());
        }
        let holder_growth = memcg_usage(holder_pid).saturating_sub(holder_before);
        let template = smaps_rollup(self.template().pid().expect("the template lives"));
        drop(live);
        IdleMemory {
            n,
            sum,
            charged_kb: (charged + holder_growth) / 1024,
            template,
        }
    }

    /// Memory of one idle restored instance and one idle runc cold start,
    /// for comparison.
    fn single_memory(&self, runc: Option<&Path>) -> Vec<(&'static str, Mem)> {
        let mut rows = Vec::new();
        let id = self.next_id("r");
        let null = || Some(File::open("/dev/null").unwrap().into());
        let (ct, _) = restore(
            &self.rt,
            &self.tracer,
            &id,
            &self.fx.bundle,
            &self.fx.image,
            RestoreOptions {
                stdio: [null(), null(), null()],
                ..Default::default()
            },
        )
        .unwrap();
        let ct = Owned(Some(ct));
        first_response(&self.fx.ns_file);
        std::thread::sleep(Duration::from_secs(1));
        rows.push(("restored instance", smaps_rollup(ct.pid())));
        drop(ct);
        if let Some(runc) = runc {
            let id = self.next_id("runc");
            let root = self.fx.root("runc");
            self.fx
                .cmd(runc, &root, &["run", "-d", "--bundle", self.bundle(), &id]);
            first_response(&self.fx.ns_file);
            let out = std::process::Command::new(runc)
                .arg("--root")
                .arg(&root)
                .args(["state", &id])
                .output()
                .unwrap();
            let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            std::thread::sleep(Duration::from_secs(1));
            rows.push((
                "runc cold start",
                smaps_rollup(state["pid"].as_i64().unwrap() as i32),
            ));
            self.fx.cmd(runc, &root, &["delete", "--force", &id]);
        }
        rows
    }

    /// What of this bench is still around: cgroups and processes named
    /// with its tag, mounts under its temp dir, containers in its roots.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        cgroups_named(Path::new("/sys/fs/cgroup"), &self.tag, 6, &mut left);
        let dir = self.fx.dir.path().to_str().unwrap();
        left.extend(
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .filter(|l| l.contains(dir))
                .map(|l| format!("mount {l}")),
        );
        // Zombies are not counted: instances orphaned when the holder
        // went are reaped by the host's init on its own schedule.
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if let Ok(cg) = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                && cg.contains(&self.tag)
                && live_process(&pid)
            {
                left.push(format!("process {pid}"));
            }
        }
        for runtime in ["lib", "sprout", "runc"] {
            if let Ok(entries) = std::fs::read_dir(self.fx.root(runtime)) {
                left.extend(
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with(&self.tag))
                        .map(|n| format!("{runtime} state {n}")),
                );
            }
        }
        left
    }

    /// Drops the template, then deletes its holder: the instances are
    /// gone by now (each iteration deletes its own).
    fn unload(&mut self) {
        if let Some(t) = self.template.take() {
            let holder = t.holder().clone();
            if let Err(e) = t.drop_template() {
                eprintln!("dropping the template: {e}");
            }
            drop(t);
            if let Err(e) = holder.delete(true) {
                eprintln!("deleting the holder: {e}");
            }
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.unload();
        // After a panic: whatever the roots still know.
        for (runtime, root) in [
            (bin("sprout"), self.fx.root("lib")),
            (bin("sprout"), self.fx.root("sprout")),
        ]
        .into_iter()
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

/// Minor page faults of process `pid` so far (/proc/PID/stat field 10).
fn minflt(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(") ").unwrap();
    rest.split_whitespace().nth(7).unwrap().parse().unwrap()
}

fn live_process(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s.rsplit_once(") ").map_or("", |x| x.1);
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

fn cgroups_named(dir: &Path, name: &str, depth: u32, found: &mut Vec<String>) {
    if depth == 0 {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let p: PathBuf = e.path();
        if e.file_name().to_string_lossy().contains(name) {
            found.push(format!("cgroup {}", p.display()));
        }
        cgroups_named(&p, name, depth - 1, found);
    }
}

struct IdleMemory {
    n: usize,
    /// Summed over the instances.
    sum: Mem,
    /// Instances' cgroups plus the holder's growth, kB.
    charged_kb: u64,
    template: Mem,
}

fn bench(c: &mut Criterion) {
    let mut b = Bench::new();
    b.record_profile();
    let runc = common::runc();

    let mut g = c.benchmark_group("template");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g.bench_function("fork", |x| {
        x.iter_custom(|n| (0..n).map(|_| b.fork_to_response(true)).sum())
    });
    g.bench_function("fork_profiled", |x| {
        x.iter_custom(|n| (0..n).map(|_| b.profiled_fork_to_response()).sum())
    });
    g.bench_function("fork_fresh_netns", |x| {
        x.iter_custom(|n| (0..n).map(|_| b.fork_to_response(false)).sum())
    });
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("restore_lib", |x| {
        x.iter_custom(|n| (0..n).map(|_| b.restore_to_response()).sum())
    });
    g.bench_function("restore_cli", |x| {
        x.iter_custom(|n| (0..n).map(|_| b.restore_cli_to_response()).sum())
    });
    if let Some(r) = &runc {
        g.measurement_time(Duration::from_secs(4));
        g.bench_function("runc_run", |x| {
            x.iter_custom(|n| (0..n).map(|_| b.runc_to_response(r)).sum())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("template_burst");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(BURST as u64));
    g.bench_function("forks_x50", |x| {
        x.iter_custom(|n| (0..n).map(|_| b.burst("forks_x50", BURST, 1)).sum())
    });
    g.bench_function("forks_x50_2threads", |x| {
        x.iter_custom(|n| {
            (0..n)
                .map(|_| b.burst("forks_x50_2threads", BURST, 2))
                .sum()
        })
    });
    g.finish();

    let idle: Vec<IdleMemory> = IDLE_COUNTS.iter().map(|&n| b.idle_memory(n)).collect();
    let singles = b.single_memory(runc.as_deref());
    report(&b, &idle, &singles);

    b.unload();
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

fn report(b: &Bench, idle: &[IdleMemory], singles: &[(&'static str, Mem)]) {
    let samples = b.samples.lock().unwrap();
    let p = |name: &str| samples.get(name).map(|v| p50(v));
    println!("\n== template summary (p50 over every timed start, warm-up included) ==");
    println!(
        "template load (once): {} ({})",
        ms(b.load.total()),
        b.load
            .stages
            .iter()
            .map(|(s, d)| format!("{s} {}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    common::print_runc_table(
        &[
            "fork",
            "fork_profiled",
            "fork_fresh_netns",
            "restore_lib",
            "restore_cli",
            "runc_run",
        ],
        |name| Some((p(name)?, samples[name].len())),
    );
    if let (Some(first), Some(warm)) = (p("first_request"), p("warm_request")) {
        println!(
            "of `fork`: from fork's return to the first answer p50 {}; a second request p50 {}",
            ms(first),
            ms(warm)
        );
    }
    for (name, how) in [
        ("forks_x50", "from one thread"),
        ("forks_x50_2threads", "from two threads"),
    ] {
        let Some(v) = samples.get(name) else { continue };
        let mut rates: Vec<f64> = v.iter().map(|d| BURST as f64 / d.as_secs_f64()).collect();
        rates.sort_by(f64::total_cmp);
        println!(
            "sustained, {BURST} forks each answering, {how}: p50 {:.0} forks/s (min {:.0}, max {:.0}, {} bursts)",
            rates[rates.len() / 2],
            rates[0],
            rates[rates.len() - 1],
            rates.len()
        );
    }

    profile_report(b, &samples);

    // The fork's stages, median by stage over the `fork` runs.
    let runs = b.fork_stages.lock().unwrap();
    let totals: Vec<Duration> = runs.iter().map(Timings::total).collect();
    if !totals.is_empty() {
        println!(
            "fork stages (median of {}): {}; total {} (fork returns), to first answer {}",
            runs.len(),
            common::stage_medians(runs.iter().map(|t| t.stages.iter().map(|(n, d)| (*n, *d)))),
            ms(p50(&totals)),
            p("fork").map(ms).unwrap_or_default(),
        );
    }

    println!(
        "\n| idle instances | PSS, all | private / instance | of it dirty | PSS / instance | cgroup charge / instance | instances per GiB (private) | per GiB (charge) | template RSS / PSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for m in idle {
        let n = m.n as u64;
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} / {} |",
            m.n,
            mib(m.sum.pss),
            mib(m.sum.private / n),
            mib(m.sum.dirty / n),
            mib(m.sum.pss / n),
            mib(m.charged_kb / n),
            (1 << 20) as f64 * n as f64 / m.sum.private as f64,
            (1 << 20) as f64 * n as f64 / m.charged_kb as f64,
            mib(m.template.rss),
            mib(m.template.pss),
        );
    }
    for (what, m) in singles {
        println!(
            "| 1 {what} | {} | {} | {} | {} | — | {:.0} | — | — |",
            mib(m.pss),
            mib(m.private),
            mib(m.dirty),
            mib(m.pss),
            (1 << 20) as f64 / m.private as f64,
        );
    }
}

/// Fork to first answer with the write set against without, from the
/// same run.
fn profile_report(b: &Bench, samples: &BTreeMap<&'static str, Vec<Duration>>) {
    let (Some(set), Some(plain), Some(profiled)) = (
        b.profile.as_ref(),
        samples.get("fork"),
        samples.get("fork_profiled"),
    ) else {
        return;
    };
    let (plain, profiled) = (p50(plain), p50(profiled));
    let faults = b.faults.lock().unwrap();
    let faults_p50 = |name: &str| {
        let mut v = faults.get(name).cloned().unwrap_or_default();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let forks = b.profiled_forks.lock().unwrap();
    let populate: Vec<Duration> = forks
        .iter()
        .filter_map(|(t, _)| {
            t.stages
                .iter()
                .find(|(n, _)| *n == "populate")
                .map(|(_, d)| *d)
        })
        .collect();
    let pages: Vec<u64> = forks.iter().map(|(_, p)| p.pages).collect();
    let failed: usize = forks.iter().map(|(_, p)| p.failed).sum();
    let fork_returns: Vec<Duration> = forks.iter().map(|(t, _)| t.total()).collect();
    println!(
        "write set: {} pages ({}) in {} ranges; populated per fork: {} pages, {failed} ranges failed over {} forks",
        set.pages(),
        mib(set.pages() * 4),
        set.ranges().len(),
        pages.iter().min().copied().unwrap_or_default(),
        forks.len()
    );
    println!(
        "fork to first answer p50: without the profile {}, with {} (with / without = {:.2}); fork returns with the profile p50 {}, of it populate p50 {:.0}µs",
        ms(plain),
        ms(profiled),
        profiled.as_secs_f64() / plain.as_secs_f64(),
        if fork_returns.is_empty() {
            "—".into()
        } else {
            ms(p50(&fork_returns))
        },
        if populate.is_empty() {
            0.0
        } else {
            p50(&populate).as_secs_f64() * 1e6
        },
    );
    if let (Some(a), Some(b2)) = (
        samples.get("first_request").map(|v| p50(v)),
        samples.get("first_request_profiled").map(|v| p50(v)),
    ) {
        println!(
            "first request alone (fork's return to the answer) p50: without {}, with {}; its minor faults p50: without {}, with {}",
            ms(a),
            ms(b2),
            faults_p50("fork"),
            faults_p50("fork_profiled"),
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
