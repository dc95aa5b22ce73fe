//! Checkpoint and restore of real processes in real containers, through the
//! CLI: a static counter, a threaded dynamic C program, the asyncio Python
//! function (20 restores at once), anonymous-memory semantics, and images
//! that must be refused.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// Builds tests/programs/NAME.c into the target's temp dir (once).
fn program(name: &str, static_link: bool) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("snap-{name}"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/programs/{name}.c"));
    // Build to a unique name and rename: tests run in parallel.
    let tmp = out.with_extension(format!("tmp{}", unique_id("b")));
    let mut cmd = std::process::Command::new("gcc");
    if static_link {
        cmd.arg("-static");
    }
    let st = cmd
        .args(["-O2", "-pthread", "-o"])
        .arg(&tmp)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(st.success(), "building {name}");
    fs::rename(&tmp, &out).unwrap();
    out
}

/// A sandbox whose rootfs sees the host's /usr read-only (merged-usr:
/// /lib and /lib64 are links into it), for dynamic programs and Python.
fn with_usr(s: &mut Sandbox) {
    let rootfs = s.bundle.join("rootfs");
    let _ = std::os::unix::fs::symlink("usr/lib", rootfs.join("lib"));
    let _ = std::os::unix::fs::symlink("usr/lib64", rootfs.join("lib64"));
    fs::create_dir_all(rootfs.join("usr")).unwrap();
    s.config()["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]}));
    s.write_config();
}

/// Runs `sprout args` with stdout/stderr appended to `out` (the container
/// keeps writing there after sprout returns).
fn sprout_to(s: &Sandbox, args: &[&str], out: &Path) -> std::process::ExitStatus {
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .unwrap();
    let e = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.with_extension("err"))
        .unwrap();
    s.cmd()
        .args(args)
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(e)
        .status()
        .unwrap()
}

fn stderr_of(out: &Path) -> String {
    fs::read_to_string(out.with_extension("err")).unwrap_or_default()
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn count_of(line: &str) -> u64 {
    line.strip_prefix("count ").unwrap().parse().unwrap()
}

#[test]
fn static_counter_continues_after_restore() {
    let mut s = Sandbox::new("snapctr");
    fs::copy(
        program("counter", true),
        s.bundle.join("rootfs/bin/counter"),
    )
    .unwrap();
    s.set_args(&["/bin/counter", "20"]);
    let id = s.id.clone();
    let out1 = s.dir.path().join("out1");
    assert!(
        sprout_to(&s, &["run", "-d", "--bundle", s.bundle_str(), &id], &out1).success(),
        "{}",
        stderr_of(&out1)
    );
    assert!(wait_until(Duration::from_secs(10), || lines(&out1).len() >= 5));
    let img = s.dir.path().join("image");
    s.ok(&["checkpoint", "--image-path", img.to_str().unwrap(), &id]);
    // The default kills the dumped process.
    assert!(wait_until(Duration::from_secs(5), || s.status(&id) == "stopped"));
    let before = count_of(lines(&out1).last().unwrap());
    s.ok(&["delete", &id]);
    s.assert_clean(&id);
    let report = s.ok(&["image", "verify", img.to_str().unwrap()]);
    assert!(!report.is_empty());

    let id2 = unique_id("snapctr-r");
    let out2 = s.dir.path().join("out2");
    let st = sprout_to(
        &s,
        &[
            "restore",
            "--image-path",
            img.to_str().unwrap(),
            "--bundle",
            s.bundle_str(),
            "-d",
            &id2,
        ],
        &out2,
    );
    assert!(st.success(), "restore failed: {}", stderr_of(&out2));
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

#[test]
fn leave_running_keeps_the_process_going() {
    let mut s = Sandbox::new("snapleave");
    fs::copy(
        program("counter", true),
        s.bundle.join("rootfs/bin/counter"),
    )
    .unwrap();
    s.set_args(&["/bin/counter", "10"]);
    let id = s.id.clone();
    let out = s.dir.path().join("out");
    assert!(sprout_to(&s, &["run", "-d", "--bundle", s.bundle_str(), &id], &out).success());
    assert!(wait_until(Duration::from_secs(10), || lines(&out).len() >= 3));
    let img = s.dir.path().join("image");
    s.ok(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        img.to_str().unwrap(),
        &id,
    ]);
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

#[test]
fn threaded_dynamic_program_resumes_all_threads() {
    let mut s = Sandbox::new("snapthr");
    with_usr(&mut s);
    fs::copy(
        program("threads", false),
        s.bundle.join("rootfs/bin/threads"),
    )
    .unwrap();
    s.set_args(&["/bin/threads"]);
    let id = s.id.clone();
    let out1 = s.dir.path().join("out1");
    assert!(
        sprout_to(&s, &["run", "-d", "--bundle", s.bundle_str(), &id], &out1).success(),
        "{}",
        stderr_of(&out1)
    );
    assert!(wait_until(Duration::from_secs(10), || lines(&out1).len() >= 3));
    let img = s.dir.path().join("image");
    s.ok(&["checkpoint", "--image-path", img.to_str().unwrap(), &id]);
    s.ok(&["delete", "--force", &id]);
    let id2 = unique_id("snapthr-r");
    let out2 = s.dir.path().join("out2");
    let st = sprout_to(
        &s,
        &[
            "restore",
            "--image-path",
            img.to_str().unwrap(),
            "--bundle",
            s.bundle_str(),
            "-d",
            &id2,
        ],
        &out2,
    );
    assert!(st.success(), "restore failed: {}", stderr_of(&out2));
    assert!(
        wait_until(Duration::from_secs(10), || lines(&out2).len() >= 3),
        "no progress: {}",
        stderr_of(&out2)
    );
    let parse = |l: &str| -> Vec<u64> {
        l.split_whitespace()
            .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.parse().unwrap()))
            .collect()
    };
    let last_before = parse(lines(&out1).last().unwrap());
    let after = lines(&out2);
    let first = parse(&after[0]);
    let last = parse(after.last().unwrap());
    // t, a, b, c continue from their dumped values and keep growing: every
    // thread runs and the timer fires; the blocked SIGUSR2 is still pending.
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
    s.ok(&["delete", "--force", &id2]);
    s.assert_clean(&id2);
}

#[test]
fn anonymous_memory_semantics_survive_restore() {
    let mut s = Sandbox::new("snapmem");
    fs::copy(program("memsem", true), s.bundle.join("rootfs/bin/memsem")).unwrap();
    s.set_args(&["/bin/memsem"]);
    let id = s.id.clone();
    let out1 = s.dir.path().join("out1");
    assert!(sprout_to(&s, &["run", "-d", "--bundle", s.bundle_str(), &id], &out1).success());
    assert!(wait_until(Duration::from_secs(10), || lines(&out1)
        .iter()
        .any(|l| l == "memsem ready")));
    let img = s.dir.path().join("image");
    s.ok(&["checkpoint", "--image-path", img.to_str().unwrap(), &id]);
    s.ok(&["delete", "--force", &id]);
    let id2 = unique_id("snapmem-r");
    let out2 = s.dir.path().join("out2");
    assert!(
        sprout_to(
            &s,
            &[
                "restore",
                "--image-path",
                img.to_str().unwrap(),
                "--bundle",
                s.bundle_str(),
                "-d",
                &id2
            ],
            &out2
        )
        .success(),
        "{}",
        stderr_of(&out2)
    );
    s.ok(&["kill", &id2, "USR1"]);
    assert!(wait_until(Duration::from_secs(10), || !lines(&out2).is_empty()));
    assert_eq!(lines(&out2), vec!["memsem ok".to_string()]);
    assert!(wait_until(Duration::from_secs(5), || s.status(&id2) == "stopped"));
    s.ok(&["delete", &id2]);
    s.assert_clean(&id2);
}

/// Sends one HTTP request to 127.0.0.1:port inside the network namespace of
/// `pid`, from a thread that joins it (traffic stays on that loopback).
fn http_get_in_netns(pid: i32, port: u16, path: &str) -> std::io::Result<String> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let path = path.to_string();
    std::thread::spawn(move || -> std::io::Result<String> {
        // SAFETY: setns on this thread only (network namespaces are per
        // thread); the thread exits afterwards.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(c, "GET {path} HTTP/1.1\r\nHost: fn\r\n\r\n")?;
        let mut resp = String::new();
        c.read_to_string(&mut resp)?;
        Ok(resp)
    })
    .join()
    .unwrap()
}

fn lo_up(pid: i32) {
    let st = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "ip",
            "link",
            "set",
            "lo",
            "up",
        ])
        .status()
        .unwrap();
    assert!(st.success());
}

fn json_body(resp: &str) -> serde_json::Value {
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("bad response {resp:?}: {e}"))
}

fn python_sandbox(name: &str) -> Sandbox {
    let mut s = Sandbox::new(name);
    with_usr(&mut s);
    let app = s.bundle.join("rootfs/app");
    fs::create_dir_all(&app).unwrap();
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/function.py"),
        app.join("function.py"),
    )
    .unwrap();
    s.set_args(&["/usr/bin/python3", "/app/function.py", "8080"]);
    s
}

#[test]
fn python_function_restores_many_times_with_diverging_state() {
    let mut s = python_sandbox("snappy");
    let id = s.id.clone();
    let out = s.dir.path().join("out");
    assert!(
        sprout_to(&s, &["run", "-d", "--bundle", s.bundle_str(), &id], &out).success(),
        "{}",
        stderr_of(&out)
    );
    assert!(
        wait_until(Duration::from_secs(30), || lines(&out)
            .iter()
            .any(|l| l == "ready")),
        "{}",
        stderr_of(&out)
    );
    let pid = s.state(&id)["pid"].as_i64().unwrap() as i32;
    lo_up(pid);
    let first = json_body(&http_get_in_netns(pid, 8080, "/warm").unwrap());
    assert_eq!(first["requests"], 1);
    let img = s.dir.path().join("image");
    s.ok(&["checkpoint", "--image-path", img.to_str().unwrap(), &id]);
    s.ok(&["delete", "--force", &id]);

    // 20 restores of the one image at once, each in its own sandbox: no
    // cgroupsPath, so each gets its own cgroup (named after its id).
    s.config()["linux"]
        .as_object_mut()
        .unwrap()
        .remove("cgroupsPath");
    s.write_config();
    let ids: Vec<String> = (0..20).map(|i| format!("{id}-r{i}")).collect();
    std::thread::scope(|scope| {
        for rid in &ids {
            let s = &s;
            let img = &img;
            scope.spawn(move || {
                let out = s.dir.path().join(format!("out-{rid}"));
                let st = sprout_to(
                    s,
                    &[
                        "restore",
                        "--image-path",
                        img.to_str().unwrap(),
                        "--bundle",
                        s.bundle_str(),
                        "-d",
                        rid,
                    ],
                    &out,
                );
                assert!(st.success(), "restore {rid}: {}", stderr_of(&out));
            });
        }
    });
    for (i, rid) in ids.iter().enumerate() {
        let pid = s.state(rid)["pid"].as_i64().unwrap() as i32;
        lo_up(pid);
        // Each instance answers with the dumped state, then diverges:
        // instance i gets i+1 more requests.
        let mut last = serde_json::Value::Null;
        for _ in 0..=i % 3 {
            last = json_body(&http_get_in_netns(pid, 8080, &format!("/{rid}")).unwrap());
        }
        assert_eq!(
            last["digest"], first["digest"],
            "{rid} lost its initialized state"
        );
        assert_eq!(last["requests"], 1 + (i % 3) as u64 + 1, "{rid}: {last}");
        assert_eq!(last["path"], format!("/{rid}"));
    }
    for rid in &ids {
        s.ok(&["delete", "--force", rid]);
        s.assert_clean(rid);
    }
    assert!(
        cgroup_leftovers(&id).is_empty(),
        "{:?}",
        cgroup_leftovers(&id)
    );
}

#[test]
fn bad_images_are_refused_and_leave_nothing() {
    let mut s = Sandbox::new("snapbad");
    fs::copy(
        program("counter", true),
        s.bundle.join("rootfs/bin/counter"),
    )
    .unwrap();
    s.set_args(&["/bin/counter", "50"]);
    let id = s.id.clone();
    let out = s.dir.path().join("out");
    assert!(sprout_to(&s, &["run", "-d", "--bundle", s.bundle_str(), &id], &out).success());
    assert!(wait_until(Duration::from_secs(10), || !lines(&out).is_empty()));
    let good = s.dir.path().join("good");
    s.ok(&["checkpoint", "--image-path", good.to_str().unwrap(), &id]);
    s.ok(&["delete", "--force", &id]);

    let copy = |name: &str| -> PathBuf {
        let d = s.dir.path().join(name);
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        for f in ["manifest.json", "pages.img"] {
            fs::copy(good.join(f), d.join(f)).unwrap();
        }
        d
    };
    let try_restore = |img: &Path, want: &str| {
        let rid = unique_id("snapbad-r");
        let err = s.fails(&[
            "restore",
            "--image-path",
            img.to_str().unwrap(),
            "--bundle",
            s.bundle_str(),
            "-d",
            &rid,
        ]);
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
    let mut s = Sandbox::new("snapinotify");
    fs::copy(
        program("inotify", true),
        s.bundle.join("rootfs/bin/inotify"),
    )
    .unwrap();
    s.set_args(&["/bin/inotify"]);
    let id = s.id.clone();
    s.ok(&["run", "-d", "--bundle", s.bundle_str(), &id]);
    std::thread::sleep(Duration::from_millis(300));
    let img = s.dir.path().join("image");
    let err = s.fails(&["checkpoint", "--image-path", img.to_str().unwrap(), &id]);
    assert!(err.contains("inotify") && err.contains("fd "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!img.exists() || fs::read_dir(&img).unwrap().next().is_none());
    assert_eq!(s.status(&id), "running");
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
    let img = s.dir.path().join("image");
    let err = s.fails(&["checkpoint", "--image-path", img.to_str().unwrap(), &id]);
    assert!(err.contains("child processes"), "{err}");
    assert!(!img.exists() || fs::read_dir(&img).unwrap().next().is_none());
    assert_eq!(
        s.status(&id),
        "running",
        "a refused checkpoint must leave the container running"
    );
    s.ok(&["delete", "--force", &id]);
    s.assert_clean(&id);
}
