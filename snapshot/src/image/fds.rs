//! File descriptors (pitfalls §8). Only the kinds below can be dumped;
//! anything else (established connections, io_uring, inotify, memfd,
//! deleted files, …) makes the dump fail naming the fd.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::encoding::{b64, b64_vec, hex};

/// One open file descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fd {
    /// Descriptor number, 0 ≤ fd < 2^20, unique in the image.
    pub fd: i32,
    /// `FD_CLOEXEC` (restored with `dup3(…, O_CLOEXEC)`).
    pub cloexec: bool,
    /// File status flags and access mode as fdinfo's `flags:` shows them,
    /// without `O_CLOEXEC`: `O_ACCMODE`, `O_APPEND`, `O_NONBLOCK`,
    /// `O_DIRECT`, `O_NOATIME`, `O_SYNC`/`O_DSYNC`, `O_ASYNC`, `O_LARGEFILE`
    /// (restored with `F_SETFL` where settable).
    pub flags: i32,
    /// What the descriptor refers to.
    pub object: FdObject,
}

/// Which of the sandbox's standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum StdStream {
    Stdin,
    Stdout,
    Stderr,
}

/// Character devices a restore may open (as `/dev/NAME` in the sandbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum CharDevice {
    Null,
    Zero,
    Full,
    Random,
    Urandom,
}

/// End of a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum PipeEnd {
    Read,
    Write,
}

/// What a descriptor refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FdObject {
    /// One of the container's standard streams (a pipe or file the runtime
    /// set up): re-bound to the new sandbox's stream.
    Stdio {
        /// Which stream.
        stream: StdStream,
    },
    /// The container's terminal: re-bound to the new sandbox's console.
    Tty,
    /// The same open file description as another fd of the image
    /// (`kcmp(KCMP_FILE)` at dump): restored with `dup3`, so the offset and
    /// flags stay shared (pitfalls §8.1).
    Dup {
        /// The fd it duplicates; that fd is not itself a `dup`.
        of: i32,
    },
    /// A regular file in the rootfs.
    File {
        /// Absolute, normalized path inside the rootfs.
        path: String,
        /// File offset (fdinfo `pos`).
        offset: u64,
    },
    /// A character device such as `/dev/null`.
    Device {
        /// Which device.
        device: CharDevice,
    },
    /// One end of a pipe internal to the process.
    Pipe {
        /// Identity of the pipe (its inode at dump): fds with the same id
        /// are ends of one pipe.
        pipe: u64,
        /// Which end.
        end: PipeEnd,
        /// Capacity (`F_GETPIPE_SZ`), a power of two ≥ 4096.
        capacity: u32,
        /// Bytes buffered in the pipe, copied with `tee` at dump; carried by
        /// at most one fd of the pipe (not above `capacity`).
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    /// An eventfd (pitfalls §8.5).
    Eventfd {
        /// Counter value.
        count: u64,
        /// `EFD_SEMAPHORE`.
        semaphore: bool,
    },
    /// An epoll set (pitfalls §8.4), restored after all its targets.
    Epoll {
        /// Registrations.
        targets: Vec<EpollTarget>,
    },
    /// A timerfd (pitfalls §7.5).
    Timerfd {
        /// `CLOCK_REALTIME` 0, `MONOTONIC` 1, `BOOTTIME` 7,
        /// `REALTIME_ALARM` 8 or `BOOTTIME_ALARM` 9.
        clock: i32,
        /// `timerfd_settime` flags: `TFD_TIMER_ABSTIME` 1,
        /// `TFD_TIMER_CANCEL_ON_SET` 2.
        settime_flags: i32,
        /// Expirations not yet read (`TFD_IOC_SET_TICKS`).
        ticks: u64,
        /// Interval in nanoseconds.
        interval_ns: u64,
        /// Time to the next expiry in nanoseconds (0 = disarmed).
        value_ns: u64,
    },
    /// A signalfd.
    Signalfd {
        /// Signals it accepts.
        #[serde(with = "hex")]
        mask: u64,
    },
    /// A socket that is not connected to anything outside the process.
    Socket(Socket),
}

/// One registration of an epoll set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpollTarget {
    /// The registered fd, another fd of the image (checked with
    /// `kcmp(KCMP_EPOLL_TFD)` at dump); at most once per set.
    pub tfd: i32,
    /// `EPOLL*` event mask.
    #[serde(with = "hex")]
    pub events: u32,
    /// `epoll_data`.
    #[serde(with = "hex")]
    pub data: u64,
}

/// Address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum SocketFamily {
    Inet,
    Inet6,
    Unix,
}

/// Socket type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum SocketType {
    Stream,
    Dgram,
    Seqpacket,
}

/// A socket that can be re-made without a peer outside the process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Socket {
    /// Family.
    pub family: SocketFamily,
    /// Type.
    #[serde(rename = "socket_type")]
    pub socket_type: SocketType,
    /// Protocol (0, `IPPROTO_TCP` 6, `IPPROTO_UDP` 17).
    pub protocol: i32,
    /// State.
    pub state: SocketState,
    /// Bound local address, `None` if unbound or unnamed.
    pub local: Option<SockAddr>,
    /// Options replayed before `bind` (pitfalls §8.2).
    pub options: SocketOptions,
}

/// What a socket is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum SocketState {
    /// Created, not bound.
    Unbound,
    /// Bound, not listening or connected (a UDP socket).
    Bound,
    /// Listening (stream or seqpacket); connections waiting in the accept
    /// queue are lost.
    Listening {
        /// `listen` backlog (from sock_diag), 1..=65535.
        backlog: u32,
    },
    /// One end of a `socketpair` internal to the process (asyncio's
    /// self-pipe, pitfalls §8.3).
    Pair {
        /// Identity of the pair (an inode at dump): the two ends share it.
        pair: u64,
        /// Messages queued to be read at this end (one for a stream).
        #[serde(with = "b64_vec")]
        queued: Vec<Vec<u8>>,
    },
}

/// A local socket address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SockAddr {
    /// IPv4 or IPv6 address and port, e.g. `"127.0.0.1:8080"`,
    /// `"[::]:80"`.
    Inet {
        /// The address.
        addr: SocketAddr,
    },
    /// A path-bound `AF_UNIX` socket: an absolute path in the rootfs, at
    /// most 107 bytes.
    UnixPath {
        /// The path.
        path: String,
    },
    /// An abstract `AF_UNIX` name (without the leading NUL), at most 107
    /// bytes; abstract names are per network namespace.
    UnixAbstract {
        /// The name, base64.
        #[serde(with = "b64")]
        name: Vec<u8>,
    },
}

/// Socket options replayed at restore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketOptions {
    /// `SO_REUSEADDR`.
    pub reuseaddr: bool,
    /// `SO_REUSEPORT`.
    pub reuseport: bool,
    /// `IPV6_V6ONLY` (inet6 only).
    pub v6only: bool,
    /// `TCP_NODELAY` (TCP only).
    pub nodelay: bool,
    /// `TCP_DEFER_ACCEPT` seconds (TCP only).
    pub defer_accept: u32,
    /// `SO_KEEPALIVE`.
    pub keepalive: bool,
    /// `SO_RCVBUF` as read (the kernel doubles what was set); 0 = default.
    pub rcvbuf: u32,
    /// `SO_SNDBUF` as read; 0 = default.
    pub sndbuf: u32,
}
