//! The rootfs containerd's snapshotter describes (`CreateTaskRequest.rootfs`):
//! mounted by the shim onto `<bundle>/rootfs`, in order, and unmounted on
//! delete, by the `delete` action, and on a failed create.
//!
//! Typical mounts: overlayfs (`type=overlay`, options `lowerdir=…,
//! upperdir=…, workdir=…`) and bind mounts from the `native` snapshotter
//! (`type=bind`, options `rbind,rw`). The shim mounts in its own mount
//! namespace (the host's), so a missed unmount would accumulate: every
//! path out of here unmounts what it mounted.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use sprout_runtime::mount_options::parse_mount_options;

use super::error::{Result, ShimError};

/// One mount of the rootfs, as containerd sends it.
#[derive(Debug, Clone)]
pub struct RootfsMount {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The rootfs mounted on `target`: unmounted when dropped, unless kept.
#[derive(Debug)]
pub struct MountedRootfs {
    target: Option<PathBuf>,
}

impl MountedRootfs {
    /// Leaves the mounts in place (the task owns them now); they go with
    /// [`unmount_rootfs`] at delete.
    pub fn keep(mut self) {
        self.target = None;
    }
}

impl Drop for MountedRootfs {
    fn drop(&mut self) {
        if let Some(t) = self.target.take() {
            unmount_rootfs(&t);
        }
    }
}

/// Mounts `mounts` in order on `target`. Nothing stays mounted on error.
pub fn mount_rootfs(mounts: &[RootfsMount], target: &Path) -> Result<MountedRootfs> {
    let mut guard = MountedRootfs { target: None };
    for m in mounts {
        mount_one(m, target)?;
        guard.target = Some(target.to_path_buf());
    }
    Ok(guard)
}

fn mount_one(m: &RootfsMount, target: &Path) -> Result<()> {
    let opts = parse_mount_options(&m.options).map_err(|reason| {
        ShimError::InvalidArgument(format!(
            "rootfs mount {} ({}): {reason}",
            m.source, m.fstype
        ))
    })?;
    let err = |e: nix::Error| ShimError::Mount {
        fstype: m.fstype.clone(),
        source_path: m.source.clone(),
        target: target.to_path_buf(),
        error: e.into(),
    };
    let bind = m.fstype == "bind" || opts.is_bind();
    let mut flags = opts.flags;
    if bind {
        flags |= MsFlags::MS_BIND;
    }
    let data = (!bind && !opts.data.is_empty()).then_some(opts.data.as_str());
    let fstype = (!bind).then_some(m.fstype.as_str());
    nix::mount::mount(Some(m.source.as_str()), target, fstype, flags, data).map_err(err)?;
    // A bind mount takes its flags (ro, nosuid, ...) only on a remount.
    let remount = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
    if bind
        && !remount.is_empty()
        && let Err(e) = nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | remount,
            None::<&str>,
        )
    {
        let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
        return Err(err(e));
    }
    for p in &opts.propagation {
        if let Err(e) = nix::mount::mount(None::<&str>, target, None::<&str>, *p, None::<&str>) {
            let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
            return Err(err(e));
        }
    }
    Ok(())
}

/// Unmounts everything mounted on or below `target`, deepest first;
/// idempotent (nothing mounted is fine).
pub fn unmount_rootfs(target: &Path) {
    let Ok(mounts) = sprout_runtime::mountinfo::read_self() else {
        return;
    };
    let target = target
        .canonicalize()
        .unwrap_or_else(|_| target.to_path_buf());
    let target = target.as_path();
    let mut below: Vec<PathBuf> = mounts
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(target))
        .collect();
    below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in below {
        if let Err(e) = nix::mount::umount2(&p, MntFlags::MNT_DETACH)
            && e != nix::errno::Errno::EINVAL
        {
            tracing::warn!("unmounting {}: {e}", p.display());
        }
    }
}
