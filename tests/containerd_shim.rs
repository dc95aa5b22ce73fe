//! sprout's own containerd shim, `containerd-shim-sprout-v2`
//! (`io.containerd.sprout.v2`), driven by a real containerd 1.6 and `ctr`.
//!
//! Each test starts a private containerd (own root, state, socket, config;
//! the workspace's binaries first on its PATH, so it finds the shim),
//! imports a busybox image built here (an OCI layout, no registry), and
//! runs containers from it through containerd's overlayfs (or native)
//! snapshotter, whose mounts the shim makes. cgroups: a relative
//! `--cgroup` per container, below the test's own cgroup (containerd and
//! its shims inherit it).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use common::containerd::*;
use common::sproutd::{Sproutd, TIMEOUT};
use common::*;
use serde_json::{Value, json};
use sprout::shim::proto::{DrainBody, PrewarmBody};

const RUNTIME: &str = "io.containerd.sprout.v2";

fn shim_bin() -> PathBuf {
    let p = bin_dir().join("containerd-shim-sprout-v2");
    assert!(
        p.exists(),
        "{} is missing: build the workspace's binaries (cargo test --workspace does)",
        p.display()
    );
    p
}

/// The test image: busybox and a static counter (`/bin/counter MS`
/// prints `count N` every MS milliseconds), built once.
fn image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            busybox_image_tar(|rootfs| {
                fs::copy(program("counter", true), rootfs.join("bin/counter")).unwrap();
            })
        })
        .clone()
}

/// A private containerd with the test image.
fn containerd() -> Containerd {
    shim_bin();
    let c = Containerd::start();
    c.import(&image());
    c
}

/// `ctr run [opts] --runtime sprout ... <image> <id> <cmd...>`.
fn run_args(c: &Containerd, opts: &[&str], cgroup: &str, id: &str, cmd: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into()];
    a.extend(opts.iter().map(|s| s.to_string()));
    a.extend([
        "--runtime".into(),
        RUNTIME.into(),
        "--fifo-dir".into(),
        c.fifo_dir.display().to_string(),
        "--cgroup".into(),
        cgroup.into(),
        BUSYBOX_REF.into(),
        id.into(),
    ]);
    a.extend(cmd.iter().map(|s| s.to_string()));
    a
}

fn run_detached(c: &Containerd, opts: &[&str], cgroup: &str, id: &str, cmd: &[&str]) {
    let mut o = vec!["-d"];
    o.extend_from_slice(opts);
    c.ok(&run_args(c, &o, cgroup, id, cmd));
    c.wait_status(id, "RUNNING");
}

/// The sprout shims of this containerd.
fn sprout_shims(c: &Containerd) -> Vec<i32> {
    pids_of("containerd-shim-sprout-v2", &c.sock.to_string_lossy())
}

/// The runtime state the shims keep for namespace `default`.
fn runtime_state(c: &Containerd) -> PathBuf {
    c.state.join("sprout-shim/default/runtime")
}

/// Nothing of these containers is left: containerd's records, the
/// shim's runtime state, rootfs mounts, cgroups, processes, shims.
fn assert_clean(c: &Containerd, cgroups: &[&str]) {
    c.assert_no_containers(sprout_shims);
    let left = dir_entries(&runtime_state(c));
    assert!(left.is_empty(), "runtime state left behind: {left:?}");
    let tmp = c.dir.path().to_string_lossy().into_owned();
    let mounts: Vec<PathBuf> = sprout::runtime::mountinfo::read_self()
        .unwrap()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(&tmp))
        .collect();
    assert!(mounts.is_empty(), "mounts left behind: {mounts:?}");
    for cg in cgroups {
        assert_cgroup_clean(cg);
    }
}

#[test]
fn run_passes_output_stdin_exit_codes_and_errors() {
    let c = containerd();
    let (id, cg) = c.names("rm");
    let out = c.ctr(&run_args(&c, &["--rm"], &cg, &id, &OUTPUT_CMD));
    assert_output_run(&out);

    // stdin through containerd's fifo and the shim's pipe, to EOF.
    let (id2, cg2) = c.names("stdin");
    let out = c.ctr_stdin(
        &run_args(
            &c,
            &["--rm"],
            &cg2,
            &id2,
            &["/bin/sh", "-c", "cat; echo done"],
        ),
        Some("line1\nline2\n"),
    );
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "line1\nline2\ndone\n");

    // No stdio at all; the native snapshotter's bind mount as rootfs.
    let (id3, cg3) = c.names("null");
    let out = c.ctr(&run_args(
        &c,
        &["--rm", "--null-io", "--snapshotter", "native"],
        &cg3,
        &id3,
        &["/bin/sh", "-c", "echo x; exit 4"],
    ));
    assert_eq!(out.code(), Some(4), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "");

    // A process that cannot start: containerd gets the runtime's reason,
    // and nothing is left.
    let (id4, cg4) = c.names("bad");
    let out = c.ctr(&run_args(&c, &["--rm"], &cg4, &id4, &["/nonexistent"]));
    assert!(!out.success());
    assert!(out.stderr.contains("/nonexistent"), "{}", out.stderr);
    let _ = c.ctr(&["container", "delete", &id4]);
    assert_clean(&c, &[&cg, &cg2, &cg3, &cg4]);
}

#[test]
fn detached_task_exec_ps_pause_resume_metrics_kill_delete() {
    let c = containerd();
    let (id, cg) = c.names("det");
    run_detached(
        &c,
        &[],
        &cg,
        &id,
        &["/bin/sh", "-c", "trap 'exit 7' TERM; sleep 1000 & wait"],
    );
    let (pid, _) = c.task(&id).unwrap();
    assert!(pid > 0);
    // The rootfs the shim mounted is the snapshotter's overlay.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let rootfs = c.bundle(&id).join("rootfs");
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(&*rootfs.to_string_lossy()) && l.contains("overlay")),
        "no overlay on {}",
        rootfs.display()
    );

    // exec: output and exit code come back; a detached exec shows up in
    // ps with its exec id, and can be killed.
    c.assert_execs_work(&id, pid);

    // A failing exec is explained.
    let out = c.ctr(&c.exec_args(&[], &id, "e3", &["/nonexistent"]));
    assert!(!out.success());
    assert!(out.stderr.contains("/nonexistent"), "{}", out.stderr);

    c.pause(&id);
    c.resume(&id);

    // Metrics in containerd's cgroup v1 format (ctr decodes and prints them).
    let metrics = c.ok(&["task", "metrics", &id]);
    assert!(metrics.contains(&id), "{metrics}");
    assert!(metrics.contains("memory.usage_in_bytes"), "{metrics}");

    // SIGTERM (the default) reaches the init's trap: exit status 7.
    c.terminate_and_delete(&id, 7);
    assert_clean(&c, &[&cg]);
}

#[test]
fn kill_all_and_killing_paused_tasks() {
    let c = containerd();
    let (id, cg) = c.names("killall");
    run_detached(
        &c,
        &[],
        &cg,
        &id,
        &["/bin/sh", "-c", "sleep 1000 & sleep 1000 & wait"],
    );
    c.wait_process_count(&id, 3);
    c.kill_until_stopped(&["-a", "-s", "KILL"], &id);
    c.remove(&id);

    let (id2, cg2) = c.names("killpaused");
    run_detached(&c, &[], &cg2, &id2, &["/bin/sleep", "1000"]);
    c.pause(&id2);
    c.kill_until_stopped(&["-s", "KILL"], &id2);
    // A signal death is reported as 128 + the signal.
    let out = c.ctr(&["task", "delete", &id2]);
    assert!(out.success(), "{}", out.stderr);
    assert!(out.stderr.contains("exit code 137"), "{}", out.stderr);
    c.ok(&["container", "delete", &id2]);

    // A forced delete of a paused task.
    let (id3, cg3) = c.names("forcepaused");
    run_detached(&c, &[], &cg3, &id3, &["/bin/sleep", "1000"]);
    c.pause(&id3);
    c.ok(&["task", "delete", "-f", &id3]);
    c.ok(&["container", "delete", &id3]);
    assert_clean(&c, &[&cg, &cg2, &cg3]);
}

#[test]
fn terminals_for_run_and_exec() {
    let c = containerd();
    let (id, cg) = c.names("tty");
    let args = run_args(&c, &["--rm", "-t"], &cg, &id, &TTY_SIZE_CMD);
    assert_tty_run(&c, &args);

    let (id2, cg2) = c.names("ttyexec");
    run_detached(&c, &[], &cg2, &id2, &["/bin/sleep", "1000"]);
    assert_tty_exec(&c, &id2);
    c.kill_until_stopped(&["-s", "KILL"], &id2);
    c.remove(&id2);
    assert_clean(&c, &[&cg, &cg2]);
}

#[test]
fn containers_of_a_group_share_one_shim() {
    let c = containerd();
    let group = format!("io.sprout.group={}", unique_id("g"));
    let (a, cga) = c.names("grp-a");
    let (b, cgb) = c.names("grp-b");
    run_detached(
        &c,
        &["--annotation", &group],
        &cga,
        &a,
        &["/bin/sleep", "1000"],
    );
    run_detached(
        &c,
        &["--annotation", &group],
        &cgb,
        &b,
        &["/bin/sleep", "1000"],
    );
    let shims = sprout_shims(&c);
    assert_eq!(shims.len(), 1, "{shims:?}");
    assert_eq!(
        fs::read_to_string(c.bundle(&a).join("address")).unwrap(),
        fs::read_to_string(c.bundle(&b).join("address")).unwrap()
    );
    // A container outside the group gets a shim of its own.
    let (solo, cgs) = c.names("solo");
    run_detached(&c, &[], &cgs, &solo, &["/bin/sleep", "1000"]);
    assert_eq!(sprout_shims(&c).len(), 2, "{:?}", sprout_shims(&c));

    // Deleting one task (and containerd's `delete` action after it) leaves
    // the other running in the same shim.
    c.kill_until_stopped(&["-s", "KILL"], &a);
    c.remove(&a);
    assert!(sprout_shims(&c).contains(&shims[0]));
    let out = c.ctr(&c.exec_args(&[], &b, "x", &["/bin/echo", "still-here"]));
    assert_eq!(out.stdout, "still-here\n", "{}", out.stderr);
    for id in [&b, &solo] {
        c.ok(&["task", "kill", "-s", "KILL", id]);
        c.wait_status(id, "STOPPED");
        c.ok(&["task", "delete", id]);
        c.ok(&["container", "delete", id]);
    }
    assert_clean(&c, &[&cga, &cgb, &cgs]);
}

#[test]
fn a_killed_shim_is_cleaned_up_by_containerd() {
    let c = containerd();
    let (id, cg) = c.names("shimkill");
    run_detached(&c, &[], &cg, &id, &["/bin/sh", "-c", "sleep 1000 & wait"]);
    let shims = sprout_shims(&c);
    assert_eq!(shims.len(), 1, "{shims:?}");
    let address = fs::read_to_string(
        c.state
            .join("io.containerd.runtime.v2.task/default")
            .join(&id)
            .join("address"),
    )
    .unwrap();
    let socket = PathBuf::from(address.trim().trim_start_matches("unix://"));
    assert!(socket.exists(), "{}", socket.display());
    kill_pid(shims[0]);
    // containerd sees the connection drop, runs the shim's `delete`
    // action (which kills and removes the container and its mounts, and
    // the dead server's socket) and reports the task stopped.
    assert!(
        wait_until(STATE_TIMEOUT, || c
            .task(&id)
            .is_none_or(|(_, s)| s == "STOPPED")),
        "{:?}",
        c.task(&id)
    );
    let _ = c.ctr(&["task", "delete", &id]);
    c.ok(&["container", "delete", &id]);
    assert!(
        wait_until(STATE_TIMEOUT, || !socket.exists()),
        "{} left behind",
        socket.display()
    );
    assert_clean(&c, &[&cg]);
}

#[test]
fn tasks_survive_a_containerd_restart() {
    let mut c = containerd();
    let (id, cg) = c.names("restart");
    run_detached(&c, &[], &cg, &id, &["/bin/sleep", "1000"]);
    let (pid, _) = c.task(&id).unwrap();
    let shims = sprout_shims(&c);
    c.restart();
    // containerd reloads the task from its bundle and reaches the same
    // shim through `Connect`.
    c.wait_status(&id, "RUNNING");
    assert_eq!(c.task(&id).unwrap().0, pid);
    assert_eq!(sprout_shims(&c), shims);
    let out = c.ctr(&c.exec_args(&[], &id, "x", &["/bin/echo", "reconnected"]));
    assert_eq!(out.stdout, "reconnected\n", "{}", out.stderr);
    c.kill_until_stopped(&["-s", "KILL"], &id);
    c.remove(&id);
    assert_clean(&c, &[&cg]);
}

#[test]
fn the_delete_action_is_idempotent() {
    let c = Containerd::start();
    let bundle = c
        .dir
        .path()
        .join("state/io.containerd.runtime.v2.task/default/nothing");
    fs::create_dir_all(bundle.join("rootfs")).unwrap();
    for _ in 0..2 {
        let out = Command::new(shim_bin())
            .args(["-namespace", "default", "-address"])
            .arg(&c.sock)
            .args(["-id", "nothing", "-bundle"])
            .arg(&bundle)
            .arg("delete")
            .current_dir(&bundle)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A DeleteResponse: exit_status (field 2, varint) = 137.
        assert!(
            out.stdout.windows(3).any(|w| w == [0x10, 0x89, 0x01]),
            "{:?}",
            out.stdout
        );
    }
    let out = Command::new(shim_bin()).arg("bogus").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown action"));
}

#[test]
fn checkpoint_a_running_task_and_restore_it_under_a_new_name() {
    let c = containerd();
    let (id, cg) = c.names("ckpt");
    let log = c.dir.path().join("ckpt.log");
    let log_uri = format!("file://{}", log.display());
    run_detached(
        &c,
        &["--log-uri", &log_uri],
        &cg,
        &id,
        &["/bin/counter", "50"],
    );
    assert!(wait_until(STATE_TIMEOUT, || lines(&log).len() >= 3));
    // Pause, Checkpoint into containerd's temporary directory, Resume;
    // containerd stores the image in its content store.
    let image_ref = format!("localhost/ckpt-{id}:1");
    c.ok(&["container", "checkpoint", "--task", &id, &image_ref]);
    c.wait_status(&id, "RUNNING");
    let before = lines(&log).len();
    assert!(
        wait_until(STATE_TIMEOUT, || lines(&log).len() > before),
        "the checkpointed task did not run on"
    );
    let at_checkpoint = count_of(&lines(&log)[before - 1]);
    // The restored container gets the original's spec, cgroup included:
    // the original goes first.
    c.kill_until_stopped(&["-s", "KILL"], &id);
    c.remove(&id);

    // The restore: a new container from the image, its task created from
    // the checkpoint containerd unpacks.
    let (id2, _) = c.names("ckpt-r");
    let out = c.ctr(&["container", "restore", "--live", &id2, &image_ref]);
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    c.wait_status(&id2, "RUNNING");
    let (pid2, _) = c.task(&id2).unwrap();
    let cmdline = fs::read(format!("/proc/{pid2}/cmdline")).unwrap();
    assert!(cmdline.starts_with(b"/bin/counter"), "{cmdline:?}");
    // Its output (held in the stdio fifo since ctr detached) continues
    // from the checkpointed counter, not from 1.
    let attached = c.ctr_raw(&["task", "attach", &id2], Duration::from_secs(3));
    let first = attached
        .stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("count ")
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .unwrap_or_else(|| panic!("no output after the restore: {:?}", attached.stdout));
    assert!(
        first > 1 && first <= at_checkpoint + 1,
        "restored counter starts at {first}; checkpointed at or before {at_checkpoint}"
    );
    c.kill_until_stopped(&["-s", "KILL"], &id2);
    c.remove(&id2);
    assert_clean(&c, &[&cg]);
}

/// `ctr events` running in the background into a file, stopped by pid
/// when the test ends.
fn watch_events(c: &Containerd) -> PathBuf {
    let path = c.dir.path().join("events.txt");
    let child = c
        .ctr_cmd()
        .arg("events")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    c.on_drop(move || {
        let mut child = child;
        kill_pid(pid);
        let _ = child.wait();
    });
    // Subscribed once an event of ours shows up; one published before the
    // subscription is never seen, so probe again until one is.
    let subscribed = wait_until(STATE_TIMEOUT, || {
        let ns = unique_id("probe");
        c.ok(&["namespaces", "create", &ns]);
        let seen = wait_until(Duration::from_millis(500), || {
            fs::read_to_string(&path).unwrap_or_default().contains(&ns)
        });
        c.ok(&["namespaces", "remove", &ns]);
        seen
    });
    assert!(subscribed, "ctr events never showed a probe namespace");
    path
}

/// The topics of the task events about container `id`, in order.
fn topics_of(events: &Path, id: &str) -> Vec<String> {
    let quoted = format!("\"{id}\"");
    fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&quoted))
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("/tasks/"))
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn task_events_reach_containerd_in_order_oom_included() {
    let c = containerd();
    let events = watch_events(&c);
    let (id, cg) = c.names("ev");
    run_detached(&c, &[], &cg, &id, &["/bin/sleep", "1000"]);
    let out = c.ctr(&c.exec_args(&[], &id, "e1", &["/bin/true"]));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    c.pause(&id);
    c.resume(&id);
    c.kill_until_stopped(&["-s", "KILL"], &id);
    c.remove(&id);
    let want = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ];
    assert!(
        wait_until(STATE_TIMEOUT, || topics_of(&events, &id).len()
            >= want.len()),
        "{:?}",
        topics_of(&events, &id)
    );
    assert_eq!(topics_of(&events, &id), want);

    // A task over its memory limit: the OOM killer's kill is reported.
    let (id2, cg2) = c.names("oom");
    let out = c.ctr(&run_args(
        &c,
        &["--rm", "--memory-limit", "33554432"],
        &cg2,
        &id2,
        &[
            "/bin/sh",
            "-c",
            "a=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived",
        ],
    ));
    assert!(!out.stdout.contains("survived"), "{}", out.stdout);
    assert!(
        wait_until(STATE_TIMEOUT, || topics_of(&events, &id2)
            .iter()
            .any(|t| t == "/tasks/oom")),
        "{:?}",
        topics_of(&events, &id2)
    );
    assert_clean(&c, &[&cg, &cg2]);
}

// ---- template containers ----------------------------------------------

/// The sockets of a test's sproutd (the real template engine), for
/// containerd's environment: its shims inherit them.
fn sproutd_env(d: &Sproutd) -> [(&'static str, &Path); 2] {
    [
        ("SPROUTD_SOCKET", d.socket.as_path()),
        ("SPROUTD_SIDE_SOCKET", d.side.as_path()),
    ]
}

/// The image of template containers: it holds the function's files (a
/// fork in containerd's bundle checks its rootfs by content); Python
/// itself comes from the host's /usr, as in the function's own bundle.
fn function_image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            busybox_image_tar(|rootfs| {
                std::os::unix::fs::symlink("usr/lib", rootfs.join("lib")).unwrap();
                std::os::unix::fs::symlink("usr/lib64", rootfs.join("lib64")).unwrap();
                fs::create_dir_all(rootfs.join("usr")).unwrap();
                fs::create_dir_all(rootfs.join("app")).unwrap();
                fs::copy(
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/function.py"),
                    rootfs.join("app/function.py"),
                )
                .unwrap();
            })
        })
        .clone()
}

/// The asyncio Python server, checkpointed warm, registered in `d` under
/// a unique name; the name and the template's answer to `/warm`.
fn python_function(s: &Sandbox, d: &Sproutd) -> (String, Value) {
    let (image, warm) = python_image(s);
    let name = unique_id("py");
    let mut f = common::sproutd::function(&name, s);
    f.image = image;
    d.client()
        .add_function(&f)
        .unwrap_or_else(|e| panic!("add function: {e}\n{}", d.log_text()));
    (name, warm)
}

const USR_MOUNT: &str = "type=bind,src=/usr,dst=/usr,options=rbind:ro";
const FUNCTION_CMD: [&str; 3] = ["/usr/bin/python3", "/app/function.py", "8080"];

/// `ctr run -d` of a template container of `function` (`--cgroup ""`
/// leaves the spec without a cgroupsPath).
fn run_template(c: &Containerd, function: &str, opts: &[&str], cgroup: &str, id: &str) {
    let annotation = format!("io.sprout.function={function}");
    let mut o = vec!["--annotation", &annotation, "--mount", USR_MOUNT];
    o.extend_from_slice(opts);
    run_detached(c, &o, cgroup, id, &FUNCTION_CMD);
}

/// The shim's link of container `id` to its sproutd instance, from the
/// bundle: `{"instance", "function", "path"}`.
fn link_of(c: &Containerd, id: &str) -> Value {
    let path = c.bundle(id).join("sprout-instance.json");
    let text = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap()
}

fn instance_of(c: &Containerd, id: &str) -> String {
    link_of(c, id)["instance"].as_str().unwrap().to_string()
}

/// `linux.cgroupsPath` of the spec containerd wrote for task `id`.
fn bundle_cgroups_path(c: &Containerd, id: &str) -> Value {
    let spec: Value =
        serde_json::from_slice(&fs::read(c.bundle(id).join("config.json")).unwrap()).unwrap();
    spec["linux"]["cgroupsPath"].clone()
}

/// The answer of the instance whose init is `pid`.
fn ask(pid: i32, path: &str) -> Value {
    json_body(&http_get_in_netns(pid, 8080, path).unwrap())
}

/// `memory.limit_in_bytes` of the cgroup v1 memory controller's cgroup
/// of process `pid`.
fn memory_limit_of(pid: i32) -> String {
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cgroups
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        .unwrap_or_else(|| panic!("no memory cgroup: {cgroups}"));
    let file = Path::new("/sys/fs/cgroup/memory")
        .join(path.trim_start_matches('/'))
        .join("memory.limit_in_bytes");
    fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .to_string()
}

/// The function's pool instances in `state` (`frozen`, `idle`, `busy`).
fn pool_ids(d: &Sproutd, function: &str, state: &str) -> Vec<String> {
    let mut ids: Vec<String> = d
        .client()
        .function_pool(function)
        .unwrap()
        .instances
        .into_iter()
        .filter(|i| i.state == state)
        .map(|i| i.id)
        .collect();
    ids.sort();
    ids
}

/// The shim binary's `delete` action run by hand, as containerd runs it
/// after a task delete; it must succeed and answer a `DeleteResponse`.
fn delete_action(c: &Containerd, d: &Sproutd, id: &str) {
    let bundle = c.bundle(id);
    let out = Command::new(shim_bin())
        .args(["-namespace", "default", "-address"])
        .arg(&c.sock)
        .args(["-id", id, "-bundle"])
        .arg(&bundle)
        .arg("delete")
        .envs(sproutd_env(d))
        .current_dir(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.windows(3).any(|w| w == [0x10, 0x89, 0x01]),
        "{:?}",
        out.stdout
    );
}

/// The test's function goes: nothing but pool instances may be left in
/// sproutd (the containers' instances went with them), and then nothing
/// at all of the function, its template or its pool.
fn remove_function(s: &Sandbox, d: &Sproutd, function: &str) {
    let api = d.client();
    api.drain(function, &DrainBody { force: true }).unwrap();
    let left: Vec<String> = api.instances().unwrap().into_iter().map(|v| v.id).collect();
    assert!(left.is_empty(), "instances left in sproutd: {left:?}");
    api.remove_function(function).unwrap();
    common::sproutd::assert_holders_gone(d);
    common::sproutd::assert_clean(s, d);
}

#[test]
fn a_function_annotation_starts_a_fork_of_the_template_through_sproutd() {
    let s = python_sandbox("ctr-fn");
    let mut d = Sproutd::start_real(&s);
    let (function, warm) = python_function(&s, &d);
    let c = Containerd::start_with_env(&sproutd_env(&d));
    c.import(&function_image());
    let (id, cg) = c.names("fn");
    run_template(&c, &function, &[], &cg, &id);
    let (pid, _) = c.task(&id).unwrap();
    // ctr's spec names the container's cgroup, so the claim is a fresh
    // fork placed there (restoring the template first: nothing loaded it
    // yet), under an id sproutd chose and the shim mapped the container to.
    assert_eq!(bundle_cgroups_path(&c, &id), cg.as_str());
    let link = link_of(&c, &id);
    assert_eq!(link["path"], "restore", "{link}");
    assert_eq!(link["function"], function.as_str());
    let instance = instance_of(&c, &id);
    let view = d.client().instance(&instance).unwrap();
    assert_eq!(view.pid, pid);
    assert_eq!(
        view.annotations.get("io.sprout.containerd.bundle"),
        Some(&c.bundle(&id).display().to_string())
    );
    assert!(
        processes_in_cgroup_named(&cg).contains(&pid),
        "the instance runs in containerd's cgroup {cg}"
    );
    // The instance is sproutd's, forked from the warm template: it
    // answers at once, with the template's state.
    let r = ask(pid, "/from-ctr");
    assert_eq!(r["digest"], warm["digest"]);
    assert_eq!(r["requests"], 2, "the warm-up request plus this one");
    // exec, pause and resume work on it as on any task, through the
    // mapped id.
    let out = c.ctr(&c.exec_args(&[], &id, "x", &["/bin/cat", "/app/function.py"]));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("asyncio"), "{}", out.stdout);
    c.pause(&id);
    assert_eq!(d.client().instance(&instance).unwrap().status, "paused");
    c.resume(&id);
    assert_eq!(d.client().instance(&instance).unwrap().status, "running");
    c.kill_until_stopped(&["-s", "KILL"], &id);
    let out = c.ctr(&["task", "delete", &id]);
    assert!(out.stderr.contains("exit code 137"), "{}", out.stderr);
    c.ok(&["container", "delete", &id]);
    assert!(
        d.client().instance(&instance).is_err(),
        "instance left in sproutd"
    );

    // A shim killed under a running template container before it wrote
    // the link (as if it died between sproutd's answer and the write):
    // containerd's `delete` action finds the instance by the bundle
    // annotation and has sproutd remove it.
    let (id2, cg2) = c.names("fn-crash");
    run_template(&c, &function, &[], &cg2, &id2);
    let instance2 = instance_of(&c, &id2);
    fs::remove_file(c.bundle(&id2).join("sprout-instance.json")).unwrap();
    let shims = pids_of("containerd-shim-sprout-v2", &id2);
    assert_eq!(shims.len(), 1, "{shims:?}");
    kill_pid(shims[0]);
    assert!(
        wait_until(STATE_TIMEOUT, || d.client().instance(&instance2).is_err()),
        "sproutd still has {instance2}"
    );
    let _ = c.ctr(&["task", "delete", &id2]);
    c.ok(&["container", "delete", &id2]);

    // An unknown function: a clear error (at `Start`, from sproutd, before
    // anything runs), nothing left.
    let (id3, cg3) = c.names("fn-unknown");
    let out = c.ctr(&run_args(
        &c,
        &["--rm", "--annotation", "io.sprout.function=no-such-fn"],
        &cg3,
        &id3,
        &["/bin/true"],
    ));
    assert!(!out.success());
    assert!(out.stderr.contains("no-such-fn"), "{}", out.stderr);
    let _ = c.ctr(&["container", "delete", &id3]);
    // A function that admits other callers only: refused for a container
    // of containerd's `default` namespace, nothing started.
    let mut only_others = d.client().function(&function).unwrap().function;
    only_others.name = format!("{function}-others");
    only_others.callers = Some(vec!["k8s.io/team-a".into(), "other".into()]);
    d.client().add_function(&only_others).unwrap();
    let (id5, cg5) = c.names("fn-caller");
    let annotation = format!("io.sprout.function={}", only_others.name);
    let out = c.ctr(&run_args(
        &c,
        &["--rm", "--annotation", &annotation, "--mount", USR_MOUNT],
        &cg5,
        &id5,
        &FUNCTION_CMD,
    ));
    assert!(!out.success());
    assert!(
        out.stderr
            .contains("may not be started by caller \"default\""),
        "{}",
        out.stderr
    );
    let _ = c.ctr(&["container", "delete", &id5]);
    d.client().remove_function(&only_others.name).unwrap();
    assert!(d.client().instances().unwrap().is_empty());
    // The template lives on for the next fork.
    assert!(d.client().function(&function).unwrap().template.is_some());

    // sproutd crashes and restarts under a running template container:
    // the instance runs on (the new sproutd adopts it), the task stays
    // running in containerd, and its real exit status arrives when it
    // ends.
    let (id4, cg4) = c.names("fn-restart");
    run_template(&c, &function, &[], &cg4, &id4);
    let (pid4, _) = c.task(&id4).unwrap();
    d.kill9();
    d.spawn();
    assert!(wait_until(STATE_TIMEOUT, || d
        .client()
        .instance(&instance_of(&c, &id4))
        .is_ok_and(|v| v.adopted)));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.task(&id4), Some((pid4, "RUNNING".to_string())));
    assert_eq!(ask(pid4, "/after-restart")["digest"], warm["digest"]);
    c.kill_until_stopped(&["-s", "KILL"], &id4);
    let out = c.ctr(&["task", "delete", &id4]);
    assert!(out.stderr.contains("exit code 137"), "{}", out.stderr);
    c.ok(&["container", "delete", &id4]);
    assert!(d.client().instances().unwrap().is_empty());
    assert_clean(&c, &[&cg, &cg2, &cg3, &cg4, &cg5]);
    remove_function(&s, &d, &function);
}

#[test]
fn template_containers_take_warm_instances_only_when_their_spec_names_no_cgroup() {
    let s = python_sandbox("ctr-pool");
    let d = Sproutd::start_real(&s);
    let (function, warm) = python_function(&s, &d);
    let api = d.client();
    let r = api.prewarm(&function, &PrewarmBody { count: 3 }).unwrap();
    assert_eq!((r.forked, r.warm), (3, 3));
    let prewarmed = pool_ids(&d, &function, "frozen");
    assert_eq!(prewarmed.len(), 3);
    let c = Containerd::start_with_env(&sproutd_env(&d));
    c.import(&function_image());

    // containerd's default spec names the cgroup `/<namespace>/<id>`
    // (looked at without a task, which would make that cgroup at the
    // root of the hierarchy); `--cgroup X` names X; `--cgroup ""` none.
    let probe = unique_id("probe");
    c.ok(&["container", "create", BUSYBOX_REF, &probe]);
    let info: Value = serde_json::from_str(&c.ok(&["container", "info", &probe])).unwrap();
    assert_eq!(
        info["Spec"]["linux"]["cgroupsPath"],
        format!("/default/{probe}").as_str(),
        "{info}"
    );
    c.ok(&["container", "delete", &probe]);

    // Four at once in cgroups of their own (what ctr and CRI always ask
    // for): four fresh forks, each placed in its container's cgroup; the
    // warm instances stay in the pool, frozen.
    let forks: Vec<(String, String)> = (0..4).map(|i| c.names(&format!("fork{i}"))).collect();
    thread::scope(|sc| {
        for (id, cg) in &forks {
            let (c, function) = (&c, &function);
            sc.spawn(move || run_template(c, function, &[], cg, id));
        }
    });
    for (id, cg) in &forks {
        assert_eq!(bundle_cgroups_path(&c, id), cg.as_str());
        let link = link_of(&c, id);
        assert_eq!(link["path"], "fork", "{link}");
        let instance = instance_of(&c, id);
        assert!(!prewarmed.contains(&instance), "{instance}");
        let (pid, _) = c.task(id).unwrap();
        assert!(
            processes_in_cgroup_named(cg).contains(&pid),
            "{id} runs in its cgroup {cg}"
        );
        let a = ask(pid, "/fork");
        assert_eq!(
            (a["digest"].clone(), a["requests"].clone()),
            (warm["digest"].clone(), json!(2))
        );
    }
    let frozen = pool_ids(&d, &function, "frozen");
    assert!(
        prewarmed.iter().all(|id| frozen.contains(id)),
        "the warm instances were touched: {prewarmed:?} vs {frozen:?}"
    );

    // Without a cgroupsPath, the claims take the warm instances: three at
    // once are three pool hits, in the pool's cgroups, thawed, answering
    // with the template's state, the limits of their spec applied.
    let hits: Vec<(String, String)> = (0..3).map(|i| c.names(&format!("hit{i}"))).collect();
    let limit = 256u64 << 20;
    let limit_opt = limit.to_string();
    thread::scope(|sc| {
        for (id, _) in &hits {
            let (c, function, limit_opt) = (&c, &function, &limit_opt);
            sc.spawn(move || run_template(c, function, &["--memory-limit", limit_opt], "", id));
        }
    });
    let mut taken = Vec::new();
    for (id, _) in &hits {
        let path = bundle_cgroups_path(&c, id);
        assert!(path.is_null() || path == "", "{id}: {path}");
        let link = link_of(&c, id);
        assert_eq!(link["path"], "pool_hit", "{link}");
        let instance = instance_of(&c, id);
        let (pid, _) = c.task(id).unwrap();
        let a = ask(pid, "/hit");
        assert_eq!(
            (a["digest"].clone(), a["requests"].clone()),
            (warm["digest"].clone(), json!(2))
        );
        let cgroups = cgroup_leftovers(&instance);
        assert!(
            !cgroups.is_empty()
                && cgroups
                    .iter()
                    .all(|p| p.to_string_lossy().contains(&d.pool_cgroup)),
            "{instance} lives under the pool's cgroup: {cgroups:?}"
        );
        let memory = memory_limit_of(pid);
        assert_eq!(memory, limit.to_string(), "{instance}'s memory limit");
        taken.push(instance);
    }
    // Three instances of the pool (the pre-warmed ones, unless a refill
    // came in between).
    taken.sort();
    taken.dedup();
    assert_eq!(taken.len(), 3, "{taken:?}");
    // The shim logs how each instance started.
    let shim = pids_of("containerd-shim-sprout-v2", &hits[0].0);
    assert_eq!(shim.len(), 1, "{shim:?}");
    let log = fs::read_to_string(
        c.state
            .join("sprout-shim/default/logs")
            .join(format!("shim-{}.log", shim[0])),
    )
    .unwrap();
    assert!(
        log.lines().any(|l| l.contains("instance started")
            && l.contains(&format!("instance={}", instance_of(&c, &hits[0].0)))
            && l.contains("path=pool_hit")),
        "{log}"
    );
    // exec reaches a pool instance as any task.
    let out = c.ctr(&c.exec_args(&[], &hits[0].0, "x", &["/bin/echo", "in-pool"]));
    assert_eq!(out.stdout, "in-pool\n", "{}", out.stderr);

    // With the pool empty (refilled in the background, then drained), the
    // next one is a fork, not a failure.
    assert!(
        wait_until(TIMEOUT, || pool_ids(&d, &function, "frozen").len() >= 3),
        "the pool was not refilled\n{}",
        d.log_text()
    );
    let drained = api.drain(&function, &DrainBody::default()).unwrap();
    assert!(drained.destroyed >= 3, "{drained:?}");
    let (miss, _) = c.names("miss");
    run_template(&c, &function, &[], "", &miss);
    let link = link_of(&c, &miss);
    assert_eq!(link["path"], "fork", "{link}");
    let (pid, _) = c.task(&miss).unwrap();
    assert_eq!(ask(pid, "/miss")["requests"], 2);
    let starts = api.function_pool(&function).unwrap().starts;
    assert_eq!((starts.pool_hit, starts.fork), (3, 5), "{starts:?}");

    // The delete action after a stop removes the mapped instance, and
    // again finds it gone; containerd's own delete then finds nothing.
    // Killing it records the function's write set from it (containerd
    // never releases an instance), for later pre-warms.
    let (first, _) = &hits[0];
    let instance = instance_of(&c, first);
    assert_eq!(api.function_pool(&function).unwrap().write_set_pages, 0);
    c.kill_until_stopped(&["-s", "KILL"], first);
    let pages = api.function_pool(&function).unwrap().write_set_pages;
    assert!(pages >= 16, "write set of {pages} pages\n{}", d.log_text());
    delete_action(&c, &d, first);
    assert!(api.instance(&instance).is_err(), "{instance} left");
    delete_action(&c, &d, first);
    c.remove(first);
    let mut cgroups = Vec::new();
    for (id, cg) in forks.iter().chain(&hits[1..]) {
        let instance = instance_of(&c, id);
        c.kill_until_stopped(&["-s", "KILL"], id);
        c.remove(id);
        assert!(api.instance(&instance).is_err(), "{instance} left");
        cgroups.push(cg.as_str());
    }
    let instance = instance_of(&c, &miss);
    c.kill_until_stopped(&["-s", "KILL"], &miss);
    c.remove(&miss);
    assert!(api.instance(&instance).is_err(), "{instance} left");
    assert_clean(&c, &cgroups);
    remove_function(&s, &d, &function);
}

/// A process of the test's own in a fresh network namespace with `lo` up
/// (a stand-in for the pod namespace CNI makes); killed by pid when the
/// test ends.
fn netns_holder(c: &Containerd) -> i32 {
    let child = Command::new("unshare")
        .args(["--net", "--", "sleep", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    c.on_drop(move || {
        let mut child = child;
        kill_pid(pid);
        let _ = child.wait();
    });
    let ns_of = |pid: i32| fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    assert!(
        wait_until(STATE_TIMEOUT, || ns_of(pid).is_some()
            && ns_of(pid) != ns_of(std::process::id() as i32)),
        "unshare did not make a network namespace"
    );
    lo_up(pid);
    pid
}

#[test]
fn a_template_container_joining_a_pod_network_namespace_is_forked_into_it() {
    let s = python_sandbox("ctr-podns");
    let d = Sproutd::start_real(&s);
    let (function, warm) = python_function(&s, &d);
    let api = d.client();
    api.prewarm(&function, &PrewarmBody { count: 1 }).unwrap();
    let prewarmed = pool_ids(&d, &function, "frozen");
    let c = Containerd::start_with_env(&sproutd_env(&d));
    c.import(&function_image());
    let holder = netns_holder(&c);
    let netns = format!("network:/proc/{holder}/ns/net");

    // A claim cannot join a namespace: the spec that names one (as CRI's
    // does for a pod) is forked into it as `<namespace>.<id>`, and the
    // warm instance stays in the pool.
    let (id, cg) = c.names("podns");
    run_template(&c, &function, &["--with-ns", &netns], &cg, &id);
    let link = link_of(&c, &id);
    assert_eq!(link["instance"], format!("default+{id}").as_str(), "{link}");
    assert!(link["path"].is_null(), "{link}");
    let (pid, _) = c.task(&id).unwrap();
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        fs::read_link(format!("/proc/{holder}/ns/net")).unwrap(),
        "the instance joined the pod's namespace"
    );
    assert!(processes_in_cgroup_named(&cg).contains(&pid));
    let a = ask(holder, "/pod");
    assert_eq!(
        (a["digest"].clone(), a["requests"].clone()),
        (warm["digest"].clone(), json!(2))
    );
    let frozen = pool_ids(&d, &function, "frozen");
    assert!(
        prewarmed.iter().all(|id| frozen.contains(id)),
        "{prewarmed:?} vs {frozen:?}"
    );

    c.kill_until_stopped(&["-s", "KILL"], &id);
    c.remove(&id);
    assert!(api.instance(&format!("default+{id}")).is_err());
    assert_clean(&c, &[&cg]);
    remove_function(&s, &d, &function);
}

/// The shim's `delete` action cleans up whatever failed before: with
/// sproutd unreachable it still unmounts the bundle's rootfs (and reports
/// the error).
#[test]
fn the_delete_action_unmounts_the_rootfs_when_sproutd_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    fs::write(
        bundle.join("config.json"),
        json!({"ociVersion": "1.0.2", "annotations": {"io.sprout.function": "f"},
               "linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/none"}]}})
        .to_string(),
    )
    .unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &rootfs,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let mounted = || {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(rootfs.to_str().unwrap())
    };
    assert!(mounted());
    let out = Command::new(shim_bin())
        .args(["-namespace", "default", "-id", "gone", "-address"])
        .arg(dir.path().join("containerd.sock"))
        .arg("-bundle")
        .arg(&bundle)
        .arg("delete")
        .env("SPROUTD_SOCKET", dir.path().join("no-sproutd.sock"))
        .env("SPROUTD_SIDE_SOCKET", dir.path().join("no-side.sock"))
        .output()
        .unwrap();
    let left = mounted();
    if left {
        let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
    }
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach sproutd"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!left, "the rootfs stayed mounted");
}
