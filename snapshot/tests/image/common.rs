//! A synthetic image of a plausible process on this host: several VMAs of
//! every backing, page runs, mapped files from a test rootfs, threads in
//! and out of syscalls, and one fd of every kind.

use std::fs;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use sprout_snapshot::image::*;

pub const PAGE: u64 = 4096;

/// A rootfs with a "library" and an executable, opened as a directory fd.
pub struct Rootfs {
    pub dir: tempfile::TempDir,
    pub fd: OwnedFd,
}

impl Rootfs {
    pub fn new() -> Rootfs {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::create_dir_all(root.join("app")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(
            root.join("usr/lib/libfoo.so"),
            pattern(3 * PAGE as usize, 7),
        )
        .unwrap();
        fs::write(root.join("app/main"), pattern(4 * PAGE as usize, 9)).unwrap();
        fs::write(root.join("etc/passwd"), b"inside the rootfs\n").unwrap();
        let fd = nix::fcntl::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        Rootfs { dir, fd }
    }

    pub fn record(&self, path: &str) -> FileRecord {
        let fd = open_in_root(self.fd.as_fd(), path, OFlag::O_RDONLY).unwrap();
        file_record(&fd, path).unwrap()
    }
}

/// Deterministic page-ish content.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 12) as u8))
        .collect()
}

/// A valid xsave area for `host`: x87/SSE state in use, default MXCSR.
pub fn xsave(host: &Host) -> Vec<u8> {
    let mut x = vec![0u8; host.cpu.xstate_regset_size as usize];
    x[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
    x[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    x[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
    x[512..520].copy_from_slice(&3u64.to_le_bytes());
    x
}

pub fn siginfo(signo: u8) -> Vec<u8> {
    let mut s = vec![0u8; 128];
    s[0..4].copy_from_slice(&i32::from(signo).to_le_bytes());
    s
}

fn regs(rip: u64, rsp: u64) -> UserRegs {
    UserRegs {
        rip,
        rsp,
        cs: USER_CS,
        ss: USER_SS,
        eflags: 0x246,
        orig_rax: u64::MAX,
        fs_base: 0x7f00_0000_1000,
        ..Default::default()
    }
}

pub const VDSO_BASE: u64 = 0x7ff0_0000_0000;
pub const STACK: (u64, u64) = (0x7fff_fffd_e000, 0x7fff_ffff_f000);

/// The data of every stored page run, in the order written.
pub struct Sample {
    pub body: ManifestBody,
    /// (pages.img offset, expected bytes) for each run written.
    pub runs: Vec<(u64, Vec<u8>)>,
}

/// Writes a sample image into `dir` and returns what it wrote.
pub fn write_sample(dir: &Path, rootfs: &Rootfs) -> Sample {
    write_sample_with(dir, rootfs, |_| {})
}

/// As [`write_sample`], letting `edit` change the body before `finish`.
pub fn write_sample_with(
    dir: &Path,
    rootfs: &Rootfs,
    edit: impl FnOnce(&mut ManifestBody),
) -> Sample {
    let host = Host::current().unwrap();
    let mut w = ImageWriter::with_chunk_size(dir, 64 << 10).unwrap();
    let mut runs = Vec::new();
    let mut put = |w: &mut ImageWriter, pages: u64, seed: u8, at: u64| -> PageRun {
        let data = pattern((pages * PAGE) as usize, seed);
        let r = w.write_pages(&data).unwrap();
        runs.push((r.offset, data));
        r.run_at(at)
    };

    let mut vmas = Vec::new();
    let f = |file, offset| Backing::File { file, offset };
    let rx = "r-x".parse().unwrap();
    let rw: Prot = "rw-".parse().unwrap();
    let r = "r--".parse().unwrap();
    // The executable: text, then a private data mapping with one written page.
    vmas.push(vma(0x40_0000, 0x40_2000, rx, f(1, 0), vec![]));
    let run = put(&mut w, 1, 1, 1);
    vmas.push(vma(0x40_2000, 0x40_4000, rw, f(1, 0x2000), vec![run]));
    // The heap: two runs with a hole.
    let a = put(&mut w, 2, 2, 0);
    let b = put(&mut w, 5, 3, 10);
    vmas.push(vma(0x60_0000, 0x64_0000, rw, Backing::Heap, vec![a, b]));
    // The library.
    vmas.push(vma(0x7f00_0000_0000, 0x7f00_0000_3000, rx, f(0, 0), vec![]));
    // Anonymous memory, filled through the streaming API: 20 pages, more
    // than one 64 KiB chunk.
    let mut streamed = Vec::new();
    let r20 = w
        .append_pages(20 * PAGE, |off, dst| {
            for (i, b) in dst.iter_mut().enumerate() {
                *b = ((off as usize + i) % 251) as u8;
            }
            streamed.extend_from_slice(dst);
            Ok(())
        })
        .unwrap();
    let mut runs_stream = vec![(r20.offset, streamed)];
    let mut thread_stack = vma(
        0x7f00_0001_0000,
        0x7f00_0010_0000,
        rw,
        Backing::Anonymous,
        vec![r20.run_at(3)],
    );
    thread_stack.guard_pages = vec![
        PageSpan { page: 0, count: 1 },
        PageSpan { page: 30, count: 2 },
    ];
    vmas.push(thread_stack);
    // A droppable VMA (vDSO getrandom state): never stored.
    let mut dp = vma(
        0x7f00_0020_0000,
        0x7f00_0020_1000,
        rw,
        Backing::Anonymous,
        vec![],
    );
    dp.flags = vec![VmFlag::Droppable, VmFlag::DontDump];
    vmas.push(dp);
    // A shared-memory mapping.
    let mut sh = vma(
        0x7f00_0030_0000,
        0x7f00_0030_2000,
        rw,
        Backing::SharedMemory {
            object: 0,
            offset: 0,
        },
        vec![],
    );
    sh.shared = true;
    vmas.push(sh);
    let shared_run = put(&mut w, 1, 4, 1);
    // A PROT_NONE reservation.
    vmas.push(vma(
        0x7f10_0000_0000,
        0x7f10_4000_0000,
        Prot::default(),
        Backing::Anonymous,
        vec![],
    ));
    // vDSO family, laid out as this host's.
    let mut vdso_start = 0;
    if let Some(v) = &host.vdso {
        for a in &v.areas {
            let backing = match a.kind {
                VdsoAreaKind::Vvar => Backing::Vvar,
                VdsoAreaKind::VvarVclock => Backing::VvarVclock,
                VdsoAreaKind::Vdso => {
                    vdso_start = VDSO_BASE + a.offset;
                    Backing::Vdso
                }
            };
            let prot = if a.kind == VdsoAreaKind::Vdso { rx } else { r };
            vmas.push(vma(
                VDSO_BASE + a.offset,
                VDSO_BASE + a.offset + a.size,
                prot,
                backing,
                vec![],
            ));
        }
    }
    // The stack, its top pages stored.
    let st = put(&mut w, 3, 5, (STACK.1 - STACK.0) / PAGE - 3);
    let mut stack = vma(STACK.0, STACK.1, rw, Backing::Stack, vec![st]);
    stack.flags = vec![VmFlag::GrowsDown];
    vmas.push(stack);

    let mut auxv = vec![6, PAGE];
    if vdso_start != 0 {
        auxv.extend([33, vdso_start]);
    }
    auxv.extend([0, 0]);

    let leader = Thread {
        tid: 1,
        comm: "python3".into(),
        regs: regs(0x40_1000, STACK.1 - 0x1000),
        xsave: xsave(&host),
        sigmask: 0,
        pending: vec![PendingSignal {
            signo: 10,
            siginfo: siginfo(10),
        }],
        sigaltstack: Some(SigAltStack {
            sp: 0x7f00_0001_0000,
            size: 8 * PAGE,
            flags: 0,
        }),
        rseq: Some(Rseq {
            ptr: 0x7f00_0000_1fe0,
            len: 32,
            sig: 0x5305_3053,
        }),
        robust_list: Some(RobustList {
            head: 0x7f00_0000_1a20,
            len: 24,
        }),
        clear_child_tid: 0x7f00_0000_1a10,
        syscall: SyscallRestart::NotInSyscall,
    };
    let mut futex = leader.clone();
    futex.tid = 2;
    futex.comm = "worker".into();
    futex.regs.rax = 202;
    futex.regs.orig_rax = 202;
    futex.syscall = SyscallRestart::Restart {
        nr: 202,
        code: Some(-512),
    };
    futex.pending.clear();
    let mut sleeper = futex.clone();
    sleeper.tid = 3;
    sleeper.regs.rax = (-4i64) as u64;
    sleeper.regs.orig_rax = 35;
    sleeper.syscall = SyscallRestart::Eintr { nr: 35 };
    sleeper.sigaltstack = None;
    sleeper.rseq = None;
    sleeper.robust_list = None;

    let ids = IdSet {
        real: 0,
        effective: 0,
        saved: 0,
        fs: 0,
    };
    let process = Process {
        pid: 1,
        personality: 0,
        umask: 0o022,
        cwd: "/app".into(),
        exe: "/app/main".into(),
        credentials: Credentials {
            uids: ids,
            gids: ids,
            groups: vec![0, 10],
            caps: CapSets {
                inheritable: 0,
                permitted: 0x1ff_ffff_ffff,
                effective: 0x1ff_ffff_ffff,
                bounding: 0x1ff_ffff_ffff,
                ambient: 0,
            },
            securebits: 0,
            no_new_privs: true,
        },
        rlimits: vec![
            Rlimit {
                resource: RlimitResource::Nofile,
                soft: 1024,
                hard: 4096,
            },
            Rlimit {
                resource: RlimitResource::Stack,
                soft: 8 << 20,
                hard: u64::MAX,
            },
        ],
        mm: MmFields {
            start_code: 0x40_0000,
            end_code: 0x40_2000,
            start_data: 0x40_2000,
            end_data: 0x40_4000,
            start_brk: 0x60_0000,
            brk: 0x64_0000,
            start_stack: STACK.1 - 0x2000,
            arg_start: STACK.1 - 0x1000,
            arg_end: STACK.1 - 0xf00,
            env_start: STACK.1 - 0xf00,
            env_end: STACK.1 - 0x800,
            auxv,
        },
        sigactions: vec![SigAction {
            signal: 2,
            handler: 0x40_1100,
            flags: 0x0400_0004,
            restorer: 0x40_1200,
            mask: 0,
        }],
        pending: vec![PendingSignal {
            signo: 15,
            siginfo: siginfo(15),
        }],
        posix_timers: vec![PosixTimer {
            id: 0,
            clock: 1,
            notify: TimerNotify::Thread { tid: 2 },
            signo: 34,
            sigval: 0x7f00_0000_2000,
            interval_ns: 10_000_000,
            value_ns: 3_000_000,
            overrun: 0,
        }],
        itimers: ITimers {
            real: ITimer {
                interval_ns: 0,
                value_ns: 5_000_000_000,
            },
            ..Default::default()
        },
        time_offsets: None,
    };

    let fd = |fd, cloexec, flags, object| Fd {
        fd,
        cloexec,
        flags,
        object,
    };
    let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let fds = vec![
        fd(
            0,
            false,
            0,
            FdObject::Stdio {
                stream: StdStream::Stdin,
            },
        ),
        fd(
            1,
            false,
            1,
            FdObject::Stdio {
                stream: StdStream::Stdout,
            },
        ),
        fd(
            2,
            false,
            1,
            FdObject::Stdio {
                stream: StdStream::Stderr,
            },
        ),
        fd(
            3,
            true,
            0,
            FdObject::File {
                path: "/app/main".into(),
                offset: 100,
            },
        ),
        fd(
            4,
            true,
            libc::O_NONBLOCK,
            FdObject::Pipe {
                pipe: 77,
                end: PipeEnd::Read,
                capacity: 65536,
                data: b"queued".to_vec(),
            },
        ),
        fd(
            5,
            true,
            libc::O_WRONLY | libc::O_NONBLOCK,
            FdObject::Pipe {
                pipe: 77,
                end: PipeEnd::Write,
                capacity: 65536,
                data: vec![],
            },
        ),
        fd(
            6,
            true,
            2,
            FdObject::Eventfd {
                count: 1,
                semaphore: false,
            },
        ),
        fd(
            7,
            true,
            0,
            FdObject::Epoll {
                targets: vec![
                    EpollTarget {
                        tfd: 4,
                        events: 1,
                        data: 4,
                    },
                    EpollTarget {
                        tfd: 6,
                        events: 0x8000_0001,
                        data: 0xdead_beef_0000_0006,
                    },
                    EpollTarget {
                        tfd: 9,
                        events: 1,
                        data: 9,
                    },
                ],
            },
        ),
        fd(
            8,
            true,
            0,
            FdObject::Timerfd {
                clock: 1,
                settime_flags: 0,
                ticks: 2,
                interval_ns: 1_000_000,
                value_ns: 500_000,
            },
        ),
        fd(
            9,
            true,
            2,
            FdObject::Socket(Socket {
                family: SocketFamily::Inet,
                socket_type: SocketType::Stream,
                protocol: 6,
                state: SocketState::Listening { backlog: 128 },
                local: Some(SockAddr::Inet { addr: listen }),
                options: SocketOptions {
                    reuseaddr: true,
                    nodelay: true,
                    ..Default::default()
                },
            }),
        ),
        fd(
            10,
            true,
            2,
            FdObject::Socket(Socket {
                family: SocketFamily::Unix,
                socket_type: SocketType::Stream,
                protocol: 0,
                state: SocketState::Pair {
                    pair: 99,
                    queued: vec![b"\0".to_vec()],
                },
                local: None,
                options: SocketOptions::default(),
            }),
        ),
        fd(
            11,
            true,
            2,
            FdObject::Socket(Socket {
                family: SocketFamily::Unix,
                socket_type: SocketType::Stream,
                protocol: 0,
                state: SocketState::Pair {
                    pair: 99,
                    queued: vec![],
                },
                local: None,
                options: SocketOptions::default(),
            }),
        ),
        fd(12, false, 0, FdObject::Dup { of: 3 }),
        fd(
            13,
            true,
            2,
            FdObject::Device {
                device: CharDevice::Null,
            },
        ),
        fd(14, true, 0, FdObject::Signalfd { mask: 1 << 16 }),
        fd(
            15,
            true,
            2,
            FdObject::Socket(Socket {
                family: SocketFamily::Unix,
                socket_type: SocketType::Dgram,
                protocol: 0,
                state: SocketState::Bound,
                local: Some(SockAddr::UnixPath {
                    path: "/run/app.sock".into(),
                }),
                options: SocketOptions::default(),
            }),
        ),
        fd(16, true, 2, FdObject::Tty),
    ];

    let mut body = ManifestBody {
        producer: "sprout test".into(),
        host,
        process,
        threads: vec![leader, futex, sleeper],
        vmas,
        files: vec![
            rootfs.record("/usr/lib/libfoo.so"),
            rootfs.record("/app/main"),
        ],
        shared_memory: vec![SharedObject {
            size: 2 * PAGE,
            name: "/dev/zero (deleted)".into(),
            pages: vec![shared_run],
        }],
        fds,
        pages: PagesIndex::default(),
    };
    edit(&mut body);
    let keep = body.clone();
    w.finish(body).unwrap();
    let mut body = keep;
    body.pages = sprout_snapshot::image::Image::open(dir)
        .unwrap()
        .manifest()
        .pages
        .clone();
    runs.append(&mut runs_stream);
    Sample { body, runs }
}

fn vma(start: u64, end: u64, prot: Prot, backing: Backing, pages: Vec<PageRun>) -> Vma {
    Vma {
        start,
        end,
        prot,
        shared: false,
        flags: vec![],
        backing,
        pages,
        guard_pages: vec![],
    }
}

/// A fresh path for an image directory (not yet created).
pub fn image_dir(tmp: &tempfile::TempDir, name: &str) -> PathBuf {
    tmp.path().join(name)
}

/// Wraps body JSON in an envelope with a correct checksum, without
/// validating it: how a hostile or buggy producer would write it.
pub fn envelope(body_json: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{{\"format\":\"sprout-image\",\"version\":1,\"checksum\":\"sha256:{}\",\"body\":",
        Sha256Digest::of(body_json)
    )
    .into_bytes();
    out.extend_from_slice(body_json);
    out.push(b'}');
    out
}

/// The manifest bytes of `body`, unvalidated.
pub fn manifest_of(body: &ManifestBody) -> Vec<u8> {
    envelope(&serde_json::to_vec(body).unwrap())
}

/// Replaces an image's manifest with `bytes` (keeping the dir's mode).
pub fn replace_manifest(dir: &Path, bytes: &[u8]) {
    let p = dir.join("manifest.json");
    fs::write(&p, bytes).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
}
