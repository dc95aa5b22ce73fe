//! File descriptors against real processes: tests/fds/prog.c, built static
//! with gcc at test time, opens one fd of every kind sprout restores (in a
//! network namespace of its own), is dumped, and its fds are restored into a
//! fresh copy of the same program started as an empty stub, which then
//! proves they work. Every process a test starts is killed through a pidfd
//! when the test ends, pass or fail; tracees are seized with
//! PTRACE_O_EXITKILL.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use sprout_snapshot::fds::{FdError, dump_fds, restore_fds};
use sprout_snapshot::image::{
    CharDevice, EpollTarget, Fd, FdObject, PipeEnd, SockAddr, Socket, SocketFamily, SocketOptions,
    SocketState, SocketType, StdStream,
};
use sprout_snapshot::proc::{FdInfo, parse_fdinfo};
use sprout_snapshot::ptrace::procfs;
use sprout_snapshot::ptrace::{
    Gadget, GadgetConfig, Options, Stop, Tid, TraceCtx, Tracer, find_hole, mem,
};

#[allow(dead_code)]
#[path = "image/common.rs"]
mod common;

const TIMEOUT: Duration = Duration::from_secs(60);

fn bin() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fds-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("prog");
        let tmp = out.with_extension(format!("tmp{}", std::process::id()));
        let mut gcc = Command::new("gcc")
            .args(["-O1", "-Wall", "-static", "-x", "c", "-", "-o"])
            .arg(&tmp)
            .stdin(Stdio::piped())
            .spawn()
            .expect("gcc");
        gcc.stdin
            .take()
            .unwrap()
            .write_all(include_bytes!("fds/prog.c"))
            .unwrap();
        assert!(gcc.wait().unwrap().success(), "gcc failed");
        std::fs::rename(&tmp, &out).unwrap();
        out
    })
}

/// A fresh directory for one test's file and socket path, removed when
/// dropped (declare it before the programs that use it).
struct TestDir(PathBuf);

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn test_dir(name: &str) -> TestDir {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("fds-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TestDir(d)
}

fn pidfd_kill(fd: &OwnedFd) {
    // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

/// The test program; killed and reaped through its pidfd when dropped.
struct Prog {
    _child: Child,
    pidfd: OwnedFd,
    pid: Tid,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Prog {
    fn spawn(args: &[&str], fd5: Option<OwnedFd>) -> Prog {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(fd) = fd5 {
            let raw = fd.as_raw_fd();
            // SAFETY: only dup2 (async-signal-safe) between fork and exec;
            // `fd` outlives the spawn.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(raw, 5) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().unwrap();
            drop(fd);
            return Prog::wrap(child);
        }
        Prog::wrap(cmd.spawn().unwrap())
    }

    fn wrap(mut child: Child) -> Prog {
        let pid = child.id() as Tid;
        let pidfd = mem::pidfd_open(pid).unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines() {
                let Ok(l) = l else { break };
                eprintln!("[prog {pid}] {l}");
            }
        });
        Prog {
            stdin: child.stdin.take(),
            _child: child,
            pidfd,
            pid,
            lines: rx,
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(TIMEOUT)
            .expect("a line from the test program")
    }

    fn ready(&self) {
        assert_eq!(self.line(), format!("ready {}", self.pid));
    }

    fn send(&mut self, s: &str) {
        let i = self.stdin.as_mut().unwrap();
        i.write_all(s.as_bytes()).unwrap();
        i.flush().unwrap();
    }
}

impl Drop for Prog {
    fn drop(&mut self) {
        pidfd_kill(&self.pidfd);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            // SAFETY: all-zero is a valid siginfo_t.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid on our child's pidfd with a valid siginfo.
            let r = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    self.pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG,
                )
            };
            // SAFETY: si_pid is valid for infos from waitid.
            if r != 0 || unsafe { info.si_pid() } != 0 || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Start tracers *after* the programs they trace: locals drop in reverse,
/// so the tracer lets go (and EXITKILL kills) before the program is reaped.
fn tracer() -> Tracer {
    let t = Tracer::spawn("fds-tracer").unwrap();
    t.run(|ctx| ctx.set_stop_timeout(Some(TIMEOUT)));
    t
}

fn stop(ctx: &mut TraceCtx, pid: Tid) {
    ctx.seize(pid, Options::EXITKILL).unwrap();
    ctx.interrupt(pid).unwrap();
    assert_eq!(ctx.wait(pid).unwrap(), Stop::Interrupt);
}

/// Runs `f` on a thread inside the network namespace of `pid`.
fn in_netns<R: Send + 'static>(pid: Tid, f: impl FnOnce() -> R + Send + 'static) -> R {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// What `v` prints in a process holding the fds of `full` mode.
const VERIFY: &[&str] = &[
    "file pos=123 pos20=123 append=1 after=201",
    "cloexec 3=0 20=1 4=1 7=0 8=1 12=1 100=1",
    "nonblock 7=1 8=0 9=1 10=0 60=1",
    "epoll 1111 7777 9999",
    "pipe 0123456789",
    "pipe then EAGAIN",
    "pair from-b from-a!",
    "pair again ping",
    "dgram m1 msg-two",
    "eventfd 5",
    "timerfd interval=1.000000000 armed=1",
    "timers 14=1 15=1 interval15=3600 armed15=1 armed16=1",
    "signalfd 12",
    "tcp nodelay=1 reuseaddr=1 listening=1",
    "tcp6 v6only=1 reuseport=1 keepalive=1 defer=7 rcvbuf=131072 sndbuf=65536",
    "accepting",
    "accepted tcp x",
    "accepted tcp6 y",
    "accepted unix -",
    "accepted abstract -",
    "udp u",
    "done",
];

/// Sends `v`, and once the program accepts, connects to each of its
/// listeners from inside its network namespace (traffic stays on that
/// namespace's loopback); checks every line.
fn verify(p: &mut Prog, upath: &Path) {
    p.send("v");
    let mut got = Vec::new();
    loop {
        let l = p.line();
        let accepting = l == "accepting";
        got.push(l);
        if accepting {
            break;
        }
    }
    let upath = upath.to_path_buf();
    in_netns(p.pid, move || {
        use std::os::linux::net::SocketAddrExt;
        let mut t = std::net::TcpStream::connect("127.0.0.1:5555").unwrap();
        t.write_all(b"x").unwrap();
        let mut t6 = std::net::TcpStream::connect("[::1]:5556").unwrap();
        t6.write_all(b"y").unwrap();
        let _u = std::os::unix::net::UnixStream::connect(&upath).unwrap();
        let a = std::os::unix::net::SocketAddr::from_abstract_name(b"sprout-fds-test").unwrap();
        let _ua = std::os::unix::net::UnixStream::connect_addr(&a).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.send_to(b"u", "127.0.0.1:5557").unwrap();
    });
    loop {
        let l = p.line();
        let done = l == "done";
        got.push(l);
        if done {
            break;
        }
    }
    assert_eq!(got, VERIFY);
    p.send("q");
    assert_eq!(p.line(), "bye");
}

fn start_full(dir: &Path) -> (Prog, String, String) {
    let file = dir.join("data.txt").to_str().unwrap().to_string();
    let upath = dir.join("s.sock").to_str().unwrap().to_string();
    let p = Prog::spawn(&["full", &file, &upath], None);
    p.ready();
    (p, file, upath)
}

fn dump(tracer: &Tracer, pid: Tid) -> Result<Vec<Fd>, FdError> {
    tracer.run(move |ctx| {
        stop(ctx, pid);
        let r = dump_fds(ctx, pid);
        ctx.detach(pid, 0).unwrap();
        r
    })
}

const ACC: i32 = libc::O_ACCMODE;

/// Checks the records of a `full` process field by field; returns them
/// with pipe and pair ids renumbered by first appearance and the timer's
/// remaining time zeroed (after checking it).
fn check_records(recs: &[Fd], file: &str, upath: &str) -> Vec<Fd> {
    let nums: Vec<i32> = recs.iter().map(|f| f.fd).collect();
    assert_eq!(
        nums,
        [
            0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 20, 30, 31, 40, 50, 51, 60, 61, 100
        ]
    );
    let by: HashMap<i32, &Fd> = recs.iter().map(|f| (f.fd, f)).collect();
    for (fd, s) in [
        (0, StdStream::Stdin),
        (1, StdStream::Stdout),
        (2, StdStream::Stderr),
    ] {
        assert_eq!(by[&fd].object, FdObject::Stdio { stream: s });
    }
    let f = |fd: i32| by[&fd];
    let cl = |fd: i32| f(fd).cloexec;
    let acc = |fd: i32| f(fd).flags & ACC;
    let flag = |fd: i32, fl: i32| f(fd).flags & fl != 0;

    assert_eq!(
        f(3).object,
        FdObject::File {
            path: file.to_string(),
            offset: 123
        }
    );
    assert!(!cl(3) && acc(3) == libc::O_RDWR && flag(3, libc::O_APPEND));
    assert_eq!(f(20).object, FdObject::Dup { of: 3 });
    assert!(cl(20) && f(20).flags == f(3).flags);
    assert_eq!(
        f(4).object,
        FdObject::Device {
            device: CharDevice::Null
        }
    );
    assert!(cl(4) && acc(4) == libc::O_WRONLY);

    let FdObject::Pipe {
        pipe,
        end: PipeEnd::Read,
        capacity: 65536,
        data,
    } = &f(7).object
    else {
        panic!("{:?}", f(7))
    };
    assert_eq!(data, b"0123456789");
    assert!(!cl(7) && flag(7, libc::O_NONBLOCK) && acc(7) == libc::O_RDONLY);
    assert_eq!(
        f(8).object,
        FdObject::Pipe {
            pipe: *pipe,
            end: PipeEnd::Write,
            capacity: 65536,
            data: vec![]
        }
    );
    assert!(cl(8) && !flag(8, libc::O_NONBLOCK) && acc(8) == libc::O_WRONLY);

    let pair = |fd: i32| -> (u64, Vec<Vec<u8>>, SocketType) {
        let FdObject::Socket(s) = &f(fd).object else {
            panic!("{:?}", f(fd))
        };
        assert_eq!(
            (s.family, s.protocol, &s.local),
            (SocketFamily::Unix, 0, &None)
        );
        let SocketState::Pair { pair, queued } = &s.state else {
            panic!("{s:?}")
        };
        (*pair, queued.clone(), s.socket_type)
    };
    let (p9, q9, t9) = pair(9);
    let (p10, q10, _) = pair(10);
    assert_eq!((p9, t9), (p10, SocketType::Stream));
    assert_eq!(q9, vec![b"from-b".to_vec()]);
    assert_eq!(q10, vec![b"from-a!".to_vec()]);
    assert!(flag(9, libc::O_NONBLOCK) && !flag(10, libc::O_NONBLOCK));
    let (p60, q60, t60) = pair(60);
    let (p61, q61, _) = pair(61);
    assert_eq!((p60, t60), (p61, SocketType::Dgram));
    assert_ne!(p60, p9);
    assert_eq!(q60, vec![b"m1".to_vec(), b"msg-two".to_vec()]);
    assert!(q61.is_empty());

    assert_eq!(
        f(11).object,
        FdObject::Eventfd {
            count: 5,
            semaphore: false
        }
    );
    assert!(cl(11) && flag(11, libc::O_NONBLOCK));
    let FdObject::Timerfd {
        clock: 1,
        settime_flags: 0,
        ticks: 0,
        interval_ns: 1_000_000_000,
        value_ns,
    } = f(12).object
    else {
        panic!("{:?}", f(12))
    };
    assert!(
        (3_000_000_000_000..=3_600_000_000_000).contains(&value_ns),
        "{value_ns}"
    );
    assert!(cl(12));
    // Expired and unread: ticks, nothing left to run.
    assert_eq!(
        f(14).object,
        FdObject::Timerfd {
            clock: 1,
            settime_flags: 0,
            ticks: 1,
            interval_ns: 0,
            value_ns: 0
        }
    );
    // Periodic and overdue: fdinfo shows 0 left (restored as a full
    // interval, with the tick).
    assert_eq!(
        f(15).object,
        FdObject::Timerfd {
            clock: 1,
            settime_flags: 0,
            ticks: 1,
            interval_ns: 3_600_000_000_000,
            value_ns: 0
        }
    );
    let FdObject::Timerfd {
        clock: 0,
        settime_flags: 1,
        ticks: 0,
        interval_ns: 0,
        value_ns,
    } = f(16).object
    else {
        panic!("{:?}", f(16))
    };
    assert!(
        (3_000_000_000_000..=3_600_000_000_000).contains(&value_ns),
        "{value_ns}"
    );
    assert_eq!(
        f(13).object,
        FdObject::Signalfd {
            mask: 1 << (libc::SIGUSR2 - 1)
        }
    );

    let sock = |fd: i32| -> &Socket {
        let FdObject::Socket(s) = &f(fd).object else {
            panic!("{:?}", f(fd))
        };
        s
    };
    assert_eq!(
        *sock(30),
        Socket {
            family: SocketFamily::Inet,
            socket_type: SocketType::Stream,
            protocol: libc::IPPROTO_TCP,
            state: SocketState::Listening { backlog: 16 },
            local: Some(SockAddr::Inet {
                addr: "127.0.0.1:5555".parse().unwrap()
            }),
            options: SocketOptions {
                reuseaddr: true,
                nodelay: true,
                ..SocketOptions::default()
            },
        }
    );
    assert_eq!(
        *sock(31),
        Socket {
            family: SocketFamily::Inet6,
            socket_type: SocketType::Stream,
            protocol: libc::IPPROTO_TCP,
            state: SocketState::Listening { backlog: 7 },
            local: Some(SockAddr::Inet {
                addr: "[::1]:5556".parse().unwrap()
            }),
            options: SocketOptions {
                reuseport: true,
                v6only: true,
                keepalive: true,
                // Set to 5 s: the kernel keeps whole retransmission
                // periods and reports 1 + 2 + 4.
                defer_accept: 7,
                rcvbuf: 131072,
                sndbuf: 65536,
                ..SocketOptions::default()
            },
        }
    );
    assert_eq!(
        *sock(40),
        Socket {
            family: SocketFamily::Inet,
            socket_type: SocketType::Dgram,
            protocol: libc::IPPROTO_UDP,
            state: SocketState::Bound,
            local: Some(SockAddr::Inet {
                addr: "127.0.0.1:5557".parse().unwrap()
            }),
            options: SocketOptions::default(),
        }
    );
    let unix_listener = |backlog, local| Socket {
        family: SocketFamily::Unix,
        socket_type: SocketType::Stream,
        protocol: 0,
        state: SocketState::Listening { backlog },
        local: Some(local),
        options: SocketOptions::default(),
    };
    assert_eq!(
        *sock(50),
        unix_listener(
            5,
            SockAddr::UnixPath {
                path: upath.to_string()
            }
        )
    );
    assert_eq!(
        *sock(51),
        unix_listener(
            3,
            SockAddr::UnixAbstract {
                name: b"sprout-fds-test".to_vec()
            }
        )
    );

    let FdObject::Epoll { targets } = &f(100).object else {
        panic!("{:?}", f(100))
    };
    let mut targets = targets.clone();
    targets.sort_by_key(|t| t.tfd);
    let inhup = (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32;
    assert_eq!(
        targets,
        vec![
            EpollTarget {
                tfd: 7,
                events: inhup,
                data: 0x7777
            },
            EpollTarget {
                tfd: 9,
                events: inhup | libc::EPOLLET as u32,
                data: 0x9999
            },
            EpollTarget {
                tfd: 11,
                events: inhup,
                data: 0x1111
            },
            EpollTarget {
                tfd: 30,
                events: inhup,
                data: 0x3030
            },
        ]
    );
    assert!(cl(100));
    normalize(recs)
}

/// Pipe and pair ids renumbered by first appearance, epoll targets sorted,
/// the timer's remaining time zeroed: what two dumps of equivalent fd
/// tables share.
fn normalize(recs: &[Fd]) -> Vec<Fd> {
    let mut ids: HashMap<u64, u64> = HashMap::new();
    let mut id = |x: u64| {
        let n = ids.len() as u64 + 1;
        *ids.entry(x).or_insert(n)
    };
    recs.iter()
        .map(|f| {
            let mut f = f.clone();
            match &mut f.object {
                FdObject::Pipe { pipe, .. } => *pipe = id(*pipe),
                FdObject::Socket(Socket {
                    state: SocketState::Pair { pair, .. },
                    ..
                }) => *pair = id(*pair),
                FdObject::Timerfd { value_ns, .. } => *value_ns = 0,
                FdObject::Epoll { targets } => targets.sort_by_key(|t| t.tfd),
                _ => {}
            }
            f
        })
        .collect()
}

/// The image format accepts the records (validated as part of a whole
/// sample image).
fn validate(recs: &[Fd]) {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = common::Rootfs::new();
    let recs = recs.to_vec();
    common::write_sample_with(&tmp.path().join("img"), &rootfs, move |b| b.fds = recs);
}

#[test]
fn dump_records_every_kind_and_leaves_the_process_intact() {
    let dir = test_dir("dump");
    let (mut p, file, upath) = start_full(&dir);
    let tracer = tracer();
    let recs = dump(&tracer, p.pid).unwrap();
    check_records(&recs, &file, &upath);
    validate(&recs);
    // Dumping twice gives the same: nothing was consumed or moved.
    let again = dump(&tracer, p.pid).unwrap();
    assert_eq!(normalize(&again), normalize(&recs));
    // And the program finds every byte still there.
    verify(&mut p, Path::new(&upath));
}

/// fdinfo fields that must survive a restore, per fd, and the link text
/// (pipes and sockets by kind only; the sandbox's stdio not at all).
fn fdinfo_of(pid: Tid) -> BTreeMap<i32, (String, FdInfo)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd: i32 = e.unwrap().file_name().to_str().unwrap().parse().unwrap();
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let link = match link.split_once(":[") {
            Some((kind @ ("pipe" | "socket"), _)) => kind.to_string(),
            _ if fd <= 2 => "stdio".into(),
            _ => link,
        };
        let mut text = String::new();
        std::fs::File::open(format!("/proc/{pid}/fdinfo/{fd}"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        let mut info = parse_fdinfo(&text).unwrap();
        info.mnt_id = 0;
        info.ino = 0;
        for e in &mut info.epoll {
            e.ino = 0;
        }
        info.epoll.sort_by_key(|e| e.tfd);
        if let Some(t) = &mut info.timerfd {
            // An overdue periodic timer shows 0 left, and once restored a
            // full interval: both fine.
            assert!(
                t.value == (0, 0) || (t.value.0 > 3000 && t.value.0 <= 3600),
                "fd {fd}: {t:?}"
            );
            t.value = (0, 0);
        }
        if fd <= 2 {
            info = FdInfo::default();
        }
        out.insert(fd, (link, info));
    }
    out
}

fn install(ctx: &mut TraceCtx, pid: Tid) -> Gadget {
    let maps = procfs::read_maps(pid).unwrap();
    let config = GadgetConfig::default();
    let at = find_hole(&maps, &maps, config.size()).unwrap();
    Gadget::install(ctx, pid, at, config).unwrap()
}

#[test]
fn restore_into_a_fresh_process() {
    let dir = test_dir("restore");
    let (p, file, upath) = start_full(&dir);
    let tracer = tracer();
    let recs = dump(&tracer, p.pid).unwrap();
    let want = check_records(&recs, &file, &upath);
    let before = fdinfo_of(p.pid);
    // The dumped process goes; its socket file stays behind, stale.
    drop(p);
    assert!(Path::new(&upath).exists());

    let mut stub = Prog::spawn(&["stub"], None);
    stub.ready();
    let pid = stub.pid;
    let records = recs.clone();
    let (after, info) = tracer.run(move |ctx| {
        stop(ctx, pid);
        let mut g = install(ctx, pid);
        restore_fds(ctx, pid, &mut g, &records).unwrap();
        // Dump the restored process: the same records.
        let after = dump_fds(ctx, pid).unwrap();
        let info = fdinfo_of(pid);
        // Shared open file descriptions are shared again.
        let same =
            |a: i32, b: i32| mem::kcmp(pid, pid, mem::KCMP_FILE, a as u64, b as u64).unwrap();
        assert_eq!(same(3, 20), std::cmp::Ordering::Equal);
        assert_ne!(same(7, 8), std::cmp::Ordering::Equal);
        g.remove(ctx, pid).unwrap();
        ctx.detach(pid, 0).unwrap();
        (after, info)
    });
    assert_eq!(normalize(&after), want);
    // fdinfo field by field: numbers, flags incl. O_CLOEXEC, offsets,
    // eventfd count, timerfd clock/flags/interval/ticks, signalfd mask,
    // epoll registrations (tfd, events, data).
    assert_eq!(
        info.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (fd, b) in &before {
        assert_eq!(&info[fd], b, "fd {fd}");
    }
    // Pipe ends pair up as before.
    let ino = |fd: i32| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    assert_eq!(ino(7), ino(8));
    // And the restored fds work.
    verify(&mut stub, Path::new(&upath));
}

#[test]
fn restore_refuses_a_live_socket_path_and_reserved_numbers() {
    let dir = test_dir("live");
    let (p, file, upath) = start_full(&dir);
    let tracer = tracer();
    let recs = dump(&tracer, p.pid).unwrap();
    check_records(&recs, &file, &upath);
    // The dumped process still listens on the path: restoring must not
    // take it over.
    let stub = Prog::spawn(&["stub"], None);
    stub.ready();
    let pid = stub.pid;
    let records = recs.clone();
    let e = tracer.run(move |ctx| {
        stop(ctx, pid);
        let mut g = install(ctx, pid);
        let e = restore_fds(ctx, pid, &mut g, &records).unwrap_err();
        let _ = ctx.kill(pid);
        e
    });
    let msg = e.to_string();
    assert!(
        msg.contains("fd 50") && msg.contains("in use by a live socket"),
        "{msg}"
    );
    assert!(Path::new(&upath).exists());
    drop(p);

    // A reserved fd the image needs.
    let stub = Prog::spawn(&["stub"], None);
    stub.ready();
    let pid = stub.pid;
    let e = tracer.run(move |ctx| {
        stop(ctx, pid);
        let mut g = install(ctx, pid);
        let opts = sprout_snapshot::fds::RestoreOptions {
            reserved: vec![7],
            close_others: false,
            fs_user: None,
            force_socket_buffers: true,
        };
        let e = sprout_snapshot::fds::restore_fds_with(ctx, pid, &mut g, &recs, &opts).unwrap_err();
        let _ = ctx.kill(pid);
        e
    });
    assert!(e.to_string().contains("fd 7"), "{e}");
}

#[test]
fn refused_kinds_name_the_fd_and_kind() {
    let cases: &[(&str, &str)] = &[
        (
            "inotify",
            "fd 5 is an inotify instance: sprout cannot checkpoint it",
        ),
        ("tcp", "fd 5 is an established TCP connection (127.0.0.1:"),
        (
            "iouring",
            "fd 5 is an io_uring instance: sprout cannot checkpoint it",
        ),
        (
            "memfd",
            "fd 5 is a memfd (\"sprout-test\"): sprout cannot checkpoint it",
        ),
        (
            "deleted",
            "fd 5 is a deleted file (/tmp/sprout-fds-deleted-",
        ),
        ("pidfd", "fd 5 is a pidfd: sprout cannot checkpoint it"),
        (
            "epoll-stale",
            "fd 5 is an epoll instance watching a file that is not among the process's fds \
             (registered as fd 6, now closed)",
        ),
        ("udp", "fd 5 is a UDP socket connected to 127.0.0.1:9"),
        (
            "netlink",
            "fd 5 is a netlink socket: sprout cannot checkpoint it",
        ),
        (
            "inherited",
            "fd 5 is a pipe whose other end is not in this process (pipe:[",
        ),
    ];
    let tracer = tracer();
    let mut outside = Vec::new();
    for (kind, want) in cases {
        let fd5 = if *kind == "inherited" {
            let (r, w) = nix::unistd::pipe().unwrap();
            // The write end stays here: outside the dumped process.
            outside.push(w);
            Some(r)
        } else {
            None
        };
        let p = Prog::spawn(&[&format!("refuse-{kind}")], fd5);
        let l = p.line();
        if let Some(why) = l.strip_prefix("skip ") {
            eprintln!("skipping {kind}: {why}");
            continue;
        }
        assert_eq!(l, format!("ready {}", p.pid));
        let e = dump(&tracer, p.pid).unwrap_err();
        assert!(
            matches!(e, FdError::Unsupported { fd: 5, .. }),
            "{kind}: {e:?}"
        );
        let msg = e.to_string();
        assert!(msg.starts_with(want), "{kind}: {msg}");
        assert!(msg.ends_with(": sprout cannot checkpoint it"), "{msg}");
    }
}

#[test]
fn file_paths_are_relative_to_the_process_root() {
    let dir = test_dir("roots");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::create_dir_all(dir.join("old")).unwrap();
    std::fs::write(dir.join("data.txt"), "0123456789").unwrap();
    std::fs::write(dir.join("sub/data.txt"), "0123456789").unwrap();
    let d = dir.to_str().unwrap();
    let tracer = tracer();
    for mode in ["chroot", "pivot"] {
        let p = Prog::spawn(&[mode, d], None);
        p.ready();
        // What the kernel prints for the fd depends on the reader's root.
        let link = std::fs::read_link(format!("/proc/{}/fd/3", p.pid)).unwrap();
        eprintln!("{mode}: fd 3 -> {}", link.display());
        let recs = dump(&tracer, p.pid).unwrap();
        assert_eq!(recs.len(), 4, "{mode}: {recs:?}");
        assert_eq!(
            recs[3].object,
            FdObject::File {
                path: "/data.txt".into(),
                offset: 7
            },
            "{mode}"
        );
    }
    // A file whose path now leads elsewhere (its directory was mounted
    // over) is refused: a restore would open another file or none.
    let p = Prog::spawn(&["pivot-covered", d], None);
    p.ready();
    let e = dump(&tracer, p.pid).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("fd 3 is the file /sub/data.txt, which its path no longer leads to"),
        "{e}"
    );
}

#[test]
fn restore_over_existing_fds_keeping_reserved_ones() {
    let dir = test_dir("over");
    let (p, file, upath) = start_full(&dir);
    let tracer = tracer();
    let recs = dump(&tracer, p.pid).unwrap();
    let want = check_records(&recs, &file, &upath);
    drop(p);

    let mut stub = Prog::spawn(&["stub"], None);
    stub.ready();
    let pid = stub.pid;
    let after = tracer.run(move |ctx| {
        stop(ctx, pid);
        let mut g = install(ctx, pid);
        // As in a process forked from a template: fds of its own, at
        // numbers the image uses (3, 4) and not (5), and one the restorer
        // keeps (200).
        let path = g.data(b"/dev/zero\0").unwrap();
        let r = g
            .run(
                ctx,
                pid,
                &[
                    sprout_snapshot::ptrace::Entry::new(
                        libc::SYS_openat,
                        [libc::AT_FDCWD as i64 as u64, path, 0, 0, 0, 0],
                    ),
                    sprout_snapshot::ptrace::Entry::new(libc::SYS_dup, [3, 0, 0, 0, 0, 0]),
                    sprout_snapshot::ptrace::Entry::new(libc::SYS_dup, [3, 0, 0, 0, 0, 0]),
                    sprout_snapshot::ptrace::Entry::new(libc::SYS_dup2, [0, 200, 0, 0, 0, 0]),
                ],
            )
            .unwrap();
        assert_eq!(r, vec![3, 4, 5, 200]);
        let e = restore_fds(ctx, pid, &mut g, &recs).unwrap_err();
        assert!(
            e.to_string().starts_with("restoring fd 3: is already open"),
            "{e}"
        );
        let opts = sprout_snapshot::fds::RestoreOptions {
            reserved: vec![200],
            close_others: true,
            fs_user: None,
            force_socket_buffers: true,
        };
        sprout_snapshot::fds::restore_fds_with(ctx, pid, &mut g, &recs, &opts).unwrap();
        let after = dump_fds(ctx, pid).unwrap();
        g.remove(ctx, pid).unwrap();
        ctx.detach(pid, 0).unwrap();
        after
    });
    // The reserved fd is untouched (still the sandbox's stdin), the rest
    // is the image.
    assert_eq!(
        after.iter().find(|f| f.fd == 200).map(|f| &f.object),
        Some(&FdObject::Dup { of: 0 })
    );
    let after: Vec<Fd> = after.into_iter().filter(|f| f.fd != 200).collect();
    assert_eq!(normalize(&after), want);
    verify(&mut stub, Path::new(&upath));
}

/// The image's regular files are opened beneath the process's root and
/// never through a magic link (/proc/self/fd/N, /proc/PID/root: the
/// opener is still root), and a FIFO at a file's path cannot hang the
/// restore.
#[test]
fn regular_files_are_opened_without_magic_links_and_without_blocking() {
    let dir = test_dir("inroot");
    let (p, file, upath) = start_full(&dir);
    let tracer = tracer();
    let recs = dump(&tracer, p.pid).unwrap();
    check_records(&recs, &file, &upath);
    drop(p);
    let files: Vec<Fd> = recs
        .iter()
        .filter(|f| matches!(f.object, FdObject::File { .. }))
        .cloned()
        .collect();
    assert!(!files.is_empty());
    let at = |path: &str, flags: i32| -> Vec<Fd> {
        files
            .iter()
            .cloned()
            .map(|mut f| {
                if let FdObject::File { path: p, .. } = &mut f.object {
                    *p = path.to_string();
                }
                f.flags = flags;
                f
            })
            .collect()
    };
    let restore_in_stub = |records: Vec<Fd>| -> Result<(), FdError> {
        let stub = Prog::spawn(&["stub"], None);
        stub.ready();
        let pid = stub.pid;
        // An open that blocks ends with the stub, killed after a while.
        let (done, wait) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if wait.recv_timeout(Duration::from_secs(10)).is_err() {
                // SAFETY: kill of our own child's pid, still unreaped (the
                // Prog owns it).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let r = tracer.run(move |ctx| {
            stop(ctx, pid);
            let mut g = install(ctx, pid);
            let r = restore_fds(ctx, pid, &mut g, &records);
            let _ = ctx.kill(pid);
            r
        });
        let _ = done.send(());
        watchdog.join().unwrap();
        drop(stub);
        r
    };
    let e = restore_in_stub(at("/proc/self/fd/0", libc::O_RDONLY)).unwrap_err();
    assert!(e.to_string().contains("ELOOP"), "{e}");
    let e = restore_in_stub(at("/proc/self/root/etc/hostname", libc::O_RDONLY)).unwrap_err();
    assert!(e.to_string().contains("ELOOP"), "{e}");
    // A FIFO read-only: opened at once (nonblocking); its offset cannot
    // be set, which is the error.
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = restore_in_stub(at(fifo.to_str().unwrap(), libc::O_RDONLY)).unwrap_err();
    assert!(e.to_string().contains("lseek"), "{e}");
}

/// Socket buffers above `net.core.rmem_max` come back exactly only for a
/// sandbox allowed to force them; otherwise they are clamped, as the
/// kernel clamps the process's own `SO_RCVBUF`.
#[test]
fn socket_buffers_above_the_maximum_are_clamped_unless_forced() {
    let dir = test_dir("bufs");
    let (p, file, upath) = start_full(&dir);
    let tracer = tracer();
    let mut recs = dump(&tracer, p.pid).unwrap();
    check_records(&recs, &file, &upath);
    drop(p);
    let max: u32 = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let big = 2 * max + 2 * 65536;
    let fd = recs
        .iter_mut()
        .find_map(|f| match &mut f.object {
            FdObject::Socket(s) if s.options.rcvbuf != 0 => {
                s.options.rcvbuf = big;
                Some(f.fd)
            }
            _ => None,
        })
        .expect("a socket with its receive buffer set");
    let rcvbuf_after = |force: bool| -> u32 {
        let stub = Prog::spawn(&["stub"], None);
        stub.ready();
        let pid = stub.pid;
        let records = recs.clone();
        tracer.run(move |ctx| {
            stop(ctx, pid);
            let mut g = install(ctx, pid);
            let opts = sprout_snapshot::fds::RestoreOptions {
                force_socket_buffers: force,
                ..Default::default()
            };
            sprout_snapshot::fds::restore_fds_with(ctx, pid, &mut g, &records, &opts).unwrap();
            let after = dump_fds(ctx, pid).unwrap();
            let _ = ctx.kill(pid);
            after
                .iter()
                .find_map(|f| match &f.object {
                    FdObject::Socket(s) if f.fd == fd => Some(s.options.rcvbuf),
                    _ => None,
                })
                .unwrap()
        })
    };
    assert_eq!(rcvbuf_after(true), big);
    assert_eq!(rcvbuf_after(false), 2 * max);
}
