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
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
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
fn sha256_of(fd: impl AsFd, path: &str, st: &FileStat) -> Result<Sha256Digest> {
    let key = Key::of(st);
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
    let d = sha256_of(fd, path, &st)?;
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
    let sha256 = sha256_of(fd, path, &st)?;
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
