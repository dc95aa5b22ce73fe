//! Templates and fork, through the library: the asyncio Python function and
//! the threaded C program restored once into a template and forked into
//! many instances, each in its own namespaces, cgroup and rootfs.

mod common;

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sprout::runtime::{Container, Runtime, Status};
use sprout::snapshot::profile::{PageRange, Populated, WriteSet};
use sprout::snapshot::ptrace::Tracer;
use sprout::snapshot::template::{ForkSpec, Template, TemplateError};

fn runtime(s: &Sandbox) -> Runtime {
    Runtime::builder()
        .root(&s.root)
        .init_binary(init_bin())
        .build()
        .unwrap()
}

/// The Python function's image (see `python_image`), with the bundle's
/// `cgroupsPath` removed afterwards: the holder and every instance get a
/// cgroup of their own, named after their id, under the test's cgroup.
fn python_template_image(s: &mut Sandbox) -> (PathBuf, serde_json::Value) {
    let r = python_image(s);
    s.config()["linux"]
        .as_object_mut()
        .unwrap()
        .remove("cgroupsPath");
    s.write_config();
    r
}

fn out_file(s: &Sandbox, name: &str) -> (PathBuf, fs::File) {
    let path = s.dir.path().join(name);
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    (path, f)
}

fn stdio_to(f: &fs::File) -> ForkSpec {
    ForkSpec {
        stdio: [
            None,
            Some(f.try_clone().unwrap().into()),
            Some(f.try_clone().unwrap().into()),
        ],
        ..Default::default()
    }
}

fn pid_of(c: &Container) -> i32 {
    c.pid().expect("an instance has a pid")
}

/// Ends a template the way sproutd does: the template process, then the
/// holder (its reaper) with whatever still runs below it.
fn unload(rt: &Runtime, s: &Sandbox, template: Template) {
    let holder = template.holder().id().to_string();
    template.drop_template().unwrap();
    drop(template);
    rt.container(&holder).unwrap().delete(true).unwrap();
    s.assert_clean(&holder);
}

#[test]
fn python_template_forks_instances_that_answer_with_its_state_and_diverge() {
    let mut s = python_sandbox("tpl");
    let (img, warm) = python_template_image(&mut s);
    let rt = runtime(&s);
    let tracer = Tracer::spawn("test-tracer").unwrap();
    let holder = format!("{}-holder", s.id);
    let (template, _) = Template::load(&rt, &tracer, "fn", &holder, &img, &s.bundle, None)
        .unwrap_or_else(|e| panic!("load: {e}"));
    let (log, f) = out_file(&s, "instances.log");

    let n = 50;
    let ids: Vec<String> = (0..n).map(|i| format!("{}-i{i}", s.id)).collect();
    let mut instances = Vec::new();
    for id in &ids {
        let forked = template
            .fork(&rt, id, stdio_to(&f))
            .unwrap_or_else(|e| panic!("fork {id}: {e}\n{}", fs::read_to_string(&log).unwrap()));
        instances.push(forked.container);
    }
    for (i, c) in instances.iter().enumerate() {
        let pid = pid_of(c);
        assert_eq!(rt.container(c.id()).unwrap().status(), Status::Running);
        // Instance i gets 1 + i % 3 requests: each counts from the
        // template's state on its own (a shared epoll set or socket would
        // send requests to the wrong instance or hang).
        let mut last = serde_json::Value::Null;
        for _ in 0..=i % 3 {
            last = json_body(&http_get_in_netns(pid, 8080, &format!("/{}", c.id())).unwrap());
        }
        assert_eq!(last["digest"], warm["digest"], "{}", c.id());
        assert_eq!(last["requests"], 2 + (i % 3) as u64, "{}: {last}", c.id());
        assert_eq!(last["pid"], 1, "an instance is its pid namespace's init");
        // Own namespaces: none shared with the template or another instance.
        for ns in ["pid_for_children", "net", "mnt", "uts", "ipc", "cgroup"] {
            let mine = fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
            let tpl = fs::read_link(format!("/proc/{}/ns/{ns}", template.pid().unwrap())).unwrap();
            assert_ne!(mine, tpl, "{ns} of {}", c.id());
        }
    }
    // The template never answered: its listening socket is not theirs.
    let tpl_pid = template.pid().unwrap();
    let (_, tpl_state) = fs::read_to_string(format!("/proc/{tpl_pid}/stat"))
        .unwrap()
        .rsplit_once(") ")
        .map(|(a, b)| (a.to_string(), b.chars().next().unwrap()))
        .unwrap();
    assert_eq!(tpl_state, 't', "the template stays stopped under ptrace");

    for c in instances {
        let id = c.id().to_string();
        c.delete(true).unwrap();
        s.assert_clean(&id);
    }
    unload(&rt, &s, template);
    assert!(
        cgroup_leftovers(&s.id).is_empty(),
        "{:?}",
        cgroup_leftovers(&s.id)
    );
}

#[test]
fn instances_outlive_their_template_and_bad_forks_are_refused() {
    let mut s = python_sandbox("tpldrop");
    let (img, warm) = python_template_image(&mut s);
    let rt = runtime(&s);
    let tracer = Tracer::spawn("test-tracer").unwrap();
    let holder = format!("{}-holder", s.id);
    let (template, _) = Template::load(&rt, &tracer, "fn", &holder, &img, &s.bundle, None).unwrap();
    let (_, f) = out_file(&s, "instances.log");

    // A bundle whose rootfs holds another python3.11 (one byte more):
    // refused by content, naming the file, leaving nothing behind.
    let other = bundle_with_other_python(&s, "other");
    let bad_id = format!("{}-bad", s.id);
    let err = fork_error(&template, &rt, &bad_id, other);
    assert!(
        err.to_string().contains("python3.11"),
        "the error names the differing file: {err}"
    );
    s.assert_clean(&bad_id);

    // Another LSM label than the template's: an instance keeps the
    // template's (it never execs), so it is refused, nothing left.
    let labelled = bundle_copy(&s, "labelled", |cfg| {
        cfg["process"]["apparmorProfile"] = "sprout-other".into();
    });
    let label_id = format!("{}-label", s.id);
    let err = fork_error(&template, &rt, &label_id, labelled);
    assert!(
        err.to_string().contains("differs from the template's"),
        "{err}"
    );
    s.assert_clean(&label_id);

    // A rootfs that cannot be built (a bind mount of a missing source):
    // the build runs beside the clone, so the child exists by then; it is
    // killed, the error names the mount, nothing is left, and the
    // template forks on (below).
    let missing = s.dir.path().join("no-such-dir");
    let unbuildable = bundle_copy(&s, "unbuildable", |cfg| {
        cfg["mounts"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(
                {"destination": "/mnt", "type": "bind", "source": missing, "options": ["bind"]}
            ))
    });
    let unbuildable_id = format!("{}-nomount", s.id);
    let err = fork_error(&template, &rt, &unbuildable_id, unbuildable);
    assert!(
        matches!(err, TemplateError::Rootfs { .. }) && err.to_string().contains("/mnt"),
        "the error names the mount: {err}"
    );
    s.assert_clean(&unbuildable_id);

    // An instance whose state cannot be saved (a full state root) is
    // killed before its cgroup is removed: nothing is left.
    let full = FullStateRoot::new(s.dir.path().join("full-root"));
    let full_rt = Runtime::builder()
        .root(&full.0)
        .init_binary(init_bin())
        .build()
        .unwrap();
    let full_id = format!("{}-full", s.id);
    let err = template.fork(&full_rt, &full_id, stdio_to(&f)).unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
    let cg = cgroup_leftovers(&full_id);
    assert!(cg.is_empty(), "cgroups left behind: {cg:?}");
    assert!(!full.0.join(&full_id).exists(), "state dir left behind");
    drop(full);

    // The same bundle content at another path is fine.
    let copy = bundle_copy(&s, "copy", |_| {});
    let ok_id = format!("{}-copy", s.id);
    let mut spec = stdio_to(&f);
    spec.bundle = Some(copy);
    let inst = template.fork(&rt, &ok_id, spec).unwrap().container;

    // A second instance, then the template goes: both keep answering.
    let id2 = format!("{}-two", s.id);
    let inst2 = template.fork(&rt, &id2, stdio_to(&f)).unwrap().container;
    let tpl_pid = template.pid().unwrap();
    template.drop_template().unwrap();
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(tpl_pid)));
    for c in [&inst, &inst2] {
        let r = json_body(&http_get_in_netns(pid_of(c), 8080, "/after").unwrap());
        assert_eq!(r["digest"], warm["digest"]);
        assert_eq!(r["requests"], 2);
    }
    // Forking from a dropped template is a clear error.
    match template.fork(&rt, &format!("{}-late", s.id), ForkSpec::default()) {
        Err(TemplateError::Gone(name)) => assert_eq!(name, "fn"),
        other => panic!("expected Gone, got {other:?}"),
    }
    s.assert_clean(&format!("{}-late", s.id));

    // An instance's exit status reaches the holder's record. (SIGKILL: an
    // instance is its pid namespace's init, which ignores signals it has
    // no handler for, as with runc.)
    let holder_dir = s.root.join(&holder);
    inst2.kill(libc::SIGKILL, false).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        sprout::snapshot::template::holder_exits(&holder_dir)
            .iter()
            .any(|&(_, st)| st == 128 + libc::SIGKILL)
    }));
    inst2.delete(true).unwrap();
    s.assert_clean(&id2);
    inst.delete(true).unwrap();
    s.assert_clean(&ok_id);
    unload(&rt, &s, template);
    assert!(
        cgroup_leftovers(&s.id).is_empty(),
        "{:?}",
        cgroup_leftovers(&s.id)
    );
}

/// A bundle directory `name` whose config is `s`'s, with the rootfs by
/// absolute path, edited by `edit`.
fn bundle_copy(s: &Sandbox, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = s.dir.path().join(name);
    fs::create_dir_all(&dir).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&fs::read(s.bundle.join("config.json")).unwrap()).unwrap();
    cfg["root"]["path"] = s.bundle.join("rootfs").to_str().unwrap().into();
    edit(&mut cfg);
    fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    dir
}

/// Forks `id` from `template` with `bundle`, expecting an error.
fn fork_error(template: &Template, rt: &Runtime, id: &str, bundle: PathBuf) -> TemplateError {
    let spec = ForkSpec {
        bundle: Some(bundle),
        ..Default::default()
    };
    template.fork(rt, id, spec).unwrap_err()
}

/// Runs `args` in `s` until `out` has a line starting with `ready`
/// (`lines` of them for the threaded program), checkpoints it to
/// `<dir>/image`, deletes it and drops the bundle's cgroupsPath.
fn program_image(s: &mut Sandbox, ready: impl Fn(&[String]) -> bool) -> PathBuf {
    let id = s.id.clone();
    let out = s.dir.path().join("out");
    assert!(
        sprout_to(s, &["run", "-d", "--bundle", s.bundle_str(), &id], &out).success(),
        "{}",
        stderr_of(&out)
    );
    assert!(
        wait_until(Duration::from_secs(30), || ready(&lines(&out))),
        "{:?} {}",
        lines(&out),
        stderr_of(&out)
    );
    let img = s.dir.path().join("image");
    s.ok(&["checkpoint", "--image-path", img.to_str().unwrap(), &id]);
    s.ok(&["delete", "--force", &id]);
    s.config()["linux"]
        .as_object_mut()
        .unwrap()
        .remove("cgroupsPath");
    s.write_config();
    img
}

#[test]
fn threaded_template_forks_with_its_threads_in_blocking_syscalls() {
    let mut s = Sandbox::new("tplthr");
    with_usr(&mut s);
    fs::copy(
        program("threads", false),
        s.bundle.join("rootfs/bin/threads"),
    )
    .unwrap();
    s.set_args(&["/bin/threads"]);
    // Dumped with the workers in futex wait, nanosleep and read, the main
    // thread in sigwaitinfo.
    let img = program_image(&mut s, |l| l.len() >= 3);
    let before = counters(lines(&s.dir.path().join("out")).last().unwrap());
    let rt = runtime(&s);
    let tracer = Tracer::spawn("test-tracer").unwrap();
    let holder = format!("{}-holder", s.id);
    let (template, _) =
        Template::load(&rt, &tracer, "thr", &holder, &img, &s.bundle, None).unwrap();
    let mut instances = Vec::new();
    for i in 0..10 {
        let (path, f) = out_file(&s, &format!("thr{i}.out"));
        let id = format!("{}-t{i}", s.id);
        let c = template.fork(&rt, &id, stdio_to(&f)).unwrap().container;
        instances.push((c, path));
    }
    for (c, path) in &instances {
        assert!(
            wait_until(Duration::from_secs(20), || lines(path).len() >= 3),
            "{} made no progress: {:?}",
            c.id(),
            lines(path)
        );
        let after = lines(path);
        let (first, last) = (counters(&after[0]), counters(after.last().unwrap()));
        // Every thread of every instance runs on from the template's state.
        for i in 0..4 {
            assert!(first[i] >= before[i], "{}: counter {i} went back", c.id());
            assert!(
                last[i] > first[i],
                "{}: counter {i} is stuck: {after:?}",
                c.id()
            );
        }
        assert_eq!(last[4], 1, "{}: the pending signal was lost", c.id());
        assert_eq!(last[5], 1, "{}: worker C's pending signal was lost", c.id());
        let tasks = fs::read_dir(format!("/proc/{}/task", pid_of(c)))
            .unwrap()
            .count();
        assert_eq!(tasks, 4, "{}: main and three workers", c.id());
    }
    for (c, _) in instances {
        let id = c.id().to_string();
        c.delete(true).unwrap();
        s.assert_clean(&id);
    }
    unload(&rt, &s, template);
    assert!(
        cgroup_leftovers(&s.id).is_empty(),
        "{:?}",
        cgroup_leftovers(&s.id)
    );
}

/// The last `report` line of `path`, as numbers, once there is one.
fn report_of(path: &std::path::Path) -> Vec<i64> {
    assert!(
        wait_until(Duration::from_secs(20), || lines(path)
            .iter()
            .any(|l| l.starts_with("report"))),
        "no report: {:?}",
        lines(path)
    );
    let l = lines(path)
        .into_iter()
        .rfind(|l| l.starts_with("report"))
        .unwrap();
    l.split_whitespace()
        .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.parse().unwrap()))
        .collect()
}

#[test]
fn instances_have_fork_memory_semantics_and_their_own_memory_limits() {
    let mut s = Sandbox::new("tplmem");
    fs::copy(
        program("forkmem", true),
        s.bundle.join("rootfs/bin/forkmem"),
    )
    .unwrap();
    s.set_args(&["/bin/forkmem"]);
    let img = program_image(&mut s, |l| l.iter().any(|l| l == "ready wipe=1"));
    let rt = runtime(&s);
    let tracer = Tracer::spawn("test-tracer").unwrap();
    let holder = format!("{}-holder", s.id);
    let (template, _) =
        Template::load(&rt, &tracer, "mem", &holder, &img, &s.bundle, None).unwrap();

    let limit = |bytes: i64| -> oci_spec::runtime::LinuxResources {
        serde_json::from_value(serde_json::json!({"memory": {"limit": bytes}})).unwrap()
    };
    let mut forked = Vec::new();
    for (name, bytes) in [("small", 32 << 20), ("large", 256 << 20)] {
        let (path, f) = out_file(&s, &format!("{name}.out"));
        let mut spec = stdio_to(&f);
        spec.resources = Some(limit(bytes));
        let id = format!("{}-{name}", s.id);
        forked.push((template.fork(&rt, &id, spec).unwrap().container, path));
    }
    for (c, path) in &forked {
        c.kill(libc::SIGUSR1, false).unwrap();
        let r = report_of(path);
        // normal, wipe_zero, wf, dp, dontneed_zero, child_wipe_zero
        assert_eq!(
            r,
            [1, 1, 1, 1, 1, 1],
            "{}: fork semantics (template pages shared copy-on-write, wipe-on-fork zero, flags kept, MADV_DONTNEED reads zeros)",
            c.id()
        );
    }
    // A second report: the first instance's MADV_DONTNEED and writes did
    // not reach the other (nor the template).
    let (c, path) = &forked[1];
    c.kill(libc::SIGUSR1, false).unwrap();
    assert!(wait_until(Duration::from_secs(20), || lines(path)
        .iter()
        .filter(|l| l.starts_with("report"))
        .count()
        == 2));
    assert_eq!(report_of(path)[0], 1);

    // 64 MiB more: over the small instance's 32 MiB, under the large one's.
    let holder_dir = s.root.join(&holder);
    for (c, _) in &forked {
        c.kill(libc::SIGUSR2, false).unwrap();
    }
    let (small, large) = (&forked[0], &forked[1]);
    assert!(
        wait_until(Duration::from_secs(20), || lines(&large.1)
            .iter()
            .any(|l| l == "allocated")),
        "{:?}",
        lines(&large.1)
    );
    assert!(
        wait_until(Duration::from_secs(20), || rt
            .container(small.0.id())
            .unwrap()
            .status()
            == Status::Stopped),
        "the small instance was not stopped by its limit"
    );
    assert!(!lines(&small.1).iter().any(|l| l == "allocated"));
    assert!(wait_until(Duration::from_secs(10), || {
        sprout::snapshot::template::holder_exits(&holder_dir)
            .iter()
            .any(|&(_, st)| st == 128 + libc::SIGKILL)
    }));
    assert_eq!(
        rt.container(large.0.id()).unwrap().status(),
        Status::Running
    );

    for (c, _) in forked {
        let id = c.id().to_string();
        c.delete(true).unwrap();
        s.assert_clean(&id);
    }
    unload(&rt, &s, template);
    assert!(
        cgroup_leftovers(&s.id).is_empty(),
        "{:?}",
        cgroup_leftovers(&s.id)
    );
}

#[test]
fn a_process_with_shared_memory_cannot_be_a_template() {
    let mut s = Sandbox::new("tplshm");
    fs::copy(program("memsem", true), s.bundle.join("rootfs/bin/memsem")).unwrap();
    s.set_args(&["/bin/memsem"]);
    let img = program_image(&mut s, |l| l.iter().any(|l| l == "memsem ready"));
    let rt = runtime(&s);
    let tracer = Tracer::spawn("test-tracer").unwrap();
    let holder = format!("{}-holder", s.id);
    match Template::load(&rt, &tracer, "shm", &holder, &img, &s.bundle, None) {
        Err(e @ TemplateError::SharedMemory { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("MAP_SHARED") && m.contains("fork would share"),
                "{m}"
            );
        }
        other => panic!("expected SharedMemory, got {other:?}"),
    }
    s.assert_clean(&holder);
}

#[test]
fn a_process_with_memory_kept_from_fork_cannot_be_a_template() {
    let mut s = python_sandbox("tpldf");
    s.set_args(&[
        "/usr/bin/python3",
        "-c",
        "import mmap, time\nm = mmap.mmap(-1, 1 << 16)\nm.madvise(mmap.MADV_DONTFORK)\nprint('dontfork ready', flush=True)\ntime.sleep(3600)",
    ]);
    let img = program_image(&mut s, |l| l.iter().any(|l| l == "dontfork ready"));
    let rt = runtime(&s);
    let tracer = Tracer::spawn("test-tracer").unwrap();
    let holder = format!("{}-holder", s.id);
    match Template::load(&rt, &tracer, "df", &holder, &img, &s.bundle, None) {
        Err(e @ TemplateError::DontFork { .. }) => {
            assert!(e.to_string().contains("MADV_DONTFORK"), "{e}");
        }
        other => panic!("expected DontFork, got {other:?}"),
    }
    s.assert_clean(&holder);
}

#[test]
fn an_instance_is_a_container_like_any_other() {
    let mut s = python_sandbox("tplctr");
    let (img, warm) = python_template_image(&mut s);
    // The image was taken with an 8 MiB stack limit; the bundle the
    // template loads into allows less, and sprout cannot raise a hard limit
    // (no CAP_SYS_RESOURCE): the holder and the instances get the bundle's.
    s.config()["process"]["rlimits"] = serde_json::json!([
        {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
        {"type": "RLIMIT_STACK", "hard": 6291456, "soft": 4194304}
    ]);
    s.config()["root"]["readonly"] = serde_json::json!(true);
    s.write_config();
    let rt = runtime(&s);
    let tracer = Tracer::spawn("test-tracer").unwrap();
    let holder = format!("{}-holder", s.id);
    let (template, _) = Template::load(&rt, &tracer, "fn", &holder, &img, &s.bundle, None).unwrap();
    // The instance's bundle asks for lower limits than the template's:
    // it gets its own, not the ones it inherited.
    s.config()["process"]["rlimits"][0] =
        serde_json::json!({"type": "RLIMIT_NOFILE", "hard": 800, "soft": 512});
    s.config()["process"]["oomScoreAdj"] = serde_json::json!(200);
    s.config()["linux"]["sysctl"] = serde_json::json!({"kernel.msgmax": "9000"});
    s.write_config();
    let id = format!("{}-i", s.id);
    let spec = ForkSpec {
        bundle: Some(s.bundle.clone()),
        ..ForkSpec::default()
    };
    let c = template.fork(&rt, &id, spec).unwrap().container;
    let pid = pid_of(&c);
    assert_eq!(
        fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap()
            .trim(),
        "200"
    );
    // The CLI sees it: state, exec (in its namespaces: its hostname, its
    // own pid namespace), pause and resume, kill and delete.
    let state: serde_json::Value = serde_json::from_str(&s.ok(&["state", &id])).unwrap();
    assert_eq!(state["status"], "running");
    assert_eq!(state["pid"], pid_of(&c));
    assert_eq!(s.ok(&["exec", &id, "hostname"]).trim(), "sprout-test");
    // Its bundle's sysctl, in its own ipc namespace.
    assert_eq!(
        s.ok(&["exec", &id, "cat", "/proc/sys/kernel/msgmax"])
            .trim(),
        "9000"
    );
    let ps = s.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "echo $$; cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    assert!(ps.contains("python3 /app/function.py"), "{ps}");
    let limits = s.ok(&["exec", &id, "cat", "/proc/1/limits"]);
    assert!(
        limits
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["Max", "stack", "size", "4194304", "6291456", "bytes"]),
        "{limits}"
    );
    assert!(
        limits
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["Max", "open", "files", "512", "800", "files"]),
        "{limits}"
    );
    // The spec's read-only root, masked and read-only paths hold in the
    // instance as in a created container.
    let mounts = s.ok(&["exec", &id, "cat", "/proc/1/mountinfo"]);
    let options_of = |target: &str| -> Vec<String> {
        mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() > 5 && f[4] == target)
            .map(|f| f[5].to_string())
            .collect()
    };
    for target in ["/", "/proc/sys"] {
        let opts = options_of(target);
        assert!(
            opts.last().is_some_and(|o| o.split(',').any(|x| x == "ro")),
            "{target} is not read-only in the instance: {opts:?}\n{mounts}"
        );
    }
    assert!(!options_of("/proc/keys").is_empty(), "{mounts}");
    // Its mount namespace holds the rootfs and the spec's mounts, nothing
    // of the host's or the template's.
    for line in mounts.lines() {
        let target = line.split_whitespace().nth(4).unwrap_or("");
        assert!(
            target == "/"
                || ["/dev", "/proc", "/sys", "/usr"]
                    .iter()
                    .any(|p| target == *p || target.starts_with(&format!("{p}/"))),
            "{target} is mounted in the instance:\n{mounts}"
        );
    }
    let touch = s.ok(&["exec", &id, "sh", "-c", "touch /written 2>&1; echo rc=$?"]);
    assert!(touch.contains("Read-only file system"), "{touch}");
    s.ok(&["pause", &id]);
    assert_eq!(s.status(&id), "paused");
    s.ok(&["resume", &id]);
    let r = json_body(&http_get_in_netns(pid_of(&c), 8080, "/resumed").unwrap());
    assert_eq!(r["digest"], warm["digest"]);
    s.ok(&["kill", &id, "KILL"]);
    assert!(wait_until(Duration::from_secs(10), || s.status(&id) == "stopped"));
    s.ok(&["delete", &id]);
    s.assert_clean(&id);
    unload(&rt, &s, template);
    assert!(
        cgroup_leftovers(&s.id).is_empty(),
        "{:?}",
        cgroup_leftovers(&s.id)
    );
}

#[test]
fn a_bundle_naming_a_network_namespace_puts_instances_there() {
    use std::os::unix::fs::MetadataExt;
    let mut s = python_sandbox("tplnet");
    let (img, warm) = python_template_image(&mut s);
    let rt = runtime(&s);
    let tracer = Tracer::spawn("test-tracer").unwrap();
    let holder = format!("{}-holder", s.id);
    let (template, _) = Template::load(&rt, &tracer, "fn", &holder, &img, &s.bundle, None).unwrap();
    let netns = NamedNetns::add(&s.id);
    let ns_path = format!("/var/run/netns/{}", netns.0);
    let bundle_with = |dir: &str, path: &str| {
        let b = s.dir.path().join(dir);
        fs::create_dir_all(&b).unwrap();
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&fs::read(s.bundle.join("config.json")).unwrap()).unwrap();
        cfg["root"]["path"] = s.bundle.join("rootfs").to_str().unwrap().into();
        let ns = cfg["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
        ns.push(serde_json::json!({"type": "network", "path": path}));
        fs::write(b.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        b
    };
    let id = format!("{}-i", s.id);
    let c = template
        .fork(
            &rt,
            &id,
            ForkSpec {
                bundle: Some(bundle_with("joined", &ns_path)),
                ..Default::default()
            },
        )
        .unwrap()
        .container;
    let inode = |p: &str| fs::metadata(p).unwrap().ino();
    assert_eq!(
        inode(&format!("/proc/{}/ns/net", pid_of(&c))),
        inode(&ns_path)
    );
    let r = json_body(&http_get_in_netns(pid_of(&c), 8080, "/joined").unwrap());
    assert_eq!(r["digest"], warm["digest"]);
    c.delete(true).unwrap();
    s.assert_clean(&id);

    // A path that is not there: a clear error naming it, nothing left.
    let bad = format!("{}-bad", s.id);
    let err = template
        .fork(
            &rt,
            &bad,
            ForkSpec {
                bundle: Some(bundle_with("missing", "/var/run/netns/sprout-no-such-ns")),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("sprout-no-such-ns"), "{err}");
    s.assert_clean(&bad);
    unload(&rt, &s, template);
    drop(netns);
    assert!(
        cgroup_leftovers(&s.id).is_empty(),
        "{:?}",
        cgroup_leftovers(&s.id)
    );
}

/// A named network namespace (`ip netns`) with `lo` up, deleted on drop
/// (also when the test fails).
struct NamedNetns(String);

impl NamedNetns {
    fn add(name: &str) -> Self {
        let ip = |args: &[&str]| {
            assert!(
                std::process::Command::new("ip")
                    .args(args)
                    .status()
                    .unwrap()
                    .success(),
                "ip {args:?}"
            )
        };
        ip(&["netns", "add", name]);
        let ns = NamedNetns(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// Minor page faults of process `pid` so far (/proc/PID/stat field 10).
fn minflt(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(") ").unwrap();
    rest.split_whitespace().nth(7).unwrap().parse().unwrap()
}

/// Pages of `outer` not in `inner` (both write sets).
fn pages_missing(outer: &WriteSet, inner: &WriteSet) -> u64 {
    let pages = |w: &WriteSet| -> std::collections::BTreeSet<u64> {
        w.ranges()
            .iter()
            .flat_map(|r| (r.start..r.end).step_by(4096))
            .collect()
    };
    let have = pages(inner);
    pages(outer).iter().filter(|p| !have.contains(p)).count() as u64
}

fn stage_names(f: &sprout::snapshot::template::Forked) -> Vec<&'static str> {
    f.timings.stages.iter().map(|(n, _)| *n).collect()
}

#[test]
fn a_recorded_write_set_makes_later_forks_fault_less_and_they_still_diverge() {
    let mut s = python_sandbox("tplprof");
    let (img, warm) = python_template_image(&mut s);
    let rt = runtime(&s);
    let tracer = Tracer::spawn("test-tracer").unwrap();
    let holder = format!("{}-holder", s.id);
    let (template, _) = Template::load(&rt, &tracer, "fn", &holder, &img, &s.bundle, None).unwrap();
    let (_, f) = out_file(&s, "instances.log");

    // Without a profile: the first request's faults, then its write set.
    let plain = template
        .fork(&rt, &format!("{}-plain", s.id), stdio_to(&f))
        .unwrap();
    assert_eq!(plain.populated, Populated::default());
    assert!(!stage_names(&plain).contains(&"populate"));
    let pid = pid_of(&plain.container);
    let forked_only = WriteSet::record(pid, &template).unwrap();
    let before = minflt(pid);
    let r = json_body(&http_get_in_netns(pid, 8080, "/first").unwrap());
    let plain_faults = minflt(pid) - before;
    assert_eq!((&r["digest"], &r["requests"]), (&warm["digest"], &2.into()));
    let recorded = WriteSet::record(pid, &template).unwrap();
    eprintln!(
        "write set: {} pages in {} ranges ({} written by the fork itself); first request without a profile: {plain_faults} minor faults",
        recorded.pages(),
        recorded.ranges().len(),
        forked_only.pages()
    );
    assert!(!recorded.is_empty());
    for r in recorded.ranges() {
        assert!(
            r.start < r.end && r.start % 4096 == 0 && r.end % 4096 == 0,
            "{r:?}"
        );
    }
    assert!(
        recorded.pages() > forked_only.pages(),
        "the request wrote more than the fork's own steps"
    );
    assert_eq!(pages_missing(&forked_only, &recorded), 0, "writes only add");

    // Persisted and read back as sproutd will.
    let path = s.dir.path().join("write-set.json");
    fs::write(&path, serde_json::to_vec(&recorded).unwrap()).unwrap();
    let profile: WriteSet = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(profile, recorded);
    let profile = Arc::new(profile);

    // Two forks with the profile: every page of it is theirs before they
    // run (mapped exclusively, not shared with the template or each other).
    let with_profile = |name: &str| {
        let mut spec = stdio_to(&f);
        spec.populate = Some(profile.clone());
        let forked = template
            .fork(&rt, &format!("{}-{name}", s.id), spec)
            .unwrap();
        assert!(stage_names(&forked).contains(&"populate"));
        let p = forked.populated;
        assert_eq!(
            (p.pages, p.failed, p.skipped_pages),
            (profile.pages(), 0, 0),
            "{p:?}"
        );
        let own = WriteSet::record(pid_of(&forked.container), &template).unwrap();
        assert_eq!(
            pages_missing(&profile, &own),
            0,
            "{name} shares populated pages"
        );
        forked.container
    };
    let one = with_profile("one");
    let two = with_profile("two");

    // Its first request faults clearly less.
    let pid = pid_of(&one);
    let before = minflt(pid);
    let r = json_body(&http_get_in_netns(pid, 8080, "/first").unwrap());
    let profiled_faults = minflt(pid) - before;
    eprintln!("first request with the profile: {profiled_faults} minor faults");
    assert_eq!((&r["digest"], &r["requests"]), (&warm["digest"], &2.into()));
    assert!(
        profiled_faults * 2 < plain_faults,
        "{profiled_faults} faults with the profile, {plain_faults} without"
    );

    // The two diverge on their own from the template's state.
    for _ in 0..2 {
        json_body(&http_get_in_netns(pid, 8080, "/one").unwrap());
    }
    let r1 = json_body(&http_get_in_netns(pid, 8080, "/one").unwrap());
    let r2 = json_body(&http_get_in_netns(pid_of(&two), 8080, "/two").unwrap());
    assert_eq!((&r1["requests"], &r2["requests"]), (&5.into(), &2.into()));
    assert_eq!(r2["digest"], warm["digest"]);

    for c in [plain.container, one, two] {
        let id = c.id().to_string();
        c.delete(true).unwrap();
        s.assert_clean(&id);
    }
    unload(&rt, &s, template);
    assert!(
        cgroup_leftovers(&s.id).is_empty(),
        "{:?}",
        cgroup_leftovers(&s.id)
    );
}

#[test]
fn a_wrong_write_set_still_forks_a_working_instance() {
    let mut s = python_sandbox("tplbogus");
    let (img, warm) = python_template_image(&mut s);
    let rt = runtime(&s);
    let tracer = Tracer::spawn("test-tracer").unwrap();
    let holder = format!("{}-holder", s.id);
    let (template, _) = Template::load(&rt, &tracer, "fn", &holder, &img, &s.bundle, None).unwrap();
    let (_, f) = out_file(&s, "instances.log");

    // The template's maps: a read-only mapping, the heap, and a hole.
    let maps = fs::read_to_string(format!("/proc/{}/maps", template.pid().unwrap())).unwrap();
    let range = |l: &str| {
        let (a, b) = l
            .split_whitespace()
            .next()
            .unwrap()
            .split_once('-')
            .unwrap();
        (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        )
    };
    let readonly = maps
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("r--p"))
        .map(range)
        .unwrap();
    let heap = maps
        .lines()
        .find(|l| l.ends_with("[heap]"))
        .map(range)
        .unwrap();
    let lowest = maps.lines().map(range).map(|r| r.0).min().unwrap();
    assert!(lowest >= 0x20_0000, "a hole below the first mapping");
    let r = |start: u64, end: u64| PageRange { start, end };
    let mut ranges = vec![
        r(0x10_0000, 0x20_0000),                // nothing mapped
        r(readonly.0, readonly.1),              // read-only
        r(heap.0, heap.0 + 0x4000),             // 4 pages of the heap
        r(heap.1 - 0x1000, heap.1 + 0x10_0000), // the heap's last page and beyond it
    ];
    ranges.sort_by_key(|r| r.start);
    let bogus = WriteSet::from_ranges(ranges).unwrap();
    let mut spec = stdio_to(&f);
    spec.populate = Some(Arc::new(bogus.clone()));
    let id = format!("{}-i", s.id);
    let forked = template.fork(&rt, &id, spec).unwrap();
    let p = forked.populated;
    assert_eq!(p.failed, 0, "{p:?}");
    assert_eq!(p.pages, 5, "the heap's pages only: {p:?}");
    assert_eq!(p.pages + p.skipped_pages, bogus.pages(), "{p:?}");
    let pid = pid_of(&forked.container);
    for i in 0..3u64 {
        let r = json_body(&http_get_in_netns(pid, 8080, "/bogus").unwrap());
        assert_eq!(
            (&r["digest"], &r["requests"]),
            (&warm["digest"], &(2 + i).into())
        );
    }
    forked.container.delete(true).unwrap();
    s.assert_clean(&id);
    unload(&rt, &s, template);
    assert!(
        cgroup_leftovers(&s.id).is_empty(),
        "{:?}",
        cgroup_leftovers(&s.id)
    );
}
