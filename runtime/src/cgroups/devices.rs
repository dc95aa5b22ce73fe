//! Device access rules: v1's devices controller, and on cgroup v2 a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program built by a tiny emitter and attached
//! with raw bpf(2) calls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::error::{CgroupError, Result};
use super::fsio::{self, CgroupFs};

// Access bits as the kernel's struct bpf_cgroup_dev_ctx encodes them.
pub(crate) const ACC_MKNOD: u8 = 1;
pub(crate) const ACC_READ: u8 = 2;
pub(crate) const ACC_WRITE: u8 = 4;
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// A validated device rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DevRule {
    pub allow: bool,
    /// 'a', 'b' or 'c'.
    pub typ: char,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// ACC_* bits.
    pub access: u8,
}

pub(crate) fn normalize(rules: &[LinuxDeviceCgroup]) -> Result<Vec<DevRule>> {
    rules
        .iter()
        .enumerate()
        .map(|(index, r)| {
            let bad = |reason: String| CgroupError::InvalidDeviceRule { index, reason };
            let typ = match r.typ().unwrap_or(LinuxDeviceType::A) {
                LinuxDeviceType::A => 'a',
                LinuxDeviceType::B => 'b',
                LinuxDeviceType::C | LinuxDeviceType::U => 'c',
                LinuxDeviceType::P => {
                    return Err(bad(
                        "type \"p\" (FIFO) cannot be a device cgroup rule".into()
                    ));
                }
            };
            let num = |v: Option<i64>, what: &str| -> Result<Option<u32>> {
                match v {
                    None => Ok(None),
                    Some(n) if n < 0 => Ok(None), // -1: wildcard
                    Some(n) if n <= i64::from(i32::MAX) => Ok(Some(n as u32)),
                    Some(n) => Err(bad(format!("{what} {n} is out of range"))),
                }
            };
            let access_str = r.access().as_deref().unwrap_or("rwm");
            let access_str = if access_str.is_empty() {
                "rwm"
            } else {
                access_str
            };
            let mut access = 0;
            for c in access_str.chars() {
                access |= match c {
                    'r' => ACC_READ,
                    'w' => ACC_WRITE,
                    'm' => ACC_MKNOD,
                    _ => {
                        return Err(bad(format!(
                            "access {access_str:?} has {c:?}; only r, w, m are allowed"
                        )));
                    }
                };
            }
            Ok(DevRule {
                allow: r.allow(),
                typ,
                major: num(r.major(), "major")?,
                minor: num(r.minor(), "minor")?,
                access,
            })
        })
        .collect()
}

fn v1_line(r: &DevRule) -> String {
    let n = |v: Option<u32>| v.map_or("*".to_string(), |n| n.to_string());
    let mut acc = String::new();
    for (bit, c) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
        if r.access & bit != 0 {
            acc.push(c);
        }
    }
    format!("{} {}:{} {}", r.typ, n(r.major), n(r.minor), acc)
}

/// v1: deny everything, then each rule in spec order (as runc does).
pub(crate) fn apply_v1(fs: &dyn CgroupFs, dir: &Path, rules: &[DevRule]) -> Result<()> {
    fsio::write(fs, dir, "devices.deny", "a")?;
    for r in rules {
        let file = if r.allow {
            "devices.allow"
        } else {
            "devices.deny"
        };
        fsio::write(fs, dir, file, &v1_line(r))?;
    }
    Ok(())
}

// ------------------------------------------------------ eBPF program ----

/// One eBPF instruction (struct bpf_insn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Insn {
    code: u8,
    regs: u8, // dst | src << 4
    off: i16,
    imm: i32,
}

const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU64_MOV_X: u8 = 0xbf;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const JMP_JA: u8 = 0x05;
const JMP_JEQ_K: u8 = 0x15;
const JMP_JNE_K: u8 = 0x55;
const JMP_EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// Emits jumps whose targets are patched once known.
struct Emitter {
    prog: Vec<Insn>,
}

impl Emitter {
    fn push(&mut self, i: Insn) -> usize {
        self.prog.push(i);
        self.prog.len() - 1
    }
    /// A jump (code with immediate `imm` on `dst`) to a later label.
    fn jump(&mut self, code: u8, dst: u8, imm: i32) -> usize {
        self.push(insn(code, dst, 0, 0, imm))
    }
    fn patch_to_here(&mut self, at: &[usize]) {
        let here = self.prog.len();
        for &j in at {
            self.prog[j].off = (here - j - 1) as i16;
        }
    }
    fn ret(&mut self, v: i32) {
        self.push(insn(ALU64_MOV_K, 0, 0, 0, v));
        self.push(insn(JMP_EXIT, 0, 0, 0, 0));
    }
}

/// Builds the device filter. For each access bit the request has (mknod,
/// read, write), the *last* spec rule that matches the device and names that
/// bit decides (v1's semantics, where later rules override earlier ones);
/// no matching rule denies. Access is granted only if every requested bit is.
pub(crate) fn build_program(rules: &[DevRule]) -> Vec<Insn> {
    let mut e = Emitter { prog: Vec::new() };
    // r1 = ctx: { u32 access_type; u32 major; u32 minor; }
    e.push(insn(LDX_MEM_W, 2, 1, 0, 0)); // r2 = access_type
    e.push(insn(ALU64_MOV_X, 3, 2, 0, 0)); // r3 = r2
    e.push(insn(ALU64_AND_K, 3, 0, 0, 0xffff)); // r3 = device type
    e.push(insn(ALU64_RSH_K, 2, 0, 0, 16)); // r2 = access bits
    e.push(insn(LDX_MEM_W, 4, 1, 4, 0)); // r4 = major
    e.push(insn(LDX_MEM_W, 5, 1, 8, 0)); // r5 = minor
    for bit in [ACC_MKNOD, ACC_READ, ACC_WRITE] {
        let mut to_next_section = Vec::new();
        e.push(insn(ALU64_MOV_X, 6, 2, 0, 0)); // r6 = r2 & bit
        e.push(insn(ALU64_AND_K, 6, 0, 0, i32::from(bit)));
        to_next_section.push(e.jump(JMP_JEQ_K, 6, 0)); // bit not requested
        let mut decided = false; // an unconditional rule ends the section
        for r in rules.iter().rev().filter(|r| r.access & bit != 0) {
            let mut to_next_rule = Vec::new();
            match r.typ {
                'b' => to_next_rule.push(e.jump(JMP_JNE_K, 3, DEV_BLOCK)),
                'c' => to_next_rule.push(e.jump(JMP_JNE_K, 3, DEV_CHAR)),
                _ => {}
            }
            if let Some(m) = r.major {
                to_next_rule.push(e.jump(JMP_JNE_K, 4, m as i32));
            }
            if let Some(m) = r.minor {
                to_next_rule.push(e.jump(JMP_JNE_K, 5, m as i32));
            }
            if r.allow {
                to_next_section.push(e.jump(JMP_JA, 0, 0));
            } else {
                e.ret(0);
            }
            if to_next_rule.is_empty() {
                decided = true; // later instructions would be unreachable
                break;
            }
            e.patch_to_here(&to_next_rule);
        }
        if !decided {
            e.ret(0); // no rule grants this bit
        }
        e.patch_to_here(&to_next_section);
    }
    e.ret(1);
    e.prog
}

// ------------------------------------------------------ bpf(2) calls ----

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// bpf(2) with an attribute struct.
fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialized #[repr(C)] prefix of union
    // bpf_attr for `cmd`, and its size is passed; pointers inside it refer
    // to buffers the caller keeps alive for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` is a new descriptor returned by bpf(2), owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn load_program(dir: &Path, prog: &[Insn]) -> Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(first) => {
            // Load again with the verifier log, for the error message.
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            Err(CgroupError::Bpf {
                cmd: "BPF_PROG_LOAD",
                dir: dir.to_path_buf(),
                source: first,
                log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
            })
        }
    }
}

/// Ids of the device programs attached to the cgroup.
fn attached_programs(dir: &Path, cgroup_fd: &OwnedFd) -> Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cgroup_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr).map_err(|source| CgroupError::Bpf {
        cmd: "BPF_PROG_QUERY",
        dir: dir.to_path_buf(),
        source,
        log: String::new(),
    })?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

fn open_dir(dir: &Path) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
        CgroupError::InvalidPath {
            path: dir.display().to_string(),
            reason: "contains a NUL byte",
        }
    })?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(CgroupError::Open {
            path: dir.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just returned by open(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// v2: loads the filter for `rules` and attaches it to the cgroup2 directory
/// `dir`, replacing the device programs attached before (new one first, so
/// there is no moment without a filter).
pub(crate) fn apply_v2(dir: &Path, rules: &[DevRule]) -> Result<()> {
    let prog = build_program(rules);
    let prog_fd = load_program(dir, &prog)?;
    let cgroup_fd = open_dir(dir)?;
    let old = attached_programs(dir, &cgroup_fd)?;
    let mut attr = AttachAttr {
        target_fd: cgroup_fd.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|source| {
        let source = if source.raw_os_error() == Some(libc::EPERM) && !old.is_empty() {
            io::Error::new(
                source.kind(),
                format!("{source} (a device program attached without BPF_F_ALLOW_MULTI?)"),
            )
        } else {
            source
        };
        CgroupError::Bpf {
            cmd: "BPF_PROG_ATTACH",
            dir: dir.to_path_buf(),
            source,
            log: String::new(),
        }
    })?;
    for id in old {
        let mut get = GetFdByIdAttr {
            prog_id: id,
            ..Default::default()
        };
        let old_fd = match bpf(BPF_PROG_GET_FD_BY_ID, &mut get) {
            Ok(fd) => owned(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // gone meanwhile
            Err(source) => {
                return Err(CgroupError::Bpf {
                    cmd: "BPF_PROG_GET_FD_BY_ID",
                    dir: dir.to_path_buf(),
                    source,
                    log: String::new(),
                });
            }
        };
        let mut detach = AttachAttr {
            target_fd: cgroup_fd.as_raw_fd() as u32,
            attach_bpf_fd: old_fd.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        match bpf(BPF_PROG_DETACH, &mut detach) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(source) => {
                return Err(CgroupError::Bpf {
                    cmd: "BPF_PROG_DETACH",
                    dir: dir.to_path_buf(),
                    source,
                    log: String::new(),
                });
            }
        }
    }
    Ok(())
}

/// Number of device programs attached to a cgroup2 directory (tests).
#[cfg(test)]
pub(crate) fn attached_count(dir: &Path) -> Result<usize> {
    let fd = open_dir(dir)?;
    Ok(attached_programs(dir, &fd)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::fsio::recording::RecordingFs;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    fn rule(
        allow: bool,
        typ: LinuxDeviceType,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().unwrap()
    }

    /// Interprets a program the way the kernel would, for one request.
    fn run(prog: &[Insn], typ: i32, access: u8, major: u32, minor: u32) -> u64 {
        let ctx = [((access as u32) << 16) | typ as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 10_000, "runaway program");
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let imm = i.imm as i64 as u64;
            let mut next = pc + 1;
            let jump = |cond: bool| {
                if cond {
                    (pc as i64 + 1 + i.off as i64) as usize
                } else {
                    pc + 1
                }
            };
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1);
                    r[dst] = u64::from(ctx[(i.off / 4) as usize]);
                }
                ALU64_MOV_X => r[dst] = r[src],
                ALU64_MOV_K => r[dst] = imm,
                ALU64_AND_K => r[dst] &= imm,
                ALU64_RSH_K => r[dst] >>= imm,
                JMP_JA => next = jump(true),
                JMP_JEQ_K => next = jump(r[dst] == imm),
                JMP_JNE_K => next = jump(r[dst] != imm),
                JMP_EXIT => return r[0],
                c => panic!("unknown opcode {c:#x}"),
            }
            pc = next;
        }
    }

    #[test]
    fn v1_rules_deny_all_then_in_order() {
        let rules = normalize(&[
            rule(true, LinuxDeviceType::C, Some(1), Some(3), "rwm"),
            rule(false, LinuxDeviceType::C, Some(1), Some(3), "w"),
            rule(true, LinuxDeviceType::B, Some(8), None, "r"),
            rule(true, LinuxDeviceType::U, Some(5), Some(1), ""),
        ])
        .unwrap();
        let fs = RecordingFs::default();
        apply_v1(&fs, Path::new("/d"), &rules).unwrap();
        let got: Vec<(String, String)> = fs.taken();
        let want: Vec<(String, String)> = [
            ("/d/devices.deny", "a"),
            ("/d/devices.allow", "c 1:3 rwm"),
            ("/d/devices.deny", "c 1:3 w"),
            ("/d/devices.allow", "b 8:* r"),
            ("/d/devices.allow", "c 5:1 rwm"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn rejects_bad_rules() {
        assert!(normalize(&[rule(true, LinuxDeviceType::P, None, None, "r")]).is_err());
        assert!(normalize(&[rule(true, LinuxDeviceType::C, Some(1), Some(3), "rx")]).is_err());
        assert!(normalize(&[rule(true, LinuxDeviceType::C, Some(1 << 40), Some(3), "r")]).is_err());
    }

    #[test]
    fn program_semantics() {
        let rules = normalize(&[
            rule(false, LinuxDeviceType::A, None, None, "rwm"),
            rule(true, LinuxDeviceType::C, Some(1), Some(3), "rwm"), // /dev/null
            rule(false, LinuxDeviceType::C, Some(1), Some(3), "w"),  // ... but not for writing
            rule(true, LinuxDeviceType::C, Some(1), Some(5), "rw"),  // /dev/zero
            rule(true, LinuxDeviceType::B, Some(8), None, "r"),      // any sd* read
        ])
        .unwrap();
        let p = build_program(&rules);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 3), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 1, 3), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_WRITE, 1, 3), 0);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3), 0);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 5), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 1, 5), 0);
        assert_eq!(run(&p, DEV_BLOCK, ACC_READ, 8, 17), 1);
        assert_eq!(run(&p, DEV_BLOCK, ACC_WRITE, 8, 17), 0);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 8, 17), 0);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 4, 1), 0);
        // Access granted piecewise by two rules (v1 unions them).
        let rules = normalize(&[
            rule(true, LinuxDeviceType::C, Some(1), Some(3), "r"),
            rule(true, LinuxDeviceType::C, Some(1), Some(3), "w"),
        ])
        .unwrap();
        let p = build_program(&rules);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3), 1);
        assert_eq!(run(&p, DEV_CHAR, ACC_MKNOD, 1, 3), 0);
        // Allow-all last: everything goes, and no unreachable code follows.
        let rules = normalize(&[
            rule(false, LinuxDeviceType::C, Some(1), Some(3), "rwm"),
            rule(true, LinuxDeviceType::A, None, None, "rwm"),
        ])
        .unwrap();
        let p = build_program(&rules);
        assert_eq!(run(&p, DEV_CHAR, ACC_WRITE, 1, 3), 1);
        assert_eq!(run(&p, DEV_BLOCK, ACC_MKNOD, 7, 0), 1);
        // No rules: deny all.
        let p = build_program(&[]);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 3), 0);
    }
}
