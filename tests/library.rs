//! sprout embedded as a library: the runtime API from a multi-threaded
//! caller (this test harness), with captured stdio, exec, typed errors,
//! concurrent containers and a terminal over a console socket.

mod common;

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

use common::*;
use sprout::runtime::{CreateOptions, Error, ExecOptions, Runtime, Status, Takeover};

fn runtime(s: &Sandbox) -> Runtime {
    Runtime::builder()
        .root(&s.root)
        .init_binary(init_bin())
        .build()
        .unwrap()
}

fn pipe() -> (std::fs::File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds owned here.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

#[test]
fn create_start_wait_delete_with_captured_stdio() {
    let mut s = Sandbox::new("lib");
    s.set_args(&["sh", "-c", "echo out-$((6*7)); echo err >&2; exit 4"]);
    let rt = runtime(&s);
    let (mut out_r, out_w) = pipe();
    let (mut err_r, err_w) = pipe();
    let devnull: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let mut c = rt
        .create(
            &s.id,
            &s.bundle,
            CreateOptions {
                stdio: [Some(devnull), Some(out_w), Some(err_w)],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(c.status(), Status::Created);
    c.start().unwrap();
    // We are the init's parent: the exit code is ours to read.
    assert_eq!(c.wait().unwrap(), Some(4));
    assert_eq!(c.status(), Status::Stopped);
    let mut out = String::new();
    out_r.read_to_string(&mut out).unwrap();
    let mut err = String::new();
    err_r.read_to_string(&mut err).unwrap();
    assert_eq!(out, "out-42\n");
    assert_eq!(err, "err\n");
    c.delete(false).unwrap();
    s.assert_clean(&s.id.clone());
}

#[test]
fn exec_and_typed_errors() {
    let mut s = Sandbox::new("libexec");
    s.set_args(&["sleep", "1000"]);
    let rt = runtime(&s);
    let devnull = || -> Option<OwnedFd> { Some(std::fs::File::open("/dev/null").unwrap().into()) };
    let mut c = rt
        .create(
            &s.id,
            &s.bundle,
            CreateOptions {
                stdio: [devnull(), devnull(), devnull()],
                ..Default::default()
            },
        )
        .unwrap();
    c.start().unwrap();
    assert_eq!(c.status(), Status::Running);

    let mut process = c.spec().process().clone().unwrap();
    process.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "cat /proc/1/cmdline | tr '\\0' ' '".into(),
    ]));
    let (mut out_r, out_w) = pipe();
    let p = c
        .exec(
            process,
            ExecOptions {
                stdio: [devnull(), Some(out_w), devnull()],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(p.wait().unwrap(), Some(0));
    let mut out = String::new();
    out_r.read_to_string(&mut out).unwrap();
    assert_eq!(out.trim(), "sleep 1000");

    assert!(matches!(
        rt.container("no-such-container"),
        Err(Error::State(sprout::runtime::state::StateError::NotFound(
            _
        )))
    ));
    assert!(matches!(
        rt.container("../up"),
        Err(Error::InvalidId { .. })
    ));
    assert!(matches!(c.start(), Err(Error::WrongStatus { .. })));
    assert!(matches!(
        rt.create(&s.id, &s.bundle, CreateOptions::default()),
        Err(Error::State(sprout::runtime::state::StateError::Exists(_)))
    ));
    assert!(matches!(
        c.clone().delete(false),
        Err(Error::WrongStatus { .. })
    ));
    c.kill(libc::SIGKILL, false).unwrap();
    c.wait().unwrap();
    c.delete(false).unwrap();
    s.assert_clean(&s.id.clone());
}

#[test]
fn containers_in_parallel_do_not_collide() {
    let mut s = Sandbox::new("par");
    // No cgroupsPath: each container gets the default, its own id.
    s.config()["linux"]
        .as_object_mut()
        .unwrap()
        .remove("cgroupsPath");
    s.set_args(&["sh", "-c", "hostname; cat /proc/self/cgroup | grep memory"]);
    let rt = runtime(&s);
    let ids: Vec<String> = (0..8).map(|i| format!("{}-{i}", s.id)).collect();
    std::thread::scope(|scope| {
        for id in &ids {
            let rt = rt.clone();
            let bundle = s.bundle.clone();
            scope.spawn(move || {
                // Each container gets its own cgroup below the test's one.
                let (mut out_r, out_w) = pipe();
                let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
                let null2: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
                let mut c = rt
                    .create(
                        id,
                        &bundle,
                        CreateOptions {
                            stdio: [Some(null), Some(out_w), Some(null2)],
                            ..Default::default()
                        },
                    )
                    .unwrap();
                c.start().unwrap();
                assert_eq!(c.wait().unwrap(), Some(0));
                let mut out = String::new();
                out_r.read_to_string(&mut out).unwrap();
                assert!(out.starts_with("sprout-test\n"), "{out}");
                c.delete(false).unwrap();
            });
        }
    });
    for id in &ids {
        assert!(!s.root.join(id).exists());
    }
    assert!(
        cgroup_leftovers(&s.id).is_empty(),
        "{:?}",
        cgroup_leftovers(&s.id)
    );
    s.assert_clean(&s.id.clone());
}

#[test]
fn terminal_through_a_console_socket() {
    let mut s = Sandbox::new("tty");
    s.config()["process"]["terminal"] = true.into();
    s.config()["process"]["consoleSize"] = serde_json::json!({"height": 33, "width": 101});
    s.set_args(&[
        "sh",
        "-c",
        "tty; stty size; stat -c 'console %t:%T' /dev/console; \
         stat -c 'console %t:%T' /dev/pts/0; echo hello-tty",
    ]);
    let sock = s.dir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let rt = runtime(&s);
    let mut c = rt
        .create(
            &s.id,
            &s.bundle,
            CreateOptions {
                console_socket: Some(sock.clone()),
                ..Default::default()
            },
        )
        .unwrap();
    let master = recv_fd(&listener);
    c.start().unwrap();
    let mut f = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // Read until the slave closes (EIO) when the process exits.
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("33 101"), "{text}");
    assert!(text.contains("hello-tty"), "{text}");
    // /dev/console is a bind of that very pty.
    let consoles: Vec<&str> = text.lines().filter(|l| l.starts_with("console ")).collect();
    assert_eq!(consoles.len(), 2, "{text}");
    assert_eq!(consoles[0].trim(), consoles[1].trim(), "{text}");
    assert_eq!(c.wait().unwrap(), Some(0));
    c.delete(false).unwrap();
    s.assert_clean(&s.id.clone());
}

fn build_static(name: &str) -> std::path::PathBuf {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/programs/{name}.c"));
    let st = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(st.success(), "building {name}");
    out
}

#[test]
fn takeover_execs_the_given_program_before_credentials() {
    let mut s = Sandbox::new("takeover");
    // A sandbox that would drop everything: non-root user, no
    // capabilities, no_new_privs, a seccomp filter.
    s.config()["process"]["user"] = serde_json::json!({"uid": 65534, "gid": 65534});
    s.config()["process"]["capabilities"] = serde_json::json!({});
    s.config()["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ERRNO"}]});
    s.write_config();
    let probe = build_static("takeover_probe");
    let exe: OwnedFd = std::fs::File::open(&probe).unwrap().into();
    let rt = runtime(&s);
    let (mut out_r, out_w) = pipe();
    let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let null2: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let mut c = rt
        .create(
            &s.id,
            &s.bundle,
            CreateOptions {
                stdio: [Some(null), Some(out_w), Some(null2)],
                takeover: Some(Takeover {
                    exe,
                    rlimit_stack: Some((16 << 20, 16 << 20)),
                    inherit: Vec::new(),
                    holder: false,
                }),
                ..Default::default()
            },
        )
        .unwrap();
    c.release().unwrap();
    assert_eq!(c.wait().unwrap(), Some(0));
    let mut out = String::new();
    out_r.read_to_string(&mut out).unwrap();
    // Still root with every capability sprout has, no no_new_privs, no
    // seccomp: those are the restorer's to apply last.
    assert!(
        out.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
        "{out}"
    );
    let eff = out.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert_ne!(
        u64::from_str_radix(eff.split_whitespace().nth(1).unwrap(), 16).unwrap(),
        0,
        "{out}"
    );
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
    assert!(out.contains("Seccomp:\t0"), "{out}");
    assert!(out.contains(&format!("stack={} pid=1", 16 << 20)), "{out}");
    c.delete(false).unwrap();
    s.assert_clean(&s.id.clone());
}
