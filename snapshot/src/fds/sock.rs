//! Looking at a socket through a duplicate of it (`pidfd_getfd`) without
//! changing it: options, names, and queued bytes by `MSG_PEEK`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::image::SockAddr;

fn last() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// An `int` socket option.
pub(crate) fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, opt: i32) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes to `v`, an int.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(last());
    }
    Ok(v)
}

/// Sets an `int` socket option.
pub(crate) fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: i32,
    opt: i32,
    v: i32,
) -> std::io::Result<()> {
    // SAFETY: the kernel reads one int from `v`.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(last());
    }
    Ok(())
}

/// The first byte of `TCP_INFO`: `tcpi_state`.
pub(crate) fn tcp_state(fd: BorrowedFd<'_>) -> std::io::Result<u8> {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(last());
    }
    Ok(buf[0])
}

/// Raw `sockaddr` bytes from `getsockname` (`peer` false) or
/// `getpeername`.
pub(crate) fn name(fd: BorrowedFd<'_>, peer: bool) -> std::io::Result<Vec<u8>> {
    let mut st = [0u8; std::mem::size_of::<libc::sockaddr_storage>()];
    let mut len = st.len() as libc::socklen_t;
    let p = st.as_mut_ptr().cast::<libc::sockaddr>();
    // SAFETY: the kernel writes at most `len` bytes at `p`, a buffer of
    // sockaddr_storage size, and updates `len`.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), p, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), p, &mut len)
        }
    };
    if r < 0 {
        return Err(last());
    }
    Ok(st[..(len as usize).min(st.len())].to_vec())
}

/// An inet `sockaddr` as a [`SocketAddr`].
pub(crate) fn inet_addr(raw: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(raw.get(..2)?.try_into().ok()?) as i32;
    let port = u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let a: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(raw.get(4..8)?.try_into().ok()?);
            let a: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(raw.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// A unix `sockaddr` (`sa_family` then `sun_path`): `Ok(None)` for an
/// unnamed socket; `Err` for a name the image cannot hold.
pub(crate) fn unix_addr(raw: &[u8]) -> Result<Option<SockAddr>, String> {
    let path = raw.get(2..).unwrap_or(&[]);
    if path.is_empty() {
        return Ok(None);
    }
    if path[0] == 0 {
        return Ok(Some(SockAddr::UnixAbstract {
            name: path[1..].to_vec(),
        }));
    }
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    let p = std::str::from_utf8(&path[..end])
        .map_err(|_| format!("bound to a path that is not UTF-8 ({:?})", &path[..end]))?;
    if !p.starts_with('/') {
        return Err(format!(
            "bound to the relative path {p:?} (only absolute socket paths can be restored)"
        ));
    }
    Ok(Some(SockAddr::UnixPath {
        path: p.to_string(),
    }))
}

/// Encodes an address for `bind`.
pub(crate) fn encode_addr(a: &SockAddr) -> Vec<u8> {
    match a {
        SockAddr::Inet {
            addr: SocketAddr::V4(v4),
        } => {
            let mut b = Vec::with_capacity(16);
            b.extend((libc::AF_INET as u16).to_ne_bytes());
            b.extend(v4.port().to_be_bytes());
            b.extend(v4.ip().octets());
            b.extend([0u8; 8]);
            b
        }
        SockAddr::Inet {
            addr: SocketAddr::V6(v6),
        } => {
            let mut b = Vec::with_capacity(28);
            b.extend((libc::AF_INET6 as u16).to_ne_bytes());
            b.extend(v6.port().to_be_bytes());
            b.extend(v6.flowinfo().to_be_bytes());
            b.extend(v6.ip().octets());
            b.extend(v6.scope_id().to_ne_bytes());
            b
        }
        SockAddr::UnixPath { path } => {
            let mut b = Vec::with_capacity(3 + path.len());
            b.extend((libc::AF_UNIX as u16).to_ne_bytes());
            b.extend(path.as_bytes());
            b.push(0);
            b
        }
        SockAddr::UnixAbstract { name } => {
            let mut b = Vec::with_capacity(3 + name.len());
            b.extend((libc::AF_UNIX as u16).to_ne_bytes());
            b.push(0);
            b.extend(name);
            b
        }
    }
}

/// `SO_PEEK_OFF` set back to its value when dropped.
struct PeekOff<'a> {
    fd: BorrowedFd<'a>,
    old: i32,
}

impl Drop for PeekOff<'_> {
    fn drop(&mut self) {
        let _ = setsockopt_int(self.fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, self.old);
    }
}

/// Bytes queued for reading at a unix socket, without consuming them:
/// one string for a stream, one per message otherwise. The socket is the
/// process's own (shared through `pidfd_getfd`), so its receive queue is
/// only peeked: `SO_PEEK_OFF` is turned on for the duration (to walk past
/// the first message) and set back to -1 after. Refuses a socket whose
/// `SO_PEEK_OFF` is already in use, messages carrying file descriptors, and
/// more than `max_bytes` or `max_msgs`. A zero-length datagram is shown to
/// one peek only (the kernel marks it peeked): one that the program or an
/// earlier dump already peeked at is missed.
pub(crate) fn peek_queue(
    fd: BorrowedFd<'_>,
    stream: bool,
    max_bytes: usize,
    max_msgs: usize,
) -> Result<Vec<Vec<u8>>, String> {
    let old = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)
        .map_err(|e| format!("getsockopt(SO_PEEK_OFF): {e}"))?;
    if old >= 0 {
        return Err(format!(
            "SO_PEEK_OFF is set ({old}): its queued bytes cannot be read without moving it"
        ));
    }
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)
        .map_err(|e| format!("setsockopt(SO_PEEK_OFF, 0): {e}"))?;
    let _guard = PeekOff { fd, old };
    let mut msgs: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    loop {
        // The length of the next message (a stream: what is left).
        let want = if stream {
            64 * 1024
        } else {
            match recv_peek(fd, 0)? {
                None => break,
                Some((_, 0)) => {
                    // An empty datagram: the peek marked it peeked, so
                    // the next peek at this offset moves past it.
                    msgs.push(Vec::new());
                    if msgs.len() > max_msgs {
                        return Err(format!("more than {max_msgs} messages queued"));
                    }
                    continue;
                }
                Some((_, full)) => full,
            }
        };
        if total.saturating_add(want) > max_bytes && !stream {
            return Err(format!("more than {max_bytes} bytes queued"));
        }
        let Some((data, _)) = recv_peek(fd, want)? else {
            break;
        };
        if stream && data.is_empty() {
            break; // end of stream (peer shut down)
        }
        total += data.len();
        if total > max_bytes {
            return Err(format!("more than {max_bytes} bytes queued"));
        }
        if stream {
            match msgs.first_mut() {
                Some(m) => m.extend_from_slice(&data),
                None => msgs.push(data),
            }
        } else {
            msgs.push(data);
            if msgs.len() > max_msgs {
                return Err(format!("more than {max_msgs} messages queued"));
            }
        }
    }
    Ok(msgs)
}

/// One `recvmsg(MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC)` of up to `len` bytes:
/// the bytes and the message's full length, `None` when nothing is queued.
fn recv_peek(fd: BorrowedFd<'_>, len: usize) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut buf = vec![0u8; len];
    let mut ctl = [0u64; 64]; // 512 bytes, aligned for cmsghdr
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&ctl);
    // SAFETY: msg points at live buffers of the lengths it gives.
    let n = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        let e = last();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(None);
        }
        return Err(format!("recvmsg(MSG_PEEK): {e}"));
    }
    // Descriptors in flight were installed into this process by the peek:
    // close them and refuse.
    let mut in_flight = msg.msg_flags & libc::MSG_CTRUNC != 0;
    // SAFETY: msg describes the control buffer the kernel just filled; the
    // CMSG macros stay inside msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                in_flight = true;
                let data = libc::CMSG_DATA(c).cast::<i32>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    drop(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if in_flight {
        return Err("file descriptors are in flight in its queue (SCM_RIGHTS)".into());
    }
    let full = n as usize;
    buf.truncate(full.min(len));
    Ok(Some((buf, full)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    #[test]
    fn peeks_without_consuming() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"hello ").unwrap();
        a.write_all(b"world").unwrap();
        let q = peek_queue(b.as_fd(), true, 1 << 20, 10).unwrap();
        assert_eq!(q, vec![b"hello world".to_vec()]);
        // Still there, and SO_PEEK_OFF back off.
        assert_eq!(peek_queue(b.as_fd(), true, 1 << 20, 10).unwrap(), q);
        assert_eq!(
            getsockopt_int(b.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap(),
            -1
        );
        let mut got = [0u8; 11];
        std::io::Read::read_exact(&mut &b, &mut got).unwrap();
        assert_eq!(&got, b"hello world");
        assert!(peek_queue(b.as_fd(), true, 1 << 20, 10).unwrap().is_empty());
        assert!(peek_queue(b.as_fd(), true, 4, 10).is_ok());

        let (x, y) = UnixDatagram::pair().unwrap();
        x.send(b"m1").unwrap();
        x.send(b"").unwrap();
        x.send(b"msg-three").unwrap();
        let q = peek_queue(y.as_fd(), false, 1 << 20, 10).unwrap();
        assert_eq!(q, vec![b"m1".to_vec(), vec![], b"msg-three".to_vec()]);
        // The kernel shows an empty datagram to one peek only (it marks it
        // peeked): a second look misses it.
        let q2 = peek_queue(y.as_fd(), false, 1 << 20, 10).unwrap();
        assert_eq!(q2, vec![b"m1".to_vec(), b"msg-three".to_vec()]);
        assert!(peek_queue(y.as_fd(), false, 1 << 20, 1).is_err());
        assert!(peek_queue(y.as_fd(), false, 5, 10).is_err());
        let mut buf = [0u8; 16];
        assert_eq!(y.recv(&mut buf).unwrap(), 2);

        // A peer with SO_PEEK_OFF in use is refused.
        setsockopt_int(y.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).unwrap();
        assert!(peek_queue(y.as_fd(), false, 1 << 20, 10).is_err());
    }

    #[test]
    fn addresses_round_trip() {
        for s in ["127.0.0.1:8080", "[::1]:443", "[fe80::1%2]:80"] {
            let a: SocketAddr = s.parse().unwrap();
            let raw = encode_addr(&SockAddr::Inet { addr: a });
            assert_eq!(inet_addr(&raw), Some(a));
        }
        let raw = encode_addr(&SockAddr::UnixPath {
            path: "/run/x.sock".into(),
        });
        assert_eq!(
            unix_addr(&raw).unwrap(),
            Some(SockAddr::UnixPath {
                path: "/run/x.sock".into()
            })
        );
        let raw = encode_addr(&SockAddr::UnixAbstract {
            name: b"abc\0d".to_vec(),
        });
        assert_eq!(
            unix_addr(&raw).unwrap(),
            Some(SockAddr::UnixAbstract {
                name: b"abc\0d".to_vec()
            })
        );
        assert_eq!(
            unix_addr(&(libc::AF_UNIX as u16).to_ne_bytes()).unwrap(),
            None
        );
        let mut rel = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        rel.extend(b"x.sock\0");
        assert!(unix_addr(&rel).is_err());
    }
}
