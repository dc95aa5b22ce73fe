//! Checkpoint and restore of real processes in real containers, through the
//! CLI: a static counter, a threaded dynamic C program, the asyncio Python
//! function (20 restores at once), anonymous-memory semantics, and images
//! that must be refused.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

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
    let parse = counters;
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
