//! Loading and validating a bundle's `config.json`.
//!
//! Everything a later step would trip over is checked here, before any
//! process, mount or cgroup exists, so that bad input costs nothing to clean
//! up. Each error names the field it is about.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::mount_options::{MountOptions, parse_mount_options};

/// Why a bundle's configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("bundle {path}: {source}")]
    BundleUnreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: no config.json in the bundle")]
    ConfigMissing { path: PathBuf },
    #[error("{path}: malformed config at `{field}`: {message}")]
    Malformed {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("config.json: unsupported ociVersion {0:?} (sprout supports 1.x)")]
    UnsupportedVersion(String),
    #[error("config.json: `{0}` is required")]
    MissingField(&'static str),
    #[error("config.json: `{field}`: {reason}")]
    InvalidField { field: String, reason: String },
    #[error("config.json: root.path {path}: {reason}")]
    Rootfs { path: PathBuf, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A bundle whose configuration passed validation.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute, canonical bundle directory.
    pub dir: PathBuf,
    /// Absolute, canonical root filesystem directory.
    pub rootfs: PathBuf,
    pub spec: Spec,
}

/// Reads `<dir>/config.json` and validates it for creating a container.
pub fn load_bundle(dir: &Path) -> Result<Bundle, SpecError> {
    let dir = fs::canonicalize(dir).map_err(|source| SpecError::BundleUnreadable {
        path: dir.to_path_buf(),
        source,
    })?;
    let config = dir.join("config.json");
    let text = match fs::read(&config) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SpecError::ConfigMissing { path: config });
        }
        Err(source) => {
            return Err(SpecError::BundleUnreadable {
                path: config,
                source,
            });
        }
    };
    let spec = parse_spec(&text, &config)?;
    let rootfs = resolve_rootfs(&dir, &spec)?;
    validate(&spec)?;
    Ok(Bundle { dir, rootfs, spec })
}

/// Parses config JSON; on failure the error names the JSON path of the
/// offending field (e.g. `linux.namespaces[2].type`).
pub fn parse_spec(text: &[u8], path: &Path) -> Result<Spec, SpecError> {
    let mut de = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        SpecError::Malformed {
            path: path.to_path_buf(),
            field: if field == "." {
                "(document)".into()
            } else {
                field
            },
            message: e.into_inner().to_string(),
        }
    })
}

fn resolve_rootfs(bundle: &Path, spec: &Spec) -> Result<PathBuf, SpecError> {
    let root = spec
        .root()
        .as_ref()
        .ok_or(SpecError::MissingField("root"))?;
    let path = root.path();
    if path.as_os_str().is_empty() {
        return Err(SpecError::MissingField("root.path"));
    }
    let joined = if path.is_absolute() {
        path.clone()
    } else {
        bundle.join(path)
    };
    let canonical = fs::canonicalize(&joined).map_err(|e| SpecError::Rootfs {
        path: joined.clone(),
        reason: if e.kind() == io::ErrorKind::NotFound {
            "does not exist".into()
        } else {
            e.to_string()
        },
    })?;
    if !canonical.is_dir() {
        return Err(SpecError::Rootfs {
            path: joined,
            reason: "is not a directory".into(),
        });
    }
    Ok(canonical)
}

/// Checks every field the runtime acts on. Reads nothing but `spec`, and
/// for a namespaced sysctl the namespace file the spec joins (is it the
/// caller's own?).
pub fn validate(spec: &Spec) -> Result<(), SpecError> {
    validate_version(spec.version())?;
    let process = spec
        .process()
        .as_ref()
        .ok_or(SpecError::MissingField("process"))?;
    validate_process(process)?;
    let namespaces = validate_namespaces(spec)?;
    validate_mounts(spec.mounts().as_deref().unwrap_or_default())?;
    validate_hooks(spec)?;
    validate_linux(spec, &namespaces)?;
    Ok(())
}

fn validate_version(version: &str) -> Result<(), SpecError> {
    let mut parts = version.split('.');
    let major = parts.next().unwrap_or_default();
    let minor_ok = parts.next().is_some_and(|m| {
        let digits: String = m.chars().take_while(|c| c.is_ascii_digit()).collect();
        !digits.is_empty()
    });
    if major != "1" || !minor_ok {
        return Err(SpecError::UnsupportedVersion(version.to_string()));
    }
    Ok(())
}

/// Validates a process section; shared by `create` and `exec --process`.
pub fn validate_process(process: &oci_spec::runtime::Process) -> Result<(), SpecError> {
    let args = process.args().as_deref().unwrap_or_default();
    if args.is_empty() {
        return Err(SpecError::MissingField("process.args"));
    }
    if args[0].is_empty() {
        return Err(invalid("process.args[0]", "must not be empty"));
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(
            "process.cwd",
            format!("{:?} is not an absolute path", process.cwd()),
        ));
    }
    for (i, var) in process
        .env()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if !var.contains('=') || var.starts_with('=') {
            return Err(invalid(
                format!("process.env[{i}]"),
                format!("{var:?} is not of the form NAME=value"),
            ));
        }
        if var.contains('\0') {
            return Err(invalid(format!("process.env[{i}]"), "contains a NUL byte"));
        }
    }
    let mut seen = HashSet::new();
    for (i, rlimit) in process
        .rlimits()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if !seen.insert(format!("{:?}", rlimit.typ())) {
            return Err(invalid(
                format!("process.rlimits[{i}].type"),
                format!("{:?} is given twice", rlimit.typ()),
            ));
        }
        if rlimit.soft() > rlimit.hard() {
            return Err(invalid(
                format!("process.rlimits[{i}]"),
                format!(
                    "soft limit {} is above the hard limit {}",
                    rlimit.soft(),
                    rlimit.hard()
                ),
            ));
        }
    }
    if process.terminal().unwrap_or(false) && process.console_size().is_some() {
        let size = process.console_size().unwrap();
        if size.height() > u16::MAX as u64 || size.width() > u16::MAX as u64 {
            return Err(invalid("process.consoleSize", "dimensions exceed 65535"));
        }
    }
    if let Some(adj) = process.oom_score_adj()
        && !(-1000..=1000).contains(&adj)
    {
        return Err(invalid(
            "process.oomScoreAdj",
            format!("{adj} is outside -1000..=1000"),
        ));
    }
    if process.io_priority().is_some() {
        // Applied with ioprio_set in init; nothing to check beyond serde.
    }
    Ok(())
}

/// The namespaces the container asks for, validated.
/// The LSM labels the process asks for must be appliable on this host, as
/// runc checks: a label that cannot be applied is an error, never a
/// silent drop. Decided here, from the host's paths: inside the
/// container (a fresh sysfs has no selinuxfs) the answer would be the
/// image's.
pub fn check_lsm_available(process: &oci_spec::runtime::Process) -> Result<(), SpecError> {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
    if set(process.apparmor_profile())
        && !std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.trim() == "Y")
    {
        return Err(invalid(
            "process.apparmorProfile",
            "AppArmor is not enabled on this host",
        ));
    }
    if set(process.selinux_label()) && !Path::new("/sys/fs/selinux/enforce").exists() {
        return Err(invalid(
            "process.selinuxLabel",
            "SELinux is not enabled on this host",
        ));
    }
    Ok(())
}

/// A new mount namespace is required: the rootfs is set up (mounts,
/// pivot_root, the old root detached) in the namespace the init is in,
/// which without one is the host's, and with a joined one another
/// sandbox's.
fn validate_namespaces(spec: &Spec) -> Result<HashSet<LinuxNamespaceType>, SpecError> {
    let mut seen = HashSet::new();
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_deref())
        .unwrap_or_default();
    match namespaces
        .iter()
        .position(|n| n.typ() == LinuxNamespaceType::Mount)
    {
        None => {
            return Err(invalid(
                "linux.namespaces",
                "no mount namespace: the rootfs is set up in a new one (add {\"type\": \"mount\"})",
            ));
        }
        Some(i) if namespaces[i].path().is_some() => {
            return Err(invalid(
                format!("linux.namespaces[{i}].path"),
                "joining a mount namespace is not supported: the rootfs is set up in a new one",
            ));
        }
        Some(_) => {}
    }
    let Some(linux) = spec.linux() else {
        return Ok(seen);
    };
    for (i, ns) in namespaces.iter().enumerate() {
        if !seen.insert(ns.typ()) {
            return Err(invalid(
                format!("linux.namespaces[{i}].type"),
                format!("{} namespace is listed twice", ns.typ()),
            ));
        }
        if let Some(path) = ns.path() {
            if !path.is_absolute() {
                return Err(invalid(
                    format!("linux.namespaces[{i}].path"),
                    format!("{path:?} is not absolute"),
                ));
            }
            if ns.typ() == LinuxNamespaceType::Time && linux.time_offsets().is_some() {
                return Err(invalid(
                    "linux.timeOffsets",
                    "offsets cannot be set when joining an existing time namespace",
                ));
            }
        }
    }
    Ok(seen)
}

fn validate_mounts(mounts: &[Mount]) -> Result<(), SpecError> {
    for (i, m) in mounts.iter().enumerate() {
        let dest = m.destination();
        if !dest.is_absolute() {
            return Err(invalid(
                format!("mounts[{i}].destination"),
                format!("{dest:?} is not absolute"),
            ));
        }
        let opts = m.options().as_deref().unwrap_or_default();
        let parsed: MountOptions = parse_mount_options(opts)
            .map_err(|reason| invalid(format!("mounts[{i}].options"), reason))?;
        let typ = m.typ().as_deref().unwrap_or("");
        if parsed.is_bind() || typ == "bind" {
            match m.source() {
                Some(s) if !s.as_os_str().is_empty() => {}
                _ => {
                    return Err(invalid(
                        format!("mounts[{i}].source"),
                        "a bind mount needs a source",
                    ));
                }
            }
        } else if typ.is_empty() {
            return Err(invalid(
                format!("mounts[{i}].type"),
                format!("mount of {dest:?} has no type and is not a bind mount"),
            ));
        }
        if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
            return Err(invalid(
                format!("mounts[{i}]"),
                "id-mapped mounts are not supported",
            ));
        }
    }
    Ok(())
}

fn validate_hooks(spec: &Spec) -> Result<(), SpecError> {
    let Some(hooks) = spec.hooks() else {
        return Ok(());
    };
    let lists = [
        ("prestart", hooks.prestart()),
        ("createRuntime", hooks.create_runtime()),
        ("createContainer", hooks.create_container()),
        ("startContainer", hooks.start_container()),
        ("poststart", hooks.poststart()),
        ("poststop", hooks.poststop()),
    ];
    for (name, list) in lists {
        for (i, hook) in list.as_deref().unwrap_or_default().iter().enumerate() {
            if !hook.path().is_absolute() {
                return Err(invalid(
                    format!("hooks.{name}[{i}].path"),
                    format!("{:?} is not absolute", hook.path()),
                ));
            }
            if hook.timeout().is_some_and(|t| t <= 0) {
                return Err(invalid(
                    format!("hooks.{name}[{i}].timeout"),
                    "must be a positive number of seconds",
                ));
            }
        }
    }
    Ok(())
}

fn validate_linux(spec: &Spec, ns: &HashSet<LinuxNamespaceType>) -> Result<(), SpecError> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let has_new = |t: LinuxNamespaceType| ns.contains(&t);
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty())
        && !has_new(LinuxNamespaceType::Uts)
    {
        return Err(invalid(
            "hostname",
            "setting a hostname needs a uts namespace",
        ));
    }
    if spec.domainname().as_deref().is_some_and(|h| !h.is_empty())
        && !has_new(LinuxNamespaceType::Uts)
    {
        return Err(invalid(
            "domainname",
            "setting a domainname needs a uts namespace",
        ));
    }
    let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if has_maps && !has_new(LinuxNamespaceType::User) {
        return Err(invalid(
            "linux.uidMappings",
            "id mappings need a user namespace",
        ));
    }
    if has_new(LinuxNamespaceType::User) {
        let user_ns = linux
            .namespaces()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::User);
        let joins = user_ns.is_some_and(|n| n.path().is_some());
        if !joins && !has_maps {
            return Err(invalid(
                "linux.uidMappings",
                "a new user namespace needs uidMappings and gidMappings",
            ));
        }
    }
    if linux.time_offsets().is_some() && !has_new(LinuxNamespaceType::Time) {
        return Err(invalid(
            "linux.timeOffsets",
            "time offsets need a time namespace",
        ));
    }
    if let Some(offsets) = linux.time_offsets() {
        for clock in offsets.keys() {
            if clock != "monotonic" && clock != "boottime" {
                return Err(invalid(
                    format!("linux.timeOffsets.{clock}"),
                    "only monotonic and boottime clocks can be offset",
                ));
            }
        }
    }
    for (key, _) in linux.sysctl().iter().flatten() {
        let needs = validate_sysctl(key, ns)?;
        // A namespace joined by path may be the host's own (runc refuses
        // net.* there; the same holds for ipc and uts).
        let joined = linux
            .namespaces()
            .iter()
            .flatten()
            .find(|n| n.typ() == needs)
            .and_then(|n| n.path().as_deref());
        if let Some(path) = joined
            && is_own_namespace(path, needs)
        {
            return Err(invalid(
                format!("linux.sysctl.{key}"),
                format!(
                    "the {needs} namespace {} is the host's: setting it would change the host",
                    path.display()
                ),
            ));
        }
    }
    for (i, dev) in linux.devices().iter().flatten().enumerate() {
        let path = dev.path();
        if !path.is_absolute() || !path.starts_with("/dev") {
            return Err(invalid(
                format!("linux.devices[{i}].path"),
                format!("{path:?} is not under /dev"),
            ));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(invalid(
                format!("linux.devices[{i}].path"),
                format!("{path:?} contains '..'"),
            ));
        }
    }
    for (field, list) in [
        ("linux.maskedPaths", linux.masked_paths()),
        ("linux.readonlyPaths", linux.readonly_paths()),
    ] {
        for (i, p) in list.iter().flatten().enumerate() {
            if !p.starts_with('/') {
                return Err(invalid(
                    format!("{field}[{i}]"),
                    format!("{p:?} is not absolute"),
                ));
            }
        }
    }
    if let Some(prop) = linux.rootfs_propagation() {
        match prop.as_str() {
            "" | "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared"
            | "unbindable" | "runbindable" => {}
            other => {
                return Err(invalid(
                    "linux.rootfsPropagation",
                    format!("unknown propagation {other:?}"),
                ));
            }
        }
    }
    if linux.intel_rdt().is_some() {
        return Err(invalid(
            "linux.intelRdt",
            "Intel RDT is not supported by sprout",
        ));
    }
    if linux.seccomp().is_some() {
        crate::seccomp::SeccompProgram::compile(linux.seccomp().as_ref().unwrap())
            .map_err(|e| invalid("linux.seccomp", e.to_string()))?;
    }
    if let Some(path) = linux.cgroups_path() {
        crate::cgroups::CgroupsPath::parse(path)
            .map_err(|e| invalid("linux.cgroupsPath", e.to_string()))?;
    }
    Ok(())
}

/// Whether the namespace file at `path` is the caller's own namespace of
/// that type (the same inode as `/proc/self/ns/...`).
fn is_own_namespace(path: &Path, typ: LinuxNamespaceType) -> bool {
    use std::os::unix::fs::MetadataExt;
    let own = match typ {
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        _ => return false,
    };
    match (
        std::fs::metadata(path),
        std::fs::metadata(format!("/proc/self/ns/{own}")),
    ) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// runc's rule: a sysctl may only be set when it belongs to a namespace the
/// container owns, so that a container never changes the host. Returns
/// that namespace's type.
fn validate_sysctl(
    key: &str,
    ns: &HashSet<LinuxNamespaceType>,
) -> Result<LinuxNamespaceType, SpecError> {
    let field = || format!("linux.sysctl.{key}");
    if key.contains('/') || key.contains("..") || key.is_empty() {
        return Err(invalid(field(), "not a sysctl name"));
    }
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let needs = if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
        LinuxNamespaceType::Ipc
    } else if key.starts_with("net.") {
        LinuxNamespaceType::Network
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        LinuxNamespaceType::Uts
    } else {
        return Err(invalid(
            field(),
            "is not namespaced: setting it would change the host",
        ));
    };
    if !ns.contains(&needs) {
        return Err(invalid(
            field(),
            format!("needs the container to have its own {needs} namespace"),
        ));
    }
    Ok(needs)
}

/// Validates a container id the way runc does: letters, digits and `_+-.`,
/// not `.` or `..`, so an id can never name a path outside the state root.
pub fn validate_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("must not be empty");
    }
    if id.len() > 1024 {
        return Err("is longer than 1024 bytes");
    }
    if id == "." || id == ".." {
        return Err("must not be . or ..");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b))
    {
        return Err("may only contain letters, digits, '_', '+', '-' and '.'");
    }
    Ok(())
}

/// Whether `process`, run in a sandbox of `spec` that joins a network
/// namespace owned by the host's user namespace (a pooled one), could
/// change that namespace's configuration beyond what a scrub undoes:
/// routes of other tables, rules, neighbours, nftables, qdiscs, sysctls.
/// Errs on the side of yes (the cost is a namespace not reused):
/// - `net.*` entries of `linux.sysctl` (applied inside that namespace);
/// - any hook: `createContainer`/`startContainer` run as root inside it,
///   `prestart`/`createRuntime`/`poststart` as the host's root given the
///   container's pid (configuring its network is what they are for), and
///   `poststop` before the namespace is given back;
/// - CAP_NET_ADMIN, CAP_SYS_ADMIN or CAP_SYS_MODULE in any of its
///   capability sets, unless a user namespace of the sandbox's own makes
///   them moot;
/// - a writable `/proc/sys` in any proc mount, unless a user namespace of
///   its own maps no id to the host's root: `/proc/sys/net` files are
///   0644 and owned by the host's root, whom a process can become
///   (setuid binaries, CAP_SETUID) without being it at the start.
pub fn may_reconfigure_network(spec: &Spec, process: &oci_spec::runtime::Process) -> bool {
    use oci_spec::runtime::Capability;
    let linux = spec.linux().as_ref();
    let net_sysctl = linux.and_then(|l| l.sysctl().as_ref()).is_some_and(|s| {
        s.keys()
            .any(|k| k.starts_with("net.") || k.starts_with("net/"))
    });
    let hooks = spec.hooks().as_ref().is_some_and(|h| {
        #[allow(deprecated)]
        let prestart = h.prestart();
        [
            prestart,
            h.create_runtime(),
            h.create_container(),
            h.start_container(),
            h.poststart(),
            h.poststop(),
        ]
        .into_iter()
        .any(|list| list.as_ref().is_some_and(|l| !l.is_empty()))
    });
    if net_sysctl || hooks {
        return true;
    }
    let own_userns = linux
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none())
        });
    if !own_userns {
        let reaching = [
            Capability::NetAdmin,
            Capability::SysAdmin,
            Capability::SysModule,
        ];
        let held = process.capabilities().as_ref().is_some_and(|c| {
            [
                c.bounding(),
                c.effective(),
                c.permitted(),
                c.inheritable(),
                c.ambient(),
            ]
            .into_iter()
            .flatten()
            .any(|set| reaching.iter().any(|cap| set.contains(cap)))
        });
        if held {
            return true;
        }
    }
    let can_be_host_root = !own_userns
        || linux
            .and_then(|l| l.uid_mappings().as_ref())
            .is_some_and(|maps| maps.iter().any(|m| m.host_id() == 0));
    can_be_host_root && writable_proc_sys(spec)
}

/// Whether some mount of `spec` shows a writable `sys` of procfs: a proc
/// mount, or a bind of the host's /proc, that is not read-only and whose
/// `sys` (or `sys/net`) is neither in `readonlyPaths` nor masked.
fn writable_proc_sys(spec: &Spec) -> bool {
    let linux = spec.linux().as_ref();
    let protected: Vec<PathBuf> = linux
        .into_iter()
        .flat_map(|l| {
            l.readonly_paths()
                .iter()
                .flatten()
                .chain(l.masked_paths().iter().flatten())
        })
        .map(|p| Path::new(p).components().collect())
        .collect();
    spec.mounts().iter().flatten().any(|m| {
        let procfs = m.typ().as_deref() == Some("proc")
            || m.source().as_ref().is_some_and(|s| s.starts_with("/proc"));
        let read_only = m
            .options()
            .iter()
            .flatten()
            .any(|o| o == "ro" || o == "rro");
        if !procfs || read_only {
            return false;
        }
        let dest: PathBuf = m.destination().components().collect();
        // What of the host's procfs this mount shows at its destination.
        let sys_at = match m
            .source()
            .as_ref()
            .and_then(|s| s.strip_prefix("/proc").ok())
        {
            Some(rest) if m.typ().as_deref() != Some("proc") => {
                match Path::new("sys").strip_prefix(rest) {
                    Ok(below) => dest.join(below),
                    // A bind of /proc/sys/net or of something else.
                    Err(_) if rest.starts_with("sys") => dest.clone(),
                    Err(_) => return false,
                }
            }
            _ => dest.join("sys"),
        };
        !protected
            .iter()
            .any(|p| sys_at.starts_with(p) || sys_at.join("net").starts_with(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(spec: serde_json::Value) -> bool {
        let spec: Spec = serde_json::from_value(spec).unwrap();
        let p = spec.process().clone().unwrap();
        may_reconfigure_network(&spec, &p)
    }

    #[test]
    fn who_may_reconfigure_a_pooled_network_namespace() {
        let mut s = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["true"], "cwd": "/",
                "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]}},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {"readonlyPaths": ["/proc/sys"], "namespaces": [{"type": "pid"}]}
        });
        assert!(!reach(s.clone()), "root, /proc/sys read-only, no NET_ADMIN");
        s["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_NET_ADMIN"]);
        assert!(
            reach(s.clone()),
            "NET_ADMIN reachable through the bounding set"
        );
        s["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_SYS_ADMIN"]);
        assert!(reach(s.clone()), "SYS_ADMIN can remount /proc/sys");
        // In a user namespace of its own, capabilities do not reach the
        // host's namespace; its root is host uid 100000.
        s["linux"]["namespaces"] = serde_json::json!([{"type": "user"}]);
        s["linux"]["uidMappings"] =
            serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        s["linux"]["readonlyPaths"] = serde_json::json!([]);
        assert!(!reach(s.clone()), "userns: neither caps nor root count");
        s["linux"]["uidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 0, "size": 1}]);
        assert!(
            reach(s.clone()),
            "userns mapping root to the host's root, /proc/sys writable"
        );
        s["linux"]["namespaces"] = serde_json::json!([]);
        s["process"]["capabilities"]["bounding"] = serde_json::json!([]);
        assert!(reach(s.clone()), "host root with a writable /proc/sys");
        s["process"]["user"]["uid"] = 1000.into();
        s["linux"]["readonlyPaths"] = serde_json::json!(["/proc/sys/"]);
        assert!(!reach(s.clone()), "/proc/sys read-only");
        s["linux"]["readonlyPaths"] = serde_json::json!([]);
        s["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
        assert!(reach(s.clone()), "net.* sysctls are set in the namespace");
        s["linux"]["sysctl"] = serde_json::json!({"kernel.msgmax": "8192"});
        assert!(
            reach(s.clone()),
            "not root, but may become it: /proc/sys is writable"
        );
        s["linux"]["readonlyPaths"] = serde_json::json!(["/proc/sys"]);
        assert!(!reach(s.clone()), "other sysctls are not the network's");
        // A second proc mount, or a bind of the host's /proc, elsewhere.
        let mounts = s["mounts"].clone();
        s["mounts"].as_array_mut().unwrap().push(
            serde_json::json!({"destination": "/hostproc", "type": "proc", "source": "proc"}),
        );
        assert!(reach(s.clone()), "a writable /hostproc/sys");
        s["mounts"] = mounts.clone();
        s["mounts"].as_array_mut().unwrap().push(
            serde_json::json!({"destination": "/p", "type": "bind", "source": "/proc", "options": ["rbind"]}),
        );
        assert!(reach(s.clone()), "a writable bind of /proc");
        s["mounts"] = mounts.clone();
        s["mounts"].as_array_mut().unwrap().push(
            serde_json::json!({"destination": "/n", "type": "bind", "source": "/proc/sys/net", "options": ["rbind", "ro"]}),
        );
        assert!(!reach(s.clone()), "a read-only bind of /proc/sys/net");
        s["mounts"] = mounts;
        for kind in [
            "startContainer",
            "createContainer",
            "prestart",
            "createRuntime",
            "poststart",
        ] {
            s["hooks"] = serde_json::json!({kind: [{"path": "/bin/true"}]});
            assert!(reach(s.clone()), "{kind} hooks run as root while it lives");
        }
        s["hooks"] = serde_json::json!({"poststop": [{"path": "/bin/true"}]});
        assert!(reach(s), "poststop hooks run before it is given back");
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        })
    }

    fn check(v: serde_json::Value) -> Result<(), SpecError> {
        let spec = parse_spec(v.to_string().as_bytes(), Path::new("config.json"))?;
        validate(&spec)
    }

    #[test]
    fn accepts_minimal_config() {
        check(base()).unwrap();
    }

    #[test]
    fn unknown_namespace_names_the_field() {
        let mut v = base();
        v["linux"]["namespaces"][1]["type"] = "bogus".into();
        let err = check(v).unwrap_err().to_string();
        assert!(err.contains("linux.namespaces[1].type"), "{err}");
    }

    #[test]
    fn bad_rlimit_name_names_the_field() {
        let mut v = base();
        v["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]);
        let err = check(v).unwrap_err().to_string();
        assert!(err.contains("process.rlimits[0].type"), "{err}");
    }

    #[test]
    fn missing_process_is_refused() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("process");
        assert!(matches!(check(v), Err(SpecError::MissingField("process"))));
    }

    #[test]
    fn unsupported_version_is_refused() {
        let mut v = base();
        v["ociVersion"] = "2.0.0".into();
        assert!(matches!(check(v), Err(SpecError::UnsupportedVersion(_))));
        let mut v = base();
        v["ociVersion"] = "1.2.0-rc.1".into();
        check(v).unwrap();
    }

    #[test]
    fn bad_mount_option_is_refused() {
        let mut v = base();
        v["mounts"] = serde_json::json!([{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", ""]}]);
        let err = check(v).unwrap_err().to_string();
        assert!(err.contains("mounts[0].options"), "{err}");
    }

    #[test]
    fn relative_mount_destination_is_refused() {
        let mut v = base();
        v["mounts"] =
            serde_json::json!([{"destination": "tmp", "type": "tmpfs", "source": "tmpfs"}]);
        assert!(check(v).is_err());
    }

    #[test]
    fn host_sysctl_is_refused() {
        let mut v = base();
        v["linux"]["sysctl"] = serde_json::json!({"vm.swappiness": "10"});
        let err = check(v).unwrap_err().to_string();
        assert!(err.contains("would change the host"), "{err}");
        let mut v = base();
        v["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
        assert!(check(v).unwrap_err().to_string().contains("net namespace"));
    }

    #[test]
    fn duplicate_namespace_is_refused() {
        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "pid"}]);
        assert!(check(v).is_err());
    }

    #[test]
    fn hostname_needs_uts() {
        let mut v = base();
        v["hostname"] = "box".into();
        assert!(check(v).is_err());
    }

    #[test]
    fn soft_above_hard_is_refused() {
        let mut v = base();
        v["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]);
        assert!(check(v).is_err());
    }

    #[test]
    fn ids() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        for bad in ["", ".", "..", "../x", "a/b", "a b", "a\0"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
