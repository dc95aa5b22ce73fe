//! The functions a node knows: name → image, bundle, VPC, resources and
//! concurrency per instance, persisted as one JSON file written
//! atomically (temporary file, fsync, rename, fsync of the directory).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use crate::proto::SignalArg;

/// The most concurrent requests one instance may be given.
pub const MAX_CONCURRENCY: u32 = 10_000;

/// A function as the orchestrator registers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// Letters, digits, `_`, `-`, `.`; at most 128 bytes.
    pub name: String,
    /// The function's memory image directory (from `sprout checkpoint`).
    pub image: PathBuf,
    /// The OCI bundle the image was taken in; instances get its sandbox
    /// unless a fork names another bundle.
    pub bundle: PathBuf,
    /// The VPC whose pooled network namespaces instances join (a VPC of
    /// netplug's state under sproutd's runtime root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
    /// A signal sent to every instance once it runs, so the function can
    /// re-seed what fork copied from the template (PRNG state, ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_fork_signal: Option<SignalArg>,
    /// Limits for each instance's cgroup (OCI `linux.resources`),
    /// replacing the bundle's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<LinuxResources>,
    /// How many requests one instance serves at once.
    #[serde(default = "one")]
    pub concurrency: u32,
    /// Who, through containerd, may start instances of this function: a
    /// containerd namespace (`k8s.io`) or one Kubernetes namespace within
    /// it (`k8s.io/team-a`, from the CRI's own
    /// `io.kubernetes.cri.sandbox-namespace`). `None`: any caller. The
    /// instance gets the template's memory, secrets loaded at init
    /// included, so a function annotation alone must not be enough.
    /// sproutd's own API (root clients) is never restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callers: Option<Vec<String>>,
}

fn one() -> u32 {
    1
}

/// Checks a function or VPC name.
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!("{what} name {name:?} must be 1 to 128 bytes long"));
    }
    if name == "." || name == ".." || name.starts_with('.') {
        return Err(format!("{what} name {name:?} must not start with '.'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        return Err(format!(
            "{what} name {name:?} may only contain letters, digits, '_', '-' and '.'"
        ));
    }
    Ok(())
}

impl FunctionSpec {
    /// Whether a containerd `caller` (`NS` or `NS/K8S-NS`, see
    /// [`FunctionSpec::callers`]) may start this function.
    pub fn admits(&self, caller: &str) -> bool {
        let Some(allowed) = &self.callers else {
            return true;
        };
        let namespace = caller.split_once('/').map_or(caller, |(ns, _)| ns);
        allowed.iter().any(|a| a == caller || a == namespace)
    }

    /// Checks the fields and the files they name: absolute paths, an image
    /// directory, a bundle the runtime accepts.
    pub fn validate(&self) -> Result<(), String> {
        validate_name("function", &self.name)?;
        if let Some(vpc) = &self.vpc {
            validate_name("VPC", vpc)?;
        }
        for c in self.callers.iter().flatten() {
            let (ns, k8s) = c
                .split_once('/')
                .map_or((c.as_str(), None), |(a, b)| (a, Some(b)));
            validate_name("caller namespace", ns)?;
            if let Some(k) = k8s {
                validate_name("caller Kubernetes namespace", k)?;
            }
        }
        self.after_fork_signal()?;
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(format!(
                "concurrency {} must be between 1 and {MAX_CONCURRENCY}",
                self.concurrency
            ));
        }
        for (field, path) in [("image", &self.image), ("bundle", &self.bundle)] {
            if !path.is_absolute() {
                return Err(format!(
                    "{field} {} must be an absolute path",
                    path.display()
                ));
            }
            if !path.is_dir() {
                return Err(format!("{field} {} is not a directory", path.display()));
            }
        }
        sprout_runtime::spec::load_bundle(&self.bundle)
            .map_err(|e| format!("bundle {}: {e}", self.bundle.display()))?;
        Ok(())
    }

    /// The after-fork signal's number. SIGKILL and SIGSTOP are refused:
    /// they cannot be handled, so they would only kill or stop every
    /// instance.
    pub fn after_fork_signal(&self) -> Result<Option<i32>, String> {
        let Some(s) = &self.after_fork_signal else {
            return Ok(None);
        };
        let n = s
            .to_number()
            .map_err(|e| format!("after_fork_signal: {e}"))?;
        if n == libc::SIGKILL || n == libc::SIGSTOP {
            return Err(format!(
                "after_fork_signal: signal {n} cannot be handled; pick one the function installs a handler for (e.g. SIGUSR2)"
            ));
        }
        Ok(Some(n))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("function registry {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("function registry {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    functions: Vec<FunctionSpec>,
}

const VERSION: u32 = 1;

/// The registry, in memory and on disk. Not synchronized: sproutd keeps it
/// behind a lock and writes the file while holding it.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    functions: BTreeMap<String, FunctionSpec>,
}

impl Registry {
    /// Loads `path`, or starts empty if it does not exist.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let io_err = |source| RegistryError::Io {
            path: path.to_path_buf(),
            source,
        };
        let functions = match fs::read(path) {
            Ok(data) => {
                let file: File =
                    serde_json::from_slice(&data).map_err(|source| RegistryError::Corrupt {
                        path: path.to_path_buf(),
                        source,
                    })?;
                file.functions
                    .into_iter()
                    .map(|f| (f.name.clone(), f))
                    .collect()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io_err(e)),
        };
        Ok(Self {
            path: path.to_path_buf(),
            functions,
        })
    }

    pub fn get(&self, name: &str) -> Option<&FunctionSpec> {
        self.functions.get(name)
    }

    pub fn list(&self) -> impl Iterator<Item = &FunctionSpec> {
        self.functions.values()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    /// Adds a function and writes the file; on a write error the registry
    /// is unchanged.
    pub fn insert(&mut self, f: FunctionSpec) -> Result<(), RegistryError> {
        let name = f.name.clone();
        let old = self.functions.insert(name.clone(), f);
        if let Err(e) = self.save() {
            match old {
                Some(o) => self.functions.insert(name, o),
                None => self.functions.remove(&name),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Removes a function and writes the file.
    pub fn remove(&mut self, name: &str) -> Result<Option<FunctionSpec>, RegistryError> {
        let Some(old) = self.functions.remove(name) else {
            return Ok(None);
        };
        if let Err(e) = self.save() {
            self.functions.insert(name.to_string(), old);
            return Err(e);
        }
        Ok(Some(old))
    }

    fn save(&self) -> Result<(), RegistryError> {
        let file = File {
            version: VERSION,
            functions: self.functions.values().cloned().collect(),
        };
        let data = serde_json::to_vec_pretty(&file).expect("serializable");
        write_atomic(&self.path, &data).map_err(|source| RegistryError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Writes `data` to `path` so that a reader (or a crash) sees the old or
/// the new content, never a mix, and the new content survives a crash of
/// the machine.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, true)
}

/// [`write_atomic`] without the flushes to disk: for state that only
/// matters while the processes it describes live. A crash of sproutd
/// leaves the page cache, so the next sproutd reads the new content; a
/// crash of the machine takes the processes with it. Keeps two `fsync`s
/// off a start's critical path.
pub fn write_atomic_volatile(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, false)
}

/// A temporary file renamed over `path`; `durable`: flushed first, and the
/// directory after.
fn replace(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&tmp)?;
    f.write_all(data)?;
    if durable {
        f.sync_all()?;
    }
    drop(f);
    fs::rename(&tmp, path)?;
    if durable {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dir: &Path) -> FunctionSpec {
        FunctionSpec {
            name: name.into(),
            image: dir.into(),
            bundle: dir.into(),
            vpc: None,
            after_fork_signal: None,
            resources: None,
            concurrency: 1,
            callers: None,
        }
    }

    #[test]
    fn callers_admit_their_namespace_or_one_pod_namespace_in_it() {
        let mut f = spec("f", Path::new("/"));
        assert!(f.admits("anyone/at-all"));
        f.callers = Some(vec!["default".into(), "k8s.io/team-a".into()]);
        for ok in ["default", "default/x", "k8s.io/team-a"] {
            assert!(f.admits(ok), "{ok}");
        }
        for no in ["k8s.io", "k8s.io/team-b", "k8s.io/team-a/x", "other"] {
            assert!(!f.admits(no), "{no}");
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("function", "hello-world_1.2").is_ok());
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_name("function", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn persisted_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("functions.json");
        let mut r = Registry::open(&path).unwrap();
        assert_eq!(r.list().count(), 0);
        r.insert(spec("a", dir.path())).unwrap();
        r.insert(spec("b", dir.path())).unwrap();
        r.remove("a").unwrap();
        let r2 = Registry::open(&path).unwrap();
        assert_eq!(
            r2.list().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert!(!dir.path().join(".functions.json.tmp").exists());
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("functions.json");
        fs::write(&path, b"{not json").unwrap();
        let e = Registry::open(&path).unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
    }

    #[test]
    fn validation_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = spec("f", dir.path());
        f.image = "relative/image".into();
        assert!(f.validate().unwrap_err().contains("absolute"));
        let mut f = spec("f", dir.path());
        f.concurrency = 0;
        assert!(f.validate().unwrap_err().contains("concurrency"));
        let mut f = spec("f", dir.path());
        f.bundle = dir.path().join("missing");
        assert!(f.validate().unwrap_err().contains("not a directory"));
        // A directory without config.json is not a bundle.
        let f = spec("f", dir.path());
        assert!(f.validate().unwrap_err().contains("bundle"));
    }

    #[test]
    fn after_fork_signal_by_name_or_number() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = spec("f", dir.path());
        assert_eq!(f.after_fork_signal(), Ok(None));
        f.after_fork_signal = Some(SignalArg::Name("USR2".into()));
        assert_eq!(f.after_fork_signal(), Ok(Some(libc::SIGUSR2)));
        f.after_fork_signal = Some(SignalArg::Number(libc::SIGHUP));
        assert_eq!(f.after_fork_signal(), Ok(Some(libc::SIGHUP)));
        for bad in [
            SignalArg::Name("SIGNOPE".into()),
            SignalArg::Number(0),
            SignalArg::Name("KILL".into()),
            SignalArg::Number(libc::SIGSTOP),
        ] {
            f.after_fork_signal = Some(bad.clone());
            let e = f.after_fork_signal().unwrap_err();
            assert!(e.starts_with("after_fork_signal: "), "{bad:?}: {e}");
            assert!(f.validate().unwrap_err().contains("after_fork_signal"));
        }
        // Stored as given, read back the same.
        f.after_fork_signal = Some(SignalArg::Name("SIGUSR2".into()));
        let text = serde_json::to_string(&f).unwrap();
        assert!(text.contains(r#""after_fork_signal":"SIGUSR2""#), "{text}");
        assert_eq!(serde_json::from_str::<FunctionSpec>(&text).unwrap(), f);
    }
}
