//! `linux.cgroupsPath` parsing and validation.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{CgroupError, Result};

/// Where a container's cgroup lives, parsed and validated from OCI
/// `linux.cgroupsPath`.
///
/// `Relative` paths resolve under the *caller's own* cgroup, separately in
/// each hierarchy (runc's rule); `Absolute` ones under each hierarchy's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupsPath {
    /// Below the root of every hierarchy (stored without the leading `/`).
    Absolute(PathBuf),
    /// Below the caller's own cgroup in every hierarchy.
    Relative(PathBuf),
}

impl CgroupsPath {
    /// Parses `linux.cgroupsPath` (a `&str`, `&Path` or `&PathBuf`). An
    /// empty path is an error: the caller picks a default (the runtime uses
    /// the container id, see [`CgroupsPath::for_container`]).
    pub fn parse(path: impl AsRef<Path>) -> Result<CgroupsPath> {
        let path = path.as_ref();
        let Some(s) = path.to_str() else {
            return Err(CgroupError::InvalidPath {
                path: path.display().to_string(),
                reason: "is not valid UTF-8",
            });
        };
        let invalid = |reason| CgroupError::InvalidPath {
            path: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(invalid("empty path"));
        }
        if s.contains('\0') {
            return Err(invalid("contains a NUL byte"));
        }
        if s.contains('\n') {
            return Err(invalid("contains a newline"));
        }
        // systemd driver syntax "slice:prefix:name" (slice may be empty).
        if !s.contains('/') && s.split(':').count() == 3 {
            return Err(CgroupError::SystemdPathUnsupported { path: s.to_owned() });
        }
        let (absolute, rest) = match s.strip_prefix('/') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if rest.is_empty() {
            return Err(invalid(
                "names the root cgroup; a container needs its own cgroup below it",
            ));
        }
        for component in rest.split('/') {
            match component {
                "" => {
                    return Err(invalid(
                        "has an empty component (\"//\" or a trailing \"/\")",
                    ));
                }
                "." => return Err(invalid("has a \".\" component")),
                ".." => return Err(invalid("has a \"..\" component")),
                c if c.len() > 255 => return Err(invalid("has a component longer than 255 bytes")),
                _ => {}
            }
        }
        let p = PathBuf::from(rest);
        Ok(if absolute {
            CgroupsPath::Absolute(p)
        } else {
            CgroupsPath::Relative(p)
        })
    }

    /// The default when a bundle sets no `cgroupsPath`: the container id,
    /// relative to the caller's cgroup.
    pub fn for_container(id: &str) -> Result<CgroupsPath> {
        if id.contains('/') || id.contains(':') {
            return Err(CgroupError::InvalidPath {
                path: id.to_owned(),
                reason: "a container id used as default cgroup name must not contain '/' or ':'",
            });
        }
        CgroupsPath::parse(id)
    }

    /// The path below the base cgroup (no leading `/`).
    pub fn components(&self) -> &Path {
        match self {
            CgroupsPath::Absolute(p) | CgroupsPath::Relative(p) => p,
        }
    }

    pub fn is_relative(&self) -> bool {
        matches!(self, CgroupsPath::Relative(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_relative_and_absolute() {
        assert_eq!(
            CgroupsPath::parse("abc").unwrap(),
            CgroupsPath::Relative("abc".into())
        );
        assert_eq!(
            CgroupsPath::parse("a/b/c").unwrap(),
            CgroupsPath::Relative("a/b/c".into())
        );
        assert_eq!(
            CgroupsPath::parse("/x/y").unwrap(),
            CgroupsPath::Absolute("x/y".into())
        );
        assert_eq!(
            CgroupsPath::parse("/x/y").unwrap().components(),
            Path::new("x/y")
        );
        // A colon is fine in a plain path that is not the systemd form.
        assert!(CgroupsPath::parse("a:b").is_ok());
        assert!(CgroupsPath::parse("/a:b:c/d").is_ok());
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in [
            "", "/", "a//b", "a/", "../a", "a/../b", "a/./b", ".", "a\0b", "a\nb",
        ] {
            let err = CgroupsPath::parse(bad).unwrap_err();
            assert!(
                matches!(err, CgroupError::InvalidPath { .. }),
                "{bad:?}: {err}"
            );
        }
        let long = "x".repeat(256);
        assert!(CgroupsPath::parse(&long).is_err());
    }

    #[test]
    fn accepts_path_types() {
        use std::os::unix::ffi::OsStrExt;
        let pb = PathBuf::from("a/b");
        assert_eq!(
            CgroupsPath::parse(&pb).unwrap(),
            CgroupsPath::Relative(pb.clone())
        );
        assert!(CgroupsPath::parse(Path::new("/a")).is_ok());
        let bad = Path::new(std::ffi::OsStr::from_bytes(b"a\xffb"));
        assert!(matches!(
            CgroupsPath::parse(bad),
            Err(CgroupError::InvalidPath { .. })
        ));
    }

    #[test]
    fn rejects_systemd_form() {
        for s in ["system.slice:docker:abc", ":sprout:abc"] {
            let err = CgroupsPath::parse(s).unwrap_err();
            assert!(
                matches!(err, CgroupError::SystemdPathUnsupported { .. }),
                "{s}: {err}"
            );
            assert!(
                err.to_string()
                    .contains("systemd cgroup driver is not supported")
            );
        }
    }

    #[test]
    fn default_for_container() {
        assert_eq!(
            CgroupsPath::for_container("c1").unwrap(),
            CgroupsPath::Relative("c1".into())
        );
        assert!(CgroupsPath::for_container("a/b").is_err());
        assert!(CgroupsPath::for_container("..").is_err());
    }
}
