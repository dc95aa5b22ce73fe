//! The typed message channel between the runtime and a container's init.
//!
//! One `SOCK_STREAM` unix socketpair, length-prefixed JSON frames. The
//! parent's end sends [`ParentMsg`] and receives [`InitMsg`]; the init's end
//! the other way round. JSON keeps the protocol readable in `strace` and
//! costs microseconds for messages of a few kilobytes.

use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use serde::{Serialize, de::DeserializeOwned};

use crate::init::{InitConfig, InitFailure};

/// Upper bound of one frame: a spec with a large seccomp profile is tens of
/// kilobytes; anything near this limit is a bug or an attack.
const MAX_FRAME: u32 = 16 << 20;

/// Messages from the runtime (parent) to the init.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum ParentMsg {
    /// Everything the init needs; sent once the init sits in its cgroup
    /// and, with a user namespace, once its id maps are written.
    Bootstrap(Box<InitConfig>),
    /// The prestart and createRuntime hooks ran.
    RuntimeHooksDone,
}

/// Messages from the init to the runtime.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum InitMsg {
    /// Mounts are done, the root is not pivoted yet: the parent runs the
    /// prestart and createRuntime hooks now (sent only when there are some).
    RunRuntimeHooks,
    /// Set up and waiting for `start` (create), or about to exec (exec).
    Ready,
    /// A step failed; the init exits after sending this.
    Failed(InitFailure),
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("channel i/o: {0}")]
    Io(#[from] io::Error),
    #[error("channel closed by the other side")]
    Closed,
    #[error("channel frame of {0} bytes exceeds the limit")]
    TooLarge(u32),
    #[error("channel message: {0}")]
    Decode(#[from] serde_json::Error),
}

/// One end of the channel: sends `S`, receives `R`.
#[derive(Debug)]
pub struct Channel<S, R> {
    stream: UnixStream,
    _types: PhantomData<fn(S) -> R>,
}

/// The runtime's end.
pub type ParentChannel = Channel<ParentMsg, InitMsg>;
/// The init's end.
pub type InitChannel = Channel<InitMsg, ParentMsg>;

/// Makes a connected pair; both ends are close-on-exec.
pub fn pair() -> io::Result<(ParentChannel, InitChannel)> {
    let (a, b) = UnixStream::pair()?;
    Ok((Channel::new(a), Channel::new(b)))
}

impl<S: Serialize, R: DeserializeOwned> Channel<S, R> {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            _types: PhantomData,
        }
    }

    /// Takes over an inherited descriptor (the init's end after exec).
    ///
    /// # Safety
    /// `fd` must be an open unix stream socket owned by nobody else.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Self {
        // SAFETY: the caller guarantees `fd` is an owned, open unix socket.
        Self::new(unsafe { UnixStream::from_raw_fd(fd) })
    }

    pub fn send(&mut self, msg: &S) -> Result<(), ChannelError> {
        let body = serde_json::to_vec(msg)?;
        let len = u32::try_from(body.len()).map_err(|_| ChannelError::TooLarge(u32::MAX))?;
        if len > MAX_FRAME {
            return Err(ChannelError::TooLarge(len));
        }
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame)?;
        Ok(())
    }

    pub fn recv(&mut self) -> Result<R, ChannelError> {
        let mut len = [0u8; 4];
        match self.stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ChannelError::Closed),
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_le_bytes(len);
        if len > MAX_FRAME {
            return Err(ChannelError::TooLarge(len));
        }
        let mut body = vec![0u8; len as usize];
        self.stream.read_exact(&mut body).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ChannelError::Closed
            } else {
                e.into()
            }
        })?;
        Ok(serde_json::from_slice(&body)?)
    }

    pub fn into_fd(self) -> OwnedFd {
        self.stream.into()
    }
}

impl<S, R> AsFd for Channel<S, R> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl<S, R> AsRawFd for Channel<S, R> {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::InitFailure;

    #[test]
    fn frames_round_trip_and_eof_is_closed() {
        let (mut parent, mut init) = pair().unwrap();
        parent.send(&ParentMsg::RuntimeHooksDone).unwrap();
        assert!(matches!(init.recv().unwrap(), ParentMsg::RuntimeHooksDone));
        init.send(&InitMsg::Failed(InitFailure {
            step: "mount".into(),
            message: "no such file".into(),
        }))
        .unwrap();
        match parent.recv().unwrap() {
            InitMsg::Failed(f) => assert_eq!(f.step, "mount"),
            other => panic!("{other:?}"),
        }
        drop(init);
        assert!(matches!(parent.recv(), Err(ChannelError::Closed)));
    }
}
