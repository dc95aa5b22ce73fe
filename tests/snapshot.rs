//! Checkpoint and restore of real processes in real containers, through the
//! CLI: a static counter, a threaded dynamic C program, the asyncio Python
//! function (20 restores at once), anonymous-memory semantics, and images
//! that must be refused; the sandbox a restore applies (credentials,
//! capabilities, no_new_privs, seccomp, rlimits, pid 1, the image's argv and
//! env), the CLI's foreground, pid-file, console-socket and timings paths,
//! process and thread state (itimers, sigaltstacks, umask, cwd,
//! personality, a thread in accept), and shared memory (one object mapped
//! twice; System V segments refused).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use common::*;

/// A sandbox whose process is the static test program `prog` (in /bin),
/// given `args`.
fn program_sandbox(name: &str, prog: &str, args: &[&str]) -> Sandbox {
    let mut s = Sandbox::new(name);
    add_program(&s, prog, true);
    let bin = format!("/bin/{prog}");
    let argv: Vec<&str> = std::iter::once(bin.as_str())
        .chain(args.iter().copied())
        .collect();
    s.set_args(&argv);
    s
}

/// Drops the sandbox's own pid namespace: its processes share the
/// caller's (pids outside it, orphans reparented out of it).
fn without_pid_namespace(s: &mut Sandbox) {
    s.config()["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "pid");
    s.write_config();
}

/// Copies the test program `prog` into the sandbox's /bin.
fn add_program(s: &Sandbox, prog: &str, static_link: bool) {
    fs::copy(
        program(prog, static_link),
        s.bundle.join("rootfs/bin").join(prog),
    )
    .unwrap();
}

/// `run -d` of the sandbox's container, its output appended to
/// `<dir>/<out_name>`; returns the id and that file.
fn run_detached(s: &Sandbox, out_name: &str) -> (String, PathBuf) {
    let id = s.id.clone();
    let out = s.dir.path().join(out_name);
    assert!(
        sprout_to(s, &["run", "-d", "--bundle", s.bundle_str(), &id], &out).success(),
        "{}",
        stderr_of(&out)
    );
    (id, out)
}

/// Waits (up to 10 s) until `out` has the line `line`.
fn has_line(out: &Path, line: &str) -> bool {
    wait_until(Duration::from_secs(10), || {
        lines(out).iter().any(|l| l == line)
    })
}

/// Checkpoints `id` to `<dir>/image`, which (the default) kills it.
fn checkpoint(s: &Sandbox, id: &str) -> PathBuf {
    let img = s.dir.path().join("image");
    s.ok(&["checkpoint", "--image-path", img.to_str().unwrap(), id]);
    img
}

/// `checkpoint --leave-running` of `id` to `<dir>/image`; returns the image.
fn checkpoint_leave_running(s: &Sandbox, id: &str) -> PathBuf {
    let img = s.dir.path().join("image");
    s.ok(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        img.to_str().unwrap(),
        id,
    ]);
    img
}

/// A checkpoint of `id` that must fail: it writes no image and leaves the
/// container running. Returns the error.
fn refused_checkpoint(s: &Sandbox, id: &str) -> String {
    let img = s.dir.path().join("image");
    let err = s.fails(&["checkpoint", "--image-path", img.to_str().unwrap(), id]);
    assert!(
        !img.exists() || fs::read_dir(&img).unwrap().next().is_none(),
        "{err}"
    );
    assert_eq!(
        s.status(id),
        "running",
        "a refused checkpoint must leave the container running"
    );
    err
}

/// Runs the sandbox's container until it printed `ready` lines, has its
/// checkpoint refused with an error containing `want`, and deletes it.
fn run_and_refuse_checkpoint(s: &Sandbox, ready: usize, want: &str) {
    let (id, out) = run_detached(s, "out1");
    assert!(has_lines(&out, ready), "{}", stderr_of(&out));
    let err = refused_checkpoint(s, &id);
    assert!(err.contains(want), "{err}");
    s.ok(&["delete", "--force", &id]);
    s.assert_clean(&id);
}

/// `restore -d` of `img` as `rid` in the sandbox's bundle, its output
/// appended to `out`.
fn restore_detached(s: &Sandbox, img: &Path, rid: &str, out: &Path) -> ExitStatus {
    sprout_to(s, &restore_args(s, img, rid, &[]), out)
}

/// The arguments of `restore -d` of `img` as `rid` in the sandbox's bundle,
/// with `flags` before the id.
fn restore_args<'a>(
    s: &'a Sandbox,
    img: &'a Path,
    rid: &'a str,
    flags: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "restore",
        "--image-path",
        img.to_str().unwrap(),
        "--bundle",
        s.bundle_str(),
        "-d",
    ];
    args.extend_from_slice(flags);
    args.push(rid);
    args
}

/// Waits (up to 10 s) until `out` has at least `n` lines.
fn has_lines(out: &Path, n: usize) -> bool {
    wait_until(Duration::from_secs(10), || lines(out).len() >= n)
}

/// Runs the sandbox's container, waits until `ready` holds of its output,
/// checkpoints it to `<dir>/image` (which kills it) and deletes it.
/// Returns the image and the output file.
fn run_and_dump(s: &Sandbox, ready: impl FnOnce(&Path) -> bool) -> (PathBuf, PathBuf) {
    let (id, out) = run_detached(s, "out1");
    assert!(ready(&out), "{:?} {}", lines(&out), stderr_of(&out));
    let img = checkpoint(s, &id);
    s.ok(&["delete", "--force", &id]);
    (img, out)
}

/// A sandbox running tests/programs/threads.c, dynamically linked.
fn threads_sandbox(name: &str) -> Sandbox {
    let mut s = Sandbox::new(name);
    with_usr(&mut s);
    add_program(&s, "threads", false);
    s.set_args(&["/bin/threads"]);
    s
}

/// Edits the manifest body of image `img` with the Python statements
/// `edit` (on `body`, a dict) and seals it again with a valid checksum:
/// a crafted image, as an attacker would make one.
fn edit_manifest(img: &Path, edit: &str) {
    let script = format!(
        r#"
import hashlib, json, sys
p = sys.argv[1]
body = json.loads(open(p).read())["body"]
{edit}
raw = json.dumps(body, separators=(",", ":"))
doc = '{{"format":"sprout-image","version":1,"checksum":"sha256:' + hashlib.sha256(raw.encode()).hexdigest() + '","body":' + raw + '}}'
open(p, "w").write(doc)
"#
    );
    let st = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .arg(img.join("manifest.json"))
        .status()
        .unwrap();
    assert!(st.success());
}

/// The threads program restored with output `after` continues from its
/// last line before the dump, `last_before`: t, a, b, c continue from
/// their dumped values and keep growing (every thread runs and the timer
/// fires); the blocked SIGUSR2 is still pending, on the process and on
/// worker C (sent to that thread alone).
fn assert_threads_continue(last_before: &str, after: &[String]) {
    let last_before = counters(last_before);
    let (first, last) = (counters(&after[0]), counters(after.last().unwrap()));
    for i in 0..4 {
        assert!(
            first[i] >= last_before[i],
            "counter {i} went back: {last_before:?} -> {first:?}"
        );
        assert!(
            last[i] > first[i],
            "counter {i} made no progress after restore: {after:?}"
        );
    }
    assert_eq!(last[4], 1, "the pending blocked signal was lost: {after:?}");
    assert_eq!(last[5], 1, "worker C's pending signal was lost: {after:?}");
}

/// Releases the restored `rid` (SIGUSR1), which then prints the one line
/// `want` to `out` and exits.
fn release_and_expect(s: &Sandbox, rid: &str, out: &Path, want: &str) {
    s.ok(&["kill", rid, "USR1"]);
    assert!(wait_until(Duration::from_secs(10), || !lines(out).is_empty()));
    assert_eq!(lines(out), [want], "{}", stderr_of(out));
    assert!(wait_until(Duration::from_secs(5), || s.status(rid) == "stopped"));
}

/// Removes the config's cgroupsPath: each container then gets its own
/// cgroup, named after its id.
fn without_cgroups_path(s: &mut Sandbox) {
    s.config()["linux"]
        .as_object_mut()
        .unwrap()
        .remove("cgroupsPath");
    s.write_config();
}

/// Sends `n` requests to the restored Python server `rid` (in its own
/// network namespace) and returns the last answer.
fn requests_to(s: &Sandbox, rid: &str, n: usize) -> serde_json::Value {
    let pid = s.state(rid)["pid"].as_i64().unwrap() as i32;
    lo_up(pid);
    let mut last = serde_json::Value::Null;
    for _ in 0..n {
        last = json_body(&http_get_in_netns(pid, 8080, &format!("/{rid}")).unwrap());
    }
    last
}

/// Deletes the containers `ids` and checks that nothing of them, nor a
/// cgroup named after `id`, is left.
fn delete_all_clean(s: &Sandbox, ids: &[String], id: &str) {
    for rid in ids {
        s.ok(&["delete", "--force", rid]);
        s.assert_clean(rid);
    }
    assert!(
        cgroup_leftovers(id).is_empty(),
        "{:?}",
        cgroup_leftovers(id)
    );
}

/// A private (0700) copy of the image `good`'s manifest and pages at
/// `dst`.
fn copy_image(good: &Path, dst: &Path) {
    fs::create_dir(dst).unwrap();
    fs::set_permissions(dst, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    for f in ["manifest.json", "pages.img"] {
        fs::copy(good.join(f), dst.join(f)).unwrap();
    }
}

#[test]
fn static_counter_continues_after_restore() {
    let s = program_sandbox("snapctr", "counter", &["20"]);
    let (id, out1) = run_detached(&s, "out1");
    assert!(wait_until(Duration::from_secs(10), || lines(&out1).len() >= 5));
    let img = checkpoint(&s, &id);
    // The default kills the dumped process.
    assert!(wait_until(Duration::from_secs(5), || s.status(&id) == "stopped"));
    let before = count_of(lines(&out1).last().unwrap());
    s.ok(&["delete", &id]);
    s.assert_clean(&id);
    let report = s.ok(&["image", "verify", img.to_str().unwrap()]);
    assert!(!report.is_empty());

    let id2 = unique_id("snapctr-r");
    let out2 = restored(&s, &img, &id2, "out2");
    assert!(
        wait_until(Duration::from_secs(10), || lines(&out2).len() >= 3),
        "no output after restore: {}",
        stderr_of(&out2)
    );
    let after = lines(&out2);
    assert_eq!(
        count_of(&after[0]),
        before + 1,
        "restored counter did not continue: {after:?}"
    );
    for w in after.windows(2) {
        assert_eq!(count_of(&w[1]), count_of(&w[0]) + 1);
    }
    assert_eq!(s.status(&id2), "running");
    let st = s.state(&id2);
    assert!(st["pid"].as_i64().unwrap() > 0);
    s.ok(&["delete", "--force", &id2]);
    s.assert_clean(&id2);
}

/// A 256 GiB reservation and a read-only sweep of never-written memory
/// cost the process nothing: the checkpoint must not pay for them either
/// (it ran under a 1 GiB address-space limit, and read every page table
/// entry of a VMA at once), nor copy the shared zero page (256 MiB read,
/// one page written: the image holds about that page).
#[test]
fn reserved_and_read_only_memory_is_described_not_copied() {
    let s = program_sandbox("snapzero", "zeroread", &[]);
    let (id, out1) = run_detached(&s, "out1");
    assert!(has_lines(&out1, 1), "{}", stderr_of(&out1));
    let img = s.dir.path().join("image");
    let mut cmd = s.cmd();
    cmd.args(["checkpoint", "--image-path", img.to_str().unwrap(), &id]);
    // SAFETY: setrlimit in the child before exec, nothing else.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let lim = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let out = run_to_files(&mut cmd, s.dir.path());
    assert!(
        out.status.success(),
        "checkpoint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pages = fs::metadata(img.join("pages.img")).unwrap().len();
    assert!(pages < 8 << 20, "pages.img holds {pages} bytes");
    s.ok(&["delete", "--force", &id]);
    s.assert_clean(&id);
    let rid = unique_id("snapzero-r");
    let out2 = restored(&s, &img, &rid, "out2");
    let pid = s.state(&rid)["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) of the restored process, which the test started.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert!(has_line(&out2, "zeroread ok"), "{:?}", lines(&out2));
    s.ok(&["delete", "--force", &rid]);
    s.assert_clean(&rid);
}

/// A checkpoint takes one process: a process of the container that is not
/// a child of it (here an orphan reparented out of a container without a
/// pid namespace) is found in the cgroup once frozen, and the checkpoint
/// is refused, naming it, instead of killing only the one it dumped.
#[test]
fn a_process_not_alone_in_its_cgroup_is_not_checkpointed() {
    let mut s = program_sandbox("snapalone", "counter", &["20"]);
    without_pid_namespace(&mut s);
    s.set_args(&["sh", "-c", "(sleep 1000 &); exec /bin/counter 20"]);
    run_and_refuse_checkpoint(&s, 2, "is not alone (other processes: [");
}

/// Data queued in pipes and sockets is copied into memory, then into the
/// manifest: beyond a total the checkpoint stops and refuses, naming it,
/// rather than copy it all and be refused by the manifest's limit.
#[test]
fn more_queued_data_than_an_image_holds_is_refused_early() {
    let s = program_sandbox("snapqueued", "pipefill", &[]);
    run_and_refuse_checkpoint(&s, 1, "more data queued in pipes and sockets");
}

/// A mapped file too large to hash (a sparse terabyte costs its process
/// nothing) is refused by name and size, not hashed for hours.
#[test]
fn a_mapping_of_a_huge_sparse_file_is_refused() {
    let s = program_sandbox("snapsparse", "sparsemap", &[]);
    run_and_refuse_checkpoint(&s, 1, "a mapping of a file of 1099511627776 bytes");
    // Files each under the limit, over it together: refused before any
    // is hashed.
    let s = program_sandbox("snapsparse-two", "sparsemap", &["2", "40"]);
    run_and_refuse_checkpoint(&s, 1, "maps files of more than 68719476736 bytes in all");

    // An image that names such a file is refused before a restore would
    // hash the rootfs's.
    let s = program_sandbox("snapsparse-img", "counter", &["20"]);
    let (img, _) = run_and_dump(&s, |out| has_lines(out, 2));
    edit_manifest(&img, "body[\"files\"][0][\"size\"] = 1 << 40");
    let err = s.fails(&["image", "verify", img.to_str().unwrap()]);
    assert!(err.contains("files[0].size"), "{err}");
}

#[test]
fn leave_running_keeps_the_process_going() {
    let s = program_sandbox("snapleave", "counter", &["10"]);
    let (id, out) = run_detached(&s, "out");
    assert!(wait_until(Duration::from_secs(10), || lines(&out).len() >= 3));
    checkpoint_leave_running(&s, &id);
    let n = lines(&out).len();
    assert!(
        wait_until(Duration::from_secs(10), || lines(&out).len() >= n + 5),
        "the process stopped counting"
    );
    assert_eq!(s.status(&id), "running");
    let all = lines(&out);
    for w in all.windows(2) {
        assert_eq!(
            count_of(&w[1]),
            count_of(&w[0]) + 1,
            "a count was lost or repeated"
        );
    }
    s.ok(&["delete", "--force", &id]);
    s.assert_clean(&id);
}

/// The `aborts=<n>` counts of tests/programs/rseqspin.c's output lines.
fn abort_counts(out: &[String]) -> Vec<u64> {
    out.iter()
        .filter_map(|l| l.strip_prefix("aborts=")?.parse().ok())
        .collect()
}

#[test]
fn a_thread_caught_inside_an_rseq_critical_section_is_aborted_live_and_restored() {
    // The main thread spins in a critical section only an abort leaves;
    // every 2 ms a signal aborts it, and the count of aborts grows.
    let s = program_sandbox("snaprseq", "rseqspin", &[]);
    let (id, out1) = run_detached(&s, "out1");
    assert!(has_lines(&out1, 3), "{}", stderr_of(&out1));
    let img = checkpoint_leave_running(&s, &id);
    let n = lines(&out1).len();
    assert!(has_lines(&out1, n + 5), "{}", stderr_of(&out1));
    let live = abort_counts(&lines(&out1)[n..]);
    assert!(
        live.last() > live.first(),
        "the process left running resumed inside the section: {live:?}"
    );
    s.ok(&["delete", "--force", &id]);
    s.assert_clean(&id);

    let id2 = unique_id("snaprseq-r");
    let out2 = restored(&s, &img, &id2, "out2");
    assert!(has_lines(&out2, 5), "{}", stderr_of(&out2));
    let restored = abort_counts(&lines(&out2));
    assert!(
        restored.last() > restored.first(),
        "the restored process resumed inside the section: {restored:?}"
    );
    s.ok(&["delete", "--force", &id2]);
    s.assert_clean(&id2);
}

#[test]
fn a_restore_whose_state_cannot_be_saved_leaves_nothing_behind() {
    let s = program_sandbox("snapfull", "counter", &["20"]);
    let (img, _) = run_and_dump(&s, |out| has_lines(out, 2));
    let full = FullStateRoot::new(s.dir.path().join("full-root"));
    let rid = unique_id("snapfull-r");
    let args = restore_args(&s, &img, &rid, &[]);
    let out = run_to_files(
        std::process::Command::new(sprout_bin())
            .arg("--root")
            .arg(&full.0)
            .args(&args),
        s.dir.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("No space left on device") && err.contains(&rid),
        "{err}"
    );
    // The restored process was stopped before its cgroup was removed.
    let cg = cgroup_leftovers(&s.cgroup);
    assert!(cg.is_empty(), "cgroups left behind: {cg:?}");
    let procs = processes_in_cgroup_named(&s.cgroup);
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
    assert!(!full.0.join(&rid).exists(), "state dir left behind");
}

#[test]
fn threaded_dynamic_program_resumes_all_threads() {
    let s = threads_sandbox("snapthr");
    let (img, out1) = run_and_dump(&s, |out| has_lines(out, 3));
    let id2 = unique_id("snapthr-r");
    let out2 = restored(&s, &img, &id2, "out2");
    assert!(has_lines(&out2, 3), "no progress: {}", stderr_of(&out2));
    assert_threads_continue(lines(&out1).last().unwrap(), &lines(&out2));
    s.ok(&["delete", "--force", &id2]);
    s.assert_clean(&id2);
}

/// Pending signals are queued to the restored process itself, whatever
/// pid its image names: restored into a shared pid namespace, an image
/// naming another process's pid must not get the restorer (root) to
/// signal that process.
#[test]
fn pending_signals_reach_the_restored_process_not_the_pid_the_image_names() {
    let mut s = threads_sandbox("snapsigpid");
    without_pid_namespace(&mut s);
    let (img, out1) = run_and_dump(&s, |out| has_lines(out, 3));
    // SIGUSR2, pending on the image's process, would end it.
    let mut victim = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = victim.id();
    edit_manifest(
        &img,
        &format!("body[\"process\"][\"pid\"] = {pid}\nbody[\"threads\"][0][\"tid\"] = {pid}"),
    );
    let id2 = unique_id("snapsigpid-r");
    let out2 = s.dir.path().join("out2");
    let restored_ok = restore_detached(&s, &img, &id2, &out2).success();
    let victim_alive = victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(victim_alive, "the restorer signalled pid {}", victim.id());
    assert!(restored_ok, "restore failed: {}", stderr_of(&out2));
    assert!(has_lines(&out2, 3), "no progress: {}", stderr_of(&out2));
    assert_threads_continue(lines(&out1).last().unwrap(), &lines(&out2));
    s.ok(&["delete", "--force", &id2]);
    s.assert_clean(&id2);
}

/// The restorer is root until the end: an image whose process holds a
/// socket on a port below 1024 is refused for a bundle without
/// CAP_NET_BIND_SERVICE (the process could not have bound it itself),
/// before anything runs, and restores with it.
#[test]
fn an_image_needing_a_privilege_the_bundle_lacks_is_refused() {
    let mut s = python_sandbox("snappriv");
    let (img, _) = python_image(&s);
    edit_manifest(
        &img,
        "for f in body[\"fds\"]:\n    l = f[\"object\"].get(\"local\")\n    if l and l.get(\"addr\") == \"0.0.0.0:8080\":\n        l[\"addr\"] = \"0.0.0.0:80\"",
    );
    let no_bind = serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL"]);
    for set in ["bounding", "effective", "permitted", "ambient"] {
        s.config()["process"]["capabilities"][set] = no_bind.clone();
    }
    s.write_config();
    let rid = unique_id("snappriv-r");
    let err = s.fails(&restore_args(&s, &img, &rid, &[]));
    assert!(
        err.contains("port 80") && err.contains("CAP_NET_BIND_SERVICE"),
        "{err}"
    );
    s.assert_clean(&rid);
    // Unless the sandbox's namespace lets anyone bind low ports (as
    // Docker's and CRI's specs do).
    s.config()["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_unprivileged_port_start": "0"});
    s.write_config();
    restored(&s, &img, &rid, "out-sysctl");
    s.ok(&["delete", "--force", &rid]);
    s.assert_clean(&rid);
    s.config()["linux"]
        .as_object_mut()
        .unwrap()
        .remove("sysctl");
    let with_bind = serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    for set in ["bounding", "effective", "permitted", "ambient"] {
        s.config()["process"]["capabilities"][set] = with_bind.clone();
    }
    s.write_config();
    restored(&s, &img, &rid, "out-ok");
    s.ok(&["delete", "--force", &rid]);
    s.assert_clean(&rid);
}

/// Every path of an image resolves inside the sandbox's rootfs, the cwd
/// too, never through a magic link: restored into a shared pid
/// namespace, a cwd through /proc/PID/root of a process the restorer may
/// trace would be that process's filesystem. (Here /proc/self/root, the
/// one such link the test can rely on reaching.)
#[test]
fn an_image_cwd_through_a_magic_link_is_refused() {
    let mut s = program_sandbox("snapcwd", "counter", &["20"]);
    without_pid_namespace(&mut s);
    let (img, _) = run_and_dump(&s, |out| has_lines(out, 3));
    edit_manifest(&img, "body[\"process\"][\"cwd\"] = \"/proc/self/root/etc\"");
    let rid = unique_id("snapcwd-r");
    let err = refused(
        &s,
        &img,
        &rid,
        "out-cwd",
        "with its cwd through /proc/self/root",
    );
    assert!(err.contains("symbolic links"), "{err}");
    s.assert_clean(&rid);
}

/// The image's files are opened with the sandbox user's filesystem ids:
/// restored as uid 1000, an image holding a root-only file open for
/// writing is refused (the restorer, root, would have opened it).
#[test]
fn an_image_file_its_user_cannot_open_is_refused() {
    let mut s = program_sandbox("snapperm", "counter", &["20"]);
    let (img, _) = run_and_dump(&s, |out| has_lines(out, 3));
    let secret = s.bundle.join("rootfs/secret");
    fs::write(&secret, "root only\n").unwrap();
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    edit_manifest(
        &img,
        r#"body["fds"].append({"fd": 7, "cloexec": False, "flags": 2, "object": {"type": "file", "path": "/secret", "offset": 0}})"#,
    );
    s.config()["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
    s.write_config();
    let rid = unique_id("snapperm-r");
    let err = refused(
        &s,
        &img,
        &rid,
        "out-perm",
        "with /secret open for writing as uid 1000",
    );
    assert!(err.contains("/secret") && err.contains("EACCES"), "{err}");
    s.assert_clean(&rid);
    // As root, the same image restores.
    s.config()["process"]["user"] = serde_json::json!({"uid": 0, "gid": 0});
    s.write_config();
    restored(&s, &img, &rid, "out-root");
    s.ok(&["delete", "--force", &rid]);
    s.assert_clean(&rid);
}

/// A shared writable mapping of a file is opened with the sandbox
/// user's filesystem ids too: restored as uid 1000, an image mapping a
/// root-only file shared and writable is refused.
#[test]
fn an_image_mapping_a_file_its_user_cannot_write_is_refused() {
    let mut s = program_sandbox("snapmap", "counter", &["20"]);
    let (img, _) = run_and_dump(&s, |out| has_lines(out, 3));
    let secret = s.bundle.join("rootfs/secret");
    fs::write(&secret, vec![b'x'; 4096]).unwrap();
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    edit_manifest(
        &img,
        r#"
import hashlib
data = open(sys.argv[1].rsplit("/image/", 1)[0] + "/bundle/rootfs/secret", "rb").read()
body["files"].append({"path": "/secret", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "build_id": None})
start = 0x7e0000000000
vma = {"start": hex(start), "end": hex(start + 4096), "prot": "rw-", "shared": True, "flags": [],
       "backing": {"kind": "file", "file": len(body["files"]) - 1, "offset": "0x0"}, "pages": [], "guard_pages": []}
at = next((i for i, v in enumerate(body["vmas"]) if int(v["start"], 16) > start), len(body["vmas"]))
body["vmas"].insert(at, vma)
"#,
    );
    s.config()["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
    s.write_config();
    let rid = unique_id("snapmap-r");
    let err = refused(
        &s,
        &img,
        &rid,
        "out-map",
        "with /secret mapped shared and writable as uid 1000",
    );
    assert!(
        err.contains("Permission denied") || err.contains("EACCES"),
        "{err}"
    );
    s.assert_clean(&rid);
    s.config()["process"]["user"] = serde_json::json!({"uid": 0, "gid": 0});
    s.write_config();
    restored(&s, &img, &rid, "out-map-root");
    s.ok(&["delete", "--force", &rid]);
    s.assert_clean(&rid);
}

#[test]
fn anonymous_memory_semantics_survive_restore() {
    let s = program_sandbox("snapmem", "memsem", &[]);
    let (img, _) = run_and_dump(&s, |out| has_line(out, "memsem ready"));
    let id2 = unique_id("snapmem-r");
    let out2 = restored(&s, &img, &id2, "out2");
    release_and_expect(&s, &id2, &out2, "memsem ok");
    s.ok(&["delete", &id2]);
    s.assert_clean(&id2);
}

#[test]
fn python_function_restores_many_times_with_diverging_state() {
    let mut s = python_sandbox("snappy");
    let id = s.id.clone();
    let (img, first) = python_image(&s);
    assert_eq!(first["requests"], 1);

    // 20 restores of the one image at once, each in its own sandbox: no
    // cgroupsPath, so each gets its own cgroup (named after its id).
    without_cgroups_path(&mut s);
    let ids: Vec<String> = (0..20).map(|i| format!("{id}-r{i}")).collect();
    std::thread::scope(|scope| {
        for rid in &ids {
            let s = &s;
            let img = &img;
            scope.spawn(move || {
                let out = s.dir.path().join(format!("out-{rid}"));
                let st = restore_detached(s, img, rid, &out);
                assert!(st.success(), "restore {rid}: {}", stderr_of(&out));
            });
        }
    });
    for (i, rid) in ids.iter().enumerate() {
        // Each instance answers with the dumped state, then diverges:
        // instance i gets i+1 more requests.
        let last = requests_to(&s, rid, i % 3 + 1);
        assert_eq!(
            last["digest"], first["digest"],
            "{rid} lost its initialized state"
        );
        assert_eq!(last["requests"], 1 + (i % 3) as u64 + 1, "{rid}: {last}");
        assert_eq!(last["path"], format!("/{rid}"));
    }
    delete_all_clean(&s, &ids, &id);
}

#[test]
fn bad_images_are_refused_and_leave_nothing() {
    let s = program_sandbox("snapbad", "counter", &["50"]);
    let (id, out) = run_detached(&s, "out");
    assert!(wait_until(Duration::from_secs(10), || !lines(&out).is_empty()));
    let good = s.dir.path().join("good");
    s.ok(&["checkpoint", "--image-path", good.to_str().unwrap(), &id]);
    s.ok(&["delete", "--force", &id]);

    let copy = |name: &str| -> PathBuf {
        let d = s.dir.path().join(name);
        copy_image(&good, &d);
        d
    };
    let try_restore = |img: &Path, want: &str| {
        let rid = unique_id("snapbad-r");
        let err = s.fails(&restore_args(&s, img, &rid, &[]));
        assert!(
            err.to_lowercase().contains(want),
            "restore of {} should fail with {want:?}: {err}",
            img.display()
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        s.assert_clean(&rid);
    };
    // Truncated pages file.
    let d = copy("trunc");
    let len = fs::metadata(d.join("pages.img")).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(d.join("pages.img"))
        .unwrap()
        .set_len(len - 4096)
        .unwrap();
    try_restore(&d, "pages.img");
    // A flipped byte in the manifest.
    let d = copy("flipm");
    let mut m = fs::read(d.join("manifest.json")).unwrap();
    let i = m.len() / 2;
    m[i] ^= 0x01;
    fs::write(d.join("manifest.json"), m).unwrap();
    try_restore(&d, "manifest");
    // A flipped byte in the pages.
    let d = copy("flipp");
    let mut p = fs::read(d.join("pages.img")).unwrap();
    p[100] ^= 0xff;
    fs::write(d.join("pages.img"), p).unwrap();
    try_restore(&d, "chunk");
    // A wrong version.
    let d = copy("version");
    let m = fs::read_to_string(d.join("manifest.json"))
        .unwrap()
        .replacen("\"version\":1", "\"version\":99", 1);
    fs::write(d.join("manifest.json"), m).unwrap();
    try_restore(&d, "version");
    // Edits of the body with a valid checksum: a foreign kernel record, and
    // a mapped file's path that tries to leave the rootfs.
    let rewrite = |name: &str, from: &str, to: &str| -> PathBuf {
        let d = copy(name);
        let script = format!(
            r#"
import hashlib, json, re, sys
p = sys.argv[1]
text = open(p).read()
body = json.loads(text, object_pairs_hook=dict)["body"]
raw = json.dumps(body, separators=(",", ":"))
raw = re.sub({from:?}, {to:?}, raw, count=1)
doc = '{{"format":"sprout-image","version":1,"checksum":"sha256:' + hashlib.sha256(raw.encode()).hexdigest() + '","body":' + raw + '}}'
open(p, "w").write(doc)
"#
        );
        let st = std::process::Command::new("/usr/bin/python3")
            .args(["-c", &script])
            .arg(d.join("manifest.json"))
            .status()
            .unwrap();
        assert!(st.success());
        d
    };
    let d = rewrite(
        "foreign",
        r#""kernel_release":"[^"]*""#,
        r#""kernel_release":"4.19.0-other""#,
    );
    try_restore(&d, "kernel");
    let d = rewrite(
        "escape",
        r#""path":"/bin/counter""#,
        r#""path":"/../../../etc/passwd""#,
    );
    try_restore(&d, "path");
    // A rootfs whose mapped program changed.
    let d = copy("changed");
    let mut bin = fs::read(s.bundle.join("rootfs/bin/counter")).unwrap();
    let n = bin.len() - 1;
    bin[n] ^= 0xff;
    fs::write(s.bundle.join("rootfs/bin/counter"), bin).unwrap();
    try_restore(&d, "counter");
}

#[test]
fn checkpoint_refuses_an_unsupported_fd_naming_it() {
    let s = program_sandbox("snapinotify", "inotify", &[]);
    let id = s.id.clone();
    s.ok(&["run", "-d", "--bundle", s.bundle_str(), &id]);
    std::thread::sleep(Duration::from_millis(300));
    let err = refused_checkpoint(&s, &id);
    assert!(err.contains("inotify") && err.contains("fd "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    s.ok(&["delete", "--force", &id]);
    s.assert_clean(&id);
}

#[test]
fn checkpoint_refuses_what_it_cannot_restore() {
    let mut s = Sandbox::new("snaprefuse");
    // A process tree.
    s.set_args(&["sh", "-c", "sleep 100 & wait"]);
    let id = s.id.clone();
    s.ok(&["run", "-d", "--bundle", s.bundle_str(), &id]);
    assert!(wait_until(Duration::from_secs(5), || {
        serde_json::from_str::<Vec<i32>>(&s.ok(&["ps", "--format", "json", &id]))
            .unwrap()
            .len()
            == 2
    }));
    let err = refused_checkpoint(&s, &id);
    assert!(err.contains("is not alone"), "{err}");
    s.ok(&["delete", "--force", &id]);
    s.assert_clean(&id);
}

/// `restore --timings` of `img` as `rid` with `flags`, not detached: the
/// running sprout, its output in `out` (stderr beside it), once it wrote
/// the restored process's pid to `pid_file`.
fn restore_foreground(
    s: &Sandbox,
    img: &Path,
    rid: &str,
    pid_file: &Path,
    out: &Path,
    flags: &[&str],
) -> std::process::Child {
    let mut args = vec![
        "restore",
        "--image-path",
        img.to_str().unwrap(),
        "--bundle",
        s.bundle_str(),
        "--pid-file",
        pid_file.to_str().unwrap(),
    ];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--timings", rid]);
    let child = s
        .cmd()
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(fs::File::create(out).unwrap())
        .stderr(fs::File::create(out.with_extension("err")).unwrap())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || fs::read_to_string(pid_file)
            .is_ok_and(|p| !p.is_empty())),
        "no pid file: {}",
        stderr_of(out)
    );
    child
}

/// `restore -d` of `img` as `rid`, which must succeed, its output
/// appended to `<dir>/<out_name>`; returns that file.
fn restored(s: &Sandbox, img: &Path, rid: &str, out_name: &str) -> PathBuf {
    let out = s.dir.path().join(out_name);
    let st = restore_detached(s, img, rid, &out);
    assert!(st.success(), "restore failed: {}", stderr_of(&out));
    out
}

/// A restore of `img` as `rid` that must be refused: its stderr. One that
/// succeeds is deleted and fails the test with `why`.
fn refused(s: &Sandbox, img: &Path, rid: &str, out_name: &str, why: &str) -> String {
    let out = s.dir.path().join(out_name);
    if restore_detached(s, img, rid, &out).success() {
        s.ok(&["delete", "--force", rid]);
        panic!("restored: {why}");
    }
    stderr_of(&out)
}

// ---- the sandbox side of a restore, the CLI's restore paths, process and
// thread state, shared memory ----

/// `k=v` pairs of the output line that starts with `prefix ` (the last
/// such line).
fn fields(out: &[String], prefix: &str) -> std::collections::HashMap<String, String> {
    let line = out
        .iter()
        .rev()
        .find(|l| l.starts_with(&format!("{prefix} ")))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {out:?}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The value of `key:` in a /proc status file, whitespace-normalized.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Host tids of `pid`'s threads.
fn tasks(pid: i32) -> Vec<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect()
}

/// A sandbox running tests/programs/stateprobe.c; its config's env carries
/// a marker the image keeps.
fn probe_sandbox(name: &str) -> Sandbox {
    let mut s = Sandbox::new(name);
    add_program(&s, "stateprobe", true);
    s.config()["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push("FROM_IMAGE=1".into());
    s.set_args(&["/bin/stateprobe"]);
    s
}

/// Lets the restored probe `rid` finish (SIGUSR1) and waits until it
/// stopped; returns its output.
fn finish_probe(s: &Sandbox, rid: &str, out: &Path) -> Vec<String> {
    s.ok(&["kill", rid, "USR1"]);
    assert!(
        wait_until(Duration::from_secs(10), || s.status(rid) == "stopped"),
        "{:?} {}",
        lines(out),
        stderr_of(out)
    );
    lines(out)
}

/// Runs the probe, waits until its second thread sits in accept(), and
/// checkpoints it to `<dir>/image` (the container is deleted). Returns the
/// image and the probe's output before the dump.
fn probe_image(s: &Sandbox) -> (PathBuf, Vec<String>) {
    let (id, out) = run_detached(s, "out-probe");
    assert!(
        has_line(&out, "ready"),
        "{:?} {}",
        lines(&out),
        stderr_of(&out)
    );
    let pid = s.state(&id)["pid"].as_i64().unwrap() as i32;
    // accept is syscall 43 (accept4 288): the dump must find it there.
    assert!(
        wait_until(Duration::from_secs(10), || tasks(pid).iter().any(|t| {
            fs::read_to_string(format!("/proc/{pid}/task/{t}/syscall"))
                .is_ok_and(|s| s.starts_with("43 ") || s.starts_with("288 "))
        })),
        "the probe's second thread never blocked in accept"
    );
    let img = checkpoint(s, &id);
    s.ok(&["delete", "--force", &id]);
    s.assert_clean(&id);
    (img, lines(&out))
}

#[test]
fn restore_applies_the_bundles_sandbox_not_the_images() {
    let mut s = probe_sandbox("snapsbx");
    // Dumped as root with the default capabilities, no seccomp.
    let (img, before) = probe_image(&s);
    assert_eq!(fields(&before, "before")["prio_errno"], "0");

    // The new sandbox: another user, fewer capabilities, no_new_privs, a
    // seccomp filter, lower limits, and a process section whose args and
    // env must not be used.
    let p = &mut s.config()["process"];
    p["user"] = serde_json::json!({"uid": 65534, "gid": 65534, "additionalGids": [5]});
    p["capabilities"] = serde_json::json!({
        "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_KILL"],
        "permitted": ["CAP_KILL"],
        "inheritable": ["CAP_KILL"],
        "ambient": ["CAP_KILL"]
    });
    p["rlimits"] = serde_json::json!([
        {"type": "RLIMIT_NOFILE", "soft": 200, "hard": 300},
        {"type": "RLIMIT_STACK", "soft": 4u64 << 20, "hard": 6u64 << 20}
    ]);
    p["args"] = serde_json::json!(["/bin/sh", "-c", "exit 3"]);
    p["env"] = serde_json::json!(["PATH=/bin", "FROM_BUNDLE=1"]);
    s.config()["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
    });
    s.write_config();

    // Without no_new_privs (Docker's default), the filter must go in
    // while the process still has CAP_SYS_ADMIN, before its capabilities
    // are dropped, as runc does: the kernel refuses it afterwards.
    for nnp in [true, false] {
        s.config()["process"]["noNewPrivileges"] = nnp.into();
        s.write_config();
        let rid = unique_id(if nnp { "snapsbx-r" } else { "snapsbx-p" });
        let out = restored(&s, &img, &rid, if nnp { "out-r" } else { "out-p" });
        let pid = s.state(&rid)["pid"].as_i64().unwrap() as i32;
        let threads = tasks(pid);
        assert_eq!(threads.len(), 2, "{threads:?}");
        // Credentials are per thread: every thread has the bundle's.
        for t in &threads {
            let st = fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).unwrap();
            let f = |k| status_field(&st, k);
            assert_eq!(f("Uid"), "65534 65534 65534 65534", "thread {t}");
            assert_eq!(f("Gid"), "65534 65534 65534 65534", "thread {t}");
            assert_eq!(f("Groups"), "5", "thread {t}");
            // CAP_KILL = bit 5, CAP_NET_BIND_SERVICE = bit 10.
            assert_eq!(f("CapEff"), "0000000000000020", "thread {t}");
            assert_eq!(f("CapPrm"), "0000000000000020", "thread {t}");
            assert_eq!(f("CapInh"), "0000000000000020", "thread {t}");
            assert_eq!(f("CapAmb"), "0000000000000020", "thread {t}");
            assert_eq!(f("CapBnd"), "0000000000000420", "thread {t}");
            assert_eq!(f("NoNewPrivs"), if nnp { "1" } else { "0" }, "thread {t}");
            assert_eq!(f("Seccomp"), "2", "thread {t}");
        }
        // pid 1 of its own pid namespace, as when dumped.
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert_eq!(status_field(&status, "NSpid"), format!("{pid} 1"));
        let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let limit = |name: &str| -> Vec<String> {
            let l = limits
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} in {limits}"));
            l[name.len()..]
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        assert_eq!(limit("Max open files")[..2], ["200", "300"], "{limits}");
        assert_eq!(
            limit("Max stack size")[..2],
            [(4u64 << 20).to_string(), (6u64 << 20).to_string()],
            "{limits}"
        );
        // The image's command line and environment, not the bundle's.
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert_eq!(cmdline, b"/bin/stateprobe\0");
        let environ = String::from_utf8_lossy(&fs::read(format!("/proc/{pid}/environ")).unwrap())
            .into_owned();
        assert!(environ.contains("FROM_IMAGE=1"), "{environ:?}");
        assert!(!environ.contains("FROM_BUNDLE"), "{environ:?}");

        // The filter is the bundle's and holds on both threads (TSYNC); the
        // process runs on under it.
        let after = finish_probe(&s, &rid, &out);
        assert_eq!(fields(&after, "after")["prio_errno"], "13", "{after:?}");
        assert_eq!(fields(&after, "after")["pid"], "1", "{after:?}");
        let thread = fields(&after, "after-thread");
        assert_eq!(thread["accept"], "ok", "{after:?}");
        assert_eq!(thread["prio_errno"], "13", "{after:?}");
        s.ok(&["delete", &rid]);
        s.assert_clean(&rid);
    }
}

/// What a restored container's sandbox is, as seen from inside and from
/// the host: mounts (target, fs type, read-only), hostname, cgroups,
/// namespaces unshared from the host's, oom_score_adj, pid.
fn sandbox_facts(s: &Sandbox, rid: &str) -> Vec<String> {
    let pid = s.state(rid)["pid"].as_i64().unwrap();
    let mut facts: Vec<String> = s
        .ok(&["exec", rid, "cat", "/proc/1/mountinfo"])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let sep = f.iter().position(|x| *x == "-").unwrap();
            let ro = f[5].split(',').any(|o| o == "ro");
            format!("mount {} {} ro={ro}", f[4], f[sep + 1])
        })
        .collect();
    facts.sort();
    facts.push(format!(
        "hostname {}",
        s.ok(&["exec", rid, "hostname"]).trim()
    ));
    let msgmax = s.ok(&["exec", rid, "cat", "/proc/sys/kernel/msgmax"]);
    facts.push(format!("sysctl kernel.msgmax={}", msgmax.trim()));
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    facts.extend(cgroups.lines().map(|l| format!("cgroup {l}")));
    for ns in ["pid", "ipc", "uts", "mnt", "net", "cgroup"] {
        let theirs = fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        facts.push(format!("ns {ns} own={}", theirs != ours));
    }
    let adj = fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    facts.push(format!("oom_score_adj {}", adj.trim()));
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    facts.push(format!(
        "nspid {}",
        status_field(&status, "NSpid")
            .split_whitespace()
            .nth(1)
            .unwrap()
    ));
    facts
}

#[test]
fn a_sandbox_made_without_the_init_helper_is_the_one_it_makes() {
    let mut s = probe_sandbox("snapdirect");
    let (img, _) = probe_image(&s);
    s.config()["root"]["readonly"] = true.into();
    s.config()["process"]["oomScoreAdj"] = 300.into();
    s.config()["linux"]["sysctl"] = serde_json::json!({"kernel.msgmax": "9000"});
    s.write_config();
    let restore_timed = |s: &Sandbox, rid: &str, out: &str| -> (Vec<String>, String) {
        let out = s.dir.path().join(out);
        let st = sprout_to(s, &restore_args(s, &img, rid, &["--timings"]), &out);
        assert!(st.success(), "{}", stderr_of(&out));
        let facts = sandbox_facts(s, rid);
        s.ok(&["delete", "--force", rid]);
        s.assert_clean(rid);
        (facts, stderr_of(&out))
    };
    // This bundle needs nothing of the helper's: made directly.
    let (direct, timings) = restore_timed(&s, &unique_id("snapdirect-d"), "out-d");
    assert!(
        timings.contains(" sandbox ") && !timings.contains("exec stub"),
        "{timings}"
    );
    // Hooks are the init helper's to run: the same sandbox through it.
    s.config()["hooks"] = serde_json::json!({"poststart": [{"path": "/bin/true"}]});
    s.write_config();
    let (helper, timings) = restore_timed(&s, &unique_id("snapdirect-h"), "out-h");
    assert!(timings.contains("exec stub"), "{timings}");
    assert_eq!(direct, helper);
    // What both must be, not only alike.
    let has = |p: &dyn Fn(&str) -> bool| direct.iter().any(|f| p(f));
    assert!(
        has(&|f| f.starts_with("mount / ") && f.ends_with("ro=true")),
        "{direct:#?}"
    );
    assert!(has(&|f| f == "mount /proc/sys proc ro=true"), "{direct:#?}");
    assert!(has(&|f| f.starts_with("mount /proc/keys ")), "{direct:#?}");
    for fact in [
        "hostname sprout-test",
        "sysctl kernel.msgmax=9000",
        "ns pid own=true",
        "ns mnt own=true",
        "ns net own=true",
        "ns cgroup own=true",
        "oom_score_adj 300",
        "nspid 1",
    ] {
        assert!(
            direct.iter().any(|f| f == fact),
            "no {fact:?} in {direct:#?}"
        );
    }
}

#[test]
fn an_image_of_a_process_that_was_not_pid_1_is_refused_for_a_new_pid_namespace() {
    let mut s = program_sandbox("snapnotone", "counter", &["20"]);
    // Dumped from a container sharing the host's pid namespace: not pid 1.
    let with_pid_ns = s.config()["linux"]["namespaces"].clone();
    without_pid_namespace(&mut s);
    let (img, _) = run_and_dump(&s, |out| has_lines(out, 3));
    s.config()["linux"]["namespaces"] = with_pid_ns;
    s.write_config();
    // Refused both ways the sandbox can be made, nothing left behind.
    for (what, hooks) in [
        ("directly", serde_json::Value::Null),
        (
            "by the helper",
            serde_json::json!({"poststart": [{"path": "/bin/true"}]}),
        ),
    ] {
        s.config()["hooks"] = hooks;
        s.write_config();
        let rid = unique_id("snapnotone-r");
        let out = s.dir.path().join(format!("out-{rid}"));
        let st = restore_detached(&s, &img, &rid, &out);
        let err = stderr_of(&out);
        assert!(!st.success(), "{what}: {err}");
        assert!(
            err.contains("was pid") && err.contains("pid 1 of a new one"),
            "{what}: {err}"
        );
        s.assert_clean(&rid);
    }
    // Nor can it be a template, whose instances are each pid 1 of a new
    // pid namespace.
    s.config()["hooks"] = serde_json::Value::Null;
    s.write_config();
    let rt = sprout::runtime::Runtime::builder()
        .root(&s.root)
        .init_binary(init_bin())
        .build()
        .unwrap();
    let tracer = sprout::snapshot::ptrace::Tracer::spawn("test-tracer").unwrap();
    let holder = unique_id("snapnotone-h");
    let loaded = sprout::snapshot::template::Template::load(
        &rt, &tracer, "notone", &holder, &img, &s.bundle, None,
    );
    let err = loaded.map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("pid 1 of a new one"), "{err}");
    s.assert_clean(&holder);
}

#[test]
fn a_restore_whose_rootfs_cannot_be_built_leaves_nothing() {
    let mut s = probe_sandbox("snapnoroot");
    let (img, _) = probe_image(&s);
    let missing = s.dir.path().join("no-such-dir");
    s.config()["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/data", "type": "bind",
            "source": missing.to_str().unwrap(), "options": ["bind"]
        }));
    s.write_config();
    let rid = unique_id("snapnoroot-r");
    let out = s.dir.path().join("out-r");
    let st = restore_detached(&s, &img, &rid, &out);
    let err = stderr_of(&out);
    assert!(!st.success(), "{err}");
    assert!(
        err.contains("rootfs") && err.contains("no-such-dir"),
        "{err}"
    );
    s.assert_clean(&rid);
}

#[test]
fn process_and_thread_state_survive_restore() {
    let s = probe_sandbox("snapstate");
    let (img, before) = probe_image(&s);
    let rid = unique_id("snapstate-r");
    let out = restored(&s, &img, &rid, "out-r");
    let after = finish_probe(&s, &rid, &out);
    let b = fields(&before, "before");
    let a = fields(&after, "after");
    for k in [
        "pid",
        "umask",
        "cwd",
        "personality",
        "release",
        "main_altstack",
    ] {
        assert_eq!(a[k], b[k], "{k}: before {before:?}, after {after:?}");
    }
    assert_eq!(a["pid"], "1");
    assert_eq!(a["umask"], "027");
    assert_eq!(a["cwd"], "/tmp/probe-cwd");
    // PER_LINUX | UNAME26: uname reports a 2.6 release.
    assert_eq!(a["personality"], "0x20000");
    assert!(a["release"].starts_with("2.6."), "{}", a["release"]);
    assert!(
        a["main_altstack"].ends_with(":65536:0"),
        "{}",
        a["main_altstack"]
    );
    // Interval timers: the intervals exactly, the values still running.
    let timers = fields(&after, "after-timers");
    let pair = |k: &str| -> (u64, u64) {
        let (i, v) = timers[k].split_once('/').unwrap();
        (i.parse().unwrap(), v.parse().unwrap())
    };
    let (interval, value) = pair("real");
    assert_eq!(interval, 7_000_000, "{after:?}");
    assert!(value > 0 && value <= 3_600_000_000, "{after:?}");
    let (interval, value) = pair("virtual");
    assert_eq!(interval, 3_000_000, "{after:?}");
    // CPU time only counts down; a tick of rounding above the set value.
    assert!(value > 0 && value <= 500_100_000, "{after:?}");
    assert_eq!(pair("prof"), (0, 0), "{after:?}");
    // The thread blocked in accept() resumed in it and took the connection
    // (a restart, not EINTR), with its own alternate stack.
    let thread = fields(&after, "after-thread");
    assert_eq!(thread["accept"], "ok", "{after:?}");
    assert_eq!(
        thread["altstack"],
        fields(&before, "before-thread")["altstack"],
        "{after:?}"
    );
    s.ok(&["delete", &rid]);
    s.assert_clean(&rid);
}

#[test]
fn foreground_restore_waits_passes_the_exit_code_and_deletes() {
    let s = probe_sandbox("snapfg");
    let (img, _) = probe_image(&s);
    let rid = unique_id("snapfg-r");
    let pid_file = s.dir.path().join("restored.pid");
    let out = s.dir.path().join("out-fg");
    // Not detached: sprout waits for the process and relays its status.
    let mut child = restore_foreground(&s, &img, &rid, &pid_file, &out, &[]);
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(s.state(&rid)["pid"].as_i64(), Some(pid as i64));
    assert_eq!(s.status(&rid), "running");
    assert!(
        child.try_wait().unwrap().is_none(),
        "a foreground restore returned while its process runs"
    );
    // The restored process is the one writing to sprout's stdout.
    s.ok(&["kill", &rid, "USR1"]);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42), "{}", stderr_of(&out));
    let after = lines(&out);
    assert_eq!(fields(&after, "after-thread")["accept"], "ok", "{after:?}");
    // Deleted once it exited: nothing left.
    assert!(s.fails(&["state", &rid]).contains(&rid));
    s.assert_clean(&rid);
    // --timings: one line naming every stage with its time.
    let timings = stderr_of(&out);
    let line = timings
        .lines()
        .find(|l| l.starts_with("restore: "))
        .unwrap_or_else(|| panic!("no timings in {timings:?}"));
    // The sandbox needs nothing of the init helper's: it is made directly.
    for stage in [
        "prepare sandbox",
        "clone",
        "open image",
        "rootfs wait",
        "exec stop",
        "sandbox",
        "check files",
        "map memory",
        "fill memory",
        "process state",
        "threads",
        "fds",
        "timers and signals",
        "credentials",
        "resume",
    ] {
        let at = line
            .find(&format!("{stage} "))
            .unwrap_or_else(|| panic!("no {stage:?} in {line:?}"));
        let rest = &line[at + stage.len() + 1..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        assert!(
            digits > 0 && rest[digits..].starts_with("µs"),
            "{stage}: {line:?}"
        );
    }
    assert!(line.contains("(total "), "{line:?}");
}

#[test]
fn restore_with_a_console_socket_puts_the_process_on_the_terminal() {
    let mut s = program_sandbox("snaptty", "counter", &["20"]);
    let (id, out1) = run_detached(&s, "out1");
    assert!(wait_until(Duration::from_secs(10), || lines(&out1).len() >= 3));
    let img = checkpoint(&s, &id);
    let before = count_of(lines(&out1).last().unwrap());
    s.ok(&["delete", "--force", &id]);

    // The same process restored into a sandbox with a terminal: its
    // stdout, a file when dumped, is now the pty the console socket got.
    s.config()["process"]["terminal"] = true.into();
    s.write_config();
    let sock = s.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let rid = unique_id("snaptty-r");
    s.ok(&[
        "restore",
        "--image-path",
        img.to_str().unwrap(),
        "--bundle",
        s.bundle_str(),
        "--console-socket",
        sock.to_str().unwrap(),
        "-d",
        &rid,
    ]);
    let master = std::fs::File::from(recv_fd(&listener));
    let pid = s.state(&rid)["pid"].as_i64().unwrap();
    for fd in 0..=2 {
        assert_eq!(
            fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap(),
            Path::new("/dev/pts/0"),
            "fd {fd}"
        );
    }
    // Read the terminal from a thread: a read blocks until output comes.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut master = master;
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            while let Ok(b) = rx.try_recv() {
                text.push_str(&String::from_utf8_lossy(&b));
            }
            text.matches('\n').count() >= 3
        }),
        "nothing on the terminal: {text:?}"
    );
    let counts: Vec<u64> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .take(3)
        .map(count_of)
        .collect();
    assert_eq!(counts, [before + 1, before + 2, before + 3], "{text:?}");
    s.ok(&["delete", "--force", &rid]);
    s.assert_clean(&rid);
}

#[test]
fn shared_memory_mapped_twice_stays_one_object() {
    let s = program_sandbox("snapshm", "sharedmap", &[]);
    let (id, out1) = run_detached(&s, "out1");
    assert!(has_line(&out1, "sharedmap ready"), "{:?}", lines(&out1));
    let img = checkpoint(&s, &id);
    s.ok(&["delete", "--force", &id]);
    // Two objects (the memfd, the shared anonymous region), each mapped by
    // two VMAs.
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(img.join("manifest.json")).unwrap()).unwrap();
    let body = &manifest["body"];
    assert_eq!(
        body["shared_memory"].as_array().unwrap().len(),
        2,
        "{}",
        body["shared_memory"]
    );
    for object in 0..2 {
        let users = body["vmas"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["backing"]["kind"] == "shared_memory" && v["backing"]["object"] == object)
            .count();
        assert_eq!(users, 2, "object {object}: {}", body["vmas"]);
    }

    let rid = unique_id("snapshm-r");
    let out2 = s.dir.path().join("out2");
    assert!(
        restore_detached(&s, &img, &rid, &out2).success(),
        "{}",
        stderr_of(&out2)
    );
    s.ok(&["kill", &rid, "USR1"]);
    assert!(wait_until(Duration::from_secs(10), || !lines(&out2).is_empty()));
    assert_eq!(lines(&out2), ["sharedmap ok"]);
    assert!(wait_until(Duration::from_secs(5), || s.status(&rid) == "stopped"));
    s.ok(&["delete", &rid]);
    s.assert_clean(&rid);
}

#[test]
fn checkpoint_refuses_system_v_shared_memory_naming_it() {
    let s = program_sandbox("snapsysv", "sysvshm", &[]);
    let (id, out) = run_detached(&s, "out");
    assert!(
        has_line(&out, "sysvshm ready"),
        "{:?} {}",
        lines(&out),
        stderr_of(&out)
    );
    let err = refused_checkpoint(&s, &id);
    assert!(
        err.contains("System V shared memory") && err.contains("key 0x00005eed"),
        "{err}"
    );
    assert!(err.contains("the mapping at 0x"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    s.ok(&["delete", "--force", &id]);
    s.assert_clean(&id);
}

// ---- lazy loading with userfaultfd, working sets, cold images ----

/// `restore -d --timings` of `img` as `rid` with `flags` (lazy loading),
/// its output appended to `out`; returns the pid of the process left
/// loading memory, if the restore reported one.
fn restore_lazily(s: &Sandbox, img: &Path, rid: &str, out: &Path, flags: &[&str]) -> Option<i32> {
    let mut timed = vec!["--timings"];
    timed.extend_from_slice(flags);
    let st = sprout_to(s, &restore_args(s, img, rid, &timed), out);
    let err = stderr_of(out);
    assert!(st.success(), "lazy restore of {rid} failed: {err}");
    let line = err
        .lines()
        .rev()
        .find(|l| l.starts_with("memory: lazy"))
        .unwrap_or_else(|| panic!("{rid} was not restored lazily: {err}"));
    let pid: i32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    (pid > 0).then_some(pid)
}

/// The loader `pid` (if any) exits once its work is done.
fn loader_exits(pid: Option<i32>) {
    if let Some(pid) = pid {
        assert!(
            wait_until(Duration::from_secs(20), || !pid_alive(pid)),
            "the loader {pid} is still running"
        );
    }
}

/// Once its `loader` exits on its own, deletes the lazily restored `rid`
/// (`--force`: it may still run) and checks nothing is left.
fn loaded_then_deleted(s: &Sandbox, rid: &str, loader: Option<i32>, delete: &[&str]) {
    loader_exits(loader);
    let mut args = vec!["delete"];
    args.extend_from_slice(delete);
    args.push(rid);
    s.ok(&args);
    s.assert_clean(rid);
}

/// Restores `img` lazily, recording its working set, waits for two lines
/// of output, saves the recording and deletes the container. Returns what
/// `image profile` said.
fn record_working_set(s: &Sandbox, img: &Path, rid_prefix: &str) -> String {
    let rid = unique_id(rid_prefix);
    let out = s.dir.path().join("out-rec");
    let loader = restore_lazily(s, img, &rid, &out, &["--record-working-set"]);
    assert!(has_lines(&out, 2));
    let saved = s.ok(&["image", "profile", &rid]);
    s.ok(&["delete", "--force", &rid]);
    loader_exits(loader);
    saved
}

/// `image verify` of `img` fails with a report that names the working set
/// and says all of `verify_says`; a lazy restore of it fails before it
/// starts the process, with one line that says all of `restore_says`
/// (compared lowercased), and leaves nothing.
fn assert_working_set_refused(
    s: &Sandbox,
    img: &Path,
    rid_prefix: &str,
    verify_says: &[&str],
    restore_says: &[&str],
) {
    let report = s.sprout(&["image", "verify", img.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&report.stdout).to_lowercase();
    assert_eq!(report.status.code(), Some(1), "{text}");
    assert!(
        text.contains("working set: failed") && verify_says.iter().all(|w| text.contains(w)),
        "verify should report {verify_says:?}: {text}"
    );
    let rid = unique_id(rid_prefix);
    let err = s.fails(&restore_args(s, img, &rid, &["--lazy-pages"]));
    assert!(
        restore_says.iter().all(|w| err.to_lowercase().contains(w)),
        "restore should fail with {restore_says:?}: {err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    s.assert_clean(&rid);
}

#[test]
fn lazy_restores_continue_the_counter_and_every_thread() {
    let s = program_sandbox("lazyctr", "counter", &["20"]);
    let (img, out1) = run_and_dump(&s, |out| has_lines(out, 5));
    let before = count_of(lines(&out1).last().unwrap());
    let rid = unique_id("lazyctr-r");
    let out2 = s.dir.path().join("out2");
    let loader = restore_lazily(&s, &img, &rid, &out2, &["--lazy-pages"]);
    assert!(
        has_lines(&out2, 3),
        "no output after a lazy restore: {}",
        stderr_of(&out2)
    );
    let after = lines(&out2);
    assert_eq!(count_of(&after[0]), before + 1, "{after:?}");
    // Everything loaded, the loader the restore left behind is gone.
    loaded_then_deleted(&s, &rid, loader, &["--force"]);

    let s = threads_sandbox("lazythr");
    let (img, out1) = run_and_dump(&s, |out| has_lines(out, 3));
    let rid = unique_id("lazythr-r");
    let out2 = s.dir.path().join("out2");
    let loader = restore_lazily(&s, &img, &rid, &out2, &["--lazy-pages"]);
    assert!(has_lines(&out2, 3), "no progress: {}", stderr_of(&out2));
    assert_threads_continue(lines(&out1).last().unwrap(), &lines(&out2));
    loaded_then_deleted(&s, &rid, loader, &["--force"]);
}

#[test]
fn lazy_memory_semantics_hold_while_pages_are_missing() {
    // MADV_DONTNEED before the dump, calloc after free, with the rest
    // loading in the background.
    let s = program_sandbox("lazymemsem", "memsem", &[]);
    let (img, _) = run_and_dump(&s, |out| has_line(out, "memsem ready"));
    let rid = unique_id("lazymemsem-r");
    let out2 = s.dir.path().join("out2");
    let loader = restore_lazily(&s, &img, &rid, &out2, &["--lazy-pages"]);
    release_and_expect(&s, &rid, &out2, "memsem ok");
    loaded_then_deleted(&s, &rid, loader, &[]);

    // Recording loads nothing ahead: every step of lazymem (drop, move,
    // unmap, fork) meets pages still missing.
    let s = program_sandbox("lazymem", "lazymem", &[]);
    let (img, _) = run_and_dump(&s, |out| has_line(out, "lazymem ready"));
    let rid = unique_id("lazymem-r");
    let out2 = s.dir.path().join("out2");
    let loader = restore_lazily(&s, &img, &rid, &out2, &["--record-working-set"]);
    // It exits: its recording ends with it and is saved.
    release_and_expect(&s, &rid, &out2, "lazymem ok");
    loader_exits(loader);
    let report = s.ok(&["image", "verify", img.to_str().unwrap()]);
    assert!(report.contains("working set: ok"), "{report}");
    s.ok(&["delete", &rid]);
    s.assert_clean(&rid);

    // Again, with that working set loaded first and the rest in the
    // background racing the program.
    let rid = unique_id("lazymem-ws");
    let out3 = s.dir.path().join("out3");
    let loader = restore_lazily(&s, &img, &rid, &out3, &["--lazy-pages"]);
    release_and_expect(&s, &rid, &out3, "lazymem ok");
    loaded_then_deleted(&s, &rid, loader, &[]);
}

#[test]
fn killing_a_container_while_its_memory_loads_leaves_nothing() {
    let s = program_sandbox("lazykill", "counter", &["20"]);
    let (img, _) = run_and_dump(&s, |out| has_lines(out, 3));
    // A recording loads only what faults: its loader stays until told.
    let rid = unique_id("lazykill-r");
    let out2 = s.dir.path().join("out2");
    let loader = restore_lazily(&s, &img, &rid, &out2, &["--record-working-set"])
        .expect("a detached lazy restore leaves a loader");
    assert!(has_lines(&out2, 3));
    assert!(pid_alive(loader));
    let sock = s.root.join("recording").join(format!("{rid}.sock"));
    assert!(sock.exists());
    // A second recording of the same container is refused.
    let err = s.fails(&restore_args(&s, &img, &rid, &["--record-working-set"]));
    assert!(err.contains("already recording"), "{err}");
    // A checkpoint now would take missing pages for zeros: refused.
    let again = s.dir.path().join("image-again");
    let err = s.fails(&["checkpoint", "--image-path", again.to_str().unwrap(), &rid]);
    assert!(err.contains("userfaultfd"), "{err}");
    assert_eq!(s.status(&rid), "running");
    s.ok(&["delete", "--force", &rid]);
    loader_exits(Some(loader));
    assert!(!sock.exists(), "the recording socket was left behind");
    s.assert_clean(&rid);
    let err = s.fails(&["image", "profile", &rid]);
    assert!(err.contains("not recording"), "{err}");
}

/// Writes `body` (JSON) as the working set of `img` with a correct
/// checksum and the given version.
fn write_working_set(img: &Path, body: &str, version: u32) {
    let script = r#"
import hashlib, sys
body, version, path = sys.argv[1], sys.argv[2], sys.argv[3]
doc = '{"format":"sprout-working-set","version":' + version + ',"checksum":"sha256:' + hashlib.sha256(body.encode()).hexdigest() + '","body":' + body + '}'
open(path, "w").write(doc)
"#;
    let st = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script, body, &version.to_string()])
        .arg(img.join("working-set.json"))
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn bad_working_sets_are_refused_naming_the_problem() {
    let s = program_sandbox("lazybadws", "counter", &["50"]);
    let (img, _) = run_and_dump(&s, |out| has_lines(out, 1));
    // Record a real one to mutate.
    let saved = record_working_set(&s, &img, "lazybadws-rec");
    assert!(saved.contains("pages in"), "{saved}");
    let good = fs::read_to_string(img.join("working-set.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&good).unwrap();
    let digest = doc["body"]["image"].as_str().unwrap().to_string();
    assert!(!doc["body"]["ranges"].as_array().unwrap().is_empty());

    let refused = |want: &str| {
        assert_working_set_refused(
            &s,
            &img,
            "lazybadws-r",
            &[want],
            &["working-set.json", want],
        )
    };
    // A flipped byte.
    let mut bytes = good.clone().into_bytes();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x01;
    fs::write(img.join("working-set.json"), &bytes).unwrap();
    refused("working-set.json");
    // Truncated.
    fs::write(img.join("working-set.json"), &good[..good.len() / 2]).unwrap();
    refused("eof");
    // Another version.
    write_working_set(&img, &format!(r#"{{"image":"{digest}","ranges":[]}}"#), 3);
    refused("version 3");
    // A range outside the image's mappings, with a valid checksum.
    write_working_set(
        &img,
        &format!(r#"{{"image":"{digest}","ranges":[{{"start":"0x1000","pages":4}}]}}"#),
        1,
    );
    refused("not inside the image's mappings");
    // Recorded from another image.
    write_working_set(
        &img,
        &format!(r#"{{"image":"{}","ranges":[]}}"#, "ab".repeat(32)),
        1,
    );
    refused("recorded from image");
    // Without it, the image restores lazily again.
    fs::remove_file(img.join("working-set.json")).unwrap();
    let rid = unique_id("lazybadws-ok");
    let out3 = s.dir.path().join("out3");
    let loader = restore_lazily(&s, &img, &rid, &out3, &["--lazy-pages"]);
    assert!(has_lines(&out3, 2));
    loaded_then_deleted(&s, &rid, loader, &["--force"]);
}

#[test]
fn the_working_sets_pages_file_is_checked_before_the_process_runs() {
    let s = program_sandbox("lazywsimg", "counter", &["20"]);
    let (img, out) = run_and_dump(&s, |out| has_lines(out, 3));
    let before = count_of(lines(&out).last().unwrap());
    let saved = record_working_set(&s, &img, "lazywsimg-rec");
    assert!(saved.contains("working-set.img"), "{saved}");
    let report = s.ok(&["image", "verify", img.to_str().unwrap()]);
    assert!(report.contains("working-set.img: "), "{report}");
    for tmp in ["working-set.img.tmp", "working-set.json.tmp"] {
        assert!(!img.join(tmp).exists(), "{tmp} left behind");
    }
    let ws_img = img.join("working-set.img");
    let good = fs::read(&ws_img).unwrap();
    assert!(!good.is_empty() && good.len().is_multiple_of(4096));

    // With it, a lazy restore continues from the image.
    let rid = unique_id("lazywsimg-ok");
    let out3 = s.dir.path().join("out3");
    let loader = restore_lazily(&s, &img, &rid, &out3, &["--lazy-pages"]);
    assert!(wait_until(Duration::from_secs(10), || !lines(&out3).is_empty()));
    assert_eq!(count_of(&lines(&out3)[0]), before + 1);
    loaded_then_deleted(&s, &rid, loader, &["--force"]);

    let refused = |want: &[&str]| assert_working_set_refused(&s, &img, "lazywsimg-r", want, want);
    // A flipped byte: the chunk holding it is named.
    let mut bytes = good.clone();
    bytes[good.len() / 2 + 7] ^= 0x40;
    fs::write(&ws_img, &bytes).unwrap();
    refused(&["working-set.img: chunk", "corrupt"]);
    // Truncated, too long, missing.
    fs::write(&ws_img, &good[..good.len() - 4096]).unwrap();
    refused(&["working-set.img", "truncated"]);
    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 4096]);
    fs::write(&ws_img, &longer).unwrap();
    refused(&["working-set.img", "trailing data"]);
    fs::remove_file(&ws_img).unwrap();
    refused(&["working-set.img", "no such file"]);
    // Writable by others.
    fs::write(&ws_img, &good).unwrap();
    fs::set_permissions(&ws_img, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    refused(&["working-set.img", "writable by group or others"]);
    fs::set_permissions(&ws_img, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    // Meanwhile the image itself is intact: eager and lazy restores without
    // the working set do not read the file.
    fs::write(&ws_img, &bytes).unwrap();
    for (name, flags) in [
        ("eager", &[][..]),
        ("nows", &["--lazy-pages", "--no-working-set"][..]),
    ] {
        let rid = unique_id(&format!("lazywsimg-{name}"));
        let out = s.dir.path().join(format!("out-{name}"));
        let st = sprout_to(&s, &restore_args(&s, &img, &rid, flags), &out);
        assert!(st.success(), "{name}: {}", stderr_of(&out));
        assert!(wait_until(Duration::from_secs(10), || !lines(&out).is_empty()));
        assert_eq!(count_of(&lines(&out)[0]), before + 1, "{name}");
        s.ok(&["delete", "--force", &rid]);
        s.assert_clean(&rid);
    }
    // Restored, it is accepted again.
    fs::write(&ws_img, &good).unwrap();
    let report = s.ok(&["image", "verify", img.to_str().unwrap()]);
    assert!(report.contains("working set: ok"), "{report}");
}

#[test]
fn python_working_set_recorded_then_cold_lazy_restores_answer() {
    let mut s = python_sandbox("lazypy");
    let id = s.id.clone();
    let (img, first) = python_image(&s);
    without_cgroups_path(&mut s);

    // Record the first request's working set.
    let rec = format!("{id}-rec");
    let out = s.dir.path().join("out-rec");
    let loader = restore_lazily(&s, &img, &rec, &out, &["--record-working-set"]);
    let answer = requests_to(&s, &rec, 1);
    assert_eq!(answer["digest"], first["digest"]);
    let saved = s.ok(&["image", "profile", &rec]);
    assert!(saved.contains("pages in"), "{saved}");
    loaded_then_deleted(&s, &rec, loader, &["--force"]);
    let report = s.ok(&["image", "verify", img.to_str().unwrap()]);
    assert!(report.contains("working set: ok"), "{report}");

    // A cold image: nothing of it in the page cache.
    sprout::snapshot::image::evict_page_cache(&img).unwrap();
    let resident = sprout::snapshot::image::resident_fraction(&img).unwrap();
    assert!(resident < 0.05, "{resident} of pages.img still cached");
    let cold = format!("{id}-cold");
    let out = s.dir.path().join("out-cold");
    let loader = restore_lazily(&s, &img, &cold, &out, &["--lazy-pages"]);
    let answer = requests_to(&s, &cold, 1);
    assert_eq!(answer["digest"], first["digest"], "{answer}");
    assert_eq!(answer["requests"], 2, "{answer}");
    loaded_then_deleted(&s, &cold, loader, &["--force"]);

    // 20 lazy restores at once, each answering and diverging.
    let ids: Vec<String> = (0..20).map(|i| format!("{id}-l{i}")).collect();
    let loaders: Vec<Option<i32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ids
            .iter()
            .map(|rid| {
                let s = &s;
                let img = &img;
                scope.spawn(move || {
                    let out = s.dir.path().join(format!("out-{rid}"));
                    restore_lazily(s, img, rid, &out, &["--lazy-pages"])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, rid) in ids.iter().enumerate() {
        let last = requests_to(&s, rid, i % 2 + 1);
        assert_eq!(last["digest"], first["digest"], "{rid}");
        assert_eq!(last["requests"], 1 + (i % 2) as u64 + 1, "{rid}: {last}");
    }
    for l in loaders {
        loader_exits(l);
    }
    delete_all_clean(&s, &ids, &id);
}

#[test]
fn foreground_lazy_restore_records_until_asked_then_exits_cleanly() {
    let s = probe_sandbox("lazyfg");
    let (img, _) = probe_image(&s);
    let rid = unique_id("lazyfg-r");
    let pid_file = s.dir.path().join("restored.pid");
    let out = s.dir.path().join("out-fg");
    let mut child = restore_foreground(&s, &img, &rid, &pid_file, &out, &["--record-working-set"]);
    // The loader is this foreground sprout: it answers the profile request.
    let saved = s.ok(&["image", "profile", &rid]);
    assert!(
        saved.contains("pages in") && saved.contains("working-set.json"),
        "{saved}"
    );
    assert!(img.join("working-set.json").exists());
    let err = s.fails(&["image", "profile", &rid]);
    assert!(err.contains("not recording"), "{err}");
    s.ok(&["kill", &rid, "USR1"]);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42), "{}", stderr_of(&out));
    let timings = stderr_of(&out);
    let line = timings
        .lines()
        .find(|l| l.starts_with("memory: lazy (recording)"))
        .unwrap_or_else(|| panic!("{timings}"));
    assert!(
        line.ends_with(&format!("loader pid {}", child.id())),
        "{line}"
    );
    assert!(
        !s.root
            .join("recording")
            .join(format!("{rid}.sock"))
            .exists()
    );
    s.assert_clean(&rid);
    let report = s.ok(&["image", "verify", img.to_str().unwrap()]);
    assert!(report.contains("working set: ok"), "{report}");
}

#[test]
fn a_corrupt_chunk_found_while_loading_lazily_kills_the_container() {
    let s = python_sandbox("lazycorrupt");
    let (good, _) = python_image(&s);
    // A copy of the image with one byte flipped in a chunk in the middle
    // of pages.img: with nothing loaded ahead, the restore may not meet it;
    // the background pass does.
    let img = s.dir.path().join("corrupt");
    copy_image(&good, &img);
    let mut pages = fs::read(img.join("pages.img")).unwrap();
    let at = pages.len() / 2 + 100;
    pages[at] ^= 0xff;
    fs::write(img.join("pages.img"), pages).unwrap();

    let rid = unique_id("lazycorrupt-r");
    let out = s.dir.path().join("out-r");
    let st = sprout_to(
        &s,
        &restore_args(&s, &img, &rid, &["--timings", "--lazy-pages"]),
        &out,
    );
    let err = stderr_of(&out);
    if !st.success() {
        // Met during the restore: refused before the process ran.
        assert!(err.contains("chunk") && err.contains("corrupt"), "{err}");
        s.assert_clean(&rid);
        return;
    }
    // Met afterwards: the loader killed the container and exited.
    let loader: i32 = err
        .lines()
        .find(|l| l.starts_with("memory: lazy"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        wait_until(Duration::from_secs(20), || s.status(&rid) == "stopped"),
        "the container runs on with a corrupt chunk in its memory"
    );
    loader_exits((loader > 0).then_some(loader));
    s.ok(&["delete", &rid]);
    s.assert_clean(&rid);
}

/// Hundreds of threads, each counting on its own; the main thread prints
/// the smallest count.
const MANY_THREADS: &str = "import threading, time
counts = [0] * 600
def run(i):
    while True:
        time.sleep(0.02)
        counts[i] += 1
for i in range(600):
    threading.Thread(target=run, args=(i,), daemon=True).start()
while True:
    time.sleep(0.1)
    print('least', min(counts), flush=True)
";

#[test]
fn a_process_with_hundreds_of_threads_restores_them_all() {
    let mut s = python_sandbox("snapmany");
    s.set_args(&["/usr/bin/python3", "-c", MANY_THREADS]);
    let id = unique_id("snapmany");
    let out = s.dir.path().join("out");
    assert!(
        sprout_to(&s, &["run", "-d", "--bundle", s.bundle_str(), &id], &out).success(),
        "{}",
        stderr_of(&out)
    );
    let least = |out: &Path| -> u64 {
        lines(out)
            .iter()
            .filter_map(|l| l.strip_prefix("least ")?.parse().ok())
            .max()
            .unwrap_or(0)
    };
    assert!(wait_until(Duration::from_secs(30), || least(&out) > 0));
    let img = checkpoint(&s, &id);
    let before = least(&out);
    s.ok(&["delete", "--force", &id]);

    let rid = unique_id("snapmany-r");
    let out_r = restored(&s, &img, &rid, "out-r");
    let pid = s.state(&rid)["pid"].as_i64().unwrap() as i32;
    assert_eq!(tasks(pid).len(), 601);
    // Every thread runs on: the least count passes the dumped one.
    assert!(
        wait_until(Duration::from_secs(30), || least(&out_r) > before + 2),
        "before {before}, after {:?}",
        lines(&out_r)
    );
    s.ok(&["delete", "--force", &rid]);
    s.assert_clean(&rid);
}
