//! The sandbox's credentials, capabilities, no_new_privs and seccomp
//! filter, applied last (pitfalls §9.2): they come from the bundle, not the
//! image, exactly as a fresh start of the container would apply them.

use oci_spec::runtime::Process;
use sprout_runtime::init::process::CapMasks;
use sprout_runtime::seccomp::SeccompProgram;

use crate::ptrace::{Entry, Gadget};

use super::RestoreError;

const CAP_V3: u32 = 0x2008_0522;

/// Per thread (credentials are per thread, with no setxid broadcast here,
/// pitfalls §6.4): bounding set, groups, ids, capabilities, ambient set,
/// no_new_privs.
pub(super) fn entries(gadget: &mut Gadget, process: &Process) -> Result<Vec<Entry>, RestoreError> {
    let masks = CapMasks::from_spec(process.capabilities().as_ref())
        .map_err(|e| RestoreError::Sandbox(e.to_string()))?;
    let user = process.user();
    let mut e = vec![Entry::new(
        libc::SYS_prctl,
        [libc::PR_SET_KEEPCAPS as u64, 1, 0, 0, 0, 0],
    )];
    for cap in 0..64u64 {
        if masks.bounding & (1 << cap) == 0 {
            // Caps this kernel does not have fail with EINVAL: fine.
            e.push(
                Entry::new(
                    libc::SYS_prctl,
                    [libc::PR_CAPBSET_DROP as u64, cap, 0, 0, 0, 0],
                )
                .may_fail(),
            );
        }
    }
    let groups: Vec<u8> = user
        .additional_gids()
        .clone()
        .unwrap_or_default()
        .iter()
        .flat_map(|g| g.to_le_bytes())
        .collect();
    let n = groups.len() / 4;
    let gptr = if n > 0 { gadget.data(&groups)? } else { 0 };
    e.push(Entry::new(
        libc::SYS_setgroups,
        [n as u64, gptr, 0, 0, 0, 0],
    ));
    let (uid, gid) = (user.uid() as u64, user.gid() as u64);
    e.push(Entry::new(libc::SYS_setresgid, [gid, gid, gid, 0, 0, 0]));
    e.push(Entry::new(libc::SYS_setresuid, [uid, uid, uid, 0, 0, 0]));
    let hdr = gadget.data(&[CAP_V3.to_le_bytes(), 0i32.to_le_bytes()].concat())?;
    let lo = |v: u64| (v as u32).to_le_bytes();
    let hi = |v: u64| ((v >> 32) as u32).to_le_bytes();
    let data: Vec<u8> = [
        lo(masks.effective),
        lo(masks.permitted),
        lo(masks.inheritable),
        hi(masks.effective),
        hi(masks.permitted),
        hi(masks.inheritable),
    ]
    .concat();
    let data = gadget.data(&data)?;
    e.push(Entry::new(libc::SYS_capset, [hdr, data, 0, 0, 0, 0]));
    // As at a fresh start: only capabilities that are permitted and
    // inheritable can be ambient.
    let raisable = masks.ambient & masks.permitted & masks.inheritable;
    for cap in 0..64u64 {
        if raisable & (1 << cap) != 0 {
            e.push(Entry::new(
                libc::SYS_prctl,
                [
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                    0,
                    0,
                    0,
                ],
            ));
        }
    }
    e.push(Entry::new(
        libc::SYS_prctl,
        [libc::PR_SET_KEEPCAPS as u64, 0, 0, 0, 0, 0],
    ));
    if process.no_new_privileges().unwrap_or(false) {
        e.push(Entry::new(
            libc::SYS_prctl,
            [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
        ));
    }
    Ok(e)
}

/// The seccomp filters, installed from the main thread for every thread
/// (`SECCOMP_FILTER_FLAG_TSYNC`).
pub(super) fn seccomp_entries(
    gadget: &mut Gadget,
    program: &SeccompProgram,
) -> Result<Vec<Entry>, RestoreError> {
    let flags = program.flags() | libc::SECCOMP_FILTER_FLAG_TSYNC as libc::c_ulong;
    let mut e = Vec::new();
    for bpf in program.bpf_programs() {
        let bytes: Vec<u8> = bpf
            .iter()
            .flat_map(|i| {
                let mut b = [0u8; 8];
                b[0..2].copy_from_slice(&i.code.to_le_bytes());
                b[2] = i.jt;
                b[3] = i.jf;
                b[4..8].copy_from_slice(&i.k.to_le_bytes());
                b
            })
            .collect();
        let filter = gadget.data(&bytes)?;
        // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
        let mut fprog = vec![0u8; 16];
        fprog[0..2].copy_from_slice(&(bpf.len() as u16).to_le_bytes());
        fprog[8..16].copy_from_slice(&filter.to_le_bytes());
        let fprog = gadget.data(&fprog)?;
        e.push(Entry::new(
            libc::SYS_seccomp,
            [libc::SECCOMP_SET_MODE_FILTER as u64, flags, fprog, 0, 0, 0],
        ));
    }
    Ok(e)
}
