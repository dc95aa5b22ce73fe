//! The system calls the init's setup steps make, behind a trait.
//!
//! The steps (rootfs, devices, hostname, rlimits...) decide *what* to do from
//! the spec; [`Syscall`] does it. [`LinuxSyscall`] is the real kernel;
//! [`RecordingSyscall`] records calls so that the step logic can be
//! unit-tested without privileges.

use std::cell::RefCell;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

/// What to create when a path inside the rootfs is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateKind {
    Nothing,
    Dir,
    File,
}

/// A path inside the rootfs, resolved without escaping it. Keeps the
/// descriptor that pins the resolved object alive while it is used.
#[derive(Debug)]
pub struct Resolved {
    /// What to hand to mount(2): `/proc/self/fd/N` for the pinned object.
    pub path: PathBuf,
    _pin: Option<OwnedFd>,
}

impl Resolved {
    pub fn plain(path: PathBuf) -> Self {
        Self { path, _pin: None }
    }
}

pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()>;
    /// Resolves `path` (absolute, as seen in the container) inside `root`,
    /// following symlinks as if `root` were `/`, creating what is missing.
    fn resolve_in_root(&self, root: &Path, path: &Path, create: CreateKind)
    -> io::Result<Resolved>;
    /// Makes `new_root` the root of the mount namespace and detaches the old.
    fn pivot_root(&self, new_root: &Path) -> io::Result<()>;
    fn chroot(&self, new_root: &Path) -> io::Result<()>;
    fn chdir(&self, path: &Path) -> io::Result<()>;
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> io::Result<()>;
    /// Changes the owner of `path` itself, never of what a symlink there
    /// names.
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    /// The file type and device number of `path` itself (not following a
    /// final symlink), if it is a device node or a FIFO; `None` for
    /// anything else.
    fn device_node(&self, path: &Path) -> io::Result<Option<(SFlag, u64)>>;
    /// Bind-mounts the container's `/dev/null` onto `target` (a masked
    /// file), after checking that it is the null device: an image's
    /// `/dev/null` may be a symlink to a file the mask would then expose
    /// in its place (runc's CVE-2025-31133).
    fn bind_null_device(&self, target: &Path) -> io::Result<()>;
    /// Bind-mounts the file open at `fd` onto `target` (following a final
    /// symlink there, as mount(2) does): no path names the source.
    fn bind_fd(&self, fd: RawFd, target: &Path) -> io::Result<()>;
    /// Writes a file of procfs (a sysctl), refusing one that is not on
    /// procfs: a mount over it would take the write instead.
    fn write_proc_file(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// Whether `a` and `b` (both followed) are the same file.
    fn same_file(&self, a: &Path, b: &Path) -> io::Result<bool>;
    /// Whether `path` itself is a symlink.
    fn is_symlink(&self, path: &Path) -> bool;
    fn is_dir(&self, path: &Path) -> bool;
    fn sethostname(&self, name: &str) -> io::Result<()>;
    fn setdomainname(&self, name: &str) -> io::Result<()>;
    fn setrlimit(&self, resource: i32, soft: u64, hard: u64) -> io::Result<()>;
    /// Mount flags currently in effect at `path` (statvfs), as `MS_*` bits
    /// that a bind remount must keep.
    fn mount_flags(&self, path: &Path) -> io::Result<MsFlags>;
    /// Makes the mount at `path` and every mount below it read-only: the
    /// `rro` option (`mount_setattr` with `AT_RECURSIVE`). A plain `ro`
    /// bind remount leaves submounts writable.
    fn set_recursive_readonly(&self, path: &Path) -> io::Result<()>;
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes `data` to `path`, a file that must be on procfs (checked on the
/// open file, so nothing can be swapped in between): a write meant for the
/// kernel must not land in a file some mount put in its place.
pub fn write_on_procfs(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let st = nix::sys::statfs::fstatfs(&f)?;
    if st.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not on procfs", path.display()),
        ));
    }
    f.write_all(data)
}

/// Whether `meta` is the null device (c 1:3), which masks are bound from.
pub fn is_null_device(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == nix::sys::stat::makedev(1, 3)
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

fn openat2(dirfd: RawFd, path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    loop {
        // SAFETY: valid C string, a fully initialised open_how of the size
        // passed; the result is a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: fresh fd from the kernel.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let err = io::Error::last_os_error();
        // openat2 returns EAGAIN when a rename raced with the lookup.
        if err.raw_os_error() != Some(libc::EAGAIN) {
            return Err(err);
        }
    }
}

/// Relative form of a container path: `/a/b` -> `a/b`, `..` kept (the
/// kernel clamps it at the root with RESOLVE_IN_ROOT).
fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect()
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(io::Error::from)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> io::Result<()> {
        nix::mount::umount2(target, flags).map_err(io::Error::from)
    }

    fn resolve_in_root(
        &self,
        root: &Path,
        path: &Path,
        create: CreateKind,
    ) -> io::Result<Resolved> {
        let rootfd = fs::File::open(root)?;
        let rel = relative(path);
        let flags = libc::O_PATH;
        let pin = match openat2(rootfd.as_raw_fd(), &rel, flags) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create != CreateKind::Nothing => {
                // Create the missing components one by one, each resolved
                // inside the root, so a symlink can never lead out of it.
                let mut prefix = PathBuf::new();
                let comps: Vec<_> = rel.components().collect();
                for (i, comp) in comps.iter().enumerate() {
                    let last = i + 1 == comps.len();
                    let parent = if prefix.as_os_str().is_empty() {
                        rootfd.try_clone()?.into()
                    } else {
                        openat2(
                            rootfd.as_raw_fd(),
                            &prefix,
                            libc::O_PATH | libc::O_DIRECTORY,
                        )?
                    };
                    prefix.push(comp);
                    if openat2(rootfd.as_raw_fd(), &prefix, libc::O_PATH).is_ok() {
                        continue;
                    }
                    let name = CString::new(comp.as_os_str().as_bytes())
                        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                    let ret = if last && create == CreateKind::File {
                        // SAFETY: parent is a valid dir fd (O_PATH is fine
                        // for *at calls), name a valid C string.
                        let fd = unsafe {
                            libc::openat(
                                parent.as_raw_fd(),
                                name.as_ptr(),
                                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                                0o644,
                            )
                        };
                        if fd >= 0 {
                            // SAFETY: fd was just returned by openat.
                            unsafe { libc::close(fd) };
                            0
                        } else {
                            -1
                        }
                    } else {
                        // SAFETY: as above.
                        unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) }
                    };
                    if ret < 0 {
                        let err = io::Error::last_os_error();
                        if err.raw_os_error() != Some(libc::EEXIST) {
                            return Err(err);
                        }
                    }
                }
                openat2(rootfd.as_raw_fd(), &rel, flags)?
            }
            Err(e) => return Err(e),
        };
        Ok(Resolved {
            path: PathBuf::from(format!("/proc/self/fd/{}", pin.as_raw_fd())),
            _pin: Some(pin),
        })
    }

    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        // pivot_root(".", ".") stacks the old root under the new one; we
        // then detach it from there. No put_old directory is needed.
        let old = fs::File::open("/")?;
        let new = fs::File::open(new_root)?;
        // SAFETY: fchdir/pivot_root/umount2 on valid fds and C strings.
        unsafe {
            check(libc::fchdir(new.as_raw_fd()))?;
            check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as i32)?;
            check(libc::fchdir(old.as_raw_fd()))?;
        }
        // Make the old root a slave so detaching it cannot propagate an
        // unmount to the host.
        nix::mount::mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH)?;
        std::env::set_current_dir("/")
    }

    fn chroot(&self, new_root: &Path) -> io::Result<()> {
        std::env::set_current_dir(new_root)?;
        nix::unistd::chroot(".")?;
        std::env::set_current_dir("/")
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        std::env::set_current_dir(path)
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }

    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> io::Result<()> {
        nix::sys::stat::mknod(path, kind, perm, dev).map_err(io::Error::from)
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    }

    fn device_node(&self, path: &Path) -> io::Result<Option<(SFlag, u64)>> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let meta = fs::symlink_metadata(path)?;
        let t = meta.file_type();
        let kind = if t.is_char_device() {
            SFlag::S_IFCHR
        } else if t.is_block_device() {
            SFlag::S_IFBLK
        } else if t.is_fifo() {
            SFlag::S_IFIFO
        } else {
            return Ok(None);
        };
        Ok(Some((kind, meta.rdev())))
    }

    fn bind_null_device(&self, target: &Path) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let null = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open("/dev/null")
            .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/null: {e}")))?;
        if !is_null_device(&null.metadata()?) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "/dev/null is not the null device (c 1:3)",
            ));
        }
        // A detached bind of the node we checked: no path is looked up
        // twice.
        self.bind_fd(null.as_raw_fd(), target)
    }

    fn bind_fd(&self, fd: RawFd, target: &Path) -> io::Result<()> {
        const OPEN_TREE_CLONE: libc::c_uint = 1;
        const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
        // A final symlink at the target is followed, as mount(2) does (we
        // are inside the container's root by now).
        const MOVE_MOUNT_T_SYMLINKS: libc::c_uint = 0x10;
        // SAFETY: open_tree on a caller's fd with an empty C string path;
        // the result is a new fd or -1.
        let tree = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                fd,
                c"".as_ptr(),
                OPEN_TREE_CLONE
                    | libc::O_CLOEXEC as libc::c_uint
                    | libc::AT_EMPTY_PATH as libc::c_uint,
            )
        };
        if tree < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd; we own it from here.
        let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
        let to = cstr(target)?;
        // SAFETY: move_mount of the detached tree fd onto a NUL-terminated
        // path relative to the cwd.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_SYMLINKS,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn write_proc_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        write_on_procfs(path, data)
    }

    fn exists(&self, path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok()
    }

    fn is_symlink(&self, path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
    }

    fn same_file(&self, a: &Path, b: &Path) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (fs::metadata(a)?, fs::metadata(b)?);
        Ok((a.dev(), a.ino()) == (b.dev(), b.ino()))
    }

    fn is_dir(&self, path: &Path) -> bool {
        fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(io::Error::from)
    }

    fn setdomainname(&self, name: &str) -> io::Result<()> {
        // SAFETY: pointer and length describe a valid byte buffer.
        check(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) })
    }

    fn setrlimit(&self, resource: i32, soft: u64, hard: u64) -> io::Result<()> {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: valid resource id and pointer to an initialised rlimit.
        check(unsafe { libc::setrlimit(resource as _, &lim) })
    }

    fn mount_flags(&self, path: &Path) -> io::Result<MsFlags> {
        let st = nix::sys::statvfs::statvfs(path)?;
        use nix::sys::statvfs::FsFlags;
        let f = st.flags();
        let mut out = MsFlags::empty();
        for (st_flag, ms) in [
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if f.contains(st_flag) {
                out |= ms;
            }
        }
        Ok(out)
    }

    fn set_recursive_readonly(&self, path: &Path) -> io::Result<()> {
        /// `struct mount_attr` (uapi/linux/mount.h), version 0.
        #[repr(C)]
        struct MountAttr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        const MOUNT_ATTR_RDONLY: u64 = 0x1;
        const AT_RECURSIVE: libc::c_int = 0x8000;
        let c = cstr(path)?;
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: a NUL-terminated path and a mount_attr of the size passed,
        // which the kernel only reads.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                c.as_ptr(),
                AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// One recorded call, for unit tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: Option<PathBuf>,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        data: Option<String>,
    },
    Umount(PathBuf),
    PivotRoot(PathBuf),
    Chroot(PathBuf),
    Chdir(PathBuf),
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    Mknod {
        path: PathBuf,
        kind: u32,
        perm: u32,
        dev: u64,
    },
    Chown(PathBuf, u32, u32),
    WriteFile(PathBuf, Vec<u8>),
    Sethostname(String),
    Setdomainname(String),
    Setrlimit(i32, u64, u64),
    SetRecursiveReadonly(PathBuf),
}

/// Records every call; `exists`/`is_dir` answer from a configurable set.
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    pub calls: RefCell<Vec<Call>>,
    pub existing: RefCell<Vec<(PathBuf, bool)>>,
    /// `same_file` answers no: a destination swapped under a mount.
    pub swapped: std::cell::Cell<bool>,
}

impl RecordingSyscall {
    /// Declares a path as existing (`dir` tells whether it is a directory).
    pub fn with_path(self, path: impl Into<PathBuf>, dir: bool) -> Self {
        self.existing.borrow_mut().push((path.into(), dir));
        self
    }

    fn push(&self, c: Call) -> io::Result<()> {
        self.calls.borrow_mut().push(c);
        Ok(())
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.push(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags,
            data: data.map(str::to_string),
        })
    }
    fn umount(&self, target: &Path, _flags: MntFlags) -> io::Result<()> {
        self.push(Call::Umount(target.to_path_buf()))
    }
    fn resolve_in_root(
        &self,
        root: &Path,
        path: &Path,
        _create: CreateKind,
    ) -> io::Result<Resolved> {
        Ok(Resolved::plain(root.join(relative(path))))
    }
    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        self.push(Call::PivotRoot(new_root.to_path_buf()))
    }
    fn chroot(&self, new_root: &Path) -> io::Result<()> {
        self.push(Call::Chroot(new_root.to_path_buf()))
    }
    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.push(Call::Chdir(path.to_path_buf()))
    }
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.push(Call::Symlink {
            target: target.to_path_buf(),
            link: link.to_path_buf(),
        })
    }
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> io::Result<()> {
        self.push(Call::Mknod {
            path: path.to_path_buf(),
            kind: kind.bits(),
            perm: perm.bits(),
            dev,
        })
    }
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.push(Call::Chown(path.to_path_buf(), uid, gid))
    }

    fn device_node(&self, _path: &Path) -> io::Result<Option<(SFlag, u64)>> {
        Ok(None)
    }

    fn bind_fd(&self, fd: RawFd, target: &Path) -> io::Result<()> {
        self.mount(
            Some(Path::new(&format!("/proc/self/fd/{fd}"))),
            target,
            None,
            MsFlags::MS_BIND,
            None,
        )
    }

    fn bind_null_device(&self, target: &Path) -> io::Result<()> {
        self.mount(
            Some(Path::new("/dev/null")),
            target,
            None,
            MsFlags::MS_BIND,
            None,
        )
    }
    fn write_proc_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.push(Call::WriteFile(path.to_path_buf(), data.to_vec()))
    }
    fn exists(&self, path: &Path) -> bool {
        self.existing.borrow().iter().any(|(p, _)| p == path)
    }
    fn is_symlink(&self, _path: &Path) -> bool {
        false
    }
    fn same_file(&self, _a: &Path, _b: &Path) -> io::Result<bool> {
        Ok(!self.swapped.get())
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.existing.borrow().iter().any(|(p, d)| p == path && *d)
    }
    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.push(Call::Sethostname(name.to_string()))
    }
    fn setdomainname(&self, name: &str) -> io::Result<()> {
        self.push(Call::Setdomainname(name.to_string()))
    }
    fn setrlimit(&self, resource: i32, soft: u64, hard: u64) -> io::Result<()> {
        self.push(Call::Setrlimit(resource, soft, hard))
    }
    fn mount_flags(&self, _path: &Path) -> io::Result<MsFlags> {
        Ok(MsFlags::empty())
    }
    fn set_recursive_readonly(&self, path: &Path) -> io::Result<()> {
        self.push(Call::SetRecursiveReadonly(path.to_path_buf()))
    }
}

/// Creates a directory and its parents with mode 0700 (state dirs).
pub fn mkdir_private(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}
