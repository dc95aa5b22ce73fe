//! A container's rootfs built, as a mount namespace of its own, by a
//! process that is not the container.
//!
//! An instance forked from a template exists before its rootfs: it is a
//! copy of the template. So its rootfs is built outside, on a short-lived
//! thread that unshares a mount namespace, makes the mounts with the same
//! steps as a created container's ([`prepare`]) and pivots into them
//! ([`enter`]), detaching every other mount. The instance then joins that
//! namespace with one `setns`: it never unmounts anything itself, so the
//! RCU grace period a detach waits for is spent on the builder's thread,
//! not on the instance's start.
//!
//! Filesystems that belong to the namespaces of the process that mounts
//! them cannot be made on that thread: procfs (pid namespace), mqueue
//! (ipc namespace) and cgroupfs (cgroup namespace). Those mounts, and the
//! remounts of them, are **deferred**: recorded with their path inside the
//! container for the instance to make once it is in its namespaces. Their
//! mount points are created in the tree. sysfs follows the network
//! namespace, which the thread joins first when one is given.

use std::cell::RefCell;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

use super::{RootfsConfig, RootfsError, enter, prepare, step};
use crate::syscall::{CreateKind, LinuxSyscall, Resolved, Syscall};

/// A mount the instance makes itself, in its own namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredMount {
    pub source: Option<String>,
    /// Absolute, as seen inside the container.
    pub target: PathBuf,
    pub fstype: Option<String>,
    pub flags: MsFlags,
    pub data: Option<String>,
}

/// The built rootfs and what is left for the instance.
#[derive(Debug)]
pub struct RootfsNamespace {
    /// A mount namespace (an fd of `/proc/PID/ns/mnt`) whose root is the
    /// rootfs, with every mount of the spec below it but the deferred ones
    /// and nothing else.
    pub mnt_ns: OwnedFd,
    /// In the spec's order.
    pub deferred: Vec<DeferredMount>,
}

/// Filesystems that take the mounting process's namespaces.
fn namespaced_fstype(fstype: Option<&str>) -> bool {
    matches!(fstype, Some("proc" | "mqueue" | "cgroup" | "cgroup2"))
}

/// Builds `cfg`'s rootfs (its mounts, devices and /dev links, pivoted
/// into; the masks and read-only paths are the instance's) as a mount
/// namespace, on a new thread of `scope` (whose namespaces are never the
/// caller's), and gives the result to `then` on that thread, so it can be
/// handed on as soon as it exists while the caller does other work.
/// sysfs is mounted inside `netns` when given. Joining the handle returns
/// what `then` returned; report a panic of the thread with
/// [`builder_panicked`].
pub fn spawn_build<'scope, 'env, R, F>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    cfg: &'env RootfsConfig,
    netns: Option<BorrowedFd<'env>>,
    then: F,
) -> std::thread::ScopedJoinHandle<'scope, R>
where
    F: FnOnce(Result<RootfsNamespace, RootfsError>) -> R + Send + 'scope,
    R: Send + 'scope,
{
    scope.spawn(move || then(build_on_this_thread(cfg, netns)))
}

/// The error for a builder thread that panicked.
pub fn builder_panicked() -> RootfsError {
    RootfsError::Step {
        what: "building a detached rootfs",
        source: io::Error::other("the builder thread panicked"),
    }
}

/// Runs on a thread of its own, which unshares its mount namespace and
/// joins `netns`: the caller's stay as they are, and the mount namespace
/// outlives the thread only through the fd returned.
fn build_on_this_thread(
    cfg: &RootfsConfig,
    netns: Option<BorrowedFd<'_>>,
) -> Result<RootfsNamespace, RootfsError> {
    if cfg.no_pivot {
        // chroot would leave the host's mounts in the namespace.
        return Err(step("building a rootfs namespace")(io::Error::new(
            io::ErrorKind::Unsupported,
            "it needs pivot_root (no_pivot is set)",
        )));
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| step("unsharing a mount namespace for the rootfs")(e.into()))?;
    // Before the pivot: the new root has no /proc yet.
    let mnt_ns: OwnedFd = std::fs::File::open("/proc/thread-self/ns/mnt")
        .map_err(step("opening the rootfs' mount namespace"))?
        .into();
    if let Some(ns) = netns {
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| step("joining the instance's network namespace")(e.into()))?;
    }
    let root = std::fs::canonicalize(&cfg.rootfs).map_err(|source| RootfsError::Path {
        what: "resolving rootfs",
        path: cfg.rootfs.clone(),
        source,
    })?;
    let sys = Deferring {
        inner: LinuxSyscall,
        root: root.clone(),
        deferred: RefCell::new(Vec::new()),
    };
    prepare(&sys, cfg)?;
    enter(&sys, cfg)?;
    Ok(RootfsNamespace {
        mnt_ns,
        deferred: sys.deferred.into_inner(),
    })
}

/// The kernel, except for mounts of namespaced filesystems (and remounts
/// of those), which are recorded instead.
struct Deferring {
    inner: LinuxSyscall,
    /// The rootfs, canonical: deferred targets are made relative to it.
    root: PathBuf,
    deferred: RefCell<Vec<DeferredMount>>,
}

impl Deferring {
    /// `target` (usually `/proc/self/fd/N` for a pinned path) as the
    /// container will see it.
    fn inside(&self, target: &Path) -> io::Result<PathBuf> {
        let real = if target.starts_with("/proc/self/fd") {
            std::fs::read_link(target)?
        } else {
            target.to_path_buf()
        };
        let rel = real.strip_prefix(&self.root).map_err(|_| {
            io::Error::other(format!(
                "mount target {} is outside the rootfs {}",
                real.display(),
                self.root.display()
            ))
        })?;
        Ok(Path::new("/").join(rel))
    }
}

impl Syscall for Deferring {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        let fresh_namespaced = namespaced_fstype(fstype) && !flags.contains(MsFlags::MS_BIND);
        let remount = flags.contains(MsFlags::MS_REMOUNT);
        if fresh_namespaced || remount {
            let inside = self.inside(target)?;
            let of_deferred = remount && self.deferred.borrow().iter().any(|d| d.target == inside);
            if fresh_namespaced || of_deferred {
                self.deferred.borrow_mut().push(DeferredMount {
                    source: source.map(|s| s.display().to_string()),
                    target: inside,
                    fstype: fstype.map(str::to_string),
                    flags,
                    data: data.map(str::to_string),
                });
                return Ok(());
            }
        }
        self.inner.mount(source, target, fstype, flags, data)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        self.inner.umount(target, flags)
    }

    fn resolve_in_root(
        &self,
        root: &Path,
        path: &Path,
        create: CreateKind,
    ) -> io::Result<Resolved> {
        self.inner.resolve_in_root(root, path, create)
    }

    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        self.inner.pivot_root(new_root)
    }

    fn chroot(&self, new_root: &Path) -> io::Result<()> {
        self.inner.chroot(new_root)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.inner.chdir(path)
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.inner.symlink(target, link)
    }

    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> io::Result<()> {
        self.inner.mknod(path, kind, perm, dev)
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.inner.chown(path, uid, gid)
    }

    fn device_node(&self, path: &Path) -> io::Result<Option<(SFlag, u64)>> {
        self.inner.device_node(path)
    }

    fn bind_null_device(&self, target: &Path) -> io::Result<()> {
        self.inner.bind_null_device(target)
    }

    fn bind_fd(&self, fd: std::os::fd::RawFd, target: &Path) -> io::Result<()> {
        self.inner.bind_fd(fd, target)
    }

    fn write_proc_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.inner.write_proc_file(path, data)
    }

    fn is_symlink(&self, path: &Path) -> bool {
        self.inner.is_symlink(path)
    }

    fn same_file(&self, a: &Path, b: &Path) -> io::Result<bool> {
        self.inner.same_file(a, b)
    }

    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.inner.is_dir(path)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.inner.sethostname(name)
    }

    fn setdomainname(&self, name: &str) -> io::Result<()> {
        self.inner.setdomainname(name)
    }

    fn setrlimit(&self, resource: i32, soft: u64, hard: u64) -> io::Result<()> {
        self.inner.setrlimit(resource, soft, hard)
    }

    fn mount_flags(&self, path: &Path) -> io::Result<MsFlags> {
        self.inner.mount_flags(path)
    }

    fn set_recursive_readonly(&self, path: &Path) -> io::Result<()> {
        // A deferred mount is not there yet: the attribute would land on
        // the mount below it.
        let inside = self.inside(path)?;
        if self.deferred.borrow().iter().any(|d| d.target == inside) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "rro on proc, mqueue or cgroup mounts of a forked instance",
            ));
        }
        self.inner.set_recursive_readonly(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_filesystems_are_the_ones_tied_to_the_mounter() {
        for t in ["proc", "mqueue", "cgroup", "cgroup2"] {
            assert!(namespaced_fstype(Some(t)), "{t}");
        }
        for t in ["tmpfs", "sysfs", "devpts", "bind", "overlay"] {
            assert!(!namespaced_fstype(Some(t)), "{t}");
        }
        assert!(!namespaced_fstype(None));
    }

    #[test]
    fn deferred_targets_are_made_relative_to_the_rootfs() {
        let d = Deferring {
            inner: LinuxSyscall,
            root: "/b/rootfs".into(),
            deferred: RefCell::new(Vec::new()),
        };
        assert_eq!(
            d.inside(Path::new("/b/rootfs/dev/mqueue")).unwrap(),
            Path::new("/dev/mqueue")
        );
        assert_eq!(d.inside(Path::new("/b/rootfs")).unwrap(), Path::new("/"));
        assert!(d.inside(Path::new("/etc")).is_err());
    }

    #[test]
    fn fresh_proc_is_deferred_with_its_remount_but_binds_are_not() {
        let d = Deferring {
            inner: LinuxSyscall,
            root: "/b/rootfs".into(),
            deferred: RefCell::new(Vec::new()),
        };
        d.mount(
            Some(Path::new("proc")),
            Path::new("/b/rootfs/proc"),
            Some("proc"),
            MsFlags::empty(),
            None,
        )
        .unwrap();
        d.mount(
            None,
            Path::new("/b/rootfs/proc"),
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None,
        )
        .unwrap();
        let got = d.deferred.borrow();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].target, Path::new("/proc"));
        assert_eq!(got[0].fstype.as_deref(), Some("proc"));
        assert!(got[1].flags.contains(MsFlags::MS_REMOUNT));
    }
}
