//! `NETLINK_SOCK_DIAG` queries (unix_diag, inet_diag) in the dumped
//! process's network namespace.
//!
//! A netlink socket answers for the namespace it was created in, so it is
//! opened by a short-lived helper thread that `setns`es into
//! `/proc/PID/ns/net` first (a thread may switch network namespaces on its
//! own; the socket keeps its namespace after the thread is gone).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, send, socket,
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;

const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_RQLEN: u16 = 4;

/// `TCP_LISTEN` in `sk_state`.
pub(crate) const TCP_LISTEN: u8 = 10;
/// `TCP_ESTABLISHED`.
pub(crate) const TCP_ESTABLISHED: u8 = 1;

/// What unix_diag says about one unix socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UnixDiag {
    /// `SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_SEQPACKET`.
    pub kind: u8,
    /// `sk_state` (`TCP_LISTEN`, `TCP_ESTABLISHED`, `TCP_CLOSE`).
    pub state: u8,
    /// Inode of the peer socket (`None`: no peer; `Some(0)`: the peer has
    /// been closed).
    pub peer: Option<u32>,
    /// For a listener: connections waiting and the backlog; otherwise bytes
    /// queued in and out.
    pub rqueue: u32,
    /// See `rqueue`.
    pub wqueue: u32,
    /// The bound name as the kernel holds it (with the leading NUL of an
    /// abstract name).
    pub name: Option<Vec<u8>>,
}

/// A `NETLINK_SOCK_DIAG` socket in some network namespace.
pub(crate) struct Diag {
    fd: OwnedFd,
    seq: u32,
}

fn io(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

fn netlink_socket() -> std::io::Result<OwnedFd> {
    socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(io)
}

fn same_netns(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata("/proc/thread-self/ns/net"),
        std::fs::metadata(format!("/proc/{pid}/ns/net")),
    ) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

impl Diag {
    /// A sock_diag socket in the network namespace of `pid`.
    pub(crate) fn for_process(pid: i32) -> std::io::Result<Diag> {
        let fd = if same_netns(pid) {
            netlink_socket()?
        } else {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
            std::thread::Builder::new()
                .name("sprout-netns".into())
                .spawn(move || -> std::io::Result<OwnedFd> {
                    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io)?;
                    netlink_socket()
                })?
                .join()
                .map_err(|_| std::io::Error::other("the netns helper thread panicked"))??
        };
        Ok(Diag { fd, seq: 0 })
    }

    fn request(&mut self, flags: u16, payload: &[u8]) -> std::io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut msg = Vec::with_capacity(16 + payload.len());
        msg.extend(((16 + payload.len()) as u32).to_ne_bytes());
        msg.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg.extend((NLM_F_REQUEST | flags).to_ne_bytes());
        msg.extend(seq.to_ne_bytes());
        msg.extend(0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        send(self.fd.as_raw_fd(), &msg, MsgFlags::empty()).map_err(io)?;
        let dump = flags & NLM_F_DUMP != 0;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(io)?;
            if n == 0 {
                return Err(std::io::Error::other("netlink: end of file"));
            }
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
                if len < 16 || off + len > n {
                    return Err(std::io::Error::other("netlink: truncated message"));
                }
                let body = &buf[off + 16..off + len];
                off += len.next_multiple_of(4);
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let err = body
                            .get(..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                            .unwrap_or(-libc::EPROTO);
                        if err == 0 {
                            return Ok(out);
                        }
                        return Err(std::io::Error::from_raw_os_error(-err));
                    }
                    SOCK_DIAG_BY_FAMILY => {
                        out.push(body.to_vec());
                        if !dump {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// unix_diag of the socket with inode `ino` (`None` if this namespace
    /// has no such socket).
    pub(crate) fn unix(&mut self, ino: u64) -> std::io::Result<Option<UnixDiag>> {
        let Ok(ino32) = u32::try_from(ino) else {
            return Ok(None);
        };
        let mut req = Vec::with_capacity(24);
        req.push(libc::AF_UNIX as u8);
        req.push(0); // protocol
        req.extend(0u16.to_ne_bytes());
        req.extend(u32::MAX.to_ne_bytes()); // all states
        req.extend(ino32.to_ne_bytes());
        req.extend((UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN).to_ne_bytes());
        req.extend(u32::MAX.to_ne_bytes()); // no cookie check
        req.extend(u32::MAX.to_ne_bytes());
        let msgs = match self.request(0, &req) {
            Ok(m) => m,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(m) = msgs.into_iter().next() else {
            return Ok(None);
        };
        parse_unix(&m, ino32)
    }

    /// Listening sockets of `family` (`AF_INET`, `AF_INET6`) and
    /// `protocol`: inode → (connections waiting, backlog).
    pub(crate) fn inet_listeners(
        &mut self,
        family: i32,
        protocol: i32,
    ) -> std::io::Result<HashMap<u32, (u32, u32)>> {
        let mut req = Vec::with_capacity(56);
        req.push(family as u8);
        req.push(protocol as u8);
        req.push(0); // ext
        req.push(0); // pad
        req.extend((1u32 << TCP_LISTEN).to_ne_bytes());
        req.extend([0u8; 48]); // inet_diag_sockid: any
        let mut out = HashMap::new();
        for m in self.request(NLM_F_DUMP, &req)? {
            // inet_diag_msg: family, state, timer, retrans, id (48), expires,
            // rqueue, wqueue, uid, inode.
            if m.len() < 72 {
                continue;
            }
            let word = |o: usize| u32::from_ne_bytes(m[o..o + 4].try_into().unwrap());
            out.insert(word(68), (word(56), word(60)));
        }
        Ok(out)
    }
}

fn parse_unix(m: &[u8], ino: u32) -> std::io::Result<Option<UnixDiag>> {
    if m.len() < 16 {
        return Err(std::io::Error::other("unix_diag: short message"));
    }
    if u32::from_ne_bytes(m[4..8].try_into().unwrap()) != ino {
        return Ok(None);
    }
    let mut d = UnixDiag {
        kind: m[1],
        state: m[2],
        ..UnixDiag::default()
    };
    let mut off = 16;
    while off + 4 <= m.len() {
        let len = u16::from_ne_bytes(m[off..off + 2].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(m[off + 2..off + 4].try_into().unwrap());
        if len < 4 || off + len > m.len() {
            break;
        }
        let data = &m[off + 4..off + len];
        match ty {
            UNIX_DIAG_PEER if data.len() >= 4 => {
                d.peer = Some(u32::from_ne_bytes(data[..4].try_into().unwrap()));
            }
            UNIX_DIAG_RQLEN if data.len() >= 8 => {
                d.rqueue = u32::from_ne_bytes(data[..4].try_into().unwrap());
                d.wqueue = u32::from_ne_bytes(data[4..8].try_into().unwrap());
            }
            UNIX_DIAG_NAME => d.name = Some(data.to_vec()),
            _ => {}
        }
        off += len.next_multiple_of(4);
    }
    Ok(Some(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn unix_pairs_and_listeners_in_own_netns() {
        let me = std::process::id() as i32;
        let mut d = Diag::for_process(me).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let ino = |fd: &dyn AsRawFd| {
            std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .unwrap()
                .ino()
        };
        let (ia, ib) = (ino(&a), ino(&b));
        let da = d.unix(ia).unwrap().unwrap();
        assert_eq!(da.peer, Some(ib as u32));
        assert_eq!(da.state, TCP_ESTABLISHED);
        assert_eq!(da.kind, libc::SOCK_STREAM as u8);
        assert_eq!(d.unix(ib).unwrap().unwrap().peer, Some(ia as u32));
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join("s")).unwrap();
        let dl = d.unix(ino(&l)).unwrap().unwrap();
        assert_eq!(dl.state, TCP_LISTEN);
        assert_eq!(dl.peer, None);
        assert!(dl.wqueue > 0, "the listen backlog");
        assert!(dl.name.unwrap().ends_with(b"/s\0"));
        // A socket of another namespace (or none) is not found.
        assert_eq!(d.unix(u32::MAX as u64 - 7).unwrap(), None);
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ls = d.inet_listeners(libc::AF_INET, libc::IPPROTO_TCP).unwrap();
        assert!(ls.get(&(ino(&t) as u32)).is_some_and(|x| x.1 > 0), "{ls:?}");
    }
}
