//! Tests against the real kernel (need root). Every cgroup is created
//! relative to the test process's own cgroup and removed by a guard, also
//! when a test fails; every process a test starts is killed and reaped.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxHugepageLimitBuilder,
    LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

use super::*;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(tag: &str) -> String {
    format!(
        "sprout-test-{}-{}-{}",
        std::process::id(),
        tag,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A cgroup plus the processes a test started; both cleaned up on drop.
struct Guard {
    cg: Cgroup,
    children: Vec<Child>,
}

impl Guard {
    fn new(path: &str) -> Guard {
        let cg = Cgroup::create(&CgroupsPath::parse(path).unwrap()).unwrap();
        Guard {
            cg,
            children: Vec::new(),
        }
    }

    /// Starts `sh -c script` blocked on reading a line, moves it into the
    /// cgroup, then lets it run; returns its pid.
    fn spawn_in(&mut self, script: &str) -> i32 {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("read _ready; {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        self.cg.add_process(pid).unwrap();
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        self.children.push(child);
        pid
    }

    /// Takes the cgroup out, leaving a copy that removes nothing.
    fn take(&mut self) -> Cgroup {
        let keep = Cgroup::from_saved(&SavedCgroup {
            created: vec![],
            ..self.cg.to_saved()
        });
        std::mem::replace(&mut self.cg, keep)
    }

    fn child(&mut self, pid: i32) -> &mut Child {
        self.children
            .iter_mut()
            .find(|c| c.id() as i32 == pid)
            .unwrap()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let dirs = self.cg.created_dirs().to_vec();
        if let Err(e) = self.cg.clone().destroy() {
            eprintln!("cleanup: {e}");
        }
        for d in dirs {
            if d.exists() {
                eprintln!("cleanup: {} is still there", d.display());
            }
        }
    }
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
        .trim()
        .to_string()
}

fn own_dir(controllers: &[String]) -> PathBuf {
    let mounts = Mounts::get().unwrap();
    let own = OwnCgroups::read().unwrap();
    let m = mounts
        .v1
        .iter()
        .find(|m| m.controllers == controllers)
        .unwrap();
    layout::dir_in_mount(&m.mount_point, &m.root, own.v1_path(controllers).unwrap()).unwrap()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting until {what}");
}

fn proc_state(pid: i32) -> char {
    let stat = read(format!("/proc/{pid}/stat"));
    stat.rsplit_once(") ").unwrap().1.chars().next().unwrap()
}

#[test]
fn create_resolves_under_own_cgroup_and_destroy_removes_everything() {
    let name = unique("create");
    let cg = Cgroup::create(&CgroupsPath::parse(format!("{name}/inner")).unwrap()).unwrap();
    let guard = Guard {
        cg,
        children: vec![],
    };
    let cg = &guard.cg;
    let mounts = Mounts::get().unwrap();
    assert_eq!(cg.layout(), mounts.layout);
    assert_eq!(cg.v1_dirs().len(), mounts.v1.len());
    for d in cg.v1_dirs() {
        let want = own_dir(&d.controllers).join(&name).join("inner");
        assert_eq!(d.dir, want);
        assert!(d.dir.is_dir(), "{}", d.dir.display());
        assert!(cg.created_dirs().contains(&d.dir));
        assert!(
            cg.created_dirs()
                .contains(&d.dir.parent().unwrap().to_path_buf())
        );
    }
    // The memory hierarchy's own cgroup differs from the others here.
    if let Some(mem) = cg.v1_dir("memory") {
        let own = OwnCgroups::read().unwrap();
        let own_mem = own.v1_path(&["memory".to_string()]).unwrap();
        assert!(
            mem.to_string_lossy().contains(&*own_mem.to_string_lossy()),
            "{}",
            mem.display()
        );
    }
    if mounts.unified.is_some() {
        let u = cg.unified_dir().unwrap();
        assert!(u.is_dir());
        assert!(u.ends_with(format!("{name}/inner")));
    }
    // cpuset cgroups got cpus/mems from their parent so tasks can join.
    if let Some(cs) = cg.v1_dir("cpuset") {
        assert!(!read(cs.join("cpuset.cpus")).is_empty());
        assert!(!read(cs.join("cpuset.mems")).is_empty());
    }
    // Parents first in the creation record.
    let created = cg.created_dirs().to_vec();
    for (i, d) in created.iter().enumerate() {
        if let Some(p) = d.parent()
            && let Some(j) = created.iter().position(|x| x == p)
        {
            assert!(j < i);
        }
    }
    let mut guard = guard;
    let cg = guard.take();
    cg.destroy().unwrap();
    for d in &created {
        assert!(!d.exists(), "{} survived destroy", d.display());
    }
}

#[test]
fn existing_parent_is_not_removed() {
    let parent = unique("parent");
    let first = Guard::new(&parent);
    let child = Cgroup::create(&CgroupsPath::parse(format!("{parent}/c")).unwrap()).unwrap();
    // Only the leaf was created by the second cgroup.
    assert_eq!(child.created_dirs().len(), first.cg.created_dirs().len());
    assert!(child.created_dirs().iter().all(|d| d.ends_with("c")));
    child.destroy().unwrap();
    for d in first.cg.created_dirs() {
        assert!(d.is_dir());
    }
}

#[test]
fn bad_paths_create_nothing() {
    assert!(matches!(
        CgroupsPath::parse("a/../b"),
        Err(CgroupError::InvalidPath { .. })
    ));
    assert!(matches!(
        CgroupsPath::parse("system.slice:sprout:x"),
        Err(CgroupError::SystemdPathUnsupported { .. })
    ));
    // Valid syntax, but the second component collides with a file of the
    // new cgroup: creation fails after the first mkdir and is rolled back.
    let name = unique("bad");
    let err =
        Cgroup::create(&CgroupsPath::parse(format!("{name}/cgroup.procs")).unwrap()).unwrap_err();
    assert!(matches!(err, CgroupError::Mkdir { .. }), "{err}");
    let mounts = Mounts::get().unwrap();
    for m in &mounts.v1 {
        assert!(
            !own_dir(&m.controllers).join(&name).exists(),
            "{name} left in {}",
            m.mount_point.display()
        );
    }
    if let Some(u) = &mounts.unified {
        assert!(!u.mount_point.join(&name).exists());
    }
}

fn limits(with_hugetlb: bool) -> LinuxResources {
    let mut b = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 << 20)
                .swap(64 << 20)
                .reservation(32 << 20)
                .build()
                .unwrap(),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(20_000)
                .period(100_000u64)
                .cpus("0")
                .mems("0")
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(32).build().unwrap());
    if with_hugetlb && Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists() {
        b = b.hugepage_limits(vec![
            LinuxHugepageLimitBuilder::default()
                .page_size("2MB")
                .limit(4 << 20)
                .build()
                .unwrap(),
        ]);
    }
    b.build().unwrap()
}

#[test]
fn apply_writes_limits_and_update_reorders_memory() {
    let g = Guard::new(&unique("apply"));
    let cg = &g.cg;
    // hugetlb through the unified hierarchy enables +hugetlb in its base;
    // undo that afterwards if it was not there before.
    let base = cg.to_saved().unified_base;
    let had_hugetlb = base.as_ref().map(|b| {
        read(b.join("cgroup.subtree_control"))
            .split(' ')
            .any(|c| c == "hugetlb")
    });
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cg.apply(&limits(true)).unwrap();
        let mem = cg.v1_dir("memory").unwrap();
        assert_eq!(
            read(mem.join("memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            read(mem.join("memory.memsw.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            read(mem.join("memory.soft_limit_in_bytes")),
            (32u64 << 20).to_string()
        );
        let cpu = cg.v1_dir("cpu").unwrap();
        assert_eq!(read(cpu.join("cpu.shares")), "512");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "20000");
        assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(cg.v1_dir("cpuset").unwrap().join("cpuset.cpus")), "0");
        assert_eq!(read(cg.v1_dir("pids").unwrap().join("pids.max")), "32");
        if Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists() {
            let dir = cg.v1_dir("hugetlb").or(cg.unified_dir()).unwrap();
            let file = if cg.v1_dir("hugetlb").is_some() {
                "hugetlb.2MB.limit_in_bytes"
            } else {
                "hugetlb.2MB.max"
            };
            assert_eq!(read(dir.join(file)), (4u64 << 20).to_string());
            let st = cg.stats().unwrap();
            assert!(st.hugetlb.contains_key("2MB"), "{:?}", st.hugetlb);
        }
        // update: raise both (memsw must go first), then lower both (limit first).
        let update = |limit: i64, swap: i64| {
            let r = LinuxResourcesBuilder::default()
                .memory(
                    LinuxMemoryBuilder::default()
                        .limit(limit)
                        .swap(swap)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap();
            cg.apply(&r).unwrap();
            assert_eq!(read(mem.join("memory.limit_in_bytes")), limit.to_string());
            assert_eq!(
                read(mem.join("memory.memsw.limit_in_bytes")),
                swap.to_string()
            );
        };
        update(256 << 20, 512 << 20);
        update(32 << 20, 32 << 20);
        // Period below the current quota's ratio, and a new quota: period is
        // retried after quota if the kernel refuses it first.
        let r = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(5_000)
                    .period(10_000u64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        cg.apply(&r).unwrap();
        assert_eq!(read(cpu.join("cpu.cfs_period_us")), "10000");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "5000");
        // Bad input is refused before anything is written.
        let bad = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .swap(16 << 20)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        assert!(matches!(
            cg.apply(&bad),
            Err(CgroupError::InvalidResource { .. })
        ));
        assert_eq!(
            read(mem.join("memory.limit_in_bytes")),
            (32u64 << 20).to_string()
        );
    }));
    if let (Some(base), Some(false)) = (base, had_hugetlb) {
        drop(g);
        let _ = std::fs::write(base.join("cgroup.subtree_control"), "-hugetlb");
    }
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn processes_freeze_thaw_and_kill() {
    let mut g = Guard::new(&unique("procs"));
    let pid = g.spawn_in("exec /bin/sleep 100");
    assert!(g.cg.procs().unwrap().contains(&pid));
    for d in g.cg.v1_dirs() {
        assert!(
            read(d.dir.join("cgroup.procs"))
                .lines()
                .any(|l| l == pid.to_string()),
            "{}",
            d.dir.display()
        );
    }
    if let Some(u) = g.cg.unified_dir() {
        assert!(
            read(u.join("cgroup.procs"))
                .lines()
                .any(|l| l == pid.to_string())
        );
    }
    // /proc/PID/cgroup agrees.
    let own = read(format!("/proc/{pid}/cgroup"));
    assert!(
        own.lines().all(|l| l.ends_with(
            g.cg.created_dirs()[0]
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
        )),
        "{own}"
    );

    g.cg.freeze().unwrap();
    assert!(g.cg.is_frozen().unwrap());
    if let Some(fz) = g.cg.v1_dir("freezer") {
        assert_eq!(read(fz.join("freezer.state")), "FROZEN");
    }
    g.cg.thaw().unwrap();
    assert!(!g.cg.is_frozen().unwrap());
    wait_until("sleep runs again", || proc_state(pid) == 'S');

    if let Some(u) = g.cg.unified_dir().map(Path::to_path_buf) {
        g.cg.freeze_unified(true).unwrap();
        assert!(
            read(u.join("cgroup.events"))
                .lines()
                .any(|l| l == "frozen 1")
        );
        g.cg.freeze_unified(false).unwrap();
        assert!(
            read(u.join("cgroup.events"))
                .lines()
                .any(|l| l == "frozen 0")
        );
    }

    g.cg.kill_all(libc::SIGKILL).unwrap();
    let status = g.child(pid).wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    wait_until("the cgroup is empty", || g.cg.procs().unwrap().is_empty());
}

#[test]
fn kill_all_without_cgroup_kill_freezes_and_signals() {
    let mut g = Guard::new(&unique("kill-v1"));
    // A v1-only view of the same cgroup (as on a host without cgroup2).
    let mut s = g.cg.to_saved();
    s.unified = None;
    s.created.clear();
    let v1 = Cgroup::from_saved(&s);
    let a = g.spawn_in("exec /bin/sleep 100");
    let b = g.spawn_in("exec /bin/sleep 100");
    v1.kill_all(libc::SIGTERM).unwrap();
    assert_eq!(g.child(a).wait().unwrap().signal(), Some(libc::SIGTERM));
    assert_eq!(g.child(b).wait().unwrap().signal(), Some(libc::SIGTERM));
    let c = g.spawn_in("trap '' TERM; exec /bin/sleep 100");
    v1.kill_all(libc::SIGKILL).unwrap();
    assert_eq!(g.child(c).wait().unwrap().signal(), Some(libc::SIGKILL));
    if let Some(fz) = v1.v1_dir("freezer") {
        assert_eq!(read(fz.join("freezer.state")), "THAWED");
    }
}

#[test]
fn destroy_right_after_kill_waits_for_exit() {
    let mut g = Guard::new(&unique("destroy"));
    g.spawn_in("exec /bin/sleep 100");
    g.spawn_in("/bin/sleep 100 & /bin/sleep 100 & wait");
    wait_until("all three sleep", || g.cg.procs().unwrap().len() >= 4);
    g.cg.kill_all(libc::SIGKILL).unwrap();
    let dirs = g.cg.created_dirs().to_vec();
    let cg = g.take();
    cg.destroy().unwrap();
    for d in dirs {
        assert!(!d.exists());
    }
}

#[test]
fn saved_state_reopens_the_cgroup() {
    let mut g = Guard::new(&unique("saved"));
    let pid = g.spawn_in("exec /bin/sleep 100");
    let json = serde_json::to_string(&g.cg.to_saved()).unwrap();
    let reopened = Cgroup::from_saved(&serde_json::from_str(&json).unwrap());
    assert_eq!(reopened, g.cg);
    assert!(reopened.procs().unwrap().contains(&pid));
    reopened.kill_all(libc::SIGKILL).unwrap();
    assert_eq!(g.child(pid).wait().unwrap().signal(), Some(libc::SIGKILL));
}

#[test]
fn stats_report_usage() {
    let mut g = Guard::new(&unique("stats"));
    g.cg.apply(&limits(false)).unwrap();
    let pid = g.spawn_in("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec /bin/sleep 100");
    wait_until("the busy loop is done", || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    let st = g.cg.stats().unwrap();
    assert!(st.cpu.usage.total > 0, "{st:?}");
    assert!(st.cpu.usage.user + st.cpu.usage.kernel > 0, "{st:?}");
    assert!(!st.cpu.usage.percpu.is_empty());
    assert!(st.memory.usage.usage > 0);
    assert_eq!(st.memory.usage.limit, 64 << 20);
    assert_eq!(st.memory.swap.limit, 64 << 20);
    assert!(!st.memory.raw.is_empty());
    assert_eq!(st.pids.current, 1);
    assert_eq!(st.pids.limit, 32);
    let json = serde_json::to_value(&st).unwrap();
    assert!(json["cpu"]["usage"]["total"].as_u64().unwrap() > 0);
}

#[test]
fn oom_kill_is_reported() {
    let mut g = Guard::new(&unique("oom"));
    let r = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(32 << 20)
                .swap(32 << 20)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    g.cg.apply(&r).unwrap();
    let mut w = g.cg.oom_watcher().unwrap();
    assert_eq!(w.oom_kill_count().unwrap(), 0);
    assert_eq!(w.wait(Some(Duration::from_millis(20))).unwrap(), None);
    let pid = g.spawn_in("exec /usr/bin/python3 -c 'b = bytearray(256 << 20)'");
    let ev = w.wait(Some(Duration::from_secs(30))).unwrap();
    assert!(matches!(ev, Some(OomEvent::Oom { .. })), "{ev:?}");
    let status = g.child(pid).wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    wait_until("the kill is counted", || w.oom_kill_count().unwrap() >= 1);
    assert!(g.cg.stats().unwrap().memory.oom_kill >= 1);
}

/// clone3 with CLONE_INTO_CGROUP and the fd from `unified_dir_fd`.
#[test]
fn clone_into_cgroup_with_unified_fd() {
    let g = Guard::new(&unique("clone3"));
    let Some(fd) = g.cg.try_unified_dir_fd().unwrap() else {
        return;
    };
    use crate::spawn::{CLONE_INTO_CGROUP, CloneArgs};
    use std::os::fd::AsRawFd;
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: fd.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM forks; the child only calls pause(2)
    // (async-signal-safe) until the parent kills it.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        loop {
            // SAFETY: pause has no preconditions.
            unsafe { libc::pause() };
        }
    }
    assert!(pid > 0, "clone3: {}", std::io::Error::last_os_error());
    let pid = pid as i32;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let in_cgroup = read_procs(g.cg.unified_dir().unwrap())
        .unwrap_or_default()
        .contains(&pid);
    // SAFETY: killing and reaping the child this test created.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    let leaf =
        g.cg.unified_dir()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
    assert!(in_cgroup, "{cgroup}");
    assert!(
        cgroup
            .lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&leaf)),
        "{cgroup}"
    );
}

fn dev_rule(
    allow: bool,
    major: i64,
    minor: i64,
    access: &str,
) -> oci_spec::runtime::LinuxDeviceCgroup {
    LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .typ(LinuxDeviceType::C)
        .major(major)
        .minor(minor)
        .access(access)
        .build()
        .unwrap()
}

fn devices(rules: Vec<oci_spec::runtime::LinuxDeviceCgroup>) -> LinuxResources {
    let deny_all = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .unwrap();
    let mut all = vec![deny_all];
    all.extend(rules);
    LinuxResourcesBuilder::default()
        .devices(all)
        .build()
        .unwrap()
}

fn run_probe(g: &mut Guard) -> String {
    let pid = g.spawn_in(
        "if head -c1 /dev/null; then echo null-ok; else echo null-denied; fi; \
         if head -c1 /dev/zero >/dev/null; then echo zero-ok; else echo zero-denied; fi",
    );
    let child = g.child(pid);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child.wait().unwrap();
    out
}

#[test]
fn v1_device_rules() {
    let mut g = Guard::new(&unique("dev1"));
    if g.cg.v1_dir("devices").is_none() {
        return;
    }
    let mut s = g.cg.to_saved();
    s.unified = None; // keep the v2 filter out of this test
    s.created.clear();
    let v1 = Cgroup::from_saved(&s);
    v1.apply(&devices(vec![dev_rule(true, 1, 3, "rwm")]))
        .unwrap();
    let list = read(v1.v1_dir("devices").unwrap().join("devices.list"));
    assert_eq!(list, "c 1:3 rwm");
    assert_eq!(run_probe(&mut g), "null-ok\nzero-denied\n");
}

/// The cgroup2 device filter, on a v2 view of the unified directory (on a
/// hybrid host a device program attaches to any cgroup2 directory).
#[test]
fn v2_device_filter() {
    let mut g = Guard::new(&unique("dev2"));
    let Some(u) = g.cg.unified_dir().map(Path::to_path_buf) else {
        return;
    };
    let v2 = Cgroup::from_saved(&SavedCgroup {
        layout: Layout::V2,
        v1: vec![],
        unified: Some(u.clone()),
        unified_base: g.cg.to_saved().unified_base,
        created: vec![],
    });
    v2.apply(&devices(vec![dev_rule(true, 1, 3, "rwm")]))
        .unwrap();
    assert_eq!(devices::attached_count(&u).unwrap(), 1);
    assert_eq!(run_probe(&mut g), "null-ok\nzero-denied\n");
    // Update replaces the program (still one attached).
    v2.apply(&devices(vec![
        dev_rule(true, 1, 3, "rwm"),
        dev_rule(true, 1, 5, "r"),
    ]))
    .unwrap();
    assert_eq!(devices::attached_count(&u).unwrap(), 1);
    assert_eq!(run_probe(&mut g), "null-ok\nzero-ok\n");
    // Write access to /dev/null denied by a later rule.
    v2.apply(&devices(vec![
        dev_rule(true, 1, 3, "rwm"),
        dev_rule(false, 1, 3, "w"),
    ]))
    .unwrap();
    let pid = g.spawn_in("if echo x > /dev/null; then echo w-ok; else echo w-denied; fi");
    let child = g.child(pid);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child.wait().unwrap();
    assert_eq!(out, "w-denied\n");
}

/// cgroup.freeze / cgroup.kill / procs through a v2 view.
#[test]
fn v2_view_freeze_and_kill() {
    let mut g = Guard::new(&unique("v2view"));
    let Some(u) = g.cg.unified_dir().map(Path::to_path_buf) else {
        return;
    };
    let v2 = Cgroup::from_saved(&SavedCgroup {
        layout: Layout::V2,
        v1: vec![],
        unified: Some(u),
        unified_base: None,
        created: vec![],
    });
    let pid = g.spawn_in("exec /bin/sleep 100");
    assert_eq!(v2.procs().unwrap(), vec![pid]);
    v2.freeze().unwrap();
    assert!(v2.is_frozen().unwrap());
    v2.thaw().unwrap();
    assert!(!v2.is_frozen().unwrap());
    v2.kill_all(libc::SIGKILL).unwrap();
    assert_eq!(g.child(pid).wait().unwrap().signal(), Some(libc::SIGKILL));
}
