//! Reading a stopped process's fd table into image records.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use crate::image::limits::{MAX_QUEUED_BYTES, MAX_QUEUED_MESSAGES};
use crate::image::{
    CharDevice, EpollTarget, Fd, FdObject, PipeEnd, SockAddr, Socket, SocketFamily, SocketOptions,
    SocketState, SocketType, StdStream,
};
use crate::proc::{FdInfo, parse_fdinfo};
use crate::ptrace::{Tid, TraceCtx, mem, procfs};

use super::FdError;
use super::diag::{Diag, TCP_ESTABLISHED, TCP_LISTEN, UnixDiag};
use super::link::{AnonKind, Link, parse_link};
use super::sock;

/// Status flags an image may carry (see [`Fd::flags`]).
pub(crate) const ALLOWED_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DIRECT
    | libc::O_NOATIME
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_ASYNC
    | libc::O_LARGEFILE;
/// Flags that only matter at `open` and that fdinfo may still show.
const OPEN_ONLY_FLAGS: i32 = libc::O_DIRECTORY
    | libc::O_NOFOLLOW
    | libc::O_NOCTTY
    | libc::O_CREAT
    | libc::O_EXCL
    | libc::O_TRUNC;
/// The kernel's `O_LARGEFILE` on x86_64 (`libc::O_LARGEFILE` is 0 there):
/// forced on by every 64-bit `open`, so implied, and left out of records.
const KERNEL_O_LARGEFILE: i32 = 0o100000;
/// `__O_TMPFILE` without `O_DIRECTORY`.
const O_TMPFILE_ONLY: i32 = libc::O_TMPFILE & !libc::O_DIRECTORY;

/// `SOCK_SNDBUF_LOCK` and `SOCK_RCVBUF_LOCK` as `SO_BUF_LOCK` reports them.
const SNDBUF_LOCK: i32 = 1;
const RCVBUF_LOCK: i32 = 2;
const SO_BUF_LOCK: i32 = 72;
const TCP_CLOSE: u8 = 7;

/// Everything read about one fd before classifying it.
struct Raw {
    fd: i32,
    text: String,
    link: Link,
    info: FdInfo,
    /// `scm_fds:` of a unix socket's fdinfo (descriptors in flight).
    scm_fds: u32,
    meta: Option<std::fs::Metadata>,
}

/// Reads the fd table of `pid` into image records, sorted by fd number.
///
/// Must run on the tracer thread while every thread of `pid` is in a
/// ptrace stop of `ctx` (checked), so the table cannot change meanwhile.
/// Nothing is injected and nothing in the process changes: sockets and
/// pipes are looked at through `pidfd_getfd` duplicates, never read from
/// or seeked (pipe bytes are copied with `tee(2)`, socket queues peeked
/// with `SO_PEEK_OFF` set for the duration and put back).
///
/// Any fd of a kind that cannot be restored fails the whole dump with
/// [`FdError::Unsupported`] naming the fd and the kind; the first such fd
/// (lowest number) is reported.
pub fn dump_fds(ctx: &mut TraceCtx, pid: Tid) -> Result<Vec<Fd>, FdError> {
    let perr = |what: &str, e: &dyn std::fmt::Display| FdError::Process {
        pid,
        what: what.to_string(),
        detail: e.to_string(),
    };
    for t in procfs::list_tasks(pid).map_err(|e| perr("listing its threads", &e))? {
        if ctx.current_stop(t).is_none() {
            return Err(FdError::NotStopped { pid, tid: t });
        }
    }
    let numbers = list_fds(pid).map_err(|e| perr("listing /proc/PID/fd", &e))?;
    let pidfd = mem::pidfd_open(pid).map_err(|e| perr("pidfd_open", &e))?;
    let mut raws = Vec::with_capacity(numbers.len());
    for fd in numbers {
        raws.push(read_raw(pid, fd)?);
    }
    let primary = group_dups(pid, &raws)?;
    let mut d = Dumper {
        pid,
        pidfd,
        diag: None,
        dups: HashMap::new(),
        primary,
        pipes: HashMap::new(),
        sockets: HashMap::new(),
        unix: HashMap::new(),
        tty_rdevs: Vec::new(),
        listeners: HashMap::new(),
        queued_total: 0,
    };
    for r in &raws {
        if d.primary[&r.fd] != r.fd {
            continue;
        }
        match r.link {
            Link::Pipe(ino) => d
                .pipes
                .entry(ino)
                .or_default()
                .push((r.fd, r.info.flags as i32 & libc::O_ACCMODE)),
            Link::Socket(ino) => {
                d.sockets.insert(ino, r.fd);
            }
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(raws.len());
    let mut flags_of: HashMap<i32, i32> = HashMap::new();
    for r in &raws {
        let cloexec = r.info.flags as i32 & libc::O_CLOEXEC != 0;
        let p = d.primary[&r.fd];
        if p != r.fd {
            out.push(Fd {
                fd: r.fd,
                cloexec,
                flags: flags_of[&p],
                object: FdObject::Dup { of: p },
            });
            continue;
        }
        let object = d.classify(r)?;
        let flags = status_flags(r, &object)?;
        flags_of.insert(r.fd, flags);
        out.push(Fd {
            fd: r.fd,
            cloexec,
            flags,
            object,
        });
    }
    Ok(out)
}

fn list_fds(pid: Tid) -> std::io::Result<Vec<i32>> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

fn read_raw(pid: Tid, fd: i32) -> Result<Raw, FdError> {
    let link_path = format!("/proc/{pid}/fd/{fd}");
    let text = std::fs::read_link(&link_path)
        .map_err(|e| FdError::inspect(fd, "readlink", e))?
        .into_os_string()
        .into_string()
        .map_err(|s| FdError::unsupported(fd, format!("a file whose path is not UTF-8 ({s:?})")))?;
    let info_text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .map_err(|e| FdError::inspect(fd, "reading fdinfo", e))?;
    let info = parse_fdinfo(&info_text).map_err(|e| FdError::inspect(fd, "parsing fdinfo", e))?;
    let scm_fds = info_text
        .lines()
        .find_map(|l| l.strip_prefix("scm_fds:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // stat through the magic link: the file itself, in whatever mount
    // namespace it lives.
    let meta = std::fs::metadata(&link_path).ok();
    Ok(Raw {
        fd,
        link: parse_link(&text),
        text,
        info,
        scm_fds,
        meta,
    })
}

/// Maps every fd to the lowest fd sharing its open file description
/// (`kcmp(KCMP_FILE)`). Only fds with the same link text can share one.
fn group_dups(pid: Tid, raws: &[Raw]) -> Result<HashMap<i32, i32>, FdError> {
    let mut by_text: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for r in raws {
        by_text.entry(&r.text).or_default().push(r.fd);
    }
    let mut primary = HashMap::with_capacity(raws.len());
    for (_, mut fds) in by_text {
        let mut err = None;
        if fds.len() == 1 {
            primary.insert(fds[0], fds[0]);
            continue;
        }
        // kcmp orders objects consistently: sorting by (object, number)
        // brings the fds of one description together.
        fds.sort_by(
            |&a, &b| match mem::kcmp(pid, pid, mem::KCMP_FILE, a as u64, b as u64) {
                Ok(o) => o.then(a.cmp(&b)),
                Err(e) => {
                    err.get_or_insert(FdError::inspect(a, format!("kcmp(KCMP_FILE, {a}, {b})"), e));
                    a.cmp(&b)
                }
            },
        );
        if let Some(e) = err {
            return Err(e);
        }
        let mut i = 0;
        while i < fds.len() {
            let mut j = i + 1;
            while j < fds.len()
                && mem::kcmp(pid, pid, mem::KCMP_FILE, fds[i] as u64, fds[j] as u64)
                    .map_err(|e| FdError::inspect(fds[j], "kcmp(KCMP_FILE)", e))?
                    == std::cmp::Ordering::Equal
            {
                j += 1;
            }
            let p = *fds[i..j].iter().min().expect("non-empty run");
            for &f in &fds[i..j] {
                primary.insert(f, p);
            }
            i = j;
        }
    }
    Ok(primary)
}

/// The image's `flags` of a primary record, refusing flags that cannot be
/// restored on a kind that is re-created.
fn status_flags(r: &Raw, object: &FdObject) -> Result<i32, FdError> {
    let raw = r.info.flags as i32 & !libc::O_CLOEXEC & !OPEN_ONLY_FLAGS & !KERNEL_O_LARGEFILE;
    if matches!(object, FdObject::Stdio { .. } | FdObject::Tty) {
        // The sandbox's own: not restored.
        return Ok(raw & ALLOWED_FLAGS);
    }
    let what = || r.link.describe();
    if raw & libc::O_PATH != 0 {
        return Err(FdError::unsupported(
            r.fd,
            format!("an O_PATH descriptor of {}", what()),
        ));
    }
    if raw & O_TMPFILE_ONLY != 0 {
        return Err(FdError::unsupported(
            r.fd,
            format!("an O_TMPFILE file ({})", r.text),
        ));
    }
    if raw & libc::O_ASYNC != 0 {
        return Err(FdError::unsupported(
            r.fd,
            format!(
                "{} with O_ASYNC (signal-driven I/O; its owner and signal are not restored)",
                what()
            ),
        ));
    }
    if raw & !ALLOWED_FLAGS != 0 {
        return Err(FdError::unsupported(
            r.fd,
            format!("{} with open flags {:#o}", what(), raw & !ALLOWED_FLAGS),
        ));
    }
    Ok(raw)
}

fn stdio(fd: i32) -> Option<StdStream> {
    match fd {
        0 => Some(StdStream::Stdin),
        1 => Some(StdStream::Stdout),
        2 => Some(StdStream::Stderr),
        _ => None,
    }
}

fn major(rdev: u64) -> u64 {
    libc::major(rdev) as u64
}

fn minor(rdev: u64) -> u64 {
    libc::minor(rdev) as u64
}

fn char_device(rdev: u64) -> Option<CharDevice> {
    if major(rdev) != 1 {
        return None;
    }
    Some(match minor(rdev) {
        3 => CharDevice::Null,
        5 => CharDevice::Zero,
        7 => CharDevice::Full,
        8 => CharDevice::Random,
        9 => CharDevice::Urandom,
        _ => return None,
    })
}

/// A terminal (not a pty master).
fn is_tty(fd: BorrowedFd<'_>, rdev: u64) -> bool {
    let master = (major(rdev) == 5 && minor(rdev) == 2) || (128..=135).contains(&major(rdev));
    !master && nix::unistd::isatty(fd).unwrap_or(false)
}

fn family_name(f: i32) -> String {
    match f {
        libc::AF_NETLINK => "a netlink socket".into(),
        libc::AF_PACKET => "a packet socket".into(),
        libc::AF_VSOCK => "a vsock socket".into(),
        libc::AF_ALG => "an AF_ALG (crypto) socket".into(),
        libc::AF_BLUETOOTH => "a bluetooth socket".into(),
        libc::AF_XDP => "an AF_XDP socket".into(),
        libc::AF_TIPC => "a TIPC socket".into(),
        libc::AF_KEY => "a PF_KEY socket".into(),
        f => format!("a socket of address family {f}"),
    }
}

fn tcp_state_name(s: u8) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "unknown state",
    }
}

struct Dumper {
    pid: Tid,
    pidfd: OwnedFd,
    diag: Option<Diag>,
    dups: HashMap<i32, OwnedFd>,
    primary: HashMap<i32, i32>,
    /// Pipe inode → (primary fd, access mode) of its open file descriptions.
    pipes: HashMap<u64, Vec<(i32, i32)>>,
    /// Socket inode → primary fd.
    sockets: HashMap<u64, i32>,
    unix: HashMap<u64, Option<UnixDiag>>,
    /// Terminals on 0-2.
    tty_rdevs: Vec<u64>,
    /// (family, protocol) → inode → (waiting, backlog).
    listeners: HashMap<(i32, i32), HashMap<u32, (u32, u32)>>,
    /// Bytes copied so far out of pipes and socket queues.
    queued_total: usize,
}

/// The most bytes a dump copies out of all pipes and socket queues
/// together: they are held in memory, then written into the manifest
/// (base64), whose own limit refuses an image only once all is copied.
const MAX_TOTAL_QUEUED_BYTES: usize = (crate::image::limits::MAX_MANIFEST_BYTES as usize) / 2;

impl Dumper {
    /// Counts `n` more bytes copied for `fd`; an error beyond the total.
    fn count_queued(&mut self, fd: i32, n: usize) -> Result<(), FdError> {
        self.queued_total += n;
        if self.queued_total > MAX_TOTAL_QUEUED_BYTES {
            return Err(FdError::unsupported(
                fd,
                format!(
                    "more data queued in pipes and sockets than an image holds ({MAX_TOTAL_QUEUED_BYTES} bytes)"
                ),
            ));
        }
        Ok(())
    }
}

impl Dumper {
    fn dup(&mut self, fd: i32) -> Result<BorrowedFd<'_>, FdError> {
        if !self.dups.contains_key(&fd) {
            let d = mem::pidfd_getfd(&self.pidfd, fd)
                .map_err(|e| FdError::inspect(fd, "pidfd_getfd", e))?;
            self.dups.insert(fd, d);
        }
        Ok(self.dups[&fd].as_fd())
    }

    fn diag(&mut self, fd: i32) -> Result<&mut Diag, FdError> {
        if self.diag.is_none() {
            self.diag = Some(Diag::for_process(self.pid).map_err(|e| {
                FdError::inspect(fd, "opening NETLINK_SOCK_DIAG in its network namespace", e)
            })?);
        }
        Ok(self.diag.as_mut().expect("just set"))
    }

    fn unix_diag(&mut self, fd: i32, ino: u64) -> Result<Option<UnixDiag>, FdError> {
        if let Some(d) = self.unix.get(&ino) {
            return Ok(d.clone());
        }
        let d = self
            .diag(fd)?
            .unix(ino)
            .map_err(|e| FdError::inspect(fd, "unix_diag", e))?;
        self.unix.insert(ino, d.clone());
        Ok(d)
    }

    fn classify(&mut self, r: &Raw) -> Result<FdObject, FdError> {
        let fd = r.fd;
        let std = stdio(fd);
        match &r.link {
            Link::Path(p) => {
                let Some(m) = r.meta.as_ref() else {
                    return Err(FdError::inspect(fd, format!("stat of {p}"), "failed"));
                };
                let ft = m.file_type();
                if ft.is_file() {
                    if m.nlink() == 0 {
                        if let Some(stream) = std {
                            return Ok(FdObject::Stdio { stream });
                        }
                        return Err(FdError::unsupported(fd, format!("a deleted file ({p})")));
                    }
                    if let Some(stream) = std {
                        return Ok(FdObject::Stdio { stream });
                    }
                    let path = self.file_path(fd, p, m)?;
                    return Ok(FdObject::File {
                        path,
                        offset: r.info.pos,
                    });
                }
                if ft.is_char_device() {
                    let rdev = m.rdev();
                    if let Some(device) = char_device(rdev) {
                        if let Some(stream) = std {
                            return Ok(FdObject::Stdio { stream });
                        }
                        return Ok(FdObject::Device { device });
                    }
                    let tty = {
                        let d = self.dup(fd)?;
                        is_tty(d, rdev)
                    };
                    if tty {
                        if std.is_some() {
                            self.tty_rdevs.push(rdev);
                            return Ok(FdObject::Tty);
                        }
                        if self.tty_rdevs.contains(&rdev) {
                            return Ok(FdObject::Tty);
                        }
                        return Err(FdError::unsupported(
                            fd,
                            format!("a terminal ({p}) that is not the one on fds 0-2"),
                        ));
                    }
                    return Err(FdError::unsupported(
                        fd,
                        format!("the character device {p} ({}:{})", major(rdev), minor(rdev)),
                    ));
                }
                let kind = if ft.is_dir() {
                    format!("a directory ({p})")
                } else if ft.is_fifo() {
                    format!("a named FIFO ({p})")
                } else if ft.is_block_device() {
                    format!("a block device ({p})")
                } else if ft.is_socket() {
                    format!("a socket file opened by path ({p})")
                } else {
                    format!("an unknown kind of file ({p})")
                };
                Err(FdError::unsupported(fd, kind))
            }
            Link::Deleted(p) => {
                if let Some(stream) = std
                    && r.meta.as_ref().is_some_and(|m| m.file_type().is_file())
                {
                    return Ok(FdObject::Stdio { stream });
                }
                Err(FdError::unsupported(fd, format!("a deleted file ({p})")))
            }
            Link::Pipe(ino) => self.pipe(r, *ino),
            Link::Socket(ino) => self.socket(r, *ino),
            Link::Anon(AnonKind::Eventfd) => {
                let count = r.info.eventfd_count.ok_or_else(|| {
                    FdError::inspect(fd, "fdinfo of an eventfd", "no eventfd-count")
                })?;
                Ok(FdObject::Eventfd {
                    count,
                    semaphore: r.info.eventfd_semaphore.unwrap_or(false),
                })
            }
            Link::Anon(AnonKind::Epoll) => self.epoll(r),
            Link::Anon(AnonKind::Timerfd) => {
                let t = r
                    .info
                    .timerfd
                    .ok_or_else(|| FdError::inspect(fd, "fdinfo of a timerfd", "no clockid"))?;
                let ns = |(s, n): (i64, i64)| {
                    (s.max(0) as u64)
                        .saturating_mul(1_000_000_000)
                        .saturating_add(n.max(0) as u64)
                };
                Ok(FdObject::Timerfd {
                    clock: t.clockid,
                    settime_flags: t.settime_flags as i32,
                    ticks: t.ticks,
                    interval_ns: ns(t.interval),
                    value_ns: ns(t.value),
                })
            }
            Link::Anon(AnonKind::Signalfd) => {
                let mask = r
                    .info
                    .signalfd_mask
                    .ok_or_else(|| FdError::inspect(fd, "fdinfo of a signalfd", "no sigmask"))?;
                Ok(FdObject::Signalfd { mask })
            }
            other => Err(FdError::unsupported(fd, other.describe())),
        }
    }

    /// The path of an open regular file inside the process's root: the
    /// link text is relative to *our* root, so strip the process's root
    /// from it, then check that the path leads to the same inode from the
    /// process's root (a renamed file, or one reached through a mount the
    /// root does not show, would reopen another file or none).
    fn file_path(&mut self, fd: i32, p: &str, m: &std::fs::Metadata) -> Result<String, FdError> {
        let root = std::fs::read_link(format!("/proc/{}/root", self.pid))
            .map_err(|e| FdError::inspect(fd, "readlink /proc/PID/root", e))?;
        let root = root.to_string_lossy();
        let rel = if root == "/" {
            p.to_string()
        } else if p == root {
            "/".to_string()
        } else if let Some(rest) = p.strip_prefix(root.as_ref())
            && rest.starts_with('/')
        {
            rest.to_string()
        } else {
            return Err(FdError::unsupported(
                fd,
                format!("the file {p}, outside the process's root {root}"),
            ));
        };
        if !normalized(&rel) {
            return Err(FdError::unsupported(
                fd,
                format!("the file {p} (its path is not a normalized absolute path)"),
            ));
        }
        if rel.len() > crate::image::limits::MAX_PATH_BYTES {
            return Err(FdError::unsupported(
                fd,
                format!("the file {p} (path too long)"),
            ));
        }
        let root_fd = std::fs::File::open(format!("/proc/{}/root", self.pid))
            .map_err(|e| FdError::inspect(fd, "opening /proc/PID/root", e))?;
        let same = open_path_in_root(&root_fd, &rel)
            .ok()
            .and_then(|f| nix::sys::stat::fstat(f.as_fd()).ok())
            .is_some_and(|st| st.st_dev == m.dev() && st.st_ino == m.ino());
        if !same {
            return Err(FdError::unsupported(
                fd,
                format!(
                    "the file {p}, which its path no longer leads to from the process's root \
                     (renamed, replaced, or opened through a mount it cannot see)"
                ),
            ));
        }
        Ok(rel)
    }

    fn pipe(&mut self, r: &Raw, ino: u64) -> Result<FdObject, FdError> {
        let fd = r.fd;
        let acc = r.info.flags as i32 & libc::O_ACCMODE;
        let ends = self.pipes.get(&ino).cloned().unwrap_or_default();
        let readers = ends.iter().filter(|e| e.1 == libc::O_RDONLY).count();
        let writers = ends.iter().filter(|e| e.1 == libc::O_WRONLY).count();
        let internal = readers > 0 && writers > 0;
        if !internal {
            if let Some(stream) = stdio(fd) {
                return Ok(FdObject::Stdio { stream });
            }
            return Err(FdError::unsupported(
                fd,
                format!(
                    "a pipe whose other end is not in this process (pipe:[{ino}], {} end)",
                    if acc == libc::O_WRONLY {
                        "write"
                    } else {
                        "read"
                    }
                ),
            ));
        }
        let end = match acc {
            libc::O_RDONLY => PipeEnd::Read,
            libc::O_WRONLY => PipeEnd::Write,
            _ => {
                return Err(FdError::unsupported(
                    fd,
                    format!(
                        "a pipe opened read-write (pipe:[{ino}], a FIFO reopened through /proc)"
                    ),
                ));
            }
        };
        if readers > 1 || writers > 1 {
            return Err(FdError::unsupported(
                fd,
                format!(
                    "a pipe with several open file descriptions of one end (pipe:[{ino}], \
                     reopened through /proc)"
                ),
            ));
        }
        let dup = self.dup(fd)?;
        // SAFETY: fcntl with an integer command on an fd we own.
        let cap = unsafe { libc::fcntl(dup.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if cap < 0 {
            return Err(FdError::inspect(
                fd,
                "F_GETPIPE_SZ",
                std::io::Error::last_os_error(),
            ));
        }
        let data = if end == PipeEnd::Read {
            pipe_bytes(dup, cap as usize)
                .map_err(|e| FdError::inspect(fd, "copying the bytes buffered in the pipe", e))?
        } else {
            Vec::new()
        };
        self.count_queued(fd, data.len())?;
        Ok(FdObject::Pipe {
            pipe: ino,
            end,
            capacity: cap as u32,
            data,
        })
    }

    fn socket(&mut self, r: &Raw, ino: u64) -> Result<FdObject, FdError> {
        let fd = r.fd;
        let (domain, ty, proto) = {
            let d = self.dup(fd)?;
            let get = |opt| {
                sock::getsockopt_int(d, libc::SOL_SOCKET, opt)
                    .map_err(|e| FdError::inspect(fd, format!("getsockopt({opt})"), e))
            };
            (
                get(libc::SO_DOMAIN)?,
                get(libc::SO_TYPE)?,
                get(libc::SO_PROTOCOL)?,
            )
        };
        match domain {
            libc::AF_UNIX => self.unix_socket(r, ino, ty),
            libc::AF_INET | libc::AF_INET6 => self.inet_socket(r, ino, domain, ty, proto),
            f => Err(FdError::unsupported(fd, family_name(f))),
        }
    }

    fn options(
        &mut self,
        fd: i32,
        family: SocketFamily,
        tcp: bool,
    ) -> Result<SocketOptions, FdError> {
        let d = self.dup(fd)?;
        let get = |level, opt, name: &str| {
            sock::getsockopt_int(d, level, opt)
                .map_err(|e| FdError::inspect(fd, format!("getsockopt({name})"), e))
        };
        let lock = match sock::getsockopt_int(d, libc::SOL_SOCKET, SO_BUF_LOCK) {
            Ok(v) => v,
            // Before 5.14: assume the buffers were left alone.
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => 0,
            Err(e) => return Err(FdError::inspect(fd, "getsockopt(SO_BUF_LOCK)", e)),
        };
        let mut o = SocketOptions {
            reuseaddr: get(libc::SOL_SOCKET, libc::SO_REUSEADDR, "SO_REUSEADDR")? != 0,
            reuseport: get(libc::SOL_SOCKET, libc::SO_REUSEPORT, "SO_REUSEPORT")? != 0,
            keepalive: get(libc::SOL_SOCKET, libc::SO_KEEPALIVE, "SO_KEEPALIVE")? != 0,
            ..SocketOptions::default()
        };
        if lock & RCVBUF_LOCK != 0 {
            o.rcvbuf = get(libc::SOL_SOCKET, libc::SO_RCVBUF, "SO_RCVBUF")? as u32;
        }
        if lock & SNDBUF_LOCK != 0 {
            o.sndbuf = get(libc::SOL_SOCKET, libc::SO_SNDBUF, "SO_SNDBUF")? as u32;
        }
        if family == SocketFamily::Inet6 {
            o.v6only = get(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, "IPV6_V6ONLY")? != 0;
        }
        if tcp {
            o.nodelay = get(libc::IPPROTO_TCP, libc::TCP_NODELAY, "TCP_NODELAY")? != 0;
            o.defer_accept = get(
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                "TCP_DEFER_ACCEPT",
            )?
            .max(0) as u32;
        }
        Ok(o)
    }

    fn unix_socket(&mut self, r: &Raw, ino: u64, ty: i32) -> Result<FdObject, FdError> {
        let fd = r.fd;
        let socket_type = match ty {
            libc::SOCK_STREAM => SocketType::Stream,
            libc::SOCK_DGRAM => SocketType::Dgram,
            libc::SOCK_SEQPACKET => SocketType::Seqpacket,
            t => {
                return Err(FdError::unsupported(
                    fd,
                    format!("a unix socket of type {t}"),
                ));
            }
        };
        let Some(diag) = self.unix_diag(fd, ino)? else {
            return Err(FdError::inspect(
                fd,
                "unix_diag",
                format!("socket:[{ino}] not found in the process's network namespace"),
            ));
        };
        let connected_to = match diag.peer {
            Some(p) => Some(p),
            None if diag.state == TCP_ESTABLISHED => Some(0),
            None => None,
        };
        // Sockets of processes outside: stdio as the runtime set it up.
        if let (Some(stream), Some(p)) = (stdio(fd), connected_to)
            && (p == 0 || !self.sockets.contains_key(&(p as u64)))
        {
            return Ok(FdObject::Stdio { stream });
        }
        if r.scm_fds > 0 {
            return Err(FdError::unsupported(
                fd,
                format!(
                    "a unix socket with {} file descriptor(s) in flight (SCM_RIGHTS)",
                    r.scm_fds
                ),
            ));
        }
        let local = {
            let d = self.dup(fd)?;
            let raw = sock::name(d, false).map_err(|e| FdError::inspect(fd, "getsockname", e))?;
            sock::unix_addr(&raw)
                .map_err(|why| FdError::unsupported(fd, format!("a unix socket {why}")))?
        };
        let options = self.options(fd, SocketFamily::Unix, false)?;
        let mk = |state, local| {
            Ok(FdObject::Socket(Socket {
                family: SocketFamily::Unix,
                socket_type,
                protocol: 0,
                state,
                local,
                options,
            }))
        };
        if diag.state == TCP_LISTEN {
            if local.is_none() {
                return Err(FdError::unsupported(
                    fd,
                    "a listening unix socket without a name",
                ));
            }
            if diag.rqueue > 0 {
                tracing::warn!(
                    fd,
                    waiting = diag.rqueue,
                    "unix listener: connections waiting in its accept queue are lost"
                );
            }
            return mk(
                SocketState::Listening {
                    backlog: diag.wqueue,
                },
                local,
            );
        }
        match connected_to {
            None => {
                if diag.rqueue > 0 {
                    tracing::warn!(
                        fd,
                        bytes = diag.rqueue,
                        "unix socket: bytes queued from outside the process are lost"
                    );
                }
                let state = if local.is_some() {
                    SocketState::Bound
                } else {
                    SocketState::Unbound
                };
                mk(state, local)
            }
            Some(0) => Err(FdError::unsupported(
                fd,
                "a unix socket whose peer has been closed",
            )),
            Some(p) => {
                let p = p as u64;
                if !self.sockets.contains_key(&p) {
                    return Err(FdError::unsupported(
                        fd,
                        format!(
                            "a unix socket connected to a peer outside the process (socket:[{p}])"
                        ),
                    ));
                }
                let peer_fd = self.sockets[&p];
                let back = self.unix_diag(peer_fd, p)?.and_then(|d| d.peer);
                if back != Some(ino as u32) {
                    return Err(FdError::unsupported(
                        fd,
                        format!(
                            "a unix socket connected to fd {peer_fd}, which is connected elsewhere \
                             (not a socket pair)"
                        ),
                    ));
                }
                let stream = socket_type == SocketType::Stream;
                let queued = {
                    let d = self.dup(fd)?;
                    sock::peek_queue(d, stream, MAX_QUEUED_BYTES, MAX_QUEUED_MESSAGES).map_err(
                        |why| {
                            FdError::unsupported(fd, format!("a unix socket pair end whose {why}"))
                        },
                    )?
                };
                self.count_queued(fd, queued.iter().map(Vec::len).sum())?;
                mk(
                    SocketState::Pair {
                        pair: ino.min(p),
                        queued,
                    },
                    None,
                )
            }
        }
    }

    fn inet_socket(
        &mut self,
        r: &Raw,
        ino: u64,
        domain: i32,
        ty: i32,
        proto: i32,
    ) -> Result<FdObject, FdError> {
        let fd = r.fd;
        let family = if domain == libc::AF_INET {
            SocketFamily::Inet
        } else {
            SocketFamily::Inet6
        };
        let (local, peer) = {
            let d = self.dup(fd)?;
            let local = sock::name(d, false).map_err(|e| FdError::inspect(fd, "getsockname", e))?;
            (
                sock::inet_addr(&local),
                sock::name(d, true).ok().and_then(|p| sock::inet_addr(&p)),
            )
        };
        let local =
            local.ok_or_else(|| FdError::inspect(fd, "getsockname", "not an inet address"))?;
        let bound = (local.port() != 0).then_some(SockAddr::Inet { addr: local });
        let v = if family == SocketFamily::Inet {
            ""
        } else {
            "6"
        };
        match (ty, proto) {
            (libc::SOCK_STREAM, libc::IPPROTO_TCP) => {
                let state = {
                    let d = self.dup(fd)?;
                    sock::tcp_state(d)
                        .map_err(|e| FdError::inspect(fd, "getsockopt(TCP_INFO)", e))?
                };
                if state == TCP_LISTEN {
                    let options = self.options(fd, family, true)?;
                    let (waiting, backlog) = self.backlog(fd, domain, ino)?;
                    if waiting > 0 {
                        tracing::warn!(
                            fd,
                            waiting,
                            "TCP listener: connections waiting in its accept queue are lost"
                        );
                    }
                    return Ok(FdObject::Socket(Socket {
                        family,
                        socket_type: SocketType::Stream,
                        protocol: libc::IPPROTO_TCP,
                        state: SocketState::Listening { backlog },
                        local: Some(SockAddr::Inet { addr: local }),
                        options,
                    }));
                }
                if state == TCP_CLOSE {
                    let options = self.options(fd, family, true)?;
                    return Ok(FdObject::Socket(Socket {
                        family,
                        socket_type: SocketType::Stream,
                        protocol: libc::IPPROTO_TCP,
                        state: if bound.is_some() {
                            SocketState::Bound
                        } else {
                            SocketState::Unbound
                        },
                        local: bound,
                        options,
                    }));
                }
                if let Some(stream) = stdio(fd) {
                    return Ok(FdObject::Stdio { stream });
                }
                let kind = if state == TCP_ESTABLISHED {
                    format!("an established TCP{v} connection")
                } else {
                    format!("a TCP{v} connection in state {}", tcp_state_name(state))
                };
                let peer = peer.map_or_else(|| "?".to_string(), |p| p.to_string());
                Err(FdError::unsupported(
                    fd,
                    format!("{kind} ({local} -> {peer})"),
                ))
            }
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => {
                if let Some(p) = peer {
                    if let Some(stream) = stdio(fd) {
                        return Ok(FdObject::Stdio { stream });
                    }
                    return Err(FdError::unsupported(
                        fd,
                        format!("a UDP{v} socket connected to {p} ({local} -> {p})"),
                    ));
                }
                let options = self.options(fd, family, false)?;
                Ok(FdObject::Socket(Socket {
                    family,
                    socket_type: SocketType::Dgram,
                    protocol: libc::IPPROTO_UDP,
                    state: if bound.is_some() {
                        SocketState::Bound
                    } else {
                        SocketState::Unbound
                    },
                    local: bound,
                    options,
                }))
            }
            (libc::SOCK_RAW, p) => Err(FdError::unsupported(
                fd,
                format!(
                    "a raw IPv{} socket (protocol {p})",
                    if v.is_empty() { 4 } else { 6 }
                ),
            )),
            (libc::SOCK_DGRAM, libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6) => {
                Err(FdError::unsupported(fd, "an ICMP (ping) socket"))
            }
            (t, p) => Err(FdError::unsupported(
                fd,
                format!("an inet{v} socket of type {t}, protocol {p}"),
            )),
        }
    }

    /// (waiting, backlog) of a TCP listener from inet_diag.
    fn backlog(&mut self, fd: i32, domain: i32, ino: u64) -> Result<(u32, u32), FdError> {
        let key = (domain, libc::IPPROTO_TCP);
        if !self.listeners.contains_key(&key) {
            let l = self
                .diag(fd)?
                .inet_listeners(domain, libc::IPPROTO_TCP)
                .map_err(|e| FdError::inspect(fd, "inet_diag (the listen backlog)", e))?;
            self.listeners.insert(key, l);
        }
        self.listeners[&key]
            .get(&(ino as u32))
            .copied()
            .ok_or_else(|| {
                FdError::inspect(
                    fd,
                    "inet_diag (the listen backlog)",
                    format!("listener socket:[{ino}] not found in the process's network namespace"),
                )
            })
    }

    fn epoll(&mut self, r: &Raw) -> Result<FdObject, FdError> {
        let fd = r.fd;
        let mut targets = Vec::with_capacity(r.info.epoll.len());
        let mut seen: HashMap<i32, u32> = HashMap::new();
        for e in &r.info.epoll {
            let toff = seen.entry(e.tfd).or_insert(0);
            let slot: [u32; 3] = [fd as u32, e.tfd as u32, *toff];
            *toff += 1;
            let same = mem::kcmp(
                self.pid,
                self.pid,
                mem::KCMP_EPOLL_TFD,
                e.tfd as u64,
                slot.as_ptr() as u64,
            );
            match same {
                Ok(std::cmp::Ordering::Equal) => {}
                Ok(_) => {
                    return Err(FdError::unsupported(
                        fd,
                        format!(
                            "an epoll instance whose registration of fd {} names a file that is no \
                             longer at fd {} (closed or replaced since)",
                            e.tfd, e.tfd
                        ),
                    ));
                }
                Err(err) if err.errno() == Some(nix::errno::Errno::EBADF) => {
                    return Err(FdError::unsupported(
                        fd,
                        format!(
                            "an epoll instance watching a file that is not among the process's fds \
                             (registered as fd {}, now closed)",
                            e.tfd
                        ),
                    ));
                }
                Err(err) => {
                    return Err(FdError::inspect(
                        fd,
                        format!("kcmp(KCMP_EPOLL_TFD) of target fd {}", e.tfd),
                        err,
                    ));
                }
            }
            targets.push(EpollTarget {
                tfd: e.tfd,
                events: e.events,
                data: e.data,
            });
        }
        Ok(FdObject::Epoll { targets })
    }
}

/// An `O_PATH` fd of `path` resolved inside `root` as the restore will
/// (`openat2` with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`, as
/// [`crate::image::open_in_root`] does, which adds flags `O_PATH` refuses).
fn open_path_in_root(root: &std::fs::File, path: &str) -> nix::Result<OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut tries = 0;
    loop {
        match openat2(root.as_fd(), path, how) {
            // A concurrent rename could have let `..` escape: retry.
            Err(nix::errno::Errno::EAGAIN) if tries < 16 => tries += 1,
            r => return r,
        }
    }
}

/// Whether `p` is absolute with no empty, `.` or `..` component.
pub(crate) fn normalized(p: &str) -> bool {
    if p == "/" {
        return true;
    }
    p.starts_with('/')
        && !p.contains('\0')
        && p[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The bytes buffered in the pipe whose read end `rd` is, copied with
/// `tee(2)` into a scratch pipe (nothing is consumed).
fn pipe_bytes(rd: BorrowedFd<'_>, capacity: usize) -> std::io::Result<Vec<u8>> {
    let mut inq: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(rd.as_raw_fd(), libc::FIONREAD, &mut inq) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if inq <= 0 {
        return Ok(Vec::new());
    }
    let inq = inq as usize;
    let (sr, sw) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
    // As many slots as the source has: tee links buffer by buffer.
    // SAFETY: fcntl with an integer argument on our own pipe.
    if unsafe {
        libc::fcntl(
            sw.as_raw_fd(),
            libc::F_SETPIPE_SZ,
            capacity.max(inq) as libc::c_int,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: tee between two pipe fds; no memory is passed.
    let n = unsafe { libc::tee(rd.as_raw_fd(), sw.as_raw_fd(), inq, libc::SPLICE_F_NONBLOCK) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n as usize != inq {
        return Err(std::io::Error::other(format!(
            "tee copied {n} of {inq} buffered bytes"
        )));
    }
    drop(sw);
    let mut out = Vec::with_capacity(inq);
    std::io::Read::read_to_end(&mut std::fs::File::from(sr), &mut out)?;
    if out.len() != inq {
        return Err(std::io::Error::other(format!(
            "read {} of {inq} copied bytes",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_paths() {
        for ok in ["/", "/a", "/a/b.c", "/a/..b"] {
            assert!(normalized(ok), "{ok}");
        }
        for bad in ["", "a", "/a/", "//a", "/a/./b", "/a/../b", "/.."] {
            assert!(!normalized(bad), "{bad}");
        }
    }

    #[test]
    fn tee_copies_without_consuming() {
        use std::io::{Read, Write};
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(b"0123456789").unwrap();
        assert_eq!(pipe_bytes(r.as_fd(), 65536).unwrap(), b"0123456789");
        assert_eq!(pipe_bytes(r.as_fd(), 65536).unwrap(), b"0123456789");
        let mut buf = [0u8; 10];
        std::fs::File::from(r).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"0123456789");
    }
}
