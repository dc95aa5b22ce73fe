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
use std::time::Duration;

use common::containerd::*;
use common::*;

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
    // Subscribed once an event of ours shows up.
    let ns = unique_id("probe");
    c.ok(&["namespaces", "create", &ns]);
    assert!(wait_until(STATE_TIMEOUT, || fs::read_to_string(&path)
        .unwrap_or_default()
        .contains(&ns)));
    c.ok(&["namespaces", "remove", &ns]);
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

/// A real sproutd (the template engine) for template containers: its
/// sockets are handed to containerd's environment, which its shims
/// inherit. Stopped by pid at the end; instances it leaves are removed
/// through the runtime.
struct Sproutd {
    child: Option<std::process::Child>,
    root: PathBuf,
    socket: PathBuf,
    side: PathBuf,
    log: PathBuf,
}

impl Sproutd {
    fn start(dir: &Path) -> Sproutd {
        let bin = bin_dir().join("sproutd");
        let (root, socket, side, log) = (
            dir.join("sproutd"),
            dir.join("api.sock"),
            dir.join("side.sock"),
            dir.join("sproutd.log"),
        );
        let logf = fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg("--root")
            .arg(&root)
            .arg("--socket")
            .arg(&socket)
            .arg("--side-socket")
            .arg(&side)
            .arg("--init-binary")
            .arg(init_bin())
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let d = Sproutd {
            child: Some(child),
            root,
            socket,
            side,
            log,
        };
        assert!(
            wait_until(STATE_TIMEOUT, || d.client().info().is_ok()),
            "sproutd did not come up: {}",
            fs::read_to_string(&d.log).unwrap_or_default()
        );
        d
    }

    fn client(&self) -> sprout::shim::client::Client {
        sprout::shim::client::Client::new(&self.socket)
    }

    fn env(&self) -> [(&'static str, &Path); 2] {
        [
            ("SPROUTD_SOCKET", self.socket.as_path()),
            ("SPROUTD_SIDE_SOCKET", self.side.as_path()),
        ]
    }
}

impl Drop for Sproutd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_pid(c.id() as i32);
            let _ = c.wait();
        }
        // Instances first: deleting a holder kills what runs below it.
        delete_all_in(&self.root.join("runtime"));
        delete_all_in(&self.root.join("engine/holders"));
        if std::thread::panicking() {
            eprintln!(
                "--- sproutd log ---\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

#[test]
fn a_function_annotation_starts_a_fork_of_the_template_through_sproutd() {
    // The function: the asyncio Python server, checkpointed warm.
    let s = python_sandbox("ctr-fn");
    let (fn_image, warm) = python_image(&s);
    let d = Sproutd::start(s.dir.path());
    let function = unique_id("py");
    d.client()
        .add_function(&sprout::shim::registry::FunctionSpec {
            name: function.clone(),
            image: fn_image,
            bundle: s.bundle.clone(),
            vpc: None,
            after_fork_signal: None,
            resources: None,
            concurrency: 1,
        })
        .unwrap();
    let c = Containerd::start_with_env(&d.env());
    // containerd's image holds the function's files (the rootfs is checked
    // by content); Python itself comes from the host's /usr, as in the
    // function's own bundle.
    c.import(&busybox_image_tar(|rootfs| {
        std::os::unix::fs::symlink("usr/lib", rootfs.join("lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib64", rootfs.join("lib64")).unwrap();
        fs::create_dir_all(rootfs.join("usr")).unwrap();
        fs::create_dir_all(rootfs.join("app")).unwrap();
        fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/function.py"),
            rootfs.join("app/function.py"),
        )
        .unwrap();
    }));
    let annotation = format!("io.sprout.function={function}");
    let usr = "type=bind,src=/usr,dst=/usr,options=rbind:ro";
    let cmd = ["/usr/bin/python3", "/app/function.py", "8080"];
    let (id, cg) = c.names("fn");
    run_detached(
        &c,
        &["--annotation", &annotation, "--mount", usr],
        &cg,
        &id,
        &cmd,
    );
    let (pid, _) = c.task(&id).unwrap();
    // The instance is sproutd's, forked from the warm template: it
    // answers at once, with the template's state.
    let instance = format!("default.{id}");
    let view = d.client().instance(&instance).unwrap();
    assert_eq!(view.pid, pid);
    let r = json_body(&http_get_in_netns(pid, 8080, "/from-ctr").unwrap());
    assert_eq!(r["digest"], warm["digest"]);
    assert_eq!(r["requests"], 2, "the warm-up request plus this one");
    // exec, pause and resume work on it as on any task.
    let out = c.ctr(&c.exec_args(&[], &id, "x", &["/bin/cat", "/app/function.py"]));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("asyncio"), "{}", out.stdout);
    c.pause(&id);
    c.resume(&id);
    c.kill_until_stopped(&["-s", "KILL"], &id);
    let out = c.ctr(&["task", "delete", &id]);
    assert!(out.stderr.contains("exit code 137"), "{}", out.stderr);
    c.ok(&["container", "delete", &id]);
    assert!(
        d.client().instance(&instance).is_err(),
        "instance left in sproutd"
    );

    // A shim killed under a running template container: containerd's
    // `delete` action has sproutd remove the instance.
    let (id2, cg2) = c.names("fn-crash");
    run_detached(
        &c,
        &["--annotation", &annotation, "--mount", usr],
        &cg2,
        &id2,
        &cmd,
    );
    let instance2 = format!("default.{id2}");
    assert!(d.client().instance(&instance2).is_ok());
    sprout_shims(&c).into_iter().for_each(kill_pid);
    assert!(
        wait_until(STATE_TIMEOUT, || d.client().instance(&instance2).is_err()),
        "sproutd still has {instance2}"
    );
    let _ = c.ctr(&["task", "delete", &id2]);
    c.ok(&["container", "delete", &id2]);

    // An unknown function: a clear error, nothing left.
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
    assert!(d.client().instances().unwrap().is_empty());
    // The template lives on for the next fork.
    assert!(d.client().function(&function).unwrap().template.is_some());
    assert_clean(&c, &[&cg, &cg2, &cg3]);
}
