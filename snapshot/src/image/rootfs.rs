//! Opening the image's paths inside a container rootfs, and checking that
//! a file there is the one the image mapped.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, SFlag, fstat};

use super::encoding::{HexBytes, Sha256Digest};
use super::error::{ImageError, Result};
use super::host::elf_build_id;
use super::limits::MAX_PATH_BYTES;
use super::memory::FileRecord;

/// Opens `path` inside the directory tree `root` as if `root` were `/`:
/// `openat2` with `RESOLVE_IN_ROOT`, so `..` components and absolute symlinks
/// stay inside the tree, and `RESOLVE_NO_MAGICLINKS`, so `/proc/*/fd` links
/// cannot lead out. Mount points inside the rootfs are crossed (bind mounts
/// such as a read-only interpreter are expected).
///
/// `flags` are `open(2)` flags; `O_CLOEXEC` and `O_NOCTTY` are always
/// added. Creating files (`O_CREAT`, `O_TMPFILE`) is refused: the restorer
/// opens files that exist.
pub fn open_in_root(root: impl AsFd, path: &str, flags: OFlag) -> Result<OwnedFd> {
    if path.len() > MAX_PATH_BYTES || path.contains('\0') {
        return Err(ImageError::invalid(
            "path",
            format!(
                "{:?}: too long or contains NUL",
                path.chars().take(64).collect::<String>()
            ),
        ));
    }
    if flags.contains(OFlag::O_CREAT) || flags.contains(OFlag::O_TMPFILE) {
        return Err(ImageError::invalid(
            "open flags",
            "open_in_root does not create files",
        ));
    }
    // Nonblocking: a FIFO at an image's path must not hang the restorer
    // (regular files do not care). An O_PATH open opens nothing, and
    // openat2 refuses it any other flag.
    let extra = if flags.contains(OFlag::O_PATH) {
        OFlag::O_CLOEXEC
    } else {
        OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK
    };
    let how = OpenHow::new()
        .flags(flags | extra)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let root = root.as_fd();
    let mut tries = 0;
    loop {
        match openat2(root, path, how) {
            // RESOLVE_IN_ROOT returns EAGAIN when a concurrent rename could
            // have let `..` escape; retrying is the documented answer.
            Err(Errno::EAGAIN) if tries < 16 => tries += 1,
            Err(e) => return Err(ImageError::errno(PathBuf::from(path), "open in rootfs")(e)),
            Ok(fd) => return Ok(fd),
        }
    }
}

/// Cache key: a file's identity and every timestamp that changes when its
/// contents do. `ctime` is included because `mtime` can be set back with
/// `utimensat` after a modification; `ctime` cannot be set from user space.
/// A same-size rewrite within one timestamp tick of the hash would keep the
/// key; Linux ≥ 6.13 gives a fine-grained ctime to a change that follows a
/// `stat` (multigrain timestamps on ext4, xfs, btrfs, tmpfs), and the hash
/// is taken after an `fstat`.
#[derive(Hash, PartialEq, Eq, Clone, Copy)]
struct Key {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Key {
    fn of(st: &FileStat) -> Key {
        Key {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// Most entries of the per-process hash cache; it is emptied when full.
const CACHE_ENTRIES: usize = 4096;

fn cache() -> &'static Mutex<HashMap<Key, Sha256Digest>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Sha256Digest>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Where hashes are remembered across processes (one small file per
/// inode), if set: `sprout` CLI calls are short-lived, so without it every
/// restore would hash libpython and libc again.
static PERSISTENT: OnceLock<PathBuf> = OnceLock::new();

/// Remembers file hashes under `dir` (created 0700) across processes. An
/// entry holds the (device, inode, size, mtime, ctime) it was computed for:
/// any change to the file changes its ctime, so a stale entry never
/// matches. Only the first call has an effect.
pub fn set_hash_cache_dir(dir: impl Into<PathBuf>) {
    let dir = dir.into();
    if std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .is_ok()
    {
        let _ = PERSISTENT.set(dir);
    }
}

impl Key {
    fn line(&self) -> String {
        format!(
            "{} {} {} {}.{} {}.{}",
            self.dev, self.ino, self.size, self.mtime.0, self.mtime.1, self.ctime.0, self.ctime.1
        )
    }
}

fn persistent_get(key: &Key) -> Option<Sha256Digest> {
    let dir = PERSISTENT.get()?;
    let text = std::fs::read_to_string(dir.join(format!("{}-{}", key.dev, key.ino))).ok()?;
    let (k, hex) = text.trim().rsplit_once(' ')?;
    if k != key.line() || hex.len() != 64 {
        return None;
    }
    let mut d = [0u8; 32];
    for (i, b) in d.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(Sha256Digest(d))
}

fn persistent_put(key: &Key, d: &Sha256Digest) {
    let Some(dir) = PERSISTENT.get() else { return };
    let name = format!("{}-{}", key.dev, key.ino);
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    if std::fs::write(&tmp, format!("{} {d}\n", key.line())).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(name));
    }
}

fn regular(path: &str, st: &FileStat) -> Result<()> {
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if kind != SFlag::S_IFREG {
        return Err(ImageError::FileChanged {
            path: path.to_string(),
            what: "type",
            image: "regular file".into(),
            found: format!("mode {:#o}", st.st_mode),
        });
    }
    Ok(())
}

/// SHA-256 of an open regular file's contents, read with `pread` from
/// offset 0 (the fd's offset is not used or moved). Results are cached per
/// process by (device, inode, size, mtime, ctime), so restoring many
/// sandboxes from one rootfs hashes each library once.
fn sha256_of(fd: impl AsFd, path: &str, key: Key, st: &FileStat) -> Result<Sha256Digest> {
    if let Some(d) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(*d);
    }
    if let Some(d) = persistent_get(&key) {
        cache()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, d);
        return Ok(d);
    }
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let size = st.st_size as u64;
    let mut off = 0u64;
    let fd = fd.as_fd();
    while off < size {
        let want = buf.len().min((size - off) as usize);
        let n = match nix::sys::uio::pread(fd, &mut buf[..want], off as i64) {
            Ok(0) => {
                return Err(ImageError::FileChanged {
                    path: path.to_string(),
                    what: "size",
                    image: size.to_string(),
                    found: format!("{off} (shrank while being read)"),
                });
            }
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ImageError::errno(PathBuf::from(path), "read")(e)),
        };
        h.update(&buf[..n]);
        off += n as u64;
    }
    let d = Sha256Digest(h.finalize().into());
    persistent_put(&key, &d);
    let mut c = cache().lock().unwrap_or_else(|e| e.into_inner());
    if c.len() >= CACHE_ENTRIES {
        c.clear();
    }
    c.insert(key, d);
    Ok(d)
}

/// Checks that the open file `fd` (from [`open_in_root`]) is the file the
/// image recorded: a regular file of the same size and SHA-256. The
/// restorer then maps this same fd, never the path again, so a rename in
/// the rootfs between check and use changes nothing.
pub fn file_matches(fd: impl AsFd, record: &FileRecord) -> Result<()> {
    file_matches_on(fd, record, None)
}

/// [`file_matches`] for a file that may sit on an overlay mount in
/// `layers` (see [`LayerDevices`]): the same layer file seen through many
/// containers' overlays is hashed once.
pub fn file_matches_on(
    fd: impl AsFd,
    record: &FileRecord,
    layers: Option<&LayerDevices>,
) -> Result<()> {
    let path = record.path.as_str();
    let st = fstat(fd.as_fd()).map_err(ImageError::errno(PathBuf::from(path), "stat"))?;
    regular(path, &st)?;
    let size = st.st_size as u64;
    if size != record.size {
        return Err(ImageError::FileChanged {
            path: path.to_string(),
            what: "size",
            image: record.size.to_string(),
            found: size.to_string(),
        });
    }
    let key = layers
        .and_then(|l| l.key_of(&st, path))
        .unwrap_or_else(|| Key::of(&st));
    let d = sha256_of(fd, path, key, &st)?;
    if d != record.sha256 {
        return Err(ImageError::FileChanged {
            path: path.to_string(),
            what: "sha256",
            image: record.sha256.to_string(),
            found: d.to_string(),
        });
    }
    Ok(())
}

/// The [`FileRecord`] of an open regular file, for the dumper: its size,
/// SHA-256 (through the same cache as [`file_matches`]) and ELF build-id if
/// the note lies in the first 64 KiB.
pub fn file_record(fd: impl AsFd, path: &str) -> Result<FileRecord> {
    let fd = fd.as_fd();
    let st = fstat(fd).map_err(ImageError::errno(PathBuf::from(path), "stat"))?;
    regular(path, &st)?;
    let sha256 = sha256_of(fd, path, Key::of(&st), &st)?;
    let mut head = vec![0u8; (st.st_size.max(0) as usize).min(64 << 10)];
    let mut got = 0;
    while got < head.len() {
        match nix::sys::uio::pread(fd, &mut head[got..], got as i64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ImageError::errno(PathBuf::from(path), "read")(e)),
        }
    }
    head.truncate(got);
    Ok(FileRecord {
        path: path.to_string(),
        size: st.st_size as u64,
        sha256,
        build_id: elf_build_id(&head).map(|b| HexBytes(b.to_vec())),
    })
}

/// Whether `fd` is a file on overlayfs.
pub fn on_overlay(fd: impl AsFd) -> bool {
    nix::sys::statfs::fstatfs(fd)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC)
}

/// The layers of overlay mounts whose layers all live on one filesystem,
/// by the overlay's device number.
///
/// Such an overlay reports a non-directory's real inode number, size and
/// times, but a device number of its own per mount, so every container of
/// an image (each on its own overlay of the same layers) would miss the
/// hash cache. So a file on one is looked up in the layers, in overlay's
/// order (upper, then the lowers): a file found there on the layers'
/// filesystem with the inode number, size and times the overlay reports is
/// the same inode (inode numbers are unique within a filesystem), and its
/// own (device, inode) is the cache key. Anything else (layers not found
/// or on several filesystems, where overlayfs may remap inode numbers; a
/// file not found or different) keeps the overlay's key, and the file is
/// hashed.
#[derive(Debug, Default)]
pub struct LayerDevices(HashMap<u64, Layers>);

#[derive(Debug)]
struct Layers {
    /// The filesystem they all live on.
    dev: u64,
    /// Upper first, then the lowers as overlayfs looks them up.
    dirs: Vec<OwnedFd>,
}

impl LayerDevices {
    /// From `/proc/PID/mountinfo` (the layer paths are opened in the
    /// caller's mount namespace, where a container manager mounts them).
    pub fn of_process(pid: i32) -> LayerDevices {
        let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        LayerDevices::parse(&text, |p| {
            use std::os::unix::fs::OpenOptionsExt;
            let dir = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                .open(p)
                .ok()?;
            let dir = OwnedFd::from(dir);
            let dev = fstat(dir.as_fd()).ok()?.st_dev;
            Some((dev, dir))
        })
    }

    /// From mountinfo `text`, with `open_dir` opening a layer directory
    /// and giving its device.
    fn parse(text: &str, open_dir: impl Fn(&str) -> Option<(u64, OwnedFd)>) -> LayerDevices {
        let mut map = HashMap::new();
        for line in text.lines() {
            let Some((head, tail)) = line.split_once(" - ") else {
                continue;
            };
            let mut tail = tail.split(' ');
            let (Some("overlay"), Some(_source), Some(opts)) =
                (tail.next(), tail.next(), tail.next())
            else {
                continue;
            };
            let Some(dev) = head.split(' ').nth(2).and_then(parse_dev) else {
                continue;
            };
            let (mut upper, mut lower) = (Vec::new(), Vec::new());
            for opt in opts.split(',') {
                match opt.split_once('=') {
                    // Data-only layers (after "::") hold no paths.
                    Some(("lowerdir", v)) => lower.extend(
                        v.split("::")
                            .next()
                            .unwrap_or("")
                            .split(':')
                            .filter(|p| !p.is_empty()),
                    ),
                    Some(("lowerdir+", v)) => lower.push(v),
                    Some(("upperdir", v)) => upper.push(v),
                    _ => {}
                }
            }
            let opened: Option<Vec<(u64, OwnedFd)>> = upper
                .iter()
                .chain(&lower)
                .map(|l| open_dir(&unescape(l)))
                .collect();
            let Some(opened) = opened else { continue };
            let Some(&(first, _)) = opened.first() else {
                continue;
            };
            if opened.iter().all(|(d, _)| *d == first) {
                let dirs = opened.into_iter().map(|(_, fd)| fd).collect();
                map.insert(dev, Layers { dev: first, dirs });
            }
        }
        LayerDevices(map)
    }

    /// The key of the layer file behind `st`, the overlay's view of the
    /// file at `path` (from the overlay's root), if it is found and is
    /// that inode.
    fn key_of(&self, st: &FileStat, path: &str) -> Option<Key> {
        let layers = self.0.get(&st.st_dev)?;
        for dir in &layers.dirs {
            let fd = match open_in_root(dir, path, OFlag::O_RDONLY) {
                Ok(fd) => fd,
                Err(ImageError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue;
                }
                Err(_) => return None,
            };
            let real = fstat(fd.as_fd()).ok()?;
            let seen = Key {
                dev: real.st_dev,
                ..Key::of(st)
            };
            let same = real.st_dev == layers.dev && Key::of(&real) == seen;
            return same.then_some(seen);
        }
        None
    }
}

/// `MAJOR:MINOR` as a `dev_t`.
fn parse_dev(s: &str) -> Option<u64> {
    let (major, minor) = s.split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

/// Undoes mountinfo's octal escapes (`\040` for a space and the like).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 1 254:0 / / rw,relatime - ext4 /dev/vda rw
67 44 0:39 / /run/c1/rootfs rw,relatime - overlay overlay rw,lowerdir=/l/2:/l/1,upperdir=/u/1,workdir=/w/1
70 44 0:41 / /run/c2/rootfs rw,relatime - overlay overlay rw,lowerdir=/l/2:/l/1,upperdir=/u/2,workdir=/w/2
71 44 0:42 / /run/c3/rootfs rw,relatime - overlay overlay rw,lowerdir=/other/1,upperdir=/u/3,workdir=/w/3
72 44 0:43 / /run/c4/rootfs rw,relatime - overlay overlay rw,lowerdir=/gone/1,upperdir=/u/4,workdir=/w/4
73 44 0:44 / /run/c5/rootfs rw,relatime - overlay overlay ro,lowerdir=/l/with\\040space::/d/data
";

    /// Layer directories of the mountinfo above: /l and /u on one
    /// filesystem, /other on another, /gone missing. Each "opens" as an
    /// fd of /dev/null, so the test sees which were opened.
    fn open_dir(p: &str) -> Option<(u64, OwnedFd)> {
        let dev = match p {
            "/other/1" => 7,
            "/l/1" | "/l/2" | "/l/with 040space" | "/l/with space" => 65024,
            p if p.starts_with("/u/") => 65024,
            _ => return None,
        };
        Some((dev, std::fs::File::open("/dev/null").unwrap().into()))
    }

    #[test]
    fn overlays_on_one_filesystem_are_kept_with_their_layers_in_lookup_order() {
        let l = LayerDevices::parse(MOUNTINFO, open_dir);
        let layers = |minor| {
            l.0.get(&libc::makedev(0, minor))
                .map(|x| (x.dev, x.dirs.len()))
        };
        // Upper, then two lowers.
        assert_eq!(layers(39), Some((65024, 3)));
        assert_eq!(layers(41), Some((65024, 3)));
        // Layers on two filesystems; a layer that cannot be found.
        assert_eq!(layers(42), None);
        assert_eq!(layers(43), None);
        // An escaped path, and a data-only layer that is not looked in.
        assert_eq!(layers(44), Some((65024, 1)));
        assert_eq!(l.0.len(), 3);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape("/plain\\"), "/plain\\");
        assert_eq!(unescape("/x\\09"), "/x\\09");
    }

    /// Two overlays of one lower layer: the key of the layer file itself
    /// through either; none for a file changed (copied up) in one of
    /// them, or for a file the layers hold at another path.
    #[test]
    fn a_layer_file_has_one_cache_key_through_every_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        for sub in ["l", "u1", "w1", "u2", "w2", "m1", "m2"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("l/lib.so"), b"layer contents").unwrap();
        std::fs::write(d.join("l/other.so"), b"other").unwrap();
        let lower =
            Key::of(&fstat(std::fs::File::open(d.join("l/lib.so")).unwrap().as_fd()).unwrap());
        // On a thread with a mount namespace of its own: the mounts go
        // with it, whatever happens.
        let keys = std::thread::spawn(move || {
            use nix::mount::{MsFlags, mount};
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                None::<&str>,
            )
            .unwrap();
            for i in [1, 2] {
                let opts = format!(
                    "lowerdir={0}/l,upperdir={0}/u{i},workdir={0}/w{i}",
                    d.display()
                );
                let target = d.join(format!("m{i}"));
                mount(
                    Some("overlay"),
                    &target,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(opts.as_str()),
                )
                .unwrap();
            }
            // Copied up in the second overlay only.
            std::fs::write(d.join("m2/other.so"), b"changed").unwrap();
            let layers = LayerDevices::of_process(nix::unistd::gettid().as_raw());
            let key = |m: &str, file: &str, at: &str| {
                let f = std::fs::File::open(d.join(m).join(file)).unwrap();
                assert!(on_overlay(&f));
                let st = fstat(f.as_fd()).unwrap();
                (layers.key_of(&st, at), Key::of(&st))
            };
            [
                key("m1", "lib.so", "/lib.so"),
                key("m2", "lib.so", "/lib.so"),
                key("m2", "other.so", "/other.so"),
                key("m1", "other.so", "/other.so"),
                key("m1", "lib.so", "/other.so"),
            ]
        })
        .join()
        .unwrap();
        assert!(keys[0].0 == Some(lower));
        assert!(keys[1].0 == Some(lower));
        assert!(
            keys[0].1 != keys[1].1,
            "each overlay has a device of its own"
        );
        // After a copy-up overlayfs still reports the lower file's inode
        // number; the upper layer's file, found first, is another inode,
        // so the copy is hashed. The other overlay still shows the lower.
        assert!(keys[2].0.is_none());
        assert!(keys[2].1.ino == keys[3].1.ino);
        assert!(keys[3].0.is_some());
        // The file at another path is another inode.
        assert!(keys[4].0.is_none());
    }
}
