//! A process's stdio as containerd hands it over: paths of fifos that the
//! client (ctr, CRI) reads and writes, or `file://` URIs.
//!
//! The container gets pipes (or a pty) and the shim copies between them
//! and the fifos, as containerd's own shims do: the container never holds
//! a fifo, so a client that goes away (`ctr run -d`) costs it nothing, its
//! stdio stays a plain pipe a checkpoint can record, and `CloseIO` can
//! end its stdin. An output fifo is opened read-write: that never blocks
//! and keeps the fifo usable while no client reads. The stdin fifo is
//! opened non-blocking and read only when epoll reports it readable, so
//! a client that has not opened its end yet is not mistaken for EOF.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, watch};

use super::error::{Result, ShimError};

/// The stdio containerd asked for: empty paths mean none.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Where an output stream goes.
enum Output {
    None,
    Fifo(PathBuf),
    File(PathBuf),
}

fn output_target(uri: &str) -> Result<Output> {
    if uri.is_empty() {
        return Ok(Output::None);
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(Output::File(PathBuf::from(path)));
    }
    if uri.contains("://") {
        return Err(ShimError::InvalidArgument(format!(
            "stdio {uri:?}: only fifos and file:// are supported (not binary:// logging)"
        )));
    }
    Ok(Output::Fifo(PathBuf::from(uri)))
}

fn dev_null(write: bool) -> Result<OwnedFd> {
    let f = OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map_err(ShimError::io("opening /dev/null"))?;
    Ok(f.into())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::io("creating a stdio pipe")(e.into()))
}

/// The shim's ends of a process's stdio, made before the process and
/// connected to the fifos once it exists ([`PreparedIo::connect`]).
pub struct PreparedIo {
    paths: StdioPaths,
    stdin_pipe: Option<OwnedFd>,
    outputs: Vec<(OwnedFd, PathBuf)>,
    console: Option<ConsoleSocket>,
}

/// What the process gets: its fds 0-2, or a console socket for a pty.
pub struct ContainerStdio {
    pub fds: [Option<OwnedFd>; 3],
    pub console_socket: Option<PathBuf>,
}

impl PreparedIo {
    /// Makes the pipes (or the console socket, for a terminal) for
    /// `paths`; `console_dir` holds the socket.
    pub fn new(paths: &StdioPaths, console_dir: &Path) -> Result<(PreparedIo, ContainerStdio)> {
        let mut prepared = PreparedIo {
            paths: paths.clone(),
            stdin_pipe: None,
            outputs: Vec::new(),
            console: None,
        };
        if paths.terminal {
            let console = ConsoleSocket::bind(console_dir)?;
            let socket = console.path.clone();
            prepared.console = Some(console);
            // The pty becomes 0-2; these only stand in until then.
            return Ok((
                prepared,
                ContainerStdio {
                    fds: [None, None, None],
                    console_socket: Some(socket),
                },
            ));
        }
        let stdin = if paths.stdin.is_empty() {
            dev_null(false)?
        } else {
            let (r, w) = pipe()?;
            prepared.stdin_pipe = Some(w);
            r
        };
        let mut out = |uri: &str| -> Result<OwnedFd> {
            match output_target(uri)? {
                Output::None => dev_null(true),
                Output::File(path) => open_log_file(&path),
                Output::Fifo(path) => {
                    let (r, w) = pipe()?;
                    prepared.outputs.push((r, path));
                    Ok(w)
                }
            }
        };
        let stdout = out(&paths.stdout)?;
        let stderr = out(&paths.stderr)?;
        Ok((
            prepared,
            ContainerStdio {
                fds: [Some(stdin), Some(stdout), Some(stderr)],
                console_socket: None,
            },
        ))
    }

    /// Starts copying between the process's stdio and the fifos. For a
    /// terminal this first receives the pty master the container sent.
    pub async fn connect(self) -> Result<ProcessIo> {
        let (done_tx, done_rx) = watch::channel(false);
        let mut copies = Vec::new();
        let mut stdin_close = None;
        let mut pty = None;
        if let Some(console) = self.console {
            let master = tokio::task::spawn_blocking(move || console.receive()).await??;
            let reader = master
                .try_clone()
                .map_err(ShimError::io("dup of the pty master"))?;
            if !self.paths.stdout.is_empty() {
                let fifo = open_output_fifo(&self.paths.stdout)?;
                copies.push(tokio::spawn(copy_output(reader, fifo)));
            }
            if !self.paths.stdin.is_empty() {
                let writer = master
                    .try_clone()
                    .map_err(ShimError::io("dup of the pty master"))?;
                stdin_close = Some(spawn_stdin_copy(self.paths.stdin.clone(), writer)?);
            }
            pty = Some(master);
        } else {
            for (pipe_r, path) in self.outputs {
                let fifo = open_output_fifo(&path.to_string_lossy())?;
                copies.push(tokio::spawn(copy_output(pipe_r, fifo)));
            }
            if let Some(w) = self.stdin_pipe {
                stdin_close = Some(spawn_stdin_copy(self.paths.stdin.clone(), w)?);
            }
        }
        tokio::spawn(async move {
            for c in copies {
                let _ = c.await;
            }
            let _ = done_tx.send(true);
        });
        Ok(ProcessIo {
            stdin: Mutex::new(stdin_close),
            pty,
            output_done: done_rx,
        })
    }
}

fn open_log_file(path: &Path) -> Result<OwnedFd> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(ShimError::io(format!("creating {}", dir.display())))?;
    }
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(ShimError::io(format!("opening {}", path.display())))?;
    Ok(f.into())
}

fn open_output_fifo(path: &str) -> Result<AsyncFdIo> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(ShimError::io(format!("opening stdio fifo {path}")))?;
    AsyncFdIo::new(f.into()).map_err(ShimError::io(format!("polling stdio fifo {path}")))
}

/// How long output left in a fifo waits for its reader once the process
/// closed its end: the fifo is held open by us alone until the client
/// (ctr, CRI) opens it, and closing it then would drop what is buffered.
const FIFO_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

async fn copy_output(from: OwnedFd, mut to: AsyncFdIo) {
    let Ok(mut from) = AsyncFdIo::new(from) else {
        return;
    };
    if let Err(e) = tokio::io::copy(&mut from, &mut to).await {
        tracing::debug!("stdio copy ended: {e}");
    }
    // A short-lived exec can finish before its client opened the fifo:
    // the output is in the fifo's buffer, which goes with the last open
    // end. Keep ours until the client has read it (or for a while).
    let deadline = tokio::time::Instant::now() + FIFO_DRAIN_TIMEOUT;
    while fifo_pending(&to) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Bytes buffered in a fifo (0 if it cannot tell).
fn fifo_pending(fifo: &AsyncFdIo) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through a valid pointer; the fd is
    // open for the lifetime of `fifo`.
    let r = unsafe { libc::ioctl(fifo.0.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 { 0 } else { n.max(0) as usize }
}

/// The stdin copy: the fifo is opened non-blocking for reading and
/// watched; it turns readable once the client has opened its end and
/// written (a fifo that never had a writer is neither readable nor hung
/// up), and reads EOF once the client closed it. The copy runs until then
/// or `CloseIO`; the returned handle ends it.
fn spawn_stdin_copy(path: String, to: OwnedFd) -> Result<StdinHandle> {
    let fifo = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
        .map_err(ShimError::io(format!("opening stdin fifo {path}")))?;
    let mut from =
        AsyncFdIo::new(fifo.into()).map_err(ShimError::io(format!("polling stdin fifo {path}")))?;
    let mut to = AsyncFdIo::new(to).map_err(ShimError::io("polling the stdin pipe"))?;
    let (close_tx, close_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            r = tokio::io::copy(&mut from, &mut to) => {
                if let Err(e) = r {
                    tracing::debug!("stdin copy ended: {e}");
                }
            }
            _ = close_rx => {}
        }
        // Dropping `to` closes the process's end of stdin: its EOF.
    });
    Ok(StdinHandle {
        close: Some(close_tx),
    })
}

/// Ends a process's stdin copy.
pub struct StdinHandle {
    close: Option<oneshot::Sender<()>>,
}

impl StdinHandle {
    fn close(mut self) {
        if let Some(tx) = self.close.take() {
            let _ = tx.send(());
        }
    }
}

/// The shim's live side of a process's stdio.
pub struct ProcessIo {
    stdin: Mutex<Option<StdinHandle>>,
    pty: Option<OwnedFd>,
    output_done: watch::Receiver<bool>,
}

impl ProcessIo {
    /// `CloseIO{stdin}`: the process reads EOF.
    pub fn close_stdin(&self) {
        if let Some(h) = self.stdin.lock().unwrap().take() {
            h.close();
        }
    }

    /// `ResizePty`.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(pty) = &self.pty else {
            return Err(ShimError::FailedPrecondition(
                "the process has no terminal".into(),
            ));
        };
        let ws = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer; the fd
        // is an open pty master.
        if unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(ShimError::io("resizing the pty")(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Waits (at most `timeout`) until all output is copied: the process
    /// and everything that shared its stdio have closed it.
    pub async fn wait_output(&self, timeout: Duration) -> bool {
        let mut rx = self.output_done.clone();
        tokio::time::timeout(timeout, rx.wait_for(|d| *d))
            .await
            .is_ok()
    }

    /// Stops feeding stdin (the process is gone).
    pub fn shutdown(&self) {
        self.close_stdin();
    }
}

/// A unix socket that receives the pty master from the container's init
/// (runc's `--console-socket` protocol).
struct ConsoleSocket {
    dir: tempfile::TempDir,
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    fn bind(parent: &Path) -> Result<ConsoleSocket> {
        std::fs::create_dir_all(parent)
            .map_err(ShimError::io(format!("creating {}", parent.display())))?;
        let dir = tempfile::Builder::new()
            .prefix("pty")
            .tempdir_in(parent)
            .map_err(ShimError::io("creating the console socket directory"))?;
        let path = dir.path().join("s");
        let listener =
            UnixListener::bind(&path).map_err(ShimError::io("binding the console socket"))?;
        Ok(ConsoleSocket {
            dir,
            path,
            listener,
        })
    }

    /// The master, sent by the time the create returned.
    fn receive(self) -> Result<OwnedFd> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        self.listener
            .set_nonblocking(true)
            .map_err(ShimError::io("console socket"))?;
        let (conn, _) = self.listener.accept().map_err(ShimError::io(
            "the container did not connect to the console socket",
        ))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(ShimError::io("console socket"))?;
        conn.set_nonblocking(false)
            .map_err(ShimError::io("console socket"))?;
        let mut buf = [0u8; 4096];
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| ShimError::io("receiving the pty master")(e.into()))?;
        let mut master = None;
        for c in msg
            .cmsgs()
            .map_err(|e| ShimError::io("receiving the pty master")(e.into()))?
        {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: SCM_RIGHTS gave us this fd; we own it now.
                    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                    master.get_or_insert(owned);
                }
            }
        }
        drop(self.dir);
        master.ok_or_else(|| {
            ShimError::io("receiving the pty master")(io::Error::from(io::ErrorKind::InvalidData))
        })
    }
}

/// A pipe, fifo or pty fd driven by tokio: non-blocking reads and writes
/// when epoll says so. A pty master's EIO (its slave side closed) is EOF.
pub struct AsyncFdIo(AsyncFd<OwnedFd>);

impl AsyncFdIo {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: fcntl on an fd we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd is owned by the AsyncFd: open, and the same
        // fd, for the AsyncFd's whole life.
        let afd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(AsyncFdIo(afd))
    }
}

impl AsyncRead for AsyncFdIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let r = guard.try_io(|fd| {
                // SAFETY: read into a valid, initialised buffer of that length.
                let n = unsafe {
                    libc::read(
                        fd.get_ref().as_raw_fd(),
                        unfilled.as_mut_ptr().cast(),
                        unfilled.len(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for AsyncFdIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            let r = guard.try_io(|fd| {
                // SAFETY: write from a valid buffer of that length.
                let n = unsafe {
                    libc::write(fd.get_ref().as_raw_fd(), data.as_ptr().cast(), data.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(res) => return Poll::Ready(res),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that wrote and exited before its client opened the
    /// stdout fifo: the client still reads what it wrote.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_waits_in_the_fifo_for_a_late_reader() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdout");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (r, w) = pipe().unwrap();
        let mut w = std::fs::File::from(w);
        std::io::Write::write_all(&mut w, b"late\n").unwrap();
        drop(w); // the process is gone
        let to = open_output_fifo(fifo.to_str().unwrap()).unwrap();
        let copy = tokio::spawn(copy_output(r, to));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut buf = [0u8; 64];
            match std::io::Read::read(&mut reader, &mut buf) {
                Ok(0) if !got.is_empty() => break,
                Ok(0) => {}
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            assert!(std::time::Instant::now() < deadline, "read {got:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(got, b"late\n");
        copy.await.unwrap();
    }
}
