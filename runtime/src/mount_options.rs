//! fstab-style mount options, split into what mount(2) needs.
//!
//! An OCI mount lists options as strings. Some are mount flags (`nosuid`),
//! some change propagation (`rslave`), which mount(2) must apply in a
//! separate call, some are recursive attributes (`rro`) that need
//! mount_setattr(2), and the rest is filesystem data (`mode=755`).

use nix::mount::MsFlags;

/// Mount options after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount call itself (`MS_BIND`, `MS_REC`, `MS_RDONLY`...).
    pub flags: MsFlags,
    /// Flags that a bind mount only takes on a remount.
    pub clear: MsFlags,
    /// Propagation changes, applied one by one after the mount.
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific data, comma-joined.
    pub data: String,
    /// Recursive read-only (`rro`), applied with mount_setattr.
    pub recursive_readonly: bool,
    /// `tmpcopyup`: copy what was under a tmpfs into it.
    pub tmpcopyup: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            flags: MsFlags::empty(),
            clear: MsFlags::empty(),
            propagation: Vec::new(),
            data: String::new(),
            recursive_readonly: false,
            tmpcopyup: false,
        }
    }
}

impl MountOptions {
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }
}

/// Parses OCI mount options. Unknown words that look like data (`k=v` or a
/// plain word) go to the filesystem; malformed ones are refused.
pub fn parse_mount_options(options: &[String]) -> Result<MountOptions, String> {
    let mut out = MountOptions::default();
    let mut data: Vec<&str> = Vec::new();
    for opt in options {
        let o = opt.as_str();
        if o.is_empty() {
            return Err("empty option".into());
        }
        if o.contains(',') || o.contains('\0') {
            return Err(format!("option {o:?} contains ',' or NUL"));
        }
        // (set, clear) flag pairs.
        let flag = match o {
            "defaults" => Some((MsFlags::empty(), MsFlags::empty())),
            "ro" => Some((MsFlags::MS_RDONLY, MsFlags::empty())),
            "rw" => Some((MsFlags::empty(), MsFlags::MS_RDONLY)),
            "suid" => Some((MsFlags::empty(), MsFlags::MS_NOSUID)),
            "nosuid" => Some((MsFlags::MS_NOSUID, MsFlags::empty())),
            "dev" => Some((MsFlags::empty(), MsFlags::MS_NODEV)),
            "nodev" => Some((MsFlags::MS_NODEV, MsFlags::empty())),
            "exec" => Some((MsFlags::empty(), MsFlags::MS_NOEXEC)),
            "noexec" => Some((MsFlags::MS_NOEXEC, MsFlags::empty())),
            "sync" => Some((MsFlags::MS_SYNCHRONOUS, MsFlags::empty())),
            "async" => Some((MsFlags::empty(), MsFlags::MS_SYNCHRONOUS)),
            "dirsync" => Some((MsFlags::MS_DIRSYNC, MsFlags::empty())),
            "remount" => Some((MsFlags::MS_REMOUNT, MsFlags::empty())),
            "mand" => Some((MsFlags::MS_MANDLOCK, MsFlags::empty())),
            "nomand" => Some((MsFlags::empty(), MsFlags::MS_MANDLOCK)),
            "atime" => Some((MsFlags::empty(), MsFlags::MS_NOATIME)),
            "noatime" => Some((MsFlags::MS_NOATIME, MsFlags::empty())),
            "diratime" => Some((MsFlags::empty(), MsFlags::MS_NODIRATIME)),
            "nodiratime" => Some((MsFlags::MS_NODIRATIME, MsFlags::empty())),
            "relatime" => Some((MsFlags::MS_RELATIME, MsFlags::empty())),
            "norelatime" => Some((MsFlags::empty(), MsFlags::MS_RELATIME)),
            "strictatime" => Some((MsFlags::MS_STRICTATIME, MsFlags::empty())),
            "nostrictatime" => Some((MsFlags::empty(), MsFlags::MS_STRICTATIME)),
            "lazytime" => Some((MsFlags::MS_LAZYTIME, MsFlags::empty())),
            "nolazytime" => Some((MsFlags::empty(), MsFlags::MS_LAZYTIME)),
            "silent" => Some((MsFlags::MS_SILENT, MsFlags::empty())),
            "loud" => Some((MsFlags::empty(), MsFlags::MS_SILENT)),
            "bind" => Some((MsFlags::MS_BIND, MsFlags::empty())),
            "rbind" => Some((MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())),
            _ => None,
        };
        if let Some((set, clear)) = flag {
            out.flags.insert(set);
            out.flags.remove(clear);
            out.clear.insert(clear);
            out.clear.remove(set);
            continue;
        }
        let prop = match o {
            "private" => Some(MsFlags::MS_PRIVATE),
            "rprivate" => Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            "shared" => Some(MsFlags::MS_SHARED),
            "rshared" => Some(MsFlags::MS_SHARED | MsFlags::MS_REC),
            "slave" => Some(MsFlags::MS_SLAVE),
            "rslave" => Some(MsFlags::MS_SLAVE | MsFlags::MS_REC),
            "unbindable" => Some(MsFlags::MS_UNBINDABLE),
            "runbindable" => Some(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
            _ => None,
        };
        if let Some(p) = prop {
            out.propagation.push(p);
            continue;
        }
        match o {
            "rro" => out.recursive_readonly = true,
            "rrw" => out.recursive_readonly = false,
            "tmpcopyup" => out.tmpcopyup = true,
            "idmap" | "ridmap" => return Err(format!("{o:?}: id-mapped mounts are not supported")),
            "rnosuid" | "rsuid" | "rnodev" | "rdev" | "rnoexec" | "rexec" | "rnoatime"
            | "ratime" | "rnodiratime" | "rdiratime" | "rrelatime" | "rnorelatime"
            | "rstrictatime" | "rnostrictatime" | "rnosymfollow" | "rsymfollow" => {
                return Err(format!(
                    "{o:?}: recursive mount attributes other than rro are not supported"
                ));
            }
            _ => {
                if o.starts_with('=') {
                    return Err(format!("option {o:?} has no name"));
                }
                data.push(o);
            }
        }
    }
    out.data = data.join(",");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(opts: &[&str]) -> MountOptions {
        parse_mount_options(&opts.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn flags_data_and_propagation_are_split() {
        let o = p(&["nosuid", "strictatime", "mode=755", "size=65536k", "rslave"]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
    }

    #[test]
    fn later_options_win() {
        let o = p(&["ro", "rw"]);
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
        assert!(o.clear.contains(MsFlags::MS_RDONLY));
        let o = p(&["rbind", "ro"]);
        assert!(o.is_bind() && o.flags.contains(MsFlags::MS_REC | MsFlags::MS_RDONLY));
    }

    #[test]
    fn malformed_options_are_refused() {
        for bad in ["", "a,b", "=x", "idmap", "rnoexec"] {
            assert!(
                parse_mount_options(&[bad.to_string()]).is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
