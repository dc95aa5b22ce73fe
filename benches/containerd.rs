//! containerd driving its own runc shim (`io.containerd.runc.v2`) against
//! sprout's (`io.containerd.sprout.v2`), in one run, on a private
//! containerd 1.6 the bench starts and stops (own root, state and socket;
//! the busybox image built locally) and a sproutd for template containers:
//! - `containerd_true/{runc,sprout}`: `ctr run --rm` of busybox `true`, end
//!   to end (the `ctr` process);
//! - `containerd_python/{template,pool_hit_unprofiled,pool_hit,sprout_cold,runc_cold}`:
//!   the Python function (tests/programs/function.py) from `ctr run -d` to
//!   its first HTTP answer: a template container (`io.sprout.function`,
//!   forked by sproutd from the warm template), the same container without
//!   a cgroupsPath (`--cgroup ""`, with a memory limit: sproutd hands out a
//!   warm, frozen instance of the function's pool), and cold starts of the
//!   same image through sprout's shim and runc's. All but the pool hits
//!   join one network namespace the bench made; the client asks from
//!   inside it. A pool instance has its own network namespace (the
//!   function's sandbox): the pool is refilled to exactly one frozen
//!   instance before each run (untimed), and the request is sent into that
//!   instance's namespace before `ctr run` (the kernel accepts it for the
//!   frozen listener; the answer comes once the claim has thawed the
//!   instance). Every pool-hit run is checked to have claimed that
//!   instance. `pool_hit_unprofiled` runs while the function has no
//!   recorded write set (sproutd records it from the first instance given
//!   back through its API or killed: the row's containers are kept
//!   running until it ends); then one API claim records it, the pool is
//!   re-warmed, and `pool_hit`'s instances are pre-warmed with it
//!   (checked), as for a function that has served before.
//!
//! Each run's timeline is also taken from outside containerd
//! (common/ctr_timeline.rs), the same way for both shims: "Create
//! received" is the shim mounting the rootfs (the first thing both do in
//! `Create`), "exit reported" the shim's `/tasks/exit` envelope, "first
//! answer" the bench's client getting one. sprout's shim also logs when
//! it gets `Start` (at debug) and sproutd when its fork ended and how
//! long it took, which split the template's path further. The summary
//! prints p50s of those spans beside criterion's wall-clock figures, and
//! the goals: the
//! shim's share of a plain `true` (Create received → exit reported) at
//! most half of runc's shim's; a template start at the shim (Create
//! received → first answer) at most 5 ms. A pool hit's path at the shim
//! is split further by the shim's "instance started" line (the side
//! request's round trip, sproutd's claim time and steps, the link's
//! write).
//!
//! Uses the release binaries next to `sprout`: build them first with
//! `cargo build --release -p sprout -p sprout-shim --bins`. runc's parts
//! are skipped without runc or `containerd-shim-runc-v2`. Everything is
//! removed at the end and checked: containers, shims, daemons, mounts,
//! cgroups, state dirs.

#[path = "../tests/common/mod.rs"]
mod harness;

mod common;

#[path = "common/ctr_timeline.rs"]
mod timeline;

#[path = "common/ctr_fixture.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use fixture::{Sproutd, Traces, check_binaries, runc_available};
use harness::containerd::{
    BUSYBOX_REF, CTR_TIMEOUT, Containerd, CtrOutput, busybox_image_tar, kill_pid,
};
use harness::{Sandbox, python_image, python_sandbox, unique_id};
use sprout::shim::proto::{
    ClaimBody, DrainBody, PolicyBody, PolicyStrategy, PrewarmBody, StartPath,
};
use sprout::shim::registry::FunctionSpec;
use timeline::{AnswerWatch, EventLog, MountLog, PendingAnswer, parse_rfc3339, span};

/// The port the function listens on.
const PORT: u16 = 8080;
/// How long an event, a mount or an answer may take to show up.
const WAIT: Duration = Duration::from_secs(60);
/// The function's interpreter comes from the host, as in its own bundle.
const USR_MOUNT: &str = "type=bind,src=/usr,dst=/usr,options=rbind:ro";
/// The memory limit of a pool-hit container (a claim applies it).
const POOL_HIT_MEMORY: &str = "268435456";
const TRUE_SAMPLES: usize = 20;
const PYTHON_SAMPLES: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shim {
    Runc,
    Sprout,
}

impl Shim {
    fn runtime(self) -> &'static str {
        match self {
            Shim::Runc => "io.containerd.runc.v2",
            Shim::Sprout => "io.containerd.sprout.v2",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Shim::Runc => "runc",
            Shim::Sprout => "sprout",
        }
    }
}

/// One way to start the Python function through containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PyStart {
    /// sprout's shim, `io.sprout.function`: a fork of sproutd's template.
    Template,
    /// sprout's shim, `io.sprout.function` without a cgroupsPath: a warm
    /// instance of the function's pool, before the function has a write
    /// set.
    PoolHitUnprofiled,
    /// The same once the pool's instances are pre-warmed with the
    /// function's write set.
    PoolHit,
    /// sprout's shim, the interpreter booting.
    SproutCold,
    /// runc's shim, the interpreter booting.
    RuncCold,
}

impl PyStart {
    fn is_pool_hit(self) -> bool {
        matches!(self, PyStart::PoolHit | PyStart::PoolHitUnprofiled)
    }

    fn shim(self) -> Shim {
        match self {
            PyStart::RuncCold => Shim::Runc,
            _ => Shim::Sprout,
        }
    }

    fn name(self) -> &'static str {
        match self {
            PyStart::Template => "template",
            PyStart::PoolHitUnprofiled => "pool_hit_unprofiled",
            PyStart::PoolHit => "pool_hit",
            PyStart::SproutCold => "sprout_cold",
            PyStart::RuncCold => "runc_cold",
        }
    }
}

fn p50(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// sproutd's stages of one start: name, µs.
type Stages = Vec<(String, u64)>;

/// The fixture. Fields drop in order: the watchers, then containerd (its
/// template containers still need sproutd), sproutd, the namespace, the
/// function's bundle.
struct Bench {
    events: EventLog,
    mounts: MountLog,
    c: Containerd,
    sproutd: Sproutd,
    function: String,
    ns_file: File,
    netns: common::Netns,
    fn_sandbox: Sandbox,
    /// Samples are kept only while set (not for the priming runs).
    recording: AtomicBool,
    samples: Mutex<BTreeMap<String, Vec<Duration>>>,
    /// sproutd's fork stages of every recorded template start.
    fork_stages: Mutex<Vec<Stages>>,
    /// sproutd's claim steps of every recorded pool hit, by row.
    claim_stages: Mutex<BTreeMap<String, Vec<Stages>>>,
    /// Runs whose rootfs mount the watcher did not see.
    missed_mounts: AtomicU32,
    ctr_n: AtomicU32,
    /// Containers of the `pool_hit_unprofiled` row, removed when it ends:
    /// sproutd records the write set from the first instance killed.
    kept: Mutex<Vec<String>>,
}

impl Bench {
    fn new() -> Bench {
        check_binaries();
        // The function, checkpointed warm, and a sproutd serving it.
        let s = python_sandbox("ctr-fn");
        let (image, _) = python_image(&s);
        let sproutd = Sproutd::start(s.dir.path());
        let function = unique_id("py");
        sproutd.add_function(&FunctionSpec {
            name: function.clone(),
            image,
            bundle: s.bundle.clone(),
            vpc: None,
            after_fork_signal: None,
            resources: None,
            concurrency: 1,
            callers: None,
        });
        // The pool holds one frozen instance: no policy of its own, only
        // `min_warm`, so a claim is a hit and wakes one refill.
        let api = sproutd.client();
        api.set_policy(
            &function,
            &PolicyBody {
                strategy: Some(PolicyStrategy::None),
                ..Default::default()
            },
        )
        .unwrap();
        api.prewarm(&function, &PrewarmBody { count: 1 }).unwrap();
        let netns = common::Netns::new();
        let ns_file = File::open(netns.path()).unwrap();

        let c = Containerd::start_with_env(&sproutd.env());
        // One image for both workloads: busybox plus the function's files
        // (the template's rootfs check compares them by content).
        let tar = busybox_image_tar(|rootfs| {
            std::os::unix::fs::symlink("usr/lib", rootfs.join("lib")).unwrap();
            std::os::unix::fs::symlink("usr/lib64", rootfs.join("lib64")).unwrap();
            std::fs::create_dir_all(rootfs.join("usr")).unwrap();
            std::fs::create_dir_all(rootfs.join("app")).unwrap();
            std::fs::copy(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/function.py"),
                rootfs.join("app/function.py"),
            )
            .unwrap();
        });
        c.import(&tar);
        let _ = std::fs::remove_dir_all(tar.parent().unwrap());

        let mounts = MountLog::start(&c.state);
        let events = EventLog::start(c.ctr_cmd());
        subscribed(&c, &events);
        Bench {
            events,
            mounts,
            sproutd,
            function,
            ns_file,
            netns,
            fn_sandbox: s,
            recording: AtomicBool::new(false),
            samples: Mutex::default(),
            fork_stages: Mutex::default(),
            claim_stages: Mutex::default(),
            missed_mounts: AtomicU32::new(0),
            ctr_n: AtomicU32::new(0),
            kept: Mutex::new(Vec::new()),
            c,
        }
    }

    fn traces(&self) -> Traces {
        Traces {
            pid: std::process::id(),
            dirs: vec![
                self.c.dir.path().to_path_buf(),
                self.fn_sandbox.dir.path().to_path_buf(),
            ],
            daemons: vec![self.c.daemon_pid(), self.sproutd.pid()],
            containerd_sock: self.c.sock.to_string_lossy().into_owned(),
            netns: self.netns.path(),
        }
    }

    fn record(&self, key: String, d: Duration) {
        if self.recording.load(Ordering::Relaxed) {
            self.samples.lock().unwrap().entry(key).or_default().push(d);
        }
    }

    /// `ctr args...`, timed from spawn to exit (waited for, not polled);
    /// killed after [`CTR_TIMEOUT`].
    fn ctr_timed(&self, args: &[&str]) -> (Duration, CtrOutput) {
        let n = self.ctr_n.fetch_add(1, Ordering::Relaxed);
        let (out_path, err_path) = (
            self.c.dir.path().join(format!("bench-{n}.out")),
            self.c.dir.path().join(format!("bench-{n}.err")),
        );
        let t0 = Instant::now();
        let mut child = self
            .c
            .ctr_cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).unwrap())
            .stderr(File::create(&err_path).unwrap())
            .spawn()
            .expect("spawning ctr");
        let pid = child.id() as i32;
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let timed_out = finished.recv_timeout(CTR_TIMEOUT).is_err();
            if timed_out {
                // Our own child, not reaped yet: the pid is still its.
                kill_pid(pid);
            }
            timed_out
        });
        let status = child.wait().unwrap();
        let took = t0.elapsed();
        let _ = done.send(());
        let timed_out = watchdog.join().unwrap();
        let out = CtrOutput {
            status: (!timed_out).then_some(status),
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        };
        let _ = std::fs::remove_file(out_path);
        let _ = std::fs::remove_file(err_path);
        (took, out)
    }

    fn rootfs(&self, id: &str) -> PathBuf {
        self.c.bundle(id).join("rootfs")
    }

    /// When the shim mounted `id`'s rootfs (its `Create` began).
    fn create_received(&self, id: &str) -> Option<SystemTime> {
        let t = self
            .mounts
            .wait_for(&self.rootfs(id), Duration::from_secs(1));
        if t.is_none() {
            self.missed_mounts.fetch_add(1, Ordering::Relaxed);
        }
        t
    }

    /// The first line `message` of sprout's shim about task `id` (its init,
    /// not an exec): its time and its `key=value` fields. The harness's
    /// containerd logs at debug, so it runs shims with `-debug`; read
    /// while the shim runs: a shim removes its log when it exits.
    fn shim_line(&self, id: &str, message: &str) -> Option<(SystemTime, BTreeMap<String, String>)> {
        let logs = self.c.state.join("sprout-shim/default/logs");
        let files = std::fs::read_dir(logs).ok()?;
        files.flatten().find_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            text.lines().find_map(|l| {
                if !l.contains(&format!(": {message} ")) {
                    return None;
                }
                let fields: BTreeMap<String, String> = l
                    .split_whitespace()
                    .filter_map(|w| w.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let ours = fields.get("task").is_some_and(|t| t == id)
                    && fields.get("exec").is_none_or(|e| e.is_empty());
                let at = parse_rfc3339(l.split_whitespace().next()?)?;
                ours.then_some((at, fields))
            })
        })
    }

    /// When sprout's shim got `Start` for `id`, from its debug log.
    fn start_received(&self, id: &str) -> Option<SystemTime> {
        self.shim_line(id, "start received").map(|(at, _)| at)
    }

    /// Waits (untimed) until the function's pool holds exactly one
    /// instance, frozen; returns its id and pid and the pool hits so far.
    fn warm_one(&self) -> (String, i32, u64) {
        let api = self.sproutd.client();
        let mut last = None;
        let ready = harness::wait_until(WAIT, || {
            let view = api.function_pool(&self.function).unwrap();
            let one = match view.instances.as_slice() {
                [only] if only.state == "frozen" => {
                    Some((only.id.clone(), only.pid, view.starts.pool_hit))
                }
                _ => None,
            };
            last = Some(view);
            one.is_some()
        });
        assert!(
            ready,
            "the pool was not refilled to one frozen instance: {last:?}"
        );
        let view = last.unwrap();
        let only = &view.instances[0];
        (only.id.clone(), only.pid, view.starts.pool_hit)
    }

    /// `ctr run --rm` of busybox `true`; returns its time.
    fn run_true(&self, shim: Shim) -> Duration {
        let (id, cgroup) = self.c.names(&format!("true-{}", shim.name()));
        let fifo = self.c.fifo_dir.to_string_lossy().into_owned();
        let (took, out) = self.ctr_timed(&[
            "run",
            "--rm",
            "--runtime",
            shim.runtime(),
            "--fifo-dir",
            &fifo,
            "--cgroup",
            &cgroup,
            BUSYBOX_REF,
            &id,
            "/bin/true",
        ]);
        assert!(
            out.success(),
            "ctr run {id} ({}) failed: {:?}\n{}{}",
            shim.name(),
            out.status,
            out.stdout,
            out.stderr
        );
        let key = |k: &str| format!("true.{}.{k}", shim.name());
        self.record(key("e2e"), took);
        let exit = self
            .events
            .wait_for(&id, "/tasks/exit", WAIT)
            .unwrap_or_else(|| panic!("no /tasks/exit for {id}"));
        let at = |topic: &str| {
            self.events
                .at(&id, topic)
                .unwrap_or_else(|| panic!("no {topic} for {id}"))
        };
        let (container, created, started) = (
            at("/containers/create"),
            at("/tasks/create"),
            at("/tasks/start"),
        );
        if let Some(received) = self.create_received(&id) {
            self.record(key("share"), span(received, exit.at));
            self.record(key("create"), span(received, created));
            self.record(key("before_create"), span(container, received));
        }
        self.record(key("create_to_start"), span(created, started));
        self.record(key("start_to_exit"), span(started, exit.at));
        if let Some(exited) = exit.body["exited_at"].as_str().and_then(parse_rfc3339) {
            self.record(key("exit_notice"), span(exited, exit.at));
        }
        self.events.forget(&id);
        took
    }

    /// The Python function through containerd, from `ctr run -d` to its
    /// first answer; returns that time. Removing it is not timed.
    fn run_python(&self, kind: PyStart) -> Duration {
        assert!(
            common::get(&self.ns_file).is_err(),
            "something still answers in the bench's network namespace"
        );
        let (id, cgroup) = self.c.names(&format!("py-{}", kind.name()));
        let with_ns = format!("network:{}", self.netns.path());
        let annotation = format!("io.sprout.function={}", self.function);
        let mut args = vec![
            "run",
            "-d",
            "--null-io",
            "--runtime",
            kind.shim().runtime(),
            "--mount",
            USR_MOUNT,
        ];
        if kind.is_pool_hit() {
            // No cgroupsPath, no network namespace to join: a claim.
            args.extend(["--cgroup", "", "--memory-limit", POOL_HIT_MEMORY]);
        } else {
            args.extend(["--cgroup", &cgroup, "--with-ns", &with_ns]);
        }
        if kind == PyStart::Template || kind.is_pool_hit() {
            args.extend(["--annotation", &annotation]);
        }
        args.extend([
            BUSYBOX_REF,
            &id,
            "/usr/bin/python3",
            "/app/function.py",
            "8080",
        ]);
        let watch = if kind.is_pool_hit() {
            let (warm, pid, hits) = self.warm_one();
            self.check_profile(kind, &warm);
            let ns = File::open(format!("/proc/{pid}/ns/net")).unwrap();
            let pending = PendingAnswer::send(ns.into(), PORT, WAIT)
                .unwrap_or_else(|e| panic!("asking the warm instance {warm}: {e}"));
            Watch::Pending {
                pending,
                warm,
                hits,
            }
        } else {
            Watch::Polling(AnswerWatch::start(
                self.ns_file.try_clone().unwrap().into(),
                PORT,
                WAIT,
            ))
        };
        let t0 = SystemTime::now();
        let (ctr_took, out) = self.ctr_timed(&args);
        // On a panic, containerd's harness removes what is left.
        if !out.success() {
            drop(watch);
            panic!(
                "ctr run {id} failed: {:?}\n{}{}",
                out.status, out.stdout, out.stderr
            );
        }
        let answered = match watch {
            Watch::Polling(w) => w.wait(),
            Watch::Pending {
                pending,
                warm,
                hits,
            } => {
                // The shim wrote its link before answering `Start`.
                let link = self.link(&id);
                assert!(
                    link["path"] == "pool_hit" && link["instance"] == warm.as_str(),
                    "{id} was not a pool hit of {warm}: {link}"
                );
                let answered = pending.wait();
                let now = self
                    .sproutd
                    .client()
                    .function_pool(&self.function)
                    .unwrap()
                    .starts
                    .pool_hit;
                assert_eq!(now, hits + 1, "sproutd counted no pool hit for {id}");
                answered
            }
        }
        .unwrap_or_else(|| panic!("{id} did not answer within {WAIT:?}"));
        let key = |k: &str| format!("py.{}.{k}", kind.name());
        let e2e = span(t0, answered);
        self.record(key("e2e"), e2e);
        self.record(key("ctr_run_d"), ctr_took);
        let created = self
            .events
            .wait_for(&id, "/tasks/create", WAIT)
            .map(|e| e.at);
        if let Some(received) = self.create_received(&id) {
            self.record(key("shim"), span(received, answered));
            if let Some(created) = created {
                self.record(key("create"), span(received, created));
                self.record(key("create_to_answer"), span(created, answered));
            }
        }
        let start_received = (kind.shim() == Shim::Sprout)
            .then(|| self.start_received(&id))
            .flatten();
        if let (Some(created), Some(start)) = (created, start_received) {
            self.record(key("create_to_start_received"), span(created, start));
        }
        if kind == PyStart::Template && self.recording.load(Ordering::Relaxed) {
            let view = self
                .sproutd
                .client()
                .instance(&format!("default.{id}"))
                .unwrap_or_else(|e| panic!("sproutd does not know {id}: {e}"));
            self.fork_stages
                .lock()
                .unwrap()
                .push(view.stages.into_iter().map(|s| (s.name, s.us)).collect());
            // The template's path split at sproutd's fork.
            let (forked, fork) = harness::wait_until(Duration::from_secs(5), || {
                self.sproutd.forked(&view.id).is_some()
            })
            .then(|| self.sproutd.forked(&view.id))
            .flatten()
            .unwrap_or_else(|| panic!("no \"instance forked\" line for {id} in sproutd's log"));
            if let Some(created) = created {
                self.record(key("create_to_fork"), span(created, forked - fork));
            }
            if let Some(start) = start_received {
                self.record(key("start_to_fork"), span(start, forked - fork));
            }
            self.record(key("fork"), fork);
            self.record(key("fork_to_answer"), span(forked, answered));
        }
        if kind.is_pool_hit() {
            self.split_claim(kind, &id, start_received, answered);
        }
        if kind == PyStart::PoolHitUnprofiled {
            self.kept.lock().unwrap().push(id);
        } else {
            self.remove(&id);
        }
        if kind.is_pool_hit() {
            // The claim woke a refill: done before the next run, of any kind.
            self.warm_one();
        }
        e2e
    }

    /// Checks that warm instance `warm` is what row `kind` asks for: forked
    /// with the function's write set (populated) or without one.
    fn check_profile(&self, kind: PyStart, warm: &str) {
        let api = self.sproutd.client();
        let populated = api
            .instance(warm)
            .unwrap()
            .stages
            .iter()
            .any(|s| s.name == "populate");
        let pages = api.function_pool(&self.function).unwrap().write_set_pages;
        let want = kind == PyStart::PoolHit;
        assert!(
            populated == want && (pages > 0) == want,
            "{}: warm instance {warm} populated: {populated}, write set {pages} pages",
            kind.name()
        );
    }

    /// Makes sure sproutd has the function's write set (untimed; killing
    /// the kept containers has usually recorded it already), as any
    /// instance given back through its API would: the warm instance
    /// claimed, asked once, released; then the pool is drained and
    /// re-warmed, its instance populated with the write set.
    fn record_write_set(&self) {
        let api = self.sproutd.client();
        let (warm, pid, _) = self.warm_one();
        let claimed = api.claim(&self.function, &ClaimBody::default()).unwrap();
        assert!(
            claimed.path == StartPath::PoolHit && claimed.id == warm,
            "not a pool hit of {warm}: {claimed:?}"
        );
        let ns = File::open(format!("/proc/{pid}/ns/net")).unwrap();
        let answer = common::get(&ns).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        api.release(&claimed.id).unwrap();
        assert!(
            harness::wait_until(WAIT, || api
                .function_pool(&self.function)
                .is_ok_and(|v| v.write_set_pages > 0)),
            "no write set recorded from {warm}"
        );
        api.drain(&self.function, &DrainBody::default()).unwrap();
        api.prewarm(&self.function, &PrewarmBody { count: 1 })
            .unwrap();
        let (warm, _, _) = self.warm_one();
        self.check_profile(PyStart::PoolHit, &warm);
    }

    /// Drains the function's pool and waits until its instances are gone
    /// and reaped: removing the function deletes the template's holder
    /// only if it has no children left then (a pool instance not yet
    /// reaped would leave it behind). Best effort: the leftover check
    /// tells.
    fn empty_pool(&self) {
        let api = self.sproutd.client();
        let Ok(view) = api.function_pool(&self.function) else {
            return;
        };
        let _ = api.drain(&self.function, &DrainBody { force: true });
        let gone = |pid: &i32| !Path::new(&format!("/proc/{pid}")).exists();
        harness::wait_until(Duration::from_secs(10), || {
            view.instances.iter().map(|i| i.pid).all(|p| gone(&p))
        });
    }

    /// The shim's link of container `id` to its sproutd instance.
    fn link(&self, id: &str) -> serde_json::Value {
        let path = self.c.bundle(id).join("sprout-instance.json");
        let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&text).unwrap()
    }

    /// A pool hit's path at the shim, from the shim's "instance started"
    /// line (logged after the link's write): `Start` received → claim sent
    /// → claim answered → first answer, and sproutd's own part.
    fn split_claim(
        &self,
        kind: PyStart,
        id: &str,
        start: Option<SystemTime>,
        answered: SystemTime,
    ) {
        let (logged, f) = self
            .shim_line(id, "instance started")
            .unwrap_or_else(|| panic!("no \"instance started\" line for {id} in the shim's log"));
        let us = |k: &str| -> u64 {
            f.get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in the shim's line for {id}: {f:?}"))
        };
        let (request, link, claim) = (us("request_us"), us("link_us"), us("sproutd_us"));
        let claim_answered = logged - Duration::from_micros(link);
        let claim_sent = claim_answered - Duration::from_micros(request);
        let key = |k: &str| format!("py.{}.{k}", kind.name());
        if let Some(start) = start {
            self.record(key("start_to_claim"), span(start, claim_sent));
        }
        self.record(key("claim_request"), Duration::from_micros(request));
        self.record(key("claim_sproutd"), Duration::from_micros(claim));
        self.record(
            key("claim_channel"),
            Duration::from_micros(request.saturating_sub(claim)),
        );
        self.record(key("claimed_to_answer"), span(claim_answered, answered));
        self.record(key("link_write"), Duration::from_micros(link));
        if self.recording.load(Ordering::Relaxed) {
            let stages = f
                .get("stages")
                .map(String::as_str)
                .unwrap_or_default()
                .split(',')
                .filter_map(|s| s.split_once(':'))
                .filter_map(|(n, us)| Some((n.to_string(), us.parse().ok()?)))
                .collect();
            self.claim_stages
                .lock()
                .unwrap()
                .entry(kind.name().to_string())
                .or_default()
                .push(stages);
        }
    }

    /// Removes the containers kept by the `pool_hit_unprofiled` row.
    fn remove_kept(&self) {
        let kept = std::mem::take(&mut *self.kept.lock().unwrap());
        for id in kept {
            self.remove(&id);
        }
    }

    /// Kills and deletes task and container `id`.
    fn remove(&self, id: &str) {
        let steps: [&[&str]; 2] = [&["task", "delete", "-f", id], &["container", "delete", id]];
        for args in steps {
            let (_, out) = self.ctr_timed(args);
            assert!(
                out.success(),
                "ctr {args:?} failed: {:?}\n{}{}",
                out.status,
                out.stdout,
                out.stderr
            );
        }
        self.events.forget(id);
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.empty_pool();
    }
}

/// How a run's first answer is caught.
enum Watch {
    /// Asking the bench's namespace over and over until something answers.
    Polling(AnswerWatch),
    /// One request queued at pool instance `warm` before the run; `hits`
    /// is sproutd's pool-hit count before it.
    Pending {
        pending: PendingAnswer,
        warm: String,
        hits: u64,
    },
}

/// Waits until `ctr events` is subscribed: a namespace created after that
/// shows up in it. Also checks the envelope's clock against ours.
fn subscribed(c: &Containerd, events: &EventLog) {
    for _ in 0..30 {
        let ns = unique_id("probe");
        c.ok(&["namespaces", "create", &ns]);
        let seen = events.wait_for(&ns, "/namespaces/create", Duration::from_secs(2));
        c.ok(&["namespaces", "remove", &ns]);
        if let Some(e) = seen {
            let skew = span(e.at, SystemTime::now()) + span(SystemTime::now(), e.at);
            assert!(
                skew < Duration::from_secs(10),
                "event time {:?} is off by {skew:?}: a parse error",
                e.at
            );
            return;
        }
    }
    panic!("ctr events never showed an event");
}

/// Runs `f` twice, unrecorded (caches warm, the shim binary paged in),
/// and returns the wall-clock time of the second run, to size criterion's
/// sampling by.
fn prime(f: impl Fn() -> Duration) -> Duration {
    f();
    let t0 = Instant::now();
    f();
    t0.elapsed()
}

/// Criterion's budget for two or so runs per sample, `wall` each (in
/// flat mode criterion runs ⌈budget / (samples × warm-up mean)⌉ per
/// sample; less budget makes it warn on a busy machine).
fn configure(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    wall: Duration,
    samples: usize,
) {
    g.warm_up_time(wall.mul_f64(0.5))
        .measurement_time(wall.mul_f64(samples as f64 * 2.0));
}

fn bench(c: &mut Criterion) {
    let b = Bench::new();
    let runc = runc_available();
    if !runc {
        eprintln!("runc or containerd-shim-runc-v2 missing: runc's parts are skipped");
    }
    let shims: Vec<Shim> = [Shim::Runc, Shim::Sprout]
        .into_iter()
        .filter(|s| runc || *s != Shim::Runc)
        .collect();
    let starts: Vec<PyStart> = [
        PyStart::Template,
        PyStart::PoolHitUnprofiled,
        PyStart::PoolHit,
        PyStart::SproutCold,
        PyStart::RuncCold,
    ]
    .into_iter()
    .filter(|k| runc || k.shim() != Shim::Runc)
    .collect();
    let true_walls: Vec<Duration> = shims.iter().map(|&s| prime(|| b.run_true(s))).collect();
    b.recording.store(true, Ordering::Relaxed);

    let mut g = c.benchmark_group("containerd_true");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(TRUE_SAMPLES);
    for (&shim, &wall) in shims.iter().zip(&true_walls) {
        configure(&mut g, wall, TRUE_SAMPLES);
        g.bench_function(shim.name(), |x| {
            x.iter_custom(|n| (0..n).map(|_| b.run_true(shim)).sum())
        });
    }
    g.finish();

    // Each row primed right before it: the write set is recorded between
    // the two pool-hit rows.
    let mut g = c.benchmark_group("containerd_python");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(PYTHON_SAMPLES);
    for &kind in &starts {
        if kind == PyStart::PoolHit {
            b.remove_kept();
            b.record_write_set();
        }
        b.recording.store(false, Ordering::Relaxed);
        let wall = prime(|| b.run_python(kind));
        b.recording.store(true, Ordering::Relaxed);
        configure(&mut g, wall, PYTHON_SAMPLES);
        g.bench_function(kind.name(), |x| {
            x.iter_custom(|n| (0..n).map(|_| b.run_python(kind)).sum())
        });
    }
    g.finish();

    report(&b, &shims, &starts);

    let traces = b.traces();
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(20);
    let left = loop {
        let left = traces.leftovers();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(left.is_empty(), "left behind: {left:#?}");
    println!(
        "clean: no container, shim, daemon, mount, cgroup, namespace or state dir of this run (pid {}) left",
        traces.pid
    );
}

fn report(b: &Bench, shims: &[Shim], starts: &[PyStart]) {
    let samples = b.samples.lock().unwrap();
    let p = |key: String| samples.get(&key).filter(|v| !v.is_empty()).map(|v| p50(v));
    let n = |key: String| samples.get(&key).map_or(0, Vec::len);
    let cell = |d: Option<Duration>| d.map_or("—".to_string(), ms);
    println!("\n== containerd summary (p50 over every timed run, warm-up included) ==");

    println!("\nbusybox `true`, `ctr run --rm`:");
    print!("| | ");
    shims.iter().for_each(|s| print!("{} shim | ", s.name()));
    println!("sprout / runc |");
    println!("|---|{}---|", "---|".repeat(shims.len()));
    let rows = [
        ("e2e", "end to end (`ctr run --rm`)"),
        ("share", "**shim's share: Create received → exit reported**"),
        ("create", "  Create received → `/tasks/create`"),
        ("create_to_start", "  `/tasks/create` → `/tasks/start`"),
        ("start_to_exit", "  `/tasks/start` → `/tasks/exit`"),
        (
            "exit_notice",
            "  (of which: process exited → `/tasks/exit`)",
        ),
        (
            "before_create",
            "before: `/containers/create` → Create received",
        ),
    ];
    for (key, label) in rows {
        print!("| {label} | ");
        let v: Vec<Option<Duration>> = shims
            .iter()
            .map(|s| p(format!("true.{}.{key}", s.name())))
            .collect();
        v.iter().for_each(|d| print!("{} | ", cell(*d)));
        match (
            p(format!("true.runc.{key}")),
            p(format!("true.sprout.{key}")),
        ) {
            (Some(r), Some(s)) => println!("{:.2} |", s.as_secs_f64() / r.as_secs_f64()),
            _ => println!("— |"),
        }
    }
    println!(
        "runs: {}",
        shims
            .iter()
            .map(|s| format!("{} {}", s.name(), n(format!("true.{}.e2e", s.name()))))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ratio = match (p("true.runc.share".into()), p("true.sprout.share".into())) {
        (Some(r), Some(s)) => Some(s.as_secs_f64() / r.as_secs_f64()),
        _ => None,
    };
    match ratio {
        Some(r) => println!(
            "goal: sprout shim's share ≤ 0.5 × runc shim's: {:.2} → {}",
            r,
            if r <= 0.5 { "met" } else { "missed" }
        ),
        None => println!("goal: sprout shim's share ≤ 0.5 × runc shim's: not measured (no runc)"),
    }

    println!("\nPython function, to its first HTTP answer:");
    println!(
        "| start | at the shim: Create received → first answer | end to end: `ctr run -d` → first answer | `ctr run -d` returns | runs |"
    );
    println!("|---|---|---|---|---|");
    for k in starts {
        let key = |s: &str| format!("py.{}.{s}", k.name());
        println!(
            "| {} | {} | {} | {} | {} |",
            k.name(),
            cell(p(key("shim"))),
            cell(p(key("e2e"))),
            cell(p(key("ctr_run_d"))),
            n(key("e2e")),
        );
    }
    for k in starts {
        let key = |s: &str| format!("py.{}.{s}", k.name());
        println!(
            "{}: Create received → `/tasks/create` {}, `/tasks/create` → first answer {}",
            k.name(),
            cell(p(key("create"))),
            cell(p(key("create_to_answer"))),
        );
    }
    for k in starts.iter().filter(|k| k.shim() == Shim::Sprout) {
        println!(
            "{}: `/tasks/create` → the shim gets `Start` (ctr's Start through containerd) {}",
            k.name(),
            cell(p(format!("py.{}.create_to_start_received", k.name()))),
        );
    }
    if let Some(fork) = p("py.template.fork".into()) {
        println!(
            "template, split at sproutd's fork: `/tasks/create` → fork begins {} (of which the shim got `Start` → fork begins {}: side-channel request, sproutd's bookkeeping), fork {}, fork ends → first answer {}",
            cell(p("py.template.create_to_fork".into())),
            cell(p("py.template.start_to_fork".into())),
            ms(fork),
            cell(p("py.template.fork_to_answer".into())),
        );
    }
    print_stages("sproutd's fork", &b.fork_stages.lock().unwrap());
    let claim_stages = b.claim_stages.lock().unwrap();
    for k in starts.iter().filter(|k| k.is_pool_hit()) {
        let key = |s: &str| format!("py.{}.{s}", k.name());
        let Some(request) = p(key("claim_request")) else {
            continue;
        };
        println!(
            "{}, split at the shim: Create received → `/tasks/create` {}; `/tasks/create` → the shim gets `Start` {}; `Start` → claim sent {}; claim sent → answered {} (sproutd's claim {}, the side channel and the rest {}); claim answered → first answer {}; then, beside the answer, the link's write {}",
            k.name(),
            cell(p(key("create"))),
            cell(p(key("create_to_start_received"))),
            cell(p(key("start_to_claim"))),
            ms(request),
            cell(p(key("claim_sproutd"))),
            cell(p(key("claim_channel"))),
            cell(p(key("claimed_to_answer"))),
            cell(p(key("link_write"))),
        );
        if let Some(runs) = claim_stages.get(k.name()) {
            print_stages(&format!("{}: sproutd's claim", k.name()), runs);
        }
    }
    for k in [
        PyStart::PoolHit,
        PyStart::PoolHitUnprofiled,
        PyStart::Template,
    ] {
        if let Some(t) = p(format!("py.{}.shim", k.name())) {
            println!(
                "goal: template start at the shim ≤ 5 ms p50, {}: {} → {}",
                k.name(),
                ms(t),
                if t <= Duration::from_millis(5) {
                    "met"
                } else {
                    "missed"
                }
            );
        }
    }
    let missed = b.missed_mounts.load(Ordering::Relaxed);
    if missed > 0 {
        println!("rootfs mounts not seen (runs left out of the shim spans): {missed}");
    }
}

/// The p50 of each of sproutd's stages over `runs`, and of their sum.
fn print_stages(what: &str, runs: &[Stages]) {
    if runs.is_empty() {
        return;
    }
    let totals: Vec<Duration> = runs
        .iter()
        .map(|r| r.iter().map(|(_, us)| Duration::from_micros(*us)).sum())
        .collect();
    println!(
        "{what} (median of {}): {}; total {}",
        runs.len(),
        common::stage_medians(runs.iter().map(|r| {
            r.iter()
                .map(|(name, us)| (name.as_str(), Duration::from_micros(*us)))
        })),
        ms(p50(&totals))
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
