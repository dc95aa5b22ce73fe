//! Which cgroup hierarchies are mounted where (parsed once per process from
//! `/proc/self/mountinfo`), and the caller's own cgroups (`/proc/self/cgroup`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::error::{CgroupError, Result};

pub(crate) const MOUNTINFO: &str = "/proc/self/mountinfo";
pub(crate) const PROC_SELF_CGROUP: &str = "/proc/self/cgroup";

/// How cgroups are mounted on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// Only cgroup v1 hierarchies.
    V1,
    /// Only the cgroup2 unified hierarchy.
    V2,
    /// cgroup v1 controllers plus a cgroup2 mount (usually
    /// `/sys/fs/cgroup/unified`), which carries the v2-only features
    /// (`cgroup.freeze`, `cgroup.kill`, `CLONE_INTO_CGROUP`) and whatever
    /// controllers no v1 hierarchy claimed.
    Hybrid,
}

impl Layout {
    /// A short description for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Layout::V1 => "cgroup v1",
            Layout::V2 => "cgroup v2",
            Layout::Hybrid => "a hybrid cgroup host (v1 controllers + cgroup2)",
        }
    }
}

/// One mounted cgroup v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Mount {
    pub mount_point: PathBuf,
    /// The cgroup that is the root of this mount (`/` unless bind-mounted
    /// from inside the hierarchy).
    pub root: PathBuf,
    /// Controllers of this hierarchy, e.g. `["cpu", "cpuacct"]` or
    /// `["name=systemd"]`.
    pub controllers: Vec<String>,
}

/// The cgroup2 mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnifiedMount {
    pub mount_point: PathBuf,
    pub root: PathBuf,
}

/// The cgroup mounts of this process's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounts {
    pub layout: Layout,
    /// Empty on [`Layout::V2`].
    pub v1: Vec<V1Mount>,
    pub unified: Option<UnifiedMount>,
}

/// Superblock options of a v1 cgroup mount that are not controllers.
const NON_CONTROLLER_OPTS: &[&str] = &[
    "rw",
    "ro",
    "noprefix",
    "clone_children",
    "xattr",
    "cpuset_v2_mode",
    "none",
    "favordynmods",
];

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> PathBuf {
    if !field.contains('\\') {
        return PathBuf::from(field);
    }
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

impl Mounts {
    /// Parses mountinfo text. `None` when no cgroup filesystem is mounted.
    pub fn parse(mountinfo: &str) -> Option<Mounts> {
        let mut v1: Vec<V1Mount> = Vec::new();
        let mut unified: Vec<UnifiedMount> = Vec::new();
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            let (root, mount_point) = (unescape(pre[3]), unescape(pre[4]));
            match post[0] {
                "cgroup2" => unified.push(UnifiedMount { mount_point, root }),
                "cgroup" => {
                    let controllers: Vec<String> = post[2]
                        .split(',')
                        .filter(|o| {
                            !NON_CONTROLLER_OPTS.contains(o) && !o.starts_with("release_agent=")
                        })
                        .map(str::to_owned)
                        .collect();
                    if controllers.is_empty() {
                        continue;
                    }
                    // A hierarchy mounted twice: keep the first mount point.
                    if v1.iter().any(|m| m.controllers == controllers) {
                        continue;
                    }
                    v1.push(V1Mount {
                        mount_point,
                        root,
                        controllers,
                    });
                }
                _ => {}
            }
        }
        // Prefer the conventional cgroup2 mount points.
        let unified = unified
            .iter()
            .position(|u| u.mount_point == Path::new("/sys/fs/cgroup"))
            .or_else(|| {
                unified
                    .iter()
                    .position(|u| u.mount_point == Path::new("/sys/fs/cgroup/unified"))
            })
            .or(if unified.is_empty() { None } else { Some(0) })
            .map(|i| unified.swap_remove(i));
        let has_v1_controllers = v1
            .iter()
            .any(|m| m.controllers.iter().any(|c| !c.starts_with("name=")));
        let layout = match (has_v1_controllers, unified.is_some()) {
            (true, true) => Layout::Hybrid,
            (true, false) => Layout::V1,
            (false, true) => Layout::V2,
            (false, false) => return None,
        };
        if layout == Layout::V2 {
            v1.clear();
        }
        Some(Mounts {
            layout,
            v1,
            unified,
        })
    }

    /// The mounts of this process, read from `/proc/self/mountinfo` once per
    /// process and cached.
    pub fn get() -> Result<&'static Mounts> {
        static MOUNTS: OnceLock<Mounts> = OnceLock::new();
        if let Some(m) = MOUNTS.get() {
            return Ok(m);
        }
        let text = std::fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::Read {
            file: MOUNTINFO.into(),
            source,
        })?;
        let parsed = Mounts::parse(&text).ok_or(CgroupError::NoCgroupMounts {
            mountinfo: MOUNTINFO.into(),
        })?;
        Ok(MOUNTS.get_or_init(|| parsed))
    }
}

/// The cgroup layout of this host (cached after the first call).
pub fn detect() -> Result<Layout> {
    Ok(Mounts::get()?.layout)
}

/// The caller's own cgroups, from `/proc/self/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnCgroups {
    /// `(controllers of the hierarchy, path)` for each v1 hierarchy.
    pub v1: Vec<(Vec<String>, PathBuf)>,
    /// The `0::/path` entry.
    pub unified: Option<PathBuf>,
}

impl OwnCgroups {
    pub fn parse(text: &str) -> OwnCgroups {
        let mut own = OwnCgroups::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if id == "0" && ctrls.is_empty() {
                own.unified = Some(PathBuf::from(path));
            } else if !ctrls.is_empty() {
                own.v1.push((
                    ctrls.split(',').map(str::to_owned).collect(),
                    PathBuf::from(path),
                ));
            }
        }
        own
    }

    pub fn read() -> Result<OwnCgroups> {
        let text =
            std::fs::read_to_string(PROC_SELF_CGROUP).map_err(|source| CgroupError::Read {
                file: PROC_SELF_CGROUP.into(),
                source,
            })?;
        Ok(OwnCgroups::parse(&text))
    }

    /// Our cgroup in the v1 hierarchy with exactly these controllers.
    pub fn v1_path(&self, controllers: &[String]) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(c, _)| {
                c.len() == controllers.len() && controllers.iter().all(|x| c.contains(x))
            })
            .map(|(_, p)| p.as_path())
    }
}

/// The directory of cgroup `cgroup` (a path as in /proc/self/cgroup) of a
/// hierarchy mounted at `mount_point` whose mount root is `mount_root`.
pub(crate) fn dir_in_mount(
    mount_point: &Path,
    mount_root: &Path,
    cgroup: &Path,
) -> Option<PathBuf> {
    let rel = cgroup.strip_prefix(mount_root).ok()?;
    if rel.as_os_str().is_empty() {
        return Some(mount_point.to_path_buf());
    }
    Some(mount_point.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const V1_DEBIAN: &str = "\
25 21 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
31 25 0:28 /docker/abc /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
99 25 0:27 / /mnt/memory\\040again rw,relatime - cgroup cgroup rw,memory
";

    const V2: &str = "\
24 21 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
25 21 0:23 / /proc rw - proc proc rw
";

    #[test]
    fn detects_hybrid() {
        let m = Mounts::parse(HYBRID).unwrap();
        assert_eq!(m.layout, Layout::Hybrid);
        assert_eq!(m.v1.len(), 5);
        assert_eq!(m.v1[4].controllers, vec!["name=systemd".to_string()]);
        let u = m.unified.unwrap();
        assert_eq!(u.mount_point, Path::new("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn detects_v1() {
        let m = Mounts::parse(V1_DEBIAN).unwrap();
        assert_eq!(m.layout, Layout::V1);
        assert!(m.unified.is_none());
        // Duplicate mount of the memory hierarchy is ignored.
        assert_eq!(m.v1.len(), 4);
        assert_eq!(m.v1[0].controllers, vec!["name=systemd".to_string()]);
        assert_eq!(
            m.v1[1].controllers,
            vec!["cpu".to_string(), "cpuacct".to_string()]
        );
        assert_eq!(m.v1[1].mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(m.v1[3].root, Path::new("/docker/abc"));
    }

    #[test]
    fn detects_v2() {
        let m = Mounts::parse(V2).unwrap();
        assert_eq!(m.layout, Layout::V2);
        assert!(m.v1.is_empty());
        assert_eq!(m.unified.unwrap().mount_point, Path::new("/sys/fs/cgroup"));
    }

    #[test]
    fn v2_with_named_v1_hierarchy_is_v2() {
        let text =
            format!("{V2}50 24 0:50 / /run/systemd/legacy rw - cgroup cgroup rw,name=systemd\n");
        let m = Mounts::parse(&text).unwrap();
        assert_eq!(m.layout, Layout::V2);
        assert!(m.v1.is_empty());
    }

    #[test]
    fn no_cgroups() {
        assert!(Mounts::parse("25 21 0:23 / /proc rw - proc proc rw\n").is_none());
    }

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape("/mnt/a\\040b"), Path::new("/mnt/a b"));
        assert_eq!(unescape("/plain"), Path::new("/plain"));
    }

    #[test]
    fn parses_proc_self_cgroup() {
        let own = OwnCgroups::parse(
            "9:name=systemd:/\n4:memory:/process_api/3820\n2:cpu,cpuacct:/a/b\n0::/u\n",
        );
        assert_eq!(own.unified.as_deref(), Some(Path::new("/u")));
        assert_eq!(
            own.v1_path(&["memory".into()]),
            Some(Path::new("/process_api/3820"))
        );
        assert_eq!(
            own.v1_path(&["cpuacct".into(), "cpu".into()]),
            Some(Path::new("/a/b"))
        );
        assert_eq!(own.v1_path(&["name=systemd".into()]), Some(Path::new("/")));
        assert_eq!(own.v1_path(&["cpu".into()]), None);
        // Pure v2 host.
        let own = OwnCgroups::parse("0::/user.slice/session-1.scope\n");
        assert!(own.v1.is_empty());
        assert_eq!(
            own.unified.as_deref(),
            Some(Path::new("/user.slice/session-1.scope"))
        );
    }

    #[test]
    fn resolves_dirs_in_mounts() {
        let d = dir_in_mount(
            Path::new("/sys/fs/cgroup/pids"),
            Path::new("/docker/abc"),
            Path::new("/docker/abc/x"),
        );
        assert_eq!(d.unwrap(), Path::new("/sys/fs/cgroup/pids/x"));
        assert!(
            dir_in_mount(
                Path::new("/m"),
                Path::new("/docker/abc"),
                Path::new("/other")
            )
            .is_none()
        );
        let d = dir_in_mount(
            Path::new("/sys/fs/cgroup/memory"),
            Path::new("/"),
            Path::new("/process_api/h"),
        );
        assert_eq!(d.unwrap(), Path::new("/sys/fs/cgroup/memory/process_api/h"));
    }
}
