//! `/proc/PID/maps`, `/proc/PID/task` and small `/proc` lookups.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::error::PtraceError;
use super::{Result, Tid};

fn read(path: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| PtraceError::Proc {
        path: path.to_string(),
        source,
    })
}

fn bad(path: &str, what: String) -> PtraceError {
    PtraceError::Proc {
        path: path.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
    }
}

/// The thread ids of process `pid` (`/proc/PID/task`), sorted.
pub fn list_tasks(pid: Tid) -> Result<Vec<Tid>> {
    let path = format!("/proc/{pid}/task");
    let dir = std::fs::read_dir(&path).map_err(|source| PtraceError::Proc {
        path: path.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for ent in dir {
        let ent = ent.map_err(|source| PtraceError::Proc {
            path: path.clone(),
            source,
        })?;
        if let Some(t) = ent.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(t);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// A field of `/proc/TID/status` (without the `Name:` prefix, trimmed).
pub fn status_field(tid: Tid, field: &str) -> Result<String> {
    let path = format!("/proc/{tid}/status");
    let text = read(&path)?;
    for line in text.split(|&b| b == b'\n') {
        if let Some(rest) = line.strip_prefix(field.as_bytes())
            && let Some(v) = rest.strip_prefix(b":")
        {
            return Ok(String::from_utf8_lossy(v).trim().to_string());
        }
    }
    Err(bad(&path, format!("no {field}: line")))
}

/// The process (thread group) `tid` belongs to.
pub fn tgid_of(tid: Tid) -> Result<Tid> {
    let v = status_field(tid, "Tgid")?;
    v.parse()
        .map_err(|_| bad(&format!("/proc/{tid}/status"), format!("bad Tgid {v:?}")))
}

/// `TracerPid:` of `tid` (0 when not traced).
pub fn tracer_of(tid: Tid) -> Result<Tid> {
    let v = status_field(tid, "TracerPid")?;
    v.parse().map_err(|_| {
        bad(
            &format!("/proc/{tid}/status"),
            format!("bad TracerPid {v:?}"),
        )
    })
}

/// `State:` of `tid`, e.g. `t (tracing stop)`.
pub fn thread_state(tid: Tid) -> Option<String> {
    status_field(tid, "State").ok()
}

/// `/proc/TID/wchan`: where the thread sleeps in the kernel.
pub fn wchan(tid: Tid) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{tid}/wchan")).ok()
}

/// What a mapping maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// Anonymous memory without a name.
    Anon,
    /// A file; `deleted` when maps shows ` (deleted)` (shared memory,
    /// memfd and unlinked files).
    File {
        /// Its path (as maps shows it; `\012` unescaped to a newline).
        path: PathBuf,
        /// Whether the file was unlinked.
        deleted: bool,
    },
    /// `[heap]`.
    Heap,
    /// `[stack]`.
    Stack,
    /// `[vdso]`.
    Vdso,
    /// `[vvar]`.
    Vvar,
    /// `[vvar_vclock]` (6.13+).
    VvarVclock,
    /// `[vsyscall]`.
    Vsyscall,
    /// `[anon:NAME]` (`PR_SET_VMA_ANON_NAME`) or `[anon_shmem:NAME]`
    /// (`shmem` true).
    AnonNamed {
        /// The name.
        name: String,
        /// Whether it is shared anonymous memory.
        shmem: bool,
    },
    /// Any other `[...]` name (e.g. `[uprobes]`).
    Special(String),
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `r`.
    pub read: bool,
    /// `w`.
    pub write: bool,
    /// `x`.
    pub exec: bool,
    /// `s` (shared) rather than `p` (private).
    pub shared: bool,
    /// File offset.
    pub offset: u64,
    /// Device major.
    pub dev_major: u32,
    /// Device minor.
    pub dev_minor: u32,
    /// Inode (0 for anonymous memory).
    pub inode: u64,
    /// What it maps.
    pub kind: MapKind,
}

impl MapEntry {
    /// `end - start`.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Always false (the kernel shows no empty mapping).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Whether `addr` lies inside.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// `PROT_*` bits of the permissions.
    pub fn prot(&self) -> i32 {
        (if self.read { libc::PROT_READ } else { 0 })
            | (if self.write { libc::PROT_WRITE } else { 0 })
            | (if self.exec { libc::PROT_EXEC } else { 0 })
    }
}

/// Reads and parses `/proc/PID/maps`.
pub fn read_maps(pid: Tid) -> Result<Vec<MapEntry>> {
    let path = format!("/proc/{pid}/maps");
    let text = read(&path)?;
    parse_maps(&text).map_err(|e| bad(&path, e))
}

fn unescape(raw: &[u8]) -> Vec<u8> {
    // seq_path escapes '\n' as "\012"; nothing else is escaped.
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i..].starts_with(b"\\012") {
            out.push(b'\n');
            i += 4;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

fn hex(field: &[u8], what: &str, line: usize) -> std::result::Result<u64, String> {
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| {
            format!(
                "line {line}: bad {what} {:?}",
                String::from_utf8_lossy(field)
            )
        })
}

/// Parses the text of a `/proc/PID/maps` file.
pub fn parse_maps(text: &[u8]) -> std::result::Result<Vec<MapEntry>, String> {
    let mut out = Vec::new();
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let lineno = n + 1;
        // Five space-separated fields, then padding, then the name (which
        // may contain spaces).
        let mut rest = line;
        let mut fields: [&[u8]; 5] = [&[]; 5];
        for f in fields.iter_mut() {
            let sp = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
            *f = &rest[..sp];
            rest = rest.get(sp + 1..).unwrap_or(&[]);
        }
        let name = {
            let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
            &rest[start..]
        };
        let (range, perms, offset, dev, inode) =
            (fields[0], fields[1], fields[2], fields[3], fields[4]);
        let dash = range
            .iter()
            .position(|&b| b == b'-')
            .ok_or_else(|| format!("line {lineno}: bad range"))?;
        let start = hex(&range[..dash], "start", lineno)?;
        let end = hex(&range[dash + 1..], "end", lineno)?;
        if perms.len() != 4 {
            return Err(format!("line {lineno}: bad permissions"));
        }
        let colon = dev
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| format!("line {lineno}: bad device"))?;
        let inode = std::str::from_utf8(inode)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("line {lineno}: bad inode"))?;
        let kind = if name.is_empty() {
            MapKind::Anon
        } else if name[0] == b'['
            && name.ends_with(b"]")
            // Named shared anonymous memory keeps its shmem inode number.
            && (inode == 0 || name.starts_with(b"[anon_shmem:"))
        {
            let inner = String::from_utf8_lossy(&name[1..name.len() - 1]).into_owned();
            match inner.as_str() {
                "heap" => MapKind::Heap,
                "stack" => MapKind::Stack,
                "vdso" => MapKind::Vdso,
                "vvar" => MapKind::Vvar,
                "vvar_vclock" => MapKind::VvarVclock,
                "vsyscall" => MapKind::Vsyscall,
                _ => {
                    if let Some(n) = inner.strip_prefix("anon:") {
                        MapKind::AnonNamed {
                            name: n.to_string(),
                            shmem: false,
                        }
                    } else if let Some(n) = inner.strip_prefix("anon_shmem:") {
                        MapKind::AnonNamed {
                            name: n.to_string(),
                            shmem: true,
                        }
                    } else {
                        MapKind::Special(inner)
                    }
                }
            }
        } else {
            let (p, deleted) = match name.strip_suffix(b" (deleted)") {
                Some(p) => (p, true),
                None => (name, false),
            };
            MapKind::File {
                path: PathBuf::from(OsStr::from_bytes(&unescape(p))),
                deleted,
            }
        };
        out.push(MapEntry {
            start,
            end,
            read: perms[0] == b'r',
            write: perms[1] == b'w',
            exec: perms[2] == b'x',
            shared: perms[3] == b's',
            offset: hex(offset, "offset", lineno)?,
            dev_major: hex(&dev[..colon], "device", lineno)? as u32,
            dev_minor: hex(&dev[colon + 1..], "device", lineno)? as u32,
            inode,
            kind,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        let text = b"\
55d0c0a00000-55d0c0a02000 r--p 00000000 fe:01 1234                       /usr/bin/cat
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000001000 rw-s 00000000 00:01 99                         /memfd:x (deleted)
7f0000001000-7f0000002000 rw-p 00000000 00:00 0                          [anon:sprout gadget]
7f0000002000-7f0000003000 rw-p 00000000 00:00 0 \n\
7f0000003000-7f0000004000 r-xp 00001000 fe:01 77                         /tmp/a b\\012c
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7ffd00100000-7ffd00104000 r--p 00000000 00:00 0                          [vvar]
7ffd00104000-7ffd00106000 r--p 00000000 00:00 0                          [vvar_vclock]
7ffd00106000-7ffd00108000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
7ffd00200000-7ffd00202000 rw-s 00000000 00:01 4711                       [anon_shmem:ring]
";
        let m = parse_maps(text).unwrap();
        assert_eq!(m.len(), 12);
        assert_eq!(
            m[11].kind,
            MapKind::AnonNamed {
                name: "ring".into(),
                shmem: true
            }
        );
        assert_eq!(m[11].inode, 4711);
        assert_eq!(
            m[0].kind,
            MapKind::File {
                path: "/usr/bin/cat".into(),
                deleted: false
            }
        );
        assert_eq!(
            (m[0].dev_major, m[0].dev_minor, m[0].inode),
            (0xfe, 1, 1234)
        );
        assert_eq!(m[1].kind, MapKind::Heap);
        assert!(m[2].shared);
        assert_eq!(
            m[2].kind,
            MapKind::File {
                path: "/memfd:x".into(),
                deleted: true
            }
        );
        assert_eq!(
            m[3].kind,
            MapKind::AnonNamed {
                name: "sprout gadget".into(),
                shmem: false
            }
        );
        assert_eq!(m[4].kind, MapKind::Anon);
        assert_eq!(
            m[5].kind,
            MapKind::File {
                path: "/tmp/a b\nc".into(),
                deleted: false
            }
        );
        assert_eq!(m[5].offset, 0x1000);
        assert!(m[5].exec && !m[5].write);
        assert_eq!(m[6].kind, MapKind::Stack);
        assert_eq!(m[7].kind, MapKind::Vvar);
        assert_eq!(m[8].kind, MapKind::VvarVclock);
        assert_eq!(m[9].kind, MapKind::Vdso);
        assert_eq!(m[10].kind, MapKind::Vsyscall);
        assert_eq!(m[10].start, 0xffffffffff600000);
    }

    #[test]
    fn own_maps_have_vdso() {
        let m = read_maps(std::process::id() as i32).unwrap();
        assert!(m.iter().any(|e| e.kind == MapKind::Vdso));
        assert!(
            list_tasks(std::process::id() as i32)
                .unwrap()
                .contains(&(std::process::id() as i32))
        );
    }
}
