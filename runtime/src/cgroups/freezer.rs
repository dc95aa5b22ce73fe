//! Pause/resume (v1 freezer, cgroup2 `cgroup.freeze`) and killing every
//! process of a cgroup.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::error::{CgroupError, Result};
use super::fsio::{self, RealFs};
use super::{Cgroup, Layout, read_procs_tree};

/// How long a freeze or thaw may take to settle.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

impl Cgroup {
    /// Freezes every process (pause): the v1 freezer on v1 and hybrid hosts,
    /// `cgroup.freeze` on v2. Returns once the state has settled.
    pub fn freeze(&self) -> Result<()> {
        match self.s.layout {
            Layout::V2 => self.freeze_unified(true),
            _ => v1_set(self.need_freezer("pause")?, true),
        }
    }

    /// Thaws every process (resume).
    pub fn thaw(&self) -> Result<()> {
        match self.s.layout {
            Layout::V2 => self.freeze_unified(false),
            _ => v1_set(self.need_freezer("resume")?, false),
        }
    }

    /// cgroup2's `cgroup.freeze` where a cgroup2 directory exists (v2, or
    /// hybrid's unified hierarchy), waiting for `cgroup.events` to report
    /// `frozen 1` (or `frozen 0`).
    pub fn freeze_unified(&self, frozen: bool) -> Result<()> {
        let dir = self
            .s
            .unified
            .as_deref()
            .ok_or(CgroupError::ControllerUnavailable {
                controller: "cgroup2 (cgroup.freeze)".into(),
                resource: "freeze_unified",
            })?;
        fsio::write(
            &RealFs,
            dir,
            "cgroup.freeze",
            if frozen { "1" } else { "0" },
        )?;
        let r = wait_unified_frozen(dir, frozen, FREEZE_TIMEOUT);
        if r.is_err() && frozen {
            // A task that cannot freeze (asleep in a filesystem that does
            // not let it) must not leave the rest frozen for good: the
            // freeze failed, so undo it, as v1's does.
            let _ = fsio::write(&RealFs, dir, "cgroup.freeze", "0");
        }
        r
    }

    /// Whether the cgroup is frozen (v1 `freezer.state` is `FROZEN`; v2
    /// `cgroup.freeze` is 1).
    pub fn is_frozen(&self) -> Result<bool> {
        match self.s.layout {
            Layout::V2 => {
                let dir = self
                    .s
                    .unified
                    .as_deref()
                    .ok_or(CgroupError::ControllerUnavailable {
                        controller: "cgroup2".into(),
                        resource: "is_frozen",
                    })?;
                Ok(fsio::read(&RealFs, dir, "cgroup.freeze")?.trim() == "1")
            }
            _ => Ok(
                fsio::read(&RealFs, self.need_freezer("is_frozen")?, "freezer.state")?.trim()
                    == "FROZEN",
            ),
        }
    }

    fn need_freezer(&self, resource: &'static str) -> Result<&Path> {
        self.v1_dir("freezer")
            .ok_or(CgroupError::ControllerUnavailable {
                controller: "freezer".into(),
                resource,
            })
    }

    /// Sends `signal` to every process of the cgroup. SIGKILL uses
    /// `cgroup.kill` where a cgroup2 directory exists; otherwise the cgroup
    /// is frozen, each process signalled, and thawed, so no process can fork
    /// past the kill. Processes leave the cgroup asynchronously afterwards.
    /// With a v1 freezer, other signals are sent with the cgroup frozen
    /// too (as runc does there): no process forks past them, and none can
    /// exit, so no pid read from `cgroup.procs` is reused by someone else's
    /// process before its signal. A cgroup the user paused stays paused.
    /// (A pause racing this kill can be undone by its thaw: kill takes no
    /// container lock.)
    pub fn kill_all(&self, signal: i32) -> Result<()> {
        if signal == libc::SIGKILL
            && let Some(u) = self.s.unified.as_deref()
            && u.join("cgroup.kill").exists()
        {
            fsio::write(&RealFs, u, "cgroup.kill", "1")?;
            if self.s.layout == Layout::V2 {
                return Ok(());
            }
            // Hybrid: anything in the v1 cgroup that never joined the
            // unified one (moved in by someone else) still needs it.
            let unified: Vec<i32> = read_procs_tree(u)?;
            let Some(v1) = self.procs_dir() else {
                return Ok(());
            };
            let rest: Vec<i32> = read_procs_tree(v1)?
                .into_iter()
                .filter(|p| !unified.contains(p))
                .collect();
            if rest.is_empty() {
                return Ok(());
            }
        }
        // SIGKILL thaws a paused cgroup too (its processes must die); any
        // other signal leaves a paused one paused, and frozen already.
        if let Some(fz) = self.v1_dir("freezer")
            && (signal == libc::SIGKILL || !self.is_frozen()?)
        {
            v1_set(fz, true)?;
            let sent = self.signal_each(signal);
            let thawed = v1_set(fz, false);
            sent?;
            return thawed;
        }
        self.signal_each(signal)
    }

    fn signal_each(&self, signal: i32) -> Result<()> {
        let Some(dir) = self.procs_dir() else {
            return Ok(());
        };
        for pid in read_procs_tree(dir)? {
            if pid <= 0 {
                continue; // not visible in our pid namespace
            }
            // SAFETY: kill(2) has no memory-safety preconditions.
            if unsafe { libc::kill(pid, signal) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(CgroupError::Signal {
                        pid,
                        signal,
                        dir: dir.to_path_buf(),
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Writes the v1 freezer state and waits until it settles. The v1 freezer
/// can stall in FREEZING (a task in an uninterruptible sleep); re-writing
/// FROZEN retries the freeze. On timeout a freeze is undone.
fn v1_set(dir: &Path, frozen: bool) -> Result<()> {
    let (want, action) = if frozen {
        ("FROZEN", "freeze")
    } else {
        ("THAWED", "thaw")
    };
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    let mut delay = Duration::from_micros(100);
    loop {
        fsio::write(&RealFs, dir, "freezer.state", want)?;
        let state = fsio::read(&RealFs, dir, "freezer.state")?;
        let state = state.trim();
        if state == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            if frozen {
                let _ = fsio::write(&RealFs, dir, "freezer.state", "THAWED");
            }
            return Err(CgroupError::FreezeTimeout {
                action,
                dir: dir.to_path_buf(),
                timeout: FREEZE_TIMEOUT,
                state: state.to_string(),
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(10));
    }
}

/// Waits for `frozen <0|1>` in cgroup.events, sleeping in poll(2) on the
/// file's change notification (POLLPRI) between reads.
fn wait_unified_frozen(dir: &Path, frozen: bool, timeout: Duration) -> Result<()> {
    let path = dir.join("cgroup.events");
    let file = std::fs::File::open(&path).map_err(|source| CgroupError::Open {
        path: path.clone(),
        source,
    })?;
    let want = if frozen { "frozen 1" } else { "frozen 0" };
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    loop {
        let n = file
            .read_at(&mut buf, 0)
            .map_err(|source| CgroupError::Read {
                file: path.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.lines().any(|l| l.trim() == want) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(CgroupError::FreezeTimeout {
                action: if frozen { "freeze" } else { "thaw" },
                dir: dir.to_path_buf(),
                timeout,
                state: text
                    .lines()
                    .find(|l| l.starts_with("frozen"))
                    .unwrap_or("")
                    .to_string(),
            });
        }
        let left = (deadline - now).min(Duration::from_millis(100));
        let mut pfd = libc::pollfd {
            fd: file.as_fd().as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(CgroupError::Watch {
                    op: "poll",
                    file: path,
                    source: e,
                });
            }
        }
    }
}
