//! Terminals for foreground `run` and `exec`: receive the pty master on a
//! private console socket and relay it to sprout's own stdio.

use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::sys::termios::{self, SetArg, Termios};

/// Whether the bundle's process asks for a terminal.
pub fn bundle_wants_terminal(bundle: &Path) -> bool {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.pointer("/process/terminal").and_then(|t| t.as_bool()))
        .unwrap_or(false)
}

/// A listening console socket in a private temporary directory.
pub struct ConsoleReceiver {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleReceiver {
    pub fn new() -> Result<Self> {
        let base = std::env::temp_dir();
        let mut n = 0u32;
        let dir = loop {
            let d = base.join(format!("sprout-console-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&d) {
                Ok(()) => break d,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(e).context("console socket directory"),
            }
        };
        let path = dir.join("console.sock");
        let listener = UnixListener::bind(&path).context("console socket")?;
        Ok(Self {
            dir,
            path,
            listener,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the runtime's connection and takes the pty master from it.
    pub fn receive(self) -> Result<Master> {
        let (stream, _) = self
            .listener
            .accept()
            .context("accepting on the console socket")?;
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("receiving the pty master")?;
        for c in msg.cmsgs().context("reading control messages")? {
            if let ControlMessageOwned::ScmRights(fds) = c
                && let Some(&fd) = fds.first()
            {
                // SAFETY: the kernel just installed this fd for us.
                return Ok(Master(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        bail!("the console socket carried no file descriptor")
    }
}

impl Drop for ConsoleReceiver {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The master side of a container's pty.
pub struct Master(pub OwnedFd);

/// Copies stdin to the pty and the pty to stdout until the pty closes;
/// stdin is in raw mode meanwhile if it is a terminal.
pub struct Relay {
    saved: Option<Termios>,
    output: Option<JoinHandle<()>>,
}

impl Master {
    pub fn relay(self) -> Result<Relay> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            termios::cfmakeraw(&mut raw);
            termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("raw mode")?;
            copy_winsize(0, self.0.as_raw_fd());
        }
        let mut out_side = std::fs::File::from(self.0.try_clone()?);
        let mut in_side = std::fs::File::from(self.0);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin().lock();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || in_side.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let output = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdout = std::io::stdout();
            // EIO once the last slave fd closes: the container is gone.
            while let Ok(n) = out_side.read(&mut buf) {
                if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                    break;
                }
                let _ = stdout.flush();
            }
        });
        Ok(Relay {
            saved,
            output: Some(output),
        })
    }
}

fn copy_winsize(from: RawFd, to: RawFd) {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a valid winsize pointer.
    unsafe {
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &ws);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(h) = self.output.take() {
            let _ = h.join();
        }
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, t);
        }
    }
}
