//! The container's root filesystem, set up inside its mount namespace.
//!
//! Order, as the runtime-spec and runc have it: propagation of `/`, the
//! rootfs bind-mounted onto itself, the spec's mounts in order, devices and
//! /dev symlinks; then (after the hooks that want to see the mounts) the
//! pivot; then masked and read-only paths and a read-only root.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount};
use serde::{Deserialize, Serialize};

use crate::mount_options::{MountOptions, parse_mount_options};
use crate::mountinfo;
use crate::syscall::{CreateKind, Syscall};

pub mod detached;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mount {what} on {dest}: {source}")]
    Mount {
        what: String,
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount {dest}: {reason}")]
    BadMount { dest: PathBuf, reason: String },
    #[error("device {path}: {source}")]
    Device {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Step {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path}: {source}")]
    Path {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn step(what: &'static str) -> impl FnOnce(io::Error) -> RootfsError {
    move |source| RootfsError::Step { what, source }
}

/// What the rootfs steps need; a slice of the spec plus facts from outside.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootfsConfig {
    pub rootfs: PathBuf,
    /// Bundle directory: relative bind sources are relative to it.
    pub bundle: PathBuf,
    pub mounts: Vec<Mount>,
    pub propagation: Option<String>,
    pub readonly: bool,
    pub devices: Vec<LinuxDevice>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub no_pivot: bool,
    /// In a new user namespace device nodes cannot be made: bind them.
    pub user_namespace: bool,
    /// The container has its own cgroup namespace (cgroup mounts are then
    /// fresh cgroupfs instances rather than bind mounts).
    pub cgroup_namespace: bool,
    /// The container's cgroup directories, one per hierarchy, for cgroup
    /// bind mounts made by a process that is not in them (a detached tree
    /// built for a forked instance). `None`: the caller's own cgroups.
    #[serde(default)]
    pub cgroup_dirs: Option<Vec<PathBuf>>,
}

impl RootfsConfig {
    /// The rootfs steps of `bundle`'s config.
    pub fn for_bundle(bundle: &crate::spec::Bundle, no_pivot: bool) -> RootfsConfig {
        use oci_spec::runtime::LinuxNamespaceType;
        let spec = &bundle.spec;
        let linux = spec.linux().clone().unwrap_or_default();
        let new_ns = |t: LinuxNamespaceType| {
            linux
                .namespaces()
                .iter()
                .flatten()
                .any(|n| n.typ() == t && n.path().is_none())
        };
        RootfsConfig {
            rootfs: bundle.rootfs.clone(),
            bundle: bundle.dir.clone(),
            mounts: spec.mounts().clone().unwrap_or_default(),
            propagation: linux.rootfs_propagation().clone(),
            readonly: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            devices: linux.devices().clone().unwrap_or_default(),
            masked_paths: linux.masked_paths().clone().unwrap_or_default(),
            readonly_paths: linux.readonly_paths().clone().unwrap_or_default(),
            no_pivot,
            user_namespace: new_ns(LinuxNamespaceType::User),
            cgroup_namespace: new_ns(LinuxNamespaceType::Cgroup),
            cgroup_dirs: None,
        }
    }
}

fn propagation_flags(p: Option<&str>) -> MsFlags {
    match p.unwrap_or("") {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        // runc's default: nothing we mount propagates back to the host.
        _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    }
}

/// Flags a bind remount must keep, or the kernel refuses it (EPERM) in a
/// user namespace where they are locked.
const LOCKABLE: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_RDONLY)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME);

/// Everything before the hooks that run with mounts in place but before the
/// pivot: propagation, the rootfs bind, the spec's mounts, devices.
pub fn prepare(sys: &dyn Syscall, cfg: &RootfsConfig) -> Result<(), RootfsError> {
    let prop = propagation_flags(cfg.propagation.as_deref());
    sys.mount(None, Path::new("/"), None, prop, None)
        .map_err(step("setting propagation of /"))?;
    if prop.contains(MsFlags::MS_SHARED) {
        make_parent_private(sys, &cfg.rootfs)?;
    }
    // pivot_root needs the new root to be a mount point.
    sys.mount(
        Some(&cfg.rootfs),
        &cfg.rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(|source| RootfsError::Mount {
        what: "rootfs bind".into(),
        dest: cfg.rootfs.clone(),
        source,
    })?;
    for m in &cfg.mounts {
        mount_one(sys, cfg, m)?;
    }
    if needs_dev_setup(&cfg.mounts) {
        create_devices(sys, cfg)?;
        dev_symlinks(sys, cfg)?;
    }
    Ok(())
}

/// pivot_root (or chroot with `--no-pivot`) into the rootfs.
pub fn enter(sys: &dyn Syscall, cfg: &RootfsConfig) -> Result<(), RootfsError> {
    if cfg.no_pivot {
        // MS_MOVE the rootfs over / first, so that chroot leaves no way
        // back through a parent mount (runc does the same).
        sys.chdir(&cfg.rootfs).map_err(step("chdir to rootfs"))?;
        sys.mount(
            Some(&cfg.rootfs),
            Path::new("/"),
            None,
            MsFlags::MS_MOVE,
            None,
        )
        .map_err(step("moving rootfs to /"))?;
        sys.chroot(Path::new(".")).map_err(step("chroot"))?;
    } else {
        sys.pivot_root(&cfg.rootfs).map_err(step("pivot_root"))?;
    }
    if let Some(p) = cfg.propagation.as_deref().filter(|p| !p.is_empty()) {
        sys.mount(None, Path::new("/"), None, propagation_flags(Some(p)), None)
            .map_err(step("setting rootfsPropagation"))?;
    }
    Ok(())
}

/// After the pivot: masked paths, read-only paths, read-only root.
pub fn finish(sys: &dyn Syscall, cfg: &RootfsConfig) -> Result<(), RootfsError> {
    for p in &cfg.masked_paths {
        mask_path(sys, Path::new(p))?;
    }
    for p in &cfg.readonly_paths {
        readonly_path(sys, Path::new(p))?;
    }
    if cfg.readonly {
        let keep = sys.mount_flags(Path::new("/")).unwrap_or(MsFlags::empty()) & LOCKABLE;
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | keep,
            None,
        )
        .map_err(step("remounting / read-only"))?;
    }
    Ok(())
}

fn make_parent_private(sys: &dyn Syscall, rootfs: &Path) -> Result<(), RootfsError> {
    let mounts = mountinfo::read_self().map_err(step("reading mountinfo"))?;
    let parent = mounts
        .iter()
        .filter(|m| rootfs.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .map(|m| m.mount_point.clone())
        .unwrap_or_else(|| PathBuf::from("/"));
    sys.mount(None, &parent, None, MsFlags::MS_PRIVATE, None)
        .map_err(step("making the rootfs' parent mount private"))
}

fn mount_one(sys: &dyn Syscall, cfg: &RootfsConfig, m: &Mount) -> Result<(), RootfsError> {
    let dest = m.destination();
    let opts =
        parse_mount_options(m.options().as_deref().unwrap_or_default()).map_err(|reason| {
            RootfsError::BadMount {
                dest: dest.clone(),
                reason,
            }
        })?;
    make_mount(sys, cfg, m, &opts)?;
    // `rro`, whatever the mount: it and every mount below it read-only.
    if opts.recursive_readonly {
        let bind_source = (opts.is_bind() || m.typ().as_deref() == Some("bind"))
            .then(|| bind_source_of(cfg, m))
            .flatten();
        recursive_readonly(sys, cfg, dest, bind_source.as_deref())?;
    }
    Ok(())
}

/// A bind mount's source on the host (relative ones are the bundle's).
fn bind_source_of(cfg: &RootfsConfig, m: &Mount) -> Option<PathBuf> {
    m.source().as_ref().map(|s| {
        if s.is_absolute() {
            s.clone()
        } else {
            cfg.bundle.join(s)
        }
    })
}

/// Makes mount `m` (with its parsed options) at its destination.
fn make_mount(
    sys: &dyn Syscall,
    cfg: &RootfsConfig,
    m: &Mount,
    opts: &MountOptions,
) -> Result<(), RootfsError> {
    let dest = m.destination();
    let typ = m.typ().as_deref().unwrap_or("");
    let err = |what: &str| {
        let what = what.to_string();
        let dest = dest.clone();
        move |source| RootfsError::Mount { what, dest, source }
    };
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroups(sys, cfg, m, &opts.flags);
    }
    if opts.is_bind() || typ == "bind" {
        let Some(source) = bind_source_of(cfg, m) else {
            return Err(RootfsError::BadMount {
                dest: dest.clone(),
                reason: "bind mount without a source".into(),
            });
        };
        let kind = if sys.is_dir(&source) {
            CreateKind::Dir
        } else {
            CreateKind::File
        };
        let target = sys
            .resolve_in_root(&cfg.rootfs, dest, kind)
            .map_err(err("resolving destination"))?;
        let bind = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
        sys.mount(Some(&source), &target.path, None, bind, None)
            .map_err(err(&format!("bind {}", source.display())))?;
        let extra = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() || !opts.propagation.is_empty() {
            let mounted = mount_at(sys, cfg, dest, Some(&source))?;
            if !extra.is_empty() {
                let keep = sys.mount_flags(&mounted.path).unwrap_or(MsFlags::empty())
                    & LOCKABLE
                    & !opts.clear;
                sys.mount(
                    None,
                    &mounted.path,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra | keep,
                    None,
                )
                .map_err(err("remount of bind"))?;
            }
            for p in &opts.propagation {
                sys.mount(None, &mounted.path, None, *p, None)
                    .map_err(err("setting propagation"))?;
            }
        }
        return Ok(());
    }
    if typ == "proc" || typ == "sysfs" {
        real_directory_for(sys, cfg, dest, typ)?;
    }
    let target = sys
        .resolve_in_root(&cfg.rootfs, dest, CreateKind::Dir)
        .map_err(err("resolving destination"))?;
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    if opts.tmpcopyup && typ == "tmpfs" {
        return tmpfs_copyup(sys, cfg, dest, &target.path, opts.flags, data);
    }
    sys.mount(Some(&source), &target.path, Some(typ), opts.flags, data)
        .map_err(err(typ))?;
    if !opts.propagation.is_empty() {
        let mounted = mount_at(sys, cfg, dest, None)?;
        for p in &opts.propagation {
            sys.mount(None, &mounted.path, None, *p, None)
                .map_err(err("setting propagation"))?;
        }
    }
    Ok(())
}

/// proc and sysfs go only on a directory of their own, never through a
/// symlink at the destination: an image's `/proc -> /data` would put them
/// where a volume then covers them, and the runtime's later writes to
/// `/proc/...` (sysctls, LSM labels) would land in the volume (runc's
/// CVE-2019-16884). Missing is fine: it is created as a directory.
fn real_directory_for(
    sys: &dyn Syscall,
    cfg: &RootfsConfig,
    dest: &Path,
    typ: &str,
) -> Result<(), RootfsError> {
    let Some(name) = dest.file_name() else {
        return Ok(());
    };
    let parent = dest.parent().unwrap_or(Path::new("/"));
    // The root itself needs no lookup (and an empty path has none).
    let dir = if parent == Path::new("/") {
        crate::syscall::Resolved::plain(cfg.rootfs.clone())
    } else {
        sys.resolve_in_root(&cfg.rootfs, parent, CreateKind::Dir)
            .map_err(|source| RootfsError::Mount {
                what: "resolving destination".into(),
                dest: dest.to_path_buf(),
                source,
            })?
    };
    let at = dir.path.join(name);
    if sys.exists(&at) && (sys.is_symlink(&at) || !sys.is_dir(&at)) {
        return Err(RootfsError::BadMount {
            dest: dest.to_path_buf(),
            reason: format!(
                "{typ} goes only on a directory, and the rootfs has a symlink or file there"
            ),
        });
    }
    Ok(())
}

/// The mount just made at `dest`, looked up again: the fd that pinned the
/// destination pins the directory beneath it. A bind's must be the one
/// made from `bind_source`: a writer sharing a directory on the way could
/// have swapped it for a symlink to another mount, which would get the
/// flags meant for ours while ours stayed writable (runc's
/// CVE-2021-30465 class).
fn mount_at(
    sys: &dyn Syscall,
    cfg: &RootfsConfig,
    dest: &Path,
    bind_source: Option<&Path>,
) -> Result<crate::syscall::Resolved, RootfsError> {
    let err = |what: &str| {
        let (what, dest) = (what.to_string(), dest.to_path_buf());
        move |source| RootfsError::Mount { what, dest, source }
    };
    let mounted = sys
        .resolve_in_root(&cfg.rootfs, dest, CreateKind::Nothing)
        .map_err(err("looking up the new mount"))?;
    if let Some(source) = bind_source
        && !sys
            .same_file(source, &mounted.path)
            .map_err(err("looking at the bind mount"))?
    {
        return Err(RootfsError::BadMount {
            dest: dest.to_path_buf(),
            reason: "the destination changed while it was being mounted".into(),
        });
    }
    Ok(mounted)
}

/// `rro`: the mount now at `dest` and every mount below it read-only.
fn recursive_readonly(
    sys: &dyn Syscall,
    cfg: &RootfsConfig,
    dest: &Path,
    bind_source: Option<&Path>,
) -> Result<(), RootfsError> {
    let mounted = mount_at(sys, cfg, dest, bind_source)?;
    sys.set_recursive_readonly(&mounted.path)
        .map_err(|source| RootfsError::Mount {
            what: "making it read-only recursively".into(),
            dest: dest.to_path_buf(),
            source,
        })
}

/// `tmpcopyup`: a tmpfs that starts with what the image had at that path.
fn tmpfs_copyup(
    sys: &dyn Syscall,
    cfg: &RootfsConfig,
    dest: &Path,
    target: &Path,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    let err = |what: &'static str| {
        let dest = dest.to_path_buf();
        move |source| RootfsError::Mount {
            what: what.into(),
            dest,
            source,
        }
    };
    let staging = tempfile_dir().map_err(err("tmpcopyup staging dir"))?;
    sys.mount(
        Some(Path::new("tmpfs")),
        &staging,
        Some("tmpfs"),
        flags,
        data,
    )
    .map_err(err("tmpfs"))
    .inspect_err(|_| {
        let _ = std::fs::remove_dir(&staging);
    })?;
    let result = (|| {
        copy_tree(target, &staging).map_err(err("tmpcopyup copy"))?;
        let mounted = sys
            .resolve_in_root(&cfg.rootfs, dest, CreateKind::Nothing)
            .map_err(err("resolving destination"))?;
        sys.mount(Some(&staging), &mounted.path, None, MsFlags::MS_MOVE, None)
            .map_err(err("moving tmpfs into place"))
    })();
    if result.is_err() {
        // Still mounted on the staging directory, which lives in the
        // host's temporary directory: it could not be removed, and would
        // outlive the container.
        let _ = sys.umount(&staging, MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_dir(&staging);
    result
}

/// A fresh staging directory. Its name cannot rely on the pid: the
/// container's helper is pid 1 of its namespace, like every other one.
fn tempfile_dir() -> io::Result<PathBuf> {
    let base = std::env::temp_dir();
    for _ in 0..100u32 {
        let mut nonce = [0u8; 8];
        // SAFETY: getrandom writes at most nonce.len() bytes into nonce.
        let got = unsafe { libc::getrandom(nonce.as_mut_ptr().cast(), nonce.len(), 0) };
        if got != nonce.len() as isize {
            return Err(io::Error::last_os_error());
        }
        let p = base.join(format!(".sprout-copyup-{:016x}", u64::from_ne_bytes(nonce)));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EEXIST))
}

/// Copies the tree below `from` (the destination, pinned in the rootfs)
/// into `to` (the private staging tmpfs). Runs as root before the pivot,
/// where `/` is the host's: nothing of the image is followed. Each entry
/// is opened beneath its parent's fd with `O_NOFOLLOW` and copied by what
/// the opened fd is, so a symlink swapped in after a look (a writer
/// sharing the image) is never read through.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    use nix::fcntl::OFlag;
    let dir = nix::fcntl::open(
        from,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    copy_dir(dir, to, 0)
}

/// How deep a copied tree may go: the image decides, the stack pays.
const MAX_COPY_DEPTH: usize = 256;

fn copy_dir(dir: std::os::fd::OwnedFd, to: &Path, depth: usize) -> io::Result<()> {
    use std::ffi::OsStr;
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use nix::fcntl::{AtFlags, OFlag};
    let mut entries = nix::dir::Dir::from_fd(dir)?;
    if depth > MAX_COPY_DEPTH {
        return Err(io::Error::other(format!(
            "the tree to copy is more than {MAX_COPY_DEPTH} directories deep"
        )));
    }
    let mut names = Vec::new();
    for e in entries.iter() {
        let name = e?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    let dirfd = entries.as_fd();
    for name in names {
        let dst = to.join(OsStr::from_bytes(name.as_bytes()));
        let st = nix::sys::stat::fstatat(dirfd, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFLNK {
            let target = nix::fcntl::readlinkat(dirfd, name.as_c_str())?;
            std::os::unix::fs::symlink(target, &dst)?;
            std::os::unix::fs::lchown(&dst, Some(st.st_uid), Some(st.st_gid))?;
            continue;
        }
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        let fd = if kind == SFlag::S_IFDIR {
            nix::fcntl::openat(
                dirfd,
                name.as_c_str(),
                flags | OFlag::O_DIRECTORY,
                Mode::empty(),
            )?
        } else if kind == SFlag::S_IFREG {
            // Non-blocking: should a FIFO be swapped in, the open does
            // not wait (and it is skipped below).
            nix::fcntl::openat(
                dirfd,
                name.as_c_str(),
                flags | OFlag::O_NONBLOCK,
                Mode::empty(),
            )?
        } else {
            continue;
        };
        let mut src = std::fs::File::from(fd);
        let meta = src.metadata()?;
        if meta.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_dir(src.into(), &dst, depth + 1)?;
        } else if meta.is_file() {
            let mut out = std::fs::File::create_new(&dst)?;
            io::copy(&mut src, &mut out)?;
        } else {
            continue;
        }
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode()))?;
        std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

/// cgroup mounts: one fresh cgroupfs per host hierarchy when the container
/// has its own cgroup namespace, else bind mounts of the container's own
/// cgroup directories; v1 hierarchies sit on a tmpfs, as on the host.
fn mount_cgroups(
    sys: &dyn Syscall,
    cfg: &RootfsConfig,
    m: &Mount,
    flags: &MsFlags,
) -> Result<(), RootfsError> {
    let dest = m.destination();
    let err = |what: String| {
        let dest = dest.clone();
        move |source| RootfsError::Mount { what, dest, source }
    };
    let mounts = mountinfo::read_self().map_err(step("reading mountinfo"))?;
    let own =
        std::fs::read_to_string("/proc/self/cgroup").map_err(step("reading /proc/self/cgroup"))?;
    let cgroup_mounts: Vec<_> = mounts
        .iter()
        .filter(|mi| {
            (mi.fstype == "cgroup" || mi.fstype == "cgroup2")
                && mi.mount_point.starts_with("/sys/fs/cgroup")
        })
        .collect();
    let pure_v2 = cgroup_mounts.len() == 1
        && cgroup_mounts[0].fstype == "cgroup2"
        && cgroup_mounts[0].mount_point == Path::new("/sys/fs/cgroup");
    let base_flags = *flags
        & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME);
    if !pure_v2 {
        let t = sys
            .resolve_in_root(&cfg.rootfs, dest, CreateKind::Dir)
            .map_err(err("resolving destination".into()))?;
        sys.mount(
            Some(Path::new("tmpfs")),
            &t.path,
            Some("tmpfs"),
            base_flags,
            Some("mode=755"),
        )
        .map_err(err("tmpfs for cgroups".into()))?;
    }
    for mi in &cgroup_mounts {
        let rel = mi
            .mount_point
            .strip_prefix("/sys/fs/cgroup")
            .unwrap_or(Path::new(""));
        let sub = dest.join(rel);
        let target = sys
            .resolve_in_root(&cfg.rootfs, &sub, CreateKind::Dir)
            .map_err(err(format!("resolving {}", sub.display())))?;
        if cfg.cgroup_namespace {
            let (fstype, data) = if mi.fstype == "cgroup2" {
                ("cgroup2", String::new())
            } else {
                let controllers: Vec<&str> = mi
                    .super_options
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro" | "xattr" | "noprefix")
                            && !o.starts_with("release_agent")
                    })
                    .collect();
                ("cgroup", controllers.join(","))
            };
            sys.mount(
                Some(Path::new(fstype)),
                &target.path,
                Some(fstype),
                base_flags,
                (!data.is_empty()).then_some(data.as_str()),
            )
            .map_err(err(format!("{fstype} {data}")))?;
        } else {
            let given = cfg
                .cgroup_dirs
                .iter()
                .flatten()
                .find(|d| d.starts_with(&mi.mount_point));
            let source = match given {
                Some(dir) => dir.clone(),
                // Our own cgroup, beneath the mount's root, never the
                // hierarchy's root (whose v1 release_agent the container
                // must not see): no guess when it is not found.
                None => own_cgroup_dir(&own, mi).ok_or_else(|| {
                    err(format!("cgroup {}", mi.mount_point.display()))(io::Error::new(
                        io::ErrorKind::NotFound,
                        "the init's own cgroup of this hierarchy is not beneath the mount",
                    ))
                })?,
            };
            sys.mount(
                Some(&source),
                &target.path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .map_err(err(format!("bind {}", source.display())))?;
        }
        if flags.contains(MsFlags::MS_RDONLY) || !cfg.cgroup_namespace {
            let mounted = sys
                .resolve_in_root(&cfg.rootfs, &sub, CreateKind::Nothing)
                .map_err(err(format!("resolving {}", sub.display())))?;
            let ro = *flags & MsFlags::MS_RDONLY;
            sys.mount(
                None,
                &mounted.path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | base_flags | ro,
                None,
            )
            .map_err(err(format!("remount {}", sub.display())))?;
        }
    }
    if !pure_v2 && flags.contains(MsFlags::MS_RDONLY) {
        let t = sys
            .resolve_in_root(&cfg.rootfs, dest, CreateKind::Nothing)
            .map_err(err("resolving destination".into()))?;
        sys.mount(
            None,
            &t.path,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | base_flags,
            Some("mode=755"),
        )
        .map_err(err("read-only cgroup tmpfs".into()))?;
    }
    Ok(())
}

/// Where our own cgroup of `mi`'s hierarchy is on the host: beneath the
/// mount, whose root need not be the hierarchy's.
fn own_cgroup_dir(proc_cgroup: &str, mi: &mountinfo::MountInfo) -> Option<PathBuf> {
    let own = own_cgroup_path(proc_cgroup, mi)?;
    crate::cgroups::layout::dir_in_mount(&mi.mount_point, &mi.root, &own)
}

/// The calling process's cgroup in the hierarchy mounted at `mi`.
fn own_cgroup_path(proc_cgroup: &str, mi: &mountinfo::MountInfo) -> Option<PathBuf> {
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if mi.fstype == "cgroup2" {
            id == "0" && ctrls.is_empty()
        } else {
            !ctrls.is_empty()
                && ctrls
                    .split(',')
                    .all(|c| mi.super_options.split(',').any(|o| o == c))
        };
        if matches {
            return Some(PathBuf::from(path));
        }
    }
    None
}

/// runc's rule: devices are made unless /dev is bind-mounted from outside.
fn needs_dev_setup(mounts: &[Mount]) -> bool {
    !mounts.iter().any(|m| {
        m.destination() == Path::new("/dev")
            && (m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind"))
    })
}

/// The devices every container gets: (name, major, minor).
pub const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn create_devices(sys: &dyn Syscall, cfg: &RootfsConfig) -> Result<(), RootfsError> {
    for (name, major, minor) in DEFAULT_DEVICES {
        let path = PathBuf::from("/dev").join(name);
        if cfg.devices.iter().any(|d| d.path() == &path) {
            continue;
        }
        make_device(sys, cfg, &path, SFlag::S_IFCHR, major, minor, 0o666, 0, 0)?;
    }
    for d in &cfg.devices {
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(RootfsError::Device {
                    path: d.path().clone(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "type 'a' is not a device node",
                    ),
                });
            }
        };
        make_device(
            sys,
            cfg,
            d.path(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn make_device(
    sys: &dyn Syscall,
    cfg: &RootfsConfig,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(), RootfsError> {
    let e = |source| RootfsError::Device {
        path: path.to_path_buf(),
        source,
    };
    let parent = path.parent().unwrap_or(Path::new("/dev"));
    let dir = sys
        .resolve_in_root(&cfg.rootfs, parent, CreateKind::Dir)
        .map_err(e)?;
    let name = path.file_name().unwrap_or_default();
    let node = dir.path.join(name);
    if cfg.user_namespace {
        // mknod is refused in a user namespace: bind the host's node.
        let target = sys
            .resolve_in_root(&cfg.rootfs, path, CreateKind::File)
            .map_err(e)?;
        return sys
            .mount(Some(path), &target.path, None, MsFlags::MS_BIND, None)
            .map_err(e);
    }
    match sys.mknod(
        &node,
        kind,
        Mode::from_bits_truncate(mode & 0o7777),
        nix::sys::stat::makedev(major, minor),
    ) {
        Ok(()) => {}
        // The image's own node is kept only if it is this very device:
        // anything else there (a symlink to a host path, a regular file)
        // would get the device's owner, or stand in for it.
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            // A FIFO has no device number.
            let rdev = if kind == SFlag::S_IFIFO {
                0
            } else {
                nix::sys::stat::makedev(major, minor)
            };
            if sys.device_node(&node).map_err(e)? != Some((kind, rdev)) {
                return Err(e(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "exists in the rootfs and is not the device {} {major}:{minor}",
                        node_letter(kind)
                    ),
                )));
            }
        }
        Err(err) => return Err(e(err)),
    }
    if uid != 0 || gid != 0 {
        sys.chown(&node, uid, gid).map_err(e)?;
    }
    Ok(())
}

fn dev_symlinks(sys: &dyn Syscall, cfg: &RootfsConfig) -> Result<(), RootfsError> {
    let dev = sys
        .resolve_in_root(&cfg.rootfs, Path::new("/dev"), CreateKind::Dir)
        .map_err(|source| RootfsError::Path {
            what: "resolving",
            path: "/dev".into(),
            source,
        })?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ];
    if sys.exists(Path::new("/proc/kcore")) {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        let link = dev.path.join(name);
        if name == "ptmx" && sys.exists(&link) {
            continue;
        }
        sys.symlink(Path::new(target), &link)
            .map_err(|source| RootfsError::Path {
                what: "symlink",
                path: PathBuf::from("/dev").join(name),
                source,
            })?;
    }
    Ok(())
}

/// The spec's letter for a node type (`c`, `b`, `p`).
fn node_letter(kind: SFlag) -> char {
    if kind == SFlag::S_IFBLK {
        'b'
    } else if kind == SFlag::S_IFIFO {
        'p'
    } else {
        'c'
    }
}

fn mask_path(sys: &dyn Syscall, path: &Path) -> Result<(), RootfsError> {
    // Nothing there, or a symlink to nothing: nothing to hide (runc's
    // rule; the mount follows a symlink, so one to nothing would fail).
    let dangling = || sys.is_symlink(path) && sys.same_file(path, path).is_err();
    if !sys.exists(path) || dangling() {
        return Ok(());
    }
    let r = if sys.is_dir(path) {
        sys.mount(
            Some(Path::new("tmpfs")),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        )
    } else {
        sys.bind_null_device(path)
    };
    r.map_err(|source| RootfsError::Path {
        what: "masking",
        path: path.to_path_buf(),
        source,
    })
}

fn readonly_path(sys: &dyn Syscall, path: &Path) -> Result<(), RootfsError> {
    if !sys.exists(path) {
        return Ok(());
    }
    let e = |source| RootfsError::Path {
        what: "making read-only",
        path: path.to_path_buf(),
        source,
    };
    sys.mount(
        Some(path),
        path,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(e)?;
    let keep = sys.mount_flags(path).unwrap_or(MsFlags::empty()) & LOCKABLE;
    sys.mount(
        None,
        path,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC | keep,
        None,
    )
    .map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, RecordingSyscall};

    fn cfg(mounts: serde_json::Value) -> RootfsConfig {
        RootfsConfig {
            rootfs: "/b/rootfs".into(),
            bundle: "/b".into(),
            mounts: serde_json::from_value(mounts).unwrap(),
            propagation: None,
            readonly: false,
            devices: vec![],
            masked_paths: vec![],
            readonly_paths: vec![],
            no_pivot: false,
            user_namespace: false,
            cgroup_namespace: false,
            cgroup_dirs: None,
        }
    }

    #[test]
    fn the_own_cgroup_is_found_beneath_the_mounts_root_or_not_at_all() {
        let mi = mountinfo::parse_line(
            "32 31 0:29 /outer /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory",
        )
        .unwrap();
        let own = "4:memory:/outer/pod/c\n1:cpu:/elsewhere\n";
        assert_eq!(
            own_cgroup_dir(own, &mi),
            Some(PathBuf::from("/sys/fs/cgroup/memory/pod/c"))
        );
        // Outside the mount, or no line for the hierarchy: nothing, never
        // the mount itself.
        assert_eq!(own_cgroup_dir("4:memory:/other\n", &mi), None);
        assert_eq!(own_cgroup_dir("1:cpu:/outer/pod/c\n", &mi), None);
    }

    /// (source, target, fstype, flags, data) of one recorded mount.
    type MountCall = (
        Option<PathBuf>,
        PathBuf,
        Option<String>,
        MsFlags,
        Option<String>,
    );

    fn mounts(calls: &[Call]) -> Vec<MountCall> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    source,
                    target,
                    fstype,
                    flags,
                    data,
                } => Some((
                    source.clone(),
                    target.clone(),
                    fstype.clone(),
                    *flags,
                    data.clone(),
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn mounts_follow_the_spec_in_order_after_the_rootfs_bind() {
        let sys = RecordingSyscall::default();
        let c = cfg(serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind", "ro"]}
        ]));
        prepare(&sys, &c).unwrap();
        let m = mounts(&sys.calls());
        assert_eq!(m[0].1, PathBuf::from("/"));
        assert_eq!(m[0].3, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(m[1].1, PathBuf::from("/b/rootfs"));
        assert_eq!(m[2].1, PathBuf::from("/b/rootfs/proc"));
        assert_eq!(m[2].2.as_deref(), Some("proc"));
        assert_eq!(
            m[2].3,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV
        );
        assert_eq!(m[3].4.as_deref(), Some("mode=755,size=65536k"));
        // Relative bind source resolved against the bundle; ro comes as a
        // separate bind remount.
        assert_eq!(m[4].0, Some(PathBuf::from("/b/data")));
        assert_eq!(m[4].3, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert!(
            m[5].3
                .contains(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY)
        );
        // Default devices and the /dev symlinks.
        let calls = sys.calls();
        let nodes: Vec<_> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mknod { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect();
        assert!(nodes.contains(&PathBuf::from("/b/rootfs/dev/null")));
        assert_eq!(nodes.len(), DEFAULT_DEVICES.len());
        assert!(calls.contains(&Call::Symlink {
            target: "pts/ptmx".into(),
            link: "/b/rootfs/dev/ptmx".into()
        }));
    }

    #[test]
    fn a_bind_whose_destination_is_swapped_before_its_remount_is_an_error() {
        let sys = RecordingSyscall::default();
        sys.swapped.set(true);
        let c = cfg(serde_json::json!([
            {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind", "ro"]}
        ]));
        let err = prepare(&sys, &c).unwrap_err().to_string();
        assert!(err.contains("the destination changed"), "{err}");
        // The remount never happened.
        let m = mounts(&sys.calls());
        assert!(
            !m.iter().any(|c| c.3.contains(MsFlags::MS_REMOUNT)),
            "{m:?}"
        );

        // `rro` alone: no recursive read-only of the wrong mount either.
        let sys = RecordingSyscall::default();
        sys.swapped.set(true);
        let c = cfg(serde_json::json!([
            {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind", "rro"]}
        ]));
        let err = prepare(&sys, &c).unwrap_err().to_string();
        assert!(err.contains("the destination changed"), "{err}");
        assert!(
            !sys.calls()
                .iter()
                .any(|c| matches!(c, Call::SetRecursiveReadonly(_))),
            "{:?}",
            sys.calls()
        );
    }

    #[test]
    fn bind_mounted_dev_gets_no_device_nodes() {
        let sys = RecordingSyscall::default();
        let c = cfg(serde_json::json!([
            {"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rbind"]}
        ]));
        prepare(&sys, &c).unwrap();
        assert!(!sys.calls().iter().any(|c| matches!(c, Call::Mknod { .. })));
    }

    #[test]
    fn user_namespace_binds_devices() {
        let sys = RecordingSyscall::default();
        let mut c = cfg(serde_json::json!([]));
        c.user_namespace = true;
        prepare(&sys, &c).unwrap();
        let m = mounts(&sys.calls());
        assert!(
            m.iter()
                .any(|x| x.0 == Some(PathBuf::from("/dev/null")) && x.3 == MsFlags::MS_BIND)
        );
    }

    #[test]
    fn masked_and_readonly_paths() {
        let sys = RecordingSyscall::default()
            .with_path("/proc/kcore", false)
            .with_path("/proc/acpi", true)
            .with_path("/proc/sys", true);
        let mut c = cfg(serde_json::json!([]));
        c.masked_paths = vec![
            "/proc/kcore".into(),
            "/proc/acpi".into(),
            "/proc/missing".into(),
        ];
        c.readonly_paths = vec!["/proc/sys".into()];
        c.readonly = true;
        finish(&sys, &c).unwrap();
        let m = mounts(&sys.calls());
        assert_eq!(m[0].0, Some(PathBuf::from("/dev/null")));
        assert_eq!(m[1].2.as_deref(), Some("tmpfs"));
        assert_eq!(m[2].3, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert!(m[3].3.contains(MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT));
        assert_eq!(m[4].1, PathBuf::from("/"));
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn pivot_or_chroot() {
        let sys = RecordingSyscall::default();
        let mut c = cfg(serde_json::json!([]));
        enter(&sys, &c).unwrap();
        assert_eq!(sys.calls(), vec![Call::PivotRoot("/b/rootfs".into())]);
        let sys = RecordingSyscall::default();
        c.no_pivot = true;
        enter(&sys, &c).unwrap();
        assert!(sys.calls().contains(&Call::Chroot(".".into())));
    }
}
