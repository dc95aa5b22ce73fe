//! Re-creating the image's fds in a traced process (see the module
//! documentation of [`crate::fds`] for the phases).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::image::{
    CharDevice, Fd, FdObject, PipeEnd, SockAddr, SocketFamily, SocketState, SocketType, StdStream,
};
use crate::ptrace::{Gadget, Tid, TraceCtx, cstring};

use super::FdError;
use super::batch::{Batch, Out, Res};
use super::dump::normalized;
use super::plan::{Copy, Op, plan_moves};
use super::sock::encode_addr;

/// Options of [`restore_fds_with`].
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Fds the restorer keeps open in the target for its own use (e.g. the
    /// pages file): never touched, never used as temporaries; an image fd at
    /// one of these numbers is an error.
    pub reserved: Vec<i32>,
    /// Close every fd already open in the target other than 0-2 and the
    /// reserved ones (a process forked from a template holds the template's
    /// fds). Without it such an fd is an error.
    pub close_others: bool,
    /// The sandbox's user: files are opened and unix sockets bound (and
    /// stale ones unlinked) with its filesystem ids and groups, so the
    /// image gets no fd and no path the process could not get itself (the
    /// target is still root). `None`: as root (a root sandbox).
    pub fs_user: Option<FsUser>,
    /// The sandbox may set socket buffers above `net.core.[rw]mem_max`
    /// (CAP_NET_ADMIN): the dumped sizes come back exactly
    /// (`SO_*BUFFORCE`). Otherwise they are clamped there, as the kernel
    /// clamps the process's own `SO_*BUF`.
    pub force_socket_buffers: bool,
}

/// Filesystem identity for [`RestoreOptions::fs_user`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsUser {
    /// `setfsuid`.
    pub uid: u32,
    /// `setfsgid`.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Re-creates `fds` (an image's records) in the process of the stopped,
/// traced thread `tid`, through `gadget`, as
/// [`restore_fds_with`] with default [`RestoreOptions`]: the target holds
/// only its sandbox's stdio at 0-2.
pub fn restore_fds(
    ctx: &mut TraceCtx,
    tid: Tid,
    gadget: &mut Gadget,
    fds: &[Fd],
) -> Result<(), FdError> {
    restore_fds_with(ctx, tid, gadget, fds, &RestoreOptions::default())
}

/// `O_*` flags that `openat` takes from a record.
const OPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DIRECT
    | libc::O_NOATIME
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_LARGEFILE;
/// openat2(2) and its `struct open_how` (flags, mode, resolve).
pub(crate) const SYS_OPENAT2: i64 = 437;
pub(crate) const OPEN_HOW_SIZE: u64 = 24;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// A `struct open_how` for an injected openat2 of a path the image names:
/// resolved beneath the directory given (the process's root), never
/// through a magic link.
pub(crate) fn open_how_in_root(flags: i32) -> Vec<u8> {
    let mut how = Vec::with_capacity(OPEN_HOW_SIZE as usize);
    how.extend_from_slice(&(flags as u32 as u64).to_le_bytes());
    how.extend_from_slice(&0u64.to_le_bytes());
    how.extend_from_slice(&(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS).to_le_bytes());
    how
}

/// What `F_SETFL` can change.
const SETFL_MASK: i32 =
    libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME | libc::O_ASYNC;
/// `_IOW('T', 0, u64)`.
const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;
const TFD_TIMER_ABSTIME: i32 = 1;
const EFD_SEMAPHORE: u64 = 1;
const AT_FDCWD: u64 = libc::AT_FDCWD as i64 as u64;
/// Offset of `st_mode` in x86_64's `struct stat` (144 bytes).
const STAT_SIZE: usize = 144;
const STAT_MODE_OFF: usize = 24;

fn device_path(d: CharDevice) -> &'static str {
    match d {
        CharDevice::Null => "/dev/null",
        CharDevice::Zero => "/dev/zero",
        CharDevice::Full => "/dev/full",
        CharDevice::Random => "/dev/random",
        CharDevice::Urandom => "/dev/urandom",
    }
}

fn domain(f: SocketFamily) -> i32 {
    match f {
        SocketFamily::Inet => libc::AF_INET,
        SocketFamily::Inet6 => libc::AF_INET6,
        SocketFamily::Unix => libc::AF_UNIX,
    }
}

fn sock_type(t: SocketType) -> i32 {
    match t {
        SocketType::Stream => libc::SOCK_STREAM,
        SocketType::Dgram => libc::SOCK_DGRAM,
        SocketType::Seqpacket => libc::SOCK_SEQPACKET,
    }
}

fn show_addr(a: &SockAddr) -> String {
    match a {
        SockAddr::Inet { addr } => addr.to_string(),
        SockAddr::UnixPath { path } => path.clone(),
        SockAddr::UnixAbstract { name } => format!("@{}", String::from_utf8_lossy(name)),
    }
}

fn stream_fd(s: StdStream) -> i32 {
    match s {
        StdStream::Stdin => 0,
        StdStream::Stdout => 1,
        StdStream::Stderr => 2,
    }
}

fn list_fds(pid: Tid) -> Result<BTreeSet<i32>, FdError> {
    let rd = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| FdError::Process {
        pid,
        what: "listing /proc/PID/fd".into(),
        detail: e.to_string(),
    })?;
    Ok(rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// An object to create, with the records it serves.
enum Obj<'a> {
    /// One fd: file, device, socket (not a pair end), eventfd, epoll,
    /// timerfd, signalfd.
    Single(&'a Fd),
    /// Both ends of a pipe (a record per end present).
    Pipe {
        read: Option<&'a Fd>,
        write: Option<&'a Fd>,
    },
    /// Both ends of a socketpair.
    Pair {
        ends: [Option<&'a Fd>; 2],
        socket_type: SocketType,
    },
}

/// Temporary fds of a created object (fd numbers in the target).
#[derive(Default, Clone, Copy)]
struct Temps {
    a: i32,
    b: i32,
}

fn i32_at(b: &[u8], off: usize) -> i32 {
    i32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

/// Re-creates `fds` in the process of the stopped, traced thread `tid`
/// through `gadget` (see [`crate::fds`] for the phases). The target's fd
/// table must hold its sandbox's stdio at 0-2, the `reserved` fds, and
/// nothing else (unless `close_others`). Run it before the sandbox's
/// credentials and seccomp filter, with `RLIMIT_NOFILE` above the highest
/// image fd, `lo` (and any bound address) up in the target's network
/// namespace, and `/dev` populated.
pub fn restore_fds_with(
    ctx: &mut TraceCtx,
    tid: Tid,
    gadget: &mut Gadget,
    fds: &[Fd],
    opts: &RestoreOptions,
) -> Result<(), FdError> {
    let pid = ctx.tgid(tid)?;
    let reserved: BTreeSet<i32> = opts.reserved.iter().copied().collect();
    let open_before = list_fds(pid)?;
    if !opts.close_others
        && let Some(&extra) = open_before
            .iter()
            .find(|&&f| f > 2 && !reserved.contains(&f))
    {
        return Err(FdError::plan(
            extra,
            "is already open in the process and neither stdio nor reserved (close it first, \
             or pass it in RestoreOptions::reserved)",
        ));
    }
    let by_fd: HashMap<i32, &Fd> = fds.iter().map(|f| (f.fd, f)).collect();
    if by_fd.len() != fds.len() {
        return Err(FdError::plan(-1, "the records repeat an fd number"));
    }
    for f in fds {
        if reserved.contains(&f.fd) {
            return Err(FdError::plan(
                f.fd,
                "is in the image and reserved by the restorer",
            ));
        }
    }

    // Objects to create, in fd order.
    let mut objs: Vec<Obj> = Vec::new();
    let mut pipes: BTreeMap<u64, usize> = BTreeMap::new();
    let mut pairs: BTreeMap<u64, usize> = BTreeMap::new();
    for f in fds {
        match &f.object {
            FdObject::Stdio { .. } | FdObject::Tty | FdObject::Dup { .. } => {}
            FdObject::Pipe { pipe, end, .. } => {
                let i = *pipes.entry(*pipe).or_insert_with(|| {
                    objs.push(Obj::Pipe {
                        read: None,
                        write: None,
                    });
                    objs.len() - 1
                });
                let Obj::Pipe { read, write } = &mut objs[i] else {
                    unreachable!()
                };
                let slot = if *end == PipeEnd::Read { read } else { write };
                if let Some(o) = slot {
                    return Err(FdError::plan(
                        f.fd,
                        format!("pipe {pipe} already has this end at fd {}", o.fd),
                    ));
                }
                *slot = Some(f);
            }
            FdObject::Socket(s) => match &s.state {
                SocketState::Pair { pair, .. } => {
                    let i = *pairs.entry(*pair).or_insert_with(|| {
                        objs.push(Obj::Pair {
                            ends: [None, None],
                            socket_type: s.socket_type,
                        });
                        objs.len() - 1
                    });
                    let Obj::Pair { ends, socket_type } = &mut objs[i] else {
                        unreachable!()
                    };
                    if *socket_type != s.socket_type || s.family != SocketFamily::Unix {
                        return Err(FdError::plan(
                            f.fd,
                            format!("the ends of socket pair {pair} differ in family or type"),
                        ));
                    }
                    match ends.iter_mut().find(|e| e.is_none()) {
                        Some(e) => *e = Some(f),
                        None => {
                            return Err(FdError::plan(
                                f.fd,
                                format!("socket pair {pair} has more than two ends"),
                            ));
                        }
                    }
                }
                _ => objs.push(Obj::Single(f)),
            },
            _ => objs.push(Obj::Single(f)),
        }
    }

    let mut b = Batch::new(ctx, tid, gadget);

    // Everything below that touches a path does so as the sandbox's user
    // (the kernel drops the filesystem capabilities with a non-zero
    // fsuid); back to root's at the end.
    if let Some(u) = &opts.fs_user {
        let groups: Vec<u8> = u.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        let n = u.groups.len() as u64;
        b.push(
            -1,
            "setgroups of the sandbox's user",
            &[&groups],
            &[],
            false,
            |a| (libc::SYS_setgroups, [n, a[0], 0, 0, 0, 0]),
        )?;
        set_fs_ids(&mut b, u.uid, u.gid)?;
    }

    // Regular files are opened beneath the process's root, never through
    // a magic link (/proc/self/fd/N, /proc/PID/root): the image names the
    // path and the opener is still root. O_NONBLOCK so that a FIFO at the
    // path cannot hang the restore; phase 3 sets the dumped flags.
    let has_files = objs
        .iter()
        .any(|o| matches!(o, Obj::Single(f) if matches!(f.object, FdObject::File { .. })));
    let root_dir = if has_files {
        let r = b
            .push(
                -1,
                "open / to resolve the image's files in",
                &[b"/\0"],
                &[],
                false,
                |a| {
                    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
                    (libc::SYS_openat, [AT_FDCWD, a[0], flags as u64, 0, 0, 0])
                },
            )?
            .0;
        b.flush()?;
        Some(b.result(r) as i32)
    } else {
        None
    };

    // Phase 1: create.
    enum Made {
        One(Res),
        Two(Out),
    }
    let mut made: Vec<Made> = Vec::with_capacity(objs.len());
    // Unix socket paths to probe: (record, lstat result, lstat buffer, probe socket).
    let mut probes: Vec<(&Fd, &str, Res, Out, Res)> = Vec::new();
    let mut clocks: HashMap<i32, Out> = HashMap::new();
    for o in &objs {
        let m = match o {
            Obj::Single(f) => {
                let fd = f.fd;
                let r = match &f.object {
                    FdObject::File { path, .. } => {
                        if !normalized(path) {
                            return Err(FdError::plan(
                                fd,
                                format!("{path:?} is not a normalized absolute path"),
                            ));
                        }
                        let flags = (f.flags & OPEN_FLAGS)
                            | libc::O_CLOEXEC
                            | libc::O_NOCTTY
                            | libc::O_NONBLOCK;
                        let root = root_dir.expect("opened when there are files") as u64;
                        b.push(
                            fd,
                            format!("open {path} (in the rootfs, no magic links)"),
                            &[&cstring(path), &open_how_in_root(flags)],
                            &[],
                            false,
                            |a| (SYS_OPENAT2, [root, a[0], a[1], OPEN_HOW_SIZE, 0, 0]),
                        )?
                        .0
                    }
                    FdObject::Device { device } => {
                        let path = device_path(*device);
                        let flags = (f.flags & OPEN_FLAGS) | libc::O_CLOEXEC | libc::O_NOCTTY;
                        b.push(
                            fd,
                            format!("open {path}"),
                            &[&cstring(path)],
                            &[],
                            false,
                            |a| (libc::SYS_openat, [AT_FDCWD, a[0], flags as u64, 0, 0, 0]),
                        )?
                        .0
                    }
                    FdObject::Socket(s) => {
                        let ty = sock_type(s.socket_type) | libc::SOCK_CLOEXEC;
                        let r = b.call(
                            fd,
                            format!("socket({:?}, {:?})", s.family, s.socket_type),
                            libc::SYS_socket,
                            [
                                domain(s.family) as u64,
                                ty as u64,
                                s.protocol as u64,
                                0,
                                0,
                                0,
                            ],
                        )?;
                        if let Some(SockAddr::UnixPath { path }) = &s.local {
                            if !normalized(path) {
                                return Err(FdError::plan(
                                    fd,
                                    format!(
                                        "socket path {path:?} is not a normalized absolute path"
                                    ),
                                ));
                            }
                            let (st, outs) = b.push(
                                fd,
                                format!("lstat {path}"),
                                &[&cstring(path)],
                                &[STAT_SIZE],
                                true,
                                |a| {
                                    (
                                        libc::SYS_newfstatat,
                                        [
                                            AT_FDCWD,
                                            a[0],
                                            a[1],
                                            libc::AT_SYMLINK_NOFOLLOW as u64,
                                            0,
                                            0,
                                        ],
                                    )
                                },
                            )?;
                            let probe = b.call(
                                fd,
                                "socket() to probe the socket path",
                                libc::SYS_socket,
                                [
                                    libc::AF_UNIX as u64,
                                    (sock_type(s.socket_type)
                                        | libc::SOCK_CLOEXEC
                                        | libc::SOCK_NONBLOCK)
                                        as u64,
                                    0,
                                    0,
                                    0,
                                    0,
                                ],
                            )?;
                            probes.push((f, path.as_str(), st, outs[0], probe));
                        }
                        r
                    }
                    FdObject::Eventfd { count, semaphore } => {
                        let init = if *count <= u32::MAX as u64 { *count } else { 0 };
                        let flags =
                            libc::EFD_CLOEXEC as u64 | if *semaphore { EFD_SEMAPHORE } else { 0 };
                        b.call(
                            fd,
                            "eventfd2",
                            libc::SYS_eventfd2,
                            [init, flags, 0, 0, 0, 0],
                        )?
                    }
                    FdObject::Epoll { .. } => b.call(
                        fd,
                        "epoll_create1",
                        libc::SYS_epoll_create1,
                        [libc::EPOLL_CLOEXEC as u64, 0, 0, 0, 0, 0],
                    )?,
                    FdObject::Timerfd {
                        clock,
                        settime_flags,
                        value_ns,
                        ..
                    } => {
                        let r = b.call(
                            fd,
                            format!("timerfd_create({clock})"),
                            libc::SYS_timerfd_create,
                            [*clock as u64, libc::TFD_CLOEXEC as u64, 0, 0, 0, 0],
                        )?;
                        if settime_flags & TFD_TIMER_ABSTIME != 0 && *value_ns != 0 {
                            let c = *clock;
                            let (_, outs) = b.push(
                                fd,
                                format!("clock_gettime({c})"),
                                &[],
                                &[16],
                                false,
                                |a| (libc::SYS_clock_gettime, [c as u64, a[0], 0, 0, 0, 0]),
                            )?;
                            clocks.insert(fd, outs[0]);
                        }
                        r
                    }
                    FdObject::Signalfd { mask } => {
                        b.push(fd, "signalfd4", &[&mask.to_le_bytes()], &[], false, |a| {
                            (
                                libc::SYS_signalfd4,
                                [u64::MAX, a[0], 8, libc::SFD_CLOEXEC as u64, 0, 0],
                            )
                        })?
                        .0
                    }
                    FdObject::Stdio { .. }
                    | FdObject::Tty
                    | FdObject::Dup { .. }
                    | FdObject::Pipe { .. } => {
                        unreachable!("not a single object")
                    }
                };
                Made::One(r)
            }
            Obj::Pipe { read, write } => {
                let any = read.or(*write).expect("a pipe has an end");
                let direct = [read, write]
                    .iter()
                    .any(|e| e.is_some_and(|f| f.flags & libc::O_DIRECT != 0));
                let flags =
                    libc::O_CLOEXEC | libc::O_NONBLOCK | if direct { libc::O_DIRECT } else { 0 };
                let (_, outs) = b.push(any.fd, "pipe2", &[], &[8], false, |a| {
                    (libc::SYS_pipe2, [a[0], flags as u64, 0, 0, 0, 0])
                })?;
                Made::Two(outs[0])
            }
            Obj::Pair { ends, socket_type } => {
                let any = ends[0].or(ends[1]).expect("a pair has an end");
                let ty = sock_type(*socket_type) | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
                let (_, outs) = b.push(any.fd, "socketpair", &[], &[8], false, |a| {
                    (
                        libc::SYS_socketpair,
                        [libc::AF_UNIX as u64, ty as u64, 0, a[0], 0, 0],
                    )
                })?;
                Made::Two(outs[0])
            }
        };
        made.push(m);
    }
    b.flush()?;
    if let Some(root) = root_dir {
        // Before any fd is placed at its number (it may be root's).
        b.call(
            -1,
            format!("close({root}), the rootfs resolver"),
            libc::SYS_close,
            [root as u64, 0, 0, 0, 0, 0],
        )?;
    }
    let temps: Vec<Temps> = made
        .iter()
        .map(|m| match m {
            Made::One(r) => Temps {
                a: b.result(*r) as i32,
                b: -1,
            },
            Made::Two(o) => {
                let buf = b.output(*o);
                Temps {
                    a: i32_at(buf, 0),
                    b: i32_at(buf, 4),
                }
            }
        })
        .collect();
    let mut open: BTreeSet<i32> = open_before.difference(&reserved).copied().collect();
    for t in &temps {
        open.insert(t.a);
        if t.b >= 0 {
            open.insert(t.b);
        }
    }

    // Phase 2: probe unix socket paths that exist.
    let mut stale: HashMap<i32, &str> = HashMap::new();
    if !probes.is_empty() {
        let mut connects: Vec<Option<Res>> = Vec::with_capacity(probes.len());
        for (f, path, st, st_buf, probe) in &probes {
            let probe_fd = b.result(*probe);
            let lstat = b.result(*st);
            let mut c = None;
            if lstat == 0 {
                let mode = u32::from_le_bytes(
                    b.output(*st_buf)[STAT_MODE_OFF..STAT_MODE_OFF + 4]
                        .try_into()
                        .expect("4 bytes"),
                );
                if mode & libc::S_IFMT != libc::S_IFSOCK {
                    return Err(FdError::plan(
                        f.fd,
                        format!(
                            "the socket path {path} exists and is not a socket (mode {mode:o}); not removing it"
                        ),
                    ));
                }
                let addr = encode_addr(&SockAddr::UnixPath {
                    path: path.to_string(),
                });
                let (r, _) = b.push(
                    f.fd,
                    format!("connect {path} (probe)"),
                    &[&addr],
                    &[],
                    true,
                    |a| {
                        (
                            libc::SYS_connect,
                            [probe_fd as u64, a[0], addr.len() as u64, 0, 0, 0],
                        )
                    },
                )?;
                c = Some(r);
            } else if lstat != -(libc::ENOENT as i64) {
                return Err(FdError::Restore {
                    fd: f.fd,
                    step: format!("lstat {path}"),
                    errno: nix::errno::Errno::from_raw(-lstat as i32),
                });
            }
            b.call(
                f.fd,
                "close the probe socket",
                libc::SYS_close,
                [probe_fd as u64, 0, 0, 0, 0, 0],
            )?;
            connects.push(c);
        }
        b.flush()?;
        for ((f, path, ..), c) in probes.iter().zip(connects) {
            let Some(c) = c else { continue };
            match -b.result(c) {
                e if e == libc::ECONNREFUSED as i64 => {
                    stale.insert(f.fd, path);
                }
                e if e > 0 && e != libc::EAGAIN as i64 && e != libc::EPROTOTYPE as i64 => {
                    return Err(FdError::Restore {
                        fd: f.fd,
                        step: format!("connect {path} (probing whether a socket listens there)"),
                        errno: nix::errno::Errno::from_raw(e as i32),
                    });
                }
                _ => {
                    return Err(FdError::plan(
                        f.fd,
                        format!("the socket path {path} is in use by a live socket"),
                    ));
                }
            }
        }
    }

    // Phase 3: state.
    let mut checks: Vec<(i32, String, Res, i64)> = Vec::new(); // result must be >= / == value
    let chunk = (b.data_size() / 2).max(1);
    for (o, t) in objs.iter().zip(&temps) {
        match o {
            Obj::Single(f) => {
                let fd = f.fd;
                let tmp = t.a as u64;
                match &f.object {
                    FdObject::Socket(s) => {
                        socket_options(
                            &mut b,
                            fd,
                            tmp,
                            s.family,
                            &s.options,
                            s.socket_type == SocketType::Stream && s.family != SocketFamily::Unix,
                            opts.force_socket_buffers,
                        )?;
                        if let Some(path) = stale.get(&fd) {
                            b.push(
                                fd,
                                format!("unlink the stale socket file {path}"),
                                &[&cstring(path)],
                                &[],
                                false,
                                |a| (libc::SYS_unlinkat, [AT_FDCWD, a[0], 0, 0, 0, 0]),
                            )?;
                        }
                        if let Some(local) = &s.local {
                            let addr = encode_addr(local);
                            b.push(
                                fd,
                                format!("bind {}", show_addr(local)),
                                &[&addr],
                                &[],
                                false,
                                |a| (libc::SYS_bind, [tmp, a[0], addr.len() as u64, 0, 0, 0]),
                            )?;
                        }
                        if let SocketState::Listening { backlog } = s.state {
                            b.call(
                                fd,
                                format!("listen({backlog})"),
                                libc::SYS_listen,
                                [tmp, backlog as u64, 0, 0, 0, 0],
                            )?;
                        }
                    }
                    FdObject::Eventfd { count, .. } if *count > u32::MAX as u64 => {
                        let (r, _) = b.push(
                            fd,
                            "write the eventfd count",
                            &[&count.to_le_bytes()],
                            &[],
                            false,
                            |a| (libc::SYS_write, [tmp, a[0], 8, 0, 0, 0]),
                        )?;
                        checks.push((fd, "write the eventfd count".into(), r, 8));
                    }
                    FdObject::Timerfd {
                        clock: _,
                        settime_flags,
                        ticks,
                        interval_ns,
                        value_ns,
                    } => {
                        let mut value = *value_ns;
                        // A periodic timer whose expiry was not read yet shows
                        // 0 left: it is overdue, not disarmed (settime resets
                        // the ticks of a disarmed one).
                        if value == 0 && *interval_ns > 0 && *ticks > 0 {
                            value = *interval_ns;
                        }
                        if let Some(o) = clocks.get(&fd) {
                            let now = b.output(*o);
                            let s = i64::from_le_bytes(now[..8].try_into().expect("8"));
                            let ns = i64::from_le_bytes(now[8..16].try_into().expect("8"));
                            value = value.saturating_add(
                                (s as u64)
                                    .saturating_mul(1_000_000_000)
                                    .saturating_add(ns as u64),
                            );
                        }
                        let ts = |n: u64| {
                            [
                                (n / 1_000_000_000).to_le_bytes(),
                                (n % 1_000_000_000).to_le_bytes(),
                            ]
                            .concat()
                        };
                        let its = [ts(*interval_ns), ts(value)].concat();
                        let flags = *settime_flags as u64;
                        b.push(fd, "timerfd_settime", &[&its], &[], false, |a| {
                            (libc::SYS_timerfd_settime, [tmp, flags, a[0], 0, 0, 0])
                        })?;
                        if *ticks > 0 {
                            b.push(
                                fd,
                                "ioctl(TFD_IOC_SET_TICKS)",
                                &[&ticks.to_le_bytes()],
                                &[],
                                false,
                                |a| (libc::SYS_ioctl, [tmp, TFD_IOC_SET_TICKS, a[0], 0, 0, 0]),
                            )?;
                        }
                    }
                    _ => {}
                }
            }
            Obj::Pipe { read, write } => {
                let wr = t.b;
                let any = read.or(*write).expect("an end");
                let (capacity, data) =
                    match [read, write]
                        .iter()
                        .filter_map(|e| **e)
                        .find_map(|f| match &f.object {
                            FdObject::Pipe { capacity, data, .. } if !data.is_empty() => {
                                Some((*capacity, data.as_slice()))
                            }
                            _ => None,
                        }) {
                        Some(x) => x,
                        None => match &any.object {
                            FdObject::Pipe { capacity, .. } => (*capacity, &[][..]),
                            _ => unreachable!(),
                        },
                    };
                let r = b.call(
                    any.fd,
                    format!("F_SETPIPE_SZ({capacity})"),
                    libc::SYS_fcntl,
                    [
                        wr as u64,
                        libc::F_SETPIPE_SZ as u64,
                        capacity as u64,
                        0,
                        0,
                        0,
                    ],
                )?;
                checks.push((
                    any.fd,
                    format!("F_SETPIPE_SZ({capacity}) gave less"),
                    r,
                    -(capacity as i64),
                ));
                let data_fd = read.map_or(any.fd, |f| f.fd);
                for c in data.chunks(chunk) {
                    let step = format!("refill the pipe ({} bytes)", c.len());
                    let (r, _) = b.push(data_fd, step.clone(), &[c], &[], false, |a| {
                        (libc::SYS_write, [wr as u64, a[0], c.len() as u64, 0, 0, 0])
                    })?;
                    checks.push((data_fd, step, r, c.len() as i64));
                }
            }
            Obj::Pair { ends, socket_type } => {
                let tmp = [t.a, t.b];
                for (i, e) in ends.iter().enumerate() {
                    let Some(f) = e else { continue };
                    let FdObject::Socket(s) = &f.object else {
                        unreachable!()
                    };
                    socket_options(
                        &mut b,
                        f.fd,
                        tmp[i] as u64,
                        s.family,
                        &s.options,
                        false,
                        opts.force_socket_buffers,
                    )?;
                }
                for (i, e) in ends.iter().enumerate() {
                    let Some(f) = e else { continue };
                    let FdObject::Socket(s) = &f.object else {
                        unreachable!()
                    };
                    let SocketState::Pair { queued, .. } = &s.state else {
                        unreachable!()
                    };
                    // Bytes queued at this end are sent from the other.
                    let from = tmp[1 - i] as u64;
                    for m in queued {
                        let pieces: Vec<&[u8]> = if *socket_type == SocketType::Stream {
                            m.chunks(chunk).collect()
                        } else {
                            if m.len() > b.data_size() {
                                return Err(FdError::plan(
                                    f.fd,
                                    format!(
                                        "a queued message of {} bytes does not fit the gadget's data area ({} bytes)",
                                        m.len(),
                                        b.data_size()
                                    ),
                                ));
                            }
                            vec![m.as_slice()]
                        };
                        for p in pieces {
                            let step = format!("re-queue {} bytes", p.len());
                            let (r, _) = b.push(f.fd, step.clone(), &[p], &[], false, |a| {
                                (
                                    libc::SYS_sendto,
                                    [from, a[0], p.len() as u64, libc::MSG_DONTWAIT as u64, 0, 0],
                                )
                            })?;
                            checks.push((f.fd, step, r, p.len() as i64));
                        }
                    }
                }
            }
        }
    }

    // The shuffle: every record's source.
    let mut src: HashMap<i32, i32> = HashMap::new();
    let mut created: Vec<&Fd> = Vec::new();
    for (o, t) in objs.iter().zip(&temps) {
        match o {
            Obj::Single(f) => {
                src.insert(f.fd, t.a);
                created.push(f);
            }
            Obj::Pipe { read, write } => {
                if let Some(f) = read {
                    src.insert(f.fd, t.a);
                    created.push(f);
                }
                if let Some(f) = write {
                    src.insert(f.fd, t.b);
                    created.push(f);
                }
            }
            Obj::Pair { ends, .. } => {
                for (i, e) in ends.iter().enumerate() {
                    if let Some(f) = e {
                        src.insert(f.fd, if i == 0 { t.a } else { t.b });
                        created.push(f);
                    }
                }
            }
        }
    }
    let tty_src = fds
        .iter()
        .find(|f| f.fd <= 2 && matches!(f.object, FdObject::Tty))
        .map(|f| f.fd);
    for f in fds {
        let s = match &f.object {
            FdObject::Stdio { stream } => Some(stream_fd(*stream)),
            FdObject::Tty if f.fd <= 2 => Some(f.fd),
            FdObject::Tty => Some(tty_src.ok_or_else(|| {
                FdError::plan(
                    f.fd,
                    "a terminal outside 0-2, and no terminal on 0-2 to share",
                )
            })?),
            _ => None,
        };
        if let Some(s) = s {
            if !open_before.contains(&s) {
                return Err(FdError::plan(
                    f.fd,
                    format!("is the sandbox's fd {s}, which is not open in the process"),
                ));
            }
            src.insert(f.fd, s);
        }
    }
    for f in fds {
        if let FdObject::Dup { of } = &f.object {
            let s = *src.get(of).ok_or_else(|| {
                FdError::plan(f.fd, format!("duplicates fd {of}, which the image lacks"))
            })?;
            src.insert(f.fd, s);
        }
    }
    let copies: Vec<Copy> = fds
        .iter()
        .map(|f| Copy {
            dst: f.fd,
            src: src[&f.fd],
            cloexec: f.cloexec,
        })
        .collect();
    let ops = plan_moves(&copies, &open, &reserved).map_err(|e| FdError::plan(-1, e))?;
    for op in ops {
        match op {
            Op::Dup { from, to, cloexec } => {
                let fl = if cloexec { libc::O_CLOEXEC } else { 0 };
                b.call(
                    to,
                    format!("dup3({from}, {to})"),
                    libc::SYS_dup3,
                    [from as u64, to as u64, fl as u64, 0, 0, 0],
                )?;
            }
            Op::SetCloexec { fd, cloexec } => {
                let fl = if cloexec { libc::FD_CLOEXEC } else { 0 };
                b.call(
                    fd,
                    "fcntl(F_SETFD)",
                    libc::SYS_fcntl,
                    [fd as u64, libc::F_SETFD as u64, fl as u64, 0, 0, 0],
                )?;
            }
            Op::Close(fd) => {
                b.call(
                    fd,
                    format!("close({fd})"),
                    libc::SYS_close,
                    [fd as u64, 0, 0, 0, 0, 0],
                )?;
            }
        }
    }
    for f in &created {
        let fd = f.fd as u64;
        b.call(
            f.fd,
            format!("fcntl(F_SETFL, {:#o})", f.flags & SETFL_MASK),
            libc::SYS_fcntl,
            [
                fd,
                libc::F_SETFL as u64,
                (f.flags & SETFL_MASK) as u64,
                0,
                0,
                0,
            ],
        )?;
        if let FdObject::File { offset, .. } = &f.object {
            let r = b.call(
                f.fd,
                format!("lseek({offset})"),
                libc::SYS_lseek,
                [fd, *offset, libc::SEEK_SET as u64, 0, 0, 0],
            )?;
            checks.push((
                f.fd,
                format!("lseek({offset}) landed elsewhere"),
                r,
                *offset as i64,
            ));
        }
    }
    for f in fds {
        if let FdObject::Epoll { targets } = &f.object {
            for t in targets {
                let mut ev = Vec::with_capacity(12);
                ev.extend(t.events.to_le_bytes());
                ev.extend(t.data.to_le_bytes());
                b.push(
                    f.fd,
                    format!("epoll_ctl(ADD, fd {})", t.tfd),
                    &[&ev],
                    &[],
                    false,
                    |a| {
                        (
                            libc::SYS_epoll_ctl,
                            [
                                f.fd as u64,
                                libc::EPOLL_CTL_ADD as u64,
                                t.tfd as u64,
                                a[0],
                                0,
                                0,
                            ],
                        )
                    },
                )?;
            }
        }
    }
    if opts.fs_user.is_some() {
        set_fs_ids(&mut b, 0, 0)?;
    }
    b.flush()?;
    for (fd, step, r, want) in checks {
        let got = b.result(r);
        let ok = if want < 0 { got >= -want } else { got == want };
        if !ok {
            return Err(FdError::plan(
                fd,
                format!("{step}: result {got}, wanted {}", want.abs()),
            ));
        }
    }
    drop(b);

    let now = list_fds(pid)?;
    let want: BTreeSet<i32> = fds
        .iter()
        .map(|f| f.fd)
        .chain(open_before.intersection(&reserved).copied())
        .collect();
    if now != want {
        let fd = now
            .symmetric_difference(&want)
            .next()
            .copied()
            .unwrap_or(-1);
        return Err(FdError::plan(
            fd,
            format!("after the restore the process has fds {now:?}, the image wants {want:?}"),
        ));
    }
    Ok(())
}

/// The target's filesystem ids (they never fail: each returns the old
/// one).
fn set_fs_ids(b: &mut Batch<'_>, uid: u32, gid: u32) -> Result<(), FdError> {
    for (nr, name, id) in [
        (libc::SYS_setfsgid, "setfsgid", gid),
        (libc::SYS_setfsuid, "setfsuid", uid),
    ] {
        b.call(-1, format!("{name}({id})"), nr, [id as u64, 0, 0, 0, 0, 0])?;
    }
    Ok(())
}

/// `setsockopt` of every recorded option, before `bind`.
#[allow(clippy::too_many_arguments)]
fn socket_options(
    b: &mut Batch<'_>,
    fd: i32,
    tmp: u64,
    family: SocketFamily,
    o: &crate::image::SocketOptions,
    tcp: bool,
    force_buffers: bool,
) -> Result<(), FdError> {
    let set = |b: &mut Batch<'_>, level: i32, opt: i32, name: &str, v: i32, may_fail: bool| {
        b.push(
            fd,
            format!("setsockopt({name}, {v})"),
            &[&v.to_le_bytes()],
            &[],
            may_fail,
            |a| {
                (
                    libc::SYS_setsockopt,
                    [tmp, level as u64, opt as u64, a[0], 4, 0],
                )
            },
        )
        .map(|_| ())
    };
    if o.reuseaddr {
        set(
            b,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            "SO_REUSEADDR",
            1,
            false,
        )?;
    }
    if o.reuseport {
        set(
            b,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            "SO_REUSEPORT",
            1,
            false,
        )?;
    }
    if o.keepalive {
        set(
            b,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            "SO_KEEPALIVE",
            1,
            false,
        )?;
    }
    if family == SocketFamily::Inet6 {
        set(
            b,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            "IPV6_V6ONLY",
            o.v6only as i32,
            false,
        )?;
    }
    if tcp && o.nodelay {
        set(
            b,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            "TCP_NODELAY",
            1,
            false,
        )?;
    }
    if tcp && o.defer_accept != 0 {
        set(
            b,
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            "TCP_DEFER_ACCEPT",
            o.defer_accept as i32,
            false,
        )?;
    }
    // The kernel doubles what is set and reports the doubled value; the
    // FORCE variants (CAP_NET_ADMIN) go past net.core.[rw]mem_max.
    for (size, plain, force, name, force_name) in [
        (
            o.rcvbuf,
            libc::SO_RCVBUF,
            libc::SO_RCVBUFFORCE,
            "SO_RCVBUF",
            "SO_RCVBUFFORCE",
        ),
        (
            o.sndbuf,
            libc::SO_SNDBUF,
            libc::SO_SNDBUFFORCE,
            "SO_SNDBUF",
            "SO_SNDBUFFORCE",
        ),
    ] {
        if size == 0 {
            continue;
        }
        // The kernel reports twice what was asked for.
        let v = (size / 2) as i32;
        set(b, libc::SOL_SOCKET, plain, name, v, false)?;
        if force_buffers {
            set(b, libc::SOL_SOCKET, force, force_name, v, true)?;
        }
    }
    Ok(())
}
