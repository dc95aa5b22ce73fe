//! Turning the init into the container's process: limits, credentials,
//! capabilities, and finally `execve`.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxCapabilities, PosixRlimit, PosixRlimitType, Process};

use crate::syscall::Syscall;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(
        "rlimit {name}: hard limit {wanted} is above the current hard limit {current}; raising it needs CAP_SYS_RESOURCE, which this process lacks"
    )]
    RlimitAboveHard {
        name: &'static str,
        wanted: u64,
        current: u64,
    },
    #[error("rlimit {name}: {source}")]
    Rlimit {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("exec: {arg0:?}: executable file not found in $PATH")]
    NotInPath { arg0: String },
    #[error("exec: {path:?}: {reason}")]
    NotExecutable { path: PathBuf, reason: String },
    #[error("capability {0}: not known to this kernel")]
    UnknownCapability(String),
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn sys(what: &'static str) -> impl FnOnce(io::Error) -> ProcessError {
    move |source| ProcessError::Sys { what, source }
}

fn last_err(what: &'static str) -> ProcessError {
    ProcessError::Sys {
        what,
        source: io::Error::last_os_error(),
    }
}

pub fn rlimit_resource(t: PosixRlimitType) -> (i32, &'static str) {
    use PosixRlimitType::*;
    let (r, n) = match t {
        RlimitCpu => (libc::RLIMIT_CPU, "RLIMIT_CPU"),
        RlimitFsize => (libc::RLIMIT_FSIZE, "RLIMIT_FSIZE"),
        RlimitData => (libc::RLIMIT_DATA, "RLIMIT_DATA"),
        RlimitStack => (libc::RLIMIT_STACK, "RLIMIT_STACK"),
        RlimitCore => (libc::RLIMIT_CORE, "RLIMIT_CORE"),
        RlimitRss => (libc::RLIMIT_RSS, "RLIMIT_RSS"),
        RlimitNproc => (libc::RLIMIT_NPROC, "RLIMIT_NPROC"),
        RlimitNofile => (libc::RLIMIT_NOFILE, "RLIMIT_NOFILE"),
        RlimitMemlock => (libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK"),
        RlimitAs => (libc::RLIMIT_AS, "RLIMIT_AS"),
        RlimitLocks => (libc::RLIMIT_LOCKS, "RLIMIT_LOCKS"),
        RlimitSigpending => (libc::RLIMIT_SIGPENDING, "RLIMIT_SIGPENDING"),
        RlimitMsgqueue => (libc::RLIMIT_MSGQUEUE, "RLIMIT_MSGQUEUE"),
        RlimitNice => (libc::RLIMIT_NICE, "RLIMIT_NICE"),
        RlimitRtprio => (libc::RLIMIT_RTPRIO, "RLIMIT_RTPRIO"),
        RlimitRttime => (libc::RLIMIT_RTTIME, "RLIMIT_RTTIME"),
    };
    (r as i32, n)
}

/// Sets the process's rlimits. Without CAP_SYS_RESOURCE a hard limit can
/// only go down: say so instead of a bare EPERM.
pub fn apply_rlimits(sys: &dyn Syscall, rlimits: &[PosixRlimit]) -> Result<(), ProcessError> {
    set_rlimits(rlimits, 0, |resource, soft, hard| {
        sys.setrlimit(resource, soft, hard)
    })
}

/// [`apply_rlimits`] on process `pid` (`prlimit`), from outside.
pub fn apply_rlimits_of(pid: i32, rlimits: &[PosixRlimit]) -> Result<(), ProcessError> {
    set_rlimits(rlimits, pid, |resource, soft, hard| {
        set_rlimit_of(pid, resource, soft, hard)
    })
}

/// `prlimit(pid, resource, {soft, hard})`.
pub fn set_rlimit_of(pid: i32, resource: i32, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: prlimit64 setting a limit from a valid struct, reading none.
    if unsafe { libc::prlimit64(pid, resource as _, &lim, std::ptr::null_mut()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets each limit with `set`, explaining an EPERM by the hard limit
/// `pid` (0: this process) has now.
fn set_rlimits(
    rlimits: &[PosixRlimit],
    pid: i32,
    set: impl Fn(i32, u64, u64) -> io::Result<()>,
) -> Result<(), ProcessError> {
    for rl in rlimits {
        let (resource, name) = rlimit_resource(rl.typ());
        if let Err(source) = set(resource, rl.soft(), rl.hard()) {
            if source.raw_os_error() == Some(libc::EPERM) {
                let mut cur = libc::rlimit64 {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: prlimit64 reading a limit into a valid struct.
                unsafe { libc::prlimit64(pid, resource as _, std::ptr::null(), &mut cur) };
                if rl.hard() > cur.rlim_max {
                    return Err(ProcessError::RlimitAboveHard {
                        name,
                        wanted: rl.hard(),
                        current: cur.rlim_max,
                    });
                }
            }
            return Err(ProcessError::Rlimit { name, source });
        }
    }
    Ok(())
}

/// Finds the program to exec: a path as given (relative to the cwd), or
/// the first match in the container's `PATH`.
pub fn resolve_executable(process: &Process) -> Result<PathBuf, ProcessError> {
    let arg0 = &process.args().as_deref().unwrap_or_default()[0];
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        check_executable(&p)?;
        return Ok(p);
    }
    let path_var = process
        .env()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find_map(|v| v.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(arg0);
        if check_executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(ProcessError::NotInPath { arg0: arg0.clone() })
}

fn check_executable(p: &Path) -> Result<(), ProcessError> {
    let meta = std::fs::metadata(p).map_err(|e| ProcessError::NotExecutable {
        path: p.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(ProcessError::NotExecutable {
            path: p.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(ProcessError::NotExecutable {
            path: p.to_path_buf(),
            reason: "permission denied".into(),
        });
    }
    Ok(())
}

/// A capability set as a bit mask (kernel numbering).
pub fn cap_mask(set: Option<&HashSet<Capability>>) -> Result<u64, ProcessError> {
    let mut mask = 0u64;
    for cap in set.into_iter().flatten() {
        let name = format!("CAP_{cap}");
        let parsed: caps::Capability = name
            .parse()
            .map_err(|_| ProcessError::UnknownCapability(name.clone()))?;
        mask |= 1u64 << parsed.index();
    }
    Ok(mask)
}

/// The five sets as masks. `None` capabilities mean none at all (runc).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapMasks {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

impl CapMasks {
    pub fn from_spec(c: Option<&LinuxCapabilities>) -> Result<Self, ProcessError> {
        let Some(c) = c else {
            return Ok(Self::default());
        };
        Ok(Self {
            bounding: cap_mask(c.bounding().as_ref())?,
            effective: cap_mask(c.effective().as_ref())?,
            permitted: cap_mask(c.permitted().as_ref())?,
            inheritable: cap_mask(c.inheritable().as_ref())?,
            ambient: cap_mask(c.ambient().as_ref())?,
        })
    }
}

/// Drops from the bounding set everything not in `keep` (needs CAP_SETPCAP,
/// so this runs before the switch to the container's user).
pub fn drop_bounding(keep: u64) -> Result<(), ProcessError> {
    for cap in caps::runtime::thread_all_supported() {
        if keep & (1u64 << cap.index()) == 0 {
            caps::drop(None, caps::CapSet::Bounding, cap).map_err(|e| {
                sys("dropping from the bounding set")(io::Error::other(e.to_string()))
            })?;
        }
    }
    Ok(())
}

/// Switches to the container's uid/gid/groups, keeping the permitted
/// capabilities across the switch so that `set_capabilities` can pick from
/// them.
pub fn set_user(process: &Process, may_setgroups: bool) -> Result<(), ProcessError> {
    let user = process.user();
    // SAFETY: prctl/setgroups/setresgid/setresuid with plain values and a
    // valid pointer + length for the group list.
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 {
            return Err(last_err("PR_SET_KEEPCAPS"));
        }
        if may_setgroups {
            let groups: Vec<libc::gid_t> = user.additional_gids().clone().unwrap_or_default();
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                return Err(last_err("setgroups"));
            }
        }
        if libc::setresgid(user.gid(), user.gid(), user.gid()) < 0 {
            return Err(last_err("setresgid"));
        }
        if libc::setresuid(user.uid(), user.uid(), user.uid()) < 0 {
            return Err(last_err("setresuid"));
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0 {
            return Err(last_err("PR_SET_KEEPCAPS"));
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const CAP_V3: u32 = 0x2008_0522;

/// Sets effective, permitted and inheritable in one capset, then raises
/// the ambient ones (each must be permitted and inheritable).
pub fn set_capabilities(m: &CapMasks) -> Result<(), ProcessError> {
    let header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let lo = |v: u64| v as u32;
    let hi = |v: u64| (v >> 32) as u32;
    let data = [
        CapData {
            effective: lo(m.effective),
            permitted: lo(m.permitted),
            inheritable: lo(m.inheritable),
        },
        CapData {
            effective: hi(m.effective),
            permitted: hi(m.permitted),
            inheritable: hi(m.inheritable),
        },
    ];
    // SAFETY: capset with a v3 header and a two-element data array.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } < 0 {
        return Err(last_err("capset"));
    }
    // The kernel only lets a capability be ambient if it is permitted and
    // inheritable. runc's default spec lists ambient capabilities without
    // inheritable ones and runc silently skips them (its capability
    // library drops the EPERM), so tools rely on that: skip them too.
    let raisable = m.ambient & m.permitted & m.inheritable;
    for bit in 0..64 {
        if raisable & (1u64 << bit) != 0 {
            // SAFETY: prctl with plain integer arguments.
            let r = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    bit as libc::c_ulong,
                    0,
                    0,
                )
            };
            if r < 0 {
                return Err(last_err("raising an ambient capability"));
            }
        }
    }
    Ok(())
}

pub fn set_no_new_privs() -> Result<(), ProcessError> {
    // SAFETY: prctl with plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        return Err(last_err("PR_SET_NO_NEW_PRIVS"));
    }
    Ok(())
}

/// argv and envp as C strings, built before the last steps so that exec
/// itself allocates nothing.
pub struct ExecPlan {
    path: CString,
    // The pointer arrays point into these.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    umask: u32,
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The home directory of `uid` in the container's `/etc/passwd` (we are
/// inside its root by now). The file is the image's: only a regular file
/// is read (never a FIFO or device, never through a final symlink), and
/// at most 1 MiB of it.
fn home_of(uid: u32) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/etc/passwd")
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    f.take(1 << 20).read_to_string(&mut text).ok()?;
    home_in_passwd(&text, uid)
}

/// `uid`'s home in passwd(5) text: `name:pw:uid:gid:gecos:home:shell`.
fn home_in_passwd(text: &str, uid: u32) -> Option<String> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[2].parse() == Ok(uid) && !f[5].is_empty()).then(|| f[5].to_string())
    })
}

impl ExecPlan {
    pub fn new(path: &Path, process: &Process) -> Result<Self, ProcessError> {
        let c = |s: &[u8]| {
            CString::new(s).map_err(|_| ProcessError::NotExecutable {
                path: path.to_path_buf(),
                reason: "argument or environment contains a NUL byte".into(),
            })
        };
        let argv: Vec<CString> = process
            .args()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|a| c(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let env = process.env().as_deref().unwrap_or_default();
        let mut envp: Vec<CString> = env
            .iter()
            .map(|a| c(a.as_bytes()))
            .collect::<Result<_, _>>()?;
        // As runc: a process without HOME gets its user's, from the
        // container's /etc/passwd, else `/`.
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            let home = home_of(process.user().uid()).unwrap_or_else(|| "/".into());
            envp.push(c(format!("HOME={home}").as_bytes())?);
        }
        Ok(Self {
            path: c(path.as_os_str().as_bytes())?,
            argv_ptrs: pointers(&argv),
            envp_ptrs: pointers(&envp),
            _argv: argv,
            _envp: envp,
            umask: process.user().umask().unwrap_or(0o022),
        })
    }

    /// The last steps before the exec that are not the exec itself:
    /// default signal dispositions, an empty mask, the umask. Runs before
    /// a late seccomp filter is installed, which need not allow them.
    pub fn prepare(&self) {
        reset_signals();
        // SAFETY: umask is always safe.
        unsafe { libc::umask(self.umask as libc::mode_t) };
    }

    /// `execve`; returns only on failure. Allocates nothing: argv and
    /// envp were built in `new`.
    pub fn exec(&self) -> io::Error {
        // SAFETY: NULL-terminated arrays of valid C strings that outlive
        // the call.
        unsafe {
            libc::execve(
                self.path.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.envp_ptrs.as_ptr(),
            )
        };
        io::Error::last_os_error()
    }

    pub fn path(&self) -> &CStr {
        &self.path
    }
}

/// Default dispositions and an empty mask: the init inherits a fully
/// blocked mask from the spawner and Rust ignores SIGPIPE; the container's
/// process must see neither.
pub fn reset_signals() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || sig == 32 || sig == 33 {
            continue;
        }
        // SAFETY: resetting a signal to SIG_DFL is always safe.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_comes_from_the_users_passwd_line() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nbroken:x\nweb:x:33:33::/var/www:/bin/false\nempty:x:7:7:::/bin/sh\n";
        assert_eq!(home_in_passwd(passwd, 0).as_deref(), Some("/root"));
        assert_eq!(home_in_passwd(passwd, 33).as_deref(), Some("/var/www"));
        assert_eq!(home_in_passwd(passwd, 7), None);
        assert_eq!(home_in_passwd(passwd, 4242), None);
    }

    #[test]
    fn capability_masks_use_kernel_numbers() {
        let caps: LinuxCapabilities = serde_json::from_value(serde_json::json!({
            "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN"],
            "effective": ["CAP_KILL"]
        }))
        .unwrap();
        let m = CapMasks::from_spec(Some(&caps)).unwrap();
        assert_eq!(m.bounding, (1 << 0) | (1 << 5) | (1 << 21));
        assert_eq!(m.effective, 1 << 5);
        assert_eq!(m.ambient, 0);
        assert_eq!(CapMasks::from_spec(None).unwrap(), CapMasks::default());
    }

    #[test]
    fn executable_lookup_uses_the_container_path() {
        let p: Process = serde_json::from_value(serde_json::json!({
            "args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
            "env": ["PATH=/nonexistent:/bin"]
        }))
        .unwrap();
        assert_eq!(resolve_executable(&p).unwrap(), PathBuf::from("/bin/sh"));
        let p: Process = serde_json::from_value(serde_json::json!({
            "args": ["no-such-program-here"], "cwd": "/", "user": {"uid": 0, "gid": 0}
        }))
        .unwrap();
        let err = resolve_executable(&p).unwrap_err().to_string();
        assert!(err.contains("executable file not found"), "{err}");
    }
}
