//! The file operations the resource logic performs, behind a small trait so
//! unit tests can record `(file, value)` pairs without a kernel.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

use super::error::{CgroupError, Result};

pub(crate) trait CgroupFs {
    /// Writes `value` to an existing cgroup file in one `write(2)`.
    fn write(&self, file: &Path, value: &str) -> io::Result<()>;
    fn read(&self, file: &Path) -> io::Result<String>;
    fn exists(&self, file: &Path) -> bool;
}

/// The real cgroup filesystem.
pub(crate) struct RealFs;

impl CgroupFs for RealFs {
    fn write(&self, file: &Path, value: &str) -> io::Result<()> {
        // No O_CREAT/O_TRUNC: cgroup files always exist, and a missing one
        // must report ENOENT rather than EACCES.
        let mut f = OpenOptions::new().write(true).open(file)?;
        f.write_all(value.as_bytes())
    }
    fn read(&self, file: &Path) -> io::Result<String> {
        std::fs::read_to_string(file)
    }
    fn exists(&self, file: &Path) -> bool {
        file.exists()
    }
}

pub(crate) fn write(fs: &dyn CgroupFs, dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    tracing::trace!(file = %path.display(), value, "cgroup write");
    fs.write(&path, value).map_err(|source| CgroupError::Write {
        file: path,
        value: value.to_owned(),
        source,
    })
}

pub(crate) fn read(fs: &dyn CgroupFs, dir: &Path, file: &str) -> Result<String> {
    let path = dir.join(file);
    fs.read(&path)
        .map_err(|source| CgroupError::Read { file: path, source })
}

/// Like [`read`], but a missing file is `None`.
pub(crate) fn read_opt(fs: &dyn CgroupFs, dir: &Path, file: &str) -> Result<Option<String>> {
    let path = dir.join(file);
    match fs.read(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read { file: path, source }),
    }
}

pub(crate) fn parse_err(dir: &Path, file: &str, reason: impl Into<String>) -> CgroupError {
    CgroupError::Parse {
        file: dir.join(file),
        reason: reason.into(),
    }
}

/// Parses a number, or "max" as `u64::MAX`.
pub(crate) fn parse_u64_or_max(s: &str) -> Option<u64> {
    let s = s.trim();
    if s == "max" {
        Some(u64::MAX)
    } else {
        s.parse().ok()
    }
}

/// Parses a v1 value that may be a negative "unlimited" (e.g. -1) or a
/// number: negative values become `u64::MAX`.
pub(crate) fn parse_i64_as_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.parse::<u64>() {
        Ok(v) => Some(v),
        Err(_) => s
            .parse::<i64>()
            .ok()
            .map(|v| if v < 0 { u64::MAX } else { v as u64 }),
    }
}

/// `key value` lines (memory.stat, cpu.stat, memory.events, ...).
pub(crate) fn parse_flat_keyed(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let (k, v) = l.split_once(' ')?;
        Some((k, v.trim().parse().ok()?))
    })
}

#[cfg(test)]
pub(crate) mod recording {
    //! A fake filesystem: reads come from a map, writes are recorded.
    use super::*;
    use std::cell::RefCell;
    use std::collections::{HashMap, HashSet};
    use std::path::PathBuf;

    #[derive(Default)]
    pub(crate) struct RecordingFs {
        pub files: RefCell<HashMap<PathBuf, String>>,
        pub missing: HashSet<PathBuf>,
        /// Writes of exactly (file, value) that fail with this errno.
        pub fail: HashMap<(PathBuf, String), i32>,
        pub writes: RefCell<Vec<(PathBuf, String)>>,
    }

    impl RecordingFs {
        pub fn with_file(self, path: &str, content: &str) -> Self {
            self.files.borrow_mut().insert(path.into(), content.into());
            self
        }
        pub fn without(mut self, path: &str) -> Self {
            self.missing.insert(path.into());
            self
        }
        pub fn failing(mut self, path: &str, value: &str, errno: i32) -> Self {
            self.fail.insert((path.into(), value.into()), errno);
            self
        }
        /// The recorded writes as `("dir/file", "value")` strings.
        pub fn taken(&self) -> Vec<(String, String)> {
            self.writes
                .borrow()
                .iter()
                .map(|(p, v)| (p.display().to_string(), v.clone()))
                .collect()
        }
    }

    impl CgroupFs for RecordingFs {
        fn write(&self, file: &Path, value: &str) -> io::Result<()> {
            if self.missing.contains(file) {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            if let Some(errno) = self.fail.get(&(file.to_path_buf(), value.to_owned())) {
                return Err(io::Error::from_raw_os_error(*errno));
            }
            self.writes
                .borrow_mut()
                .push((file.to_path_buf(), value.to_owned()));
            Ok(())
        }
        fn read(&self, file: &Path) -> io::Result<String> {
            self.files
                .borrow()
                .get(file)
                .cloned()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
        }
        fn exists(&self, file: &Path) -> bool {
            !self.missing.contains(file)
        }
    }
}
