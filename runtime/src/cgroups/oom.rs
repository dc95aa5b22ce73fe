//! OOM notification: v1's `cgroup.event_control` eventfd on
//! `memory.oom_control`; v2's `memory.events` `oom_kill` counter, watched
//! with inotify.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::{CgroupError, Result};
use super::fsio::{self, RealFs, parse_flat_keyed};
use super::{Cgroup, Layout};

/// What [`OomWatcher::wait`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OomEvent {
    /// The cgroup hit its memory limit and the OOM killer ran (v2), or the
    /// cgroup went under OOM (v1; `oom_kill_count` is the kernel's counter
    /// of kills in this cgroup at that moment).
    Oom { oom_kill_count: u64 },
    /// The cgroup was removed; no more events will come.
    CgroupRemoved,
}

enum Kind {
    /// eventfd registered on memory.oom_control (kept open: closing it
    /// would unregister).
    V1 {
        eventfd: OwnedFd,
        _oom_control: std::fs::File,
    },
    /// inotify watching memory.events; `seen` is the last oom_kill count.
    V2 { inotify: OwnedFd, seen: u64 },
}

/// Watches a cgroup for OOM kills. Its fd (see [`AsFd`]) becomes readable
/// when something happened, so it can sit in an event loop; [`wait`] blocks.
///
/// [`wait`]: OomWatcher::wait
pub struct OomWatcher {
    dir: PathBuf,
    kind: Kind,
}

impl AsFd for OomWatcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.kind {
            Kind::V1 { eventfd, .. } => eventfd.as_fd(),
            Kind::V2 { inotify, .. } => inotify.as_fd(),
        }
    }
}

fn watch_err<'a>(op: &'static str, file: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Watch {
        op,
        file: file.to_path_buf(),
        source,
    }
}

fn check(r: libc::c_int, op: &'static str, file: &Path) -> Result<libc::c_int> {
    if r < 0 {
        Err(watch_err(op, file)(io::Error::last_os_error()))
    } else {
        Ok(r)
    }
}

impl Cgroup {
    /// Starts watching this cgroup for OOM kills (memory controller: v1 on
    /// v1/hybrid hosts, cgroup2 on v2).
    pub fn oom_watcher(&self) -> Result<OomWatcher> {
        let unavailable = || CgroupError::ControllerUnavailable {
            controller: "memory".into(),
            resource: "oom_watcher",
        };
        if self.s.layout == Layout::V2 {
            let dir = self.s.unified.clone().ok_or_else(unavailable)?;
            let events = dir.join("memory.events");
            // SAFETY: inotify_init1 has no memory-safety preconditions.
            let fd = check(
                unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) },
                "inotify_init1",
                &events,
            )?;
            // SAFETY: `fd` is a new descriptor owned by nobody else.
            let inotify = unsafe { OwnedFd::from_raw_fd(fd) };
            let c = std::ffi::CString::new(events.as_os_str().as_bytes()).map_err(|_| {
                CgroupError::InvalidPath {
                    path: events.display().to_string(),
                    reason: "contains a NUL byte",
                }
            })?;
            check(
                // SAFETY: valid fd and NUL-terminated path.
                unsafe {
                    libc::inotify_add_watch(
                        inotify.as_raw_fd(),
                        c.as_ptr(),
                        libc::IN_MODIFY | libc::IN_DELETE_SELF,
                    )
                },
                "inotify_add_watch",
                &events,
            )?;
            let seen = v2_oom_kills(&dir)?;
            return Ok(OomWatcher {
                dir,
                kind: Kind::V2 { inotify, seen },
            });
        }
        let dir = self.v1_dir("memory").ok_or_else(unavailable)?.to_path_buf();
        let oom_path = dir.join("memory.oom_control");
        let oom_control = std::fs::File::open(&oom_path).map_err(|source| CgroupError::Open {
            path: oom_path.clone(),
            source,
        })?;
        // SAFETY: eventfd has no memory-safety preconditions.
        let fd = check(
            unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) },
            "eventfd",
            &oom_path,
        )?;
        // SAFETY: `fd` is a new descriptor owned by nobody else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        fsio::write(
            &RealFs,
            &dir,
            "cgroup.event_control",
            &format!("{} {}", eventfd.as_raw_fd(), oom_control.as_raw_fd()),
        )?;
        Ok(OomWatcher {
            dir,
            kind: Kind::V1 {
                eventfd,
                _oom_control: oom_control,
            },
        })
    }
}

fn v1_oom_kills(dir: &Path) -> Result<u64> {
    let text = fsio::read(&RealFs, dir, "memory.oom_control")?;
    Ok(parse_flat_keyed(&text)
        .find(|(k, _)| *k == "oom_kill")
        .map_or(0, |(_, v)| v))
}

fn v2_oom_kills(dir: &Path) -> Result<u64> {
    let text = fsio::read(&RealFs, dir, "memory.events")?;
    Ok(parse_flat_keyed(&text)
        .find(|(k, _)| *k == "oom_kill")
        .map_or(0, |(_, v)| v))
}

impl OomWatcher {
    /// The kernel's count of OOM kills in the cgroup so far.
    pub fn oom_kill_count(&self) -> Result<u64> {
        match self.kind {
            Kind::V1 { .. } => v1_oom_kills(&self.dir),
            Kind::V2 { .. } => v2_oom_kills(&self.dir),
        }
    }

    /// Blocks until an OOM event, the cgroup's removal, or `timeout`
    /// (`Ok(None)`). `None` waits forever.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Option<OomEvent>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Kind::V2 { seen, .. } = &mut self.kind {
                if !self.dir.exists() {
                    return Ok(Some(OomEvent::CgroupRemoved));
                }
                let now = match v2_oom_kills(&self.dir) {
                    Ok(n) => n,
                    Err(CgroupError::Read { source, .. })
                        if source.kind() == io::ErrorKind::NotFound =>
                    {
                        return Ok(Some(OomEvent::CgroupRemoved));
                    }
                    Err(e) => return Err(e),
                };
                if now > *seen {
                    *seen = now;
                    return Ok(Some(OomEvent::Oom {
                        oom_kill_count: now,
                    }));
                }
            }
            let wait_ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    left.as_millis().clamp(1, i32::MAX as u128) as i32
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call.
            let r = unsafe { libc::poll(&mut pfd, 1, wait_ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(watch_err("poll", &self.dir)(e));
            }
            if r == 0 {
                continue; // the deadline check above returns
            }
            match &self.kind {
                Kind::V1 { eventfd, .. } => {
                    let mut buf = [0u8; 8];
                    // SAFETY: reading 8 bytes into an 8-byte buffer.
                    let n = unsafe {
                        libc::read(eventfd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                    };
                    if n < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::Interrupted
                        {
                            continue;
                        }
                        return Err(watch_err("read eventfd", &self.dir)(e));
                    }
                    // The kernel also signals every listener when the cgroup goes away.
                    if !self.dir.join("cgroup.event_control").exists() {
                        return Ok(Some(OomEvent::CgroupRemoved));
                    }
                    return Ok(Some(OomEvent::Oom {
                        oom_kill_count: v1_oom_kills(&self.dir).unwrap_or(0),
                    }));
                }
                Kind::V2 { inotify, .. } => {
                    // Drain the inotify queue; the counter is re-read above.
                    let mut buf = [0u8; 4096];
                    loop {
                        // SAFETY: reading into a buffer of the given length.
                        let n = unsafe {
                            libc::read(inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                        };
                        if n <= 0 {
                            break;
                        }
                    }
                }
            }
        }
    }
}
