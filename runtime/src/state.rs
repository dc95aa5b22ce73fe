//! The state root: one directory per container, holding `state.json`
//! (written atomically by rename) and, until `start`, `exec.fifo`.
//!
//! Concurrent CLI calls on one container serialize on an `flock` of its
//! directory; the directory's creation (`mkdir`, which fails if it exists)
//! is what makes ids unique.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::cgroups::SavedCgroup;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state root {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("state of container {id:?}: {source}")]
    Io {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("state of container {id:?} is corrupt: {source}")]
    Corrupt {
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A process identified beyond its pid: the start time (clock ticks after
/// boot, /proc/PID/stat field 22) tells a reused pid apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub start_time: u64,
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses the fields after the command name, which may itself contain
/// spaces and parentheses; the last `)` ends it.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    // After state come ppid (field 4) .. starttime (field 22): 18 more.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

impl ProcessId {
    pub fn of(pid: i32) -> Option<Self> {
        proc_stat(pid).map(|s| Self {
            pid,
            start_time: s.start_time,
        })
    }

    /// Alive and not a zombie, and still the same process.
    pub fn is_alive(&self) -> bool {
        proc_stat(self.pid)
            .is_some_and(|s| s.start_time == self.start_time && s.state != 'Z' && s.state != 'X')
    }
}

/// What sprout remembers about a container between CLI calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedState {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339.
    pub created: String,
    pub owner: String,
    pub init: Option<ProcessId>,
    /// `start` has run.
    pub started: bool,
    pub cgroup: SavedCgroup,
    /// The validated spec as it was at create (later `update`s included),
    /// so that exec, kill and delete do not depend on the bundle.
    pub spec: Spec,
    pub sprout_version: String,
}

#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
}

impl StateStore {
    /// Opens (creating if needed, mode 0700) a state root.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|source| StateError::Root {
                path: root.to_path_buf(),
                source,
            })?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reserves `id`; fails if a container of that name exists.
    pub fn create(&self, id: &str) -> Result<ContainerDir, StateError> {
        let path = self.root.join(id);
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(id.to_string()));
            }
            Err(source) => {
                return Err(StateError::Io {
                    id: id.to_string(),
                    source,
                });
            }
        }
        ContainerDir::open_locked(id, path)
    }

    /// Opens an existing container's directory, locked.
    pub fn open_container(&self, id: &str) -> Result<ContainerDir, StateError> {
        let path = self.root.join(id);
        if !path.join(STATE_FILE).exists() {
            return Err(StateError::NotFound(id.to_string()));
        }
        ContainerDir::open_locked(id, path)
    }

    /// Reads a container's state without locking (the file is replaced
    /// atomically, so a reader never sees half of it).
    pub fn read(&self, id: &str) -> Result<SavedState, StateError> {
        let data = fs::read(self.root.join(id).join(STATE_FILE)).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StateError::NotFound(id.to_string())
            } else {
                StateError::Io {
                    id: id.to_string(),
                    source: e,
                }
            }
        })?;
        serde_json::from_slice(&data).map_err(|source| StateError::Corrupt {
            id: id.to_string(),
            source,
        })
    }

    /// Ids of all containers with a state file, sorted.
    pub fn ids(&self) -> Result<Vec<String>, StateError> {
        let mut ids = Vec::new();
        let entries = fs::read_dir(&self.root).map_err(|source| StateError::Root {
            path: self.root.clone(),
            source,
        })?;
        for e in entries.flatten() {
            if e.path().join(STATE_FILE).exists()
                && let Some(name) = e.file_name().to_str()
            {
                ids.push(name.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }
}

const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";

/// A container's state directory, held under an exclusive `flock`.
#[derive(Debug)]
pub struct ContainerDir {
    id: String,
    path: PathBuf,
    /// Held only for its `flock`, released when the handle is dropped.
    _lock: File,
}

impl ContainerDir {
    fn open_locked(id: &str, path: PathBuf) -> Result<Self, StateError> {
        let io = |source| StateError::Io {
            id: id.to_string(),
            source,
        };
        let lock = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    StateError::NotFound(id.to_string())
                } else {
                    io(e)
                }
            })?;
        // SAFETY: flock on a valid fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } < 0 {
            return Err(io(io::Error::last_os_error()));
        }
        // The directory may have been deleted while we waited for the lock,
        // and even made again for a new container of the same id: the
        // lock is good only if the path still names the locked directory.
        let locked = lock.metadata().map_err(io)?;
        let same = fs::metadata(&path)
            .is_ok_and(|now| (now.dev(), now.ino()) == (locked.dev(), locked.ino()));
        if !same {
            return Err(StateError::NotFound(id.to_string()));
        }
        Ok(Self {
            id: id.to_string(),
            path,
            _lock: lock,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exec_fifo(&self) -> PathBuf {
        self.path.join(EXEC_FIFO)
    }

    fn io(&self, source: io::Error) -> StateError {
        StateError::Io {
            id: self.id.clone(),
            source,
        }
    }

    /// Writes state.json atomically: a temporary file renamed over it.
    /// No fsync: the state root lives on tmpfs (/run) like runc's, and a
    /// crash of the machine ends its containers anyway.
    pub fn save(&self, state: &SavedState) -> Result<(), StateError> {
        let tmp = self.path.join(".state.json.tmp");
        let data = serde_json::to_vec(state).map_err(|e| self.io(io::Error::other(e)))?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| self.io(e))?;
        f.write_all(&data).map_err(|e| self.io(e))?;
        fs::rename(&tmp, self.path.join(STATE_FILE)).map_err(|e| self.io(e))
    }

    pub fn load(&self) -> Result<SavedState, StateError> {
        let data = fs::read(self.path.join(STATE_FILE)).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StateError::NotFound(self.id.clone())
            } else {
                self.io(e)
            }
        })?;
        serde_json::from_slice(&data).map_err(|source| StateError::Corrupt {
            id: self.id.clone(),
            source,
        })
    }

    /// Removes the directory and everything in it.
    pub fn remove(self) -> Result<(), StateError> {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }
}

/// Seconds since the epoch as RFC 3339 with nanoseconds, UTC.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_waited_for_across_a_delete_and_recreate_is_not_granted() {
        let dir = tempfile::tempdir().unwrap();
        let root = StateStore::open(dir.path()).unwrap();
        let first = root.create("c").unwrap();
        fs::write(dir.path().join("c").join(STATE_FILE), "{}").unwrap();
        let waiting = std::thread::spawn({
            let root = root.clone();
            move || root.open_container("c").map(|_| ())
        });
        // Let the other thread block on the lock of the old directory.
        std::thread::sleep(std::time::Duration::from_millis(100));
        fs::remove_dir_all(dir.path().join("c")).unwrap();
        let second = root.create("c").unwrap();
        drop(first);
        assert!(matches!(
            waiting.join().unwrap(),
            Err(StateError::NotFound(_))
        ));
        drop(second);
    }

    #[test]
    fn stat_parsing_survives_odd_names() {
        let text = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10 18446744073709551615";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.start_time, 98765);
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let other = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
    }

    #[test]
    fn rfc3339_known_dates() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
            "2023-11-14T22:13:20.000000005Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn ids_are_unique_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("root")).unwrap();
        let c = store.create("a").unwrap();
        assert!(matches!(store.create("a"), Err(StateError::Exists(_))));
        // Without a state file it is not listed and cannot be opened.
        assert!(store.ids().unwrap().is_empty());
        assert!(matches!(
            store.open_container("a"),
            Err(StateError::NotFound(_))
        ));
        c.remove().unwrap();
        assert!(!dir.path().join("root/a").exists());
    }
}
