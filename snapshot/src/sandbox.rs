//! The last steps of a sandbox whose rootfs was built beside its process
//! (`sprout_runtime::rootfs::detached`), injected into the stopped
//! process: an instance forked from a template, or a restore's stub
//! started without the init helper (`sprout_runtime::direct`). Both get
//! the rootfs as a mount namespace over a socket, join it, make the mounts
//! that take their own namespaces (proc, mqueue, cgroupfs), then the
//! masked and read-only paths.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use sprout_runtime::rootfs::RootfsConfig;
use sprout_runtime::rootfs::detached::DeferredMount;
use sprout_runtime::spec::Bundle;

use crate::ptrace::{Entry, Gadget, GadgetError, Tid, TraceCtx, cstring};
use crate::restore::RestoreError;

/// What is left of the rootfs for the process itself to do.
#[derive(Debug)]
pub(crate) struct RootfsPlan {
    /// From the rootfs builder, once it is done.
    pub deferred: Vec<DeferredMount>,
    /// The bundle's sysctls (validated with it: names in namespaces the
    /// sandbox owns), written once its /proc is in place.
    pub sysctl: Vec<(String, String)>,
    pub masked: Vec<String>,
    pub readonly: Vec<String>,
    pub readonly_root: bool,
    /// The image's working directory, entered again inside the new root.
    pub cwd: String,
}

impl RootfsPlan {
    /// The plan of `bundle`'s rootfs `cfg`; `deferred` comes from the
    /// builder later.
    pub fn new(bundle: &Bundle, cfg: &RootfsConfig, cwd: &str) -> RootfsPlan {
        let linux = bundle.spec.linux().clone().unwrap_or_default();
        RootfsPlan {
            deferred: Vec::new(),
            sysctl: linux
                .sysctl()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            masked: cfg.masked_paths.clone(),
            readonly: cfg.readonly_paths.clone(),
            readonly_root: cfg.readonly,
            cwd: cwd.to_string(),
        }
    }
}

/// A failed batch, named by its step.
pub(crate) fn batch_error(what: &'static str) -> impl FnOnce(GadgetError) -> RestoreError {
    move |err| match err {
        GadgetError::Failed(b) => RestoreError::Batch { what, error: b },
        other => RestoreError::from(other),
    }
}

/// Sends `fds` over `sock` (to a template, an instance, a restore's
/// stub, which receive them with [`receive_fds`]).
pub(crate) fn send_fds(sock: &UnixStream, fds: &[BorrowedFd<'_>]) -> Result<(), RestoreError> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let iov = [std::io::IoSlice::new(b"f")];
    // No SIGPIPE if the receiver is gone (a process killed before it took
    // its rootfs): the error is enough.
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None).map_err(|e| {
        RestoreError::Io {
            what: "passing fds to a traced process",
            source: e.into(),
        }
    })?;
    Ok(())
}

/// `recvmsg` of `n` fds from socket `sock`, injected into `pid` (a
/// template, a child it forked, a restore's stub): returns the fd numbers
/// it got.
pub(crate) fn receive_fds(
    ctx: &mut TraceCtx,
    g: &mut Gadget,
    pid: Tid,
    sock: i32,
    n: usize,
) -> Result<Vec<i32>, RestoreError> {
    let buf = g.data_zeroed(8)?;
    let iov = g.data(&[buf.to_le_bytes(), 8u64.to_le_bytes()].concat())?;
    // CMSG_SPACE(n * 4): a 16-byte header and the ints, aligned to 8.
    let control_len = 16 + (n * 4).next_multiple_of(8);
    let control = g.data_zeroed(control_len)?;
    // struct msghdr: name, namelen, iov, iovlen, control, controllen, flags.
    let mut hdr = Vec::new();
    hdr.extend(0u64.to_le_bytes());
    hdr.extend(0u64.to_le_bytes());
    hdr.extend(iov.to_le_bytes());
    hdr.extend(1u64.to_le_bytes());
    hdr.extend(control.to_le_bytes());
    hdr.extend((control_len as u64).to_le_bytes());
    hdr.extend(0u64.to_le_bytes());
    let msg = g.data(&hdr)?;
    g.run(
        ctx,
        pid,
        &[Entry::new(
            libc::SYS_recvmsg,
            [sock as u64, msg, libc::MSG_CMSG_CLOEXEC as u64, 0, 0, 0],
        )],
    )?;
    let c = g.read(control, control_len)?;
    let len = u64::from_le_bytes(c[0..8].try_into().unwrap()) as usize;
    let level = i32::from_le_bytes(c[8..12].try_into().unwrap());
    let typ = i32::from_le_bytes(c[12..16].try_into().unwrap());
    if level != libc::SOL_SOCKET || typ != libc::SCM_RIGHTS || len < 16 + n * 4 {
        return Err(RestoreError::Incompatible(format!(
            "process {pid} received no fds (cmsg level {level} type {typ} len {len})"
        )));
    }
    Ok((0..n)
        .map(|i| i32::from_le_bytes(c[16 + i * 4..20 + i * 4].try_into().unwrap()))
        .collect())
}

/// The rest of the sandbox, once the process has its rootfs, `mnt_ns` (an
/// fd number in the process of a mount namespace whose root is the
/// rootfs, built and pivoted into by the rootfs builder): joined, which
/// leaves the mount namespace it was in and with it every path of it; the
/// deferred mounts (proc, mqueue, cgroupfs: they take the process's
/// namespaces); `stdio` (fd numbers) onto 0, 1, 2 if given; `close` and
/// `mnt_ns` closed; then the masked and read-only paths and the working
/// directory.
pub(crate) fn enter_rootfs(
    ctx: &mut TraceCtx,
    pid: Tid,
    g: &mut Gadget,
    plan: &RootfsPlan,
    mnt_ns: i32,
    stdio: &[i32],
    close: &[i32],
) -> Result<(), RestoreError> {
    let mut e = Vec::new();
    // setns puts the root and working directory at the namespace's root.
    e.push(Entry::new(
        libc::SYS_setns,
        [mnt_ns as u64, libc::CLONE_NEWNS as u64, 0, 0, 0, 0],
    ));
    for m in &plan.deferred {
        let s = match &m.source {
            Some(s) => g.data(&cstring(s))?,
            None => 0,
        };
        let d = g.data(&cstring(&m.target.to_string_lossy()))?;
        let t = match &m.fstype {
            Some(t) => g.data(&cstring(t))?,
            None => 0,
        };
        let dp = match &m.data {
            Some(x) => g.data(&cstring(x))?,
            None => 0,
        };
        e.push(Entry::new(
            libc::SYS_mount,
            [s, d, t, m.flags.bits(), dp, 0],
        ));
    }
    for (i, &fd) in stdio.iter().enumerate() {
        e.push(Entry::new(
            libc::SYS_dup3,
            [fd as u64, i as u64, 0, 0, 0, 0],
        ));
    }
    for &fd in close.iter().chain([&mnt_ns]) {
        e.push(Entry::new(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]));
    }
    g.run(ctx, pid, &e)
        .map_err(batch_error("entering the sandbox's rootfs"))?;
    write_sysctls(ctx, pid, g, &plan.sysctl)?;

    // Now that the process's proc and sys are in place: masks (a file or
    // a directory, as the process sees it), read-only paths, a read-only
    // root, and the working directory.
    // A new batch reuses the data area: strings of the first are gone.
    let mut e = Vec::new();
    let slash = g.data(b"/\0")?;
    let null = g.data(b"/dev/null\0")?;
    let tmpfs = g.data(b"tmpfs\0")?;
    // Paths as the process sees them: looked up beneath its root, never
    // through a symlink that /proc/PID/root would resolve on the host.
    let root =
        std::fs::File::open(format!("/proc/{pid}/root")).map_err(|source| RestoreError::Io {
            what: "opening the sandbox's root",
            source,
        })?;
    // A path that is not there is skipped (runc's rule); any other
    // failure to look it up must not leave it unmasked.
    let stat_in_root = |p: &str| -> Result<Option<std::fs::Metadata>, RestoreError> {
        let meta = crate::image::open_in_root(&root, p, OFlag::O_PATH)
            .map_err(RestoreError::from)
            .and_then(|fd| {
                std::fs::File::from(fd)
                    .metadata()
                    .map_err(|source| RestoreError::Io {
                        what: "looking at a masked or read-only path",
                        source,
                    })
            });
        match meta {
            Ok(m) => Ok(Some(m)),
            Err(RestoreError::Image(crate::image::ImageError::Io { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    };
    let mut null_checked = false;
    for p in &plan.masked {
        let Some(meta) = stat_in_root(p)? else {
            continue;
        };
        let d = g.data(&cstring(p))?;
        if !meta.is_dir() && !null_checked {
            check_null_device(&root)?;
            null_checked = true;
        }
        if meta.is_dir() {
            e.push(Entry::new(
                libc::SYS_mount,
                [tmpfs, d, tmpfs, MsFlags::MS_RDONLY.bits(), 0, 0],
            ));
        } else {
            e.push(Entry::new(
                libc::SYS_mount,
                [null, d, 0, MsFlags::MS_BIND.bits(), 0, 0],
            ));
        }
    }
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    let ro = bind | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for p in &plan.readonly {
        if stat_in_root(p)?.is_none() {
            continue;
        }
        let d = g.data(&cstring(p))?;
        e.push(Entry::new(libc::SYS_mount, [d, d, 0, bind.bits(), 0, 0]));
        e.push(Entry::new(libc::SYS_mount, [0, d, 0, ro.bits(), 0, 0]));
    }
    if plan.readonly_root {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        e.push(Entry::new(
            libc::SYS_mount,
            [0, slash, 0, flags.bits(), 0, 0],
        ));
    }
    let cwd = g.data(&cstring(&plan.cwd))?;
    e.push(Entry::new(libc::SYS_chdir, [cwd, 0, 0, 0, 0, 0]));
    g.run(ctx, pid, &e)
        .map_err(batch_error("masking paths of the sandbox"))?;
    Ok(())
}

/// The sandbox's `/dev/null` must be the null device before masks are
/// bound from it: an image's own `/dev/null` (a rootfs without a `/dev`
/// tmpfs) could be a symlink to a file the mask would expose instead
/// (runc's CVE-2025-31133). Checked from outside, beneath the sandbox's
/// root, right before the masking batch; no process of this sandbox runs
/// yet that could swap it in between.
fn check_null_device(root: &std::fs::File) -> Result<(), RestoreError> {
    let is_null = crate::image::open_in_root(root, "/dev/null", OFlag::O_PATH | OFlag::O_NOFOLLOW)
        .ok()
        .and_then(|fd| std::fs::File::from(fd).metadata().ok())
        .is_some_and(|m| sprout_runtime::syscall::is_null_device(&m));
    if is_null {
        Ok(())
    } else {
        Err(RestoreError::Sandbox(
            "masking paths: the sandbox's /dev/null is not the null device (c 1:3)".into(),
        ))
    }
}

/// Writes each sysctl from inside the process, where `/proc/sys` is its
/// own and follows its network, ipc and uts namespaces (opened from
/// outside, it would be the host's): an injected `openat`, then `write`
/// and `close` of the fd it returned. Before the read-only paths, which
/// usually include `/proc/sys`.
fn write_sysctls(
    ctx: &mut TraceCtx,
    pid: Tid,
    g: &mut Gadget,
    sysctl: &[(String, String)],
) -> Result<(), RestoreError> {
    for (key, value) in sysctl {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let p = g.data(&cstring(&path))?;
        let flags = (libc::O_WRONLY | libc::O_CLOEXEC) as u64;
        let fd = g
            .run(
                ctx,
                pid,
                &[Entry::new(
                    libc::SYS_openat,
                    [libc::AT_FDCWD as u64, p, flags, 0, 0, 0],
                )],
            )
            .map_err(|e| RestoreError::Sandbox(format!("sysctl {key}: {e}")))?[0];
        let v = g.data(value.as_bytes())?;
        g.run(
            ctx,
            pid,
            &[
                Entry::new(libc::SYS_write, [fd as u64, v, value.len() as u64, 0, 0, 0]),
                Entry::new(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]),
            ],
        )
        .map_err(|e| RestoreError::Sandbox(format!("sysctl {key}={value:?}: {e}")))?;
    }
    Ok(())
}
