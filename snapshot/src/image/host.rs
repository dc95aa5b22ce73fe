//! [`Host`]: what a restoring host must match, how to read it off the running
//! machine, and how two records are compared.
//!
//! sprout restores on the same kernel build and a CPU with at least the
//! features the image's process saw: the vDSO is moved, not patched, and
//! glibc chose its ifuncs and its register save area size from CPUID when
//! the process started (restore-pitfalls §0.4, §4.3).

use std::fs;

use serde::{Deserialize, Serialize};

use super::encoding::{HexBytes, Sha256Digest, hex};
use super::error::{ImageError, Result};
use super::limits::MIN_XSAVE_BYTES;

/// The host an image was taken on; compared with the restoring host by
/// [`Host::check_compatible`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// `uname -r`. Must be equal: the vDSO and the kernel ABI details the
    /// restorer relies on are those of one build.
    pub kernel_release: String,
    /// Page size in bytes; the format fixes it at 4096.
    pub page_size: u64,
    /// `vm.mmap_min_addr` of the dumping host. Informational: what counts is
    /// that the restoring host's value is not above the image's lowest
    /// address, which [`Image::check_host`](super::Image::check_host) checks.
    pub mmap_min_addr: u64,
    /// CPU identification and features.
    pub cpu: Cpu,
    /// The vDSO and the VMAs around it, `None` where the kernel maps none.
    pub vdso: Option<Vdso>,
}

/// CPU vendor, feature words and extended-state (xsave) geometry.
///
/// Feature words must be a subset of the restoring CPU's (a process that
/// picked SSE paths runs on an AVX-512 CPU; the reverse faults). The enabled
/// state mask and the xsave sizes must be equal: ptrace's `NT_X86_XSTATE`
/// regset only takes a buffer of exactly the host's size, and glibc sized
/// its lazy-binding save area from them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    /// CPUID leaf 0 vendor string, e.g. `GenuineIntel`, `AuthenticAMD`.
    pub vendor: String,
    /// CPUID leaf 1, ECX (SSE3 … AVX, OSXSAVE, hypervisor).
    #[serde(with = "hex")]
    pub leaf1_ecx: u32,
    /// CPUID leaf 1, EDX (x87 … SSE2).
    #[serde(with = "hex")]
    pub leaf1_edx: u32,
    /// CPUID leaf 7 subleaf 0, EBX (BMI1/2, AVX2, AVX-512 F/DQ/CD/BW/VL, SHA, …).
    #[serde(with = "hex")]
    pub leaf7_ebx: u32,
    /// CPUID leaf 7 subleaf 0, ECX (AVX-512 VBMI, PKU, VAES, …).
    #[serde(with = "hex")]
    pub leaf7_ecx: u32,
    /// CPUID leaf 7 subleaf 0, EDX (AVX-512 4VNNIW, AMX, …).
    #[serde(with = "hex")]
    pub leaf7_edx: u32,
    /// CPUID leaf 0x80000001, ECX (LZCNT, …: glibc's AVX2 string functions
    /// require it).
    #[serde(with = "hex")]
    pub ext1_ecx: u32,
    /// CPUID leaf 0x80000001, EDX.
    #[serde(with = "hex")]
    pub ext1_edx: u32,
    /// CPUID leaf 0xD subleaf 0, EDX:EAX: the state components the CPU
    /// supports in XCR0.
    #[serde(with = "hex")]
    pub xcr0_supported: u64,
    /// XCR0 as read with `xgetbv`: the components the kernel enabled.
    #[serde(with = "hex")]
    pub xcr0: u64,
    /// CPUID leaf 0xD subleaf 1, EAX (XSAVEOPT, XSAVEC, XGETBV1, XSAVES).
    #[serde(with = "hex")]
    pub xsave_features: u32,
    /// CPUID leaf 0xD subleaf 0, EBX: XSAVE area size for the components
    /// enabled in XCR0 (what glibc sizes its save area with).
    pub xsave_size: u32,
    /// CPUID leaf 0xD subleaf 0, ECX: XSAVE area size for every supported
    /// component. Informational.
    pub xsave_size_max: u32,
    /// Size of the `NT_X86_XSTATE` regset, i.e. of every thread's `xsave`
    /// record: the standard (non-compacted) layout up to the highest
    /// component enabled in XCR0, computed as the kernel does
    /// (`fpu_user_cfg.max_size`).
    pub xstate_regset_size: u32,
}

/// Which special mapping of the vDSO family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VdsoAreaKind {
    /// `[vvar]`: the kernel's data page(s) for the vDSO.
    Vvar,
    /// `[vvar_vclock]`: the clock pages (a separate VMA since Linux 6.13).
    VvarVclock,
    /// `[vdso]`: the vDSO's code.
    Vdso,
}

impl VdsoAreaKind {
    /// The name `/proc/PID/maps` shows.
    pub fn maps_name(self) -> &'static str {
        match self {
            VdsoAreaKind::Vvar => "[vvar]",
            VdsoAreaKind::VvarVclock => "[vvar_vclock]",
            VdsoAreaKind::Vdso => "[vdso]",
        }
    }
}

/// One of the vDSO-family mappings, relative to the first of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VdsoArea {
    /// Which mapping.
    pub kind: VdsoAreaKind,
    /// Bytes from the start of the first (lowest) area to this one's start.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Fingerprint of the vDSO: its code and the layout of the mappings around
/// it (restore-pitfalls §4.3). The restorer moves the running kernel's vDSO
/// to the dumped addresses with `mremap`, which is only right if both are
/// the same code in the same layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vdso {
    /// SHA-256 of the `[vdso]` mapping's bytes.
    pub sha256: Sha256Digest,
    /// The vDSO's ELF build-id note (`NT_GNU_BUILD_ID`), if it has one.
    /// Informational: `sha256` is what is compared.
    pub build_id: Option<HexBytes>,
    /// `[vvar]`, `[vvar_vclock]` and `[vdso]` as present, in address order.
    pub areas: Vec<VdsoArea>,
}

impl Host {
    /// Reads the running machine: `uname`, `sysconf(_SC_PAGESIZE)`,
    /// `vm.mmap_min_addr`, CPUID and XCR0, and this process's own vDSO (from
    /// the auxiliary vector's `AT_SYSINFO_EHDR` and `/proc/self/maps`).
    pub fn current() -> Result<Host> {
        Ok(Host {
            kernel_release: kernel_release()?,
            page_size: page_size()?,
            mmap_min_addr: mmap_min_addr()?,
            cpu: Cpu::current()?,
            vdso: Vdso::current()?,
        })
    }

    /// Checks that an image taken on `self` can be restored on `host`;
    /// names the first property that differs.
    pub fn check_compatible(&self, host: &Host) -> Result<()> {
        fn eq<T: PartialEq + std::fmt::Display>(
            field: &'static str,
            image: T,
            host: T,
        ) -> Result<()> {
            if image == host {
                Ok(())
            } else {
                Err(ImageError::Foreign {
                    field,
                    image: image.to_string(),
                    host: host.to_string(),
                })
            }
        }
        fn subset(field: &'static str, image: u64, host: u64) -> Result<()> {
            let missing = image & !host;
            if missing == 0 {
                Ok(())
            } else {
                Err(ImageError::Foreign {
                    field,
                    image: format!("{image:#x}"),
                    host: format!("{host:#x} (lacking {missing:#x})"),
                })
            }
        }
        fn hex_eq(field: &'static str, image: u64, host: u64) -> Result<()> {
            eq(field, format!("{image:#x}"), format!("{host:#x}"))
        }
        eq("host.page_size", self.page_size, host.page_size)?;
        eq(
            "host.kernel_release",
            self.kernel_release.as_str(),
            host.kernel_release.as_str(),
        )?;
        let (a, b) = (&self.cpu, &host.cpu);
        eq("host.cpu.vendor", a.vendor.as_str(), b.vendor.as_str())?;
        subset("host.cpu.leaf1_ecx", a.leaf1_ecx.into(), b.leaf1_ecx.into())?;
        subset("host.cpu.leaf1_edx", a.leaf1_edx.into(), b.leaf1_edx.into())?;
        subset("host.cpu.leaf7_ebx", a.leaf7_ebx.into(), b.leaf7_ebx.into())?;
        subset("host.cpu.leaf7_ecx", a.leaf7_ecx.into(), b.leaf7_ecx.into())?;
        subset("host.cpu.leaf7_edx", a.leaf7_edx.into(), b.leaf7_edx.into())?;
        subset("host.cpu.ext1_ecx", a.ext1_ecx.into(), b.ext1_ecx.into())?;
        subset("host.cpu.ext1_edx", a.ext1_edx.into(), b.ext1_edx.into())?;
        subset(
            "host.cpu.xcr0_supported",
            a.xcr0_supported,
            b.xcr0_supported,
        )?;
        subset(
            "host.cpu.xsave_features",
            a.xsave_features.into(),
            b.xsave_features.into(),
        )?;
        hex_eq("host.cpu.xcr0", a.xcr0, b.xcr0)?;
        eq("host.cpu.xsave_size", a.xsave_size, b.xsave_size)?;
        eq(
            "host.cpu.xstate_regset_size",
            a.xstate_regset_size,
            b.xstate_regset_size,
        )?;
        match (&self.vdso, &host.vdso) {
            (None, None) => Ok(()),
            (Some(_), None) => Err(ImageError::Foreign {
                field: "host.vdso",
                image: "present".into(),
                host: "absent".into(),
            }),
            (None, Some(_)) => Err(ImageError::Foreign {
                field: "host.vdso",
                image: "absent".into(),
                host: "present".into(),
            }),
            (Some(a), Some(b)) => {
                eq("host.vdso.sha256", a.sha256, b.sha256)?;
                let layout = |v: &Vdso| {
                    v.areas
                        .iter()
                        .map(|x| format!("{}@{:#x}+{:#x}", x.kind.maps_name(), x.offset, x.size))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                eq("host.vdso.areas", layout(a), layout(b))
            }
        }
    }
}

fn kernel_release() -> Result<String> {
    // SAFETY: utsname is plain old data; uname only writes into the struct
    // we pass, which lives on our stack for the duration of the call.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: see above; `uts` is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(ImageError::HostProbe {
            what: "kernel release",
            reason: std::io::Error::last_os_error().to_string(),
        });
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).map_err(|_| ImageError::HostProbe {
        what: "kernel release",
        reason: "not UTF-8".into(),
    })
}

fn page_size() -> Result<u64> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).map_err(|_| ImageError::HostProbe {
        what: "page size",
        reason: format!("sysconf returned {v}"),
    })
}

fn mmap_min_addr() -> Result<u64> {
    const PATH: &str = "/proc/sys/vm/mmap_min_addr";
    let s = fs::read_to_string(PATH).map_err(|e| ImageError::HostProbe {
        what: "vm.mmap_min_addr",
        reason: format!("{PATH}: {e}"),
    })?;
    s.trim().parse().map_err(|_| ImageError::HostProbe {
        what: "vm.mmap_min_addr",
        reason: format!("{PATH}: {s:?} is not a number"),
    })
}

fn cpuid(leaf: u32, sub: u32) -> core::arch::x86_64::CpuidResult {
    core::arch::x86_64::__cpuid_count(leaf, sub)
}

/// XCR0, or 0 where the OS has not enabled XSAVE.
fn xcr0(leaf1_ecx: u32) -> u64 {
    const OSXSAVE: u32 = 1 << 27;
    if leaf1_ecx & OSXSAVE == 0 {
        return 0;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv with ECX=0 reads XCR0; it is valid whenever CR4.OSXSAVE
    // is set, which CPUID.1:ECX.OSXSAVE reports. It touches no memory.
    unsafe {
        core::arch::asm!(
            "xgetbv",
            in("ecx") 0u32,
            out("eax") lo,
            out("edx") hi,
            options(nomem, nostack, preserves_flags),
        );
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Size of the kernel's `NT_X86_XSTATE` regset for the components in
/// `xcr0`: the non-compacted XSAVE layout up to the end of the highest
/// component, at least the legacy area plus header (`xstate_calculate_size`
/// in arch/x86/kernel/fpu/xstate.c).
pub(crate) fn xstate_size_for(xcr0: u64) -> u32 {
    let legacy = MIN_XSAVE_BYTES;
    if xcr0 == 0 {
        return legacy;
    }
    let top = 63 - xcr0.leading_zeros();
    if top <= 1 {
        return legacy;
    }
    let r = cpuid(0xd, top);
    (r.ebx + r.eax).max(legacy)
}

impl Cpu {
    /// Reads CPUID and XCR0 on the running CPU.
    pub fn current() -> Result<Cpu> {
        let l0 = cpuid(0, 0);
        let mut vendor = Vec::with_capacity(12);
        for w in [l0.ebx, l0.edx, l0.ecx] {
            vendor.extend_from_slice(&w.to_le_bytes());
        }
        let vendor = String::from_utf8_lossy(&vendor)
            .trim_end_matches('\0')
            .to_string();
        let max = l0.eax;
        let l1 = if max >= 1 { cpuid(1, 0) } else { cpuid_zero() };
        let l7 = if max >= 7 { cpuid(7, 0) } else { cpuid_zero() };
        let ext_max = cpuid(0x8000_0000, 0).eax;
        let e1 = if ext_max >= 0x8000_0001 {
            cpuid(0x8000_0001, 0)
        } else {
            cpuid_zero()
        };
        let xcr0 = xcr0(l1.ecx);
        let (d0, d1) = if max >= 0xd && xcr0 != 0 {
            (cpuid(0xd, 0), cpuid(0xd, 1))
        } else {
            (cpuid_zero(), cpuid_zero())
        };
        Ok(Cpu {
            vendor,
            leaf1_ecx: l1.ecx,
            leaf1_edx: l1.edx,
            leaf7_ebx: l7.ebx,
            leaf7_ecx: l7.ecx,
            leaf7_edx: l7.edx,
            ext1_ecx: e1.ecx,
            ext1_edx: e1.edx,
            xcr0_supported: (u64::from(d0.edx) << 32) | u64::from(d0.eax),
            xcr0,
            xsave_features: d1.eax,
            xsave_size: d0.ebx,
            xsave_size_max: d0.ecx,
            xstate_regset_size: xstate_size_for(xcr0),
        })
    }
}

fn cpuid_zero() -> core::arch::x86_64::CpuidResult {
    core::arch::x86_64::CpuidResult {
        eax: 0,
        ebx: 0,
        ecx: 0,
        edx: 0,
    }
}

impl Vdso {
    /// This process's vDSO: found through `AT_SYSINFO_EHDR`, its extent and
    /// neighbours from `/proc/self/maps`. `None` if the kernel maps none.
    pub fn current() -> Result<Option<Vdso>> {
        // SAFETY: getauxval has no preconditions; it reads the auxiliary
        // vector the kernel gave this process.
        let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        if base == 0 {
            return Ok(None);
        }
        let maps = fs::read_to_string("/proc/self/maps").map_err(|e| ImageError::HostProbe {
            what: "vdso",
            reason: format!("/proc/self/maps: {e}"),
        })?;
        let mut found: Vec<(VdsoAreaKind, u64, u64)> = Vec::new();
        for line in maps.lines() {
            let name = line.split_whitespace().nth(5).unwrap_or("");
            let kind = match name {
                "[vvar]" => VdsoAreaKind::Vvar,
                "[vvar_vclock]" => VdsoAreaKind::VvarVclock,
                "[vdso]" => VdsoAreaKind::Vdso,
                _ => continue,
            };
            let range = line.split_whitespace().next().unwrap_or("");
            let (s, e) = range.split_once('-').unwrap_or(("", ""));
            let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
                return Err(ImageError::HostProbe {
                    what: "vdso",
                    reason: format!("/proc/self/maps: cannot parse {line:?}"),
                });
            };
            found.push((kind, s, e));
        }
        found.sort_by_key(|&(_, s, _)| s);
        let Some(&(_, vs, ve)) = found.iter().find(|(k, _, _)| *k == VdsoAreaKind::Vdso) else {
            return Err(ImageError::HostProbe {
                what: "vdso",
                reason: "AT_SYSINFO_EHDR is set but /proc/self/maps shows no [vdso]".into(),
            });
        };
        if vs != base {
            return Err(ImageError::HostProbe {
                what: "vdso",
                reason: format!("AT_SYSINFO_EHDR {base:#x} is not the start of [vdso] ({vs:#x})"),
            });
        }
        let len = usize::try_from(ve - vs).expect("vdso size fits in usize");
        // SAFETY: [vdso] is mapped readable in this process from exec to
        // exit (maps just showed its extent) and sprout never unmaps or
        // moves its own vDSO; the slice is only read, while this function
        // runs.
        let bytes = unsafe { std::slice::from_raw_parts(base as usize as *const u8, len) };
        let first = found[0].1;
        Ok(Some(Vdso {
            sha256: Sha256Digest::of(bytes),
            build_id: elf_build_id(bytes).map(|b| HexBytes(b.to_vec())),
            areas: found
                .iter()
                .map(|&(kind, s, e)| VdsoArea {
                    kind,
                    offset: s - first,
                    size: e - s,
                })
                .collect(),
        }))
    }
}

/// The `NT_GNU_BUILD_ID` note of an ELF64 little-endian image in memory.
/// Every read is bounds-checked; anything malformed gives `None`.
pub(crate) fn elf_build_id(elf: &[u8]) -> Option<&[u8]> {
    fn u16_at(b: &[u8], off: usize) -> Option<usize> {
        Some(u16::from_le_bytes(b.get(off..off.checked_add(2)?)?.try_into().ok()?) as usize)
    }
    fn u32_at(b: &[u8], off: usize) -> Option<usize> {
        Some(u32::from_le_bytes(b.get(off..off.checked_add(4)?)?.try_into().ok()?) as usize)
    }
    fn u64_at(b: &[u8], off: usize) -> Option<usize> {
        usize::try_from(u64::from_le_bytes(
            b.get(off..off.checked_add(8)?)?.try_into().ok()?,
        ))
        .ok()
    }
    const PT_NOTE: usize = 4;
    const NT_GNU_BUILD_ID: usize = 3;
    if elf.get(..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let phoff = u64_at(elf, 0x20)?;
    let phentsize = u16_at(elf, 0x36)?;
    let phnum = u16_at(elf, 0x38)?;
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(elf, ph)? != PT_NOTE {
            continue;
        }
        let off = u64_at(elf, ph + 8)?;
        let size = u64_at(elf, ph + 32)?;
        let notes = elf.get(off..off.checked_add(size)?)?;
        let mut p = 0usize;
        while p + 12 <= notes.len() {
            let namesz = u32_at(notes, p)?;
            let descsz = u32_at(notes, p + 4)?;
            let ntype = u32_at(notes, p + 8)?;
            let name_at = p + 12;
            let desc_at = name_at.checked_add(namesz.checked_add(3)? & !3)?;
            let end = desc_at.checked_add(descsz.checked_add(3)? & !3)?;
            if ntype == NT_GNU_BUILD_ID && notes.get(name_at..name_at + namesz)? == b"GNU\0" {
                return notes.get(desc_at..desc_at.checked_add(descsz)?);
            }
            p = end;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_parser_is_bounded() {
        assert_eq!(elf_build_id(b""), None);
        assert_eq!(elf_build_id(b"\x7fELF\x02\x01"), None);
        let mut junk = vec![0u8; 256];
        junk[..6].copy_from_slice(b"\x7fELF\x02\x01");
        junk[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        junk[0x36] = 0xff;
        junk[0x38] = 0xff;
        assert_eq!(elf_build_id(&junk), None);
    }

    #[test]
    fn xstate_size_legacy() {
        assert_eq!(xstate_size_for(0), 576);
        assert_eq!(xstate_size_for(0b11), 576);
    }
}
